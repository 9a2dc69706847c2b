//! Reconnect delays: exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter.
pub(super) struct Backoff {
    /// First delay.
    pub(super) min: Duration,
    /// Longest delay.
    pub(super) max: Duration,
    /// Failures in a row.
    pub(super) attempt: u32,
}

impl Backoff {
    pub(super) fn next(&mut self) -> Duration {
        let base = self.min.saturating_mul(1 << self.attempt.min(16)).min(self.max);
        self.attempt += 1;
        // Full jitter in [base/2, base]: hives that failed together do not retry together.
        base.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    pub(super) fn reset(&mut self) {
        self.attempt = 0;
    }
}
