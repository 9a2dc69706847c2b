//! How the fleet judges freshness and health: sample interval, stale and lost
//! thresholds, history, health thresholds. Validated once at start-up.

use std::time::Duration;

use rbee_shared::SampleInterval;
use serde::{Deserialize, Serialize};

use crate::QueenError;

/// How the fleet judges its hives: the same for every hive.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Sample interval asked of every hive.
    pub sample_interval: Duration,
    /// Stale after this many intervals without an applied sample.
    pub stale_after_missed: u32,
    /// Lost after this much silence.
    pub lost_timeout: Duration,
    /// Most samples kept per hive (those inside the windows are kept; older ones
    /// are dropped).
    pub history: usize,
    /// Window of the reported statistics.
    pub stats_window: Duration,
    /// Health thresholds.
    pub thresholds: Thresholds,
    /// Most hives the queen manages.
    pub max_hives: usize,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            sample_interval: Duration::from_secs(1),
            stale_after_missed: 3,
            lost_timeout: Duration::from_secs(10),
            history: 300,
            stats_window: Duration::from_secs(60),
            thresholds: Thresholds::default(),
            max_hives: 100_000,
        }
    }
}

impl FleetSettings {
    /// Time without an applied sample after which a hive is stale.
    pub fn stale_after(&self) -> Duration {
        self.sample_interval.saturating_mul(self.stale_after_missed)
    }

    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), QueenError> {
        let bad = |m: String| Err(QueenError::Config(m));
        if let Err(e) = SampleInterval::new(self.sample_interval) {
            return bad(format!("sample_interval: {e}"));
        }
        if !(1..=100).contains(&self.stale_after_missed) {
            return bad("stale_after_missed must be 1..=100".into());
        }
        let day = Duration::from_secs(86_400);
        if self.lost_timeout > day || self.stats_window > day {
            return bad("lost_timeout and stats_window must be at most 1 day".into());
        }
        if self.lost_timeout <= self.stale_after() {
            return bad(format!(
                "lost_timeout ({}) must be longer than stale_after_missed x sample_interval ({})",
                humantime::format_duration(self.lost_timeout),
                humantime::format_duration(self.stale_after())
            ));
        }
        if self.history == 0 || self.history > 86_400 {
            return bad("history must be 1..=86400 samples".into());
        }
        self.thresholds.validate()
    }
}

/// Health thresholds (config file `[health]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// CPU mean over `cpu_window` at or above this is degraded (above 100: never, for
    /// hosts that run flat out by design).
    pub cpu_degraded_percent: f32,
    /// The window the CPU mean is taken over, so that one spike is not "degraded".
    #[serde(with = "rbee_shared::duration_serde")]
    pub cpu_window: Duration,
    /// RAM used at or above this is degraded.
    pub ram_degraded_percent: f32,
    /// RAM used at or above this is unhealthy.
    pub ram_unhealthy_percent: f32,
    /// GPU temperature at or above this is degraded.
    pub gpu_temp_degraded_c: f32,
    /// GPU temperature at or above this is unhealthy.
    pub gpu_temp_unhealthy_c: f32,
    /// VRAM used at or above this percentage of total is degraded.
    pub vram_degraded_percent: f32,
    /// A sample stamped further than this from the queen's clock when it arrived is
    /// degraded (the hive's clock, or what it says, cannot be believed).
    #[serde(with = "rbee_shared::duration_serde")]
    pub max_clock_skew: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            cpu_degraded_percent: 95.0,
            cpu_window: Duration::from_secs(10),
            ram_degraded_percent: 90.0,
            ram_unhealthy_percent: 97.0,
            gpu_temp_degraded_c: 85.0,
            gpu_temp_unhealthy_c: 90.0,
            vram_degraded_percent: 98.0,
            max_clock_skew: Duration::from_secs(60),
        }
    }
}

impl Thresholds {
    /// Checks that every threshold is a sensible number.
    pub fn validate(&self) -> Result<(), QueenError> {
        if !(self.cpu_degraded_percent.is_finite() && (0.0..=1000.0).contains(&self.cpu_degraded_percent)) {
            return Err(QueenError::Config(format!(
                "health.cpu_degraded_percent = {} must be in 0..=1000",
                self.cpu_degraded_percent
            )));
        }
        for (name, v) in [
            ("ram_degraded_percent", self.ram_degraded_percent),
            ("ram_unhealthy_percent", self.ram_unhealthy_percent),
            ("vram_degraded_percent", self.vram_degraded_percent),
        ] {
            if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
                return Err(QueenError::Config(format!("health.{name} = {v} must be in 0..=100")));
            }
        }
        if self.ram_degraded_percent > self.ram_unhealthy_percent {
            return Err(QueenError::Config(
                "health.ram_degraded_percent must not exceed ram_unhealthy_percent".into(),
            ));
        }
        if !(self.gpu_temp_degraded_c.is_finite() && self.gpu_temp_unhealthy_c.is_finite())
            || self.gpu_temp_degraded_c > self.gpu_temp_unhealthy_c
        {
            return Err(QueenError::Config(
                "health.gpu_temp_degraded_c must be <= gpu_temp_unhealthy_c".into(),
            ));
        }
        if self.cpu_window.is_zero() {
            return Err(QueenError::Config("health.cpu_window must be > 0".into()));
        }
        if self.max_clock_skew.is_zero() {
            return Err(QueenError::Config("health.max_clock_skew must be > 0".into()));
        }
        Ok(())
    }
}
