//! What a hive has: its GPUs, CPU, RAM, backends and labels.

use std::collections::BTreeMap;

/// A compute backend the hive can run workers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Plain CPU inference; always present.
    Cpu,
    /// NVIDIA CUDA; present when at least one GPU is visible.
    Cuda,
}

/// Whether a GPU runs in Multi-Instance GPU mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigMode {
    /// The driver did not report a MIG mode (the GPU may not support MIG).
    #[default]
    NotReported,
    /// MIG is supported and disabled.
    Disabled,
    /// MIG is enabled.
    Enabled,
}

/// CUDA compute capability, e.g. 9.0 for H100/H200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ComputeCapability {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

/// The static description of one GPU.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GpuDevice {
    /// Stable id: the NVML UUID (survives reboots and re-enumeration).
    pub id: String,
    /// The NVML index.
    pub index: u32,
    /// Marketing name, e.g. "NVIDIA H200".
    pub name: String,
    /// PCI bus id, e.g. "00000000:19:00.0".
    pub pci_bus_id: String,
    /// CUDA compute capability, when reported.
    pub compute_capability: Option<ComputeCapability>,
    /// Total VRAM in bytes.
    pub vram_total_bytes: u64,
    /// Driver version, when reported.
    pub driver_version: Option<String>,
    /// CUDA driver API version ("12.4"), when reported.
    pub cuda_version: Option<String>,
    /// Enforced power limit in milliwatts, when reported.
    pub power_limit_mw: Option<u32>,
    /// MIG mode.
    pub mig_mode: MigMode,
    /// NUMA node, CPU affinity, MIG parent and links to the other GPUs.
    pub topology: crate::GpuTopology,
}

/// The host CPU.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct CpuInfo {
    /// Model name as the OS reports it.
    pub model: String,
    /// Physical cores, when the OS reports them.
    pub physical_cores: Option<u32>,
    /// Logical cores (hardware threads).
    pub logical_cores: u32,
}

/// Everything a hive has, without a version.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Capabilities {
    /// GPUs keyed by their stable id.
    pub gpus: BTreeMap<String, GpuDevice>,
    /// The host CPU.
    pub cpu: CpuInfo,
    /// Total RAM in bytes.
    pub ram_total_bytes: u64,
    /// Detected backends, sorted and unique.
    pub backends: Vec<Backend>,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// The models directory's catalog, by model id.
    pub models: BTreeMap<String, crate::ModelEntry>,
}

impl Capabilities {
    /// GPUs in NVML index order (then id), the order users expect to read them in.
    pub fn gpus_by_index(&self) -> Vec<&GpuDevice> {
        let mut gpus: Vec<&GpuDevice> = self.gpus.values().collect();
        gpus.sort_by(|a, b| (a.index, &a.id).cmp(&(b.index, &b.id)));
        gpus
    }
}

/// Capabilities with the version they carry within one hive epoch.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct VersionedCapabilities {
    /// Increases by one at every change within an epoch; starts at 1.
    pub version: u64,
    /// The capabilities at that version.
    pub caps: Capabilities,
}
