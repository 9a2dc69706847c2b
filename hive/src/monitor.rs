//! The monitor: the hive's device sources behind one lock, and the published,
//! versioned capabilities that streams watch.
//!
//! Source calls block (NVML), so they run off the async runtime; the lock is a plain
//! mutex held only inside those threads, never across an `.await`. A hive's own
//! monitor has one dedicated sampler thread that also keeps the streams' schedule: a
//! stream asks for a reading *at* its next tick ([`Telemetry::sample_at`]), the
//! sampler thread sleeps until then, reads, and hands the reading over, so one sample
//! costs one wake-up of that thread and one of the runtime (a timer on the runtime and
//! a blocking-pool hand-off cost four). Monitors of the fleet simulator, thousands in
//! one process, use the blocking pool instead.
//!
//! Every sample is consistent with a published capability version: a sample names
//! exactly the GPUs of the version it is stamped with. When a reading sees another
//! GPU set than the published one (a hot-plug between rescans), the monitor rescans
//! and publishes the new version first, under the same lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use rbee_shared::lock::MutexExt;
use rbee_shared::{Capabilities, DeviceSourceKind, GpuSample, Sample, VersionedCapabilities};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::HiveError;
use crate::procs::ProcessAttributor;
use crate::source::DeviceSource;
use crate::source::nvml::NvmlSource;
use crate::source::nvml_calls::NvmlCalls;
use crate::source::simulated::{Scenario, SimulatedSource};
use crate::source::system::SystemSource;

/// Which GPU source to use.
#[derive(Debug, Clone)]
pub enum GpuChoice {
    /// NVML when the driver is present; otherwise CPU only, with one log line. `lib`
    /// names the driver library when it is not the system's `libnvidia-ml.so`.
    Nvml {
        /// The NVML library to load instead of the system's.
        lib: Option<PathBuf>,
    },
    /// Simulated GPUs from a scenario (tests and demos).
    Simulated(Scenario),
}

/// Two samples closer together than this share one reading, so that several streams
/// polling at once do not measure CPU over a meaninglessly short window.
const SAMPLE_REUSE_WINDOW: Duration = Duration::from_millis(50);

/// A measurement also rescans the capabilities once this share of the rescan interval
/// has passed since the last scan, on the blocking thread it already holds: while
/// streams sample, the rescan loop has nothing left to do and sleeps.
const RESCAN_WITH_SAMPLE_AFTER: f64 = 0.9;
/// The rescan loop scans when this share of the interval has passed with no scan (a
/// little after a sample would have), so that it never races the sample for the scan.
const RESCAN_LOOP_AFTER: f64 = 1.1;
/// While measurements do the rescans, the loop checks back only after this many more
/// intervals: it is the fallback for when streams stop sampling, and each wake-up of
/// its own costs the hive two timer wake-ups (tokio's wheel cascades a 1 s timer). When
/// samples stop, the loop rescans within `RESCAN_LOOP_AFTER + RESCAN_LOOP_SLACK_WHILE_SAMPLED`
/// intervals of the last scan (4.1 s by default).
const RESCAN_LOOP_SLACK_WHILE_SAMPLED: f64 = 3.0;

/// When the capabilities were last scanned, and how often they should be: shared by
/// the measurements and the rescan loop without taking the monitor lock.
#[derive(Debug)]
struct ScanClock {
    /// The origin of the stamps below.
    origin: Instant,
    /// The last scan, in nanoseconds since `origin`.
    last_ns: std::sync::atomic::AtomicU64,
    /// The rescan interval in nanoseconds; 0 while no rescan loop runs (measurements
    /// then rescan only on a GPU-set change).
    every_ns: std::sync::atomic::AtomicU64,
    /// How often the rescan loop has woken up (its own cost, for tests).
    loop_wakes: std::sync::atomic::AtomicU64,
}

impl ScanClock {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ns: std::sync::atomic::AtomicU64::new(0),
            every_ns: std::sync::atomic::AtomicU64::new(0),
            loop_wakes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records a scan now.
    fn mark(&self) {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Time since the last scan.
    fn since_last(&self) -> Duration {
        let last = Duration::from_nanos(self.last_ns.load(std::sync::atomic::Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    /// The rescan interval, once a rescan loop runs.
    fn every(&self) -> Option<Duration> {
        let ns = self.every_ns.load(std::sync::atomic::Ordering::Relaxed);
        (ns > 0).then(|| Duration::from_nanos(ns))
    }

    /// Whether a measurement should rescan too.
    fn due_with_sample(&self) -> bool {
        self.every().is_some_and(|every| self.since_last() >= every.mul_f64(RESCAN_WITH_SAMPLE_AFTER))
    }
}

/// The device sources and the last reading.
pub struct Monitor {
    /// Host CPU and RAM first, then the GPU source if any.
    sources: Vec<Box<dyn DeviceSource>>,
    /// Where GPU data comes from.
    gpu_source: DeviceSourceKind,
    /// Operator labels, part of the capabilities.
    labels: BTreeMap<String, String>,
    /// The last sample and when its measurement started.
    last: Option<(Instant, Sample)>,
    /// Turns the GPU sources' raw process lists into bounded, enriched ones.
    procs: ProcessAttributor,
    /// The latency of the NVML calls, when NVML is the GPU source.
    nvml_calls: Option<Arc<NvmlCalls>>,
}

impl Monitor {
    /// Opens the sources. Blocks (loads NVML): call from a blocking context.
    pub fn open(gpu: GpuChoice, labels: BTreeMap<String, String>) -> Result<Self, HiveError> {
        Self::open_with(gpu, labels, Vec::new())
    }

    /// Opens the sources, plus `extra` ones (e.g. the models directory).
    pub fn open_with(
        gpu: GpuChoice,
        labels: BTreeMap<String, String>,
        extra: Vec<Box<dyn DeviceSource>>,
    ) -> Result<Self, HiveError> {
        let mut sources: Vec<Box<dyn DeviceSource>> = vec![Box::new(SystemSource::new()?)];
        sources.extend(extra);
        let mut nvml_calls = None;
        match gpu {
            GpuChoice::Simulated(scenario) => {
                tracing::warn!("GPU source: SIMULATED from a scenario file; these are not real GPUs");
                sources.push(Box::new(SimulatedSource::new(scenario)));
            }
            GpuChoice::Nvml { lib } => match NvmlSource::new(lib.as_deref()) {
                Ok(nvml) => {
                    tracing::info!(lib = %lib.as_deref().map_or("libnvidia-ml.so".into(), |l| l.display().to_string()), "GPU source: NVML");
                    nvml_calls = Some(nvml.calls());
                    sources.push(Box::new(nvml));
                }
                Err(e) => match lib {
                    // Named by the operator: say which file failed, louder.
                    Some(lib) => tracing::warn!(
                        "no NVIDIA GPUs: NVML from {} is not available ({e}); running CPU only",
                        lib.display()
                    ),
                    None => tracing::info!("no NVIDIA GPUs: NVML is not available ({e}); running CPU only"),
                },
            },
        }
        let gpu_source = sources.iter().map(|s| s.kind()).find(|k| *k != DeviceSourceKind::None);
        Ok(Self {
            sources,
            gpu_source: gpu_source.unwrap_or(DeviceSourceKind::None),
            labels,
            last: None,
            procs: ProcessAttributor::new(rbee_shared::gpu_process::DEFAULT_MAX_GPU_PROCESSES),
            nvml_calls,
        })
    }

    /// Lists at most `max` processes per GPU in each sample (the rest are counted).
    pub fn limit_gpu_processes(&mut self, max: usize) {
        self.procs = ProcessAttributor::new(max);
    }

    /// A monitor over sources the caller built (the fleet simulator's simulated hosts).
    pub fn from_sources(sources: Vec<Box<dyn DeviceSource>>, labels: BTreeMap<String, String>) -> Self {
        let gpu_source = sources.iter().map(|s| s.kind()).find(|k| *k != DeviceSourceKind::None);
        Self {
            sources,
            gpu_source: gpu_source.unwrap_or(DeviceSourceKind::None),
            labels,
            last: None,
            procs: ProcessAttributor::new(rbee_shared::gpu_process::DEFAULT_MAX_GPU_PROCESSES),
            nvml_calls: None,
        }
    }

    /// Where GPU data comes from.
    pub fn gpu_source(&self) -> DeviceSourceKind {
        self.gpu_source
    }

    /// The latency of the NVML calls (`None` unless NVML is the GPU source).
    pub fn nvml_calls(&self) -> Option<Arc<NvmlCalls>> {
        self.nvml_calls.clone()
    }

    /// Reads the capabilities now.
    pub fn scan(&mut self) -> Result<Capabilities, HiveError> {
        let mut caps = Capabilities { labels: self.labels.clone(), ..Capabilities::default() };
        for source in &mut self.sources {
            source.scan(&mut caps)?;
        }
        caps.backends.sort();
        caps.backends.dedup();
        Ok(caps)
    }

    /// Measures the machine now (or returns a reading whose measurement started within
    /// the last 50 ms: a slow measurement is never reused by the caller that waited
    /// for it).
    pub fn sample(&mut self) -> Result<Sample, HiveError> {
        if let Some((at, sample)) = &self.last
            && at.elapsed() < SAMPLE_REUSE_WINDOW
        {
            return Ok(sample.clone());
        }
        let started = Instant::now();
        let mut sample = Sample { taken_at_unix_ms: rbee_shared::time::now_unix_ms(), ..Sample::default() };
        let mut processes = Vec::new();
        for source in &mut self.sources {
            source.sample(&mut sample)?;
            processes.extend(source.gpu_processes());
        }
        self.procs.attribute(&mut sample.gpus, processes);
        self.last = Some((started, sample.clone()));
        Ok(sample)
    }
}

/// A measurement in flight, shared by every stream that asks while it runs.
type SharedSample = Shared<BoxFuture<'static, Result<Arc<Sample>, MeasureError>>>;

/// Why a shared measurement failed; cloned to every stream that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
enum MeasureError {
    /// The sources failed.
    #[error(transparent)]
    Sources(Arc<HiveError>),
    /// The blocking task that read them failed (panicked or was cancelled).
    #[error("measurement task failed: {0}")]
    Task(Arc<tokio::task::JoinError>),
    /// The sampler thread panicked while reading.
    #[error("measurement panicked")]
    Panicked,
    /// The sampler thread is gone or has too many readings queued.
    #[error("the sampler thread is not taking requests")]
    Unavailable,
}

/// A reading asked of the sampler thread: when, and where the answer goes.
struct Request {
    /// Read no earlier than this.
    at: Instant,
    /// The answer; a closed one (the stream went away) is skipped.
    reply: tokio::sync::oneshot::Sender<Result<Arc<Sample>, MeasureError>>,
}

/// Readings the sampler thread may have queued (streams are bounded by
/// `--max-streams`; scrapes and rescans add a few).
const SAMPLER_QUEUE: usize = 1024;

/// The sampler thread: answers each request at its time, one reading for all that are
/// due together. Ends when the telemetry (the sender) is dropped.
fn sampler_thread(
    requests: std::sync::mpsc::Receiver<Request>,
    monitor: Arc<Mutex<Monitor>>,
    tx: Arc<watch::Sender<Arc<VersionedCapabilities>>>,
    scans: Arc<ScanClock>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    // Ordered by time (few: one per stream).
    let mut pending: Vec<Request> = Vec::new();
    let mut due: Vec<Request> = Vec::new();
    loop {
        pending.retain(|r| !r.reply.is_closed());
        let now = Instant::now();
        if pending.first().is_some_and(|r| r.at <= now) {
            let split = pending.partition_point(|r| r.at <= now);
            due.extend(pending.drain(..split));
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                consistent_sample(&mut monitor.lock_unpoisoned(), &tx, &scans)
            }));
            let answer = match read {
                Ok(Ok(sample)) => Ok(Arc::new(sample)),
                Ok(Err(e)) => Err(MeasureError::Sources(Arc::new(e))),
                Err(_) => Err(MeasureError::Panicked),
            };
            for request in due.drain(..) {
                let _ = request.reply.send(answer.clone());
            }
            continue;
        }
        let next = match pending.first() {
            Some(first) => requests.recv_timeout(first.at.saturating_duration_since(now)),
            None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(request) => {
                let at = pending.partition_point(|r| r.at <= request.at);
                pending.insert(at, request);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The monitor shared by all streams, and the capabilities it publishes.
pub struct Telemetry {
    /// The measurement in flight, if any (blocking-pool monitors): streams that tick
    /// while it runs wait for it instead of queueing a blocking thread each (one reader
    /// at a time, whatever the number of streams).
    in_flight: Mutex<Option<SharedSample>>,
    /// The dedicated sampler thread's queue (`None`: readings use the blocking pool).
    sampler: Option<std::sync::mpsc::SyncSender<Request>>,
    /// The sources; locked only on blocking threads. A panic inside a source leaves
    /// the monitor usable (every call re-reads devices), so the lock is taken even
    /// when poisoned.
    monitor: Arc<Mutex<Monitor>>,
    /// The current versioned capabilities (latest value wins). Published only while
    /// holding the monitor lock, so versions follow scans in order.
    caps: Arc<watch::Sender<Arc<VersionedCapabilities>>>,
    /// Where GPU data comes from.
    gpu_source: DeviceSourceKind,
    /// The latency of the NVML calls, when NVML is the GPU source.
    nvml_calls: Option<Arc<NvmlCalls>>,
    /// When capabilities were last scanned.
    scans: Arc<ScanClock>,
    /// True while the hive is held silent (the fleet simulator's fault): streams keep
    /// their connections but take no readings.
    silenced: watch::Sender<bool>,
}

/// Publishes `caps` as a new version if they differ from the current ones.
fn publish(tx: &watch::Sender<Arc<VersionedCapabilities>>, caps: Capabilities) -> bool {
    tx.send_if_modified(|current| {
        if current.caps == caps {
            return false;
        }
        let version = current.version + 1;
        tracing::info!(version, gpus = caps.gpus.len(), "capabilities changed");
        *current = Arc::new(VersionedCapabilities { version, caps });
        true
    })
}

/// Whether `sample` names exactly the GPUs of `caps`, each once (checked without
/// allocating: it runs on every sample).
fn names_exactly(sample: &Sample, caps: &Capabilities) -> bool {
    let gpus = &sample.gpus;
    gpus.len() == caps.gpus.len()
        && gpus
            .iter()
            .enumerate()
            .all(|(i, g)| caps.gpus.contains_key(&g.id) && gpus[..i].iter().all(|h| h.id != g.id))
}

/// Makes `sample` name exactly the GPUs of `caps` (a GPU the reading missed is
/// present with every metric unset) and stamps its version.
fn conform(sample: &mut Sample, caps: &VersionedCapabilities) {
    if names_exactly(sample, &caps.caps) {
        sample.gpus.sort_by_key(|g| g.index);
        sample.capability_version = Some(caps.version);
        return;
    }
    sample.gpus.retain(|g| caps.caps.gpus.contains_key(&g.id));
    let have: BTreeSet<String> = sample.gpus.iter().map(|g| g.id.clone()).collect();
    for gpu in caps.caps.gpus.values().filter(|g| !have.contains(&g.id)) {
        sample.gpus.push(GpuSample { id: gpu.id.clone(), index: gpu.index, ..GpuSample::default() });
    }
    sample.gpus.sort_by_key(|g| g.index);
    sample.capability_version = Some(caps.version);
}

/// Reads a sample consistent with the published capabilities (see the module docs),
/// and rescans them when a rescan is (nearly) due.
fn consistent_sample(
    monitor: &mut Monitor,
    tx: &watch::Sender<Arc<VersionedCapabilities>>,
    scans: &ScanClock,
) -> Result<Sample, HiveError> {
    let mut sample = monitor.sample()?;
    let current = tx.borrow().clone();
    if !names_exactly(&sample, &current.caps) {
        publish(tx, monitor.scan()?);
        scans.mark();
    } else if scans.due_with_sample() {
        // The periodic rescan, done here; a failure keeps the last capabilities (the
        // rescan loop retries and logs it), as the loop's own rescan would.
        if let Ok(caps) = monitor.scan() {
            publish(tx, caps);
            scans.mark();
        }
    }
    let current = tx.borrow().clone();
    conform(&mut sample, &current);
    Ok(sample)
}

impl Telemetry {
    /// Opens the sources and takes the first capability scan (version 1).
    pub async fn open(
        gpu: GpuChoice,
        labels: BTreeMap<String, String>,
        max_gpu_processes: usize,
    ) -> Result<Arc<Self>, HiveError> {
        Self::open_with(gpu, labels, max_gpu_processes, Vec::new()).await
    }

    /// Like [`Telemetry::open`], with `extra` sources (e.g. the models directory).
    pub async fn open_with(
        gpu: GpuChoice,
        labels: BTreeMap<String, String>,
        max_gpu_processes: usize,
        extra: Vec<Box<dyn DeviceSource>>,
    ) -> Result<Arc<Self>, HiveError> {
        let monitor = tokio::task::spawn_blocking(move || {
            let mut monitor = Monitor::open_with(gpu, labels, extra)?;
            monitor.limit_gpu_processes(max_gpu_processes);
            Ok::<_, HiveError>(monitor)
        })
        .await??;
        Self::start_on(monitor, true).await
    }

    /// Takes the first capability scan (version 1) of an opened monitor; readings use
    /// the blocking pool (the fleet simulator's many monitors, tests).
    pub async fn start(monitor: Monitor) -> Result<Arc<Self>, HiveError> {
        Self::start_on(monitor, false).await
    }

    /// Like [`Telemetry::start`], with a dedicated sampler thread when `own_thread`.
    pub async fn start_on(monitor: Monitor, own_thread: bool) -> Result<Arc<Self>, HiveError> {
        let (monitor, caps) = tokio::task::spawn_blocking(move || {
            let mut monitor = monitor;
            let caps = monitor.scan()?;
            // Start the first CPU measurement window now.
            monitor.sample()?;
            Ok::<_, HiveError>((monitor, caps))
        })
        .await??;
        let gpu_source = monitor.gpu_source();
        let nvml_calls = monitor.nvml_calls();
        let (tx, _) = watch::channel(Arc::new(VersionedCapabilities { version: 1, caps }));
        let scans = Arc::new(ScanClock::new());
        scans.mark();
        let (monitor, caps) = (Arc::new(Mutex::new(monitor)), Arc::new(tx));
        let sampler = match own_thread {
            false => None,
            true => {
                let (requests, queue) = std::sync::mpsc::sync_channel(SAMPLER_QUEUE);
                let (monitor, caps, scans) = (monitor.clone(), caps.clone(), scans.clone());
                std::thread::Builder::new()
                    .name("hive-sampler".into())
                    .spawn(move || sampler_thread(queue, monitor, caps, scans))
                    .map_err(|e| HiveError::Source { source_name: "monitor", reason: e.to_string() })?;
                Some(requests)
            }
        };
        Ok(Arc::new(Self {
            in_flight: Mutex::new(None),
            sampler,
            monitor,
            caps,
            gpu_source,
            nvml_calls,
            scans,
            silenced: watch::channel(false).0,
        }))
    }

    /// Holds every stream of this hive silent (`true`: connections stay open, no
    /// readings are taken) or lets them sample again.
    pub fn set_silenced(&self, silenced: bool) {
        self.silenced.send_replace(silenced);
    }

    /// Resolves at once unless the hive is held silent; then when it is let go.
    pub async fn unsilenced(&self) {
        let mut rx = self.silenced.subscribe();
        // The sender lives in `self`, so the wait ends only when the value turns false.
        let _ = rx.wait_for(|s| !*s).await;
    }

    /// Where GPU data comes from.
    pub fn gpu_source(&self) -> DeviceSourceKind {
        self.gpu_source
    }

    /// The latency of the NVML calls (`None` unless NVML is the GPU source).
    pub fn nvml_calls(&self) -> Option<Arc<NvmlCalls>> {
        self.nvml_calls.clone()
    }

    /// The current capabilities.
    pub fn capabilities(&self) -> Arc<VersionedCapabilities> {
        self.caps.borrow().clone()
    }

    /// A receiver that sees every new capability version (latest wins).
    pub fn watch_capabilities(&self) -> watch::Receiver<Arc<VersionedCapabilities>> {
        self.caps.subscribe()
    }

    /// Measures the machine. The sample names exactly the GPUs of the capability
    /// version it is stamped with, and that version is already published.
    pub async fn sample(&self) -> Result<Sample, HiveError> {
        match &self.sampler {
            Some(_) => self.sample_at(tokio::time::Instant::now()).await,
            None => self.sample_on_pool().await,
        }
    }

    /// Measures the machine at `at` (at once when it has passed), like
    /// [`Telemetry::sample`]. With a sampler thread, that thread keeps the time: the
    /// runtime is woken once, with the reading.
    pub async fn sample_at(&self, at: tokio::time::Instant) -> Result<Sample, HiveError> {
        let Some(sampler) = &self.sampler else {
            tokio::time::sleep_until(at).await;
            return self.sample_on_pool().await;
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let asked =
            sampler.try_send(Request { at: at.into_std(), reply }).map_err(|_| MeasureError::Unavailable);
        let answer = match asked {
            Ok(()) => answer.await.unwrap_or(Err(MeasureError::Unavailable)),
            Err(e) => Err(e),
        };
        answer
            .map(|s| s.as_ref().clone())
            .map_err(|e| HiveError::Source { source_name: "monitor", reason: e.to_string() })
    }

    /// A reading on a blocking-pool thread, shared by every caller that asks while it runs.
    async fn sample_on_pool(&self) -> Result<Sample, HiveError> {
        let flight = {
            let mut slot = self.in_flight.lock_unpoisoned();
            match slot.as_ref() {
                Some(running) if running.peek().is_none() => running.clone(),
                _ => {
                    let (monitor, tx, scans) = (self.monitor.clone(), self.caps.clone(), self.scans.clone());
                    let measure = async move {
                        let read = tokio::task::spawn_blocking(move || {
                            consistent_sample(&mut monitor.lock_unpoisoned(), &tx, &scans)
                        });
                        match read.await {
                            Ok(Ok(sample)) => Ok(Arc::new(sample)),
                            Ok(Err(e)) => Err(MeasureError::Sources(Arc::new(e))),
                            Err(e) => Err(MeasureError::Task(Arc::new(e))),
                        }
                    };
                    let running = measure.boxed().shared();
                    *slot = Some(running.clone());
                    running
                }
            }
        };
        flight
            .await
            .map(|s| s.as_ref().clone())
            .map_err(|e| HiveError::Source { source_name: "monitor", reason: e.to_string() })
    }

    /// Rescans capabilities; publishes a new version if anything changed. Returns
    /// whether it did.
    pub async fn rescan(&self) -> Result<bool, HiveError> {
        self.rescan_unless_within(Duration::ZERO).await
    }

    /// Rescans unless a scan ran within `recent` (checked under the monitor lock, so a
    /// scan that a measurement did meanwhile is not repeated).
    async fn rescan_unless_within(&self, recent: Duration) -> Result<bool, HiveError> {
        let (monitor, tx, scans) = (self.monitor.clone(), self.caps.clone(), self.scans.clone());
        tokio::task::spawn_blocking(move || {
            let mut monitor = monitor.lock_unpoisoned();
            if !recent.is_zero() && scans.since_last() < recent {
                return Ok(false);
            }
            let caps = monitor.scan()?;
            scans.mark();
            Ok(publish(&tx, caps))
        })
        .await?
    }

    /// Keeps the capabilities rescanned every `every` until cancelled. While streams
    /// sample, their measurements rescan (once 90% of `every` has passed since the last
    /// scan) and this loop only sleeps, waking every few intervals to see whether they
    /// still do; without them it scans 10% after the interval.
    pub async fn rescan_loop(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        let every = every.max(Duration::from_millis(1));
        self.scans
            .every_ns
            .store(u64::try_from(every.as_nanos()).unwrap_or(u64::MAX), std::sync::atomic::Ordering::Relaxed);
        let after = every.mul_f64(RESCAN_LOOP_AFTER);
        // Zero while the loop does the scans; more while measurements do them.
        let mut slack = Duration::ZERO;
        loop {
            let wait = (after + slack).saturating_sub(self.scans.since_last());
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            self.scans.loop_wakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.scans.since_last() < after {
                // A measurement scanned meanwhile: check back less often.
                slack = every.mul_f64(RESCAN_LOOP_SLACK_WHILE_SAMPLED);
                continue;
            }
            slack = Duration::ZERO;
            if let Err(e) = self.rescan_unless_within(after).await {
                tracing::warn!(error = %e, "capability rescan failed; keeping the last capabilities");
                // Try again after a full interval, not at once.
                self.scans.mark();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rbee_shared::{GpuDevice, MigMode};

    use super::*;

    fn gpu(id: &str, index: u32) -> GpuDevice {
        GpuDevice {
            id: id.into(),
            index,
            name: "Sim".into(),
            pci_bus_id: String::new(),
            compute_capability: None,
            vram_total_bytes: 1 << 30,
            driver_version: None,
            cuda_version: None,
            power_limit_mw: None,
            mig_mode: MigMode::NotReported,
            topology: Default::default(),
        }
    }

    /// A host-only source that counts its scans.
    struct Counting(Arc<std::sync::atomic::AtomicU64>);

    impl DeviceSource for Counting {
        fn kind(&self) -> DeviceSourceKind {
            DeviceSourceKind::None
        }
        fn scan(&mut self, _caps: &mut Capabilities) -> Result<(), HiveError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        fn sample(&mut self, _sample: &mut Sample) -> Result<(), HiveError> {
            Ok(())
        }
    }

    /// While a stream samples at the rescan interval, the measurements do the rescans and
    /// the rescan loop's own timer wakes rarely (each wake-up is CPU the hive spends for
    /// nothing); when sampling stops, the loop rescans on its own again.
    #[tokio::test]
    async fn the_rescan_loop_stays_asleep_while_measurements_rescan() {
        const EVERY: Duration = Duration::from_millis(100);
        let scans = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let monitor = Monitor::from_sources(vec![Box::new(Counting(scans.clone()))], BTreeMap::new());
        let telemetry = Telemetry::start(monitor).await.unwrap();
        let cancel = CancellationToken::new();
        let _stop = cancel.clone().drop_guard();
        tokio::spawn(telemetry.clone().rescan_loop(EVERY, cancel.clone()));
        let wakes = || telemetry.scans.loop_wakes.load(std::sync::atomic::Ordering::Relaxed);
        let count = || scans.load(std::sync::atomic::Ordering::Relaxed);
        let mut ticker = tokio::time::interval(EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for _ in 0..5 {
            ticker.tick().await;
            telemetry.sample().await.unwrap();
        }
        let (wakes_before, scans_before) = (wakes(), count());
        // 40 intervals of sampling: the samples rescan (about once per interval).
        for _ in 0..40 {
            ticker.tick().await;
            telemetry.sample().await.unwrap();
        }
        let (sampled_wakes, sampled_scans) = (wakes() - wakes_before, count() - scans_before);
        assert!(sampled_scans >= 20, "capabilities rescanned only {sampled_scans} times in 40 intervals");
        // Before, the loop woke once per interval (40 times) to find the scan done; now
        // about every 4 intervals (10), more when a late sample lets the loop scan itself.
        assert!(sampled_wakes <= 20, "the rescan loop woke {sampled_wakes} times in 40 sampled intervals");
        // Sampling stops: the loop rescans on its own again, every interval.
        let stopped = count();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while count() < stopped + 5 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the loop stopped rescanning once sampling stopped"
            );
            tokio::time::sleep(EVERY).await;
        }
    }

    /// How often this thread has blocked (`voluntary_ctxt_switches`): each time the
    /// runtime parks and is woken.
    fn wake_ups() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }

    /// The runtime thread's wake-ups per reading asked for at a time 50 ms ahead.
    async fn wake_ups_per_timed_reading(own_thread: bool) -> f64 {
        let scans = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let monitor = Monitor::from_sources(vec![Box::new(Counting(scans))], BTreeMap::new());
        let telemetry = Telemetry::start_on(monitor, own_thread).await.unwrap();
        const READINGS: u32 = 10;
        let before = wake_ups();
        for _ in 0..READINGS {
            let at = tokio::time::Instant::now() + Duration::from_millis(50);
            let sample = telemetry.sample_at(at).await.unwrap();
            assert!(tokio::time::Instant::now() >= at, "read before its time");
            assert_eq!(sample.capability_version, Some(1));
        }
        (wake_ups() - before) as f64 / f64::from(READINGS)
    }

    /// A stream's tick costs the runtime one wake-up, with the reading: the sampler thread
    /// keeps the time and reads. (A runtime timer plus a blocking-pool hand-off, the
    /// fleet simulator's path, wakes it at least twice: the timer, then the reading.)
    #[tokio::test]
    async fn a_reading_at_a_tick_wakes_the_runtime_once() {
        let own = wake_ups_per_timed_reading(true).await;
        assert!(own <= 1.2, "{own} runtime wake-ups per reading with a sampler thread");
        let pool = wake_ups_per_timed_reading(false).await;
        eprintln!("runtime wake-ups per reading: sampler thread {own}, blocking pool {pool}");
        assert!(pool >= 2.0, "{pool} runtime wake-ups per reading on the blocking pool");
    }

    /// A source whose next reading panics when told to.
    struct Panicking(Arc<std::sync::atomic::AtomicBool>);

    impl DeviceSource for Panicking {
        fn kind(&self) -> DeviceSourceKind {
            DeviceSourceKind::None
        }
        fn scan(&mut self, _caps: &mut Capabilities) -> Result<(), HiveError> {
            Ok(())
        }
        fn sample(&mut self, _sample: &mut Sample) -> Result<(), HiveError> {
            assert!(!self.0.swap(false, std::sync::atomic::Ordering::Relaxed), "a source panicked");
            Ok(())
        }
    }

    /// A panic inside a source fails that reading only: the sampler thread lives on and
    /// the next reading is taken.
    #[tokio::test]
    async fn a_panicking_source_fails_one_reading_and_the_sampler_thread_survives() {
        let panic_next = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let monitor = Monitor::from_sources(vec![Box::new(Panicking(panic_next.clone()))], BTreeMap::new());
        let telemetry = Telemetry::start_on(monitor, true).await.unwrap();
        telemetry.sample().await.unwrap();
        panic_next.store(true, std::sync::atomic::Ordering::Relaxed);
        // Past the reuse window, so the next call reads the source.
        let at = tokio::time::Instant::now() + SAMPLE_REUSE_WINDOW * 2;
        let failed = telemetry.sample_at(at).await.unwrap_err();
        assert!(failed.to_string().contains("panicked"), "{failed}");
        let at = tokio::time::Instant::now() + SAMPLE_REUSE_WINDOW * 2;
        let sample = telemetry.sample_at(at).await.unwrap();
        assert_eq!(sample.capability_version, Some(1));
    }

    #[test]
    fn a_sample_is_made_to_name_exactly_the_published_gpus() {
        let mut caps = Capabilities::default();
        for (id, index) in [("a", 0), ("b", 1)] {
            caps.gpus.insert(id.into(), gpu(id, index));
        }
        let published = VersionedCapabilities { version: 7, caps };
        let reading =
            |id: &str| GpuSample { id: id.into(), temperature_c: Some(40.0), ..GpuSample::default() };
        // "c" is not published yet; "b" was not read.
        let mut sample = Sample { gpus: vec![reading("c"), reading("a")], ..Sample::default() };
        conform(&mut sample, &published);
        let ids: Vec<&str> = sample.gpus.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(sample.gpus[0].temperature_c, Some(40.0));
        assert_eq!(sample.gpus[1].temperature_c, None, "a GPU that was not read has no metrics");
        assert_eq!(sample.capability_version, Some(7));

        // Already the published set (the common case): ordered by index and stamped.
        let mut sample = Sample {
            gpus: vec![GpuSample { index: 1, ..reading("b") }, GpuSample { index: 0, ..reading("a") }],
            ..Sample::default()
        };
        assert!(names_exactly(&sample, &published.caps));
        conform(&mut sample, &published);
        let ids: Vec<&str> = sample.gpus.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(sample.gpus.iter().all(|g| g.temperature_c == Some(40.0)));
        assert_eq!(sample.capability_version, Some(7));
        // A GPU named twice is not "exactly the published set".
        let twice = Sample { gpus: vec![reading("a"), reading("a")], ..Sample::default() };
        assert!(!names_exactly(&twice, &published.caps));
    }
}
