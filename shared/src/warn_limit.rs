//! Rate-limited warnings: a peer that sends thousands of bad messages a second must
//! not fill the log. Each key (usually a peer address) may log a few lines per
//! window; the rest are counted and reported with the next line that is let through.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lock::MutexExt;

/// What to do with one warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it, and say how many were suppressed for this key since the last one logged.
    Log {
        /// Warnings dropped for this key since the last logged one.
        suppressed: u64,
    },
    /// Do not log it (it was counted).
    Suppress,
}

/// Per-key state.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Start of the current window.
    window_start: Instant,
    /// Lines logged in the current window.
    logged: u32,
    /// Lines suppressed since the last logged one.
    suppressed: u64,
}

/// A per-key warning limiter: at most `burst` lines per key per `window`. The number of
/// keys it remembers is bounded; the least recently windowed key is forgotten first.
#[derive(Debug)]
pub struct WarnLimiter<K> {
    /// Lines per key per window.
    burst: u32,
    /// The window.
    window: Duration,
    /// Most keys remembered.
    max_keys: usize,
    /// The keys.
    slots: Mutex<HashMap<K, Slot>>,
    /// Every warning suppressed, over all keys, ever.
    total_suppressed: std::sync::atomic::AtomicU64,
}

impl<K: Hash + Eq + Clone> WarnLimiter<K> {
    /// At most `burst` lines per key per `window`, remembering up to `max_keys` keys.
    pub fn new(burst: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            burst: burst.max(1),
            window,
            max_keys: max_keys.max(1),
            slots: Mutex::new(HashMap::new()),
            total_suppressed: Default::default(),
        }
    }

    /// Decides about one warning for `key`, at `now`.
    pub fn check_at(&self, key: &K, now: Instant) -> Verdict {
        let mut slots = self.slots.lock_unpoisoned();
        if !slots.contains_key(key) && slots.len() >= self.max_keys {
            let oldest = slots.iter().min_by_key(|(_, s)| s.window_start).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                slots.remove(&oldest);
            }
        }
        let slot = slots.entry(key.clone()).or_insert(Slot { window_start: now, logged: 0, suppressed: 0 });
        if now.saturating_duration_since(slot.window_start) >= self.window {
            slot.window_start = now;
            slot.logged = 0;
        }
        if slot.logged < self.burst {
            slot.logged += 1;
            let suppressed = std::mem::take(&mut slot.suppressed);
            Verdict::Log { suppressed }
        } else {
            slot.suppressed += 1;
            self.total_suppressed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Verdict::Suppress
        }
    }

    /// Decides about one warning for `key` now.
    pub fn check(&self, key: &K) -> Verdict {
        self.check_at(key, Instant::now())
    }

    /// Warnings suppressed so far, over all keys.
    pub fn total_suppressed(&self) -> u64 {
        self.total_suppressed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_counts() {
        let l = WarnLimiter::new(2, Duration::from_secs(10), 16);
        let t0 = Instant::now();
        assert_eq!(l.check_at(&"a", t0), Verdict::Log { suppressed: 0 });
        assert_eq!(l.check_at(&"a", t0), Verdict::Log { suppressed: 0 });
        for _ in 0..5 {
            assert_eq!(l.check_at(&"a", t0), Verdict::Suppress);
        }
        // Another peer has its own budget.
        assert_eq!(l.check_at(&"b", t0), Verdict::Log { suppressed: 0 });
        // The next window reports what was dropped.
        assert_eq!(l.check_at(&"a", t0 + Duration::from_secs(10)), Verdict::Log { suppressed: 5 });
        assert_eq!(l.total_suppressed(), 5);
    }

    #[test]
    fn remembers_a_bounded_number_of_keys() {
        let l = WarnLimiter::new(1, Duration::from_secs(10), 4);
        let t0 = Instant::now();
        for i in 0..100 {
            l.check_at(&i, t0 + Duration::from_millis(i));
        }
        assert!(l.slots.lock_unpoisoned().len() <= 4);
    }
}
