//! Failures limited per caller: each caller has a bucket of `burst` failures that
//! refills one every `refill`. A caller whose calls keep failing is refused until its
//! bucket refills; other callers are not held back. The hive keys it by the peer of a
//! `FetchModel` call, the queen by the peer of a `Scheduler.FetchModel` call.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Callers remembered at once; beyond, the fullest bucket is forgotten first.
const MAX_CALLERS: usize = 1024;

/// Per-caller failure buckets.
#[derive(Debug)]
pub struct FailureLimit<K> {
    /// Failures a caller may have in a burst.
    burst: f64,
    /// One more failure is allowed every this long.
    refill: Duration,
    /// Per caller, failures left and when they were counted.
    buckets: HashMap<K, (f64, Instant)>,
}

impl<K: Hash + Eq + Copy> FailureLimit<K> {
    /// `burst` failures at once, one more every `refill`.
    pub fn new(burst: u32, refill: Duration) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            refill: refill.max(Duration::from_millis(1)),
            buckets: HashMap::new(),
        }
    }

    fn level(&self, caller: K, now: Instant) -> f64 {
        self.buckets.get(&caller).map_or(self.burst, |(left, at)| {
            (left + now.saturating_duration_since(*at).as_secs_f64() / self.refill.as_secs_f64())
                .min(self.burst)
        })
    }

    /// `Err(wait)` while `caller` has no failures left: how long until one refills.
    pub fn check(&self, caller: K, now: Instant) -> Result<(), Duration> {
        let left = self.level(caller, now);
        if left >= 1.0 { Ok(()) } else { Err(self.refill.mul_f64(1.0 - left)) }
    }

    /// Counts one failure of `caller` (or one call whose outcome is not known yet).
    pub fn charge(&mut self, caller: K, now: Instant) {
        let left = (self.level(caller, now) - 1.0).max(0.0);
        if self.buckets.len() >= MAX_CALLERS && !self.buckets.contains_key(&caller) {
            let fullest = self
                .buckets
                .keys()
                .copied()
                .max_by(|a, b| self.level(*a, now).total_cmp(&self.level(*b, now)));
            if let Some(k) = fullest {
                self.buckets.remove(&k);
            }
        }
        self.buckets.insert(caller, (left, now));
    }

    /// Gives back one charge of `caller` (the call turned out well).
    pub fn refund(&mut self, caller: K, now: Instant) {
        if let Some(b) = self.buckets.get_mut(&caller) {
            let left =
                (b.0 + now.saturating_duration_since(b.1).as_secs_f64() / self.refill.as_secs_f64() + 1.0)
                    .min(self.burst);
            *b = (left, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_whose_calls_keep_failing_waits_and_others_do_not() {
        let refill = Duration::from_secs(4);
        let mut limit = FailureLimit::new(16, refill);
        let (a, b) = (1u8, 2u8);
        let t0 = Instant::now();
        for _ in 0..16 {
            assert!(limit.check(a, t0).is_ok());
            limit.charge(a, t0);
        }
        let wait = limit.check(a, t0).unwrap_err();
        assert!(wait <= refill && wait > Duration::ZERO, "{wait:?}");
        assert!(limit.check(b, t0).is_ok(), "another caller is not held back");
        assert!(limit.check(a, t0 + refill).is_ok(), "one failure refills per refill period");
        limit.refund(a, t0);
        assert!(limit.check(a, t0).is_ok(), "a refund gives the charge back");
    }
}
