//! What placement reads of a hive, in one compact block: computed once when the hive's
//! view is published (once per sample), so a `Place` call over 10,000 hives walks
//! contiguous rows of numbers instead of comparing GPU id strings across the
//! capabilities, the sample, the health report and the window statistics.
//!
//! It is the one join of a GPU's parts: each row carries where the GPU is in the
//! sample, the health report and the statistics ([`GpuParts`]), so the scheduler's
//! device handles and the Rhai API read the same join instead of matching ids again.
//! (The CLI matches the wire copies with the same rule, [`join_by_id`].)
//!
//! A summary holds the shared parts it was computed from, so a reader can tell a
//! current summary from one left behind by a change that did not refresh it
//! ([`PlacementSummary::is_of`]) and compute a fresh one instead.

use std::sync::Arc;

use rbee_shared::{GpuDevice, GpuSample, Sample, VersionedCapabilities};

use super::{DeviceHealth, GpuStats, Health, HealthReport, WindowStats};

/// The VRAM jobs can use on a GPU: its total less what the driver reserves for itself
/// (NVML v2 reports that apart from used and free). Everything the scheduler admits
/// against (free memory, reservations, `vram_total` in policies) starts from this.
pub fn usable_vram(total: u64, live: &GpuSample) -> u64 {
    total.saturating_sub(live.vram_reserved_bytes.unwrap_or(0))
}

/// The position of the item of `items` with this GPU id: usually `i` (hives report
/// GPUs in one order), else found by a scan. The one rule that matches a GPU across the
/// capabilities, the sample, the health report and the statistics (the CLI matches the
/// wire copies of them with it too).
pub fn join_by_id<T>(items: &[T], i: usize, id: &str, id_of: impl Fn(&T) -> &str) -> Option<usize> {
    match items.get(i) {
        Some(x) if id_of(x) == id => Some(i),
        _ => items.iter().position(|x| id_of(x) == id),
    }
}

/// The parts of a hive's view a [`GpuParts`] is resolved against, borrowed (from a
/// `HiveSnapshot`, or from the parts a summary was computed from).
#[derive(Debug, Clone, Copy)]
pub struct ViewParts<'a> {
    /// The newest sample.
    pub latest: Option<&'a Sample>,
    /// The health report.
    pub health: &'a HealthReport,
    /// The window statistics.
    pub stats: &'a WindowStats,
}

/// Where one GPU's parts are in a hive's view: its positions in the newest sample's GPUs,
/// the health report's devices and the window statistics' GPUs (`None`: not there).
/// Computed once per publish, in [`PlacementSummary::of`]; readers resolve it against
/// the snapshot the summary was made of instead of matching ids again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuParts {
    /// In `latest.gpus`.
    live: Option<u32>,
    /// In `health.devices`.
    health: Option<u32>,
    /// In `stats.gpus`.
    stats: Option<u32>,
}

impl GpuParts {
    /// Joins GPU `gpu` (at position `i` of the capabilities' GPU map) with `h`'s parts.
    fn of(h: ViewParts<'_>, i: usize, gpu: &GpuDevice) -> Self {
        let at = |j: Option<usize>| j.and_then(|j| u32::try_from(j).ok());
        Self {
            live: at(h.latest.and_then(|s| join_by_id(&s.gpus, i, &gpu.id, |g| &g.id))),
            health: at(join_by_id(&h.health.devices, i, &gpu.id, |d| &d.device_id)),
            stats: at(join_by_id(&h.stats.gpus, i, &gpu.id, |g| &g.device_id)),
        }
    }

    /// The GPU's newest reading in `h` (the snapshot these parts were computed from).
    pub fn live<'a>(&self, h: ViewParts<'a>) -> Option<&'a GpuSample> {
        h.latest?.gpus.get(self.live? as usize)
    }

    /// The GPU's entry in `h`'s health report.
    pub fn device_health<'a>(&self, h: ViewParts<'a>) -> Option<&'a DeviceHealth> {
        h.health.devices.get(self.health? as usize)
    }

    /// The GPU's own health in `h` (healthy when the report does not list it).
    pub fn health(&self, h: ViewParts<'_>) -> Health {
        self.device_health(h).map_or(Health::Healthy, |d| d.health)
    }

    /// The GPU's window statistics in `h`.
    pub fn stats<'a>(&self, h: ViewParts<'a>) -> Option<&'a GpuStats> {
        h.stats.gpus.get(self.stats? as usize)
    }

    /// Utilisation: the window mean, else the newest reading.
    pub fn util(&self, h: ViewParts<'_>) -> Option<f32> {
        self.stats(h).and_then(|g| g.util_mean_percent).or_else(|| self.live(h)?.gpu_util_percent)
    }
}

/// One GPU as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuLoad {
    /// VRAM jobs can use ([`usable_vram`]); 0 without a reading.
    pub usable: u64,
    /// VRAM in use; 0 without a reading.
    pub used: u64,
    /// Utilisation for ranking: the window mean, else the latest reading, else 0.
    pub util: f32,
    /// Whether the newest sample has this GPU's VRAM in use.
    pub reading: bool,
    /// The device's own health (healthy when the report does not list it).
    pub health: Health,
    /// Where its parts are in the hive's view (the join, for handles made from this row).
    pub parts: GpuParts,
}

impl GpuLoad {
    /// Usable and used VRAM, when the newest sample has a reading.
    pub fn vram(&self) -> Option<(u64, u64)> {
        self.reading.then_some((self.usable, self.used))
    }
}

/// RAM figures of the newest sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamLoad {
    /// Total RAM.
    pub total: u64,
    /// RAM in use.
    pub used: u64,
    /// RAM available.
    pub available: u64,
}

/// The shared parts of a snapshot a summary was computed from (held, so that a pointer
/// compare with the snapshot's own cannot be fooled by a freed and reused address).
#[derive(Debug, Clone, Default)]
struct Sources {
    /// The capabilities.
    caps: Option<Arc<VersionedCapabilities>>,
    /// The newest sample.
    latest: Option<Arc<Sample>>,
    /// The health report.
    health: Arc<HealthReport>,
    /// The window statistics.
    stats: Arc<WindowStats>,
}

/// What placement reads of one hive, computed from its capabilities, newest sample,
/// health and window statistics.
#[derive(Debug, Clone, Default)]
pub struct PlacementSummary {
    /// What it was computed from.
    sources: Sources,
    /// The hive's health level.
    pub health: Health,
    /// The hive's CPU utilisation for ranking: the window mean, else the latest
    /// reading, else 0.
    pub cpu_util: f32,
    /// RAM, from the newest sample; `None` without a sample.
    pub ram: Option<RamLoad>,
    /// Whether the hive's catalog lists any model (else every model is absent there).
    pub has_models: bool,
    /// One row per GPU, in the order of the capabilities' GPU map.
    pub gpus: Vec<GpuLoad>,
}

impl Sources {
    fn view(&self) -> ViewParts<'_> {
        ViewParts { latest: self.latest.as_deref(), health: &self.health, stats: &self.stats }
    }
}

impl PlacementSummary {
    /// Computes the summary of a hive's view from its parts (a `HiveSnapshot`'s
    /// capabilities, newest sample, health report and window statistics).
    pub fn of(
        caps: Option<Arc<VersionedCapabilities>>,
        latest: Option<Arc<Sample>>,
        health: Arc<HealthReport>,
        stats: Arc<WindowStats>,
    ) -> Self {
        let sources = Sources { caps, latest, health, stats };
        let h = sources.view();
        let sample = h.latest;
        let caps = sources.caps.as_deref().map(|c| &c.caps);
        let gpus = caps.map_or_else(Vec::new, |caps| {
            caps.gpus
                .values()
                .enumerate()
                .map(|(i, gpu)| {
                    let parts = GpuParts::of(h, i, gpu);
                    let health = parts.health(h);
                    let live = parts.live(h);
                    let Some((live, used)) = live.and_then(|g| g.vram_used_bytes.map(|u| (g, u))) else {
                        return GpuLoad { usable: 0, used: 0, util: 0.0, reading: false, health, parts };
                    };
                    let util = parts.util(h).unwrap_or(0.0);
                    let usable = usable_vram(gpu.vram_total_bytes, live);
                    GpuLoad { usable, used, util, reading: true, health, parts }
                })
                .collect()
        });
        Self {
            health: h.health.placement,
            cpu_util: h.stats.cpu_mean_percent.or(sample.and_then(|s| s.cpu_percent)).unwrap_or(0.0),
            ram: sample.map(|s| RamLoad {
                total: s.ram_total_bytes,
                used: s.ram_used_bytes,
                available: s.ram_available_bytes,
            }),
            has_models: caps.is_some_and(|c| !c.models.is_empty()),
            gpus,
            sources,
        }
    }

    /// The row of the GPU with this id, and its position in the capabilities' GPU map
    /// (of the capabilities the summary was computed from).
    pub fn gpu(&self, id: &str) -> Option<(usize, &GpuLoad)> {
        let i = self.sources.caps.as_ref()?.caps.gpus.keys().position(|k| k == id)?;
        Some((i, self.gpus.get(i)?))
    }

    /// True when this is the summary of a hive's view as it is now (computed from the
    /// very capabilities, sample, health and statistics it holds).
    pub fn is_of(
        &self,
        caps: &Option<Arc<VersionedCapabilities>>,
        latest: &Option<Arc<Sample>>,
        health: &Arc<HealthReport>,
        stats: &Arc<WindowStats>,
    ) -> bool {
        fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        let s = &self.sources;
        same(&s.caps, caps)
            && same(&s.latest, latest)
            && Arc::ptr_eq(&s.health, health)
            && Arc::ptr_eq(&s.stats, stats)
    }
}
