//! `run`: the queen server — the Fleet and Scheduler services, gRPC health and reflection (v1 and
//! v1alpha) on one listener; the managed hives; optionally a hive in-process.

use std::future::Future;
use std::sync::Arc;

use rbee_proto::v1::fleet_server::FleetServer;
use rbee_proto::v1::scheduler_server::SchedulerServer;
use rbee_shared::grpc_server::{self, cancel_on};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::QueenError;
use crate::api::auth::AuthLayer;
use crate::api::{FleetService, SchedulerService};
use crate::config::QueenConfig;
use crate::fleet::{Fleet, Origin};
use crate::link::Links;
use crate::scheduler::Scheduler;

/// Largest request the queen accepts.
pub const MAX_DECODING_MESSAGE_BYTES: usize = 64 * 1024;

/// Runs the queen on `listener` until `shutdown` resolves.
pub async fn run(
    config: QueenConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), QueenError> {
    let local = listener.local_addr().map_err(|e| QueenError::Config(format!("listener address: {e}")))?;
    let cancel = CancellationToken::new();
    let fleet = Fleet::new(config.fleet.clone(), cancel.clone(), Links::new(config.link.clone()));
    let local_hive = match config.local_hive {
        Some(hive_config) => Some(start_local_hive(&fleet, hive_config, cancel.clone()).await?),
        None => None,
    };
    for address in &config.hives {
        fleet.add(address, Origin::Static)?;
    }
    let scheduler = Scheduler::new(fleet.clone(), config.scheduler.clone())?;
    let maintenance = tokio::spawn(scheduler.clone().maintain(cancel.clone()));
    tracing::info!(listen = %local, hives = fleet.list().len(), "queen serving rbee.v1.Fleet and rbee.v1.Scheduler");

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FleetServer<FleetService>>().await;
    cancel_on(shutdown, cancel.clone());
    if config.tokens.enabled() {
        tracing::info!("bearer tokens required for rbee.v1.Fleet and rbee.v1.Scheduler");
    }
    let result = grpc_server::server(config.tls.clone())?
        .layer(rbee_shared::size_limit::SizeLimitStatusLayer)
        .layer(AuthLayer::new(config.tokens.clone()))
        .add_service(health_service)
        .add_service(grpc_server::reflection_v1()?)
        .add_service(grpc_server::reflection_v1alpha()?)
        .add_service(
            FleetServer::new(FleetService::new(fleet, scheduler.clone(), config.admission.clone()))
                .max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES),
        )
        .add_service(
            SchedulerServer::new(SchedulerService::new(scheduler))
                .max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), cancel.clone().cancelled_owned())
        .await;
    cancel.cancel();
    let _ = maintenance.await;
    if let Some(task) = local_hive {
        let _ = task.await;
    }
    tracing::info!("queen stopped");
    result.map_err(QueenError::from)
}

/// Starts a hive in this process on a loopback port and manages it.
async fn start_local_hive(
    fleet: &Arc<Fleet>,
    config: rbee_hive::HiveConfig,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, QueenError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| QueenError::Config(format!("cannot bind the local hive: {e}")))?;
    let address = format!("http://{}", listener.local_addr().map_err(|e| QueenError::Config(e.to_string()))?);
    let task = tokio::spawn(async move {
        if let Err(e) = rbee_hive::run(config, listener, cancel.cancelled_owned()).await {
            tracing::error!(error = %e, "the local hive stopped with an error");
        }
    });
    fleet.add(&address, Origin::Local)?;
    tracing::info!(%address, "started a local hive in this process");
    Ok(task)
}
