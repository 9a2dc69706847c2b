//! The registry of managed hives and the fleet's change events, and the feed of which
//! hives published a new view since a reader last looked ([`Fleet::changes`]), so that a
//! reader that mirrors the fleet (the placement index) never walks every hive to find
//! the few that changed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rbee_shared::lock::{MutexExt, RwLockExt};

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::address::normalize_address;
use super::ids::IdIndex;
use super::{EVENT_CAPACITY, FleetEvent, FleetSettings, HiveSnapshot, Origin};
use crate::QueenError;

/// What a newly managed hive needs to be watched: the fleet, where to publish its
/// view, and the token that stops its watcher.
#[derive(Debug)]
pub struct NewHive {
    /// The fleet it belongs to.
    pub fleet: Arc<Fleet>,
    /// Where its watcher publishes each new view.
    pub publish: watch::Sender<Arc<HiveSnapshot>>,
    /// Cancelled when the hive is removed or the queen stops.
    pub cancel: CancellationToken,
}

/// Starts whatever keeps a newly managed hive's view current (in the queen, the
/// per-hive link). The fleet calls it once per added hive, outside its lock.
pub trait Watcher: Send + Sync + 'static {
    /// Starts watching `hive`; must not block.
    fn start(&self, hive: NewHive);
}

/// One managed hive: its published view and the token that stops its manager.
#[derive(Debug)]
pub struct HiveHandle {
    /// The address.
    pub address: String,
    /// The newest published view.
    view: watch::Receiver<Arc<HiveSnapshot>>,
    /// Stops the connection manager.
    cancel: CancellationToken,
    /// Published a view that the change feed's reader has not taken yet (it is in the
    /// fleet's `changed` list exactly while this is set, so the list holds each hive once).
    changed: AtomicBool,
    /// Its position in the fleet's address order, as of the feed's last full list.
    position: AtomicU32,
}

impl HiveHandle {
    /// The newest view (an `Arc` clone).
    pub fn snapshot(&self) -> Arc<HiveSnapshot> {
        self.view.borrow().clone()
    }
}

/// The fleet.
pub struct Fleet {
    /// How hives are watched.
    settings: Arc<FleetSettings>,
    /// Managed hives by address. Locked only to add, remove or list; never across `.await`.
    hives: RwLock<BTreeMap<String, Arc<HiveHandle>>>,
    /// Which address holds which hive id (one lookup instead of a scan of every hive).
    /// Locked briefly, never across `.await`, and never while `hives` is being locked.
    ids: Mutex<IdIndex>,
    /// Structural change events.
    events: broadcast::Sender<FleetEvent>,
    /// Cancelled at shutdown; every manager's token is a child.
    shutdown: CancellationToken,
    /// Starts each added hive's watcher.
    watcher: Box<dyn Watcher>,
    /// How old each sample was when the queen published it: publish time minus the
    /// hive's `taken_at`, seconds (the two clocks' skew included).
    publish_delay: Histogram,
    /// Bumped (under `hives`' write lock) whenever a hive joins or leaves: positions in
    /// the address order hold while it stays the same.
    epoch: AtomicU64,
    /// The change feed: the hives that published since its reader last looked (each
    /// once: bounded by the fleet's size), and which reader that was. Locked briefly,
    /// after `hives` when both are held.
    changed: Mutex<Changed>,
}

/// The change feed's state (see [`Fleet::changes`]).
#[derive(Debug, Default)]
struct Changed {
    /// Hives that published since the last read, each once.
    hives: Vec<Arc<HiveHandle>>,
    /// The reader that took the last read.
    reader: u64,
}

/// Where a reader of [`Fleet::changes`] stands: what it has seen of the fleet.
#[derive(Debug)]
pub struct Seen {
    /// This reader (unique per `Seen`).
    reader: u64,
    /// The fleet's epoch of its last full list (0: none yet).
    epoch: u64,
}

impl Default for Seen {
    fn default() -> Self {
        static READERS: AtomicU64 = AtomicU64::new(1);
        Self { reader: READERS.fetch_add(1, Ordering::Relaxed), epoch: 0 }
    }
}

impl Seen {
    /// Forgets what was seen: the next read is a full list.
    pub fn reset(&mut self) {
        self.epoch = 0;
    }

    /// For a source that never changes: whether this is the reader's first read (the
    /// one that needs the full list); later calls answer `false`.
    pub fn first_read(&mut self) -> bool {
        std::mem::replace(&mut self.epoch, 1) == 0
    }
}

/// What changed in the fleet since a reader last looked.
#[derive(Debug)]
pub enum Changes {
    /// Every hive's newest view, ordered by address (the first read, after a hive joined
    /// or left, or after another reader took the feed).
    All(Vec<Arc<HiveSnapshot>>),
    /// The hives that published since, as (position in the last full list, newest view);
    /// every other hive's view is the one the reader holds.
    Some(Vec<(u32, Arc<HiveSnapshot>)>),
}

/// The bucket bounds of the publish delay histogram, in seconds (1 ms .. 10 s).
pub const PUBLISH_DELAY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0];

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("hives", &self.read().len()).finish_non_exhaustive()
    }
}

impl Fleet {
    /// An empty fleet whose hives are watched by `watcher`.
    pub fn new(settings: FleetSettings, shutdown: CancellationToken, watcher: impl Watcher) -> Arc<Self> {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Arc::new(Self {
            settings: Arc::new(settings),
            hives: RwLock::new(BTreeMap::new()),
            ids: Mutex::new(IdIndex::default()),
            events,
            shutdown,
            watcher: Box::new(watcher),
            publish_delay: Histogram::new(PUBLISH_DELAY_BUCKETS),
            epoch: AtomicU64::new(1),
            changed: Mutex::default(),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &Arc<FleetSettings> {
        &self.settings
    }

    /// Records that a sample taken at `taken_at_unix_ms` (the hive's clock) was published
    /// now; a reading from the future (a hive clock ahead) counts as no delay.
    pub fn sample_published(&self, taken_at_unix_ms: u64) {
        let delay_ms = rbee_shared::time::now_unix_ms().saturating_sub(taken_at_unix_ms);
        self.publish_delay.observe(delay_ms as f64 / 1000.0);
    }

    /// How old samples were when they were published (a shared handle: `/metrics`
    /// registers it).
    pub fn publish_delay(&self) -> &Histogram {
        &self.publish_delay
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<HiveHandle>>> {
        self.hives.read_unpoisoned()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<HiveHandle>>> {
        self.hives.write_unpoisoned()
    }

    /// Starts managing the hive at `address` (normalised). Returns its view and whether it
    /// was new; an address already managed is left as it is.
    pub fn add(
        self: &Arc<Self>,
        address: &str,
        origin: Origin,
    ) -> Result<(Arc<HiveSnapshot>, bool), QueenError> {
        let address = normalize_address(address)?;
        let (handle, tx, cancel) = {
            let mut hives = self.write();
            if let Some(existing) = hives.get(&address) {
                return Ok((existing.snapshot(), false));
            }
            if hives.len() >= self.settings.max_hives {
                return Err(QueenError::ResourceExhausted(format!(
                    "the queen already manages {} hives (the limit)",
                    hives.len()
                )));
            }
            let initial =
                Arc::new(HiveSnapshot::pending(address.clone(), origin, self.settings.sample_interval));
            let (tx, rx) = watch::channel(initial);
            let cancel = self.shutdown.child_token();
            let handle = Arc::new(HiveHandle {
                address: address.clone(),
                view: rx,
                cancel: cancel.clone(),
                changed: AtomicBool::new(false),
                position: AtomicU32::new(0),
            });
            hives.insert(address.clone(), handle.clone());
            self.epoch.fetch_add(1, Ordering::SeqCst);
            (handle, tx, cancel)
        };
        let view = handle.snapshot();
        tracing::info!(%address, ?origin, "managing hive");
        self.emit(FleetEvent::Added(view.clone()));
        self.watcher.start(NewHive { fleet: self.clone(), publish: tx, cancel });
        Ok((view, true))
    }

    /// Stops managing a hive, by id or address. Returns its address.
    pub fn remove(&self, key: &str) -> Result<String, QueenError> {
        let by_id = self.id_holder(key);
        let handle = {
            let mut hives = self.write();
            let address = match hives.get(key) {
                Some(_) => key.to_owned(),
                None => normalize_address(key)
                    .ok()
                    .filter(|a| hives.contains_key(a))
                    .or(by_id)
                    .ok_or_else(|| QueenError::NotFound(key.to_owned()))?,
            };
            let handle = hives.remove(&address).ok_or_else(|| QueenError::NotFound(key.to_owned()))?;
            self.epoch.fetch_add(1, Ordering::SeqCst);
            // Under the registry's lock, so that a claim cannot slip in between.
            self.ids.lock_unpoisoned().release(&address);
            handle
        };
        handle.cancel.cancel();
        let view = handle.snapshot();
        tracing::info!(address = %handle.address, hive_id = view.hive_id(), "hive removed");
        self.emit(FleetEvent::Removed {
            address: handle.address.clone(),
            hive_id: view.hive_id().to_owned(),
        });
        Ok(handle.address.clone())
    }

    /// Every hive's newest view, ordered by address.
    pub fn list(&self) -> Vec<Arc<HiveSnapshot>> {
        let handles: Vec<Arc<HiveHandle>> = self.read().values().cloned().collect();
        handles.iter().map(|h| h.snapshot()).collect()
    }

    /// Notes that the hive at `address` published a new view (call after publishing it):
    /// the change feed's next read names it. A hive already noted is not noted twice.
    pub fn changed(&self, address: &str) {
        let hives = self.read();
        if let Some(h) = hives.get(address)
            && !h.changed.swap(true, Ordering::SeqCst)
        {
            self.changed.lock_unpoisoned().hives.push(h.clone());
        }
    }

    /// What changed since `seen`'s last read: the hives that published since (with their
    /// position in the address order), or every hive when one joined or left since, on
    /// the first read, or when another reader took the feed in between. One reader at a
    /// time gets the short answer: a second reader alternating with it gets full lists.
    pub fn changes(&self, seen: &mut Seen) -> Changes {
        let hives = self.read();
        let taken = {
            let mut changed = self.changed.lock_unpoisoned();
            let other = std::mem::replace(&mut changed.reader, seen.reader) != seen.reader;
            if other {
                seen.reset();
            }
            std::mem::take(&mut changed.hives)
        };
        // Cleared before the views are read: a publish after this is noted again, and
        // one before it is in the view read below (the swap orders the two).
        for h in &taken {
            h.changed.swap(false, Ordering::SeqCst);
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        if seen.epoch != epoch {
            seen.epoch = epoch;
            for (i, h) in hives.values().enumerate() {
                h.position.store(i as u32, Ordering::Relaxed);
            }
            return Changes::All(hives.values().map(|h| h.snapshot()).collect());
        }
        Changes::Some(taken.iter().map(|h| (h.position.load(Ordering::Relaxed), h.snapshot())).collect())
    }

    /// Up to `limit` hives' newest views, ordered by address, starting after `after`.
    pub fn list_after(&self, after: Option<&str>, limit: usize) -> Vec<Arc<HiveSnapshot>> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        let handles: Vec<Arc<HiveHandle>> =
            self.read().range((start, Bound::Unbounded)).take(limit).map(|(_, h)| h.clone()).collect();
        handles.iter().map(|h| h.snapshot()).collect()
    }

    /// One hive, by address or id.
    pub fn get(&self, key: &str) -> Option<Arc<HiveSnapshot>> {
        let by_id = self.id_holder(key);
        let hives = self.read();
        if let Some(h) = hives.get(key) {
            return Some(h.snapshot());
        }
        if let Some(h) = normalize_address(key).ok().and_then(|a| hives.get(&a).cloned()) {
            return Some(h.snapshot());
        }
        by_id.and_then(|a| hives.get(&a).map(|h| h.snapshot()))
    }

    /// The address holding hive id `key`, if any.
    fn id_holder(&self, key: &str) -> Option<String> {
        if key.is_empty() {
            return None;
        }
        self.ids.lock_unpoisoned().holder(key).map(str::to_owned)
    }

    /// The address of another managed hive that holds `hive_id`, if any.
    pub fn holder_of(&self, hive_id: &str, except_address: &str) -> Option<String> {
        self.id_holder(hive_id).filter(|a| a != except_address)
    }

    /// Records that the hive at `address` is `hive_id`, unless another managed hive
    /// holds that id: then its address is the error. One lookup, whatever the fleet's size.
    pub fn claim_id(&self, hive_id: &str, address: &str) -> Result<(), super::ids::IdTaken> {
        // The registry's lock is held while claiming (always taken before `ids`), so a
        // removal cannot release the address between the check and the claim.
        let hives = self.read();
        if !hives.contains_key(address) {
            // Removed meanwhile: claim nothing for an address no longer managed.
            return Ok(());
        }
        self.ids.lock_unpoisoned().claim(hive_id, address)
    }

    /// Receives every structural change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FleetEvent> {
        self.events.subscribe()
    }

    /// Sends a change to every watcher (none listening is fine).
    pub fn emit(&self, event: FleetEvent) {
        let _ = self.events.send(event);
    }

    /// Cancelled at shutdown.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }
}
