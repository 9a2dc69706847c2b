//! Rate-limited warnings: a peer that sends thousands of bad messages a second gets
//! one log line per period, with the count of the ones left out.

use std::time::Duration;

use std::time::Instant;

/// Lets one warning through per period and counts the rest.
#[derive(Debug)]
pub(super) struct WarnLimiter {
    /// At most one warning per this.
    period: Duration,
    /// When the last warning went out.
    last: Option<Instant>,
    /// Warnings held back since then.
    suppressed: u64,
}

impl WarnLimiter {
    /// One warning per `period`.
    pub(super) fn new(period: Duration) -> Self {
        Self { period, last: None, suppressed: 0 }
    }

    /// `Some(held back since the last one)` when this warning may be logged.
    pub(super) fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < self.period) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_a_count_of_the_rest() {
        let mut w = WarnLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(w.allow_at(t0), Some(0));
        for i in 0..4999 {
            assert_eq!(w.allow_at(t0 + Duration::from_millis(i)), None);
        }
        let later = t0 + Duration::from_secs(10);
        assert_eq!(w.allow_at(later), Some(4999));
        assert_eq!(w.allow_at(later), None);
    }
}
