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

/// Longest hive id accepted.
pub const MAX_HIVE_ID_LEN: usize = 64;

/// Why a hive id is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HiveIdError(pub String);

/// The one hive-id rule, at every door that takes one (the hive's `--hive-id` and state
/// file, `Announce`, `Discover`'s identity): 1..=64 of `[A-Za-z0-9._-]`.
pub fn check_hive_id(id: &str) -> Result<(), HiveIdError> {
    if id.is_empty() || id.len() > MAX_HIVE_ID_LEN {
        return Err(HiveIdError(format!("hive id {id:?} must be 1..={MAX_HIVE_ID_LEN} characters")));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(HiveIdError(format!(
            "hive id {id:?} contains {c:?}; use letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(())
}

/// The name a hive goes by in tables, logs and metrics: its hive id, else (not yet
/// discovered) its address.
pub fn display_name<'a>(hive_id: &'a str, address: &'a str) -> &'a str {
    if hive_id.is_empty() { address } else { hive_id }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hive_id_rule_and_the_display_name() {
        assert!(check_hive_id("gpu-node-7.a_b").is_ok());
        assert!(check_hive_id(&"x".repeat(MAX_HIVE_ID_LEN)).is_ok());
        for bad in ["", "has space", "a/b", "é"] {
            assert!(check_hive_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_hive_id(&"x".repeat(MAX_HIVE_ID_LEN + 1)).unwrap_err().0.contains("1..=64"));
        assert_eq!(display_name("gpu-7", "http://127.0.0.1:1"), "gpu-7");
        assert_eq!(display_name("", "http://127.0.0.1:1"), "http://127.0.0.1:1");
    }
}
