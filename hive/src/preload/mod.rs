//! Model weights in RAM before they are needed (issue 12).
//!
//! - `PreloadModel` reads a ready model's files into the page cache ([`read`]), with
//!   progress reported like a download (phase `PRELOADING`, in samples' `preloads`).
//! - `EvictModel` drops them (`posix_fadvise(DONTNEED)`).
//! - Within `--ram-cache-budget`, preloaded models are kept *warm*: the least recently
//!   used is evicted first to make room. "Used" means preloaded again; the queen
//!   preloads a model on the hive it places it on, which marks it used there.
//! - Before a preload: the model must fit the budget together with every other warm
//!   model and every preload in flight (a model being read is never evicted for room:
//!   its pages would come back as its read goes on), the bytes still to read (plus a
//!   headroom of 5% of RAM) must fit `MemAvailable`, and memory pressure (PSI `some
//!   avg10`) must be under the limit. During one, pressure is checked every 64 MiB; the
//!   preload backs off, and gives up (dropping what it read) if pressure stays high.
//! - Residency ([`residency`]) is measured every `--residency-interval` and after every
//!   preload or evict, and published into the catalog behind a deadband. A warm model
//!   the kernel has reclaimed below 90% is read again, through the same admission as a
//!   preload (the budget, `MemAvailable`, pressure) at the model's size now.
//! - A warm model is kept warm only while it is the model that was preloaded: on every
//!   catalog change, one deleted (DeleteModel), no longer ready (fetched again) or whose
//!   size changed (a hand-placed model that grew) stops being warm, and a preload of it
//!   in flight is cancelled; it is warm again only by a new PreloadModel, which is
//!   admitted at its new size.
//! - [`bandwidth`]: the disk and RAM read speeds measured from preloads.
//! - [`budget`]: which warm models make room for a preload, and when none can.

pub mod bandwidth;
pub mod budget;
pub mod memory;
pub mod read;
pub mod residency;
pub mod source;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbee_shared::lock::MutexExt;
use rbee_shared::{DownloadPhase, DownloadProgress, ModelEntry, ModelState, ReadBandwidth};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::HiveError;
use crate::models::catalog::ModelMap;
use crate::models::progress::Progress;
use crate::models::{FINISHED_RETENTION, Models, layout};
use bandwidth::Bandwidth;
use budget::plan_room;

/// Default `--residency-interval`.
pub const DEFAULT_RESIDENCY_INTERVAL: Duration = Duration::from_secs(10);
/// Default `--preload-pressure-limit`, percent of `some avg10`.
pub const DEFAULT_PRESSURE_LIMIT: f64 = 10.0;
/// A warm model below this share resident is read again.
const REWARM_BELOW: f64 = 0.9;

/// How preloading is run.
#[derive(Debug, Clone)]
pub struct PreloadConfig {
    /// Most bytes of preloaded models kept warm; `None`: no budget (only `MemAvailable`).
    pub budget: Option<u64>,
    /// How often residency is measured.
    pub residency_interval: Duration,
    /// Memory pressure (`some avg10`, percent) above which preloads back off.
    pub pressure_limit: f64,
    /// Where `meminfo` and `pressure/memory` are read (`/proc`; tests point elsewhere).
    pub proc_root: PathBuf,
}

impl Default for PreloadConfig {
    fn default() -> Self {
        Self {
            budget: None,
            residency_interval: DEFAULT_RESIDENCY_INTERVAL,
            pressure_limit: DEFAULT_PRESSURE_LIMIT,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// What a preload call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreloadOutcome {
    /// It joined a running preload.
    pub joined: bool,
    /// Models evicted for room, least recently used first.
    pub evicted: Vec<String>,
    /// Bytes resident (after, when waited for).
    pub resident_bytes: u64,
    /// The model's size.
    pub size_bytes: u64,
}

/// A running preload.
struct Job {
    /// The model's size: counted against the budget while the preload runs.
    size: u64,
    /// Cancelled by EvictModel or shutdown.
    cancel: CancellationToken,
    /// Its progress.
    progress: Arc<Mutex<Progress>>,
    /// Set once it ended: `Ok(resident bytes)` or the error text.
    done: watch::Receiver<Done>,
}

/// The mutable state, under one short lock (never held across `.await`).
#[derive(Default)]
struct State {
    /// Warm models: size and last use (a logical clock).
    warm: BTreeMap<String, (u64, u64)>,
    /// The logical clock.
    clock: u64,
    /// Running preloads.
    jobs: BTreeMap<String, Job>,
    /// Final records of finished preloads.
    finished: BTreeMap<String, (Instant, DownloadProgress)>,
}

struct Inner {
    config: PreloadConfig,
    models: Models,
    state: Mutex<State>,
    /// One preload reads at a time.
    slot: Semaphore,
    bandwidth: Bandwidth,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The preloader of this hive's models.
#[derive(Clone)]
pub struct Preloader {
    inner: Arc<Inner>,
}

impl Preloader {
    /// Starts the residency loop over `models`.
    pub fn start(
        config: PreloadConfig,
        models: Models,
        shutdown: CancellationToken,
    ) -> Result<Self, HiveError> {
        if !(config.pressure_limit > 0.0 && config.pressure_limit <= 100.0) {
            return Err(HiveError::Config(format!(
                "--preload-pressure-limit {} must be in (0, 100]",
                config.pressure_limit
            )));
        }
        if let Some(method) = probe_method(models.dir()) {
            tracing::info!(method, budget = ?config.budget, "page-cache residency measured by {method}");
        }
        let p = Self {
            inner: Arc::new(Inner {
                config,
                models,
                state: Mutex::new(State::default()),
                slot: Semaphore::new(1),
                bandwidth: Bandwidth::default(),
                shutdown,
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let task = tokio::spawn(p.clone().residency_loop());
        p.inner.tasks.lock_unpoisoned().push(task);
        Ok(p)
    }

    /// Running preloads and those finished within a minute.
    pub fn records(&self) -> Vec<DownloadProgress> {
        let mut st = self.inner.state.lock_unpoisoned();
        st.finished.retain(|_, (at, _)| at.elapsed() < FINISHED_RETENTION);
        let mut out: BTreeMap<String, DownloadProgress> =
            st.finished.iter().map(|(id, (_, r))| (id.clone(), r.clone())).collect();
        for (id, job) in &st.jobs {
            out.insert(id.clone(), job.progress.lock_unpoisoned().record());
        }
        out.into_values().collect()
    }

    /// The measured read speeds.
    pub fn bandwidth(&self) -> ReadBandwidth {
        self.inner.bandwidth.get()
    }

    /// Preloads `id` (a ready model), or joins its running preload; with `wait`,
    /// returns when it has ended.
    pub async fn preload(&self, id: &str, wait: bool) -> Result<PreloadOutcome, HiveError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(HiveError::ShuttingDown);
        }
        let entry = self.ready_entry(id)?;
        let size = entry.size_bytes;
        if let Some(budget) = self.inner.config.budget
            && size > budget
        {
            return Err(HiveError::OverBudget { model: id.to_owned(), size, budget });
        }
        let joined = {
            let mut st = self.inner.state.lock_unpoisoned();
            st.clock += 1;
            let now = st.clock;
            if let Some(w) = st.warm.get_mut(id) {
                w.1 = now;
            }
            st.jobs.get(id).map(|j| j.done.clone())
        };
        if let Some(done) = joined {
            return join(done, wait, &entry).await;
        }
        let (dir, files) = (layout::model_dir(self.inner.models.dir(), id), entry.files.clone());
        let resident = tokio::task::spawn_blocking({
            let (dir, files) = (dir.clone(), files.clone());
            move || residency::measure(&dir, &files)
        })
        .await?
        .map_err(|source| match source.kind() {
            // A file that is no longer a regular one: the preload fails, as it would
            // had the file been swapped mid-read (the error names the file).
            std::io::ErrorKind::InvalidInput => HiveError::PreloadFailed(source.to_string()),
            _ => HiveError::ModelIo { path: dir.clone(), source },
        })?;
        self.admit(id, size.saturating_sub(resident))?;
        let (evicted, launch) = match self.admit_budget(id, size, true)? {
            Admitted::Joined(done) => return join(done, wait, &entry).await,
            Admitted::Start { victims, launch } => (victims, launch),
            Admitted::NotWarm => unreachable!("a preload (touch) is always admitted warm"),
        };
        self.drop_victims(id, &evicted).await;
        self.publish_warm(id);
        let done = self.launch(launch, dir, files);
        let resident_bytes = if wait { wait_done(done).await? } else { resident };
        Ok(PreloadOutcome { joined: false, evicted, resident_bytes, size_bytes: size })
    }

    /// Drops `id` from the page cache and stops keeping it warm; returns the bytes
    /// still resident.
    pub async fn evict(&self, id: &str) -> Result<u64, HiveError> {
        let Some(entry) = self.inner.models.catalog().get(id).cloned() else {
            return Err(HiveError::ModelNotFound(format!("model {id} is not in the catalog")));
        };
        let job = {
            let mut st = self.inner.state.lock_unpoisoned();
            st.warm.remove(id);
            st.jobs.get(id).map(|j| (j.cancel.clone(), j.done.clone()))
        };
        if let Some((cancel, done)) = job {
            cancel.cancel();
            let _ = wait_done(done).await;
        }
        let resident = self.drop_pages(&entry).await?;
        tracing::info!(model = %id, resident, "model evicted from the page cache");
        Ok(resident)
    }

    /// Waits for the residency loop and every preload after shutdown.
    pub async fn stopped(&self) {
        let tasks = std::mem::take(&mut *self.inner.tasks.lock_unpoisoned());
        for t in tasks {
            let _ = t.await;
        }
    }

    fn ready_entry(&self, id: &str) -> Result<ModelEntry, HiveError> {
        match self.inner.models.catalog().get(id) {
            None => Err(HiveError::ModelNotFound(format!("model {id} is not in the catalog"))),
            Some(e) if e.state != ModelState::Ready => {
                Err(HiveError::ModelNotReady { model: id.to_owned(), state: e.state.as_str() })
            }
            Some(e) => Ok(e.clone()),
        }
    }

    /// Refuses a preload of `needed` more bytes that memory cannot take now.
    fn admit(&self, id: &str, needed: u64) -> Result<(), HiveError> {
        let root = &self.inner.config.proc_root;
        if let Some(avg10) = memory::pressure_some_avg10(root)
            && avg10 > self.inner.config.pressure_limit
        {
            return Err(HiveError::MemoryPressure { avg10, limit: self.inner.config.pressure_limit });
        }
        let mem = memory::meminfo(root)
            .map_err(|source| HiveError::ModelIo { path: root.join("meminfo"), source })?;
        let headroom = mem.total / 20;
        if needed.saturating_add(headroom) > mem.available {
            return Err(HiveError::InsufficientMemory {
                model: id.to_owned(),
                needed,
                available: mem.available,
                headroom,
            });
        }
        Ok(())
    }

    /// Admits `id` (`size` bytes) into the budget, in one step under the lock: joins a
    /// preload of it that started meanwhile, or picks the least recently used idle warm
    /// models to evict (see [`plan_room`]), marks `id` warm and registers its job, so
    /// that the next admission counts it as in flight. Refuses when the preloads in
    /// flight leave no room. `touch`: a PreloadModel, which marks `id` used now; else a
    /// re-warm, which keeps its last use and only goes ahead while `id` is still warm at
    /// `size` (it may have been evicted or changed since it was picked).
    fn admit_budget(&self, id: &str, size: u64, touch: bool) -> Result<Admitted, HiveError> {
        let mut st = self.inner.state.lock_unpoisoned();
        if let Some(job) = st.jobs.get(id) {
            return Ok(Admitted::Joined(job.done.clone()));
        }
        let last_use = st.warm.get(id).filter(|w| w.0 == size).map(|w| w.1);
        if !touch && last_use.is_none() {
            return Ok(Admitted::NotWarm);
        }
        let victims = match self.inner.config.budget {
            None => Vec::new(),
            Some(budget) => {
                let in_flight: BTreeMap<&str, u64> =
                    st.jobs.iter().map(|(k, j)| (k.as_str(), j.size)).collect();
                plan_room(&st.warm, &in_flight, id, size, budget).map_err(|in_flight| {
                    HiveError::BudgetInFlight { model: id.to_owned(), size, in_flight, budget }
                })?
            }
        };
        for v in &victims {
            st.warm.remove(v);
        }
        st.clock += 1;
        let now = st.clock;
        let used = if touch { now } else { last_use.unwrap_or(now) };
        st.warm.insert(id.to_owned(), (size, used));
        let Some(launch) = self.register(&mut st, id, size) else {
            unreachable!("no job for {id}: checked under this lock")
        };
        Ok(Admitted::Start { victims, launch })
    }

    /// Drops the pages of the models evicted for room for `id`.
    async fn drop_victims(&self, id: &str, victims: &[String]) {
        for v in victims {
            if let Some(entry) = self.inner.models.catalog().get(v).cloned() {
                match self.drop_pages(&entry).await {
                    Ok(_) => {
                        tracing::info!(model = %v, for_model = %id, "least recently used model evicted for room")
                    }
                    Err(e) => tracing::warn!(model = %v, error = %e, "cannot evict"),
                }
            }
        }
    }

    fn is_warm(&self, id: &str) -> bool {
        self.inner.state.lock_unpoisoned().warm.contains_key(id)
    }

    fn publish_warm(&self, id: &str) {
        let warm = self.is_warm(id);
        self.inner.models.update_residency(id, None, warm, false);
    }

    /// Drops a model's pages, measures and publishes; returns what is still resident.
    async fn drop_pages(&self, entry: &ModelEntry) -> Result<u64, HiveError> {
        let dir = layout::model_dir(self.inner.models.dir(), &entry.id);
        let files = entry.files.clone();
        let d = dir.clone();
        let resident = tokio::task::spawn_blocking(move || {
            residency::evict(&d, &files)?;
            residency::measure(&d, &files)
        })
        .await?
        .map_err(|source| HiveError::ModelIo { path: dir, source })?;
        let warm = self.is_warm(&entry.id);
        self.inner.models.update_residency(&entry.id, Some(resident), warm, true);
        Ok(resident)
    }

    /// Registers a job for `id` in `st` (so that it counts as in flight at once); `None`
    /// when one runs already.
    fn register(&self, st: &mut State, id: &str, size: u64) -> Option<Launch> {
        if st.jobs.contains_key(id) {
            return None;
        }
        let mut progress = Progress::new(id);
        progress.set_phase(DownloadPhase::Preloading);
        progress.set_total(Some(size));
        let progress = Arc::new(Mutex::new(progress));
        let cancel = self.inner.shutdown.child_token();
        let (tx, rx) = watch::channel(None);
        st.jobs.insert(
            id.to_owned(),
            Job { size, cancel: cancel.clone(), progress: progress.clone(), done: rx },
        );
        Some(Launch { id: id.to_owned(), progress, cancel, tx })
    }

    /// Starts a registered job; returns where its end is announced.
    fn launch(
        &self,
        launch: Launch,
        dir: PathBuf,
        files: Vec<rbee_shared::ModelFile>,
    ) -> watch::Receiver<Done> {
        let Launch { id, progress, cancel, tx } = launch;
        let rx = tx.subscribe();
        let p = self.clone();
        let task = tokio::spawn(async move {
            let result = p.run(&id, dir, files, progress.clone(), cancel).await;
            let record = {
                let mut pr = progress.lock_unpoisoned();
                match &result {
                    Ok(_) => pr.set_phase(DownloadPhase::Done),
                    Err(read::Stopped::Cancelled) => pr.set_phase(DownloadPhase::Cancelled),
                    Err(e) => pr.fail(e.to_string()),
                }
                pr.record()
            };
            {
                let mut st = p.inner.state.lock_unpoisoned();
                st.jobs.remove(&id);
                st.finished.insert(id.clone(), (Instant::now(), record));
            }
            let _ = tx.send(Some(result.map_err(Arc::new)));
        });
        let mut tasks = self.inner.tasks.lock_unpoisoned();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        rx
    }

    async fn run(
        &self,
        id: &str,
        dir: PathBuf,
        files: Vec<rbee_shared::ModelFile>,
        progress: Arc<Mutex<Progress>>,
        cancel: CancellationToken,
    ) -> Result<u64, read::Stopped> {
        let _slot = tokio::select! {
            s = self.inner.slot.acquire() => s.map_err(|_| read::Stopped::Cancelled)?,
            () = cancel.cancelled() => return Err(read::Stopped::Cancelled),
        };
        let p = self.clone();
        let d = dir.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let job = read::ReadJob {
                dir: &d,
                files: &files,
                progress: &progress,
                cancel: &cancel,
                bandwidth: &p.inner.bandwidth,
                proc_root: &p.inner.config.proc_root,
                pressure_limit: p.inner.config.pressure_limit,
            };
            let r = read::read_all(&job);
            if matches!(r, Err(read::Stopped::Pressure { .. })) {
                let _ = residency::evict(&d, &files);
            }
            r.and_then(|()| {
                residency::measure(&d, &files).map_err(|source| read::Stopped::Io { path: d.clone(), source })
            })
        })
        .await
        .unwrap_or(Err(read::Stopped::Cancelled));
        if result.is_err() {
            self.inner.state.lock_unpoisoned().warm.remove(id);
        }
        match &result {
            Ok(resident) => {
                tracing::info!(model = %id, resident, ms = started.elapsed().as_millis() as u64, "model preloaded");
                self.inner.models.update_residency(id, Some(*resident), self.is_warm(id), true);
            }
            Err(e) => {
                tracing::warn!(model = %id, error = %e, "preload stopped");
                self.measure_one(id, true).await;
            }
        }
        result
    }

    /// Measures one model and publishes (behind the deadband unless `force`).
    async fn measure_one(&self, id: &str, force: bool) -> Option<u64> {
        let entry = self.inner.models.catalog().get(id).cloned()?;
        if entry.state != ModelState::Ready {
            return None;
        }
        let dir = layout::model_dir(self.inner.models.dir(), id);
        let files = entry.files.clone();
        let resident =
            tokio::task::spawn_blocking(move || residency::measure(&dir, &files)).await.ok()?.ok()?;
        self.inner.models.update_residency(id, Some(resident), self.is_warm(id), force);
        Some(resident)
    }

    /// Stops keeping warm every model that is no longer the one preloaded: gone from
    /// `catalog` (deleted), not ready (being fetched again) or of another size (a file
    /// grew or shrank). Its preload in flight, if any, is cancelled. Such a model is warm
    /// again only by a new PreloadModel, admitted into the budget at its size now.
    fn forget_changed(&self, catalog: &ModelMap) {
        let mut forgotten = Vec::new();
        {
            let mut st = self.inner.state.lock_unpoisoned();
            st.warm.retain(|id, (size, _)| {
                let same =
                    catalog.get(id).is_some_and(|e| e.state == ModelState::Ready && e.size_bytes == *size);
                if !same {
                    forgotten.push(id.clone());
                }
                same
            });
            for id in &forgotten {
                if let Some(job) = st.jobs.get(id) {
                    job.cancel.cancel();
                }
            }
        }
        for id in forgotten {
            let now = catalog.get(&id).map(|e| (e.state.as_str(), e.size_bytes));
            tracing::info!(model = %id, now = ?now, "warm model deleted or changed; no longer kept warm");
            if catalog.contains_key(&id) {
                self.inner.models.update_residency(&id, None, false, false);
            }
        }
    }

    /// Reads a warm model the kernel reclaimed again, admitted like a preload: refused
    /// over the whole budget (then no longer warm), over `MemAvailable` or under
    /// pressure, and making room in the budget from the least recently used idle models.
    async fn rewarm(&self, id: &str, entry: &ModelEntry, resident: u64) -> Result<(), HiveError> {
        let size = entry.size_bytes;
        if let Some(budget) = self.inner.config.budget
            && size > budget
        {
            self.inner.state.lock_unpoisoned().warm.remove(id);
            self.publish_warm(id);
            return Err(HiveError::OverBudget { model: id.to_owned(), size, budget });
        }
        self.admit(id, size.saturating_sub(resident))?;
        let (victims, launch) = match self.admit_budget(id, size, false)? {
            Admitted::Start { victims, launch } => (victims, launch),
            Admitted::Joined(_) | Admitted::NotWarm => return Ok(()),
        };
        tracing::info!(model = %id, resident, "warm model reclaimed by the kernel; reading it again");
        self.drop_victims(id, &victims).await;
        let dir = layout::model_dir(self.inner.models.dir(), id);
        drop(self.launch(launch, dir, entry.files.clone()));
        Ok(())
    }

    async fn residency_loop(self) {
        let mut ticker = tokio::time::interval(self.inner.config.residency_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changes = self.inner.models.watch();
        let mut watching = true;
        loop {
            tokio::select! {
                () = self.inner.shutdown.cancelled() => return,
                changed = changes.changed(), if watching => {
                    match changed {
                        Ok(()) => {
                            let catalog = changes.borrow_and_update().clone();
                            self.forget_changed(&catalog);
                        }
                        Err(_) => watching = false,
                    }
                    continue;
                }
                _ = ticker.tick() => {}
            }
            let catalog = self.inner.models.catalog();
            self.forget_changed(&catalog);
            for (id, entry) in catalog.iter() {
                let Some(resident) = self.measure_one(id, false).await else { continue };
                let running = self.inner.state.lock_unpoisoned().jobs.contains_key(id);
                if self.is_warm(id)
                    && !running
                    && (resident as f64) < REWARM_BELOW * entry.size_bytes as f64
                    && let Err(e) = self.rewarm(id, entry, resident).await
                {
                    tracing::info!(model = %id, error = %e, "not re-warmed");
                }
            }
        }
    }
}

/// A job registered but not started yet.
struct Launch {
    /// The model.
    id: String,
    /// Its progress (shared with the job's record).
    progress: Arc<Mutex<Progress>>,
    /// Cancelled by EvictModel or shutdown.
    cancel: CancellationToken,
    /// Where its end is announced.
    tx: watch::Sender<Done>,
}

/// What the budget said to a preload.
enum Admitted {
    /// A preload of the model started meanwhile: join it.
    Joined(watch::Receiver<Done>),
    /// Go: evict these, then start.
    Start {
        /// Warm models to evict for room, least recently used first.
        victims: Vec<String>,
        /// The registered job.
        launch: Launch,
    },
    /// A re-warm of a model no longer warm (or no longer of that size): nothing to do.
    NotWarm,
}

/// The outcome of joining a running preload of `entry`.
async fn join(
    done: watch::Receiver<Done>,
    wait: bool,
    entry: &ModelEntry,
) -> Result<PreloadOutcome, HiveError> {
    let resident = if wait { wait_done(done).await? } else { entry.resident_bytes.unwrap_or(0) };
    Ok(PreloadOutcome {
        joined: true,
        evicted: Vec::new(),
        resident_bytes: resident,
        size_bytes: entry.size_bytes,
    })
}

/// How a preload ended, for every caller waiting on it: the bytes it left resident, or
/// why it stopped (shared: several callers may wait on one preload).
type Done = Option<Result<u64, Arc<read::Stopped>>>;

async fn wait_done(mut done: watch::Receiver<Done>) -> Result<u64, HiveError> {
    let result = done.wait_for(Option::is_some).await.map_err(|_| HiveError::ShuttingDown)?.clone();
    match result {
        Some(Ok(r)) => Ok(r),
        Some(Err(e)) => Err(HiveError::PreloadFailed(e.to_string())),
        None => Err(HiveError::ShuttingDown),
    }
}

/// The residency method this kernel gives, tried on the hive's own executable.
fn probe_method(_dir: &std::path::Path) -> Option<&'static str> {
    let f = std::fs::File::open(std::env::current_exe().ok()?).ok()?;
    Some(rbee_pagecache::method(&f).as_str())
}
