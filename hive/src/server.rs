//! `run`: the hive server — the Hive service, gRPC health (`grpc.health.v1`) and
//! reflection (v1 and v1alpha) on one listener, with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use rbee_proto::v1::hive_server::HiveServer;
use rbee_shared::HiveIdentity;
use rbee_shared::grpc_server::{self, cancel_on};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::HiveError;
use crate::announce::{StreamCounter, announce_loop};
use crate::config::HiveConfig;
use crate::monitor::Telemetry;
use crate::service::HiveService;
use crate::stream::SessionContext;

/// Largest message the hive accepts from a caller (queen messages are a few bytes).
pub const MAX_DECODING_MESSAGE_BYTES: usize = 64 * 1024;

/// The address to advertise for a listener bound to `local` (`https://` with TLS).
pub fn default_advertise(local: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if local.ip().is_unspecified() {
        let host =
            hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into());
        format!("{scheme}://{host}:{}", local.port())
    } else {
        format!("{scheme}://{local}")
    }
}

fn hostname_string() -> String {
    hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_default()
}

/// Builds the identity reported by Discover for this process start.
pub fn identity(config: &HiveConfig, local: SocketAddr, telemetry: &Telemetry) -> HiveIdentity {
    HiveIdentity {
        hive_id: config.hive_id.clone(),
        epoch: uuid::Uuid::now_v7().to_string(),
        hostname: hostname_string(),
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
    let local = listener.local_addr().map_err(|e| HiveError::Config(format!("listener address: {e}")))?;
    let telemetry = Telemetry::open(config.gpu.clone(), config.labels.clone()).await?;
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

    let cancel = CancellationToken::new();
    let rescan = tokio::spawn(telemetry.clone().rescan_loop(config.rescan_interval, cancel.clone()));
    let streams = StreamCounter::default();
    let announcer = config.queen.clone().map(|queen| {
        let target = crate::announce::Target {
            queen,
            tls: config.queen_tls.clone(),
            token: config.queen_token.clone(),
            address: identity.advertised_address.clone(),
            hive_id: identity.hive_id.clone(),
        };
        tokio::spawn(announce_loop(target, streams.clone(), cancel.clone()))
    });
    let ctx = SessionContext {
        identity,
        telemetry,
        default_interval: config.default_interval,
        shutdown: cancel.clone(),
        streams,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<HiveServer<HiveService>>().await;
    cancel_on(shutdown, cancel.clone());
    let result = grpc_server::server(config.tls.clone())?
        .layer(rbee_shared::size_limit::SizeLimitStatusLayer)
        .add_service(health_service)
        .add_service(grpc_server::reflection_v1()?)
        .add_service(grpc_server::reflection_v1alpha()?)
        .add_service(
            HiveServer::new(HiveService::new(ctx)).max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), cancel.clone().cancelled_owned())
        .await;
    cancel.cancel();
    let _ = rescan.await;
    if let Some(a) = announcer {
        let _ = a.await;
    }
    tracing::info!("hive stopped");
    result.map_err(HiveError::from)
}
