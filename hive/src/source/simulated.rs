//! Simulated GPUs from a scenario file (TOML). For tests and demos only: a hive using
//! it says so in `Discover` (`gpu_source: DEVICE_SOURCE_KIND_SIMULATED`).
//!
//! Times are seconds since the hive started. Each metric list is a cycle that moves
//! one step every `step_s`. A GPU exists from `appear_at_s` until `remove_at_s`, which
//! is how hot-plug and removal are scheduled. `sample_latency_s` makes every reading
//! take that long (a slow device). See `hive/scenarios/demo.toml`.
//!
//! A GPU may list compute processes (`[[gpu.process]]`): a fixed `pid`, or a
//! `pid_file` read at every sample (no file, no process), so that a test can start a
//! real process and put it on a GPU. Each has a `used` cycle and its own
//! `appear_at_s`/`remove_at_s`. Without a `vram_used` cycle, such a GPU's used VRAM is
//! the sum of its present processes. `process_list = "no_permission"` or
//! `"not_supported"` makes the driver refuse the list (absent, not empty).
//!
//! Topology: `topology = "dgx8"` or `"pcie2x4"` at the top gives the GPUs, by their
//! position in the file, the shape of [`super::sim_topology`] (`hive serve
//! --sim-topology` overrides it). A GPU's `nvlink_down_at_s` (and `nvlink_up_at_s`)
//! takes its NVLink links down (and up again): a link-down fault.

use std::path::Path;
use std::time::{Duration, Instant};

use rbee_shared::bytesize::ByteSizeField;
use rbee_shared::{
    Backend, Capabilities, ComputeCapability, DeviceSourceKind, GpuDevice, GpuSample, MigMode, Sample,
};
use serde::Deserialize;

use super::sim_topology::{Shape, Slot};
use super::{DeviceSource, RawGpuProcess, RawProcesses};
use crate::error::{HiveError, ScenarioError};

/// The demo scenario shipped inside the binary (`hive serve --demo`).
pub const DEMO_SCENARIO: &str = include_str!("../../scenarios/demo.toml");

/// A byte size written as a number of bytes or a string like "80GiB" (the one grammar
/// of `rbee_shared::bytesize`).
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
struct ByteSize(ByteSizeField);

impl ByteSize {
    fn bytes(&self) -> Result<u64, ScenarioError> {
        self.0.bytes().map_err(|e| ScenarioError(e.to_string()))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default = "default_step")]
    step_s: f64,
    /// How long each reading takes (simulates a slow device; tests).
    #[serde(default)]
    sample_latency_s: f64,
    /// The box's topology shape.
    #[serde(default)]
    topology: Shape,
    #[serde(default)]
    gpu: Vec<GpuSpecFile>,
}

fn default_step() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuSpecFile {
    /// The GPU's UUID. The scenario schema is the same as the fake NVML library's
    /// (`rbee-nvml-fake`): its older names (`uuid`, `memory_*`) are accepted here too.
    #[serde(alias = "uuid")]
    id: String,
    index: Option<u32>,
    #[serde(default = "default_name")]
    name: String,
    #[serde(alias = "memory_total")]
    vram_total: ByteSize,
    #[serde(default)]
    appear_at_s: f64,
    remove_at_s: Option<f64>,
    #[serde(default)]
    util_percent: Vec<f32>,
    #[serde(default)]
    #[serde(alias = "memory_used")]
    vram_used: Vec<ByteSize>,
    /// VRAM the driver keeps for itself, in neither used nor free (NVML v2 reports it).
    #[serde(alias = "memory_reserved")]
    vram_reserved: Option<ByteSize>,
    #[serde(default)]
    temperature_c: Vec<f32>,
    #[serde(default)]
    power_draw_w: Vec<u32>,
    power_limit_w: Option<u32>,
    compute_capability: Option<String>,
    /// `listed` (the default when processes are given), `no_permission` or `not_supported`.
    process_list: Option<String>,
    #[serde(default)]
    process: Vec<ProcessSpecFile>,
    /// From when its NVLink links are down.
    nvlink_down_at_s: Option<f64>,
    /// From when they are up again.
    nvlink_up_at_s: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessSpecFile {
    pid: Option<u32>,
    pid_file: Option<std::path::PathBuf>,
    #[serde(default)]
    used: Vec<ByteSize>,
    #[serde(default)]
    appear_at_s: f64,
    remove_at_s: Option<f64>,
}

/// Where a simulated process's pid comes from.
#[derive(Debug, Clone)]
enum SimPid {
    /// Fixed.
    Fixed(u32),
    /// Read from this file at every sample (a test writes it once it has a child).
    File(std::path::PathBuf),
}

/// One simulated compute process.
#[derive(Debug, Clone)]
struct SimProcess {
    /// Its pid.
    pid: SimPid,
    /// Used-VRAM cycle, bytes.
    used: Vec<u64>,
    /// When it appears.
    appear_at: Duration,
    /// When it goes, if ever.
    remove_at: Option<Duration>,
}

/// What the simulated driver says of a GPU's processes.
#[derive(Debug, Clone)]
enum SimList {
    /// No list at all (the GPU's scenario says nothing of processes).
    Absent,
    /// These processes.
    Listed(Vec<SimProcess>),
    /// The list is refused.
    Refused(RawProcesses),
}

fn default_name() -> String {
    "Simulated GPU".into()
}

/// One validated simulated GPU.
#[derive(Debug, Clone)]
struct SimGpu {
    /// The static description.
    device: GpuDevice,
    /// When it appears.
    appear_at: Duration,
    /// When it goes away, if ever.
    remove_at: Option<Duration>,
    /// Utilisation cycle.
    util: Vec<f32>,
    /// VRAM-used cycle, bytes.
    vram_used: Vec<u64>,
    /// VRAM the driver reserves, bytes.
    vram_reserved: Option<u64>,
    /// Temperature cycle.
    temperature: Vec<f32>,
    /// Power draw cycle, mW.
    power_mw: Vec<u32>,
    /// Its compute processes.
    processes: SimList,
    /// From when its NVLink links are down.
    nvlink_down_at: Option<Duration>,
    /// From when they are up again.
    nvlink_up_at: Option<Duration>,
}

impl SimGpu {
    /// Whether its NVLink links are up `elapsed` after start.
    fn nvlink_up(&self, elapsed: Duration) -> bool {
        !(self.nvlink_down_at.is_some_and(|d| elapsed >= d) && self.nvlink_up_at.is_none_or(|u| elapsed < u))
    }
}

/// A parsed, validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// How often the metric cycles advance.
    step: Duration,
    /// How long each reading takes.
    sample_latency: Duration,
    /// The GPUs.
    gpus: Vec<SimGpu>,
    /// The box's topology shape.
    shape: Shape,
}

fn pick<T: Copy>(cycle: &[T], step: usize) -> Option<T> {
    (!cycle.is_empty()).then(|| cycle[step % cycle.len()])
}

fn seconds(field: &str, s: f64) -> Result<Duration, ScenarioError> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| ScenarioError(format!("{field} = {s} is not a non-negative number of seconds")))
}

impl Scenario {
    /// Parses a scenario from TOML text; errors name the GPU and the field.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let file: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError(e.to_string()))?;
        let step = seconds("step_s", file.step_s)?;
        let sample_latency = seconds("sample_latency_s", file.sample_latency_s)?;
        if step < Duration::from_millis(10) {
            return Err(format!("step_s = {} must be at least 0.01", file.step_s).into());
        }
        let mut ids = std::collections::HashSet::new();
        let mut gpus = Vec::new();
        for (i, g) in file.gpu.into_iter().enumerate() {
            let at = |field: &str| format!("gpu[{i}] ({}): {field}", g.id);
            if g.id.is_empty() || !ids.insert(g.id.clone()) {
                return Err(format!("gpu[{i}]: id {:?} is empty or used twice", g.id).into());
            }
            let vram_total =
                g.vram_total.bytes().map_err(|e| ScenarioError(format!("{}: {e}", at("vram_total"))))?;
            let vram_used = g
                .vram_used
                .iter()
                .map(|b| b.bytes().map_err(|e| ScenarioError(format!("{}: {e}", at("vram_used")))))
                .collect::<Result<Vec<_>, _>>()?;
            let vram_reserved = g
                .vram_reserved
                .as_ref()
                .map(|b| b.bytes().map_err(|e| ScenarioError(format!("{}: {e}", at("vram_reserved")))))
                .transpose()?;
            let usable = vram_total.saturating_sub(vram_reserved.unwrap_or(0));
            if vram_reserved.is_some_and(|r| r > vram_total) {
                return Err(format!("{}: exceeds vram_total {vram_total}", at("vram_reserved")).into());
            }
            if let Some(u) = vram_used.iter().find(|&&u| u > usable) {
                return Err(format!(
                    "{}: {u} bytes exceeds vram_total {vram_total} less vram_reserved",
                    at("vram_used")
                )
                .into());
            }
            if let Some(u) = g.util_percent.iter().find(|u| !(0.0..=100.0).contains(*u)) {
                return Err(format!("{}: {u} is not in 0..=100", at("util_percent")).into());
            }
            if let Some(t) = g.temperature_c.iter().find(|t| !t.is_finite()) {
                return Err(format!("{}: {t} is not finite", at("temperature_c")).into());
            }
            let compute_capability = match &g.compute_capability {
                None => None,
                Some(s) => {
                    let (major, minor) = s.split_once('.').ok_or_else(|| {
                        ScenarioError(format!("{}: expected e.g. \"9.0\"", at("compute_capability")))
                    })?;
                    let parse = |v: &str| {
                        v.parse::<u32>().map_err(|_| {
                            ScenarioError(format!("{}: {s:?} is not MAJOR.MINOR", at("compute_capability")))
                        })
                    };
                    Some(ComputeCapability { major: parse(major)?, minor: parse(minor)? })
                }
            };
            let processes = sim_list(&at("process"), g.process_list.as_deref(), g.process, vram_total)?;
            let appear_at = seconds(&at("appear_at_s"), g.appear_at_s)?;
            let remove_at = g.remove_at_s.map(|s| seconds(&at("remove_at_s"), s)).transpose()?;
            let nvlink_down_at =
                g.nvlink_down_at_s.map(|s| seconds(&at("nvlink_down_at_s"), s)).transpose()?;
            let nvlink_up_at = g.nvlink_up_at_s.map(|s| seconds(&at("nvlink_up_at_s"), s)).transpose()?;
            gpus.push(SimGpu {
                nvlink_down_at,
                nvlink_up_at,
                device: GpuDevice {
                    index: g.index.unwrap_or(i as u32),
                    name: g.name,
                    pci_bus_id: format!("00000000:{:02X}:00.0", 0x10 + i),
                    compute_capability,
                    vram_total_bytes: vram_total,
                    driver_version: Some("simulated".into()),
                    cuda_version: None,
                    power_limit_mw: g.power_limit_w.map(|w| w.saturating_mul(1000)),
                    mig_mode: MigMode::NotReported,
                    topology: Default::default(),
                    id: g.id,
                },
                appear_at,
                remove_at,
                util: g.util_percent,
                vram_used,
                vram_reserved,
                temperature: g.temperature_c,
                power_mw: g.power_draw_w.iter().map(|w| w.saturating_mul(1000)).collect(),
                processes,
            });
        }
        Ok(Self { step, sample_latency, gpus, shape: file.topology })
    }

    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> Result<Self, HiveError> {
        let text = std::fs::read_to_string(path).map_err(|e| HiveError::Scenario {
            path: path.to_owned(),
            source: ScenarioError(e.to_string()),
        })?;
        Self::parse(&text).map_err(|source| HiveError::Scenario { path: path.to_owned(), source })
    }

    fn present(&self, elapsed: Duration) -> impl Iterator<Item = &SimGpu> {
        self.gpus.iter().filter(move |g| elapsed >= g.appear_at && g.remove_at.is_none_or(|r| elapsed < r))
    }

    /// The same scenario with another topology shape (`--sim-topology`).
    pub fn with_shape(mut self, shape: Shape) -> Self {
        self.shape = shape;
        self
    }

    /// The GPUs present `elapsed` after start, with their topology then.
    pub fn devices_at(&self, elapsed: Duration) -> Vec<GpuDevice> {
        let present: Vec<(usize, &SimGpu)> = self
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, g)| elapsed >= g.appear_at && g.remove_at.is_none_or(|r| elapsed < r))
            .collect();
        let slots: Vec<Slot> = present
            .iter()
            .map(|(pos, g)| Slot { pos: *pos, id: g.device.id.clone(), nvlink_up: g.nvlink_up(elapsed) })
            .collect();
        let topology = self.shape.place(self.gpus.len(), &slots);
        present
            .into_iter()
            .zip(topology)
            .map(|((_, g), topology)| GpuDevice { topology, ..g.device.clone() })
            .collect()
    }

    /// The readings of the GPUs present `elapsed` after start.
    pub fn samples_at(&self, elapsed: Duration) -> Vec<GpuSample> {
        self.readings_at(elapsed).0
    }

    /// The readings and the process lists of the GPUs present `elapsed` after start.
    pub fn readings_at(&self, elapsed: Duration) -> (Vec<GpuSample>, Vec<(String, RawProcesses)>) {
        let step = (elapsed.as_nanos() / self.step.as_nanos().max(1)) as usize;
        let mut lists = Vec::new();
        let samples = self
            .present(elapsed)
            .map(|g| {
                let list = g.processes.at(elapsed, step);
                let mut used = pick(&g.vram_used, step);
                if let (None, RawProcesses::Listed(l)) = (used, &list) {
                    let sum = l.iter().filter_map(|p| p.used_bytes).fold(0u64, u64::saturating_add);
                    used = Some(sum.min(g.device.vram_total_bytes));
                }
                if !matches!(g.processes, SimList::Absent) {
                    lists.push((g.device.id.clone(), list));
                }
                let reserved = g.vram_reserved.unwrap_or(0);
                GpuSample {
                    id: g.device.id.clone(),
                    index: g.device.index,
                    vram_used_bytes: used,
                    vram_free_bytes: used
                        .map(|u| g.device.vram_total_bytes.saturating_sub(reserved).saturating_sub(u)),
                    vram_reserved_bytes: g.vram_reserved,
                    gpu_util_percent: pick(&g.util, step),
                    mem_util_percent: None,
                    temperature_c: pick(&g.temperature, step),
                    power_draw_mw: pick(&g.power_mw, step),
                    ..GpuSample::default()
                }
            })
            .collect();
        (samples, lists)
    }
}

fn sim_list(
    at: &str,
    kind: Option<&str>,
    specs: Vec<ProcessSpecFile>,
    vram_total: u64,
) -> Result<SimList, ScenarioError> {
    let refused = match kind {
        None if specs.is_empty() => return Ok(SimList::Absent),
        None | Some("listed") => None,
        Some("no_permission") => Some(RawProcesses::NoPermission),
        Some("not_supported") => Some(RawProcesses::NotSupported),
        Some(other) => {
            return Err(format!(
                "{at}_list: {other:?} is not one of \"listed\", \"no_permission\", \"not_supported\""
            )
            .into());
        }
    };
    if let Some(r) = refused {
        return Ok(SimList::Refused(r));
    }
    let mut out = Vec::new();
    for (j, p) in specs.into_iter().enumerate() {
        let at = format!("{at}[{j}]");
        let pid = match (p.pid, p.pid_file) {
            (Some(pid), None) => SimPid::Fixed(pid),
            (None, Some(file)) => SimPid::File(file),
            _ => return Err(format!("{at}: give exactly one of pid and pid_file").into()),
        };
        let used = p
            .used
            .iter()
            .map(|b| b.bytes().map_err(|e| ScenarioError(format!("{at}.used: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(u) = used.iter().find(|&&u| u > vram_total) {
            return Err(format!("{at}.used: {u} bytes exceeds vram_total {vram_total}").into());
        }
        let appear_at = seconds(&format!("{at}.appear_at_s"), p.appear_at_s)?;
        let remove_at = p.remove_at_s.map(|s| seconds(&format!("{at}.remove_at_s"), s)).transpose()?;
        out.push(SimProcess { pid, used, appear_at, remove_at });
    }
    Ok(SimList::Listed(out))
}

impl SimList {
    /// What the simulated driver lists `elapsed` after start.
    fn at(&self, elapsed: Duration, step: usize) -> RawProcesses {
        let specs = match self {
            Self::Absent => return RawProcesses::NotSupported,
            Self::Refused(r) => return r.clone(),
            Self::Listed(specs) => specs,
        };
        let present =
            specs.iter().filter(|p| elapsed >= p.appear_at && p.remove_at.is_none_or(|r| elapsed < r));
        RawProcesses::Listed(
            present
                .filter_map(|p| {
                    let pid = match &p.pid {
                        SimPid::Fixed(pid) => *pid,
                        SimPid::File(f) => std::fs::read_to_string(f).ok()?.trim().parse().ok()?,
                    };
                    Some(RawGpuProcess { pid, used_bytes: pick(&p.used, step) })
                })
                .collect(),
        )
    }
}

/// The simulated GPU source.
pub struct SimulatedSource {
    /// The scenario.
    scenario: Scenario,
    /// Time zero of the scenario.
    start: Instant,
    /// The process lists read with the last sample.
    processes: Vec<(String, RawProcesses)>,
}

impl SimulatedSource {
    /// Starts the scenario now.
    pub fn new(scenario: Scenario) -> Self {
        Self { scenario, start: Instant::now(), processes: Vec::new() }
    }
}

impl DeviceSource for SimulatedSource {
    fn kind(&self) -> DeviceSourceKind {
        DeviceSourceKind::Simulated
    }

    fn scan(&mut self, caps: &mut Capabilities) -> Result<(), HiveError> {
        let gpus = self.scenario.devices_at(self.start.elapsed());
        if !gpus.is_empty() {
            caps.backends.push(Backend::Cuda);
        }
        caps.gpus.extend(gpus.into_iter().map(|g| (g.id.clone(), g)));
        Ok(())
    }

    fn sample(&mut self, sample: &mut Sample) -> Result<(), HiveError> {
        if !self.scenario.sample_latency.is_zero() {
            // A slow device read, as the scenario asks (runs on a blocking thread).
            std::thread::sleep(self.scenario.sample_latency);
        }
        let (gpus, processes) = self.scenario.readings_at(self.start.elapsed());
        sample.gpus.extend(gpus);
        self.processes = processes;
        Ok(())
    }

    fn gpu_processes(&mut self) -> Vec<(String, RawProcesses)> {
        std::mem::take(&mut self.processes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
        step_s = 1.0
        [[gpu]]
        id = "GPU-a"
        vram_total = "80GiB"
        util_percent = [10, 90]
        vram_used = ["1GiB", 4294967296]
        [[gpu]]
        id = "GPU-b"
        vram_total = "24GiB"
        appear_at_s = 2
        remove_at_s = 5
    "#;

    #[test]
    fn gpus_appear_and_go_on_schedule() {
        let s = Scenario::parse(TWO).unwrap();
        let ids =
            |t: f64| s.devices_at(Duration::from_secs_f64(t)).into_iter().map(|g| g.id).collect::<Vec<_>>();
        assert_eq!(ids(0.0), ["GPU-a"]);
        assert_eq!(ids(2.5), ["GPU-a", "GPU-b"]);
        assert_eq!(ids(5.0), ["GPU-a"]);
    }

    #[test]
    fn metrics_cycle_per_step_and_free_is_total_minus_used() {
        let s = Scenario::parse(TWO).unwrap();
        let at = |t| s.samples_at(Duration::from_secs_f64(t))[0].clone();
        assert_eq!(at(0.5).gpu_util_percent, Some(10.0));
        assert_eq!(at(1.5).gpu_util_percent, Some(90.0));
        assert_eq!(at(1.5).vram_used_bytes, Some(4 << 30));
        assert_eq!(at(1.5).vram_free_bytes, Some(76 << 30));
        assert_eq!(at(1.5).temperature_c, None, "unscripted metrics are absent, not 0");
    }

    #[test]
    fn reserved_vram_is_neither_used_nor_free() {
        let s = Scenario::parse(
            "[[gpu]]\nid = \"x\"\nvram_total = \"80GiB\"\nvram_used = [\"5GiB\"]\nvram_reserved = \"512MiB\"",
        )
        .unwrap();
        let g = s.samples_at(Duration::ZERO)[0].clone();
        assert_eq!(g.vram_reserved_bytes, Some(512 << 20));
        assert_eq!(g.vram_free_bytes, Some((75 << 30) - (512 << 20)));
        let over = "[[gpu]]\nid = \"x\"\nvram_total = \"1GiB\"\nvram_used = [\"1GiB\"]\nvram_reserved = 1";
        assert!(Scenario::parse(over).unwrap_err().0.contains("less vram_reserved"));
    }

    #[test]
    fn bad_scenarios_say_what_is_wrong() {
        let used_over_total = "[[gpu]]\nid = \"x\"\nvram_total = \"1GiB\"\nvram_used = [\"2GiB\"]";
        assert!(Scenario::parse(used_over_total).unwrap_err().0.contains("exceeds vram_total"));
        let dup = "[[gpu]]\nid = \"x\"\nvram_total = 1\n[[gpu]]\nid = \"x\"\nvram_total = 1";
        assert!(Scenario::parse(dup).unwrap_err().0.contains("used twice"));
        let unknown = "[[gpu]]\nid = \"x\"\nvram_total = 1\nvram = 3";
        assert!(Scenario::parse(unknown).unwrap_err().0.contains("unknown field"));
        assert!(
            Scenario::parse("[[gpu]]\nid = \"x\"\nvram_total = \"lots\"")
                .unwrap_err()
                .0
                .contains("vram_total")
        );
    }

    #[test]
    fn processes_follow_their_schedule_and_sum_to_used() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let text = format!(
            "[[gpu]]\nid = \"a\"\nvram_total = \"8GiB\"\n\
             [[gpu.process]]\npid = 7\nused = [\"1GiB\"]\n\
             [[gpu.process]]\npid_file = {pid_file:?}\nused = [\"2GiB\"]\nappear_at_s = 1\n\
             [[gpu]]\nid = \"b\"\nvram_total = 1\nprocess_list = \"no_permission\"\n\
             [[gpu]]\nid = \"c\"\nvram_total = 1\n"
        );
        let s = Scenario::parse(&text).unwrap();
        let pids = |t: f64| {
            let (gpus, lists) = s.readings_at(Duration::from_secs_f64(t));
            let RawProcesses::Listed(l) = &lists[0].1 else { panic!("{lists:?}") };
            assert_eq!(lists[1].1, RawProcesses::NoPermission);
            assert_eq!(lists.len(), 2, "a GPU without processes in its scenario has no list");
            (l.iter().map(|p| p.pid).collect::<Vec<_>>(), gpus[0].vram_used_bytes)
        };
        assert_eq!(pids(1.5), (vec![7], Some(1 << 30)), "no pid file yet, no process");
        std::fs::write(&pid_file, "4242\n").unwrap();
        assert_eq!(pids(0.5), (vec![7], Some(1 << 30)), "not yet appeared");
        assert_eq!(pids(1.5), (vec![7, 4242], Some(3 << 30)));
        let both = "[[gpu]]\nid = \"a\"\nvram_total = 1\n[[gpu.process]]\npid = 1\npid_file = \"x\"";
        assert!(Scenario::parse(both).unwrap_err().0.contains("exactly one of pid and pid_file"));
        let kind = "[[gpu]]\nid = \"a\"\nvram_total = 1\nprocess_list = \"maybe\"";
        assert!(Scenario::parse(kind).unwrap_err().0.contains("process_list"));
    }

    /// The hive's simulated scenarios and the fake NVML library's (`rbee-nvml-fake`) are
    /// one schema with one byte-size grammar: the same text, in either spelling of the
    /// shared fields, reads the same in both, and what one refuses the other refuses.
    #[test]
    fn the_fake_nvml_library_reads_the_same_schema_and_byte_sizes() {
        let sizes = ["80GiB", "80GB", "1.5TiB", "512 MiB", "8gib", "85899345920"];
        for (id, total, used, reserved) in [
            ("id", "vram_total", "vram_used", "vram_reserved"),
            ("uuid", "memory_total", "memory_used", "memory_reserved"),
        ] {
            for size in sizes {
                let size_toml = if size.bytes().all(|b| b.is_ascii_digit()) {
                    size.to_owned()
                } else {
                    format!("{size:?}")
                };
                let text = format!(
                    "[[gpu]]\n{id} = \"GPU-a\"\n{total} = {size_toml}\n{used} = [\"1MiB\", \"1.5kB\"]\n{reserved} = \"1kB\"\n"
                );
                let ours = Scenario::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                let fake = rbee_nvml_fake::scenario::Scenario::parse(&text)
                    .unwrap_or_else(|e| panic!("{text}: {e}"));
                let (o, f) = (&ours.gpus[0], &fake.gpus[0]);
                assert_eq!(o.device.id, f.uuid, "{text}");
                assert_eq!(o.device.vram_total_bytes, f.memory_total, "{text}");
                assert_eq!(o.vram_used, f.memory_used, "{text}");
                assert_eq!(o.vram_reserved, Some(f.memory_reserved), "{text}");
            }
        }
        for bad in ["\"80 parsecs\"", "\"GiB\"", "\"99999999999999999999TiB\"", "-1"] {
            let text = format!("[[gpu]]\nid = \"GPU-a\"\nvram_total = {bad}\n");
            assert!(Scenario::parse(&text).is_err(), "{text}");
            assert!(rbee_nvml_fake::scenario::Scenario::parse(&text).is_err(), "{text}");
        }
    }

    #[test]
    fn the_embedded_demo_parses() {
        assert!(!Scenario::parse(DEMO_SCENARIO).unwrap().gpus.is_empty());
    }

    #[test]
    fn a_shaped_box_reports_topology_and_a_link_down_fault_zeroes_its_links() {
        let text = "topology = \"pcie2x4\"\n\
            [[gpu]]\nid = \"a\"\nvram_total = 1\nnvlink_down_at_s = 2\nnvlink_up_at_s = 4\n\
            [[gpu]]\nid = \"b\"\nvram_total = 1\n";
        let s = Scenario::parse(text).unwrap();
        let nvlinks = |t: u64| {
            let d = s.devices_at(Duration::from_secs(t));
            (d[0].topology.links[0].nvlinks, d[1].topology.links[0].nvlinks)
        };
        assert_eq!(nvlinks(1), (Some(4), Some(4)));
        assert_eq!(nvlinks(3), (Some(0), Some(0)), "both ends see the link down");
        assert_eq!(nvlinks(5), (Some(4), Some(4)));
        let flat = s.clone().with_shape(Shape::None).devices_at(Duration::ZERO);
        assert!(flat.iter().all(|g| g.topology == rbee_shared::GpuTopology::default()));
        let demo = Scenario::parse(DEMO_SCENARIO).unwrap().devices_at(Duration::ZERO);
        assert!(demo.iter().all(|g| g.topology.numa_node.is_some()), "the demo box has a shape");
        assert!(Scenario::parse("topology = \"ring\"").unwrap_err().0.contains("ring"));
    }
}
