//! `hive serve --queen URL`: tell the queen where this hive is, so that it calls
//! `Discover`. The hive never streams unprompted: it only announces its address,
//! at start (with backoff until the queen answers) and again whenever no queen has
//! held a stream for a while (for example after the queen restarted).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rbee_proto::v1 as pb;
use rbee_proto::v1::fleet_client::FleetClient;
use tokio_util::sync::CancellationToken;

/// Announce again after this long without any open stream.
pub const REANNOUNCE_AFTER: Duration = Duration::from_secs(5);
/// First retry delay.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Counts open MetricsStreams.
#[derive(Debug, Default, Clone)]
pub struct StreamCounter(Arc<AtomicUsize>);

/// Held by an open stream; decrements the count when dropped.
#[derive(Debug)]
pub struct StreamGuard(Arc<AtomicUsize>);

impl StreamCounter {
    /// Marks a stream as open until the guard drops.
    pub fn open(&self) -> StreamGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        StreamGuard(self.0.clone())
    }

    /// Open streams now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where and how to announce.
#[derive(Debug, Clone)]
pub struct Target {
    /// The queen's URL.
    pub queen: String,
    /// TLS for an https:// queen.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// The queen's write token.
    pub token: Option<String>,
    /// This hive's advertised address.
    pub address: String,
    /// This hive's id.
    pub hive_id: String,
}

async fn announce_once(t: &Target) -> Result<bool, String> {
    let queen = &t.queen;
    let mut endpoint = tonic::transport::Endpoint::from_shared(queen.clone())
        .map_err(|e| format!("--queen {queen:?}: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = &t.tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(|e| format!("--queen-ca: {e}"))?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("cannot reach the queen at {queen}: {e}"))?;
    let mut request =
        tonic::Request::new(pb::AnnounceRequest { address: t.address.clone(), hive_id: t.hive_id.clone() });
    if let Some(token) = &t.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the queen token has characters HTTP headers cannot carry")?;
        request.metadata_mut().insert("authorization", value);
    }
    let resp = FleetClient::new(channel)
        .announce(request)
        .await
        .map_err(|s| format!("the queen at {queen} refused the announce: {:?}: {}", s.code(), s.message()))?;
    Ok(resp.into_inner().added)
}

/// Announces until cancelled (see the module docs).
pub async fn announce_loop(target: Target, streams: StreamCounter, cancel: CancellationToken) {
    let mut delay = BACKOFF_MIN;
    let queen = target.queen.clone();
    loop {
        match announce_once(&target).await {
            Ok(added) => {
                tracing::info!(%queen, address = %target.address, added, "announced to the queen");
                delay = BACKOFF_MIN;
                // Wait until no queen has held a stream for REANNOUNCE_AFTER.
                let mut idle = Duration::ZERO;
                let step = Duration::from_millis(250);
                while idle < REANNOUNCE_AFTER {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(step) => {}
                    }
                    idle = if streams.count() == 0 { idle + step } else { Duration::ZERO };
                }
                tracing::info!(%queen, "no queen is streaming from this hive; announcing again");
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "announce failed");
                let jittered = delay.mul_f64(0.5 + rand_unit() * 0.5);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(jittered) => {}
                }
                delay = (delay * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// A number in [0, 1) from the clock's nanoseconds: enough to spread retries.
fn rand_unit() -> f64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}
