//! Where a model's weights are on a hive, from the hive's own reports: its catalog
//! (state, size, page-cache residency) and its measured read speeds. Used by
//! `fleet.nearest_weights`, the Rhai `hive.models` API and the `Place` answer.

use rbee_shared::{ModelEntry, ModelState};

use crate::fleet::HiveSnapshot;

/// At least this share resident counts as "in RAM".
pub const RAM_SHARE: f64 = 0.9;

/// Where a model's weights are on a hive, nearest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// Ready, and at least [`RAM_SHARE`] of it in the page cache.
    Ram,
    /// Ready on disk.
    Disk,
    /// Not ready there.
    Absent,
}

impl Tier {
    /// The lowercase name policies see.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ram => "ram",
            Self::Disk => "disk",
            Self::Absent => "absent",
        }
    }
}

/// The hive's catalog entry for `model`.
pub fn entry<'a>(hive: &'a HiveSnapshot, model: &str) -> Option<&'a ModelEntry> {
    hive.caps.as_ref()?.caps.models.get(model)
}

/// Share of a ready `model` resident in the hive's page cache (0 when absent or not
/// measured).
pub fn resident_fraction(hive: &HiveSnapshot, model: &str) -> f64 {
    match entry(hive, model) {
        Some(m) if m.state == ModelState::Ready && m.size_bytes > 0 => {
            m.resident_bytes.unwrap_or(0) as f64 / m.size_bytes as f64
        }
        Some(m) if m.state == ModelState::Ready => 1.0,
        _ => 0.0,
    }
}

/// Where `model` is on the hive.
pub fn tier(hive: &HiveSnapshot, model: &str) -> Tier {
    match entry(hive, model) {
        Some(m) if m.state == ModelState::Ready => {
            if resident_fraction(hive, model) >= RAM_SHARE {
                Tier::Ram
            } else {
                Tier::Disk
            }
        }
        _ => Tier::Absent,
    }
}

/// Where the weights are, their size and the estimated load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    /// The tier.
    pub tier: Tier,
    /// The model's size on the hive (absent: `None`).
    pub bytes: Option<u64>,
    /// Size divided by the hive's measured read speed for the tier, ms.
    pub est_load_ms: Option<u64>,
}

/// Where `model`'s weights are on the hive, with a load-time estimate.
pub fn weights(hive: &HiveSnapshot, model: &str) -> Weights {
    let tier = tier(hive, model);
    let bytes = (tier != Tier::Absent).then(|| entry(hive, model).map_or(0, |m| m.size_bytes));
    let bw = hive.latest.as_ref().and_then(|s| s.read_bandwidth);
    let speed = match tier {
        Tier::Ram => bw.and_then(|b| b.ram_bytes_per_s),
        Tier::Disk => bw.and_then(|b| b.disk_bytes_per_s),
        Tier::Absent => None,
    };
    let est_load_ms = match (bytes, speed) {
        (Some(b), Some(s)) if s > 0.0 => Some((b as f64 / s * 1000.0).ceil() as u64),
        _ => None,
    };
    Weights { tier, bytes, est_load_ms }
}
