//! Exponential backoff with jitter, for every retry loop (the hive's announce, the
//! queen's per-hive connection).

use std::time::Duration;

use rand::Rng;

/// Delays that double from `min` up to `max`; each is jittered into `[base/2, base]`
/// so that peers that failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First delay.
    min: Duration,
    /// Longest delay.
    max: Duration,
    /// Failures in a row.
    attempt: u32,
}

impl Backoff {
    /// A backoff from `min` to `max` (`max` below `min` is raised to `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), attempt: 0 }
    }

    /// The un-jittered delay for the next failure.
    pub fn base(&self) -> Duration {
        self.min.saturating_mul(1 << self.attempt.min(16)).min(self.max)
    }

    /// The delay to wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base();
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_max_with_jitter() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        let mut b = Backoff::new(min, max);
        let mut bases = Vec::new();
        for _ in 0..8 {
            let base = b.base();
            let d = b.next_delay();
            assert!(d >= base / 2 && d <= base, "{d:?} outside [{:?}, {base:?}]", base / 2);
            bases.push(base.as_millis());
        }
        assert_eq!(bases, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.base(), min);
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }
}
