//! `hive serve --queen URL`: tell the queen where this hive is, so that it calls
//! `Discover`. The hive never streams unprompted: it only announces its address,
//! at start (with backoff until the queen answers) and again whenever the queen it
//! announces to has held no stream for a while (for example after the queen
//! restarted). Streams from anyone else do not count.

use std::net::IpAddr;
use std::time::Duration;

use rbee_proto::v1 as pb;
use rbee_proto::v1::fleet_client::FleetClient;
use rbee_shared::backoff::Backoff;
use tokio_util::sync::CancellationToken;

use crate::HiveError;
use crate::streams::Streams;

/// Announce again after the queen has held no stream for this long.
pub const REANNOUNCE_AFTER: Duration = Duration::from_secs(5);
/// First retry delay.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

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

/// The IP addresses the queen's URL names (resolved now).
pub async fn queen_addrs(queen: &str) -> Vec<IpAddr> {
    let Ok(uri) = queen.parse::<tonic::codegen::http::Uri>() else { return Vec::new() };
    let Some(host) = uri.host() else { return Vec::new() };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => addrs.map(|a| a.ip()).collect(),
        Err(e) => {
            tracing::debug!(%queen, error = %e, "cannot resolve the queen's address");
            Vec::new()
        }
    }
}

async fn announce_once(t: &Target) -> Result<bool, HiveError> {
    let queen = &t.queen;
    let unreachable = |source| HiveError::QueenUnreachable { queen: queen.clone(), source };
    let mut endpoint = tonic::transport::Endpoint::from_shared(queen.clone())
        .map_err(unreachable)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = &t.tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(unreachable)?;
    }
    let channel = endpoint.connect().await.map_err(unreachable)?;
    let mut request =
        tonic::Request::new(pb::AnnounceRequest { address: t.address.clone(), hive_id: t.hive_id.clone() });
    if let Some(token) = &t.token {
        rbee_shared::bearer::authorize(&mut request, token)?;
    }
    let resp = FleetClient::new(channel)
        .announce(request)
        .await
        .map_err(|status| HiveError::AnnounceRefused { queen: queen.clone(), status })?;
    Ok(resp.into_inner().added)
}

/// Waits until the queen has held no stream for `grace` (or cancellation: `false`).
async fn queen_gone(streams: &Streams, grace: Duration, cancel: &CancellationToken) -> bool {
    let mut queen_streams = streams.watch_queen_streams();
    loop {
        // Wait for "no queen stream"...
        let none = queen_streams.wait_for(|n| *n == 0);
        tokio::select! {
            () = cancel.cancelled() => return false,
            r = none => if r.is_err() { return false },
        }
        // ...that lasts `grace` without a new queen stream.
        let opened = queen_streams.wait_for(|n| *n > 0);
        tokio::select! {
            () = cancel.cancelled() => return false,
            () = tokio::time::sleep(grace) => return true,
            r = opened => if r.is_err() { return false },
        }
    }
}

/// Announces until cancelled (see the module docs).
pub async fn announce_loop(
    target: Target,
    streams: Streams,
    reannounce_after: Duration,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let queen = target.queen.clone();
    loop {
        streams.set_queen_addrs(queen_addrs(&queen).await);
        match announce_once(&target).await {
            Ok(added) => {
                tracing::info!(%queen, address = %target.address, added, "announced to the queen");
                backoff.reset();
                if !queen_gone(&streams, reannounce_after, &cancel).await {
                    return;
                }
                tracing::info!(%queen, "the queen holds no stream from this hive; announcing again");
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "announce failed");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
