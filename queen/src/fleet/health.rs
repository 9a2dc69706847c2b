//! Health levels and reports, as the fleet publishes them. The rules that judge them
//! live in `link::health`.

use serde::Serialize;

/// A health level; ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Nothing wrong.
    #[default]
    Healthy,
    /// A device the hive added but has not measured yet. Never a hive's level: it
    /// keeps the device out of placement, not the hive.
    Pending,
    /// Usable, but something needs attention.
    Degraded,
    /// Do not place work here.
    Unhealthy,
}

impl Health {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Pending => "pending",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// The health of one device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceHealth {
    /// The GPU id.
    pub device_id: String,
    /// The GPU index.
    pub index: u32,
    /// Its level.
    pub health: Health,
    /// Why, when not healthy.
    pub reasons: Vec<String>,
}

/// The health of a hive and its devices.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct HealthReport {
    /// The hive's level: the worst of its own and its devices'.
    pub health: Health,
    /// Why, when not healthy (device reasons included).
    pub reasons: Vec<String>,
    /// Per device.
    pub devices: Vec<DeviceHealth>,
    /// The level placement judges: `health` less the notices that say nothing about
    /// what the hive can run (its view cut to the budgets), so that a big catalog or a
    /// refused download never takes a hive out of placement.
    #[serde(skip)]
    pub placement: Health,
    /// Set when the hive's CPU load is at or above the degraded threshold. It degrades
    /// `health` but not `placement`: GPU work still goes there (ranked after calmer
    /// hives' devices of equal load), work on the hive's CPU does not.
    #[serde(skip)]
    pub cpu_busy: Option<CpuBusy>,
}

/// A hive's CPU load over the degraded threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuBusy {
    /// The threshold passed (percent, `health.cpu_degraded_percent`).
    pub limit_percent: f32,
    /// The health reason, e.g. "cpu 97% (10 s mean) >= 95%".
    pub reason: String,
}
