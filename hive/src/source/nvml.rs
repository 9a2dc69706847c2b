//! NVIDIA GPUs through NVML. `libnvidia-ml.so` is loaded at run time, so the hive
//! runs (CPU only) on machines without the driver.
//!
//! A GPU the driver lists but that does not answer (GPU_IS_LOST, "fell off the bus",
//! or any other error opening it or reading its memory) is left out of the
//! capabilities and reported in every sample's `lost_gpus`, with the driver's answer,
//! until it answers again. Every other reading that fails (NOT_SUPPORTED, a symbol
//! an old driver lacks) costs only that field.
//!
//! Topology (NUMA node, CPU affinity, PCIe levels, NVLink) is read by
//! [`super::nvml_topology`] at every scan, never per sample. A GPU in MIG mode with
//! MIG instances is listed as those instances: each a device with its own UUID and
//! memory (sampled like a GPU's) and `mig_parent` naming the GPU.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::MemoryInfo;
use nvml_wrapper::{Device, EventSet, Nvml};
use rbee_shared::{
    Backend, Capabilities, ComputeCapability, DeviceSourceKind, GpuDevice, GpuSample, GpuTopology, LostGpu,
    MigMode, Sample,
};

use super::DeviceSource;
use super::nvml_calls::{NvmlCall, NvmlCalls};
use super::nvml_topology::{self, Physical};
use crate::HiveError;

/// Critical XID events seen on one GPU.
#[derive(Debug, Default, Clone, Copy)]
struct XidCount {
    /// Events seen since the hive started.
    count: u64,
    /// The last XID code.
    last: Option<u64>,
}

/// GPUs read through NVML.
pub struct NvmlSource {
    /// The NVML handle. It lives for the whole process (NVML is process-global), so it
    /// is leaked once, which lets the event set borrow it for `'static`.
    nvml: &'static Nvml,
    /// Critical-XID event registrations, when the driver supports them.
    events: Option<EventSet<'static>>,
    /// GPU ids already registered for XID events.
    registered: HashSet<String>,
    /// XID counts per GPU id.
    xids: HashMap<String, XidCount>,
    /// Driver version, read once.
    driver_version: Option<String>,
    /// CUDA driver API version, read once.
    cuda_version: Option<String>,
    /// GPUs that do not answer, by index, since when and why (logged once each).
    lost: BTreeMap<u32, LostGpu>,
    /// The id each index last answered with, to name a GPU once it is lost.
    last_ids: HashMap<u32, String>,
    /// The process lists read with the last sample, by GPU id, for `gpu_processes`.
    processes: Vec<(String, super::RawProcesses)>,
    /// GPUs in MIG mode listed as their MIG instances at the last scan, by GPU id:
    /// samples read the instances' memory instead of the GPU's.
    mig_parents: HashSet<String>,
    /// How long each kind of call takes (the hive's `/metrics`).
    calls: Arc<NvmlCalls>,
}

/// What the driver answered, for a lost GPU's reason: the `nvml.h` code name where
/// there is one, then nvml-wrapper's words.
fn reason(what: &str, e: &NvmlError) -> String {
    let code = match e {
        NvmlError::GpuLost => "GPU_IS_LOST: ",
        NvmlError::NotSupported => "NOT_SUPPORTED: ",
        NvmlError::NoPermission => "NO_PERMISSION: ",
        NvmlError::ResetRequired => "RESET_REQUIRED: ",
        NvmlError::Unknown => "UNKNOWN: ",
        _ => "",
    };
    format!("{what}: {code}{e}")
}

impl NvmlSource {
    /// Loads and initialises NVML, from `lib` when given (else the system's
    /// `libnvidia-ml.so`). Fails when the library or the driver is missing.
    pub fn new(lib: Option<&Path>) -> Result<Self, HiveError> {
        let mut builder = Nvml::builder();
        if let Some(lib) = lib {
            builder.lib_path(lib.as_os_str());
        }
        let nvml =
            builder.init().map_err(|e| HiveError::Source { source_name: "nvml", reason: e.to_string() })?;
        let nvml: &'static Nvml = Box::leak(Box::new(nvml));
        let cuda_version = nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        });
        Ok(Self {
            nvml,
            events: nvml.create_event_set().ok(),
            registered: HashSet::new(),
            xids: HashMap::new(),
            driver_version: nvml.sys_driver_version().ok(),
            cuda_version,
            lost: BTreeMap::new(),
            last_ids: HashMap::new(),
            processes: Vec::new(),
            mig_parents: HashSet::new(),
            calls: Arc::new(NvmlCalls::new()),
        })
    }

    /// The latency histograms of this source's NVML calls.
    pub fn calls(&self) -> Arc<NvmlCalls> {
        self.calls.clone()
    }

    /// Records that the GPU at `index` does not answer (logged once).
    fn mark_lost(&mut self, index: u32, why: String) {
        let id = self.last_ids.get(&index).cloned();
        if let Some(known) = self.lost.get_mut(&index) {
            known.reason = why;
            return;
        }
        tracing::warn!(index, id = id.as_deref().unwrap_or("-"), reason = %why, "GPU does not answer; leaving it out until it does");
        let since_unix_ms = rbee_shared::time::now_unix_ms();
        self.lost.insert(index, LostGpu { index, id, reason: why, since_unix_ms });
    }

    /// Records that the GPU at `index` answers as `id`.
    fn mark_answering(&mut self, index: u32, id: &str) {
        if self.lost.remove(&index).is_some() {
            tracing::info!(index, %id, "GPU answers again");
        }
    }

    /// Every GPU NVML can open now and whose memory it can read, with its index, id
    /// and memory. A GPU that fails is marked lost (e.g. "fell off the bus") and left
    /// out; GPUs beyond the driver's count are forgotten.
    fn devices(&mut self) -> Result<Vec<(u32, String, Device<'static>, MemoryInfo)>, HiveError> {
        let calls = self.calls.clone();
        let count = calls
            .time(NvmlCall::DeviceCount, || self.nvml.device_count())
            .map_err(|e| HiveError::Source { source_name: "nvml", reason: format!("device count: {e}") })?;
        let mut out = Vec::with_capacity(count as usize);
        self.lost.retain(|index, _| *index < count);
        for index in 0..count {
            let opened = calls.time(NvmlCall::Handle, || {
                self.nvml.device_by_index(index).map_err(|e| reason("open", &e)).and_then(|d| {
                    let id = d.uuid().map_err(|e| reason("uuid", &e))?;
                    Ok((d, id))
                })
            });
            let (device, id) = match opened {
                Ok(opened) => opened,
                Err(why) => {
                    self.mark_lost(index, why);
                    continue;
                }
            };
            self.last_ids.insert(index, id.clone());
            // Without its memory a GPU cannot be placed on: it counts as not answering.
            match calls.time(NvmlCall::MemoryInfo, || device.memory_info()) {
                Ok(memory) => {
                    self.mark_answering(index, &id);
                    out.push((index, id, device, memory));
                }
                Err(e) => self.mark_lost(index, reason("memory info", &e)),
            }
        }
        Ok(out)
    }

    /// Registers a GPU for critical XID events, once, where the driver supports it.
    fn register_xid(&mut self, id: &str, device: &Device<'static>) {
        if self.registered.contains(id) {
            return;
        }
        self.registered.insert(id.to_owned());
        let supported = device.supported_event_types().map(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
        if !matches!(supported, Ok(true)) {
            return;
        }
        let Some(set) = self.events.take() else { return };
        match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(set) => {
                self.events = Some(set);
                self.xids.entry(id.to_owned()).or_default();
            }
            Err(e) => {
                tracing::debug!(%id, error = %e, "cannot register for XID events");
                // A failed registration releases the set; start a new one for the others.
                self.events = self.nvml.create_event_set().ok();
            }
        }
    }

    /// Drains pending XID events without waiting.
    fn drain_xids(&mut self) {
        let Some(set) = &self.events else { return };
        for _ in 0..256 {
            match self.calls.time(NvmlCall::Events, || set.wait(0)) {
                Ok(event) => {
                    let Ok(id) = event.device.uuid() else { continue };
                    let entry = self.xids.entry(id).or_default();
                    entry.count += 1;
                    if let Some(XidError::Value(code)) = event.event_data {
                        entry.last = Some(code);
                    }
                }
                Err(NvmlError::Timeout) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "XID event wait failed");
                    break;
                }
            }
        }
    }

    fn describe(&self, index: u32, id: String, d: &Device<'static>, vram_total_bytes: u64) -> GpuDevice {
        GpuDevice {
            id,
            index,
            name: d.name().unwrap_or_default(),
            pci_bus_id: d.pci_info().map(|p| p.bus_id).unwrap_or_default(),
            compute_capability: d.cuda_compute_capability().ok().map(|c| ComputeCapability {
                major: u32::try_from(c.major).unwrap_or(0),
                minor: u32::try_from(c.minor).unwrap_or(0),
            }),
            vram_total_bytes,
            driver_version: self.driver_version.clone(),
            cuda_version: self.cuda_version.clone(),
            power_limit_mw: d.enforced_power_limit().ok(),
            mig_mode: match d.mig_mode() {
                Ok(m) if m.current == 1 => MigMode::Enabled,
                Ok(_) => MigMode::Disabled,
                Err(_) => MigMode::NotReported,
            },
            // Filled by `scan` once every GPU is described (nvml_topology).
            topology: Default::default(),
        }
    }
}

impl DeviceSource for NvmlSource {
    fn kind(&self) -> DeviceSourceKind {
        DeviceSourceKind::Nvml
    }

    /// Lists every GPU that answers. A GPU in MIG mode with MIG instances is listed as
    /// its instances (each with its own id and memory, `mig_parent` its GPU); every
    /// other GPU as itself, with its topology (read here, never per sample).
    fn scan(&mut self, caps: &mut Capabilities) -> Result<(), HiveError> {
        let mut described = Vec::new();
        for (index, id, device, memory) in self.devices()? {
            self.register_xid(&id, &device);
            let gpu = self.calls.time(NvmlCall::Describe, || self.describe(index, id, &device, memory.total));
            let instances = if gpu.mig_mode == MigMode::Enabled {
                self.calls.time(NvmlCall::Mig, || mig_instances(&device))
            } else {
                Vec::new()
            };
            let place = match instances.is_empty() {
                true => (None, None),
                false => nvml_topology::place(&device, &gpu.pci_bus_id),
            };
            described.push((gpu, instances, place));
        }
        let physical: Vec<Physical> = described
            .iter()
            .filter(|(_, instances, _)| instances.is_empty())
            .map(|(g, _, _)| Physical { index: g.index, id: g.id.clone(), bus_id: g.pci_bus_id.clone() })
            .collect();
        let mut topology = self.calls.time(NvmlCall::Topology, || nvml_topology::read(self.nvml, &physical));
        self.mig_parents.clear();
        for (mut gpu, instances, (numa_node, cpu_affinity)) in described {
            if instances.is_empty() {
                gpu.topology = topology.remove(&gpu.id).unwrap_or_default();
                caps.gpus.insert(gpu.id.clone(), gpu);
                continue;
            }
            self.mig_parents.insert(gpu.id.clone());
            for (id, d, memory) in instances {
                let instance = GpuDevice {
                    id,
                    name: d.name().unwrap_or_else(|_| format!("{} MIG", gpu.name)),
                    vram_total_bytes: memory.total,
                    power_limit_mw: None,
                    topology: GpuTopology {
                        numa_node,
                        cpu_affinity: cpu_affinity.clone(),
                        mig_parent: Some(gpu.id.clone()),
                        links: Vec::new(),
                    },
                    ..gpu.clone()
                };
                caps.gpus.insert(instance.id.clone(), instance);
            }
        }
        if !caps.gpus.is_empty() {
            caps.backends.push(Backend::Cuda);
        }
        Ok(())
    }

    fn sample(&mut self, sample: &mut Sample) -> Result<(), HiveError> {
        self.drain_xids();
        self.processes.clear();
        let calls = self.calls.clone();
        for (index, id, d, memory) in self.devices()? {
            if self.mig_parents.contains(&id) {
                // Its MIG instances are the devices: their memory, like a GPU's.
                for (id, _, memory) in calls.time(NvmlCall::Mig, || mig_instances(&d)) {
                    sample.gpus.push(GpuSample {
                        index,
                        id,
                        vram_used_bytes: Some(memory.used),
                        vram_free_bytes: Some(memory.free),
                        vram_reserved_bytes: Some(memory.reserved),
                        ..GpuSample::default()
                    });
                }
                continue;
            }
            let memory = Some(memory);
            let util = calls.time(NvmlCall::Utilization, || d.utilization_rates()).ok();
            let xid = self.xids.get(&id).copied();
            if let Some(list) = calls.time(NvmlCall::Processes, || raw_processes(&d)) {
                self.processes.push((id.clone(), list));
            }
            sample.gpus.push(GpuSample {
                index,
                vram_used_bytes: memory.as_ref().map(|m| m.used),
                vram_free_bytes: memory.as_ref().map(|m| m.free),
                gpu_util_percent: util.as_ref().map(|u| u.gpu.min(100) as f32),
                mem_util_percent: util.as_ref().map(|u| u.memory.min(100) as f32),
                temperature_c: calls
                    .time(NvmlCall::Temperature, || d.temperature(TemperatureSensor::Gpu))
                    .ok()
                    .map(|t| t as f32),
                power_draw_mw: calls.time(NvmlCall::Power, || d.power_usage()).ok(),
                sm_clock_mhz: calls.time(NvmlCall::Clocks, || d.clock_info(Clock::SM)).ok(),
                mem_clock_mhz: calls.time(NvmlCall::Clocks, || d.clock_info(Clock::Memory)).ok(),
                ecc_corrected_volatile: calls
                    .time(NvmlCall::Ecc, || d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile))
                    .ok(),
                ecc_uncorrected_volatile: calls
                    .time(NvmlCall::Ecc, || {
                        d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                    })
                    .ok(),
                xid_events: xid.map(|x| x.count),
                last_xid: xid.and_then(|x| x.last),
                vram_reserved_bytes: memory.as_ref().map(|m| m.reserved),
                id,
                ..GpuSample::default()
            });
        }
        sample.lost_gpus = self.lost.values().cloned().collect();
        Ok(())
    }

    fn gpu_processes(&mut self) -> Vec<(String, super::RawProcesses)> {
        std::mem::take(&mut self.processes)
    }
}

/// The MIG instances of a GPU in MIG mode that answer, in index order: id, handle
/// and memory. Empty when the GPU has none (or the driver cannot list them).
fn mig_instances(device: &Device<'static>) -> Vec<(String, Device<'static>, MemoryInfo)> {
    let Ok(max) = device.mig_device_count() else { return Vec::new() };
    (0..max)
        .filter_map(|i| {
            let d = device.mig_device_by_index(i).ok()?;
            let id = d.uuid().ok()?;
            let memory = d.memory_info().ok()?;
            Some((id, d, memory))
        })
        .collect()
}

/// The compute processes on one GPU, for [`DeviceSource::gpu_processes`]
/// (`nvmlDeviceGetComputeRunningProcesses_v3`). NO_PERMISSION and NOT_SUPPORTED (or a
/// driver without the symbol) leave the list absent and say why; any other error (e.g. the GPU
/// is lost) gives `None`: the GPU is left out.
pub fn raw_processes(device: &Device<'_>) -> Option<super::RawProcesses> {
    use super::{RawGpuProcess, RawProcesses};
    use nvml_wrapper::enums::device::UsedGpuMemory;
    match device.running_compute_processes() {
        Ok(list) => Some(RawProcesses::Listed(
            list.into_iter()
                .map(|p| RawGpuProcess {
                    pid: p.pid,
                    used_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b),
                        UsedGpuMemory::Unavailable => None,
                    },
                })
                .collect(),
        )),
        Err(NvmlError::NoPermission) => Some(RawProcesses::NoPermission),
        Err(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_)) => Some(RawProcesses::NotSupported),
        Err(e) => {
            tracing::debug!(error = %e, "cannot list a GPU's compute processes");
            None
        }
    }
}
