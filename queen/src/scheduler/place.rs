//! The decision path: run the policy on a snapshot of the fleet, then commit its choice
//! under the book's lock, re-checking free memory and the reservation bounds, and write
//! it to the state store (when there is one) before answering.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rbee_shared::bytesize::format_bytes;

use super::book::{Book, Claim, KeyState, Refused, Reservation};
use super::bounded_text::bound_owned;
use super::gang::{self, Gang, Links};
use super::policy::{Choice, Decision, Policy, PolicyError};
use super::request::PlaceRequest;
use super::view::{self, Books, DeviceRef, FleetView, claim_bytes};
use super::{Outcome, PlacedDevice, Placement, Scheduler};
use crate::QueenError;
use crate::fleet::ConnState;
use crate::metrics::recorder::PlaceResult;

/// How often `place` decides again when concurrent placements filled every device a
/// policy chose.
const PLACE_ATTEMPTS: usize = 3;

/// One decision and commit.
enum Attempt {
    /// A final answer.
    Done(Outcome),
    /// Every chosen device filled up since the policy ran (reasons for each).
    Raced(Vec<String>),
}

/// Why a device the policy chose cannot be used.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    /// The hive is not in the fleet.
    #[error("{0}: the policy chose a hive that is not in the fleet")]
    NoHive(String),
    /// The hive is not online.
    #[error("{hive}: {state}")]
    NotOnline {
        /// Hive id or address.
        hive: String,
        /// Its state.
        state: &'static str,
    },
    /// A gang of several GPUs for a request of one.
    #[error("{0}: the policy chose a gang of {1} GPUs for a request of one")]
    Gang(String, usize),
    /// The hive has no such device, or no reading for it.
    #[error("{hive}/{device}: no such device, or no reading for it")]
    NoDevice {
        /// Hive id or address.
        hive: String,
        /// Device id.
        device: String,
    },
}

/// What trying one gang of a policy's ranking gave.
enum GangTry {
    /// Placed (reserved, unless a dry run), with the reservation's start on each GPU.
    Placed(Outcome, Vec<u64>),
    /// The gang cannot be used now: why (for the rejection's reasons).
    Unfit(String),
    /// The request id is held already (a keyed Place that raced this one).
    KeyHeld(String),
}

/// A refused reservation count as the error the caller sees.
fn exhausted(hive: &str, refused: &Refused) -> QueenError {
    let hint = match refused {
        Refused::HiveFull { .. } => format!("{hive}: {refused}; release some, or wait for them to expire"),
        _ => format!("{refused}; release some, or wait for them to expire"),
    };
    QueenError::ResourceExhausted(hint)
}

impl Scheduler {
    /// Places a request (blocking: waits for the policy, at most a few times its
    /// budget; call from a blocking thread).
    pub fn place_blocking(&self, req: &PlaceRequest) -> Result<Outcome, QueenError> {
        // A keyed request: Places with the same key take turns (on this queen), and one
        // whose key is held answers that reservation (or why not) without deciding again.
        let key = req.request_id.as_deref().filter(|_| !req.dry_run);
        let _turn = key.map(|k| self.key_turn(k));
        if let Some(k) = key
            && let Some(answer) = self.replay(req, k)?
        {
            return Ok(answer);
        }
        if !req.dry_run
            && let Err(refused) = view::read(&self.book).check_total()
        {
            return Err(exhausted("", &refused));
        }
        // Policies rank on a snapshot; the commit re-checks under the lock. When every
        // device a policy chose filled up in between (concurrent placements), decide
        // again on a fresh view before answering "no room".
        let mut outcome = self.attempt(req)?;
        for _ in 1..PLACE_ATTEMPTS {
            match &outcome {
                Attempt::Raced(_) => outcome = self.attempt(req)?,
                Attempt::Done(_) => break,
            }
        }
        Ok(match outcome {
            Attempt::Done(o) => o,
            Attempt::Raced(hive_reasons) => {
                let why = view::why_no_fit(&self.view(), req);
                Outcome::Rejected {
                    reason: format!("no device the policy chose has room; {why}"),
                    hive_reasons,
                }
            }
        })
    }

    /// Runs the policy, or the built-in default when it fails and fallback is on.
    /// Returns the decision, the policy that made it, and whether it was the fallback.
    fn decide(
        &self,
        req: &PlaceRequest,
        view: &FleetView,
    ) -> Result<(Decision, Arc<Policy>, bool), QueenError> {
        let policy = self.policy();
        let error = match self.runtime.run(&policy, req, view) {
            Ok(d) => return Ok((d, policy, false)),
            // Not the policy's failure, and the default would wait for a worker too.
            Err(error @ PolicyError::Busy { .. }) => {
                return Err(QueenError::Policy { policy: policy.source.clone(), error });
            }
            Err(error) => error,
        };
        self.failures.fetch_add(1, Ordering::Relaxed);
        let failed = QueenError::Policy { policy: policy.source.clone(), error };
        tracing::warn!("{failed}");
        self.note_error(failed.to_string());
        if !self.settings.fallback_to_default || Arc::ptr_eq(&policy, &self.default) {
            return Err(failed);
        }
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        let d = self
            .runtime
            .run(&self.default, req, view)
            .map_err(|error| QueenError::Policy { policy: self.default.source.clone(), error })?;
        Ok((d, self.default.clone(), true))
    }

    /// One policy run and commit.
    fn attempt(&self, req: &PlaceRequest) -> Result<Attempt, QueenError> {
        let view = self.view();
        let (decision, used, fallback) = self.decide(req, &view)?;
        let choices = match decision {
            Decision::Reject(reason) => {
                return Ok(Attempt::Done(Outcome::Rejected { reason, hive_reasons: reasons(&view, req) }));
            }
            Decision::Ranked(c) if c.is_empty() => {
                return Ok(Attempt::Done(Outcome::Rejected {
                    reason: format!("the policy chose no device; {}", view::why_no_fit(&view, req)),
                    hive_reasons: reasons(&view, req),
                }));
            }
            Decision::Ranked(c) => c,
        };
        if req.gpus > 1 {
            return self.commit_gang(&view, req, choices, &used, fallback);
        }
        let mut reasons = Vec::new();
        let mut full = None;
        let mut book = view::write(&self.book);
        for choice in choices {
            let device = match self.resolve(&view, &book, choice) {
                Ok(d) => d,
                Err(why) => {
                    reasons.push(bound_owned(why.to_string()));
                    continue;
                }
            };
            let bytes = claim_bytes(req, &device);
            if bytes == 0 {
                reasons.push(format!("{}: the request needs no memory of this kind", device.label()));
                continue;
            }
            let address = device.hive.address.clone();
            let claim = Claim {
                hive_id: device.hive.hive_id(),
                model: &req.model,
                bytes,
                total: device.total,
                observed: device.used,
                processes: device.processes(),
                ttl: req.ttl,
                now_ms: rbee_shared::time::now_unix_ms(),
            };
            let result = if req.dry_run {
                book.settle(&address, &device.id, device.used, device.processes());
                let free = super::figures::placeable(
                    &book,
                    &address,
                    &device.id,
                    device.total,
                    device.used,
                    device.processes(),
                );
                if bytes <= free { Ok(None) } else { Err(Refused::NoRoom { free }) }
            } else {
                let key = req.request_id.clone().map(|k| (k, req.placed_for()));
                book.reserve_keyed(&address, &device.id, &claim, key).map(Some)
            };
            match result {
                Ok(tagged) => {
                    let (reservation, token) = tagged.map_or((None, None), |(r, t)| (Some(r), Some(t)));
                    let free_after = book.free(&address, &device.id, device.total, device.used)
                        - if reservation.is_none() { bytes } else { 0 };
                    // Durable before it is answered, and written outside the lock.
                    let starts = reservation.as_ref().and_then(|r| book.starts_of(&r.id)).unwrap_or_default();
                    drop(book);
                    if let Some(r) = &reservation {
                        self.persist_in_time(r, &starts, device.total, req.deadline)?;
                    }
                    let placed = PlacedDevice {
                        device_id: device.id.clone(),
                        index: device.gpu().map(|g| g.index),
                        free_after,
                    };
                    return Ok(Attempt::Done(Outcome::Placed(Box::new(Placement {
                        hive_id: device.hive.hive_id().to_owned(),
                        address,
                        device_id: device.id.clone(),
                        reservation,
                        bytes,
                        free_after,
                        policy: used.source.clone(),
                        fallback,
                        weights: super::weights::weights(&device.hive, &req.model),
                        prefetching: false,
                        token,
                        notes: notes(&device),
                        devices: vec![placed],
                        level: None,
                    }))));
                }
                Err(Refused::NoRoom { free }) => reasons.push(format!(
                    "{}: {} free < {}",
                    device.label(),
                    format_bytes(free),
                    format_bytes(bytes)
                )),
                Err(refused @ Refused::HiveFull { .. }) => {
                    reasons.push(format!("{}: {refused}", device.label()));
                    full.get_or_insert_with(|| exhausted(&hive_name(&device), &refused));
                }
                Err(refused @ Refused::BookFull { .. }) => return Err(exhausted("", &refused)),
                // Another Place with this key committed first (on this queen, keyed
                // Places take turns, so only a book replaced in between gets here).
                Err(Refused::KeyHeld { request_id, .. }) => {
                    drop(book);
                    return match self.replay(req, &request_id)? {
                        Some(answer) => Ok(Attempt::Done(answer)),
                        None => {
                            Ok(Attempt::Raced(vec![format!("request id {request_id:?} was taken meanwhile")]))
                        }
                    };
                }
            }
        }
        drop(book);
        if let Some(full) = full {
            return Err(full);
        }
        reasons.extend(self::reasons(&view, req));
        reasons.dedup();
        Ok(Attempt::Raced(reasons))
    }

    /// Commits the first gang of the policy's ranking whose every GPU still has room,
    /// all or nothing, under the book's lock; each gang that cannot be used says why.
    fn commit_gang(
        &self,
        view: &FleetView,
        req: &PlaceRequest,
        choices: Vec<Choice>,
        used: &Arc<Policy>,
        fallback: bool,
    ) -> Result<Attempt, QueenError> {
        let mut reasons = Vec::new();
        let mut book = view::write(&self.book);
        for choice in choices {
            let Choice::Gang(g) = choice else {
                reasons.push(format!(
                    "the policy chose one device for a gang of {} GPUs (a gang comes from \
                     fleet.best_gangs(request, n) or hive.gangs(request))",
                    req.gpus
                ));
                continue;
            };
            match self.try_gang(view, &mut book, req, &g, used, fallback) {
                Ok(GangTry::Placed(outcome, starts)) => {
                    // The reservation is in the book; durable before it is answered,
                    // and written outside the lock.
                    drop(book);
                    if let Outcome::Placed(p) = &outcome
                        && let Some(r) = &p.reservation
                    {
                        self.persist_in_time(r, &starts, gang_total(view, &g), req.deadline)?;
                    }
                    return Ok(Attempt::Done(outcome));
                }
                Ok(GangTry::Unfit(why)) => reasons.push(bound_owned(why)),
                Ok(GangTry::KeyHeld(request_id)) => {
                    drop(book);
                    return match self.replay(req, &request_id)? {
                        Some(answer) => Ok(Attempt::Done(answer)),
                        None => {
                            Ok(Attempt::Raced(vec![format!("request id {request_id:?} was taken meanwhile")]))
                        }
                    };
                }
                Err(e) => return Err(e),
            }
        }
        drop(book);
        if reasons.is_empty() {
            reasons.push("the policy chose no gang".into());
        }
        reasons.extend(gang_reasons(view, req));
        reasons.dedup();
        Ok(Attempt::Raced(reasons))
    }

    /// Tries one gang under the lock: the placement, or why not.
    fn try_gang(
        &self,
        view: &FleetView,
        book: &mut Book,
        req: &PlaceRequest,
        g: &Gang,
        used: &Arc<Policy>,
        fallback: bool,
    ) -> Result<GangTry, QueenError> {
        let name =
            if g.hive.hive_id().is_empty() { g.hive.address.clone() } else { g.hive.hive_id().to_owned() };
        if g.devices.len() != req.gpus as usize {
            return Ok(GangTry::Unfit(format!(
                "{name}: the policy chose {} GPUs for a gang of {}",
                g.devices.len(),
                req.gpus
            )));
        }
        // The hive as the view has it (a policy's gang may be older).
        let Some(hive) = view.hives.iter().find(|h| h.address == g.hive.address) else {
            return Ok(GangTry::Unfit(format!("{name}: the policy chose a hive that is not in the fleet")));
        };
        if hive.state != ConnState::Online {
            return Ok(GangTry::Unfit(format!("{name}: {}", hive.state.as_str())));
        }
        let Some(links) = Links::cached(hive) else {
            return Ok(GangTry::Unfit(format!("{name}: more than {} GPUs", gang::MAX_GANG_GPUS)));
        };
        let set = gang::set_of(hive, &g.devices);
        if set.count_ones() as usize != g.devices.len() || (links.mig & set != 0) {
            return Ok(GangTry::Unfit(format!(
                "{name}: the gang names GPUs the hive does not have, twice, or MIG instances"
            )));
        }
        if !links.meets(set, req.topology) {
            return Ok(GangTry::Unfit(format!(
                "{name}: the gang's GPUs are not connected as {} asks",
                req.topology.as_str()
            )));
        }
        let books = Books { locked: book, shared: &view.book };
        let mut devices = Vec::with_capacity(g.devices.len());
        for id in &g.devices {
            match view::gpu_ref(hive, id, &books) {
                Some(d) if d.health() == crate::fleet::Health::Healthy => devices.push(d),
                Some(d) => return Ok(GangTry::Unfit(format!("{}: {}", d.label(), d.health().as_str()))),
                None => {
                    return Ok(GangTry::Unfit(format!("{name}/{id}: no such device, or no reading for it")));
                }
            }
        }
        let bytes = req.vram_bytes;
        let address = hive.address.clone();
        let now_ms = rbee_shared::time::now_unix_ms();
        let reservation = if req.dry_run {
            for d in &devices {
                book.settle(&address, &d.id, d.used, d.processes());
                let free = super::figures::placeable(book, &address, &d.id, d.total, d.used, d.processes());
                if free < bytes {
                    return Ok(GangTry::Unfit(no_room(&d.label(), free, bytes, req.gpus)));
                }
            }
            None
        } else {
            let claims: Vec<(&str, Claim<'_>)> = devices
                .iter()
                .map(|d| {
                    (
                        d.id.as_str(),
                        Claim {
                            hive_id: hive.hive_id(),
                            model: &req.model,
                            bytes,
                            total: d.total,
                            observed: d.used,
                            processes: d.processes(),
                            ttl: req.ttl,
                            now_ms,
                        },
                    )
                })
                .collect();
            let key = req.request_id.clone().map(|k| (k, req.placed_for()));
            match book.reserve_gang_keyed(&address, &claims, key) {
                Ok(tagged) => Some(tagged),
                Err((_, Refused::KeyHeld { request_id, .. })) => return Ok(GangTry::KeyHeld(request_id)),
                Err((i, Refused::NoRoom { free })) => {
                    return Ok(GangTry::Unfit(no_room(&devices[i].label(), free, bytes, req.gpus)));
                }
                Err((_, refused @ Refused::HiveFull { .. })) => return Err(exhausted(&name, &refused)),
                Err((_, refused @ Refused::BookFull { .. })) => return Err(exhausted("", &refused)),
            }
        };
        let placed: Vec<PlacedDevice> = devices
            .iter()
            .map(|d| PlacedDevice {
                device_id: d.id.clone(),
                index: d.gpu().map(|g| g.index),
                free_after: book.free(&address, &d.id, d.total, d.used)
                    - if reservation.is_none() { bytes } else { 0 },
            })
            .collect();
        let (reservation, token) = reservation.map_or((None, None), |(r, t)| (Some(r), Some(t)));
        let starts = reservation.as_ref().and_then(|r| book.starts_of(&r.id)).unwrap_or_default();
        Ok(GangTry::Placed(
            Outcome::Placed(Box::new(Placement {
                hive_id: hive.hive_id().to_owned(),
                address,
                device_id: devices[0].id.clone(),
                reservation,
                bytes,
                free_after: placed[0].free_after,
                policy: used.source.clone(),
                fallback,
                weights: super::weights::weights(hive, &req.model),
                prefetching: false,
                notes: notes(&devices[0]),
                token,
                level: Some(links.level(set)),
                devices: placed,
            })),
            starts,
        ))
    }

    /// Turns a policy's choice into a device of the view: a device handle is used as
    /// the policy returned it; a named one is looked up.
    fn resolve(&self, view: &FleetView, book: &Book, choice: Choice) -> Result<DeviceRef, Unusable> {
        let (hive_key, device_id) = match choice {
            Choice::Gang(g) if g.devices.len() == 1 => {
                (g.hive.address.clone(), g.devices.into_iter().next().unwrap_or_default())
            }
            Choice::Gang(g) => return Err(Unusable::Gang(g.hive.address.clone(), g.devices.len())),
            Choice::Device(d) => {
                if d.hive.state != ConnState::Online {
                    return Err(Unusable::NotOnline { hive: hive_name(&d), state: d.hive.state.as_str() });
                }
                return Ok(d);
            }
            Choice::Named { hive, device } => (hive, device),
        };
        let Some(hive) = view.hives.iter().find(|h| h.matches(&hive_key)) else {
            return Err(Unusable::NoHive(hive_key));
        };
        if hive.state != ConnState::Online {
            return Err(Unusable::NotOnline { hive: hive_key, state: hive.state.as_str() });
        }
        let books = Books { locked: book, shared: &view.book };
        let device = if device_id == view::CPU_DEVICE {
            view::cpu_ref(hive, &books)
        } else {
            view::gpu_ref(hive, &device_id, &books)
        };
        device.ok_or(Unusable::NoDevice { hive: hive_key, device: device_id })
    }

    /// Writes a new reservation durably unless the caller's deadline has passed: one
    /// not yet written is taken back, one written after it is released (the caller
    /// was told it failed, so nothing may stay promised in its name).
    fn persist_in_time(
        &self,
        r: &Reservation,
        starts: &[u64],
        total: u64,
        deadline: Option<std::time::Instant>,
    ) -> Result<(), QueenError> {
        let late = || deadline.is_some_and(|d| std::time::Instant::now() >= d);
        let refused = || {
            QueenError::DeadlineExceeded(format!(
                "the caller's deadline passed before the placement was answered; reservation {} was not kept",
                r.id
            ))
        };
        if late() {
            view::write(&self.book).release(&r.id);
            return Err(refused());
        }
        self.persist_placed(r, starts, total)?;
        if late() {
            // Forgotten as never made: the caller may retry with the same request id.
            if let Err(e) = self.remove(&r.id, None) {
                // The release could not be written: it comes back after a restart and
                // expires with its TTL (counting more, never less).
                tracing::error!(error = %e, reservation = %r.id, "a late reservation could not be released");
            }
            tracing::warn!(reservation = %r.id, "committed after the caller's deadline; released");
            return Err(refused());
        }
        Ok(())
    }

    /// Places a request.
    pub async fn place(self: &Arc<Self>, req: PlaceRequest) -> Result<Outcome, QueenError> {
        let (me, started) = (self.clone(), std::time::Instant::now());
        let outcome = tokio::task::spawn_blocking(move || me.place_blocking(&req)).await.map_err(|e| {
            QueenError::Policy {
                policy: self.policy().source.clone(),
                error: PolicyError::Thread(format!("failed: {e}")),
            }
        })?;
        self.place_stats.record(place_result(&outcome), started.elapsed());
        if let Ok(Outcome::Placed(p)) = &outcome {
            self.place_stats.record_size(p.devices.len());
        }
        outcome
    }
}

/// Why each hive or device cannot take the request (bounded: hive data is a peer's).
fn reasons(view: &FleetView, req: &PlaceRequest) -> Vec<String> {
    if req.gpus > 1 {
        return gang_reasons(view, req);
    }
    view::assess(view, req, true).1.into_iter().map(bound_owned).collect()
}

/// What the caller should know about the chosen device: its hive's CPU load over the
/// threshold (GPU work goes there anyway; the load only ranks it).
fn notes(device: &DeviceRef) -> Vec<String> {
    match &device.hive.health.cpu_busy {
        Some(busy) if !device.is_cpu() => {
            vec![format!("{}: degraded: {} (not a veto for GPU work)", hive_name(device), busy.reason)]
        }
        _ => Vec::new(),
    }
}

impl Scheduler {
    /// Waits for this queen's turn with request id `key` (Places with the same key
    /// never decide at the same time). Striped: keys that share a stripe also take
    /// turns, which costs only waiting.
    fn key_turn(&self, key: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        let stripe = (rustc_hash::FxBuildHasher.hash_one(key) as usize) % self.key_turns.len();
        self.key_turns[stripe].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The answer for a keyed request whose key is held: the live reservation again
    /// (with its token), or FAILED_PRECONDITION when it was asked for with a different
    /// request or it ended less than the grace ago; `None` when the key is free.
    fn replay(&self, req: &PlaceRequest, key: &str) -> Result<Option<Outcome>, QueenError> {
        // The fleet first, as every path reads it: never while the book is locked.
        let hives = self.view().hives;
        let book = view::read(&self.book);
        let r = match book.key_state(key) {
            KeyState::Free => return Ok(None),
            KeyState::Ended(e) => {
                return Err(QueenError::FailedPrecondition(format!(
                    "request_id {key:?} was used by reservation {}, which was {} at {} ms since the epoch; \
                     a request id is not reused for {} s after its reservation ended: use a new one",
                    e.id,
                    e.how,
                    e.at_unix_ms,
                    super::book::ENDED_GRACE.as_secs()
                )));
            }
            KeyState::Live(r) => r.clone(),
        };
        let differences = req.differences(&r);
        if !differences.is_empty() {
            return Err(QueenError::FailedPrecondition(format!(
                "request_id {key:?} is held by reservation {} for a different request ({}); use a new request id",
                r.id,
                differences.join("; ")
            )));
        }
        let hive = hives.iter().find(|h| h.address == r.address);
        let books = Books { locked: &book, shared: &self.book };
        let device = hive.and_then(|h| {
            if r.device_id == view::CPU_DEVICE {
                view::cpu_ref(h, &books)
            } else {
                view::gpu_ref(h, &r.device_id, &books)
            }
        });
        let weights = hive.map_or(
            super::weights::Weights { tier: super::weights::Tier::Absent, bytes: None, est_load_ms: None },
            |h| super::weights::weights(h, &r.model),
        );
        // Every device it holds, as the first answer listed them.
        let devices = r
            .devices()
            .map(|id| {
                let gpu = hive.and_then(|h| view::gpu_ref(h, id, &books));
                // The index from the capabilities: known even before the first sample.
                let index = hive.and_then(|h| h.caps.as_ref()?.caps.gpus.get(id).map(|g| g.index));
                PlacedDevice { device_id: id.to_owned(), index, free_after: gpu.map_or(0, |d| d.free) }
            })
            .collect();
        // A gang's level, from the hive's links as they are now.
        let level = hive.filter(|_| !r.gang.is_empty()).and_then(|h| {
            let links = Links::cached(h)?;
            Some(links.level(gang::set_of(h, &r.gang)))
        });
        let notes = device.as_ref().map(notes).unwrap_or_default();
        let token = r.keyed.as_ref().map(|k| k.token.clone());
        drop(book);
        tracing::info!(reservation = %r.id, request_id = %key, "a retried Place answered its reservation again");
        Ok(Some(Outcome::Placed(Box::new(Placement {
            hive_id: r.hive_id.clone(),
            address: r.address.clone(),
            device_id: r.device_id.clone(),
            bytes: r.bytes,
            free_after: device.map_or(0, |d| d.free),
            policy: self.policy().source.clone(),
            fallback: false,
            weights,
            prefetching: false,
            notes,
            devices,
            level,
            token,
            reservation: Some(r),
        }))))
    }
}

/// Why each hive cannot take the gang (bounded).
fn gang_reasons(view: &FleetView, req: &PlaceRequest) -> Vec<String> {
    let mut reasons = Vec::new();
    gang::scan_gangs(
        view,
        req,
        |_, _| {},
        |why| {
            if reasons.len() < 64 {
                reasons.push(bound_owned(why()));
            }
        },
    );
    reasons
}

/// A gang member without room.
fn no_room(label: &str, free: u64, bytes: u64, gpus: u32) -> String {
    format!(
        "{label}: {} free < {} (none of the gang of {gpus} was reserved)",
        format_bytes(free),
        format_bytes(bytes)
    )
}

/// The capacity a shared store re-checks each of a gang's GPUs against: the smallest.
fn gang_total(view: &FleetView, g: &Gang) -> u64 {
    let locked = view::read(&view.book);
    let books = Books { locked: &locked, shared: &view.book };
    g.devices.iter().filter_map(|id| view::gpu_ref(&g.hive, id, &books)).map(|d| d.total).min().unwrap_or(0)
}

/// The hive's id, else its address.
fn hive_name(device: &DeviceRef) -> String {
    rbee_shared::identity::display_name(device.hive.hive_id(), &device.hive.address).to_owned()
}

/// How a `place` call's answer counts in the placement metrics.
fn place_result<E>(answer: &Result<Outcome, E>) -> PlaceResult {
    match answer {
        Ok(Outcome::Placed(_)) => PlaceResult::Placed,
        Ok(Outcome::Rejected { .. }) => PlaceResult::Rejected,
        Err(_) => PlaceResult::Error,
    }
}
