//! CPU and RAM through sysinfo. One `System` lives as long as the hive; each tick
//! refreshes only CPU usage and memory.

use std::time::{Duration, Instant};

use rbee_shared::{Backend, Capabilities, CpuInfo, DeviceSourceKind, LoadAverage, Sample};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

use super::DeviceSource;
use crate::HiveError;

/// Host CPU and memory.
pub struct SystemSource {
    /// The one long-lived sysinfo handle.
    system: System,
    /// When CPU usage was last refreshed: the start of the next measurement window.
    last_cpu_refresh: Instant,
    /// Physical core count, read once (it does not change while running).
    physical_cores: Option<u32>,
}

impl SystemSource {
    /// Loads the CPU list and memory once; CPU usage is measured from here on.
    pub fn new() -> Result<Self, HiveError> {
        let kind = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_usage())
            .with_memory(MemoryRefreshKind::everything());
        let system = System::new_with_specifics(kind)
            .map_err(|e| HiveError::Source { source_name: "sysinfo", reason: e.to_string() })?;
        let physical_cores = System::physical_core_count().ok().and_then(|n| u32::try_from(n).ok());
        Ok(Self { system, last_cpu_refresh: Instant::now(), physical_cores })
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
        let cpus = self.system.cpus();
        caps.cpu = CpuInfo {
            model: cpus.first().map(|c| c.brand().trim().to_owned()).unwrap_or_default(),
            physical_cores: self.physical_cores,
            logical_cores: u32::try_from(cpus.len()).unwrap_or(u32::MAX),
        };
        caps.ram_total_bytes = self.system.total_memory();
        caps.backends.push(Backend::Cpu);
        Ok(())
    }

    fn sample(&mut self, sample: &mut Sample) -> Result<(), HiveError> {
        let window = self.last_cpu_refresh.elapsed();
        self.system.refresh_cpu_usage();
        self.last_cpu_refresh = Instant::now();
        self.system.refresh_memory();
        // sysinfo needs a non-trivial window to give a meaningful percentage.
        if window >= Duration::from_millis(20) {
            sample.cpu_window_ms = Some(u32::try_from(window.as_millis()).unwrap_or(u32::MAX));
            sample.cpu_percent = Some(clamp_percent(self.system.global_cpu_usage()));
            sample.cpu_per_core_percent =
                self.system.cpus().iter().map(|c| clamp_percent(c.usage())).collect();
        }
        sample.load_average =
            System::load_average().ok().map(|l| LoadAverage { one: l.one, five: l.five, fifteen: l.fifteen });
        let total = self.system.total_memory();
        sample.ram_total_bytes = total;
        sample.ram_used_bytes = self.system.used_memory().min(total);
        sample.ram_available_bytes = self.system.available_memory().min(total);
        let swap_total = self.system.total_swap();
        sample.swap_total_bytes = Some(swap_total);
        sample.swap_used_bytes = Some(self.system.used_swap().min(swap_total));
        sample.uptime_s = System::uptime().ok();
        Ok(())
    }
}
