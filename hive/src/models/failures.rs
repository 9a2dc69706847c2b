//! Failed downloads, limited per caller: each caller (the peer address of its
//! `FetchModel` call) has a bucket of [`BURST`] failures that refills one every
//! [`REFILL`]. A caller whose downloads keep failing gets RESOURCE_EXHAUSTED for new
//! downloads until its bucket refills; other callers, and downloads that succeed, are
//! not held back. This bounds how fast failed entries and records can pile up.
//!
//! Also the log of what the view budgets made the hive drop or refuse ([`BudgetLog`]),
//! which samples report as cut lines.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures a caller may have in a burst.
pub const BURST: f64 = 16.0;
/// One more failure is allowed every this long.
pub const REFILL: Duration = Duration::from_secs(4);
/// Callers remembered at once; beyond, the fullest buckets are forgotten first.
const MAX_CALLERS: usize = 1024;

/// Per-caller failure buckets.
#[derive(Debug, Default)]
pub struct FailureLimit {
    /// Per caller (`None`: a call without a peer address), failures left and when.
    buckets: HashMap<Option<IpAddr>, (f64, Instant)>,
}

impl FailureLimit {
    fn level(&self, caller: Option<IpAddr>, now: Instant) -> f64 {
        self.buckets.get(&caller).map_or(BURST, |(left, at)| {
            (left + now.duration_since(*at).as_secs_f64() / REFILL.as_secs_f64()).min(BURST)
        })
    }

    /// `Err(wait)` while `caller` has no failures left: how long until one refills.
    pub fn check(&self, caller: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let left = self.level(caller, now);
        if left >= 1.0 { Ok(()) } else { Err(REFILL.mul_f64(1.0 - left)) }
    }

    /// Counts one failed download of `caller`.
    pub fn charge(&mut self, caller: Option<IpAddr>, now: Instant) {
        let left = (self.level(caller, now) - 1.0).max(0.0);
        if self.buckets.len() >= MAX_CALLERS && !self.buckets.contains_key(&caller) {
            let fullest = self
                .buckets
                .iter()
                .max_by(|a, b| {
                    let la = a.1.0 + now.duration_since(a.1.1).as_secs_f64();
                    let lb = b.1.0 + now.duration_since(b.1.1).as_secs_f64();
                    la.total_cmp(&lb)
                })
                .map(|(k, _)| *k);
            if let Some(k) = fullest {
                self.buckets.remove(&k);
            }
        }
        self.buckets.insert(caller, (left, now));
    }
}

/// Something the view budgets made the hive drop or refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BudgetEvent {
    /// Failed catalog entries dropped (the oldest beyond the bound, or aged out).
    FailedDropped,
    /// New downloads refused (a caller's failures, or a full catalog).
    Refused,
}

/// Per kind of [`BudgetEvent`]: how many, while they keep coming within
/// [`super::FINISHED_RETENTION`] of each other, and the last one.
#[derive(Debug, Default)]
pub struct BudgetLog {
    /// Count and last time per kind.
    events: BTreeMap<BudgetEvent, (u64, Instant)>,
}

impl BudgetLog {
    /// Counts `n` events of `kind` at `now`.
    pub fn record(&mut self, kind: BudgetEvent, n: u64, now: Instant) {
        if n == 0 {
            return;
        }
        let e = self.events.entry(kind).or_insert((0, now));
        if now.duration_since(e.1) >= super::FINISHED_RETENTION {
            e.0 = 0;
        }
        *e = (e.0 + n, now);
    }

    /// One line per kind with an event within [`super::FINISHED_RETENTION`].
    pub fn lines(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|(_, (_, at))| at.elapsed() < super::FINISHED_RETENTION)
            .map(|(kind, (n, _))| match kind {
                BudgetEvent::FailedDropped => format!(
                    "catalog: {n} failed entries dropped (the newest {} are kept, for at most {} s)",
                    rbee_shared::view_budget::MAX_FAILED_ENTRIES,
                    super::FAILED_RETENTION.as_secs()
                ),
                BudgetEvent::Refused => {
                    format!("downloads: {n} new downloads refused (too many failures, or a full catalog)")
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_whose_downloads_keep_failing_waits_and_others_do_not() {
        let mut limit = FailureLimit::default();
        let (a, b) = (Some("10.0.0.1".parse().unwrap()), Some("10.0.0.2".parse().unwrap()));
        let t0 = Instant::now();
        for _ in 0..BURST as usize {
            assert!(limit.check(a, t0).is_ok());
            limit.charge(a, t0);
        }
        let wait = limit.check(a, t0).unwrap_err();
        assert!(wait <= REFILL && wait > Duration::ZERO, "{wait:?}");
        assert!(limit.check(b, t0).is_ok(), "another caller is not held back");
        assert!(limit.check(a, t0 + REFILL).is_ok(), "one failure refills per REFILL");
    }
}
