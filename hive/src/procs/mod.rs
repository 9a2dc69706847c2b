//! Who holds each GPU's memory: turns the driver's raw process list (pid, used VRAM)
//! into bounded, enriched [`GpuProcesses`] on every sample.
//!
//! For each listed process the hive reads `/proc/PID/{comm,stat,status,cgroup,environ}`
//! ([`proc_stat`]) and, on a cgroup v2 host, its group's totals ([`cgroup`]). CPU% is
//! the CPU time used between two samples, so the previous reading of each pid is kept;
//! the map holds only the pids of the last sample. A list the driver refuses (no
//! permission) or cannot give (not supported) stays absent, never empty.

pub mod cgroup;
pub mod proc_stat;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use rbee_shared::{GpuProcess, GpuProcesses, GpuSample};

use crate::source::{RawGpuProcess, RawProcesses};

/// The previous CPU reading of a pid.
#[derive(Debug, Clone, Copy)]
struct CpuMark {
    /// User + system ticks.
    ticks: u64,
    /// When they were read.
    at: Instant,
}

/// Enriches and bounds the process lists of every sample. One per monitor.
#[derive(Debug)]
pub struct ProcessAttributor {
    /// How many processes per GPU are listed (the rest are counted).
    max_listed: usize,
    /// Where `/proc` is.
    proc_root: PathBuf,
    /// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`).
    cgroup_root: PathBuf,
    /// The previous CPU reading of each pid listed in the last sample.
    cpu: HashMap<u32, CpuMark>,
    /// Whether "the list is absent" has been logged, so it is logged once.
    logged_absent: bool,
}

impl ProcessAttributor {
    /// Lists at most `max_listed` processes per GPU, reading the real `/proc` and
    /// `/sys/fs/cgroup`.
    pub fn new(max_listed: usize) -> Self {
        Self::with_roots(max_listed, "/proc".into(), "/sys/fs/cgroup".into())
    }

    /// The same, reading a `/proc` and a cgroup tree somewhere else (fixture trees).
    pub fn with_roots(max_listed: usize, proc_root: PathBuf, cgroup_root: PathBuf) -> Self {
        Self { max_listed, proc_root, cgroup_root, cpu: HashMap::new(), logged_absent: false }
    }

    /// How many pids' CPU readings are kept: those listed in the last sample.
    pub fn tracked_pids(&self) -> usize {
        self.cpu.len()
    }

    /// Fills in `processes` and `unattributed_vram_bytes` of the GPUs that `raw`
    /// names (by GPU id). GPUs it does not name keep an absent list.
    pub fn attribute(&mut self, gpus: &mut [GpuSample], raw: Vec<(String, RawProcesses)>) {
        let now = Instant::now();
        // The cgroup hierarchy is looked at only when some process is to be described.
        let listed_any = raw.iter().any(|(_, l)| matches!(l, RawProcesses::Listed(p) if !p.is_empty()));
        let unified = listed_any && cgroup::is_unified(&self.cgroup_root);
        let mut seen: HashMap<u32, GpuProcess> = HashMap::new();
        let mut next_cpu = HashMap::new();
        for (id, list) in raw {
            let Some(gpu) = gpus.iter_mut().find(|g| g.id == id) else { continue };
            let mut listed = match list {
                RawProcesses::Listed(l) => l,
                RawProcesses::NoPermission | RawProcesses::NotSupported => {
                    if !self.logged_absent {
                        tracing::info!(gpu = %id, reason = ?list, "the driver does not list this GPU's processes; the list stays absent");
                        self.logged_absent = true;
                    }
                    continue;
                }
            };
            listed.sort_by(|a, b| {
                b.used_bytes.unwrap_or(0).cmp(&a.used_bytes.unwrap_or(0)).then(a.pid.cmp(&b.pid))
            });
            // A pid listed twice counts once, with its largest reading.
            let mut pids = std::collections::HashSet::with_capacity(listed.len());
            listed.retain(|p| pids.insert(p.pid));
            let rest = listed.split_off(listed.len().min(self.max_listed));
            let processes = GpuProcesses {
                listed: listed
                    .iter()
                    .map(|raw| {
                        let mut p = seen
                            .entry(raw.pid)
                            .or_insert_with(|| self.describe(raw.pid, unified, now, &mut next_cpu))
                            .clone();
                        p.used_vram_bytes = raw.used_bytes;
                        p
                    })
                    .collect(),
                unlisted: u32::try_from(rest.len()).unwrap_or(u32::MAX),
                unlisted_vram_bytes: rest.iter().filter_map(|p| p.used_bytes).fold(0, u64::saturating_add),
            };
            gpu.unattributed_vram_bytes =
                gpu.vram_used_bytes.map(|used| used.saturating_sub(processes.listed_vram_bytes()));
            gpu.processes = Some(processes);
        }
        // Only the pids listed now are kept: the map never outgrows one sample.
        self.cpu = next_cpu;
    }

    /// Reads one process from `/proc` and its cgroup.
    fn describe(
        &self,
        pid: u32,
        unified: bool,
        now: Instant,
        next_cpu: &mut HashMap<u32, CpuMark>,
    ) -> GpuProcess {
        let r = proc_stat::read(&self.proc_root, pid);
        let cpu_percent = r.cpu_ticks.and_then(|ticks| {
            next_cpu.insert(pid, CpuMark { ticks, at: now });
            let before = self.cpu.get(&pid)?;
            let secs = now.duration_since(before.at).as_secs_f64();
            let used = ticks.checked_sub(before.ticks)? as f64 / proc_stat::USER_HZ as f64;
            (secs > 0.0).then(|| (used / secs * 100.0) as f32)
        });
        let paths = r.cgroup.as_deref().map(cgroup::CgroupPaths::parse).unwrap_or_default();
        let path = paths.best().map(str::to_owned);
        let owner = path.as_deref().map(cgroup::owner).unwrap_or_default();
        let totals = match (&paths.unified, unified && paths.v1.is_empty()) {
            (Some(p), true) => cgroup::totals(&self.cgroup_root, p).unwrap_or_default(),
            _ => cgroup::Totals::default(),
        };
        GpuProcess {
            pid,
            used_vram_bytes: None,
            name: r.name.filter(|s| fits(s)),
            rss_bytes: r.rss_bytes,
            cpu_percent,
            cgroup: path.filter(|s| fits(s)),
            container_runtime: owner.runtime.map(str::to_owned),
            container_id: owner.container_id,
            systemd_unit: owner.unit.filter(|s| fits(s)),
            cgroup_memory_bytes: totals.memory_bytes,
            cgroup_cpu_usage_usec: totals.cpu_usage_usec,
            reservation_id: r.reservation_id,
        }
    }
}

/// Whether a string fits the wire bound (a longer one would make the queen refuse the
/// whole sample, so it is left out instead).
fn fits(s: &str) -> bool {
    s.len() <= rbee_shared::convert::MAX_STRING_BYTES
}

/// A raw process, for sources and tests.
pub fn raw(pid: u32, used_bytes: u64) -> RawGpuProcess {
    RawGpuProcess { pid, used_bytes: Some(used_bytes) }
}
