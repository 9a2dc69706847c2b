//! One connection manager per hive: Discover, then hold the MetricsStream; detect
//! silence (stale, then lost) and broken connections (lost at once); reconnect with
//! exponential backoff and jitter; publish every change as a new snapshot.
//!
//! The manager is the only writer of its hive's view, so ingest takes no shared lock.

use std::sync::Arc;
use std::time::Duration;

use rbee_proto::v1 as pb;
use rbee_proto::v1::hive_client::HiveClient;
use rbee_shared::{HiveIdentity, HiveStreamMessage, Sample, VersionedCapabilities};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::LinkSettings;
use super::backoff::Backoff;
use super::dial::{call_reason, stream_reason};
use super::health::{HealthInput, evaluate};
use super::ingest::{IngestState, Outcome};
use super::window::SampleWindow;
use crate::fleet::{ConnState, Fleet, FleetEvent, FleetSettings, HiveSnapshot, NewHive};

/// Largest message the queen accepts from a hive.
pub const MAX_HIVE_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Why a connection ended.
enum End {
    /// Removed or shutting down.
    Cancelled,
    /// Failed; the reason is shown to users.
    Failed(String),
}

/// The manager's working state; published as `HiveSnapshot`s.
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
    /// Recent samples.
    window: SampleWindow,
    /// A validation failure, until a good snapshot replaces it.
    invalid: Option<String>,
    /// When the last message arrived on the current stream.
    last_rx: Instant,
    /// The names in the current connection's TLS certificate, which bound the hive id.
    cert: Option<super::identity::CertNames>,
}

/// Runs the manager for one hive until `cancel`.
pub(super) async fn manage(hive: NewHive, link: Arc<LinkSettings>) {
    let NewHive { fleet, publish: tx, cancel } = hive;
    let settings = fleet.settings().clone();
    let view = HiveSnapshot::clone(&tx.borrow());
    let mut m = Manager {
        window: SampleWindow::new(settings.history),
        fleet,
        link: link.clone(),
        tx,
        view,
        ingest: IngestState::default(),
        invalid: None,
        last_rx: Instant::now(),
        cert: None,
    };
    let mut backoff = Backoff { min: link.backoff_min, max: link.backoff_max, attempt: 0 };
    loop {
        m.set_state(ConnState::Connecting, "dialing");
        let reached_online = match m.session(&cancel).await {
            (End::Cancelled, _) => break,
            (End::Failed(reason), online) => {
                tracing::info!(address = %m.view.address, %reason, "hive connection ended");
                m.view.last_error = Some(reason.clone());
                m.set_state(ConnState::Lost, &reason);
                online
            }
        };
        if reached_online {
            backoff.reset();
        }
        let delay = backoff.next();
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

    /// Recomputes health and publishes the view; emits state and health events.
    fn publish(&mut self) {
        let input = HealthInput {
            state: self.view.state,
            silence: Some(self.last_rx.elapsed()),
            last_error: self.view.last_error.as_deref(),
            invalid: self.invalid.as_deref(),
            sample: self.view.latest.as_deref(),
            caps: self.view.caps.as_deref(),
            cpu_window_mean: self.window.cpu_mean(self.settings().thresholds.cpu_window),
        };
        let report = evaluate(&input, &self.settings().thresholds);
        let before = std::mem::replace(&mut self.view.health, report);
        let snapshot = Arc::new(self.view.clone());
        self.tx.send_replace(snapshot.clone());
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
        self.view.state_since_unix_ms = rbee_shared::time::now_unix_ms();
        tracing::debug!(address = %self.view.address, from = from.as_str(), to = state.as_str(), reason, "hive state");
        self.publish();
        let hive = self.tx.borrow().clone();
        self.fleet.emit(FleetEvent::StateChanged { hive, from, reason: reason.to_owned() });
    }

    fn take_full(&mut self, identity: HiveIdentity, caps: VersionedCapabilities) -> Result<(), String> {
        self.cert.as_ref().map_or(Ok(()), |cert| cert.check(&identity.hive_id))?;
        if let Some(holder) = self.fleet.holder_of(&identity.hive_id, &self.view.address) {
            return Err(format!(
                "hive id {:?} is already managed at {holder}; refusing a second address",
                identity.hive_id
            ));
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
            tracing::info!(address = %self.view.address, "hive restarted (new epoch); took its snapshot whole");
        }
        self.view.identity = self.ingest.identity.clone();
        self.view.caps = self.ingest.caps.clone();
        self.publish();
        if let Some(caps) = self.view.caps.clone() {
            let hive = self.tx.borrow().clone();
            self.fleet.emit(FleetEvent::CapabilitiesChanged { hive, restarted, caps });
        }
    }

    fn take_sample(&mut self, sample: Sample) {
        self.window.push(&sample);
        self.view.stats = self.window.stats(self.settings().stats_window);
        self.view.latest = Some(Arc::new(sample));
        self.view.latest_received = Some(std::time::Instant::now());
        self.publish();
    }

    async fn connect(&mut self) -> Result<HiveClient<Channel>, String> {
        let dialed = super::dial::dial(&self.view.address, &self.link, self.view.origin).await?;
        self.cert = dialed.cert;
        Ok(HiveClient::new(dialed.channel).max_decoding_message_size(MAX_HIVE_MESSAGE_BYTES))
    }

    /// One connection: returns why it ended and whether it reached `online`.
    async fn session(&mut self, cancel: &CancellationToken) -> (End, bool) {
        let attempt = async {
            let mut client = self.connect().await?;
            let discover =
                tokio::time::timeout(self.link.connect_timeout, client.discover(pb::DiscoverRequest {}))
                    .await
                    .map_err(|_| "Discover timed out".to_owned())?
                    .map_err(|s| call_reason(&self.view.address, "Discover", &s))?
                    .into_inner();
            let identity = discover.identity.as_ref().ok_or("Discover returned no identity")?;
            let identity = HiveIdentity::try_from(identity).map_err(|e| format!("Discover: {e}"))?;
            let caps = discover.capabilities.as_ref().ok_or("Discover returned no capabilities")?;
            let caps = VersionedCapabilities::try_from(caps).map_err(|e| format!("Discover: {e}"))?;
            self.take_full(identity, caps)?;
            let (out, out_rx) = mpsc::channel::<pb::QueenMessage>(4);
            let (epoch, version) = self.ingest.resume_point().ok_or("no resume point after Discover")?;
            let first = pb::QueenMessage {
                sample_interval_ms: Some(self.view.sample_interval.as_millis() as u32),
                known_epoch: Some(epoch),
                known_capability_version: Some(version),
                resync: false,
            };
            out.try_send(first).map_err(|_| "cannot queue the subscription")?;
            let inbound = client
                .metrics_stream(ReceiverStream::new(out_rx))
                .await
                .map_err(|s| call_reason(&self.view.address, "MetricsStream", &s))?
                .into_inner();
            Ok::<_, String>((inbound, out))
        };
        let (mut inbound, out) = tokio::select! {
            () = cancel.cancelled() => return (End::Cancelled, false),
            r = attempt => match r {
                Ok(ok) => ok,
                Err(reason) => return (End::Failed(reason), false),
            },
        };
        self.ingest.start_stream();
        self.last_rx = Instant::now();
        self.set_state(ConnState::Online, "streaming");
        let stale_after = self.settings().stale_after();
        let lost_after = self.settings().lost_timeout;
        loop {
            let silent_for = self.last_rx.elapsed();
            let wake = if silent_for < stale_after {
                self.last_rx + stale_after
            } else {
                // While stale, refresh "no sample for N s" every second until lost.
                (Instant::now() + Duration::from_secs(1)).min(self.last_rx + lost_after)
            };
            tokio::select! {
                () = cancel.cancelled() => return (End::Cancelled, true),
                message = inbound.message() => match message {
                    Ok(Some(m)) => {
                        self.last_rx = Instant::now();
                        if self.view.state == ConnState::Stale {
                            self.set_state(ConnState::Online, "messages flow again");
                        }
                        if let Err(reason) = self.handle(&m, &out) {
                            return (End::Failed(reason), true);
                        }
                    }
                    Ok(None) => return (End::Failed("the hive ended the stream".into()), true),
                    Err(s) => return (End::Failed(stream_reason(&s)), true),
                },
                () = tokio::time::sleep_until(wake) => {
                    let silent_for = self.last_rx.elapsed();
                    if silent_for >= lost_after {
                        return (End::Failed(format!("no message for {:.1} s", silent_for.as_secs_f64())), true);
                    }
                    if silent_for >= stale_after {
                        if self.view.state == ConnState::Stale {
                            self.publish();
                        } else {
                            let reason = format!("no message for {:.1} s", silent_for.as_secs_f64());
                            self.set_state(ConnState::Stale, &reason);
                        }
                    }
                }
            }
        }
    }

    /// Applies one stream message. `Err` ends the connection.
    fn handle(&mut self, m: &pb::HiveMessage, out: &mpsc::Sender<pb::QueenMessage>) -> Result<(), String> {
        let resync = |view: &mut HiveSnapshot| {
            view.counters.resyncs += 1;
            // The channel holds a few messages; if it is full a resync is already queued.
            let _ = out.try_send(pb::QueenMessage { resync: true, ..Default::default() });
        };
        let message = match HiveStreamMessage::try_from(m) {
            Ok(message) => message,
            Err(e) => {
                self.view.counters.invalid_messages += 1;
                tracing::warn!(address = %self.view.address, error = %e, "invalid message from hive; asking for a resync");
                let first = self.invalid.is_none();
                self.invalid = Some(e.to_string());
                if first {
                    self.ingest.awaiting_resync = true;
                    resync(&mut self.view);
                }
                self.publish();
                return Ok(());
            }
        };
        match self.ingest.apply(message) {
            Outcome::Snapshot { restarted } => {
                let id = self.ingest.identity.as_ref().map(|i| i.hive_id.as_str()).unwrap_or_default();
                self.cert.as_ref().map_or(Ok(()), |cert| cert.check(id))?;
                self.invalid = None;
                self.caps_changed(restarted);
            }
            Outcome::Diff => self.caps_changed(false),
            Outcome::Sample(s) => self.take_sample(s),
            Outcome::NeedResync(reason) => {
                self.view.counters.gaps += 1;
                tracing::warn!(address = %self.view.address, %reason, "gap in the hive's stream; asking for a resync");
                resync(&mut self.view);
                self.publish();
            }
            Outcome::Dropped => {}
            Outcome::Refused(reason) => return Err(reason),
        }
        Ok(())
    }
}
