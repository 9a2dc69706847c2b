//! The reservation book: admission control that never promises the same memory twice.
//!
//! For each device, free memory for placement is
//! `total - max(observed used, baseline + sum of active reservations)`, where the
//! baseline is the usage observed when the oldest active reservation was made.
//! Reservations settle (stop counting) in order once observed usage has grown by their
//! size (each also only once the usage grew by its size above what it was when the
//! reservation was made: growth from before never settles it); active ones expire
//! after their TTL. The book is one plain struct behind one
//! lock: checking and reserving happen under that lock, never across an `.await`.
//!
//! Where the hive lists the device's processes, settlement goes by process instead
//! ([`processes`]): a worker carrying its reservation id settles exactly that one, a new
//! process reaching the reserved size settles the oldest it fits, and growth of
//! processes already there settles nothing. Such a device commits
//! `observed + active − already loaded by tagged workers`, so memory another process
//! takes is never promised to a reservation still loading. A reservation settled by
//! process counts again once every process that settled it is gone before it is
//! released.
//!
//! The book holds at most [`BookLimits::per_hive`] reservations per hive and
//! [`BookLimits::total`] in all; it lists them in pages, oldest first.
//!
//! A reservation placed with a request id (an idempotency key, [`Keyed`]) is found by
//! that id while it lives, and for [`ENDED_GRACE`] after it ended ([`keyed`]): the
//! check and the reserve happen under the book's one lock, so one id never holds two
//! reservations.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::time::Duration;

use serde::Serialize;

/// Whether a reservation still counts against its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    /// Counted until the observed usage shows the model loaded.
    Active,
    /// Observed usage grew by its size; the memory is in the samples now.
    Settled,
    /// Released (answered by `Release` only: the book no longer holds it).
    Released,
}

/// One reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reservation {
    /// Unique id.
    pub id: String,
    /// The hive's id.
    pub hive_id: String,
    /// The hive's address (the fleet key).
    pub address: String,
    /// The GPU id, or "cpu".
    pub device_id: String,
    /// The model.
    pub model: String,
    /// Bytes reserved.
    pub bytes: u64,
    /// Active or settled.
    pub state: ReservationState,
    /// Created, ms since the Unix epoch.
    pub created_at_unix_ms: u64,
    /// Active reservations expire then (ms since the Unix epoch).
    pub expires_at_unix_ms: u64,
    /// The request id it was placed with, if any.
    pub keyed: Option<Keyed>,
    /// A gang's GPUs (`device_id` first), each holding `bytes`; empty for one device.
    /// The gang is kept, settled, released and expired as one reservation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gang: Vec<String>,
}

impl Reservation {
    /// Every device the reservation holds `bytes` on (`device_id` first).
    pub fn devices(&self) -> impl Iterator<Item = &str> {
        let single = self.gang.is_empty().then_some(self.device_id.as_str());
        single.into_iter().chain(self.gang.iter().map(String::as_str))
    }
}

/// A device in the book: `(hive address, device id)`.
pub type DeviceKey = (String, String);

/// Per-device accounting.
#[derive(Debug, Default, Clone)]
struct DeviceBook {
    /// Observed usage when the oldest active reservation was made.
    baseline: u64,
    /// Active reservation ids, oldest first.
    active: VecDeque<String>,
    /// Sum of the active reservations' bytes.
    active_bytes: u64,
    /// The pids on the device when each active reservation was made, for those made
    /// while the hive listed the device's processes.
    known: HashMap<String, Vec<u32>>,
    /// The observed usage when each active reservation was made (its floor): without
    /// process lists, it settles only once usage grew by its size above this, so growth
    /// from before it was made never settles it.
    floors: HashMap<String, u64>,
    /// Pids that settled a reservation here (pruned to those still listed).
    claimed: BTreeSet<u32>,
    /// Bytes that tagged workers of still-active reservations already hold.
    loaded: u64,
    /// Whether the last observation came with a process list.
    by_process: bool,
}

impl DeviceBook {
    /// Bytes committed on the device given the observed usage.
    fn committed(&self, observed: u64) -> u64 {
        let whole = self.baseline + self.active_bytes;
        if self.by_process {
            whole.max(observed.saturating_add(self.active_bytes.saturating_sub(self.loaded)))
        } else {
            whole
        }
    }
}

/// The devices of one hive that have active reservations: a handful, so a small vector
/// searched in order beats hashing device ids on the placement path.
#[derive(Debug, Default, Clone)]
pub struct HiveBook(Vec<(String, DeviceBook)>);

impl HiveBook {
    fn get(&self, device_id: &str) -> Option<&DeviceBook> {
        self.0.iter().find(|(id, _)| id == device_id).map(|(_, d)| d)
    }

    fn get_mut(&mut self, device_id: &str) -> Option<&mut DeviceBook> {
        self.0.iter_mut().find(|(id, _)| id == device_id).map(|(_, d)| d)
    }

    fn entry(&mut self, device_id: &str) -> &mut DeviceBook {
        match self.0.iter().position(|(id, _)| id == device_id) {
            Some(i) => &mut self.0[i].1,
            None => {
                self.0.push((device_id.to_owned(), DeviceBook::default()));
                &mut self.0.last_mut().expect("just pushed").1
            }
        }
    }

    fn remove(&mut self, device_id: &str) {
        self.0.retain(|(id, _)| id != device_id);
    }

    /// Free bytes on one of this hive's devices.
    pub fn free(&self, device_id: &str, total: u64, observed: u64) -> u64 {
        let committed = self.get(device_id).map_or(0, |d| d.committed(observed));
        total.saturating_sub(observed.max(committed))
    }
}

/// How many reservations the book holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookLimits {
    /// Per hive (active and settled).
    pub per_hive: usize,
    /// In all.
    pub total: usize,
}

impl Default for BookLimits {
    fn default() -> Self {
        Self { per_hive: 1024, total: 65_536 }
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not enough free memory on the device.
    #[error("{free} bytes free")]
    NoRoom {
        /// Free bytes on the device at the time.
        free: u64,
    },
    /// The hive holds as many reservations as it may.
    #[error("the hive holds {limit} reservations, the most per hive")]
    HiveFull {
        /// The per-hive limit.
        limit: usize,
    },
    /// The book holds as many reservations as it may.
    #[error("the queen holds {limit} reservations, the most in all")]
    BookFull {
        /// The total limit.
        limit: usize,
    },
    /// The request id is held already (by a live reservation, or one that ended less
    /// than [`ENDED_GRACE`] ago).
    #[error("request id {request_id:?} is held by reservation {id}")]
    KeyHeld {
        /// The request id.
        request_id: String,
        /// The reservation that holds it.
        id: String,
    },
}

/// Where a page of the reservation list starts: after this (created, id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// The last listed reservation's creation time, ms since the Unix epoch.
    pub created_at_unix_ms: u64,
    /// Its id.
    pub id: String,
}

/// One page of the reservation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Reservations, oldest first.
    pub reservations: Vec<Reservation>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// What to reserve.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    /// The hive's id.
    pub hive_id: &'a str,
    /// The model.
    pub model: &'a str,
    /// Bytes.
    pub bytes: u64,
    /// Device total bytes.
    pub total: u64,
    /// Device observed used bytes (latest sample).
    pub observed: u64,
    /// The device's processes (latest sample), where the hive lists them.
    pub processes: Option<&'a rbee_shared::GpuProcesses>,
    /// How long an active reservation lasts.
    pub ttl: Duration,
    /// Now, ms since the Unix epoch.
    pub now_ms: u64,
}

/// The book.
#[derive(Debug, Default)]
pub struct Book {
    /// Every reservation by id.
    reservations: HashMap<String, Reservation>,
    /// Every reservation in list order: (created, id).
    order: BTreeSet<(u64, String)>,
    /// Reservations per hive address.
    counts: rustc_hash::FxHashMap<String, usize>,
    /// Devices with active reservations, per hive address (one lookup per hive).
    hives: rustc_hash::FxHashMap<String, HiveBook>,
    /// How many reservations it holds at most.
    limits: BookLimits,
    /// Reservations settled by process, per hive address, with the pids that settled
    /// them: undone when those are all gone ([`processes`]).
    settled_by: HashMap<String, Vec<processes::SettledBy>>,
    /// Live reservations by request id.
    by_request: HashMap<String, String>,
    /// Reservations that ended recently ([`ended`]).
    ended: keyed::EndedBook,
}

impl Book {
    /// An empty book that holds at most `limits`.
    pub fn new(limits: BookLimits) -> Self {
        Self { limits, ended: keyed::EndedBook::new(limits.total.max(4096)), ..Self::default() }
    }

    /// Reservations held.
    pub fn len(&self) -> usize {
        self.reservations.len()
    }

    /// True when no reservation is held.
    pub fn is_empty(&self) -> bool {
        self.reservations.is_empty()
    }

    /// Refuses when the book holds as many reservations as it may in all.
    pub fn check_total(&self) -> Result<(), Refused> {
        if self.reservations.len() >= self.limits.total {
            return Err(Refused::BookFull { limit: self.limits.total });
        }
        Ok(())
    }

    /// Bytes committed on a device (baseline + active), if it has active reservations.
    pub fn committed(&self, address: &str, device_id: &str) -> Option<u64> {
        let d = self.hives.get(address)?.get(device_id)?;
        Some(d.baseline + d.active_bytes)
    }

    /// The hive's devices with active reservations, if any (one lookup per hive).
    pub fn hive(&self, address: &str) -> Option<&HiveBook> {
        self.hives.get(address)
    }

    /// Free bytes for placement on a device.
    pub fn free(&self, address: &str, device_id: &str, total: u64, observed: u64) -> u64 {
        match self.hives.get(address) {
            Some(hive) => hive.free(device_id, total, observed),
            None => total.saturating_sub(observed),
        }
    }

    /// Bytes held by active reservations on a device (0 when it has none).
    pub fn reserved(&self, address: &str, device_id: &str) -> u64 {
        self.hives.get(address).and_then(|h| h.get(device_id)).map_or(0, |d| d.active_bytes)
    }

    /// Settles active reservations, oldest first, while the observed usage shows them
    /// loaded. Returns the ids settled.
    pub fn observe(&mut self, address: &str, device_id: &str, observed: u64) -> Vec<String> {
        let mut settled = Vec::new();
        let Some(devices) = self.hives.get_mut(address) else { return settled };
        let Some(d) = devices.get_mut(device_id) else { return settled };
        while let Some(id) = d.active.front() {
            let bytes = self.reservations.get(id).map_or(0, |r| r.bytes);
            let floor = d.floors.get(id).copied().unwrap_or(0);
            if observed < d.baseline.max(floor).saturating_add(bytes) {
                break;
            }
            d.baseline += bytes;
            d.active_bytes -= bytes;
            let id = d.active.pop_front().unwrap_or_default();
            d.known.remove(&id);
            d.floors.remove(&id);
            if let Some(r) = self.reservations.get_mut(&id) {
                r.state = ReservationState::Settled;
            }
            settled.push(id);
        }
        if d.active.is_empty() {
            devices.remove(device_id);
            if devices.0.is_empty() {
                self.hives.remove(address);
            }
        }
        self.whole_gangs(address, settled)
    }

    /// Of the reservations just settled on one device, those settled as a whole: a
    /// gang still queued on another of its devices stays active (it counts there until
    /// every device shows it).
    fn whole_gangs(&mut self, address: &str, mut settled: Vec<String>) -> Vec<String> {
        settled.retain(|id| {
            let Some(r) = self.reservations.get_mut(id).filter(|r| !r.gang.is_empty()) else { return true };
            let hive = self.hives.get(address);
            let pending =
                r.gang.iter().any(|dev| hive.and_then(|h| h.get(dev)).is_some_and(|d| d.active.contains(id)));
            if pending {
                r.state = ReservationState::Active;
            }
            !pending
        });
        settled
    }

    /// Reserves `claim.bytes` on a device if they are free and the hive and the book
    /// may hold one more reservation. Settles first with the observed usage.
    pub fn reserve(
        &mut self,
        address: &str,
        device_id: &str,
        claim: &Claim<'_>,
    ) -> Result<Reservation, Refused> {
        self.reserve_tagged(address, device_id, claim).map(|(r, _)| r)
    }

    /// [`Book::reserve`], answering also the reservation's secret worker tag. The
    /// reservation's id is the tag's digest ([`rbee_shared::gpu_process::ReservationToken`]);
    /// the book keeps no token.
    pub fn reserve_tagged(
        &mut self,
        address: &str,
        device_id: &str,
        claim: &Claim<'_>,
    ) -> Result<(Reservation, rbee_shared::gpu_process::ReservationToken), Refused> {
        self.reserve_keyed(address, device_id, claim, None)
    }

    /// [`Book::reserve_tagged`] for a request with an idempotency key: refused with
    /// [`Refused::KeyHeld`] when a live reservation (or one that ended less than
    /// [`ENDED_GRACE`] ago) holds the key, checked under the same lock as the reserve.
    pub fn reserve_keyed(
        &mut self,
        address: &str,
        device_id: &str,
        claim: &Claim<'_>,
        key: Option<(String, PlacedFor)>,
    ) -> Result<(Reservation, rbee_shared::gpu_process::ReservationToken), Refused> {
        self.reserve_gang_keyed(address, &[(device_id, claim.clone())], key).map_err(|(_, refused)| refused)
    }

    /// Reserves `bytes` on EVERY device of `members` (one hive's GPUs, with each one's
    /// claim: the model, bytes, TTL and time are the first's) as one reservation, or
    /// nothing: each device is settled and checked first, and the first that has no
    /// room refuses the whole gang (its position and why). One member makes a plain
    /// reservation (no `gang` list).
    pub fn reserve_gang(
        &mut self,
        address: &str,
        members: &[(&str, Claim<'_>)],
    ) -> Result<(Reservation, rbee_shared::gpu_process::ReservationToken), (usize, Refused)> {
        self.reserve_gang_keyed(address, members, None)
    }

    /// [`Book::reserve_gang`] with an idempotency key ([`Book::reserve_keyed`]): the key
    /// is checked under the same lock as the reserve, and one reservation holds it for
    /// the whole gang.
    pub fn reserve_gang_keyed(
        &mut self,
        address: &str,
        members: &[(&str, Claim<'_>)],
        key: Option<(String, PlacedFor)>,
    ) -> Result<(Reservation, rbee_shared::gpu_process::ReservationToken), (usize, Refused)> {
        let Some((first_id, claim)) = members.first() else {
            return Err((0, Refused::NoRoom { free: 0 }));
        };
        if let Some((request_id, _)) = &key
            && let Some(id) = self.key_holder(request_id)
        {
            return Err((0, Refused::KeyHeld { request_id: request_id.clone(), id: id.to_owned() }));
        }
        self.check_total().map_err(|r| (0, r))?;
        if self.counts.get(address).copied().unwrap_or(0) >= self.limits.per_hive {
            return Err((0, Refused::HiveFull { limit: self.limits.per_hive }));
        }
        for (i, (device_id, c)) in members.iter().enumerate() {
            self.settle(address, device_id, c.observed, c.processes);
            let free = self.free(address, device_id, c.total, c.observed);
            if claim.bytes > free || members[..i].iter().any(|(d, _)| d == device_id) {
                return Err((i, Refused::NoRoom { free }));
            }
        }
        let token = rbee_shared::gpu_process::ReservationToken::generate();
        let r = Reservation {
            id: token.reservation_id(),
            hive_id: claim.hive_id.to_owned(),
            address: address.to_owned(),
            device_id: (*first_id).to_owned(),
            model: claim.model.to_owned(),
            bytes: claim.bytes,
            state: ReservationState::Active,
            created_at_unix_ms: claim.now_ms,
            expires_at_unix_ms: claim.now_ms.saturating_add(claim.ttl.as_millis() as u64),
            keyed: key.map(|(request_id, placed_for)| Keyed { request_id, placed_for, token: token.clone() }),
            gang: if members.len() > 1 {
                members.iter().map(|(d, _)| (*d).to_owned()).collect()
            } else {
                Vec::new()
            },
        };
        if let Some(k) = &r.keyed {
            self.by_request.insert(k.request_id.clone(), r.id.clone());
        }
        for (device_id, c) in members {
            let d = self.hives.entry(address.to_owned()).or_default().entry(device_id);
            if d.active.is_empty() {
                d.baseline = c.observed;
                d.by_process = c.processes.is_some();
            }
            if let Some(p) = c.processes {
                d.known.insert(r.id.clone(), p.listed.iter().map(|p| p.pid).collect());
            }
            d.floors.insert(r.id.clone(), c.observed);
            d.active.push_back(r.id.clone());
            d.active_bytes += r.bytes;
        }
        self.order.insert((r.created_at_unix_ms, r.id.clone()));
        *self.counts.entry(address.to_owned()).or_default() += 1;
        self.reservations.insert(r.id.clone(), r.clone());
        Ok((r, token))
    }

    /// One reservation by id.
    pub fn get(&self, id: &str) -> Option<&Reservation> {
        self.reservations.get(id)
    }

    /// Where a reservation starts on its device: the usage below it (the baseline plus
    /// the active reservations ahead of it). It settles once the observed usage reaches
    /// this plus its bytes. Kept with the reservation so that a restart can rebuild the
    /// device's baseline; `None` for a settled or unknown reservation.
    pub fn start_of(&self, id: &str) -> Option<u64> {
        let r = self.reservations.get(id).filter(|r| r.state == ReservationState::Active)?;
        self.start_on(r, &r.device_id)
    }

    /// Where a reservation starts on one of its devices; `None` where it is settled.
    fn start_on(&self, r: &Reservation, device_id: &str) -> Option<u64> {
        let d = self.hives.get(&r.address)?.get(device_id)?;
        let pos = d.active.iter().position(|a| *a == r.id)?;
        let mut start = d.baseline;
        for ahead in d.active.iter().take(pos) {
            start += self.reservations.get(ahead).map_or(0, |a| a.bytes);
        }
        Some(start)
    }

    /// [`Book::start_of`] on each of the reservation's devices (in [`Reservation::devices`]
    /// order; 0 where it is settled already); `None` for a settled or unknown one.
    pub fn starts_of(&self, id: &str) -> Option<Vec<u64>> {
        let r = self.reservations.get(id).filter(|r| r.state == ReservationState::Active)?;
        Some(r.devices().map(|dev| self.start_on(r, dev).unwrap_or(0)).collect())
    }

    /// Puts back reservations kept across a restart, each with its start (see
    /// [`Book::start_of`]); expiry stays absolute. Active ones queue on their device in
    /// the order of their starts, and the device's baseline is the lowest start. A kept
    /// start is only ever too high (when a reservation ahead of it was released after
    /// it was written), so a restored book counts more, never less. The limits are not
    /// applied: what was promised stays promised.
    pub fn restore(&mut self, kept: Vec<(Reservation, u64)>) {
        self.restore_gangs(kept.into_iter().map(|(r, start)| (r, vec![start])).collect());
    }

    /// [`Book::restore`] with a start per device of each reservation (in
    /// [`Reservation::devices`] order; a missing one is the first's). An active gang
    /// queues on each of its devices in the order of its starts there.
    pub fn restore_gangs(&mut self, kept: Vec<(Reservation, Vec<u64>)>) {
        // Per device: (start, created, id, bytes).
        let mut queues: BTreeMap<DeviceKey, Vec<(u64, u64, String, u64)>> = BTreeMap::new();
        for (r, starts) in kept {
            if self.reservations.contains_key(&r.id) {
                continue;
            }
            if r.state == ReservationState::Active {
                for (i, dev) in r.devices().enumerate() {
                    let start = starts.get(i).or(starts.first()).copied().unwrap_or(0);
                    queues.entry((r.address.clone(), dev.to_owned())).or_default().push((
                        start,
                        r.created_at_unix_ms,
                        r.id.clone(),
                        r.bytes,
                    ));
                }
            }
            self.order.insert((r.created_at_unix_ms, r.id.clone()));
            *self.counts.entry(r.address.clone()).or_default() += 1;
            if let Some(k) = &r.keyed {
                self.by_request.insert(k.request_id.clone(), r.id.clone());
            }
            self.reservations.insert(r.id.clone(), r);
        }
        for ((address, device), mut queue) in queues {
            queue.sort();
            let d = self.hives.entry(address).or_default().entry(&device);
            for (start, _, id, bytes) in queue {
                if d.active.is_empty() {
                    d.baseline = start;
                }
                // The kept start is the floor: it is never below the usage the
                // reservation saw ahead of it, so settling stays on the safe side.
                d.floors.insert(id.clone(), start);
                d.active.push_back(id);
                d.active_bytes += bytes;
            }
        }
    }

    /// Removes a reservation.
    pub fn release(&mut self, id: &str) -> Option<Reservation> {
        let r = self.reservations.remove(id)?;
        if let Some(k) = &r.keyed {
            self.by_request.remove(&k.request_id);
        }
        self.forget_settled_by(&r.address, id);
        self.order.remove(&(r.created_at_unix_ms, r.id.clone()));
        if let Some(n) = self.counts.get_mut(&r.address) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&r.address);
            }
        }
        // Every device where it still counts (a gang may be settled on some already).
        if let Some(devices) = self.hives.get_mut(&r.address) {
            for dev in r.devices() {
                let Some(d) = devices.get_mut(dev) else { continue };
                let Some(pos) = d.active.iter().position(|x| x == id) else { continue };
                d.active.remove(pos);
                d.active_bytes -= r.bytes;
                d.known.remove(id);
                d.floors.remove(id);
                if d.active.is_empty() {
                    devices.remove(dev);
                }
            }
            if devices.0.is_empty() {
                self.hives.remove(&r.address);
            }
        }
        Some(r)
    }

    /// Removes every reservation `drop` selects; returns them.
    pub fn drop_where(&mut self, mut drop: impl FnMut(&Reservation) -> bool) -> Vec<Reservation> {
        let ids: Vec<String> = self.reservations.values().filter(|r| drop(r)).map(|r| r.id.clone()).collect();
        ids.iter().filter_map(|id| self.release(id)).collect()
    }

    /// Removes active reservations past their expiry.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Reservation> {
        self.drop_where(|r| r.state == ReservationState::Active && r.expires_at_unix_ms <= now_ms)
    }

    /// Devices with active reservations, for settling.
    /// Also those with a reservation settled by process, whose settlement a sample may
    /// undo.
    pub fn active_devices(&self) -> Vec<DeviceKey> {
        let mut keys: Vec<DeviceKey> = self
            .hives
            .iter()
            .flat_map(|(a, ds)| ds.0.iter().map(move |(d, _)| (a.clone(), d.clone())))
            .collect();
        keys.extend(self.settled_by_devices());
        keys.sort();
        keys.dedup();
        keys
    }

    /// Every reservation, in no order (no copies).
    pub fn iter(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.values()
    }

    /// Every reservation, oldest first.
    pub fn list(&self) -> Vec<Reservation> {
        self.order.iter().filter_map(|(_, id)| self.reservations.get(id).cloned()).collect()
    }

    /// Up to `size` reservations after `after` (from the start when `None`), oldest
    /// first. Reservations made or dropped between pages do not shift the others.
    pub fn page(&self, after: Option<&Cursor>, size: usize) -> Page {
        let start = match after {
            Some(c) => Bound::Excluded((c.created_at_unix_ms, c.id.clone())),
            None => Bound::Unbounded,
        };
        let mut keys = self.order.range((start, Bound::Unbounded));
        let reservations: Vec<Reservation> =
            keys.by_ref().take(size).filter_map(|(_, id)| self.reservations.get(id).cloned()).collect();
        let next = match (keys.next(), reservations.last()) {
            (Some(_), Some(last)) => {
                Some(Cursor { created_at_unix_ms: last.created_at_unix_ms, id: last.id.clone() })
            }
            _ => None,
        };
        Page { reservations, next }
    }

    /// Whether the reservation still counts on one of its devices (it is active and not
    /// settled there yet: a gang settles GPU by GPU).
    pub fn counts_on(&self, r: &Reservation, device_id: &str) -> bool {
        r.state == ReservationState::Active
            && self
                .hives
                .get(&r.address)
                .and_then(|h| h.get(device_id))
                .is_some_and(|d| d.active.contains(&r.id))
    }

    /// Sum of active bytes per device (for tests and invariants).
    pub fn active_bytes(&self) -> BTreeMap<DeviceKey, u64> {
        let mut out = BTreeMap::new();
        for r in self.reservations.values().filter(|r| r.state == ReservationState::Active) {
            for dev in r.devices().filter(|dev| self.counts_on(r, dev)) {
                *out.entry((r.address.clone(), dev.to_owned())).or_insert(0) += r.bytes;
            }
        }
        out
    }
}

pub mod keyed;
mod processes;

pub use keyed::{ENDED_GRACE, Ended, EndedHow, KeyState, Keyed, NotRenewed, PlacedFor};
#[cfg(test)]
mod tests;
