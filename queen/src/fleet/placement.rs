//! What placement reads of a hive, in one compact block: computed once when the hive's
//! view is published (once per sample), so a `Place` call over 10,000 hives walks
//! contiguous rows of numbers instead of comparing GPU id strings across the
//! capabilities, the sample, the health report and the window statistics.
//!
//! A summary holds the shared parts it was computed from, so a reader can tell a
//! current summary from one left behind by a change that did not refresh it
//! ([`PlacementSummary::is_of`]) and compute a fresh one instead.

use std::sync::Arc;

use rbee_shared::{GpuSample, Sample, VersionedCapabilities};

use super::{Health, HealthReport, WindowStats};

/// The VRAM jobs can use on a GPU: its total less what the driver reserves for itself
/// (NVML v2 reports that apart from used and free). Everything the scheduler admits
/// against (free memory, reservations, `vram_total` in policies) starts from this.
pub fn usable_vram(total: u64, live: &GpuSample) -> u64 {
    total.saturating_sub(live.vram_reserved_bytes.unwrap_or(0))
}

/// The item of `items` with this id: usually at the same position (hives report GPUs
/// in one order), else found by a scan.
fn aligned<'a, T>(items: &'a [T], i: usize, id: &str, id_of: impl Fn(&T) -> &str) -> Option<&'a T> {
    match items.get(i) {
        Some(x) if id_of(x) == id => Some(x),
        _ => items.iter().find(|x| id_of(x) == id),
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

impl PlacementSummary {
    /// Computes the summary of a hive's view from its parts (a `HiveSnapshot`'s
    /// capabilities, newest sample, health report and window statistics).
    pub fn of(
        caps: Option<Arc<VersionedCapabilities>>,
        latest: Option<Arc<Sample>>,
        health: Arc<HealthReport>,
        stats: Arc<WindowStats>,
    ) -> Self {
        let h = Sources { caps, latest, health, stats };
        let sample = h.latest.as_deref();
        let caps = h.caps.as_deref().map(|c| &c.caps);
        let gpus = caps.map_or_else(Vec::new, |caps| {
            caps.gpus
                .values()
                .enumerate()
                .map(|(i, gpu)| {
                    let live = sample.and_then(|s| aligned(&s.gpus, i, &gpu.id, |g| &g.id));
                    let health = aligned(&h.health.devices, i, &gpu.id, |d| &d.device_id)
                        .map_or(Health::Healthy, |d| d.health);
                    let Some((live, used)) = live.and_then(|g| g.vram_used_bytes.map(|u| (g, u))) else {
                        return GpuLoad { usable: 0, used: 0, util: 0.0, reading: false, health };
                    };
                    let util = aligned(&h.stats.gpus, i, &gpu.id, |g| &g.device_id)
                        .and_then(|g| g.util_mean_percent)
                        .or(live.gpu_util_percent)
                        .unwrap_or(0.0);
                    let usable = usable_vram(gpu.vram_total_bytes, live);
                    GpuLoad { usable, used, util, reading: true, health }
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
            sources: h,
        }
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
