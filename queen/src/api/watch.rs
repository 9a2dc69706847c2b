//! One `WatchFleet` stream: the current fleet, then change events, then (if asked)
//! each hive's newest sample at the caller's rate.
//!
//! Pulled, like the hive's stream: nothing is produced until the transport asks. A
//! watcher that falls more than the event channel's capacity behind gets one
//! coalesced snapshot instead of the events it missed; samples are read from the
//! live views at each tick, so they coalesce by construction. Capability changes
//! coalesce too: at most one per hive per [`CAPS_COALESCE`], carrying the newest
//! capabilities, so a hive that floods diffs cannot flood its watchers.
//!
//! A snapshot larger than one message may be ([`view_budget::MAX_ANSWER_BYTES`]) goes
//! in parts, split by hives: every part but the last says `more`.
//!
//! Events come from the queen's [`Journal`], numbered (`fleet_seq`): a stream asked to
//! resume after a number the journal still holds starts with the events after it
//! instead of a snapshot; one whose events are gone starts with a `reset` snapshot.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rbee_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tonic::Status;

use rbee_shared::view_budget;

use super::journal::{Journal, Journaled};
use crate::QueenError;
use crate::fleet::{Fleet, FleetEvent, HiveSnapshot};
use crate::scheduler::figures::DeviceFigures;
use crate::scheduler::{Scheduler, SchedulerEvent};

type Event = pb::fleet_event::Event;

/// Shortest time between two capability events for one hive on one watcher.
pub const CAPS_COALESCE: Duration = Duration::from_millis(100);

/// Bounds how many `WatchFleet` streams are open at once.
#[derive(Debug, Clone)]
pub struct Watchers {
    /// One permit per open stream.
    permits: Arc<Semaphore>,
    /// The bound, for messages.
    max: usize,
}

impl Watchers {
    /// At most `max` streams at once.
    pub fn new(max: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(max)), max }
    }

    /// A place for one more stream, or RESOURCE_EXHAUSTED.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, QueenError> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            QueenError::ResourceExhausted(format!(
                "{} WatchFleet streams are open (the limit, --max-watchers); close one and retry",
                self.max
            ))
        })
    }
}

/// Journal events a watcher takes at a time.
const JOURNAL_BATCH: usize = 256;

/// Where a new stream starts: after a `fleet_seq` of an earlier stream, of this queen
/// (`epoch` 0 or this queen's) or another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The newest `fleet_seq` the client has.
    pub after: u64,
    /// The `queen_epoch` it came with.
    pub epoch: u64,
}

/// The snapshot a stream sends next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SnapshotKind {
    /// It replaces events the watcher fell behind on.
    coalesced: bool,
    /// It replaces events a resume asked for and the journal no longer holds.
    reset: bool,
}

/// The state of one watcher.
pub struct WatchSession {
    /// The fleet.
    fleet: Arc<Fleet>,
    /// The scheduler, for the devices' reservation figures in snapshots.
    scheduler: Arc<Scheduler>,
    /// The numbered events.
    journal: Arc<Journal>,
    /// The newest journal number this stream has reached.
    cursor: u64,
    /// Journal events read and not yet sent.
    pending: VecDeque<super::journal::Entry>,
    /// Structural events: only a wake-up (the journal has them).
    events: broadcast::Receiver<FleetEvent>,
    /// Reservation events: only a wake-up (the journal has them).
    books: broadcast::Receiver<SchedulerEvent>,
    /// Sample ticks, when asked for.
    samples: Option<Interval>,
    /// Per hive address, the count of applied samples when its last sample was sent
    /// (the queen's own count: a hive's clock cannot hide its samples).
    sent: HashMap<String, u64>,
    /// Hives whose newest sample is due to this watcher (at most one per hive per tick),
    /// turned into their message only when it is sent: a tick of 10,000 hives is not one
    /// long conversion on the API's threads (a Place waiting behind it).
    queue: VecDeque<Arc<HiveSnapshot>>,
    /// A snapshot to send next.
    snapshot: Option<SnapshotKind>,
    /// The parts of the snapshot being sent, still to go.
    parts: VecDeque<pb::FleetSnapshot>,
    /// Per hive address, when its last capability event went out.
    caps_sent: HashMap<String, Instant>,
    /// Per hive address, a held-back capability change: when it is due, and whether a
    /// restart is among the changes it stands for.
    caps_held: HashMap<String, (Instant, bool)>,
    /// Last sequence number sent.
    seq: u64,
    /// This stream's place among the open watchers, given back when it ends.
    _permit: OwnedSemaphorePermit,
}

impl WatchSession {
    /// Subscribes first, then snapshots, so that no change falls between the two. With
    /// `resume`, starts after that event when the journal still holds what follows it,
    /// else with a reset snapshot; a number the journal has not reached is
    /// INVALID_ARGUMENT.
    pub fn new(
        fleet: Arc<Fleet>,
        scheduler: &Arc<Scheduler>,
        journal: Arc<Journal>,
        resume: Option<Resume>,
        sample_every: Option<Duration>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Self, QueenError> {
        let (events, books) = (fleet.subscribe(), scheduler.subscribe());
        let (head, floor) = journal.bounds();
        let fresh = SnapshotKind { coalesced: false, reset: false };
        let reset = SnapshotKind { coalesced: false, reset: true };
        let (cursor, snapshot) = match resume {
            None => (head, Some(fresh)),
            // Not this queen's numbering (another queen's, or not given: the queen cannot
            // tell the seq is its own): a reset.
            Some(r) if r.epoch != journal.epoch() => (head, Some(reset)),
            Some(r) if r.after > head => {
                return Err(QueenError::InvalidArgument(format!(
                    "resume_after_seq = {} is ahead of this queen's newest event ({head})",
                    r.after
                )));
            }
            // Below the floor: no longer held.
            Some(r) if r.after < floor => (head, Some(reset)),
            Some(r) => (r.after, None),
        };
        Ok(Self {
            journal,
            cursor,
            pending: VecDeque::new(),
            events,
            books,
            scheduler: scheduler.clone(),
            fleet,
            samples: sample_every.map(|every| {
                let mut t = tokio::time::interval(every);
                t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                t
            }),
            sent: HashMap::new(),
            queue: VecDeque::new(),
            snapshot,
            parts: VecDeque::new(),
            caps_sent: HashMap::new(),
            caps_held: HashMap::new(),
            seq: 0,
            _permit: permit,
        })
    }

    /// Turns the session into the response stream.
    pub fn into_stream(self) -> impl Stream<Item = Result<pb::FleetEvent, Status>> + Send + 'static {
        futures::stream::unfold(self, |mut s| async move { s.next().await.map(|e| (Ok(e), s)) })
    }

    /// The message for `event`; `fleet_seq` is the journal number the stream reached.
    fn envelope(&mut self, event: Event) -> pb::FleetEvent {
        self.seq += 1;
        pb::FleetEvent {
            seq: self.seq,
            queen_time_unix_ms: rbee_shared::time::now_unix_ms(),
            event: Some(event),
            fleet_seq: self.cursor,
            queen_epoch: self.journal.epoch(),
        }
    }

    /// Reads the journal after the cursor into `pending`; a snapshot instead when the
    /// events the stream needs are gone. Returns whether anything is to do.
    fn read_journal(&mut self) -> bool {
        if !self.pending.is_empty() {
            return true;
        }
        match self.journal.after(self.cursor, JOURNAL_BATCH) {
            Ok(entries) => {
                self.pending.extend(entries);
                !self.pending.is_empty()
            }
            Err(super::journal::Gone) => {
                self.snapshot = Some(SnapshotKind { coalesced: true, reset: false });
                true
            }
        }
    }

    fn fill_samples(&mut self) {
        for hive in self.fleet.list() {
            if hive.latest.is_none() {
                continue;
            }
            // The address is copied only for a hive new to this watcher, not per sample.
            let last = match self.sent.get_mut(&hive.address) {
                Some(last) => last,
                None => self.sent.entry(hive.address.clone()).or_insert(0),
            };
            if hive.samples_applied <= *last {
                continue;
            }
            *last = hive.samples_applied;
            self.queue.push_back(hive);
        }
    }

    /// Turns a fleet event into what this watcher sends now; a capability change within
    /// [`CAPS_COALESCE`] of the hive's last one is held back and merged instead.
    fn accept(&mut self, e: &FleetEvent) -> Option<Event> {
        if let FleetEvent::CapabilitiesChanged { hive, restarted, .. } = e {
            let now = Instant::now();
            if let Some((_, held_restart)) = self.caps_held.get_mut(&hive.address) {
                *held_restart |= *restarted;
                return None;
            }
            if let Some(sent) = self.caps_sent.get(&hive.address)
                && now < *sent + CAPS_COALESCE
            {
                self.caps_held.insert(hive.address.clone(), (*sent + CAPS_COALESCE, *restarted));
                return None;
            }
            self.caps_sent.insert(hive.address.clone(), now);
        }
        if let FleetEvent::Removed { address, .. } = e {
            self.caps_held.remove(address);
            self.caps_sent.remove(address);
        }
        Some(e.into())
    }

    /// A held-back capability change whose time has come, with the hive's newest
    /// capabilities.
    fn due_caps(&mut self) -> Option<Event> {
        let now = Instant::now();
        let address = self.caps_held.iter().find(|(_, (due, _))| *due <= now).map(|(a, _)| a.clone())?;
        let (_, restarted) = self.caps_held.remove(&address)?;
        let hive = self.fleet.get(&address)?;
        let caps = hive.caps.clone()?;
        self.caps_sent.insert(address, now);
        Some((&FleetEvent::CapabilitiesChanged { hive, restarted, caps }).into())
    }

    async fn next(&mut self) -> Option<pb::FleetEvent> {
        loop {
            if let Some(part) = self.parts.pop_front() {
                return Some(self.envelope(Event::Snapshot(part)));
            }
            if let Some(kind) = self.snapshot.take() {
                // Everything numbered up to here is in the snapshot (or newer than it).
                self.cursor = self.journal.bounds().0;
                self.pending.clear();
                let scheduler = &self.scheduler;
                let mut parts =
                    snapshot_parts(&self.fleet.list(), kind.coalesced, view_budget::MAX_ANSWER_BYTES, &|h| {
                        scheduler.figures(h)
                    });
                for part in &mut parts {
                    part.reset = kind.reset;
                }
                self.parts = parts;
                continue;
            }
            if let Some(e) = self.due_caps() {
                return Some(self.envelope(e));
            }
            // Journaled events first, so samples never crowd them out.
            if self.read_journal() {
                let Some(entry) = self.pending.pop_front() else { continue };
                self.cursor = entry.seq;
                let event = match &entry.event {
                    Journaled::Fleet(e) => self.accept(e),
                    Journaled::Books(e) => Some(e.as_ref().into()),
                };
                if let Some(e) = event {
                    return Some(self.envelope(e));
                }
                continue;
            }
            if let Some(hive) = self.queue.pop_front() {
                if let Some(e) = sample_event(&hive) {
                    return Some(self.envelope(e));
                }
                continue;
            }
            let shutdown = self.fleet.shutdown_token().clone();
            let tick = async {
                match self.samples.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let held = self.caps_held.values().map(|(due, _)| *due).min();
            let flush = async {
                match held {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = flush => {}
                // Wake-ups: the journal holds the events (and knows what was lost), so
                // what waits here is dropped in one go.
                e = self.events.recv() => {
                    if let Err(RecvError::Closed) = e {
                        return None;
                    }
                    drain(&mut self.events);
                }
                e = self.books.recv() => {
                    if let Err(RecvError::Closed) = e {
                        return None;
                    }
                    drain(&mut self.books);
                }
                () = tick => self.fill_samples(),
            }
        }
    }
}

/// Drops what a wake-up channel holds.
fn drain<T: Clone>(rx: &mut broadcast::Receiver<T>) {
    while !matches!(
        rx.try_recv(),
        Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
    ) {}
}

/// The sample event for `hive`'s newest sample (none if it has none), its age taken now.
fn sample_event(hive: &HiveSnapshot) -> Option<Event> {
    let sample = hive.latest.as_deref()?;
    Some(Event::Sample(pb::HiveSample {
        address: hive.address.clone(),
        hive_id: hive.hive_id().to_owned(),
        sample: Some(sample.into()),
        sample_age_ms: hive.sample_age().map_or(0, |a| a.as_millis() as u64),
    }))
}

/// The snapshot of `hives` in parts of at most `budget` bytes each (a part holds at
/// least one hive); every part but the last has `more` set. An empty fleet is one
/// empty part.
pub fn snapshot_parts(
    hives: &[Arc<HiveSnapshot>],
    coalesced: bool,
    budget: usize,
    figures: &dyn Fn(&HiveSnapshot) -> Vec<DeviceFigures>,
) -> VecDeque<pb::FleetSnapshot> {
    let mut parts = VecDeque::new();
    let mut rest = hives;
    loop {
        let views = super::convert::views_within(rest, budget, figures);
        rest = &rest[views.len()..];
        let more = !rest.is_empty();
        parts.push_back(pb::FleetSnapshot { hives: views, coalesced, more, reset: false });
        if !more {
            return parts;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Origin;

    #[test]
    fn a_snapshot_over_the_budget_goes_in_parts_that_each_fit() {
        let hives: Vec<Arc<HiveSnapshot>> = (0..10)
            .map(|i| {
                let h = HiveSnapshot::pending(
                    format!("http://10.0.0.{i}:7835"),
                    Origin::Static,
                    Duration::from_secs(1),
                );
                Arc::new(h)
            })
            .collect();
        let one = prost::Message::encoded_len(&pb::HiveView::from(hives[0].as_ref())) + 8;
        let parts = snapshot_parts(&hives, true, 3 * one, &|_| Vec::new());
        assert_eq!(parts.len(), 4);
        assert!(parts.iter().all(|p| p.coalesced && p.hives.len() <= 3));
        let more: Vec<bool> = parts.iter().map(|p| p.more).collect();
        assert_eq!(more, [true, true, true, false]);
        let all: Vec<&str> = parts.iter().flat_map(|p| p.hives.iter().map(|h| h.address.as_str())).collect();
        assert_eq!(all.len(), 10);
        let empty = snapshot_parts(&[], false, 100, &|_| Vec::new());
        assert_eq!(empty.len(), 1);
        assert!(!empty[0].more && empty[0].hives.is_empty());
    }
}
