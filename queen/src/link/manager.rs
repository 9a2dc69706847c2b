//! One link per hive: Discover, then hold the MetricsStream; judge freshness by the
//! last *applied* sample (stale, then lost, whatever else arrives); bound how long a
//! resync may go unanswered; reconnect with exponential backoff and jitter; publish
//! every change as a new snapshot.
//!
//! The link is the only writer of its hive's view, so ingest takes no shared lock.

use std::sync::Arc;
use std::time::Duration;

use rbee_proto::v1 as pb;
use rbee_proto::v1::hive_client::HiveClient;
use rbee_shared::backoff::Backoff;
use rbee_shared::stream_message::KnownView;
use rbee_shared::warn_limit::{Verdict, WarnLimiter};
use rbee_shared::{HiveIdentity, QueenStreamMessage, Sample, SampleInterval, VersionedCapabilities};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::LinkSettings;
use super::dial::{MAX_HIVE_MESSAGE_BYTES, call_reason, stream_reason};
use super::error::LinkError;
use super::health::HealthInput;
use super::identity::CertNames;
use super::ingest::{IngestState, Outcome};
use super::recycle::Spares;
use super::window::SampleWindow;
use crate::fleet::{ConnState, Fleet, FleetEvent, FleetSettings, HiveSnapshot, NewHive};

/// At most one warning about a hive per this period.
const WARN_PERIOD: Duration = Duration::from_secs(10);

/// Shortest bound on an unanswered resync.
const MIN_RESYNC_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a connection ended.
enum End {
    /// Removed or shutting down.
    Cancelled,
    /// Failed; the reason is shown to users.
    Failed(LinkError),
}

/// The link's working state; published as `HiveSnapshot`s.
struct Manager {
    /// The fleet (settings, events, id conflicts).
    fleet: Arc<Fleet>,
    /// How to dial.
    link: Arc<LinkSettings>,
    /// Where this hive's view is published.
    tx: watch::Sender<Arc<HiveSnapshot>>,
    /// The view being built.
    view: HiveSnapshot,
    /// Identity and capabilities.
    ingest: IngestState,
    /// The inbound edge: wire messages to domain ones, compact samples decoded against
    /// the capabilities held.
    compact: super::ingest_compact::CompactIngest,
    /// Recent samples.
    window: SampleWindow,
    /// The capability version the newest sample was measured against.
    sample_version: u64,
    /// A validation failure, until a good snapshot replaces it.
    invalid: Option<String>,
    /// When the last sample was applied (or the stream opened, before the first):
    /// freshness follows this clock alone.
    last_applied: Instant,
    /// When a resync was asked for and not yet answered.
    resync_since: Option<Instant>,
    /// The queen's wall clock (unix ms) when the newest sample arrived: its `taken_at`
    /// and uptime are judged against it.
    sample_received_unix_ms: Option<u64>,
    /// The window's clock.
    started: Instant,
    /// Repeated warnings about this hive, rate-limited: one line per period for the
    /// link (its one key), with the count of the ones left out.
    warnings: WarnLimiter<()>,
    /// The names in the current connection's TLS certificate, which bound the hive id.
    cert: Option<CertNames>,
    /// Turns to dial, shared by every link.
    dials: Arc<tokio::sync::Semaphore>,
    /// The most NVLink links each GPU pair has had, to say which went down.
    nvlinks: super::nvlink_baseline::NvlinkBaseline,
    /// What the snapshot before last held, refilled in place when nobody else holds it
    /// any more ([`super::recycle`]).
    spare: Spares,
}

/// Runs the link for one hive until it is cancelled.
pub(super) async fn manage(hive: NewHive, link: Arc<LinkSettings>, dials: Arc<tokio::sync::Semaphore>) {
    let NewHive { fleet, publish: tx, cancel } = hive;
    let settings = fleet.settings().clone();
    let view = HiveSnapshot::clone(&tx.borrow());
    let mut m = Manager {
        window: SampleWindow::new(settings.history, settings.stats_window, settings.thresholds.cpu_window),
        fleet,
        link: link.clone(),
        tx,
        view,
        ingest: IngestState::default(),
        compact: Default::default(),
        sample_version: 0,
        invalid: None,
        last_applied: Instant::now(),
        resync_since: None,
        sample_received_unix_ms: None,
        started: Instant::now(),
        warnings: WarnLimiter::new(1, WARN_PERIOD, 1),
        cert: None,
        dials,
        nvlinks: Default::default(),
        spare: Spares::default(),
    };
    let mut backoff = Backoff::new(link.backoff_min, link.backoff_max);
    loop {
        // A lost hive stays lost through its redials, until its stream is open again:
        // flapping between lost and connecting on every retry would tell operators and
        // watchers nothing new, and hide how many hives are really gone.
        if m.view.state != ConnState::Lost {
            m.set_state(ConnState::Connecting, "dialing");
        }
        let reached_online = match m.session(&cancel).await {
            (End::Cancelled, _) => break,
            (End::Failed(error), online) => {
                let reason = error.to_string();
                tracing::info!(address = %m.view.address, %reason, "hive connection ended");
                m.view.last_error = Some(Arc::from(reason.as_str()));
                if m.view.state == ConnState::Lost {
                    // Still lost: the view shows the newest error.
                    m.publish();
                } else {
                    m.set_state(ConnState::Lost, &reason);
                }
                online
            }
        };
        if reached_online {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
        m.view.counters.reconnects += 1;
    }
    m.set_state(ConnState::Removed, "removed");
}

/// True when two reason lists name the same problems, ignoring the figures in them
/// (so "no sample for 1.2 s" becoming "no sample for 2.2 s" is not a change).
fn same_problems(a: &[String], b: &[String]) -> bool {
    let key = |r: &String| r.chars().filter(|c| !c.is_ascii_digit() && *c != '.').collect::<String>();
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

impl Manager {
    fn settings(&self) -> &FleetSettings {
        self.fleet.settings()
    }

    /// How long a resync may go unanswered before the link reconnects.
    fn resync_timeout(&self) -> Duration {
        self.settings().stale_after().max(MIN_RESYNC_TIMEOUT)
    }

    /// Recomputes health and publishes the view; emits state and health events.
    fn publish(&mut self) {
        let ingest = &self.ingest;
        let sample_version = self.sample_version;
        let pending = |id: &str| ingest.added_in(id).is_some_and(|v| v > sample_version);
        let links_down = self.nvlinks.update(self.view.caps.as_deref());
        let input = HealthInput {
            state: self.view.state,
            silence: Some(self.last_applied.elapsed()),
            last_error: self.view.last_error.as_deref(),
            invalid: self.invalid.as_deref(),
            sample: self.view.latest.as_deref(),
            caps: self.view.caps.as_deref(),
            cpu_window_mean: self.window.cpu_mean(),
            received_unix_ms: self.sample_received_unix_ms,
            pending: &pending,
            links_down,
        };
        let report = self.spare.health(&input, &self.fleet.settings().thresholds);
        let before = std::mem::replace(&mut self.view.health, report);
        self.view.refresh_placement();
        // A shallow copy: identity, capabilities, sample, health, stats and the last
        // error are shared; only the address and a few numbers are copied.
        let snapshot = self.spare.publish(&self.view, &self.tx);
        self.fleet.changed(&snapshot.address);
        if snapshot.health.health != before.health
            || !same_problems(&snapshot.health.reasons, &before.reasons)
        {
            self.fleet.emit(FleetEvent::HealthChanged { hive: snapshot, from: before.health });
        }
    }

    fn set_state(&mut self, state: ConnState, reason: &str) {
        let from = self.view.state;
        if from == state {
            return;
        }
        self.view.state = state;
        let now = rbee_shared::time::now_unix_ms();
        self.view.state_since_unix_ms = now;
        self.view.unreachable_since_unix_ms = match state {
            ConnState::Online | ConnState::Stale => None,
            _ => self.view.unreachable_since_unix_ms.or(Some(now)),
        };
        tracing::debug!(address = %self.view.address, from = from.as_str(), to = state.as_str(), reason, "hive state");
        self.publish();
        let hive = self.tx.borrow().clone();
        self.fleet.emit(FleetEvent::StateChanged { hive, from, reason: reason.to_owned() });
    }

    /// With mutual TLS, the hive may only claim an id its certificate carries.
    fn check_certificate(&self, hive_id: &str) -> Result<(), LinkError> {
        self.cert.as_ref().map_or(Ok(()), |cert| cert.check(hive_id)).map_err(LinkError::Certificate)
    }

    fn take_full(&mut self, identity: HiveIdentity, caps: VersionedCapabilities) -> Result<(), LinkError> {
        self.check_certificate(&identity.hive_id)?;
        if let Err(crate::fleet::IdTaken { holder }) =
            self.fleet.claim_id(&identity.hive_id, &self.view.address)
        {
            return Err(LinkError::IdConflict { id: identity.hive_id, holder });
        }
        let changed =
            self.ingest.caps.as_deref() != Some(&caps) || self.ingest.identity.as_deref() != Some(&identity);
        let restarted = self.ingest.replace(identity, caps)?;
        self.invalid = None;
        if changed || restarted {
            self.caps_changed(restarted);
        }
        Ok(())
    }

    fn caps_changed(&mut self, restarted: bool) {
        if restarted {
            self.view.counters.restarts += 1;
            // The old process's last reading says nothing about the new one's devices.
            self.view.latest = None;
            self.sample_version = 0;
            tracing::info!(address = %self.view.address, "hive restarted (new epoch); took its snapshot whole");
        }
        self.view.identity = self.ingest.identity.clone();
        self.view.caps = self.ingest.published_caps();
        self.publish();
        if let Some(caps) = self.view.caps.clone() {
            let hive = self.tx.borrow().clone();
            self.fleet.emit(FleetEvent::CapabilitiesChanged { hive, restarted, caps });
        }
    }

    fn take_sample(&mut self, sample: Arc<Sample>) {
        let received_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.window.push(&sample, received_ms);
        self.view.stats = self.spare.stats(&self.window);
        // The version the hive measured against (ingest refused a newer one than held);
        // hives that predate the stamp measured against the held version.
        self.sample_version = sample.capability_version.unwrap_or_else(|| self.ingest.version());
        let taken_at = sample.taken_at_unix_ms;
        self.sample_received_unix_ms = Some(rbee_shared::time::now_unix_ms());
        self.view.latest = Some(sample);
        self.view.latest_received = Some(std::time::Instant::now());
        self.view.samples_applied += 1;
        self.last_applied = Instant::now();
        if self.view.state == ConnState::Stale {
            self.set_state(ConnState::Online, "samples apply again");
        } else {
            self.publish();
        }
        self.fleet.sample_published(taken_at);
    }

    async fn connect(&mut self) -> Result<HiveClient<Channel>, LinkError> {
        let dialed = super::dial::dial(&self.view.address, &self.link, self.view.origin).await?;
        self.cert = dialed.cert;
        Ok(HiveClient::new(dialed.channel).max_decoding_message_size(MAX_HIVE_MESSAGE_BYTES))
    }

    /// Dials, discovers and opens the stream. What the link sends the hive goes through
    /// the returned channel as domain messages; they become wire messages here only.
    async fn open(
        &mut self,
    ) -> Result<(tonic::Streaming<pb::HiveMessage>, mpsc::Sender<QueenStreamMessage>), LinkError> {
        let mut client = self.connect().await?;
        let discover =
            tokio::time::timeout(self.link.connect_timeout, client.discover(pb::DiscoverRequest {}))
                .await
                .map_err(|_| LinkError::Timeout("Discover"))?
                .map_err(|s| LinkError::Call(call_reason(&self.view.address, "Discover", &s)))?
                .into_inner();
        let missing = |field: &str| rbee_shared::ConvertError::new(field, "missing");
        let identity =
            HiveIdentity::try_from(discover.identity.as_ref().ok_or_else(|| missing("identity"))?)?;
        let caps = VersionedCapabilities::try_from(
            discover.capabilities.as_ref().ok_or_else(|| missing("capabilities"))?,
        )?;
        let (epoch, version) = (identity.epoch.clone(), caps.version);
        self.take_full(identity, caps)?;
        let (out, out_rx) = mpsc::channel::<QueenStreamMessage>(4);
        let first = QueenStreamMessage {
            // The fleet's settings were validated: the interval is within bounds.
            sample_interval: SampleInterval::new(self.view.sample_interval).ok(),
            known: Some(KnownView { epoch, capability_version: version }),
            resync: false,
            // Deadband deltas: a few dozen bytes a sample instead of hundreds.
            compact: true,
        };
        // A new channel has room for the first message.
        let _ = out.try_send(first);
        let wire = ReceiverStream::new(out_rx).map(|m| pb::QueenMessage::from(&m));
        let open = client.metrics_stream(wire);
        let inbound = tokio::time::timeout(self.link.connect_timeout, open)
            .await
            .map_err(|_| LinkError::Timeout("MetricsStream"))?
            .map_err(|s| LinkError::Call(call_reason(&self.view.address, "MetricsStream", &s)))?
            .into_inner();
        Ok((inbound, out))
    }

    /// One connection: returns why it ended and whether it reached `online`.
    async fn session(&mut self, cancel: &CancellationToken) -> (End, bool) {
        // The dial's timeouts start once it may go: waiting for a turn is not a failure.
        let permit = tokio::select! {
            () = cancel.cancelled() => return (End::Cancelled, false),
            p = self.dials.clone().acquire_owned() => p,
        };
        // Boxed: dialing (TLS, resolution, Discover) is the largest state of the link's
        // future, and a task is as large as its largest state for as long as it lives;
        // boxed, it is held only while dialing, not by every streaming hive's task.
        let opened = tokio::select! {
            () = cancel.cancelled() => return (End::Cancelled, false),
            r = Box::pin(self.open()) => r,
        };
        drop(permit);
        let (mut inbound, out) = match opened {
            Ok(ok) => ok,
            Err(error) => return (End::Failed(error), false),
        };
        self.ingest.start_stream();
        self.compact.reset();
        self.resync_since = None;
        // The first sample is due within the stale bound of the stream opening.
        self.last_applied = Instant::now();
        self.set_state(ConnState::Online, "streaming");
        let stale_after = self.settings().stale_after();
        let lost_after = self.settings().lost_timeout;
        loop {
            let mut wake = if self.view.state == ConnState::Stale {
                // While stale, refresh "no sample for N s" every second until lost.
                (Instant::now() + Duration::from_secs(1)).min(self.last_applied + lost_after)
            } else {
                self.last_applied + stale_after
            };
            if let Some(since) = self.resync_since {
                wake = wake.min(since + self.resync_timeout());
            }
            tokio::select! {
                () = cancel.cancelled() => return (End::Cancelled, true),
                message = inbound.message() => match message {
                    Ok(Some(m)) => {
                        if let Err(error) = self.handle(&m, &out) {
                            return (End::Failed(error), true);
                        }
                    }
                    Ok(None) => return (End::Failed(LinkError::Ended), true),
                    Err(s) => return (End::Failed(LinkError::Broken(stream_reason(&s))), true),
                },
                () = tokio::time::sleep_until(wake) => {}
            }
            if let Some(error) = self.check_freshness(stale_after, lost_after) {
                return (End::Failed(error), true);
            }
        }
    }

    /// Applies the freshness rules: stale, lost, an unanswered resync. Runs after every
    /// message and timer, so a stream of messages that never apply cannot keep a hive
    /// fresh.
    fn check_freshness(&mut self, stale_after: Duration, lost_after: Duration) -> Option<LinkError> {
        if let Some(since) = self.resync_since
            && since.elapsed() >= self.resync_timeout()
        {
            return Some(LinkError::ResyncUnanswered(since.elapsed()));
        }
        let quiet = self.last_applied.elapsed();
        if quiet >= lost_after {
            return Some(LinkError::NoSample(quiet));
        }
        if quiet >= stale_after {
            if self.view.state == ConnState::Stale {
                self.publish();
            } else {
                let reason = format!("no sample applied for {:.1} s", quiet.as_secs_f64());
                self.set_state(ConnState::Stale, &reason);
            }
        }
        None
    }

    /// Asks the hive for a snapshot, once per unanswered request.
    fn ask_resync(&mut self, out: &mpsc::Sender<QueenStreamMessage>) {
        if self.resync_since.is_some() {
            return;
        }
        self.resync_since = Some(Instant::now());
        self.view.counters.resyncs += 1;
        // A new request finds room: at most one is outstanding.
        let _ = out.try_send(QueenStreamMessage { resync: true, ..Default::default() });
    }

    /// Applies one stream message. `Err` ends the connection.
    fn handle(
        &mut self,
        m: &pb::HiveMessage,
        out: &mpsc::Sender<QueenStreamMessage>,
    ) -> Result<(), LinkError> {
        if m.hive_time_unix_ms != 0 {
            let now = rbee_shared::time::now_unix_ms();
            self.view.clock_skew_ms = Some(super::health::skew_ms(m.hive_time_unix_ms, now));
        }
        let message = match self.compact.decode(m, self.ingest.caps.as_ref()) {
            Ok(message) => message,
            Err(e) => {
                self.view.counters.invalid_messages += 1;
                if let Verdict::Log { suppressed } = self.warnings.check(&()) {
                    tracing::warn!(address = %self.view.address, error = %e, suppressed,
                        "invalid message from hive; asking for a resync");
                }
                self.invalid = Some(e.to_string());
                self.ingest.awaiting_resync = true;
                self.ask_resync(out);
                self.publish();
                return Ok(());
            }
        };
        match self.ingest.apply(message) {
            Outcome::Snapshot { restarted } => {
                let id = self.ingest.identity.as_ref().map(|i| i.hive_id.clone()).unwrap_or_default();
                self.check_certificate(&id)?;
                self.invalid = None;
                self.resync_since = None;
                self.caps_changed(restarted);
            }
            Outcome::Diff => self.caps_changed(false),
            Outcome::Sample(s) => self.take_sample(s),
            Outcome::NeedResync(reason) => {
                self.view.counters.gaps += 1;
                if let Verdict::Log { suppressed } = self.warnings.check(&()) {
                    tracing::warn!(address = %self.view.address, %reason, suppressed,
                        "gap in the hive's stream; asking for a resync");
                }
                self.ask_resync(out);
                self.publish();
            }
            Outcome::Dropped => {}
            Outcome::Refused(error) => return Err(error.into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing: the link under test is made by hand.
    struct NoLinks;

    impl crate::fleet::Watcher for NoLinks {
        fn start(&self, _: NewHive) {}
    }

    /// Every hive's link task lives as long as the hive, and is as large as its largest
    /// state: dialing (resolution, TLS, Discover) must not set that size for every
    /// streaming hive (issue 24: the queen's memory per hive). 5,832 bytes with the dial
    /// inline, 2,584 boxed (debug build, where tests run).
    #[test]
    fn a_links_task_does_not_hold_room_for_dialing() {
        let fleet = Fleet::new(FleetSettings::default(), CancellationToken::new(), NoLinks);
        let snapshot = HiveSnapshot::pending(
            "http://127.0.0.1:1".into(),
            crate::fleet::Origin::Static,
            Duration::from_secs(1),
        );
        let (publish, _rx) = watch::channel(Arc::new(snapshot));
        let hive = NewHive { fleet, publish, cancel: CancellationToken::new() };
        let task = manage(hive, Arc::new(LinkSettings::default()), Arc::new(tokio::sync::Semaphore::new(1)));
        let size = std::mem::size_of_val(&task);
        assert!(size <= 3584, "a link's task is {size} bytes");
    }
}
