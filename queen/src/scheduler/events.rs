//! What the scheduler tells watchers: reservations that ended without a Release.

use super::book::Reservation;

/// Capacity of the scheduler's event channel; a watcher further behind misses events
/// (and is told so by a fleet snapshot).
pub const SCHEDULER_EVENT_CAPACITY: usize = 1024;

/// A change in the books that a watcher should see.
#[derive(Debug, Clone)]
pub enum SchedulerEvent {
    /// A reservation was dropped without a Release.
    ReservationDropped {
        /// The reservation.
        reservation: Reservation,
        /// Why.
        reason: String,
    },
}
