//! The scheduler: placement with an operator's Rhai policy over the live fleet, and
//! admission control so that two placements never promise the same memory.
//!
//! - [`request`]: the validated requests (place, list a page).
//! - [`view`]: the fleet as policies see it, and the eligibility rules.
//! - [`policy`]: the sandboxed Rhai runtime, its API and budget.
//! - [`book`]: the reservation book (bounded, paged).
//! - [`gang`]: the search for a gang of GPUs of one hive over its topology.
//! - [`index`]: which hives can take a request, without walking every GPU.
//! - `place`: the decision path (policy, then commit under the book's lock).
//! - `durable`: the books kept in the state store, and restored from it.
//! - `upkeep`: settlement and expiry of reservations; never waits on a policy.
//! - `reload`: the watched policy file (compile, test-run, swap).
//! - [`bounded_text`]: the bound on script- and peer-controlled text.

pub mod book;
pub mod bounded_text;
mod durable;
mod events;
pub mod figures;
pub mod gang;
pub mod index;
mod place;
pub mod policy;
mod reload;
pub mod request;
#[cfg(any(test, feature = "synthetic"))]
pub mod synthetic;
mod upkeep;
pub mod view;
pub mod weights;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rbee_shared::lock::{MutexExt, RwLockExt};

use self::book::{Book, BookLimits, Page, Reservation};
pub use self::events::{SCHEDULER_EVENT_CAPACITY, SchedulerEvent};
use self::policy::{DEFAULT_POLICY, DEFAULT_POLICY_NAME, Limits, Policy, PolicyRuntime};
use self::request::ListRequest;
use self::view::FleetView;
use crate::QueenError;
use crate::fleet::{Changes, Fleet, HiveSnapshot, Seen};
use crate::store::Store;

/// Stripes of the keyed-Place turns.
const KEY_TURNS: usize = 64;

/// Where the scheduler reads hives from: the live fleet, or a fixed set of snapshots
/// (`queen policy check --fleet FILE`, tests, benchmarks).
pub trait HiveSource: Send + Sync {
    /// Every hive's newest view.
    fn hives(&self) -> Vec<Arc<HiveSnapshot>>;

    /// What changed since `seen`'s last read (see [`Fleet::changes`]). By default every
    /// hive, every time: the index then compares each view with the one it holds.
    fn changes(&self, seen: &mut Seen) -> Changes {
        let _ = seen;
        Changes::All(self.hives())
    }
}

impl HiveSource for Fleet {
    fn hives(&self) -> Vec<Arc<HiveSnapshot>> {
        self.list()
    }

    fn changes(&self, seen: &mut Seen) -> Changes {
        Fleet::changes(self, seen)
    }
}

/// A fixed set of hive snapshots.
pub struct StaticHives(pub Vec<Arc<HiveSnapshot>>);

impl HiveSource for StaticHives {
    fn hives(&self) -> Vec<Arc<HiveSnapshot>> {
        self.0.clone()
    }

    fn changes(&self, seen: &mut Seen) -> Changes {
        if seen.first_read() { Changes::All(self.0.clone()) } else { Changes::Some(Vec::new()) }
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
    /// How many reservations the queen holds at most, per hive and in all.
    pub reservations: BookLimits,
    /// Reservations on a hive lost for longer than this are dropped.
    pub lost_grace: Duration,
    /// How often reservations are settled/expired and the policy file is checked.
    pub maintain_every: Duration,
    /// Ranking natives rank exactly (every device that fits) while the fleet has at
    /// most this many hives; above, they score a bounded set of hives (see [`index`]).
    pub place_exact_up_to: usize,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            policy_file: None,
            fallback_to_default: false,
            limits: Limits::default(),
            reservations: BookLimits::default(),
            lost_grace: Duration::from_secs(60),
            maintain_every: Duration::from_secs(1),
            place_exact_up_to: index::DEFAULT_EXACT_UP_TO,
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
    /// Where the model's weights are on the chosen hive, with a load-time estimate.
    pub weights: weights::Weights,
    /// A prefetch was started on the hive (set by the API layer).
    pub prefetching: bool,
    /// The reservation's secret worker tag (none for a dry run): answered to the placing
    /// client only, never logged (its `Debug` is redacted) nor kept.
    pub token: Option<rbee_shared::gpu_process::ReservationToken>,
    /// What the caller should know about the chosen device, e.g. its hive's CPU load
    /// over the degraded threshold (a reason, not a veto, for GPU work).
    pub notes: Vec<String>,
    /// Every device of the placement, `device_id` first: a gang's GPUs, else the one.
    pub devices: Vec<PlacedDevice>,
    /// How tightly a gang's GPUs are connected (`None` for one device).
    pub level: Option<gang::Level>,
}

/// One device of a placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedDevice {
    /// GPU id or "cpu".
    pub device_id: String,
    /// The GPU's index on its hive (`None` for the CPU).
    pub index: Option<u32>,
    /// Free on the device after the placement.
    pub free_after: u64,
}

/// What `place` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Placed.
    Placed(Box<Placement>),
    /// Not placed: the reason and per-hive reasons (each bounded).
    Rejected {
        /// Why.
        reason: String,
        /// Per hive or device.
        hive_reasons: Vec<String>,
    },
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
    /// Reservations kept on hives that are not in the fleet (left out of the
    /// configuration, or a record whose address matches no hive), until the grace ends.
    pub kept_on_missing_hives: u64,
    /// The last failure (of a call, or of an edit).
    pub last_error: Option<String>,
}

/// The policy in use and its file's last content.
struct Loaded {
    /// Compiled policy.
    policy: Arc<Policy>,
    /// When.
    at_ms: u64,
    /// The file content last read (to notice edits), whether it was loaded or refused.
    text: Option<String>,
}

/// The scheduler.
pub struct Scheduler {
    /// The hives.
    fleet: Arc<dyn HiveSource>,
    /// The reservation book: one lock (scans read, commits write), never held across
    /// `.await` and never while a policy runs.
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
    events: tokio::sync::broadcast::Sender<SchedulerEvent>,
    /// Where the books are kept durably; `None` keeps them in memory only.
    store: Option<Arc<dyn Store>>,
    /// `Place` counts by outcome and latency, for `/metrics`.
    place_stats: crate::metrics::recorder::PlaceRecorder,
    /// Hives missing from the fleet that hold reservations (see [`upkeep::Missing`]).
    missing: Mutex<upkeep::Missing>,
    /// Turns of keyed Places, striped by request id (see `place`).
    key_turns: Box<[Mutex<()>]>,
    /// Which hives can take a request (see [`index`]), shared by every view.
    index: Arc<index::SharedIndex>,
}

/// A refused renewal as the error the caller sees.
fn renew_error(e: book::NotRenewed) -> QueenError {
    match e {
        book::NotRenewed::Settled(_) => QueenError::FailedPrecondition(e.to_string()),
        _ => QueenError::Missing(e.to_string()),
    }
}

fn read_policy(path: &std::path::Path) -> Result<String, QueenError> {
    std::fs::read_to_string(path).map_err(|source| QueenError::Io { path: path.to_owned(), source })
}

impl Scheduler {
    /// A scheduler over `fleet` whose books are kept in memory only. Fails when the
    /// policy file cannot be read or compiled.
    pub fn new(fleet: Arc<dyn HiveSource>, settings: SchedulerSettings) -> Result<Arc<Self>, QueenError> {
        Self::build(fleet, settings, None)
    }

    fn build(
        fleet: Arc<dyn HiveSource>,
        settings: SchedulerSettings,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Arc<Self>, QueenError> {
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
            book: Arc::new(RwLock::new(Book::new(settings.reservations))),
            runtime,
            current: RwLock::new(Loaded { policy, at_ms: rbee_shared::time::now_unix_ms(), text }),
            default,
            failures: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            events: tokio::sync::broadcast::channel(SCHEDULER_EVENT_CAPACITY).0,
            store,
            place_stats: Default::default(),
            missing: Mutex::default(),
            key_turns: (0..KEY_TURNS).map(|_| Mutex::new(())).collect(),
            index: Arc::new(index::SharedIndex::new(settings.place_exact_up_to)),
            settings,
        }))
    }

    /// Receives every reservation event from now on (none listening is fine).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<SchedulerEvent> {
        self.events.subscribe()
    }

    /// The fleet now, with the book: the index's list, brought up to date with the hives
    /// that changed since the last view (no walk of every hive; see [`index`]).
    fn view(&self) -> FleetView {
        FleetView {
            hives: self.index.refresh(self.fleet.as_ref()),
            book: self.book.clone(),
            index: Some(self.index.clone()),
        }
    }

    /// The policy in use.
    fn policy(&self) -> Arc<Policy> {
        self.current.read_unpoisoned().policy.clone()
    }

    /// Remembers a failure for `GetPolicy`.
    fn note_error(&self, message: String) {
        *self.last_error.lock_unpoisoned() = Some(message);
    }

    /// Releases a reservation, durably. When the removal cannot be written, the
    /// reservation is gone from the book but answered as an error: after a restart it
    /// comes back (and expires or is released again), which never over-promises.
    pub fn release(&self, id: &str) -> Result<Reservation, QueenError> {
        let mut r = self.remove(id, Some(book::EndedHow::Released))?;
        r.state = book::ReservationState::Released;
        Ok(r)
    }

    /// Removes a reservation durably; remembers its end as `how` (its request id stays
    /// taken for the grace), or, with `None`, forgets it as never made (a placement the
    /// caller was told failed: its retry may place again).
    pub(super) fn remove(&self, id: &str, how: Option<book::EndedHow>) -> Result<Reservation, QueenError> {
        // The removal is kept first: a release that cannot be kept changes nothing (the
        // memory stays counted, so it is never promised again while the store still
        // holds the reservation).
        let now = rbee_shared::time::now_unix_ms();
        let ended = {
            let book = view::read(&self.book);
            let Some(r) = book.get(id) else { return Err(QueenError::NoReservation(id.to_owned())) };
            how.zip(r.keyed.as_ref()).map(|(how, k)| book::Ended {
                id: id.to_owned(),
                request_id: Some(k.request_id.clone()),
                how,
                at_unix_ms: now,
            })
        };
        self.persist_changes(&[], &[id], ended.as_slice())?;
        let mut book = view::write(&self.book);
        let r = book.release(id).ok_or_else(|| QueenError::NoReservation(id.to_owned()))?;
        if let Some(how) = how {
            book.remember_ended(&r, how, now);
        }
        Ok(r)
    }

    /// Extends an active reservation: it expires `req.ttl` from now. Durable before it
    /// is answered (blocking: call from a blocking thread). NOT_FOUND when it is
    /// unknown, released or expired (the message says which).
    pub fn renew(&self, req: &request::RenewRequest) -> Result<Reservation, QueenError> {
        let now = rbee_shared::time::now_unix_ms();
        let expires = now.saturating_add(req.ttl.as_millis() as u64);
        let (record, starts) = {
            let book = view::read(&self.book);
            let r = book.renewable(&req.id, now).map_err(renew_error)?;
            (
                Reservation { expires_at_unix_ms: expires, ..r.clone() },
                book.starts_of(&req.id).unwrap_or_default(),
            )
        };
        // Written first: a renewal that cannot be kept changes nothing.
        if let Some(store) = &self.store {
            store.update_reservations(&[durable::to_record(&record, &starts)])?;
        }
        let renewed = view::write(&self.book).renew(&req.id, expires, now);
        if renewed.is_err()
            && let Some(store) = &self.store
            && let Err(e) = store.forget_reservations(&[req.id.as_str()])
        {
            // It ended while its renewal was written (upkeep expired it): the record
            // written back comes back after a restart and expires again.
            tracing::warn!(error = %e, reservation = %req.id, "cannot forget a reservation that ended while renewed");
        }
        renewed.map_err(renew_error)
    }

    /// [`Scheduler::renew`] on a blocking thread.
    pub async fn renew_durably(
        self: &Arc<Self>,
        req: request::RenewRequest,
    ) -> Result<Reservation, QueenError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.renew(&req))
            .await
            .map_err(|e| QueenError::Internal(format!("the renew thread failed: {e}")))?
    }

    /// Every reservation, oldest first.
    pub fn reservations(&self) -> Vec<Reservation> {
        view::read(&self.book).list()
    }

    /// One page of the reservations, oldest first.
    pub fn reservations_page(&self, request: &ListRequest) -> Page {
        view::read(&self.book).page(request.after.as_ref(), request.page_size)
    }

    /// `Place` counts by outcome and latency.
    pub fn place_stats(&self) -> &crate::metrics::recorder::PlaceRecorder {
        &self.place_stats
    }

    /// Runs `f` on the reservation book, read-locked (briefly: never across an `.await`).
    pub fn with_book<R>(&self, f: impl FnOnce(&Book) -> R) -> R {
        f(&view::read(&self.book))
    }

    /// The policy in use and its failure counts.
    pub fn status(&self) -> PolicyStatus {
        let loaded = self.current.read_unpoisoned();
        PolicyStatus {
            source: loaded.policy.source.clone(),
            loaded_at_unix_ms: loaded.at_ms,
            failures: self.failures.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
            kept_on_missing_hives: self.missing.lock_unpoisoned().kept,
            last_error: self.last_error.lock_unpoisoned().clone(),
        }
    }
}
