//! One `WatchFleet` stream: the current fleet, then change events, then (if asked)
//! each hive's newest sample at the caller's rate.
//!
//! Pulled, like the hive's stream: nothing is produced until the transport asks. A
//! watcher that falls more than the event channel's capacity behind gets one
//! coalesced snapshot instead of the events it missed; samples are read from the
//! live views at each tick, so they coalesce by construction.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rbee_proto::v1 as pb;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Interval, MissedTickBehavior};
use tonic::Status;

use crate::fleet::{Fleet, FleetEvent};
use crate::scheduler::{Scheduler, SchedulerEvent};

type Event = pb::fleet_event::Event;

/// The state of one watcher.
pub struct WatchSession {
    /// The fleet.
    fleet: Arc<Fleet>,
    /// Structural events.
    events: broadcast::Receiver<FleetEvent>,
    /// Reservation events.
    books: broadcast::Receiver<SchedulerEvent>,
    /// Sample ticks, when asked for.
    samples: Option<Interval>,
    /// Per hive address, the time of the sample last sent.
    sent: HashMap<String, u64>,
    /// Sample events ready to go (at most one per hive per tick).
    queue: VecDeque<Event>,
    /// A snapshot to send next (`true`: it replaces missed events).
    snapshot: Option<bool>,
    /// Last sequence number sent.
    seq: u64,
}

impl WatchSession {
    /// Subscribes first, then snapshots, so that no change falls between the two.
    pub fn new(fleet: Arc<Fleet>, scheduler: &Scheduler, sample_every: Option<Duration>) -> Self {
        Self {
            events: fleet.subscribe(),
            books: scheduler.subscribe(),
            fleet,
            samples: sample_every.map(|every| {
                let mut t = tokio::time::interval(every);
                t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                t
            }),
            sent: HashMap::new(),
            queue: VecDeque::new(),
            snapshot: Some(false),
            seq: 0,
        }
    }

    /// Turns the session into the response stream.
    pub fn into_stream(self) -> impl Stream<Item = Result<pb::FleetEvent, Status>> + Send + 'static {
        futures::stream::unfold(self, |mut s| async move { s.next().await.map(|e| (Ok(e), s)) })
    }

    fn envelope(&mut self, event: Event) -> pb::FleetEvent {
        self.seq += 1;
        pb::FleetEvent {
            seq: self.seq,
            queen_time_unix_ms: rbee_shared::time::now_unix_ms(),
            event: Some(event),
        }
    }

    fn fill_samples(&mut self) {
        for hive in self.fleet.list() {
            let Some(sample) = hive.latest.as_deref() else { continue };
            let last = self.sent.entry(hive.address.clone()).or_insert(0);
            if sample.taken_at_unix_ms <= *last {
                continue;
            }
            *last = sample.taken_at_unix_ms;
            self.queue.push_back(Event::Sample(pb::HiveSample {
                address: hive.address.clone(),
                hive_id: hive.hive_id().to_owned(),
                sample: Some(sample.into()),
                sample_age_ms: hive.sample_age().map_or(0, |a| a.as_millis() as u64),
            }));
        }
    }

    async fn next(&mut self) -> Option<pb::FleetEvent> {
        loop {
            if let Some(coalesced) = self.snapshot.take() {
                let hives = self.fleet.list().iter().map(|h| h.as_ref().into()).collect();
                return Some(self.envelope(Event::Snapshot(pb::FleetSnapshot { hives, coalesced })));
            }
            // Structural events first, so samples never crowd them out.
            match self.events.try_recv() {
                Ok(e) => return Some(self.envelope((&e).into())),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.snapshot = Some(true);
                    continue;
                }
                Err(broadcast::error::TryRecvError::Closed) => return None,
                Err(broadcast::error::TryRecvError::Empty) => {}
            }
            match self.books.try_recv() {
                Ok(e) => return Some(self.envelope((&e).into())),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.snapshot = Some(true);
                    continue;
                }
                Err(broadcast::error::TryRecvError::Closed | broadcast::error::TryRecvError::Empty) => {}
            }
            if let Some(e) = self.queue.pop_front() {
                return Some(self.envelope(e));
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
            tokio::select! {
                () = shutdown.cancelled() => return None,
                e = self.events.recv() => match e {
                    Ok(e) => return Some(self.envelope((&e).into())),
                    Err(RecvError::Lagged(_)) => self.snapshot = Some(true),
                    Err(RecvError::Closed) => return None,
                },
                e = self.books.recv() => match e {
                    Ok(e) => return Some(self.envelope((&e).into())),
                    Err(RecvError::Lagged(_)) => self.snapshot = Some(true),
                    Err(RecvError::Closed) => return None,
                },
                () = tick => self.fill_samples(),
            }
        }
    }
}
