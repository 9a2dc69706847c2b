//! Counters kept where events happen (the scheduler's `place`), read at scrape time.
//! A leaf: it imports nothing of the crate, and takes a plain [`PlaceResult`], so the
//! scheduler records into it without this file or the rest of `metrics` depending on
//! the scheduler.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

/// How a `Place` call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceResult {
    /// Placed (a reservation, or a dry run's answer).
    Placed,
    /// The policy or the fleet said no.
    Rejected,
    /// An error answered (policy failure, books full, store write failed).
    Error,
}

impl PlaceResult {
    /// Every outcome, in label order.
    pub const ALL: [Self; 3] = [Self::Placed, Self::Rejected, Self::Error];

    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Rejected => "rejected",
            Self::Error => "error",
        }
    }
}

/// The bucket bounds of the placement latency histogram, in seconds (100 µs .. 2.5 s).
pub const PLACE_BUCKETS: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// Placement counts by outcome and their latency.
#[derive(Debug)]
pub struct PlaceRecorder {
    /// Calls by outcome, in [`PlaceResult::ALL`] order.
    outcomes: [Counter; 3],
    /// Wall time of each call (policy and commit), seconds.
    latency: Histogram,
    /// Placements made, by their number of devices (index: size − 1; 1..=64).
    sizes: Vec<Counter>,
}

/// The largest placement size counted on its own (larger ones count at this size).
pub const MAX_PLACED_SIZE: usize = 64;

impl Default for PlaceRecorder {
    fn default() -> Self {
        Self {
            outcomes: Default::default(),
            latency: Histogram::new(PLACE_BUCKETS),
            sizes: (0..MAX_PLACED_SIZE).map(|_| Counter::default()).collect(),
        }
    }
}

impl PlaceRecorder {
    /// Records one call.
    pub fn record(&self, result: PlaceResult, took: Duration) {
        self.outcomes[result as usize].inc();
        self.latency.observe(took.as_secs_f64());
    }

    /// One placement of `devices` devices (a gang's GPUs, else 1).
    pub fn record_size(&self, devices: usize) {
        self.sizes[devices.clamp(1, MAX_PLACED_SIZE) - 1].inc();
    }

    /// Placements made, by size, for the sizes seen.
    pub fn sizes(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.sizes.iter().enumerate().map(|(i, c)| (i + 1, c.get())).filter(|(_, n)| *n > 0)
    }

    /// Calls that ended with `result`.
    pub fn count(&self, result: PlaceResult) -> u64 {
        self.outcomes[result as usize].get()
    }

    /// The latency histogram.
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }
}
