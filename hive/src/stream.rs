//! One `MetricsStream` session, in domain types: subscribe, then a snapshot (if the
//! caller's view is missing or outdated), samples every interval, and capability
//! diffs. The service converts to and from the wire at the edge (`convert.rs` inbound;
//! `stream_compact.rs` outbound, which also turns samples into compact samples on
//! streams that asked for them).
//!
//! The session is pulled: it produces the next message only when the transport asks
//! for one. A slow reader therefore never makes memory grow: missed sample ticks are
//! skipped (the next sample is fresh), and capability changes coalesce into one diff
//! from the version the caller holds to the newest.
//!
//! Two promises hold on every stream:
//! - every sample names exactly the GPUs of the capabilities the stream has delivered
//!   (the diff that reaches the sample's stamped version goes first);
//! - `taken_at` strictly increases (a late tick never resends an old reading).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rbee_shared::warn_limit::{Verdict, WarnLimiter};
use rbee_shared::{
    CapabilityDiff, HiveIdentity, HivePayload, HiveStreamMessage, QueenStreamMessage, Sample, SnapshotReason,
    VersionedCapabilities,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::HiveError;
use crate::monitor::Telemetry;
use crate::streams::StreamGuard;

/// How long a caller may take to send its subscription.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Readings taken at once when one does not match the stream's view (capabilities
/// moved on while measuring); after that the stream waits for the next tick.
const RESAMPLE_ATTEMPTS: u32 = 3;

/// The caller's messages, already converted (a bad one is an error item; the stream
/// ends when the caller half-closes or goes away).
pub type Inbound = Pin<Box<dyn Stream<Item = Result<QueenStreamMessage, HiveError>> + Send>>;

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
    /// Limits repeated warnings about bad messages, per peer.
    pub warnings: Arc<WarnLimiter<Option<IpAddr>>>,
}

/// The state of one stream.
pub struct Session {
    /// Shared hive context.
    ctx: SessionContext,
    /// Who the caller is (for logs).
    peer: Option<IpAddr>,
    /// Messages from the caller.
    inbound: Inbound,
    /// False once the caller has half-closed its side (grpcurl does after `-d '{}'`).
    inbound_open: bool,
    /// New capability versions.
    caps_rx: watch::Receiver<Arc<VersionedCapabilities>>,
    /// The capabilities the caller holds, as far as this stream has told it.
    sent: Option<Arc<VersionedCapabilities>>,
    /// A snapshot to send next, and why.
    pending_snapshot: Option<SnapshotReason>,
    /// A sample waiting for the diff that makes it consistent.
    pending_sample: Option<Sample>,
    /// Readings left to take at once, without waiting for a tick.
    resample: u32,
    /// The sample schedule.
    ticker: Ticker,
    /// The reading asked for at the next tick, while waiting for it.
    reading: Option<Reading>,
    /// The last sequence number sent.
    seq: u64,
    /// `taken_at` of the last sample sent.
    last_taken_at: u64,
    /// Set after an error or shutdown: the stream ends.
    done: bool,
    /// The caller asked for compact samples (the outbound edge makes them).
    compact: bool,
    /// Holds this stream's slot while it lives.
    _slot: StreamGuard,
}

/// A reading asked for at a tick: waits while the hive is held silent, then for the
/// tick, and measures.
type Reading = Pin<Box<dyn Future<Output = Result<Sample, HiveError>> + Send>>;

/// When samples are due: every `every`, the first one interval from now; a tick
/// missed (a slow reading) moves the schedule to one interval after it was taken
/// (tokio's `MissedTickBehavior::Delay`).
#[derive(Debug, Clone, Copy)]
struct Ticker {
    /// The interval.
    every: Duration,
    /// The next tick.
    next: Instant,
}

impl Ticker {
    fn new(every: Duration) -> Self {
        Self { every, next: Instant::now() + every }
    }

    /// Moves on from the tick just served.
    fn advance(&mut self) {
        let now = Instant::now();
        self.next += self.every;
        if self.next <= now {
            self.next = now + self.every;
        }
    }
}

fn ticker(every: Duration) -> Ticker {
    Ticker::new(every)
}

impl Session {
    /// Waits for the subscription and sets the session up. Returns `Err` for an invalid
    /// subscription, and `Ok(None)` when the caller went away first.
    pub async fn subscribe(
        ctx: SessionContext,
        peer: Option<IpAddr>,
        mut inbound: Inbound,
        slot: StreamGuard,
    ) -> Result<Option<Self>, HiveError> {
        let first = tokio::select! {
            () = ctx.shutdown.cancelled() => return Err(HiveError::ShuttingDown),
            first = tokio::time::timeout(SUBSCRIBE_TIMEOUT, inbound.next()) => first,
        };
        let request = match first {
            Err(_) => return Err(HiveError::SubscribeTimeout(SUBSCRIBE_TIMEOUT)),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => {
                warn_bad_message(&ctx, peer, &e);
                return Err(e);
            }
            Ok(Some(Ok(m))) => m,
        };
        let mut caps_rx = ctx.telemetry.watch_capabilities();
        let current = caps_rx.borrow_and_update().clone();
        let (sent, pending_snapshot) = match &request.known {
            _ if request.resync => (None, Some(SnapshotReason::Resync)),
            None => (None, Some(SnapshotReason::Initial)),
            Some(k) if k.epoch == ctx.identity.epoch && k.capability_version == current.version => {
                (Some(current), None)
            }
            Some(_) => (None, Some(SnapshotReason::Outdated)),
        };
        let interval = request.sample_interval.map_or(ctx.default_interval, Into::into);
        tracing::debug!(?interval, resumed = sent.is_some(), ?peer, "stream subscribed");
        Ok(Some(Self {
            peer,
            inbound,
            inbound_open: true,
            caps_rx,
            sent,
            pending_snapshot,
            pending_sample: None,
            resample: 0,
            ticker: ticker(interval),
            reading: None,
            seq: 0,
            last_taken_at: 0,
            done: false,
            compact: request.compact,
            _slot: slot,
            ctx,
        }))
    }

    /// Whether the caller asked for compact samples.
    pub fn wants_compact(&self) -> bool {
        self.compact
    }

    /// The capabilities the caller already holds when the stream resumed its view
    /// without a snapshot (`None` when a snapshot comes first).
    pub fn delivered(&self) -> Option<Arc<VersionedCapabilities>> {
        self.sent.clone()
    }

    /// Turns the session into the stream of messages for the caller.
    pub fn into_stream(self) -> impl Stream<Item = Result<HiveStreamMessage, HiveError>> + Send + 'static {
        futures::stream::unfold(self, |mut s| async move { s.next().await.map(|m| (m, s)) })
    }

    fn envelope(&mut self, payload: HivePayload) -> HiveStreamMessage {
        self.seq += 1;
        HiveStreamMessage { seq: self.seq, hive_time_unix_ms: rbee_shared::time::now_unix_ms(), payload }
    }

    fn snapshot(&mut self, reason: SnapshotReason) -> HiveStreamMessage {
        let caps = self.caps_rx.borrow_and_update().clone();
        self.sent = Some(caps.clone());
        let identity = self.ctx.identity.as_ref().clone();
        self.envelope(HivePayload::Snapshot { reason, identity, capabilities: caps.as_ref().clone() })
    }

    /// A diff from what the caller holds to the newest capabilities, if they differ.
    fn diff_if_changed(&mut self) -> Option<HiveStreamMessage> {
        let newest = self.caps_rx.borrow_and_update().clone();
        let base = self.sent.as_ref()?;
        if base.version == newest.version {
            return None;
        }
        let diff = CapabilityDiff::between(base, &newest);
        self.sent = Some(newest);
        Some(self.envelope(HivePayload::Diff(diff)))
    }

    /// The pending sample, if the caller's view is the one it was measured against.
    /// One measured against an older view is dropped and a new reading is due.
    fn consistent_sample(&mut self) -> Option<HiveStreamMessage> {
        let sample = self.pending_sample.take()?;
        let held = self.sent.as_ref().map(|c| c.version);
        if sample.capability_version != held {
            self.resample = self.resample.saturating_sub(1);
            return None;
        }
        self.resample = 0;
        self.last_taken_at = sample.taken_at_unix_ms;
        Some(self.envelope(HivePayload::Sample(sample)))
    }

    fn apply(&mut self, request: QueenStreamMessage) {
        if let Some(every) = request.sample_interval {
            tracing::debug!(every = ?every.get(), "stream interval changed");
            self.ticker = ticker(every.get());
            // The reading asked for at the old schedule is not wanted (dropping it
            // withdraws the request).
            self.reading = None;
        }
        if request.resync {
            self.pending_snapshot = Some(SnapshotReason::Resync);
        }
    }

    /// Takes a reading; keeps it for sending unless it is not newer than the last one.
    async fn measure(&mut self) -> Result<(), HiveError> {
        tokio::select! {
            () = self.ctx.shutdown.cancelled() => {
                // No reading, and none will come: the stream ends (not "try again",
                // which would spin while a resample is due).
                self.done = true;
                return Ok(());
            }
            () = self.ctx.telemetry.unsilenced() => {}
        }
        let sample = self.ctx.telemetry.sample().await?;
        self.keep(sample);
        Ok(())
    }

    /// Keeps a reading for sending unless it is not newer than the last one sent.
    fn keep(&mut self, sample: Sample) {
        if sample.taken_at_unix_ms > self.last_taken_at {
            self.pending_sample = Some(sample);
        } else {
            // A late tick got the reading this stream already sent: skip this tick.
            tracing::debug!(taken_at = sample.taken_at_unix_ms, "late tick: no newer reading; skipped");
            self.resample = 0;
        }
    }

    /// The reading for the next tick, asked for once and kept while other events are
    /// served (the sampler keeps the time: the stream wakes once, with the reading).
    fn ask_for_reading(&mut self) {
        if self.reading.is_some() {
            return;
        }
        let at = self.ticker.next;
        let telemetry = self.ctx.telemetry.clone();
        self.reading = Some(Box::pin(async move {
            telemetry.unsilenced().await;
            telemetry.sample_at(at).await
        }));
    }

    /// The next message for the caller, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Result<HiveStreamMessage, HiveError>> {
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
            if let Some(sample) = self.consistent_sample() {
                return Some(Ok(sample));
            }
            if self.resample > 0 {
                if let Err(e) = self.measure().await {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            }
            self.ask_for_reading();
            let Some(reading) = self.reading.as_mut() else { continue };
            tokio::select! {
                () = self.ctx.shutdown.cancelled() => return None,
                message = self.inbound.next(), if self.inbound_open => match message {
                    Some(Ok(request)) => self.apply(request),
                    Some(Err(e)) => {
                        warn_bad_message(&self.ctx, self.peer, &e);
                        self.done = true;
                        return Some(Err(e));
                    }
                    None => self.inbound_open = false,
                },
                changed = self.caps_rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    // Loop: diff_if_changed compares versions and sends the diff.
                }
                reading = reading => {
                    self.reading = None;
                    self.ticker.advance();
                    self.resample = RESAMPLE_ATTEMPTS;
                    match reading {
                        Ok(sample) => self.keep(sample),
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e));
                        }
                    }
                }
            }
        }
    }
}

/// Logs a bad message from `peer`, a few lines per peer per minute; the rest are counted.
fn warn_bad_message(ctx: &SessionContext, peer: Option<IpAddr>, e: &HiveError) {
    match ctx.warnings.check(&peer) {
        Verdict::Log { suppressed } => {
            tracing::warn!(?peer, error = %e, suppressed, "bad MetricsStream message; stream ended");
        }
        Verdict::Suppress => {}
    }
}
