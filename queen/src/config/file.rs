//! The queen's TOML config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::QueenError;
use crate::fleet::Thresholds;

/// A `[[hive]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiveEntry {
    /// The hive's address.
    pub address: String,
}

/// The config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Listen address.
    pub listen: Option<SocketAddr>,
    /// Static hives.
    pub hive: Vec<HiveEntry>,
    /// Allow-list for hives added over the API or announced (config-file hives are exempt).
    pub allow: Option<Vec<IpNet>>,
    /// Start a local hive.
    pub local_hive: Option<bool>,
    /// Sample interval.
    #[serde(default, with = "rbee_shared::duration_serde::option")]
    pub sample_interval: Option<Duration>,
    /// Stale after this many intervals.
    pub stale_after_missed: Option<u32>,
    /// Lost timeout.
    #[serde(default, with = "rbee_shared::duration_serde::option")]
    pub lost_timeout: Option<Duration>,
    /// Keepalive.
    #[serde(default, with = "rbee_shared::duration_serde::option")]
    pub keepalive: Option<Duration>,
    /// Max backoff.
    #[serde(default, with = "rbee_shared::duration_serde::option")]
    pub backoff_max: Option<Duration>,
    /// Most samples kept per hive (those inside the windows are kept; older ones
    /// are dropped).
    pub history: Option<usize>,
    /// Window of the reported statistics.
    #[serde(default, with = "rbee_shared::duration_serde::option")]
    pub stats_window: Option<Duration>,
    /// Health thresholds.
    pub health: Thresholds,
    /// Placement policy file.
    pub policy: Option<PathBuf>,
    /// Fall back to the built-in policy when the policy fails.
    pub policy_fallback: Option<bool>,
    /// Wall-time budget of one policy call.
    #[serde(default, with = "rbee_shared::duration_serde::option")]
    pub policy_budget: Option<Duration>,
    /// Drop reservations on hives lost longer than this.
    #[serde(default, with = "rbee_shared::duration_serde::option")]
    pub reservation_lost_grace: Option<Duration>,
    /// Most reservations per hive.
    pub max_reservations_per_hive: Option<usize>,
    /// Most reservations in all.
    pub max_reservations: Option<usize>,
    /// Rank placements exactly while the fleet has at most this many hives.
    pub place_exact_up_to: Option<usize>,
    /// The state directory.
    pub state_dir: Option<PathBuf>,
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, QueenError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| QueenError::Io { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|e| QueenError::Config(format!("{}: {e}", path.display())))
    }
}
