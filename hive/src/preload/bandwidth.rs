//! The hive's measured read speeds for model files: from disk (pages not cached) and
//! from RAM (pages cached), smoothed over its own preloads. The queen divides a model's
//! size by these to estimate a load time.

use std::sync::Mutex;

use rbee_shared::ReadBandwidth;
use rbee_shared::lock::MutexExt;

/// Weight of the newest measurement.
const ALPHA: f64 = 0.5;

/// Smoothed read speeds.
#[derive(Default)]
pub struct Bandwidth {
    /// The current figures.
    now: Mutex<ReadBandwidth>,
}

impl Bandwidth {
    /// The current figures.
    pub fn get(&self) -> ReadBandwidth {
        *self.now.lock_unpoisoned()
    }

    /// A read from disk at `bps` bytes per second.
    pub fn record_disk(&self, bps: f64) {
        let mut now = self.now.lock_unpoisoned();
        now.disk_bytes_per_s = Some(smooth(now.disk_bytes_per_s, bps));
    }

    /// A read from the page cache at `bps` bytes per second.
    pub fn record_ram(&self, bps: f64) {
        let mut now = self.now.lock_unpoisoned();
        now.ram_bytes_per_s = Some(smooth(now.ram_bytes_per_s, bps));
    }
}

fn smooth(old: Option<f64>, new: f64) -> f64 {
    match old {
        Some(o) => ALPHA * new + (1.0 - ALPHA) * o,
        None => new,
    }
}
