//! The monitor: the hive's device sources behind one lock, and the published,
//! versioned capabilities that streams watch.
//!
//! Source calls block (NVML), so they run on blocking threads; the lock is a plain
//! mutex held only inside those threads, never across an `.await`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbee_shared::{Capabilities, DeviceSourceKind, Sample, VersionedCapabilities};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::HiveError;
use crate::source::DeviceSource;
use crate::source::nvml::NvmlSource;
use crate::source::simulated::{Scenario, SimulatedSource};
use crate::source::system::SystemSource;

/// Which GPU source to use.
#[derive(Debug, Clone)]
pub enum GpuChoice {
    /// NVML when the driver is present; otherwise CPU only, with one log line.
    Nvml,
    /// Simulated GPUs from a scenario (tests and demos).
    Simulated(Scenario),
}

/// Two samples closer together than this share one reading, so that several streams
/// polling at once do not measure CPU over a meaninglessly short window.
const SAMPLE_REUSE_WINDOW: Duration = Duration::from_millis(50);

/// The device sources and the last reading.
pub struct Monitor {
    /// Host CPU and RAM first, then the GPU source if any.
    sources: Vec<Box<dyn DeviceSource>>,
    /// Where GPU data comes from.
    gpu_source: DeviceSourceKind,
    /// Operator labels, part of the capabilities.
    labels: BTreeMap<String, String>,
    /// The last sample and when it was taken.
    last: Option<(Instant, Sample)>,
}

impl Monitor {
    /// Opens the sources. Blocks (loads NVML): call from a blocking context.
    pub fn open(gpu: GpuChoice, labels: BTreeMap<String, String>) -> Result<Self, HiveError> {
        let mut sources: Vec<Box<dyn DeviceSource>> = vec![Box::new(SystemSource::new()?)];
        match gpu {
            GpuChoice::Simulated(scenario) => {
                tracing::warn!("GPU source: SIMULATED from a scenario file; these are not real GPUs");
                sources.push(Box::new(SimulatedSource::new(scenario)));
            }
            GpuChoice::Nvml => match NvmlSource::new() {
                Ok(nvml) => {
                    tracing::info!("GPU source: NVML");
                    sources.push(Box::new(nvml));
                }
                Err(e) => tracing::info!("no NVIDIA GPUs: NVML is not available ({e}); running CPU only"),
            },
        }
        let gpu_source = sources.iter().map(|s| s.kind()).find(|k| *k != DeviceSourceKind::None);
        Ok(Self { sources, gpu_source: gpu_source.unwrap_or(DeviceSourceKind::None), labels, last: None })
    }

    /// Where GPU data comes from.
    pub fn gpu_source(&self) -> DeviceSourceKind {
        self.gpu_source
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

    /// Measures the machine now (or returns a reading taken within the last 50 ms).
    pub fn sample(&mut self) -> Result<Sample, HiveError> {
        if let Some((at, sample)) = &self.last
            && at.elapsed() < SAMPLE_REUSE_WINDOW
        {
            return Ok(sample.clone());
        }
        let mut sample = Sample { taken_at_unix_ms: rbee_shared::time::now_unix_ms(), ..Sample::default() };
        for source in &mut self.sources {
            source.sample(&mut sample)?;
        }
        self.last = Some((Instant::now(), sample.clone()));
        Ok(sample)
    }
}

/// The monitor shared by all streams, and the capabilities it publishes.
pub struct Telemetry {
    /// The sources; locked only on blocking threads.
    monitor: Arc<Mutex<Monitor>>,
    /// The current versioned capabilities (latest value wins).
    caps: watch::Sender<Arc<VersionedCapabilities>>,
    /// Where GPU data comes from.
    gpu_source: DeviceSourceKind,
}

fn lock(m: &Mutex<Monitor>) -> std::sync::MutexGuard<'_, Monitor> {
    // A panic inside a source leaves the monitor usable: every call re-reads devices.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Telemetry {
    /// Opens the sources and takes the first capability scan (version 1).
    pub async fn open(gpu: GpuChoice, labels: BTreeMap<String, String>) -> Result<Arc<Self>, HiveError> {
        let (monitor, caps) = tokio::task::spawn_blocking(move || {
            let mut monitor = Monitor::open(gpu, labels)?;
            let caps = monitor.scan()?;
            // Start the first CPU measurement window now.
            monitor.sample()?;
            Ok::<_, HiveError>((monitor, caps))
        })
        .await??;
        let gpu_source = monitor.gpu_source();
        let (tx, _) = watch::channel(Arc::new(VersionedCapabilities { version: 1, caps }));
        Ok(Arc::new(Self { monitor: Arc::new(Mutex::new(monitor)), caps: tx, gpu_source }))
    }

    /// Where GPU data comes from.
    pub fn gpu_source(&self) -> DeviceSourceKind {
        self.gpu_source
    }

    /// The current capabilities.
    pub fn capabilities(&self) -> Arc<VersionedCapabilities> {
        self.caps.borrow().clone()
    }

    /// A receiver that sees every new capability version (latest wins).
    pub fn watch_capabilities(&self) -> watch::Receiver<Arc<VersionedCapabilities>> {
        self.caps.subscribe()
    }

    /// Measures the machine.
    pub async fn sample(&self) -> Result<Sample, HiveError> {
        let monitor = self.monitor.clone();
        tokio::task::spawn_blocking(move || lock(&monitor).sample()).await?
    }

    /// Rescans capabilities; publishes a new version if anything changed. Returns
    /// whether it did.
    pub async fn rescan(&self) -> Result<bool, HiveError> {
        let monitor = self.monitor.clone();
        let caps = tokio::task::spawn_blocking(move || lock(&monitor).scan()).await??;
        Ok(self.caps.send_if_modified(|current| {
            if current.caps == caps {
                return false;
            }
            let version = current.version + 1;
            tracing::info!(version, gpus = caps.gpus.len(), "capabilities changed");
            *current = Arc::new(VersionedCapabilities { version, caps });
            true
        }))
    }

    /// Rescans every `every` until cancelled.
    pub async fn rescan_loop(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticker.tick() => {
                    if let Err(e) = self.rescan().await {
                        tracing::warn!(error = %e, "capability rescan failed; keeping the last capabilities");
                    }
                }
            }
        }
    }
}
