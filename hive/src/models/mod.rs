//! Models on this hive: the catalog of the models directory, and downloads.
//!
//! - [`layout`]: where files live; atomic writes. [`manifest`]: the on-disk records.
//! - [`catalog`]: the published catalog and the directory scan. [`verify`]: hashing
//!   hand-copied models in the background.
//! - [`job`]: one model download; [`download`]: one file, resumable, retried and hashed
//!   while streaming; [`sink`]: its writer and fsync threads; [`http`]: the client;
//!   [`hf`]: `hf://` through the Hub API; [`egress`]: where downloads may go.
//! - [`peer_fetch`]: weights from peers, the fetching side (sources in order, peers
//!   before the origin); [`peer_fetch_dial`]: dialing them; [`peer_fetch::peer_fetch_read`]: one read.
//! - [`progress`]: what samples report per download. [`disk`]: free space.
//! - [`failures`]: failed downloads, limited per caller. Failed entries and finished
//!   records are bounded too (the view budgets, `rbee_shared::view_budget`).
//! - [`source`]: how the catalog reaches capabilities, and progress reaches samples.
//! - [`serve`]: serving model files to peer hives (`ReadModelFile`); [`serve::upload`]:
//!   one upload; [`serve_throttle`]: `--peer-upload-limit`.

pub mod catalog;
pub mod conflict;
pub mod disk;
pub mod download;
pub mod download_error;
pub mod egress;
pub mod failures;
pub mod hf;
pub mod http;
pub mod hub;
pub mod job;
pub mod layout;
pub mod manifest;
pub mod peer_fetch;
pub mod peer_fetch_dial;
pub mod progress;
pub mod redact;
pub mod residency;
pub mod serve;
pub mod serve_throttle;
pub mod sink;
pub mod source;
pub mod verify;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbee_shared::lock::MutexExt;
use rbee_shared::view_budget;
use rbee_shared::{DiskSpace, DownloadProgress, ModelSource, ModelState};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::HiveError;
use catalog::{Catalog, ModelMap};
use failures::{BudgetEvent, BudgetLog};
use manifest::FetchRecord;
use progress::Progress;

/// Downloads at once by default.
pub const DEFAULT_MAX_DOWNLOADS: usize = 2;
/// How long a finished download's final record stays in samples.
pub const FINISHED_RETENTION: Duration = Duration::from_secs(60);
/// Most final records kept (the newest); samples carry at most
/// [`view_budget::MAX_RECORDS`] records in all.
pub const MAX_FINISHED: usize = view_budget::MAX_RECORDS;
/// How long a failed download stays in the catalog (at most
/// [`view_budget::MAX_FAILED_ENTRIES`] of them, the newest).
pub const FAILED_RETENTION: Duration = Duration::from_secs(3600);

/// How the models directory is run.
#[derive(Debug, Clone)]
pub struct ModelsConfig {
    /// The models directory.
    pub dir: PathBuf,
    /// Downloads at once.
    pub max_downloads: usize,
    /// How often the directory is scanned for hand-copied models.
    pub rescan: Duration,
    /// The Hugging Face Hub (from `HF_ENDPOINT` and `HF_TOKEN` by default).
    pub hub: hf::HubConfig,
    /// True for the default directory: when it cannot be opened the hive runs without
    /// one (a warning) instead of failing to start. A directory the operator named must
    /// open.
    pub optional: bool,
    /// The least progress a download attempt must make (default 64 KiB per 60 s).
    pub min_progress: download::MinProgress,
    /// Where downloads may fetch from (`--download-allow`; default: public addresses).
    pub egress: egress::EgressRule,
    /// Dials peer hives (`--peer-ca`, `--peer-tls-cert`, `--peer-tls-key`; default:
    /// loopback plaintext peers only).
    pub peer_dialer: peer_fetch_dial::PeerDialer,
    /// Serving model files to peers (`--serve-models`, `--peer-upload-limit`,
    /// `--max-peer-uploads`).
    pub serve: serve::ServeConfig,
}

impl ModelsConfig {
    /// `dir` with the defaults.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_downloads: DEFAULT_MAX_DOWNLOADS,
            rescan: Duration::from_secs(5),
            hub: hf::HubConfig::from_env(),
            optional: false,
            min_progress: download::MinProgress::default(),
            egress: egress::EgressRule::default(),
            peer_dialer: peer_fetch_dial::PeerDialer::default(),
            serve: serve::ServeConfig::default(),
        }
    }
}

/// The default models directory: `$XDG_DATA_HOME/rbee/models` or
/// `~/.local/share/rbee/models`.
pub fn default_models_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("rbee/models")
}

/// A running download.
struct Job {
    /// Cancelled by CancelFetch or DeleteModel.
    cancel: CancellationToken,
    /// Its progress.
    progress: Arc<Mutex<Progress>>,
    /// The declared total, until the job knows its own.
    declared: Option<u64>,
    /// The files it was asked for (empty for `hf://`).
    files: Vec<rbee_shared::ModelFile>,
    /// Who asked for it (the peer of the FetchModel call), charged if it fails.
    caller: Option<IpAddr>,
}

impl Job {
    /// Bytes it will still write: its total (known or declared) minus what is done.
    fn remaining(&self) -> u64 {
        let r = self.progress.lock_unpoisoned().record();
        r.bytes_total.or(self.declared).unwrap_or(0).saturating_sub(r.bytes_done)
    }
}

/// What FetchModel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// A new download started.
    Started,
    /// A download of the model was running; the call joined it.
    Joined,
    /// The model is ready already.
    AlreadyReady,
}

/// The state shared by the handle and the download tasks.
pub struct Inner {
    /// Configuration.
    config: ModelsConfig,
    /// The catalog.
    catalog: Catalog,
    /// Running downloads by model id.
    jobs: Mutex<BTreeMap<String, Job>>,
    /// Final records of finished downloads, with when they finished.
    finished: Mutex<BTreeMap<String, (Instant, DownloadProgress)>>,
    /// Download slots (`--max-downloads`).
    slots: Arc<Semaphore>,
    /// The HTTP client, built by the first download (a hive that never downloads does
    /// not load the TLS client stack).
    client: std::sync::OnceLock<http::Fetcher>,
    /// Hugging Face Hub endpoint and token.
    hub: hf::HubConfig,
    /// The hive's shutdown.
    shutdown: CancellationToken,
    /// Every task started, awaited at shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Failed downloads per caller.
    failures: Mutex<rbee_shared::failure_limit::FailureLimit<Option<IpAddr>>>,
    /// What the view budgets made the hive drop or refuse lately.
    budget_log: Mutex<BudgetLog>,
    /// Downloaded models refused for other bytes, with their files' stats then.
    refused: Mutex<BTreeMap<String, verify::Stamps>>,
}

impl Inner {
    /// The HTTP client every download shares, built on first use.
    fn client(&self) -> Result<&http::Fetcher, download::DownloadError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let built = http::Fetcher::new(self.config.egress.clone())
            .map_err(|e| download::DownloadError::Resolve(format!("cannot build the HTTP client: {e}")))?;
        // Two first downloads may race; either client serves.
        Ok(self.client.get_or_init(|| built))
    }

    /// Counts `n` budget events of `kind`.
    fn budget_event(&self, kind: BudgetEvent, n: u64) {
        self.budget_log.lock_unpoisoned().record(kind, n, Instant::now());
    }

    /// Drops failed entries beyond their bound or age, counting them.
    fn prune_failed(&self, keep: usize, max_age: Duration) {
        let n = self.catalog.prune_failed(keep, max_age);
        self.budget_event(BudgetEvent::FailedDropped, n as u64);
    }

    /// Records a download's final state and ends its job; a failure is charged to
    /// its caller, and failed entries and final records are kept within their budgets.
    fn finish(&self, id: &str, record: DownloadProgress) {
        let failed = record.phase == rbee_shared::DownloadPhase::Failed;
        {
            let mut finished = self.finished.lock_unpoisoned();
            finished.insert(id.to_owned(), (Instant::now(), record));
            if finished.len() > MAX_FINISHED {
                let mut by_age: Vec<(Instant, String)> =
                    finished.iter().map(|(id, (at, _))| (*at, id.clone())).collect();
                by_age.sort();
                for (_, old) in by_age.into_iter().take(finished.len() - MAX_FINISHED) {
                    finished.remove(&old);
                }
            }
        }
        let job = self.jobs.lock_unpoisoned().remove(id);
        if failed {
            let caller = job.and_then(|j| j.caller);
            self.failures.lock_unpoisoned().charge(caller, Instant::now());
            self.prune_failed(view_budget::MAX_FAILED_ENTRIES, FAILED_RETENTION);
        }
    }

    /// Bytes the running downloads other than `except` will still write: the free
    /// disk a new download may count on is the free space minus these.
    fn in_flight_bytes(jobs: &BTreeMap<String, Job>, except: &str) -> u64 {
        jobs.iter()
            .filter(|(id, _)| id.as_str() != except)
            .map(|(_, j)| j.remaining())
            .fold(0, u64::saturating_add)
    }
}

/// The models directory of this hive.
#[derive(Clone)]
pub struct Models {
    /// Shared state.
    inner: Arc<Inner>,
}

impl Models {
    /// Opens the directory (creating it), loads the catalog, resumes partial downloads
    /// and starts verifying hand-copied models.
    pub async fn open(config: ModelsConfig, shutdown: CancellationToken) -> Result<Self, HiveError> {
        if config.max_downloads == 0 {
            return Err(HiveError::Config("--max-downloads must be at least 1".into()));
        }
        let dir = config.dir.clone();
        let io = |source| HiveError::ModelIo { path: dir.clone(), source };
        std::fs::create_dir_all(dir.join(layout::PARTIAL)).map_err(io)?;
        let scan_dir = dir.clone();
        let found = tokio::task::spawn_blocking(move || catalog::scan(&scan_dir)).await?.map_err(io)?;
        let inner = Arc::new(Inner {
            slots: Arc::new(Semaphore::new(config.max_downloads)),
            catalog: Catalog::default(),
            jobs: Mutex::new(BTreeMap::new()),
            finished: Mutex::new(BTreeMap::new()),
            client: std::sync::OnceLock::new(),
            hub: config.hub.clone(),
            shutdown,
            tasks: Mutex::new(Vec::new()),
            failures: Mutex::new(failures::limit()),
            budget_log: Mutex::default(),
            refused: Mutex::default(),
            config,
        });
        let models = Self { inner };
        for manifest in &found.ready {
            models.inner.catalog.put(catalog::ready_entry(manifest));
        }
        for (id, files) in &found.unverified {
            models.inner.catalog.put(catalog::unverified_entry(id, files));
        }
        tracing::info!(
            dir = %models.inner.config.dir.display(),
            ready = found.ready.len(),
            unverified = found.unverified.len(),
            resuming = found.partial.len(),
            "models directory opened"
        );
        for record in found.partial {
            models.start(record);
        }
        let watcher = tokio::spawn(models.clone().upkeep_loop());
        models.inner.tasks.lock_unpoisoned().push(watcher);
        Ok(models)
    }

    /// The models directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.inner.config.dir
    }

    /// The catalog now.
    pub fn catalog(&self) -> Arc<ModelMap> {
        self.inner.catalog.snapshot()
    }

    /// Sees every catalog change.
    pub fn watch(&self) -> watch::Receiver<Arc<ModelMap>> {
        self.inner.catalog.subscribe()
    }

    /// One record per running download and per download finished within
    /// [`FINISHED_RETENTION`], by model id.
    pub fn downloads(&self) -> Vec<DownloadProgress> {
        let mut out: BTreeMap<String, DownloadProgress> = {
            let mut finished = self.inner.finished.lock_unpoisoned();
            finished.retain(|_, (at, _)| at.elapsed() < FINISHED_RETENTION);
            finished.iter().map(|(id, (_, r))| (id.clone(), r.clone())).collect()
        };
        for (id, job) in self.inner.jobs.lock_unpoisoned().iter() {
            out.insert(id.clone(), job.progress.lock_unpoisoned().record());
        }
        out.into_values().collect()
    }

    /// What the view budgets made the hive drop or refuse within the last
    /// [`FINISHED_RETENTION`], one line each (samples carry them as cut lines).
    pub fn budget_cuts(&self) -> Vec<String> {
        self.inner.budget_log.lock_unpoisoned().lines()
    }

    /// The models filesystem's space, if it can be read.
    pub fn disk(&self) -> Option<DiskSpace> {
        disk::space(&self.inner.config.dir).ok()
    }

    /// Starts or joins the download of `id` from `source`. A declared size over the
    /// free disk is refused here, before anything is written.
    pub fn fetch(&self, id: &str, source: ModelSource) -> Result<FetchOutcome, HiveError> {
        self.fetch_for(id, source, None)
    }

    /// [`Models::fetch`] for `caller` (the peer of the call): a new download is refused
    /// while the caller's downloads keep failing ([`failures`]), or when the catalog
    /// holds [`view_budget::MAX_CATALOG_ENTRIES`] entries.
    pub fn fetch_for(
        &self,
        id: &str,
        source: ModelSource,
        caller: Option<IpAddr>,
    ) -> Result<FetchOutcome, HiveError> {
        self.fetch_with(id, Some(source), peer_fetch::PeerPlan::default(), caller)
    }

    /// Who dials peers for this hive's fetches (validating a FetchModel's peers needs it).
    pub fn peer_dialer(&self) -> &peer_fetch_dial::PeerDialer {
        &self.inner.config.peer_dialer
    }

    /// [`Models::fetch_for`] from `source` (none: the peers alone) after the peers of
    /// `plan`, most preferred first (validated by [`peer_fetch::check_peers`]).
    pub fn fetch_with(
        &self,
        id: &str,
        source: Option<ModelSource>,
        plan: peer_fetch::PeerPlan,
        caller: Option<IpAddr>,
    ) -> Result<FetchOutcome, HiveError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(HiveError::ShuttingDown);
        }
        // What the caller declares: the origin's files with the peers' sizes and hashes.
        let origin_files = match &source {
            Some(ModelSource::Urls(files)) => Some(files.as_slice()),
            _ => None,
        };
        let declared = match (&source, plan.files.is_empty()) {
            (Some(ModelSource::HuggingFace { .. }), true) => None,
            (Some(ModelSource::HuggingFace { .. }), false) => peer_fetch::merge_files(None, &plan.files),
            _ => peer_fetch::merge_files(origin_files, &plan.files),
        };
        let declared_source = declared.clone().map(ModelSource::Urls);
        if let Some(ModelSource::Urls(files)) = &declared_source {
            layout::check_file_set(files.iter().map(|f| f.path.as_str()))
                .map_err(|e| rbee_shared::ConvertError::new("source.urls.files", e.to_string()))?;
        }
        let mut jobs = self.inner.jobs.lock_unpoisoned();
        let want = declared_source.as_ref().or(source.as_ref());
        if let Some(job) = jobs.get(id) {
            if let Some(why) = want.and_then(|w| conflict::disagreement(w, &job.files)) {
                return Err(HiveError::ModelConflict(format!(
                    "a download of {id} with other content is running ({why}); cancel it first"
                )));
            }
            return Ok(FetchOutcome::Joined);
        }
        match self.inner.catalog.get(id) {
            Some(m) if m.state == ModelState::Ready => {
                if let Some(why) = want.and_then(|w| conflict::disagreement(w, &m.files)) {
                    return Err(HiveError::ModelConflict(format!(
                        "{id} is ready with other content ({why}); delete it first"
                    )));
                }
                return Ok(FetchOutcome::AlreadyReady);
            }
            Some(m) if m.state == ModelState::Unverified => return Err(HiveError::ModelBusy(id.to_owned())),
            _ => {}
        }
        let limited = self.inner.failures.lock_unpoisoned().check(caller, Instant::now());
        if let Err(wait) = limited {
            self.inner.budget_event(BudgetEvent::Refused, 1);
            return Err(HiveError::ModelsBudget(format!(
                "too many failed downloads from this caller; retry in {} s",
                wait.as_secs().max(1)
            )));
        }
        if self.inner.catalog.get(id).is_none()
            && self.inner.catalog.len() >= view_budget::MAX_CATALOG_ENTRIES
        {
            self.inner.prune_failed(0, Duration::ZERO);
            if self.inner.catalog.len() >= view_budget::MAX_CATALOG_ENTRIES {
                self.inner.budget_event(BudgetEvent::Refused, 1);
                return Err(HiveError::ModelsBudget(format!(
                    "the catalog holds {} models, its limit; delete one first",
                    view_budget::MAX_CATALOG_ENTRIES
                )));
            }
        }
        if let Some(ModelSource::Urls(files)) = &declared_source
            && let Some(declared) =
                files.iter().map(|f| f.size_bytes).try_fold(0u64, |sum, s| s.and_then(|s| sum.checked_add(s)))
        {
            let space = disk::space(&self.inner.config.dir)
                .map_err(|source| HiveError::ModelIo { path: self.inner.config.dir.clone(), source })?;
            // Downloads in flight will take their remaining bytes from the same space.
            let free = space.free_bytes.saturating_sub(Inner::in_flight_bytes(&jobs, id));
            if declared > free {
                return Err(HiveError::InsufficientDisk {
                    dir: self.inner.config.dir.clone(),
                    needed: declared,
                    free,
                });
            }
        }
        let record = FetchRecord {
            id: id.to_owned(),
            source,
            resolved: None,
            peers: plan.peers,
            peer_files: plan.files,
        };
        let partial = layout::partial_dir(&self.inner.config.dir, id);
        let io = |source| HiveError::ModelIo { path: partial.clone(), source };
        layout::remove_tree(&partial).map_err(io)?;
        std::fs::create_dir_all(&partial).map_err(io)?;
        manifest::write_private(&partial.join(layout::FETCH_RECORD), &record).map_err(io)?;
        self.inner.finished.lock_unpoisoned().remove(id);
        self.spawn_job(&mut jobs, record, caller);
        Ok(FetchOutcome::Started)
    }

    /// Starts a resumed download (at open).
    fn start(&self, record: FetchRecord) {
        let mut jobs = self.inner.jobs.lock_unpoisoned();
        self.spawn_job(&mut jobs, record, None);
    }

    fn spawn_job(&self, jobs: &mut BTreeMap<String, Job>, record: FetchRecord, caller: Option<IpAddr>) {
        let id = record.id.clone();
        let files = match (&record.resolved, &record.source) {
            (Some(files), _) => files.clone(),
            (None, Some(ModelSource::Urls(files))) => {
                peer_fetch::merge_files(Some(files), &record.peer_files).unwrap_or_else(|| files.clone())
            }
            (None, _) => peer_fetch::merge_files(None, &record.peer_files).unwrap_or_default(),
        };
        self.inner.catalog.put(rbee_shared::ModelEntry {
            id: id.clone(),
            state: ModelState::Downloading,
            size_bytes: files.iter().filter_map(|f| f.size_bytes).sum(),
            files: files
                .iter()
                .map(|f| rbee_shared::ModelFile {
                    path: f.path.clone(),
                    size_bytes: f.size_bytes.unwrap_or(0),
                    sha256: f.sha256.clone(),
                })
                .collect(),
            error: None,
            resident_bytes: None,
            warm: false,
        });
        let progress = Arc::new(Mutex::new(Progress::new(&id)));
        let cancel = CancellationToken::new();
        let declared = files.iter().map(|f| f.size_bytes).sum::<Option<u64>>();
        let declared_files = conflict::declared_files(&files);
        jobs.insert(
            id,
            Job {
                cancel: cancel.clone(),
                progress: progress.clone(),
                declared,
                files: declared_files,
                caller,
            },
        );
        let task = tokio::spawn(job::run(self.inner.clone(), record, progress, cancel));
        let mut tasks = self.inner.tasks.lock_unpoisoned();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Cancels the running download of `id`; its partial files are removed.
    pub fn cancel(&self, id: &str) -> Result<(), HiveError> {
        match self.inner.jobs.lock_unpoisoned().get(id) {
            Some(job) => {
                job.cancel.cancel();
                Ok(())
            }
            None => Err(HiveError::ModelNotFound(format!("no download of {id} is running"))),
        }
    }

    /// Deletes `id`: cancels its download if one runs, or removes its files.
    pub async fn delete(&self, id: &str) -> Result<(), HiveError> {
        if self.cancel(id).is_ok() {
            return Ok(());
        }
        let Some(entry) = self.inner.catalog.get(id) else {
            return Err(HiveError::ModelNotFound(format!("model {id} is not in the catalog")));
        };
        let root = self.inner.config.dir.clone();
        if entry.state != ModelState::Failed {
            let dir = layout::model_dir(&root, id);
            let trash =
                root.join(layout::TRASH).join(format!("{}.{}", layout::dir_name(id), uuid::Uuid::new_v4()));
            let moved = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(trash.parent().unwrap_or(&trash))?;
                match std::fs::rename(&dir, &trash) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                    Ok(()) => layout::remove_tree(&trash),
                }
            })
            .await?;
            moved.map_err(|source| HiveError::ModelIo { path: layout::model_dir(&root, id), source })?;
        }
        self.inner.catalog.remove(id);
        self.inner.finished.lock_unpoisoned().remove(id);
        self.inner.refused.lock_unpoisoned().remove(id);
        tracing::info!(model = %id, "model deleted");
        Ok(())
    }

    /// Waits for every task after the hive's shutdown token was cancelled.
    pub async fn stopped(&self) {
        let tasks = std::mem::take(&mut *self.inner.tasks.lock_unpoisoned());
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Picks up hand-copied models and verifies them, and drops models whose
    /// directory went away, every `rescan`.
    async fn upkeep_loop(self) {
        let mut ticker = tokio::time::interval(self.inner.config.rescan);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.inner.shutdown.cancelled() => return,
                _ = ticker.tick() => self.upkeep().await,
            }
        }
    }

    async fn upkeep(&self) {
        self.inner.prune_failed(view_budget::MAX_FAILED_ENTRIES, FAILED_RETENTION);
        let root = self.inner.config.dir.clone();
        let found = match tokio::task::spawn_blocking(move || scan_models_only(&root)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => return tracing::warn!(error = %e, "cannot scan the models directory"),
            Err(e) => return tracing::warn!(error = %e, "models scan failed"),
        };
        let catalog = self.catalog();
        for (id, model) in catalog.iter() {
            let gone = matches!(model.state, ModelState::Ready | ModelState::Unverified)
                && !found.iter().any(|(fid, _)| fid == id);
            if gone {
                tracing::warn!(model = %id, "model directory removed by hand; dropped from the catalog");
                self.inner.catalog.remove(id);
            }
        }
        for (id, files) in found {
            let known = catalog.get(&id).map(|m| m.state);
            let busy = self.inner.jobs.lock_unpoisoned().contains_key(&id);
            if busy || known == Some(ModelState::Downloading) {
                continue;
            }
            if known == Some(ModelState::Ready) && !self.changed_since_ready(&id, &files).await {
                continue;
            }
            if matches!(known, None | Some(ModelState::Failed | ModelState::Ready)) {
                tracing::info!(model = %id, "hand-copied model found; verifying");
                self.inner.catalog.put(catalog::unverified_entry(&id, &files));
            }
            let dir = layout::model_dir(&self.inner.config.dir, &id);
            let vid = id.clone();
            let quiet = self.inner.config.rescan;
            // A downloaded model refused for other bytes is hashed again only once its
            // files changed (stats), not every rescan.
            let refused = self.inner.refused.lock_unpoisoned().get(&id).cloned();
            let verified = tokio::task::spawn_blocking(move || {
                let stamps = verify::stamps(&dir).ok();
                if refused.is_some() && refused == stamps {
                    return None;
                }
                Some((stamps, verify::verify(&vid, &dir, quiet)))
            })
            .await;
            let verified = match verified {
                Ok(None) => continue,
                Ok(Some((stamps, result))) => {
                    let mut refused = self.inner.refused.lock_unpoisoned();
                    match (&result, stamps) {
                        (Err(verify::VerifyError::ChangedAfterDownload(_)), Some(stamps)) => {
                            refused.insert(id.clone(), stamps);
                        }
                        _ => {
                            refused.remove(&id);
                        }
                    }
                    Ok(result)
                }
                Err(e) => Err(e),
            };
            match verified {
                Ok(Ok(manifest)) => {
                    tracing::info!(model = %id, "hand-copied model verified");
                    if self.inner.catalog.get(&id).map(|m| m.state) == Some(ModelState::Unverified) {
                        self.inner.catalog.put(catalog::ready_entry(&manifest));
                    }
                }
                Ok(Err(e)) => {
                    // The reason stays on the entry (e.g. no regular files), said once.
                    let reason = Some(e.to_string());
                    let mut changed = false;
                    self.inner.catalog.update(&id, |m| {
                        changed = m.error != reason;
                        m.error.clone_from(&reason);
                        changed
                    });
                    if changed && matches!(e, verify::VerifyError::ChangedAfterDownload(_)) {
                        tracing::warn!(model = %id, error = %e, "downloaded model changed on disk; not ready");
                    } else if changed {
                        tracing::info!(model = %id, error = %e, "hand-copied model not verified yet");
                    }
                }
                Err(e) => tracing::warn!(model = %id, error = %e, "verification task failed"),
            }
        }
    }
}

impl Models {
    /// Whether the files of ready model `id` are no longer the ones it was verified
    /// with (other paths or sizes, or modified after the manifest); then its manifest
    /// is set aside ([`verify::set_aside`]), so that it is verified again.
    async fn changed_since_ready(&self, id: &str, files: &layout::FileList) -> bool {
        let Some(entry) = self.inner.catalog.get(id) else { return false };
        let mut listed: layout::FileList =
            entry.files.iter().map(|f| (f.path.clone(), f.size_bytes)).collect();
        listed.sort();
        let dir = layout::model_dir(&self.inner.config.dir, id);
        let resized = listed != *files;
        let changed = tokio::task::spawn_blocking(move || {
            let changed = resized || verify::changed_since_verified(&dir).unwrap_or(false);
            if changed {
                verify::set_aside(&dir);
            }
            changed
        })
        .await
        .unwrap_or(false);
        if changed {
            tracing::warn!(model = %id, "files of a ready model changed on disk; verifying it again");
        }
        changed
    }
}

/// The model directories with their files, whether or not they have a manifest (the
/// ones with a valid manifest are listed too, so that removals are seen).
fn scan_models_only(root: &std::path::Path) -> std::io::Result<Vec<(String, layout::FileList)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.metadata()?.is_dir() {
            continue;
        }
        if let Some(id) = layout::id_of_dir(&name) {
            out.push((id, layout::list_files(&entry.path())?));
        }
    }
    Ok(out)
}
