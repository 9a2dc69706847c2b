//! The scenario file: which GPUs the fake driver has, how their readings move over
//! time, and which faults it injects. TOML; times are seconds since `nvmlInit`. The
//! fields it shares with the hive's simulated scenarios (`hive/src/source/simulated.rs`)
//! have the same names and the same byte-size grammar (`rbee_shared::bytesize`).
//!
//! ```toml
//! driver_version = "550.54.15"
//! cuda_version = "12.4"
//! step_s = 1.0                       # metric lists below cycle one step per step_s
//! # init_error = "DRIVER_NOT_LOADED" # nvmlInit_v2 answers this
//! # missing = ["nvmlDeviceGetPowerUsage"]  # answer FUNCTION_NOT_FOUND
//!
//! [[gpu]]
//! id = "GPU-00000000-0000-0000-0000-000000000000"  # (or `uuid`, the older name)
//! name = "NVIDIA H100 80GB HBM3"
//! pci_bus_id = "00000000:17:00.0"
//! vram_total = "80GiB"              # `memory_total`, `memory_used`, `memory_reserved`:
//! vram_used = ["5GiB"]               # the older names, still accepted
//! vram_reserved = "512MiB"
//! compute_capability = "9.0"
//! power_limit_w = 700
//! mig_mode = "disabled"              # or "enabled"; unset: NOT_SUPPORTED
//! util_percent = [10, 90]            # unset or []: NOT_SUPPORTED
//! not_supported = ["nvmlDeviceGetTemperature"]
//! lost_at_s = 2.0                    # GPU_IS_LOST from then ...
//! back_at_s = 6.0                    # ... until then (unset: for good)
//! appear_at_s = 0.0                  # hot-plug: not listed before then
//! xid = [{ at_s = 1.0, code = 79 }]
//! process = [{ pid = 4242, used_memory = "1GiB" }]
//! # A process a test starts: its pid is read from the file at every call (no file
//! # or no number in it: not listed), so a test can put real processes on the GPU
//! # and take them off while the hive runs.
//! # process = [{ pid_file = "/tmp/worker.pid", used_memory = "8GiB" }]
//! # vram_used unset or []: used = the sum of the processes listed at that moment
//! # processes_error = "NO_PERMISSION"
//! ```

use std::time::Duration;

use rbee_shared::bytesize::ByteSizeField;
use serde::Deserialize;

use self::topology::{MigFile, NvLinkFile, Topology, TopologyFile};
use crate::codes::{ErrorCode, parse_code};
use crate::symbols::EXPORTED;

// A child of the scenario (it reads the scenario's GPU and units); the path keeps the
// file beside this one for both builds (the old-driver crate includes this file by path).
#[path = "topology.rs"]
pub mod topology;

/// A byte size: a number of bytes, or text like "80GiB" (the one grammar of
/// `rbee_shared::bytesize`, as in the hive's simulated scenarios).
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub(crate) struct ByteSize(ByteSizeField);

impl ByteSize {
    pub(crate) fn bytes(&self, field: &str) -> Result<u64, String> {
        self.0.bytes().map_err(|e| format!("{field}: {e}"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "default_driver")]
    driver_version: String,
    #[serde(default = "default_cuda")]
    cuda_version: String,
    #[serde(default = "default_step")]
    step_s: f64,
    init_error: Option<String>,
    #[serde(default)]
    missing: Vec<String>,
    #[serde(default)]
    gpu: Vec<GpuFile>,
}

fn default_driver() -> String {
    "550.54.15".into()
}

fn default_cuda() -> String {
    "12.4".into()
}

fn default_step() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuFile {
    /// The schema is the hive's simulated scenario's (`id`, `vram_*`); the older
    /// names (`uuid`, `memory_*`) stay accepted.
    #[serde(rename = "id", alias = "uuid")]
    uuid: String,
    #[serde(default = "default_name")]
    name: String,
    pci_bus_id: Option<String>,
    #[serde(rename = "vram_total", alias = "memory_total")]
    memory_total: ByteSize,
    #[serde(default)]
    #[serde(rename = "vram_used", alias = "memory_used")]
    memory_used: Vec<ByteSize>,
    #[serde(rename = "vram_reserved", alias = "memory_reserved")]
    memory_reserved: Option<ByteSize>,
    compute_capability: Option<String>,
    power_limit_w: Option<u32>,
    mig_mode: Option<String>,
    #[serde(default)]
    util_percent: Vec<u32>,
    #[serde(default)]
    mem_util_percent: Vec<u32>,
    #[serde(default)]
    temperature_c: Vec<u32>,
    #[serde(default)]
    power_draw_w: Vec<u32>,
    #[serde(default)]
    sm_clock_mhz: Vec<u32>,
    #[serde(default)]
    mem_clock_mhz: Vec<u32>,
    #[serde(default)]
    ecc_corrected: Vec<u64>,
    #[serde(default)]
    ecc_uncorrected: Vec<u64>,
    #[serde(default)]
    not_supported: Vec<String>,
    #[serde(default)]
    appear_at_s: f64,
    lost_at_s: Option<f64>,
    back_at_s: Option<f64>,
    #[serde(default)]
    xid: Vec<XidFile>,
    #[serde(default)]
    process: Vec<ProcessFile>,
    processes_error: Option<String>,
    // Topology (see [`topology`]).
    numa_node: Option<u32>,
    cpu_affinity: Option<String>,
    board: Option<String>,
    pcie_switch: Option<String>,
    pcie_root: Option<String>,
    host_bridge: Option<String>,
    #[serde(default)]
    nvlink: Vec<NvLinkFile>,
    #[serde(default)]
    mig: Vec<MigFile>,
}

fn default_name() -> String {
    "NVIDIA Fake GPU".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct XidFile {
    at_s: f64,
    code: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessFile {
    pid: Option<u32>,
    pid_file: Option<std::path::PathBuf>,
    used_memory: Option<ByteSize>,
}

/// One XID event.
#[derive(Debug, Clone, Copy)]
pub struct Xid {
    /// When it happens.
    pub at: Duration,
    /// The XID code.
    pub code: u64,
}

/// Where a process's pid comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pid {
    /// A fixed pid.
    Fixed(u32),
    /// The number in this file, read at every call; no file (or no number): not listed.
    File(std::path::PathBuf),
}

/// One running compute process.
#[derive(Debug, Clone)]
pub struct Process {
    /// Its pid.
    pub pid: Pid,
    /// Its used VRAM; `None` answers NVML_VALUE_NOT_AVAILABLE.
    pub used_memory: Option<u64>,
}

impl Process {
    /// Its pid now, if it is listed now.
    pub fn pid_now(&self) -> Option<u32> {
        match &self.pid {
            Pid::Fixed(p) => Some(*p),
            Pid::File(f) => std::fs::read_to_string(f).ok()?.trim().parse().ok(),
        }
    }
}

/// A process listed now: pid and used VRAM (`None`: not available).
pub type Listed = (u32, Option<u64>);

/// One fake GPU.
#[derive(Debug, Clone)]
pub struct Gpu {
    /// NVML UUID.
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// PCI bus id.
    pub pci_bus_id: String,
    /// Total memory, bytes.
    pub memory_total: u64,
    /// Used memory cycle, bytes.
    pub memory_used: Vec<u64>,
    /// Driver-reserved memory, bytes.
    pub memory_reserved: u64,
    /// CUDA compute capability.
    pub compute_capability: Option<(i32, i32)>,
    /// Enforced power limit, mW.
    pub power_limit_mw: Option<u32>,
    /// MIG mode (current = pending); `None` answers NOT_SUPPORTED.
    pub mig_enabled: Option<bool>,
    /// Metric cycles; an empty one answers NOT_SUPPORTED.
    pub util_percent: Vec<u32>,
    /// Memory controller utilisation cycle.
    pub mem_util_percent: Vec<u32>,
    /// Temperature cycle.
    pub temperature_c: Vec<u32>,
    /// Power draw cycle, mW.
    pub power_draw_mw: Vec<u32>,
    /// SM clock cycle.
    pub sm_clock_mhz: Vec<u32>,
    /// Memory clock cycle.
    pub mem_clock_mhz: Vec<u32>,
    /// Volatile corrected ECC count cycle.
    pub ecc_corrected: Vec<u64>,
    /// Volatile uncorrected ECC count cycle.
    pub ecc_uncorrected: Vec<u64>,
    /// Functions that answer NOT_SUPPORTED for this GPU.
    pub not_supported: Vec<String>,
    /// When the GPU is first listed.
    pub appear_at: Duration,
    /// From when it answers GPU_IS_LOST.
    pub lost_at: Option<Duration>,
    /// From when it answers again.
    pub back_at: Option<Duration>,
    /// XID events.
    pub xids: Vec<Xid>,
    /// Running compute processes.
    pub processes: Vec<Process>,
    /// What the process list answers instead, if set.
    pub processes_error: Option<ErrorCode>,
    /// Where it sits, its NVLink links and MIG instances.
    pub topology: Topology,
}

impl Gpu {
    /// Whether it is listed at `t`.
    pub fn present(&self, t: Duration) -> bool {
        t >= self.appear_at
    }

    /// The processes listed now, in scenario order.
    pub fn processes_now(&self) -> Vec<Listed> {
        self.processes.iter().filter_map(|p| Some((p.pid_now()?, p.used_memory))).collect()
    }

    /// Used VRAM at `step`: the scripted cycle, or without one the sum of the
    /// processes listed now.
    pub fn used_at(&self, step: usize) -> u64 {
        pick(&self.memory_used, step).unwrap_or_else(|| {
            let sum = self.processes_now().iter().filter_map(|p| p.1).fold(0u64, u64::saturating_add);
            sum.min(self.memory_total - self.memory_reserved)
        })
    }

    /// Whether it answers GPU_IS_LOST at `t`.
    pub fn lost(&self, t: Duration) -> bool {
        self.lost_at.is_some_and(|l| t >= l) && self.back_at.is_none_or(|b| t < b)
    }
}

/// A parsed scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Driver version string.
    pub driver_version: String,
    /// CUDA driver version as NVML encodes it (major * 1000 + minor * 10).
    pub cuda_version: i32,
    /// How often metric cycles step.
    pub step: Duration,
    /// What `nvmlInit_v2` answers instead of success.
    pub init_error: Option<ErrorCode>,
    /// Functions that answer FUNCTION_NOT_FOUND.
    pub missing: Vec<String>,
    /// The GPUs, in index order.
    pub gpus: Vec<Gpu>,
}

pub(crate) fn seconds(field: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| format!("{field} = {s} is not a non-negative number of seconds"))
}

fn functions(field: &str, names: Vec<String>) -> Result<Vec<String>, String> {
    match names.iter().find(|n| !EXPORTED.contains(&n.as_str())) {
        Some(n) => Err(format!("{field}: {n:?} is not a function this library exports")),
        None => Ok(names),
    }
}

impl Scenario {
    /// Parses scenario text; errors name the GPU and the field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let (major, minor) = f
            .cuda_version
            .split_once('.')
            .and_then(|(a, b)| Some((a.parse::<i32>().ok()?, b.parse::<i32>().ok()?)))
            .ok_or_else(|| format!("cuda_version {:?} is not MAJOR.MINOR", f.cuda_version))?;
        let step = seconds("step_s", f.step_s)?;
        if step < Duration::from_millis(10) {
            return Err(format!("step_s = {} must be at least 0.01", f.step_s));
        }
        let mut gpus = Vec::new();
        let count = f.gpu.len();
        for (i, g) in f.gpu.into_iter().enumerate() {
            let uuid = g.uuid.clone();
            let at = |field: &str| format!("gpu[{i}] ({uuid}): {field}");
            let memory_total = g.memory_total.bytes(&at("memory_total"))?;
            let memory_reserved = g.memory_reserved.map(|b| b.bytes(&at("memory_reserved"))).transpose()?;
            let memory_reserved = memory_reserved.unwrap_or(0);
            let memory_used =
                g.memory_used.iter().map(|b| b.bytes(&at("memory_used"))).collect::<Result<Vec<_>, _>>()?;
            if memory_used.iter().any(|u| u.saturating_add(memory_reserved) > memory_total) {
                return Err(format!("{}: used + reserved exceeds memory_total", at("memory_used")));
            }
            let compute_capability = g
                .compute_capability
                .map(|c| {
                    c.split_once('.')
                        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                        .ok_or_else(|| format!("{}: {c:?} is not MAJOR.MINOR", at("compute_capability")))
                })
                .transpose()?;
            let mig_enabled = match g.mig_mode.as_deref() {
                None => None,
                Some("enabled") => Some(true),
                Some("disabled") => Some(false),
                Some(o) => {
                    return Err(format!("{}: {o:?} is not \"enabled\" or \"disabled\"", at("mig_mode")));
                }
            };
            let topology = TopologyFile {
                numa_node: g.numa_node,
                cpu_affinity: g.cpu_affinity,
                board: g.board,
                pcie_switch: g.pcie_switch,
                pcie_root: g.pcie_root,
                host_bridge: g.host_bridge,
                nvlink: g.nvlink,
                mig: g.mig,
            };
            let mut gpu = Gpu {
                pci_bus_id: g.pci_bus_id.unwrap_or_else(|| format!("00000000:{:02X}:00.0", 0x17 + i)),
                name: g.name,
                memory_total,
                memory_used,
                memory_reserved,
                compute_capability,
                power_limit_mw: g.power_limit_w.map(|w| w.saturating_mul(1000)),
                mig_enabled,
                util_percent: g.util_percent,
                mem_util_percent: g.mem_util_percent,
                temperature_c: g.temperature_c,
                power_draw_mw: g.power_draw_w.iter().map(|w| w.saturating_mul(1000)).collect(),
                sm_clock_mhz: g.sm_clock_mhz,
                mem_clock_mhz: g.mem_clock_mhz,
                ecc_corrected: g.ecc_corrected,
                ecc_uncorrected: g.ecc_uncorrected,
                not_supported: functions(&at("not_supported"), g.not_supported)?,
                appear_at: seconds(&at("appear_at_s"), g.appear_at_s)?,
                lost_at: g.lost_at_s.map(|s| seconds(&at("lost_at_s"), s)).transpose()?,
                back_at: g.back_at_s.map(|s| seconds(&at("back_at_s"), s)).transpose()?,
                xids: g
                    .xid
                    .iter()
                    .map(|x| Ok(Xid { at: seconds(&at("xid.at_s"), x.at_s)?, code: x.code }))
                    .collect::<Result<_, String>>()?,
                processes: g
                    .process
                    .iter()
                    .map(|p| {
                        let used_memory = p.used_memory.as_ref().map(|b| b.bytes(&at("process.used_memory")));
                        let pid = match (p.pid, &p.pid_file) {
                            (Some(pid), None) => Pid::Fixed(pid),
                            (None, Some(f)) => Pid::File(f.clone()),
                            _ => {
                                return Err(format!(
                                    "{}: give exactly one of pid and pid_file",
                                    at("process")
                                ));
                            }
                        };
                        Ok(Process { pid, used_memory: used_memory.transpose()? })
                    })
                    .collect::<Result<_, String>>()?,
                processes_error: g
                    .processes_error
                    .map(|c| {
                        parse_code(&c).ok_or_else(|| format!("{}: unknown code {c:?}", at("processes_error")))
                    })
                    .transpose()?,
                topology: Topology::default(),
                uuid: g.uuid,
            };
            gpu.topology = topology.parse(i, count, &at, &gpu)?;
            gpus.push(gpu);
        }
        Ok(Self {
            driver_version: f.driver_version,
            cuda_version: major * 1000 + minor * 10,
            step,
            init_error: f
                .init_error
                .map(|c| parse_code(&c).ok_or_else(|| format!("init_error: unknown code {c:?}")))
                .transpose()?,
            missing: functions("missing", f.missing)?,
            gpus,
        })
    }

    /// The GPUs listed at `t`, in index order: (position in `gpus`, GPU).
    pub fn listed(&self, t: Duration) -> impl Iterator<Item = (usize, &Gpu)> {
        self.gpus.iter().enumerate().filter(move |(_, g)| g.present(t))
    }

    /// The step of the metric cycles at `t`.
    pub fn step_at(&self, t: Duration) -> usize {
        (t.as_nanos() / self.step.as_nanos().max(1)) as usize
    }
}

/// The value of a metric cycle at `step`: `None` (NOT_SUPPORTED) when it is empty.
pub fn pick<T: Copy>(cycle: &[T], step: usize) -> Option<T> {
    (!cycle.is_empty()).then(|| cycle[step % cycle.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_gpu_parses_and_bad_fields_are_named() {
        let s = Scenario::parse(
            r#"
            cuda_version = "12.4"
            [[gpu]]
            uuid = "GPU-a"
            memory_total = "80GiB"
            memory_used = ["5GiB", 1024]
            memory_reserved = "512MiB"
            compute_capability = "9.0"
            mig_mode = "enabled"
            lost_at_s = 2
            back_at_s = 4
            xid = [{ at_s = 1, code = 79 }]
            process = [{ pid = 7, used_memory = "1GiB" }, { pid = 8 }]
            processes_error = "NO_PERMISSION"
            "#,
        )
        .unwrap();
        assert_eq!(s.cuda_version, 12040);
        let g = &s.gpus[0];
        assert_eq!((g.memory_total, g.memory_reserved), (80 << 30, 512 << 20));
        assert_eq!(g.memory_used, [5 << 30, 1024]);
        assert!(!g.lost(Duration::from_secs(1)) && g.lost(Duration::from_secs(3)));
        assert!(!g.lost(Duration::from_secs(4)));
        assert_eq!(g.processes[1].used_memory, None);
        assert_eq!(g.processes_now(), [(7, Some(1 << 30)), (8, None)]);

        let bad = |t: &str| Scenario::parse(t).unwrap_err();
        assert!(bad("[[gpu]]\nuuid = \"x\"\nmemory_total = \"1XB\"").contains("memory_total"));
        assert!(bad("[[gpu]]\nuuid = \"x\"\nmemory_total = 1\nmemory_used = [2]").contains("exceeds"));
        assert!(bad("missing = [\"nvmlNope\"]").contains("nvmlNope"));
        assert!(bad("init_error = \"WHAT\"").contains("init_error"));
        let both = "[[gpu]]\nuuid = \"x\"\nmemory_total = 1\nprocess = [{ pid = 1, pid_file = \"f\" }]";
        assert!(bad(both).contains("exactly one of pid and pid_file"));
    }

    #[test]
    fn a_pid_file_process_is_listed_while_its_file_names_a_pid_and_used_follows_the_list() {
        let f = std::env::temp_dir().join(format!("rbee-nvml-fake-{}.pid", std::process::id()));
        let s = Scenario::parse(&format!(
            "[[gpu]]\nuuid = \"x\"\nmemory_total = \"8GiB\"\nmemory_reserved = \"1GiB\"\n\
             process = [{{ pid = 3, used_memory = \"1GiB\" }}, {{ pid_file = {f:?}, used_memory = \"2GiB\" }}]"
        ))
        .unwrap();
        let g = &s.gpus[0];
        assert_eq!((g.processes_now(), g.used_at(0)), (vec![(3, Some(1 << 30))], 1 << 30));
        std::fs::write(&f, "nonsense").unwrap();
        assert_eq!(g.processes_now().len(), 1);
        std::fs::write(&f, "4242\n").unwrap();
        assert_eq!(g.processes_now(), [(3, Some(1 << 30)), (4242, Some(2 << 30))]);
        assert_eq!(g.used_at(5), 3 << 30);
        std::fs::remove_file(&f).unwrap();
        assert_eq!((g.processes_now().len(), g.used_at(0)), (1, 1 << 30));
    }
}
