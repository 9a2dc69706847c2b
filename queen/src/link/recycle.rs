//! Reusing what the previous publish allocated. A link publishes a new snapshot on every
//! sample, and with it new window statistics and a new health report: at 10,000 hives
//! that is tens of thousands of allocations a second of the same shapes. The parts the
//! snapshot before last held are usually free again once the next one replaces it in the
//! watch channel (nobody else holds them); those are refilled in place instead.

use std::sync::Arc;

use tokio::sync::watch;

use super::health::{HealthInput, evaluate_into};
use super::window::SampleWindow;
use crate::fleet::{HealthReport, HiveSnapshot, Thresholds, WindowStats};

/// What one link's snapshot before last held: the snapshot the watch channel gave back at
/// the last publish, and its statistics and health report. Each is reused only while
/// nothing else holds it; the spare snapshot lets go of its sample and placement summary
/// at once, so it keeps nothing alive that the current one does not.
#[derive(Debug, Default)]
pub struct Spares {
    /// The snapshot.
    snapshot: Option<Arc<HiveSnapshot>>,
    /// Its window statistics.
    stats: Option<Arc<WindowStats>>,
    /// Its health report.
    health: Option<Arc<HealthReport>>,
}

impl Spares {
    /// The window's statistics, in the spare ones when free.
    pub fn stats(&mut self, window: &SampleWindow) -> Arc<WindowStats> {
        refill(self.stats.take(), WindowStats::default, |s| window.stats_into(s))
    }

    /// The health report of `input`, in the spare one when free.
    pub fn health(&mut self, input: &HealthInput<'_>, t: &Thresholds) -> Arc<HealthReport> {
        refill(self.health.take(), HealthReport::default, |r| evaluate_into(input, t, r))
    }

    /// Publishes a copy of `view` on `tx` (in the spare snapshot when free) and keeps the
    /// one it replaced, with its statistics and report, as the next spares.
    pub fn publish(
        &mut self,
        view: &HiveSnapshot,
        tx: &watch::Sender<Arc<HiveSnapshot>>,
    ) -> Arc<HiveSnapshot> {
        let snapshot = refill(self.snapshot.take(), || view.clone(), |s| view.copy_into(s));
        let mut old = tx.send_replace(snapshot.clone());
        if let Some(o) = Arc::get_mut(&mut old) {
            self.stats = Some(std::mem::replace(&mut o.stats, view.stats.clone()));
            self.health = Some(std::mem::replace(&mut o.health, view.health.clone()));
            o.latest.clone_from(&view.latest);
            o.placement.clone_from(&view.placement);
        }
        self.snapshot = Some(old);
        snapshot
    }
}

/// `spare` refilled by `fill` when nothing else holds it; otherwise a new value made by
/// `make` and then filled. `fill` must overwrite everything `make`'s value would carry,
/// so that the result does not depend on which was reused.
pub fn refill<T>(spare: Option<Arc<T>>, make: impl FnOnce() -> T, fill: impl FnOnce(&mut T)) -> Arc<T> {
    if let Some(mut held) = spare
        && let Some(value) = Arc::get_mut(&mut held)
    {
        fill(value);
        return held;
    }
    let mut value = make();
    fill(&mut value);
    Arc::new(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_nobody_else_holds_is_refilled_in_place_and_a_shared_one_is_left_alone() {
        let spare = Arc::new(vec![1, 2, 3]);
        let at = Arc::as_ptr(&spare);
        let out = refill(Some(spare), Vec::new, |v| {
            v.clear();
            v.push(9);
        });
        assert_eq!((&*out, Arc::as_ptr(&out)), (&vec![9], at));

        let shared = Arc::new(vec![1]);
        let other = shared.clone();
        let out = refill(Some(shared), Vec::new, |v| v.push(7));
        assert_eq!((&*out, &*other), (&vec![7], &vec![1]), "the holder's value is untouched");
        assert!(!Arc::ptr_eq(&out, &other));
        assert_eq!(*refill(None, || vec![0], |v| v.push(1)), vec![0, 1]);
    }
}
