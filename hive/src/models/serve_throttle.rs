//! `--peer-upload-limit`: one token bucket shared by every upload to peers, so that
//! all of them together send at most the limit per second, and a serving hive keeps
//! its network for its own inference traffic.
//!
//! An upload reserves its next chunk before sending it and then waits the time the
//! reservation says (the bucket may go into debt by one reservation per waiting
//! upload): the bytes sent over any span are at most `rate × span + burst`, and several
//! uploads share the rate in turn. The bucket starts full with a burst of one chunk,
//! so a lone small read is not delayed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rbee_shared::lock::MutexExt;

/// A token bucket of bytes.
#[derive(Debug)]
pub struct TokenBucket {
    /// Bytes per second.
    rate: u64,
    /// Most tokens kept while idle.
    burst: u64,
    /// Tokens (negative: bytes reserved beyond what has accrued) and when they were
    /// counted.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket of `burst` bytes refilled at `rate` bytes per second (`rate` of 0
    /// is taken as 1).
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Self { rate: rate.max(1), burst, state: Mutex::new((burst as f64, now)) }
    }

    /// Reserves `n` bytes at `now`; returns how long the caller must wait before it
    /// sends them (zero when the bucket holds them).
    pub fn reserve(&self, n: u64, now: Instant) -> Duration {
        let mut state = self.state.lock_unpoisoned();
        let (tokens, at) = *state;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        let refilled = (tokens + elapsed * self.rate as f64).min(self.burst as f64);
        let left = refilled - n as f64;
        // A clock that went backwards keeps the old instant, never refills twice.
        *state = (left, now.max(at));
        if left >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-left / self.rate as f64) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_sends_its_burst_then_the_rate() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(1000, 500, t0);
        assert_eq!(bucket.reserve(500, t0), Duration::ZERO, "the burst goes at once");
        assert_eq!(bucket.reserve(1000, t0), Duration::from_secs(1), "then 1000 bytes take a second");
        // A second upload at the same instant waits behind the first one's reservation.
        assert_eq!(bucket.reserve(500, t0), Duration::from_millis(1500));
        // After the debt is paid and the bucket idled, only the burst accrues again.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(bucket.reserve(500, later), Duration::ZERO);
        assert_eq!(bucket.reserve(1, later), Duration::from_millis(1));
    }

    #[test]
    fn bytes_over_any_span_stay_within_rate_times_span_plus_burst() {
        // Three uploads take turns reserving 64 KiB chunks, each sending when its
        // reservation allows: over 10 s of simulated time they send rate × 10 s plus the
        // burst, never more.
        let (rate, burst, chunk) = (1_000_000u64, 64 << 10, 64u64 << 10);
        let t0 = Instant::now();
        let bucket = TokenBucket::new(rate, burst, t0);
        let mut ready = [t0; 3];
        let mut sent = 0u64;
        let end = t0 + Duration::from_secs(10);
        loop {
            let (i, at) = ready.iter().enumerate().min_by_key(|(_, t)| **t).map(|(i, t)| (i, *t)).unwrap();
            let send_at = at + bucket.reserve(chunk, at);
            if send_at > end {
                break;
            }
            sent += chunk;
            ready[i] = send_at;
        }
        let bound = rate * 10 + burst;
        assert!(sent <= bound, "{sent} > {bound}");
        assert!(sent + 3 * chunk >= rate * 10, "the rate is used, not starved: {sent}");
    }

    proptest::proptest! {
        /// Whatever the reservations (sizes, arrival times, how many uploads), the bytes
        /// allowed to go by any moment are at most the burst plus the rate times the
        /// time since the start, and no reservation waits longer than every byte
        /// reserved so far takes at the rate.
        #[test]
        fn never_more_than_rate_times_time_plus_burst(
            rate in 1_000u64..100_000_000,
            burst in 1u64..4_000_000,
            steps in proptest::collection::vec((0u64..50_000, 1u64..2_000_000), 1..200),
        ) {
            let t0 = Instant::now();
            let bucket = TokenBucket::new(rate, burst, t0);
            let mut now = t0;
            let mut sends = Vec::new();
            let mut reserved = 0u64;
            for (gap_us, n) in steps {
                now += Duration::from_micros(gap_us);
                let wait = bucket.reserve(n, now);
                reserved += n;
                let bound = reserved as f64 / rate as f64;
                proptest::prop_assert!(wait.as_secs_f64() <= bound + 1e-6, "{wait:?} > {bound}");
                sends.push((now + wait, n));
            }
            sends.sort();
            let mut sent = 0u64;
            for (at, n) in sends {
                sent += n;
                let allowed = burst as f64 + rate as f64 * (at - t0).as_secs_f64();
                proptest::prop_assert!(sent as f64 <= allowed * (1.0 + 1e-9) + 1.0, "{sent} by {at:?} > {allowed}");
            }
        }
    }

    #[test]
    fn a_clock_going_backwards_never_refills() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let bucket = TokenBucket::new(100, 100, t0);
        assert_eq!(bucket.reserve(100, t0), Duration::ZERO);
        let earlier = t0 - Duration::from_secs(5);
        assert_eq!(bucket.reserve(100, earlier), Duration::from_secs(1));
    }
}
