//! One live measurement of a machine. Every metric the machine cannot read is `None`.

/// The 1, 5 and 15 minute load averages.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct LoadAverage {
    /// One minute.
    pub one: f64,
    /// Five minutes.
    pub five: f64,
    /// Fifteen minutes.
    pub fifteen: f64,
}

/// Live readings of one GPU.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct GpuSample {
    /// The [`crate::GpuDevice::id`] this belongs to.
    pub id: String,
    /// The NVML index.
    pub index: u32,
    /// VRAM in use, bytes.
    pub vram_used_bytes: Option<u64>,
    /// VRAM free, bytes.
    pub vram_free_bytes: Option<u64>,
    /// SM utilisation, 0..=100.
    pub gpu_util_percent: Option<f32>,
    /// Memory controller utilisation, 0..=100.
    pub mem_util_percent: Option<f32>,
    /// Core temperature in degrees Celsius.
    pub temperature_c: Option<f32>,
    /// Power draw in milliwatts.
    pub power_draw_mw: Option<u32>,
    /// SM clock in MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock in MHz.
    pub mem_clock_mhz: Option<u32>,
    /// Volatile corrected ECC errors.
    pub ecc_corrected_volatile: Option<u64>,
    /// Volatile uncorrected ECC errors.
    pub ecc_uncorrected_volatile: Option<u64>,
    /// Critical XID events seen since the hive started.
    pub xid_events: Option<u64>,
    /// The last XID code seen.
    pub last_xid: Option<u64>,
    /// The compute processes holding this GPU's memory. `None` when the driver does
    /// not say (no permission, not supported, or an older hive): absent, not empty.
    pub processes: Option<GpuProcesses>,
    /// VRAM in use that no listed process accounts for (used − the listed processes'
    /// sum; includes the unlisted rest and memory the driver does not attribute).
    /// `None` when the process list or the used reading is absent.
    pub unattributed_vram_bytes: Option<u64>,
    /// VRAM the driver reserves for itself, bytes, counted in neither used nor free.
    pub vram_reserved_bytes: Option<u64>,
}

/// A GPU the driver lists that does not answer (e.g. it fell off the bus). It is left
/// out of the capabilities until it answers again.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct LostGpu {
    /// The driver's index of the GPU.
    pub index: u32,
    /// The [`crate::GpuDevice::id`] it last had, when known.
    pub id: Option<String>,
    /// What the driver answered.
    pub reason: String,
    /// When the hive first saw it fail, ms since the Unix epoch.
    pub since_unix_ms: u64,
}

pub use crate::gpu_process::{GpuProcess, GpuProcesses};

/// One measurement of the whole machine.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Sample {
    /// When it was taken, ms since the Unix epoch.
    pub taken_at_unix_ms: u64,
    /// The window CPU utilisation was measured over, in ms.
    pub cpu_window_ms: Option<u32>,
    /// CPU utilisation over the window, all cores, 0..=100.
    pub cpu_percent: Option<f32>,
    /// Per logical core, 0..=100.
    pub cpu_per_core_percent: Vec<f32>,
    /// Load averages, where the OS has them.
    pub load_average: Option<LoadAverage>,
    /// Total RAM, bytes.
    pub ram_total_bytes: u64,
    /// RAM in use, bytes.
    pub ram_used_bytes: u64,
    /// RAM available for new work, bytes.
    pub ram_available_bytes: u64,
    /// Total swap, bytes.
    pub swap_total_bytes: Option<u64>,
    /// Swap in use, bytes.
    pub swap_used_bytes: Option<u64>,
    /// System uptime in seconds.
    pub uptime_s: Option<u64>,
    /// Per-GPU readings.
    pub gpus: Vec<GpuSample>,
    /// The capability version this sample was measured against: its GPUs are exactly
    /// the GPUs of that version. `None` from hives that predate the field.
    pub capability_version: Option<u64>,
    /// GPUs the driver lists that stopped answering, left out of `gpus`.
    pub lost_gpus: Vec<LostGpu>,
    /// Active downloads, and those that finished within the last minute.
    pub downloads: Vec<crate::DownloadProgress>,
    /// The filesystem holding the models directory.
    pub models_disk: Option<crate::DiskSpace>,
    /// Running preloads, and those that finished within the last minute.
    pub preloads: Vec<crate::DownloadProgress>,
    /// How fast the hive reads model files, when measured.
    pub read_bandwidth: Option<crate::ReadBandwidth>,
    /// What was cut from the hive's view to keep it within its budgets, one line each
    /// ([`crate::view_budget`]).
    pub cuts: Vec<String>,
}

pub use crate::sample_interval::{DEFAULT_SAMPLE_INTERVAL, MAX_SAMPLE_INTERVAL, MIN_SAMPLE_INTERVAL};
