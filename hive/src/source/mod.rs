//! Device sources: where the hive's knowledge of its hardware comes from.
//!
//! Each source contributes its part of the capabilities and of every sample:
//! [`system::SystemSource`] (CPU and RAM from `/proc`, [`procfs`]), [`nvml::NvmlSource`]
//! (NVIDIA GPUs through NVML) and [`simulated::SimulatedSource`] (fake GPUs from a
//! scenario file, for tests and demos only).

pub mod nvml;
pub mod nvml_calls;
pub mod nvml_topology;
pub mod procfs;
pub mod sim_topology;
pub mod simulated;
pub mod system;

use rbee_shared::{Capabilities, DeviceSourceKind, Sample};

use crate::HiveError;

/// One source of capabilities and live readings. Calls may block (NVML does), so the
/// hive calls them from blocking threads, one at a time per source.
pub trait DeviceSource: Send {
    /// Which kind of GPU source this is (`None` for host-only sources).
    fn kind(&self) -> DeviceSourceKind;

    /// Fills in this source's part of the capabilities. A device that cannot be read
    /// (e.g. it fell off the bus) is left out, not an error.
    fn scan(&mut self, caps: &mut Capabilities) -> Result<(), HiveError>;

    /// Fills in this source's part of a sample. A metric that cannot be read stays `None`.
    fn sample(&mut self, sample: &mut Sample) -> Result<(), HiveError>;

    /// The compute processes on this source's GPUs, read with the last [`Self::sample`],
    /// by GPU id. A GPU left out keeps an absent list. The monitor enriches, sorts and
    /// bounds them ([`crate::procs`]). Host-only sources have none.
    fn gpu_processes(&mut self) -> Vec<(String, RawProcesses)> {
        Vec::new()
    }
}

/// One compute process as the driver lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawGpuProcess {
    /// Its pid (NVML's `pid`).
    pub pid: u32,
    /// VRAM it uses on the GPU (`usedGpuMemory`; `None` when the driver says
    /// `NVML_VALUE_NOT_AVAILABLE`).
    pub used_bytes: Option<u64>,
}

/// What a GPU source knows of one GPU's compute processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawProcesses {
    /// The driver listed these (maybe none).
    Listed(Vec<RawGpuProcess>),
    /// The driver refused to list them (`NVML_ERROR_NO_PERMISSION`): the list is absent.
    NoPermission,
    /// The driver cannot list them (`NVML_ERROR_NOT_SUPPORTED`, or a driver without the
    /// call): the list is absent.
    NotSupported,
}
