//! The scheduler: placement with an operator's Rhai policy over the live fleet, and
//! admission control so that two placements never promise the same memory.
//!
//! - [`request`]: the validated request.
//! - [`view`]: the fleet as policies see it, and the eligibility rules.
//! - [`policy`]: the sandboxed Rhai runtime.
//! - [`book`]: the reservation book.

pub mod book;
mod events;
pub mod policy;
pub mod request;
pub mod synthetic;
pub mod view;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rbee_shared::bytesize::format_bytes;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use self::events::{SCHEDULER_EVENT_CAPACITY, SchedulerEvent};

use self::book::{Book, Claim, Reservation};
use self::policy::{
    Choice, DEFAULT_POLICY, DEFAULT_POLICY_NAME, Decision, Limits, Policy, PolicyError, PolicyRuntime,
};
use self::request::PlaceRequest;
use self::view::{Books, DeviceRef, FleetView, claim_bytes};
use crate::QueenError;
use crate::fleet::{ConnState, Fleet, HiveSnapshot};

/// Where the scheduler reads hives from: the live fleet, or a fixed set of snapshots
/// (`queen policy check --fleet FILE`, tests, benchmarks).
pub trait HiveSource: Send + Sync {
    /// Every hive's newest view.
    fn hives(&self) -> Vec<Arc<HiveSnapshot>>;
}

impl HiveSource for Fleet {
    fn hives(&self) -> Vec<Arc<HiveSnapshot>> {
        self.list()
    }
}

/// A fixed set of hive snapshots.
pub struct StaticHives(pub Vec<Arc<HiveSnapshot>>);

impl HiveSource for StaticHives {
    fn hives(&self) -> Vec<Arc<HiveSnapshot>> {
        self.0.clone()
    }
}

/// How the scheduler behaves.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// The policy file (watched); `None` uses the built-in default.
    pub policy_file: Option<PathBuf>,
    /// When the policy fails, answer with the built-in default instead of an error.
    pub fallback_to_default: bool,
    /// Sandbox limits and the wall-time budget.
    pub limits: Limits,
    /// Reservations on a hive lost for longer than this are dropped.
    pub lost_grace: Duration,
    /// How often reservations are settled/expired and the policy file is checked.
    pub maintain_every: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            policy_file: None,
            fallback_to_default: false,
            limits: Limits::default(),
            lost_grace: Duration::from_secs(60),
            maintain_every: Duration::from_secs(1),
        }
    }
}

/// A placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Hive id.
    pub hive_id: String,
    /// Hive address.
    pub address: String,
    /// GPU id or "cpu".
    pub device_id: String,
    /// The reservation (none for a dry run).
    pub reservation: Option<Reservation>,
    /// Bytes claimed.
    pub bytes: u64,
    /// Free on the device after the placement.
    pub free_after: u64,
    /// The policy that decided.
    pub policy: String,
    /// The built-in default decided because the policy failed.
    pub fallback: bool,
}

/// What `place` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Placed.
    Placed(Box<Placement>),
    /// Not placed: the reason and per-hive reasons.
    Rejected {
        /// Why.
        reason: String,
        /// Per hive or device.
        hive_reasons: Vec<String>,
    },
}

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

/// Policy health, for `GetPolicy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStatus {
    /// Where the policy came from.
    pub source: String,
    /// When it was loaded.
    pub loaded_at_unix_ms: u64,
    /// Failed calls.
    pub failures: u64,
    /// Calls answered by the default instead.
    pub fallbacks: u64,
    /// Refused edits of the policy file.
    pub reload_failures: u64,
    /// The last failure.
    pub last_error: Option<String>,
}

/// The policy in use and its file's last content.
struct Loaded {
    /// Compiled policy.
    policy: Arc<Policy>,
    /// When.
    at_ms: u64,
    /// The file content it was compiled from (to notice edits).
    text: Option<String>,
}

/// The scheduler.
pub struct Scheduler {
    /// The hives.
    fleet: Arc<dyn HiveSource>,
    /// The reservation book: one lock (scans read, commits write), never held across `.await`.
    book: Arc<RwLock<Book>>,
    /// The Rhai runtime.
    runtime: PolicyRuntime,
    /// The policy in use.
    current: RwLock<Loaded>,
    /// The built-in default.
    default: Arc<Policy>,
    /// Settings.
    settings: SchedulerSettings,
    /// Failed policy calls.
    failures: AtomicU64,
    /// Calls answered by the default.
    fallbacks: AtomicU64,
    /// Refused policy edits.
    reload_failures: AtomicU64,
    /// The last policy failure.
    last_error: Mutex<Option<String>>,
    /// Reservation events for watchers.
    events: broadcast::Sender<SchedulerEvent>,
}

fn read_policy(path: &std::path::Path) -> Result<String, QueenError> {
    std::fs::read_to_string(path).map_err(|source| QueenError::Io { path: path.to_owned(), source })
}

impl Scheduler {
    /// A scheduler over `fleet`. Fails when the policy file cannot be read or compiled.
    pub fn new(fleet: Arc<dyn HiveSource>, settings: SchedulerSettings) -> Result<Arc<Self>, QueenError> {
        let runtime = PolicyRuntime::new(settings.limits);
        let default = Arc::new(
            runtime
                .compile(DEFAULT_POLICY_NAME, DEFAULT_POLICY)
                .map_err(|e| QueenError::Config(format!("the built-in policy does not compile: {e}")))?,
        );
        let (policy, text) = match &settings.policy_file {
            None => (default.clone(), None),
            Some(path) => {
                let text = read_policy(path)?;
                let policy = runtime
                    .compile(&path.display().to_string(), &text)
                    .map_err(|e| QueenError::Config(format!("policy {}: {e}", path.display())))?;
                (Arc::new(policy), Some(text))
            }
        };
        tracing::info!(policy = %policy.source, "placement policy loaded");
        Ok(Arc::new(Self {
            fleet,
            book: Arc::new(RwLock::new(Book::default())),
            runtime,
            current: RwLock::new(Loaded { policy, at_ms: rbee_shared::time::now_unix_ms(), text }),
            default,
            settings,
            failures: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            events: broadcast::channel(SCHEDULER_EVENT_CAPACITY).0,
        }))
    }

    /// Receives every reservation event from now on (none listening is fine).
    pub fn subscribe(&self) -> broadcast::Receiver<SchedulerEvent> {
        self.events.subscribe()
    }

    fn view(&self) -> FleetView {
        FleetView { hives: Arc::new(self.fleet.hives()), book: self.book.clone() }
    }

    fn policy(&self) -> Arc<Policy> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).policy.clone()
    }

    /// Places a request (blocking: runs the policy; call from a blocking thread).
    pub fn place_blocking(&self, req: &PlaceRequest) -> Result<Outcome, QueenError> {
        // Policies rank on a snapshot; the commit re-checks under the lock. When every
        // device a policy chose filled up in between (concurrent placements), decide
        // again on a fresh view before answering "no room".
        let mut outcome = self.attempt(req)?;
        for _ in 1..PLACE_ATTEMPTS {
            match &outcome {
                Attempt::Raced(_) => outcome = self.attempt(req)?,
                _ => break,
            }
        }
        Ok(match outcome {
            Attempt::Done(o) => o,
            Attempt::Raced(hive_reasons) => {
                Outcome::Rejected { reason: "no device the policy chose has room".into(), hive_reasons }
            }
        })
    }

    /// One policy run and commit.
    fn attempt(&self, req: &PlaceRequest) -> Result<Attempt, QueenError> {
        let view = self.view();
        let policy = self.policy();
        let (decision, used, fallback) = match self.runtime.run(&policy, req, &view) {
            Ok(d) => (d, policy, false),
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let msg = format!("placement policy {} failed: {e}", policy.source);
                tracing::warn!("{msg}");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg.clone());
                if !self.settings.fallback_to_default || Arc::ptr_eq(&policy, &self.default) {
                    return Err(QueenError::Policy(msg));
                }
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                let d = self
                    .runtime
                    .run(&self.default, req, &view)
                    .map_err(|e| QueenError::Policy(e.to_string()))?;
                (d, self.default.clone(), true)
            }
        };
        let choices = match decision {
            Decision::Reject(reason) => {
                return Ok(Attempt::Done(Outcome::Rejected {
                    reason,
                    hive_reasons: view::assess(&view, req, true).1,
                }));
            }
            Decision::Ranked(c) if c.is_empty() => {
                return Ok(Attempt::Done(Outcome::Rejected {
                    reason: "the policy chose no device".into(),
                    hive_reasons: view::assess(&view, req, true).1,
                }));
            }
            Decision::Ranked(c) => c,
        };
        let mut reasons = Vec::new();
        let mut book = view::write(&self.book);
        for choice in choices {
            let device = match self.resolve(&view, &book, choice) {
                Ok(d) => d,
                Err(why) => {
                    reasons.push(why);
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
                ttl: req.ttl,
                now_ms: rbee_shared::time::now_unix_ms(),
            };
            let result = if req.dry_run {
                book.observe(&address, &device.id, device.used);
                let free = book.free(&address, &device.id, device.total, device.used);
                if bytes <= free { Ok(None) } else { Err(free) }
            } else {
                book.reserve(&address, &device.id, &claim).map(Some).map_err(|e| e.free)
            };
            match result {
                Ok(reservation) => {
                    let free_after = book.free(&address, &device.id, device.total, device.used)
                        - if reservation.is_none() { bytes } else { 0 };
                    return Ok(Attempt::Done(Outcome::Placed(Box::new(Placement {
                        hive_id: device.hive.hive_id().to_owned(),
                        address,
                        device_id: device.id.clone(),
                        reservation,
                        bytes,
                        free_after,
                        policy: used.source.clone(),
                        fallback,
                    }))));
                }
                Err(free) => reasons.push(format!(
                    "{}: {} free < {}",
                    device.label(),
                    format_bytes(free),
                    format_bytes(bytes)
                )),
            }
        }
        drop(book);
        reasons.extend(view::assess(&view, req, true).1);
        reasons.dedup();
        Ok(Attempt::Raced(reasons))
    }

    /// Turns a policy's choice into a device of the view.
    fn resolve(&self, view: &FleetView, book: &Book, choice: Choice) -> Result<DeviceRef, String> {
        let (hive_key, device_id) = match choice {
            Choice::Device(d) => (d.hive.address.clone(), d.id),
            Choice::Named { hive, device } => (hive, device),
        };
        let hive = view
            .hives
            .iter()
            .find(|h| h.matches(&hive_key))
            .ok_or_else(|| format!("{hive_key}: the policy chose a hive that is not in the fleet"))?;
        if hive.state != ConnState::Online {
            return Err(format!("{}: {}", hive_key, hive.state.as_str()));
        }
        let books = Books { locked: book, shared: &view.book };
        let device = if device_id == view::CPU_DEVICE {
            view::cpu_ref(hive, &books)
        } else {
            view::gpu_ref(hive, &device_id, &books)
        };
        device.ok_or_else(|| format!("{hive_key}/{device_id}: no such device, or no reading for it"))
    }

    /// Places a request.
    pub async fn place(self: &Arc<Self>, req: PlaceRequest) -> Result<Outcome, QueenError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.place_blocking(&req))
            .await
            .map_err(|e| QueenError::Policy(format!("the placement task failed: {e}")))?
    }

    /// Releases a reservation.
    pub fn release(&self, id: &str) -> Result<Reservation, QueenError> {
        view::write(&self.book).release(id).ok_or_else(|| QueenError::NotFound(format!("reservation {id}")))
    }

    /// Every reservation.
    pub fn reservations(&self) -> Vec<Reservation> {
        view::read(&self.book).list()
    }

    /// The policy in use and its failure counts.
    pub fn status(&self) -> PolicyStatus {
        let loaded = self.current.read().unwrap_or_else(|p| p.into_inner());
        PolicyStatus {
            source: loaded.policy.source.clone(),
            loaded_at_unix_ms: loaded.at_ms,
            failures: self.failures.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
            last_error: self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Compiles a new policy text and test-runs it on the live fleet; swaps it in only
    /// when both succeed.
    pub fn try_replace(&self, source: &str, text: String) -> Result<(), PolicyError> {
        let policy = self.runtime.compile(source, &text)?;
        let probe = PlaceRequest { dry_run: true, ..PlaceRequest::gpu(1) };
        self.runtime.run(&policy, &probe, &self.view())?;
        let mut loaded = self.current.write().unwrap_or_else(|p| p.into_inner());
        *loaded =
            Loaded { policy: Arc::new(policy), at_ms: rbee_shared::time::now_unix_ms(), text: Some(text) };
        Ok(())
    }

    fn reload_if_changed(&self) {
        let Some(path) = &self.settings.policy_file else { return };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(policy = %path.display(), error = %e, "cannot read the policy file; keeping the loaded policy");
                return;
            }
        };
        let same =
            self.current.read().unwrap_or_else(|p| p.into_inner()).text.as_deref() == Some(text.as_str());
        if same {
            return;
        }
        match self.try_replace(&path.display().to_string(), text.clone()) {
            Ok(()) => {
                tracing::info!(policy = %path.display(), "policy file changed; new policy compiled, test-run and loaded")
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(policy = %path.display(), error = %e, "policy edit refused; keeping the previous policy");
                // Remember the refused text so the same broken edit is not retried every tick.
                self.current.write().unwrap_or_else(|p| p.into_inner()).text = Some(text);
            }
        }
    }

    /// Settles, expires and drops reservations, and reloads an edited policy file.
    pub fn maintain_once(&self) {
        let now = rbee_shared::time::now_unix_ms();
        let hives = self.fleet.hives();
        let mut dropped = Vec::new();
        {
            let mut book = view::write(&self.book);
            for (address, device) in book.active_devices() {
                let Some(h) = hives.iter().find(|h| h.address == address) else { continue };
                let Some(s) = h.latest.as_ref() else { continue };
                let observed = if device == view::CPU_DEVICE {
                    Some(s.ram_used_bytes)
                } else {
                    s.gpus.iter().find(|g| g.id == device).and_then(|g| g.vram_used_bytes)
                };
                if let Some(observed) = observed {
                    book.observe(&address, &device, observed);
                }
            }
            dropped.extend(
                book.expire(now).into_iter().map(|r| (r, "expired before the model showed up".to_owned())),
            );
            let grace = self.settings.lost_grace.as_millis() as u64;
            let gone = book.drop_where(|r| match hives.iter().find(|h| h.address == r.address) {
                None => true,
                Some(h) => h.state == ConnState::Lost && now.saturating_sub(h.state_since_unix_ms) > grace,
            });
            for r in gone {
                let why = if hives.iter().any(|h| h.address == r.address) {
                    format!("hive lost for more than {} s", self.settings.lost_grace.as_secs())
                } else {
                    "hive removed".to_owned()
                };
                dropped.push((r, why));
            }
        }
        for (r, reason) in dropped {
            tracing::info!(reservation = %r.id, hive = %r.hive_id, device = %r.device_id, %reason, "reservation dropped");
            let _ = self.events.send(SchedulerEvent::ReservationDropped { reservation: r, reason });
        }
        self.reload_if_changed();
    }

    /// Runs [`Self::maintain_once`] every `maintain_every` until cancelled.
    pub async fn maintain(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.maintain_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || me.maintain_once()).await;
                }
            }
        }
    }
}
