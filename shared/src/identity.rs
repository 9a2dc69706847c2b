//! Who a hive is.

use std::collections::BTreeMap;

/// Where a hive's GPU data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSourceKind {
    /// No GPU source (NVML not available): CPU only.
    None,
    /// Real NVIDIA GPUs through NVML.
    Nvml,
    /// Simulated GPUs from a scenario file: tests and demos only.
    Simulated,
}

impl DeviceSourceKind {
    /// A short lower-case name for logs and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Nvml => "nvml",
            Self::Simulated => "simulated",
        }
    }
}

/// A hive's identity as reported by `Discover`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HiveIdentity {
    /// Stable across restarts.
    pub hive_id: String,
    /// New at every process start.
    pub epoch: String,
    /// The machine's hostname.
    pub hostname: String,
    /// The address the queen should dial.
    pub advertised_address: String,
    /// The hive software version.
    pub version: String,
    /// The wire protocol version.
    pub protocol_version: u32,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Where the GPU data comes from.
    pub gpu_source: DeviceSourceKind,
    /// Process start, ms since the Unix epoch.
    pub started_at_unix_ms: u64,
}
