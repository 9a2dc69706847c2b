//! Device sources: where the hive's knowledge of its hardware comes from.
//!
//! Each source contributes its part of the capabilities and of every sample:
//! [`system::SystemSource`] (CPU and RAM through sysinfo), [`nvml::NvmlSource`]
//! (NVIDIA GPUs through NVML) and [`simulated::SimulatedSource`] (fake GPUs from a
//! scenario file, for tests and demos only).

pub mod nvml;
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
}
