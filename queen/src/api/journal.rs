//! The queen's recent fleet and book events, numbered, so that a `WatchFleet` client that
//! reconnects can resume where it left off (`resume_after_seq`) instead of taking a
//! whole new snapshot without knowing what it missed.
//!
//! Every structural fleet event and every book event gets the next number of this
//! queen process (`fleet_seq`; the process is told apart by its `queen_epoch`). The
//! journal keeps the newest of them, at most [`JournalLimits::max_events`] and none
//! older than [`JournalLimits::max_age`]; a client asking for events it no longer holds
//! gets a snapshot flagged `reset`. Samples are not journaled: they are state, and every
//! stream sends the newest at its own rate.
//!
//! The journal reads the two broadcast channels itself, when a watcher asks (no task of
//! its own): events wait in the channels meanwhile. Events lost to a channel's bound
//! still take their numbers, and every number up to them counts as no longer held.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rbee_shared::lock::MutexExt;
use tokio::sync::broadcast::{self, error::TryRecvError};

use crate::fleet::FleetEvent;
use crate::scheduler::SchedulerEvent;

/// How much the journal keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalLimits {
    /// Events at most.
    pub max_events: usize,
    /// None older than this (since the journal read them).
    pub max_age: Duration,
}

impl Default for JournalLimits {
    fn default() -> Self {
        Self { max_events: crate::fleet::EVENT_CAPACITY, max_age: Duration::from_secs(60) }
    }
}

/// One journaled event.
#[derive(Debug, Clone)]
pub enum Journaled {
    /// A structural fleet change.
    Fleet(FleetEvent),
    /// A change in the books.
    Books(Box<SchedulerEvent>),
}

/// An event and its number.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its number (1, 2, ... in this queen process).
    pub seq: u64,
    /// When the journal read it.
    at: Instant,
    /// The event.
    pub event: Journaled,
}

/// The events a watcher asked for are no longer held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// What the lock guards.
struct State {
    /// Structural events, read on demand.
    fleet: broadcast::Receiver<FleetEvent>,
    /// Book events, read on demand.
    books: broadcast::Receiver<SchedulerEvent>,
    /// Held events, oldest first.
    ring: VecDeque<Entry>,
    /// The newest number given.
    head: u64,
    /// Every event numbered up to this one is no longer held.
    floor: u64,
    /// When the channels were last read: an event read now was sent after it, so it is
    /// held as that old (never younger than it may be: the journal reads on demand, and
    /// an event that waited in a channel longer than the age bound is not replayed).
    last_read: Instant,
}

/// The journal.
pub struct Journal {
    /// Tells this process's numbering apart from another's (never 0).
    epoch: u64,
    /// Bounds.
    limits: JournalLimits,
    /// The channels and the ring.
    state: Mutex<State>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

impl Journal {
    /// A journal of what `fleet` and `books` send from now on.
    pub fn new(
        fleet: broadcast::Receiver<FleetEvent>,
        books: broadcast::Receiver<SchedulerEvent>,
        limits: JournalLimits,
    ) -> Self {
        static MADE: AtomicU64 = AtomicU64::new(0);
        // The start time, the process and the journal's place among this process's.
        let epoch = (rbee_shared::time::now_unix_ms() << 16)
            ^ u64::from(std::process::id())
            ^ MADE.fetch_add(1, Ordering::Relaxed).rotate_right(8);
        let epoch = epoch.max(1);
        let state =
            State { fleet, books, ring: VecDeque::new(), head: 0, floor: 0, last_read: Instant::now() };
        Self { epoch, limits, state: Mutex::new(state) }
    }

    /// This queen process's numbering.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Reads what the channels hold into the ring and drops what the bounds no longer
    /// allow.
    fn pump(&self, s: &mut State) {
        self.pump_at(s, Instant::now());
    }

    /// [`Journal::pump`] at `now`.
    fn pump_at(&self, s: &mut State, now: Instant) {
        // Sent at some time since the last read: held as sent then.
        let sent = s.last_read;
        s.last_read = now;
        let lost = |s: &mut State, n: u64| {
            s.head += n;
            s.floor = s.head;
            s.ring.clear();
        };
        loop {
            match s.fleet.try_recv() {
                Ok(e) => push(s, sent, Journaled::Fleet(e)),
                Err(TryRecvError::Lagged(n)) => lost(s, n),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        loop {
            match s.books.try_recv() {
                Ok(e) => push(s, sent, Journaled::Books(Box::new(e))),
                Err(TryRecvError::Lagged(n)) => lost(s, n),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        while let Some(first) = s.ring.front()
            && (s.ring.len() > self.limits.max_events || now.duration_since(first.at) > self.limits.max_age)
        {
            s.floor = first.seq;
            s.ring.pop_front();
        }
    }

    /// The newest number given, and the one up to which nothing is held.
    pub fn bounds(&self) -> (u64, u64) {
        let mut s = self.state.lock_unpoisoned();
        self.pump(&mut s);
        (s.head, s.floor)
    }

    /// Up to `max` events numbered after `after`, oldest first; [`Gone`] when some of
    /// them are no longer held.
    pub fn after(&self, after: u64, max: usize) -> Result<Vec<Entry>, Gone> {
        let mut s = self.state.lock_unpoisoned();
        self.pump(&mut s);
        if after < s.floor {
            return Err(Gone);
        }
        let start = s.ring.partition_point(|e| e.seq <= after);
        Ok(s.ring.iter().skip(start).take(max).cloned().collect())
    }
}

fn push(s: &mut State, at: Instant, event: Journaled) {
    s.head += 1;
    s.ring.push_back(Entry { seq: s.head, at, event });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removed(i: usize) -> FleetEvent {
        FleetEvent::Removed { address: format!("http://10.0.0.{i}:7835"), hive_id: String::new() }
    }

    fn seqs(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn events_are_numbered_and_held_within_the_bounds() {
        let (fleet, _) = broadcast::channel(64);
        let (books, _) = broadcast::channel::<SchedulerEvent>(8);
        let limits = JournalLimits { max_events: 4, max_age: Duration::from_secs(60) };
        let j = Journal::new(fleet.subscribe(), books.subscribe(), limits);
        assert_eq!(j.bounds(), (0, 0));
        for i in 0..3 {
            fleet.send(removed(i)).unwrap();
        }
        assert_eq!(seqs(&j.after(0, 10).unwrap()), [1, 2, 3]);
        assert_eq!(seqs(&j.after(1, 10).unwrap()), [2, 3]);
        assert_eq!(seqs(&j.after(1, 1).unwrap()), [2]);
        assert!(j.after(3, 10).unwrap().is_empty());
        for i in 3..6 {
            fleet.send(removed(i)).unwrap();
        }
        // Six events, four held: 1 and 2 are gone.
        assert_eq!(j.bounds(), (6, 2));
        assert_eq!(j.after(1, 10).unwrap_err(), Gone);
        assert_eq!(seqs(&j.after(2, 10).unwrap()), [3, 4, 5, 6]);
    }

    #[test]
    fn events_lost_to_the_channel_bound_count_as_gone() {
        let (fleet, _) = broadcast::channel(2);
        let (books, _) = broadcast::channel::<SchedulerEvent>(2);
        let j = Journal::new(fleet.subscribe(), books.subscribe(), JournalLimits::default());
        for i in 0..5 {
            let _ = fleet.send(removed(i));
        }
        // Three lost (numbers 1..=3), two read (4, 5).
        assert_eq!(j.bounds(), (5, 3));
        assert_eq!(j.after(0, 10).unwrap_err(), Gone);
        assert_eq!(seqs(&j.after(3, 10).unwrap()), [4, 5]);
    }

    #[test]
    fn old_events_age_out() {
        let (fleet, _) = broadcast::channel(8);
        let (books, _) = broadcast::channel::<SchedulerEvent>(2);
        let limits = JournalLimits { max_events: 100, max_age: Duration::ZERO };
        let j = Journal::new(fleet.subscribe(), books.subscribe(), limits);
        fleet.send(removed(0)).unwrap();
        // Held as sent at the previous read, so aged out at once.
        assert_eq!(j.bounds(), (1, 1));
        assert_eq!(j.after(0, 10).unwrap_err(), Gone);
    }

    /// An event that waited in its channel (no watcher read the journal) longer than the
    /// age bound is not replayed: a resume from before it resets instead.
    #[test]
    fn events_that_waited_unread_past_the_age_bound_are_gone() {
        let (fleet, _) = broadcast::channel(8);
        let (books, _) = broadcast::channel::<SchedulerEvent>(2);
        let limits = JournalLimits { max_events: 100, max_age: Duration::from_secs(60) };
        let j = Journal::new(fleet.subscribe(), books.subscribe(), limits);
        assert_eq!(j.bounds(), (0, 0));
        fleet.send(removed(0)).unwrap();
        // Read 61 s after the previous read: it may be 61 s old.
        let later = Instant::now() + Duration::from_secs(61);
        let mut s = j.state.lock_unpoisoned();
        j.pump_at(&mut s, later);
        assert_eq!((s.head, s.floor), (1, 1));
        drop(s);
        assert_eq!(j.after(0, 10).unwrap_err(), Gone);
        // Read soon after the previous read: held.
        fleet.send(removed(1)).unwrap();
        assert_eq!(seqs(&j.after(1, 10).unwrap()), [2]);
    }
}
