//! One `MetricsStream` session: subscribe, then snapshot (if the caller's view is
//! missing or outdated), samples every interval, and capability diffs.
//!
//! The session is pulled: it produces the next message only when the transport asks
//! for one. A slow reader therefore never makes memory grow: missed sample ticks are
//! skipped (the next sample is fresh), and capability changes coalesce into one diff
//! from the version the caller holds to the newest.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rbee_proto::v1 as pb;
use rbee_shared::{CapabilityDiff, HiveIdentity, VersionedCapabilities};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::announce::{StreamCounter, StreamGuard};
use crate::convert::StreamRequest;
use crate::monitor::Telemetry;

/// How long a caller may take to send its subscription.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// What every session needs from the hive.
#[derive(Clone)]
pub struct SessionContext {
    /// The hive's identity.
    pub identity: Arc<HiveIdentity>,
    /// The shared monitor.
    pub telemetry: Arc<Telemetry>,
    /// Interval when the subscriber sets none.
    pub default_interval: Duration,
    /// Cancelled when the hive shuts down; ends every stream.
    pub shutdown: CancellationToken,
    /// Counts open streams (the announcer re-announces when none is open).
    pub streams: StreamCounter,
}

/// The state of one stream.
pub struct Session {
    /// Shared hive context.
    ctx: SessionContext,
    /// Messages from the caller.
    inbound: Streaming<pb::QueenMessage>,
    /// False once the caller has half-closed its side (grpcurl does after `-d '{}'`).
    inbound_open: bool,
    /// New capability versions.
    caps_rx: watch::Receiver<Arc<VersionedCapabilities>>,
    /// The capabilities the caller holds, as far as this stream has told it.
    sent: Option<Arc<VersionedCapabilities>>,
    /// A snapshot to send next, and why.
    pending_snapshot: Option<pb::SnapshotReason>,
    /// The sample ticker.
    ticker: Interval,
    /// The last sequence number sent.
    seq: u64,
    /// Set after an error or shutdown: the stream ends.
    done: bool,
    /// Counts this stream as open while it lives.
    _open: StreamGuard,
}

fn ticker(every: Duration) -> Interval {
    let mut t = tokio::time::interval_at(Instant::now() + every, every);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

impl Session {
    /// Waits for the subscription and sets the session up. Returns `Err` for an invalid
    /// subscription, and `Ok(None)` when the caller went away first.
    pub async fn subscribe(
        ctx: SessionContext,
        mut inbound: Streaming<pb::QueenMessage>,
    ) -> Result<Option<Self>, Status> {
        let first = tokio::select! {
            () = ctx.shutdown.cancelled() => return Err(Status::unavailable("the hive is shutting down")),
            first = tokio::time::timeout(SUBSCRIBE_TIMEOUT, inbound.message()) => first,
        };
        let first = match first {
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "no subscription message within 30 s; send {} to subscribe",
                ));
            }
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Ok(None),
            Ok(Ok(Some(m))) => m,
        };
        let request = StreamRequest::try_from(&first)?;
        let mut caps_rx = ctx.telemetry.watch_capabilities();
        let current = caps_rx.borrow_and_update().clone();
        let (sent, pending_snapshot) = match &request.known {
            _ if request.resync => (None, Some(pb::SnapshotReason::Resync)),
            None => (None, Some(pb::SnapshotReason::Initial)),
            Some((epoch, version)) if *epoch == ctx.identity.epoch && *version == current.version => {
                (Some(current), None)
            }
            Some(_) => (None, Some(pb::SnapshotReason::Outdated)),
        };
        let interval = request.interval.unwrap_or(ctx.default_interval);
        tracing::debug!(?interval, resumed = sent.is_some(), "stream subscribed");
        Ok(Some(Self {
            inbound,
            inbound_open: true,
            caps_rx,
            sent,
            pending_snapshot,
            ticker: ticker(interval),
            seq: 0,
            done: false,
            _open: ctx.streams.open(),
            ctx,
        }))
    }

    /// Turns the session into the response stream.
    pub fn into_stream(self) -> impl Stream<Item = Result<pb::HiveMessage, Status>> + Send + 'static {
        futures::stream::unfold(self, |mut s| async move { s.next().await.map(|m| (m, s)) })
    }

    fn envelope(&mut self, payload: pb::hive_message::Payload) -> pb::HiveMessage {
        self.seq += 1;
        pb::HiveMessage {
            seq: self.seq,
            hive_time_unix_ms: rbee_shared::time::now_unix_ms(),
            payload: Some(payload),
        }
    }

    fn snapshot(&mut self, reason: pb::SnapshotReason) -> pb::HiveMessage {
        let caps = self.caps_rx.borrow_and_update().clone();
        let snapshot = pb::Snapshot {
            reason: reason as i32,
            identity: Some(self.ctx.identity.as_ref().into()),
            capabilities: Some(caps.as_ref().into()),
        };
        self.sent = Some(caps);
        self.envelope(pb::hive_message::Payload::Snapshot(snapshot))
    }

    /// A diff from what the caller holds to the newest capabilities, if they differ.
    fn diff_if_changed(&mut self) -> Option<pb::HiveMessage> {
        let newest = self.caps_rx.borrow_and_update().clone();
        let base = self.sent.as_ref()?;
        if base.version == newest.version {
            return None;
        }
        let diff = CapabilityDiff::between(base, &newest);
        self.sent = Some(newest);
        Some(self.envelope(pb::hive_message::Payload::Diff((&diff).into())))
    }

    fn apply(&mut self, request: StreamRequest) {
        if let Some(every) = request.interval {
            tracing::debug!(?every, "stream interval changed");
            self.ticker = ticker(every);
        }
        if request.resync {
            self.pending_snapshot = Some(pb::SnapshotReason::Resync);
        }
    }

    /// The next message for the caller, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Result<pb::HiveMessage, Status>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(reason) = self.pending_snapshot.take() {
                return Some(Ok(self.snapshot(reason)));
            }
            if let Some(diff) = self.diff_if_changed() {
                return Some(Ok(diff));
            }
            tokio::select! {
                () = self.ctx.shutdown.cancelled() => return None,
                message = self.inbound.message(), if self.inbound_open => match message {
                    Ok(Some(m)) => match StreamRequest::try_from(&m) {
                        Ok(request) => self.apply(request),
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e.into()));
                        }
                    },
                    Ok(None) => self.inbound_open = false,
                    // The caller reset or cancelled: nobody is listening any more.
                    Err(_) => return None,
                },
                changed = self.caps_rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    // Loop: diff_if_changed compares versions and sends the diff.
                }
                _ = self.ticker.tick() => {
                    return match self.ctx.telemetry.sample().await {
                        Ok(sample) => Some(Ok(self.envelope(pb::hive_message::Payload::Sample((&sample).into())))),
                        Err(e) => {
                            self.done = true;
                            Some(Err(e.into()))
                        }
                    };
                }
            }
        }
    }
}
