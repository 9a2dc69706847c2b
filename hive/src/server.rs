//! `run` and `serve`: the hive server — the Hive service, gRPC health (`grpc.health.v1`) and
//! reflection (v1 and v1alpha) on one listener, with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use rbee_proto::v1::hive_server::HiveServer;
use rbee_shared::HiveIdentity;
use rbee_shared::grpc_server::{self, MAX_DECODING_MESSAGE_BYTES, cancel_on};
use rbee_shared::model::MAX_FETCH_REQUEST_BYTES;
use rbee_shared::warn_limit::WarnLimiter;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::HiveError;
use crate::announce::announce_loop;
use crate::config::HiveConfig;
use crate::models::Models;
use crate::models::serve::PeerServer;
use crate::models::source::ModelsSource;
use crate::monitor::Telemetry;
use crate::preload::Preloader;
use crate::preload::source::PreloadSource;
use crate::service::HiveService;
use crate::stream::SessionContext;
use crate::streams::Streams;

/// Streams one HTTP/2 connection may open beyond `--max-streams` (Discover, health),
/// so that a caller over the stream limit gets RESOURCE_EXHAUSTED rather than waiting.
const EXTRA_STREAMS_PER_CONNECTION: usize = 16;
/// Warnings about bad messages per peer per window.
const WARN_BURST: u32 = 5;
/// The warning window.
const WARN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Peers the warning limiter remembers.
const WARN_PEERS: usize = 1024;
/// The services the hive serves (what reflection lists, with health and reflection).
const SERVICES: &[&str] = &["rbee.v1.Hive"];

/// The address to advertise for a listener bound to `local` (`https://` with TLS).
pub fn default_advertise(local: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if local.ip().is_unspecified() {
        let host = Some(rbee_shared::hostname::local_hostname())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{scheme}://{host}:{}", local.port())
    } else {
        format!("{scheme}://{local}")
    }
}

/// The epoch id of a process start at `now`: a time-ordered UUIDv7, or a random UUIDv4 when
/// the clock reads before 1970 (UUIDv7 cannot encode it and `Uuid::now_v7` panics there), so a
/// hive with a bad clock still starts; the bad clock is logged, and the queen degrades the
/// implausible `started_at_unix_ms` it reports.
pub fn epoch_id(now: std::time::SystemTime) -> String {
    match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            since.as_secs(),
            since.subsec_nanos(),
        ))
        .to_string(),
        Err(before) => {
            tracing::warn!(
                seconds_before_1970 = before.duration().as_secs(),
                "the system clock reads before 1970; using a random epoch id"
            );
            uuid::Uuid::new_v4().to_string()
        }
    }
}

/// Builds the identity reported by Discover for this process start.
pub fn identity(config: &HiveConfig, local: SocketAddr, telemetry: &Telemetry) -> HiveIdentity {
    HiveIdentity {
        hive_id: config.hive_id.clone(),
        epoch: epoch_id(std::time::SystemTime::now()),
        hostname: rbee_shared::hostname::local_hostname(),
        advertised_address: config
            .advertise
            .clone()
            .unwrap_or_else(|| default_advertise(local, config.tls.is_some())),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol_version: rbee_proto::PROTOCOL_VERSION,
        labels: config.labels.clone(),
        gpu_source: telemetry.gpu_source(),
        started_at_unix_ms: rbee_shared::time::now_unix_ms(),
    }
}

/// Runs the hive on `listener` until `shutdown` resolves; then stops accepting, ends
/// every stream and returns.
pub async fn run(
    config: HiveConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HiveError> {
    if config.max_streams == 0 {
        return Err(HiveError::Config("max_streams must be at least 1".into()));
    }
    let cancel = CancellationToken::new();
    // Dropping `run` (an embedding task aborted) stops the model downloads too.
    let _stop_on_drop = cancel.clone().drop_guard();
    let models = match &config.models {
        Some(models) => match Models::open(models.clone(), cancel.clone()).await {
            Ok(m) => Some(m),
            Err(e) if models.optional => {
                tracing::warn!(error = %e, "no models directory: FetchModel is off (give --models-dir)");
                None
            }
            Err(e) => return Err(e),
        },
        None => None,
    };
    let preloader = match &models {
        Some(m) => Some(Preloader::start(config.preload.clone(), m.clone(), cancel.clone())?),
        None => None,
    };
    let extra: Vec<Box<dyn crate::source::DeviceSource>> = match (&models, &preloader) {
        (Some(m), Some(p)) => {
            vec![Box::new(ModelsSource::new(m.clone())), Box::new(PreloadSource::new(p.clone()))]
        }
        (Some(m), None) => vec![Box::new(ModelsSource::new(m.clone()))],
        _ => Vec::new(),
    };
    let telemetry =
        Telemetry::open_with(config.gpu.clone(), config.labels.clone(), config.max_gpu_processes, extra)
            .await?;
    let parts = Parts { models, preloader, cancel };
    serve_parts(config, listener, telemetry, parts, ServeOptions::default(), shutdown).await
}

/// What [`serve`] may leave out (the fleet simulator serves thousands of hives from one
/// process and skips what no queen calls).
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Serve gRPC reflection (v1 and v1alpha); each server builds its own descriptor
    /// pool, which costs memory per hive.
    pub reflection: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self { reflection: true }
    }
}

/// Serves a hive whose telemetry is already open, without a models directory (`run`
/// opens both from the config; the fleet simulator opens telemetry from simulated
/// sources). A new epoch every call.
pub async fn serve(
    config: HiveConfig,
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HiveError> {
    let cancel = CancellationToken::new();
    // A caller that drops this future (a killed simulated hive) stops its tasks too.
    let _stop_tasks = cancel.clone().drop_guard();
    let parts = Parts { models: None, preloader: None, cancel };
    serve_parts(config, listener, telemetry, parts, options, shutdown).await
}

/// What `run` opened before serving (none of it for a simulated hive).
struct Parts {
    /// The model catalog and downloads.
    models: Option<Models>,
    /// Preloads into the page cache.
    preloader: Option<Preloader>,
    /// Cancelled when the hive stops; stops every task it started.
    cancel: CancellationToken,
}

/// Serves the hive on `listener` with what `run` or `serve` opened.
async fn serve_parts(
    config: HiveConfig,
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    parts: Parts,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HiveError> {
    let Parts { models, preloader, cancel } = parts;
    let local = listener.local_addr().map_err(|e| HiveError::Config(format!("listener address: {e}")))?;
    if config.max_streams == 0 {
        return Err(HiveError::Config("max_streams must be at least 1".into()));
    }
    let identity = Arc::new(identity(&config, local, &telemetry));
    tracing::info!(
        hive_id = %identity.hive_id,
        epoch = %identity.epoch,
        listen = %local,
        advertise = %identity.advertised_address,
        gpu_source = identity.gpu_source.as_str(),
        gpus = telemetry.capabilities().caps.gpus.len(),
        "hive serving rbee.v1.Hive"
    );

    let catalog_follower =
        models.as_ref().map(|m| tokio::spawn(follow_catalog(m.watch(), telemetry.clone(), cancel.clone())));
    let rescan = tokio::spawn(telemetry.clone().rescan_loop(config.rescan_interval, cancel.clone()));
    let streams = Streams::new(config.max_streams, config.queen.is_some());
    let announcer = config.queen.clone().map(|queen| {
        let target = crate::announce::Target {
            queen,
            tls: config.queen_tls.clone(),
            token: config.queen_token.clone(),
            address: identity.advertised_address.clone(),
            hive_id: identity.hive_id.clone(),
        };
        tokio::spawn(announce_loop(target, streams.clone(), config.reannounce_after, cancel.clone()))
    });
    let ctx = SessionContext {
        identity,
        telemetry,
        default_interval: config.default_interval,
        shutdown: cancel.clone(),
        warnings: Arc::new(WarnLimiter::new(WARN_BURST, WARN_WINDOW, WARN_PEERS)),
    };
    let peer_server = models.as_ref().map(|m| PeerServer::new(m.clone()));
    let metrics = match &config.metrics {
        Some(endpoint) => {
            let listener = endpoint.bind().map_err(|e| {
                HiveError::Config(format!("cannot listen for metrics on {}: {e}", endpoint.listen))
            })?;
            tracing::info!(listen = %listener.local_addr().map_err(|e| HiveError::Config(e.to_string()))?,
                "serving Prometheus metrics at /metrics");
            let render = crate::metrics::render(
                ctx.identity.clone(),
                ctx.telemetry.clone(),
                streams.clone(),
                peer_server.clone(),
            );
            Some(tokio::spawn(rbee_shared::metrics_http::serve(
                listener,
                render,
                endpoint.access.clone(),
                cancel.clone(),
            )))
        }
        None => None,
    };
    let per_connection =
        u32::try_from(config.max_streams.saturating_add(EXTRA_STREAMS_PER_CONNECTION)).unwrap_or(u32::MAX);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<HiveServer<HiveService>>().await;
    cancel_on(shutdown, cancel.clone());
    let (reflection_v1, reflection_v1alpha) = if options.reflection {
        (
            Some(grpc_server::reflection_v1_for(SERVICES)?),
            Some(grpc_server::reflection_v1alpha_for(SERVICES)?),
        )
    } else {
        (None, None)
    };
    let result = grpc_server::server(config.tls.clone())?
        .max_concurrent_streams(per_connection)
        .layer(rbee_shared::size_limit::SizeLimitStatusLayer)
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(
            HiveServer::new(
                HiveService::new(ctx, streams, models.clone())
                    .with_preloader(preloader.clone())
                    .with_peer_server(peer_server)
                    .with_listen(local),
            )
            // FetchModel's largest valid request (512 files with peers) is over 1 MiB;
            // tonic's limit is per service, so every Hive RPC gets it (docs/models.md).
            .max_decoding_message_size(MAX_FETCH_REQUEST_BYTES.max(MAX_DECODING_MESSAGE_BYTES)),
        )
        .serve_with_incoming_shutdown(grpc_server::incoming(listener), cancel.clone().cancelled_owned())
        .await;
    cancel.cancel();
    let _ = rescan.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    if let Some(f) = catalog_follower {
        let _ = f.await;
    }
    if let Some(p) = &preloader {
        p.stopped().await;
    }
    if let Some(m) = &models {
        m.stopped().await;
    }
    if let Some(a) = announcer {
        let _ = a.await;
    }
    tracing::info!("hive stopped");
    result.map_err(HiveError::from)
}

/// Publishes a new capability version whenever the model catalog changes.
async fn follow_catalog(
    mut catalog: tokio::sync::watch::Receiver<Arc<crate::models::catalog::ModelMap>>,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = catalog.changed() => {
                if changed.is_err() {
                    return;
                }
                catalog.borrow_and_update();
                if let Err(e) = telemetry.rescan().await {
                    tracing::warn!(error = %e, "cannot publish the model catalog change");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::epoch_id;

    #[test]
    fn epoch_id_is_v7_after_1970() {
        let id = uuid::Uuid::parse_str(&epoch_id(UNIX_EPOCH + Duration::from_secs(1_700_000_000))).unwrap();
        assert_eq!(id.get_version_num(), 7);
        let (secs, _) = id.get_timestamp().unwrap().to_unix();
        assert_eq!(secs, 1_700_000_000);
    }

    #[test]
    fn epoch_id_survives_a_clock_before_1970() {
        let before = UNIX_EPOCH - Duration::from_secs(10 * 365 * 86_400);
        let a = uuid::Uuid::parse_str(&epoch_id(before)).unwrap();
        let b = uuid::Uuid::parse_str(&epoch_id(before)).unwrap();
        assert_eq!(a.get_version_num(), 4);
        assert_ne!(a, b, "each start gets its own epoch");
        // The far future still gives an id.
        epoch_id(SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_740));
    }
}
