//! Failed downloads, limited per caller: each caller (the peer address of its
//! `FetchModel` call) has a bucket of [`BURST`] failures that refills one every
//! [`REFILL`]. A caller whose downloads keep failing gets RESOURCE_EXHAUSTED for new
//! downloads until its bucket refills; other callers, and downloads that succeed, are
//! not held back. This bounds how fast failed entries and records can pile up.
//!
//! Also the log of what the view budgets made the hive drop or refuse ([`BudgetLog`]),
//! which samples report as cut lines.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rbee_shared::failure_limit::FailureLimit;

/// Failures a caller may have in a burst.
pub const BURST: u32 = 16;
/// One more failure is allowed every this long.
pub const REFILL: Duration = Duration::from_secs(4);

/// The hive's limit: per peer address of the `FetchModel` call (`None`: no address).
pub fn limit() -> FailureLimit<Option<IpAddr>> {
    FailureLimit::new(BURST, REFILL)
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
