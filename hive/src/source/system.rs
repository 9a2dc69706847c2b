//! CPU and RAM. sysinfo names the CPU model and counts the cores once; each sample
//! reads CPU times, memory, load and uptime from `/proc` files kept open
//! ([`super::procfs`]), without opening anything.

use std::path::Path;
use std::time::{Duration, Instant};

use rbee_shared::{Backend, Capabilities, CpuInfo, DeviceSourceKind, LoadAverage, Sample};
use sysinfo::{CpuRefreshKind, RefreshKind, System};

use super::DeviceSource;
use super::procfs::{self, CpuTimes, MemInfo, ProcFile};
use crate::HiveError;

/// The `/proc` files a sample reads, each kept open (absent: that part is not reported).
#[derive(Debug)]
struct ProcFiles {
    /// `/proc/stat`.
    stat: Option<ProcFile>,
    /// `/proc/meminfo`.
    meminfo: Option<ProcFile>,
    /// `/proc/loadavg`.
    loadavg: Option<ProcFile>,
    /// `/proc/uptime`.
    uptime: Option<ProcFile>,
}

impl ProcFiles {
    fn open(root: &Path) -> Self {
        let open = |name: &str| {
            let path = root.join(name);
            ProcFile::open_one_record(&path)
                .inspect_err(
                    |e| tracing::warn!(path = %path.display(), error = %e, "cannot read; not reported"),
                )
                .ok()
        };
        Self {
            stat: open("stat"),
            meminfo: open("meminfo"),
            loadavg: open("loadavg"),
            uptime: open("uptime"),
        }
    }
}

/// Host CPU and memory.
pub struct SystemSource {
    /// The CPU model and core counts (read once; they do not change while running).
    cpu: CpuInfo,
    /// The open `/proc` files.
    files: ProcFiles,
    /// CPU times at the start of the current measurement window: aggregate, per core.
    cpu_times: (CpuTimes, Vec<CpuTimes>),
    /// The latest CPU times (reused buffer).
    cpu_now: (CpuTimes, Vec<CpuTimes>),
    /// When the window started.
    last_cpu_refresh: Instant,
    /// The latest memory figures.
    mem: MemInfo,
}

impl SystemSource {
    /// Names the CPU and opens the `/proc` files; CPU usage is measured from here on.
    pub fn new() -> Result<Self, HiveError> {
        let system = System::new_with_specifics(RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing()))
            .map_err(|e| HiveError::Source { source_name: "sysinfo", reason: e.to_string() })?;
        let cpus = system.cpus();
        let cpu = CpuInfo {
            model: cpus.first().map(|c| c.brand().trim().to_owned()).unwrap_or_default(),
            physical_cores: System::physical_core_count().ok().and_then(|n| u32::try_from(n).ok()),
            logical_cores: u32::try_from(cpus.len()).unwrap_or(u32::MAX),
        };
        let mut source = Self {
            cpu,
            files: ProcFiles::open(Path::new("/proc")),
            cpu_times: Default::default(),
            cpu_now: Default::default(),
            last_cpu_refresh: Instant::now(),
            mem: MemInfo::default(),
        };
        source.read_cpu();
        std::mem::swap(&mut source.cpu_times, &mut source.cpu_now);
        source.read_memory();
        Ok(source)
    }

    /// Reads the CPU times into `cpu_now`; false when they cannot be read.
    fn read_cpu(&mut self) -> bool {
        let Some(text) = self.files.stat.as_mut().and_then(|f| f.read().ok()) else { return false };
        let (aggregate, cores) = &mut self.cpu_now;
        procfs::parse_stat(text, aggregate, cores);
        true
    }

    /// Reads the memory figures.
    fn read_memory(&mut self) {
        if let Some(text) = self.files.meminfo.as_mut().and_then(|f| f.read().ok()) {
            self.mem = procfs::parse_meminfo(text);
        }
    }
}

fn clamp_percent(p: f32) -> f32 {
    if p.is_finite() { p.clamp(0.0, 100.0) } else { 0.0 }
}

impl DeviceSource for SystemSource {
    fn kind(&self) -> DeviceSourceKind {
        DeviceSourceKind::None
    }

    fn scan(&mut self, caps: &mut Capabilities) -> Result<(), HiveError> {
        caps.cpu = self.cpu.clone();
        caps.ram_total_bytes = self.mem.total;
        caps.backends.push(Backend::Cpu);
        Ok(())
    }

    fn sample(&mut self, sample: &mut Sample) -> Result<(), HiveError> {
        let window = self.last_cpu_refresh.elapsed();
        let read = self.read_cpu();
        self.last_cpu_refresh = Instant::now();
        // A non-trivial window gives a meaningful percentage.
        if read && window >= Duration::from_millis(20) {
            let ((now, cores), (before, cores_before)) = (&self.cpu_now, &self.cpu_times);
            sample.cpu_window_ms = Some(u32::try_from(window.as_millis()).unwrap_or(u32::MAX));
            sample.cpu_percent = Some(clamp_percent(now.usage_since(before)));
            sample.cpu_per_core_percent = cores
                .iter()
                .enumerate()
                .map(|(i, c)| clamp_percent(cores_before.get(i).map_or(0.0, |b| c.usage_since(b))))
                .collect();
        }
        if read {
            std::mem::swap(&mut self.cpu_times, &mut self.cpu_now);
        }
        self.read_memory();
        sample.load_average = self
            .files
            .loadavg
            .as_mut()
            .and_then(|f| f.read().ok())
            .and_then(procfs::parse_loadavg)
            .map(|[one, five, fifteen]| LoadAverage { one, five, fifteen });
        let total = self.mem.total;
        sample.ram_total_bytes = total;
        sample.ram_used_bytes = total.saturating_sub(self.mem.available);
        sample.ram_available_bytes = self.mem.available.min(total);
        let swap_total = self.mem.swap_total;
        sample.swap_total_bytes = Some(swap_total);
        sample.swap_used_bytes = Some(swap_total.saturating_sub(self.mem.swap_free));
        sample.uptime_s =
            self.files.uptime.as_mut().and_then(|f| f.read().ok()).and_then(procfs::parse_uptime);
        Ok(())
    }
}
