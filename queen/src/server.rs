//! `run`: the queen server — the Fleet and Scheduler services, gRPC health and reflection (v1 and
//! v1alpha) on one listener; the managed hives; optionally a hive in-process.
//!
//! The hives' links run on a runtime of their own ([`LinkRuntime`]: threads named
//! `queen-links`, at a lower priority, nice +[`LINKS_NICE`]), apart from the API (every
//! RPC, Place included). At thousands of hives ingest keeps the links' threads busy; a
//! Place that shared their runtime waited in its queue behind thousands of sample tasks,
//! and at equal priority the operating system shared the cores evenly between them. Now
//! a call that arrives wakes an API thread that preempts ingest; ingest still has every
//! cycle the API leaves (it is lowered, not capped).
//!
//! Every accepted connection has `TCP_NODELAY` set: replies are small and written in several
//! pieces, and Nagle's algorithm against the client's delayed ACK held each reply ~40 ms.

use std::future::Future;
use std::sync::Arc;

use rbee_proto::v1::fleet_server::FleetServer;
use rbee_proto::v1::scheduler_server::SchedulerServer;
use rbee_shared::grpc_server::{self, MAX_DECODING_MESSAGE_BYTES, cancel_on};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_reflection::server::Builder as ReflectionBuilder;

use crate::QueenError;

use crate::api::auth::AuthLayer;
use crate::api::leader::LeaderLayer;
use crate::api::{FleetService, SchedulerService};
use crate::config::QueenConfig;
use crate::fleet::{Fleet, Origin};
use crate::ha::Ha;
use crate::link::{LinkSettings, Links};
use crate::local_hive;
use crate::scheduler::Scheduler;
use crate::store::{EtcdSettings, EtcdStore, GroupCommit, HiveRecord, Restored, StateStore, Store};

/// Runs the queen on `listener` until `shutdown` resolves.
pub async fn run(
    config: QueenConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), QueenError> {
    let local = listener.local_addr().map_err(|e| QueenError::Config(format!("listener address: {e}")))?;
    let cancel = CancellationToken::new();
    let link = LinkSettings { dial_guard: Some(config.admission.allow.dial_guard()), ..config.link.clone() };
    let links = LinkRuntime::start()?;
    let fleet = Fleet::new(config.fleet.clone(), cancel.clone(), Links::new(link.clone()).on(links.handle()));
    let fleet_for_models = fleet.clone();
    let etcd = match &config.etcd {
        Some(settings) => Some(Arc::new(connect_etcd(settings, local, config.tls.is_some()).await?)),
        None => None,
    };
    let (store, mut kept): (Option<Arc<dyn Store>>, Restored) = match (&etcd, &config.state_dir) {
        // The books come from etcd once this queen leads or follows (see `ha`).
        (Some(etcd), _) => (Some(etcd.clone()), Restored::default()),
        (None, Some(dir)) => {
            let store = open_store(dir, config.reset_state)?;
            let kept = store.load()?;
            // Concurrent writers share one transaction and one fsync.
            (Some(Arc::new(GroupCommit::new(Arc::new(store))?)), kept)
        }
        (None, None) => (None, Restored::default()),
    };
    let local_hive = match config.local_hive {
        Some(hive_config) => {
            Some(local_hive::start(&fleet, hive_config, &mut kept, &config.hives, cancel.clone()).await?)
        }
        None => None,
    };
    let removed: Vec<&str> = kept.hives.iter().filter(|h| h.removed).map(|h| h.address.as_str()).collect();
    for address in &config.hives {
        if removed.contains(&address.as_str()) {
            tracing::info!(%address, "configured hive not managed: it was removed at run time (AddHive brings it back)");
            continue;
        }
        fleet.add(address, Origin::Static)?;
    }
    restore_hives(&fleet, &kept.hives);
    let scheduler = match &store {
        Some(store) => {
            let s = Scheduler::durable(
                fleet.clone(),
                config.scheduler.clone(),
                store.clone(),
                kept.reservations,
            )?;
            s.restore_ended(kept.ended);
            s
        }
        None => Scheduler::new(fleet.clone(), config.scheduler.clone())?,
    };
    let metrics =
        start_metrics(config.metrics.as_ref(), config.metrics_best_effort, &fleet, &scheduler, &cancel)?;
    let maintenance = tokio::spawn(scheduler.clone().maintain(cancel.clone()));
    let election =
        etcd.map(|etcd| tokio::spawn(Ha::new(etcd, scheduler.clone(), fleet.clone()).run(cancel.clone())));
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
        .layer(LeaderLayer::new(store.clone()))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(
            FleetServer::new(
                FleetService::new(fleet, scheduler.clone(), config.admission.clone()).with_store(store),
            )
            .max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES),
        )
        .add_service(
            SchedulerServer::new(
                SchedulerService::new(scheduler)
                    .with_cache(crate::api::preload::ModelCache::new(fleet_for_models.clone(), link.clone()))
                    .with_remover(crate::api::model_removal::ModelRemover::new(
                        fleet_for_models.clone(),
                        link.clone(),
                    ))
                    .with_models(crate::api::models::ModelFetcher::new(fleet_for_models, link)),
            )
            // FetchModel's largest valid request (512 files) is over 1 MiB (per service).
            .max_decoding_message_size(
                rbee_shared::model::MAX_SCHEDULE_FETCH_REQUEST_BYTES.max(MAX_DECODING_MESSAGE_BYTES),
            ),
        )
        .serve_with_incoming_shutdown(incoming(listener), cancel.clone().cancelled_owned())
        .await
        .map_err(QueenError::from);
    cancel.cancel();
    let _ = maintenance.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    if let Some(election) = election {
        let _ = election.await;
    }
    if let Some(task) = local_hive {
        let _ = task.await;
    }
    drop(links);
    tracing::info!("queen stopped");
    result
}

/// The services the queen serves: all that reflection lists.
pub const SERVED_SERVICES: [&str; 5] = [
    "rbee.v1.Fleet",
    "rbee.v1.Scheduler",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Reflection over the descriptors the queen's services use, listing only
/// [`SERVED_SERVICES`]: the rbee descriptor set also defines `rbee.v1.Hive`, which the
/// queen does not serve. (The shared builder lists every service in the set.)
fn reflection() -> ReflectionBuilder<'static> {
    let builder = ReflectionBuilder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(rbee_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    SERVED_SERVICES.iter().fold(builder, |b, name| b.with_service_name(*name))
}

/// How much lower the links' threads run than the rest of the queen (a nice value; a
/// process may always lower its own threads' priority).
pub const LINKS_NICE: i32 = 10;

/// The name of the links' threads (`top -H`, `ps -L`).
pub const LINKS_THREAD_NAME: &str = "queen-links";

/// The hives' links' own runtime (see the module's documentation); shut down in the
/// background when dropped (a runtime may not be dropped, blocking, inside another's
/// async context).
struct LinkRuntime(Option<tokio::runtime::Runtime>);

impl LinkRuntime {
    fn start() -> Result<Self, QueenError> {
        // The priority the rest of the queen runs at; threads the links' threads start
        // (a blocking pool's) would otherwise lower theirs twice.
        let base = rustix::process::getpriority_process(None).unwrap_or(0);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name(LINKS_THREAD_NAME)
            .on_thread_start(move || lower_priority(base))
            .enable_all()
            .build()
            .map_err(|e| QueenError::Config(format!("the links' runtime: {e}")))?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|r| r.handle().clone())
    }
}

impl Drop for LinkRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Sets the calling thread's priority [`LINKS_NICE`] below `base` (at most 19, the
/// lowest); where the system refuses, the thread runs at the queen's priority (said once,
/// in the log).
fn lower_priority(base: i32) {
    let tid = Some(rustix::thread::gettid());
    if let Err(e) = rustix::process::setpriority_process(tid, (base + LINKS_NICE).min(19)) {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| tracing::warn!(error = %e, "the links' threads run at the queen's priority: lowering it failed"));
    }
}

/// The listener's connections, each with `TCP_NODELAY` set (tonic's own `tcp_nodelay`
/// applies only when tonic binds the socket itself).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Opens the state store in `dir`; with `reset`, moves a broken one aside first (and
/// says where it went). A store that cannot be opened stops the queen.
fn open_store(dir: &std::path::Path, reset: bool) -> Result<StateStore, QueenError> {
    if !reset {
        let store = StateStore::open(dir)?;
        tracing::info!(path = %store.path().display(), "state store opened");
        return Ok(store);
    }
    let (store, aside) = StateStore::reset(dir)?;
    match aside {
        Some(old) => tracing::warn!(path = %store.path().display(), moved_to = %old.display(),
            "--reset-state: the old state store was moved aside; starting with an empty one"),
        None => {
            tracing::warn!(path = %store.path().display(),
                "--reset-state: the state store is absent, or opens and reads soundly: kept as it is, nothing moved aside")
        }
    }
    Ok(store)
}

/// Connects to etcd (lazily: the election waits for it), advertising `--advertise`, or
/// the bound listener (with this host's name when it listens on all addresses).
async fn connect_etcd(
    settings: &EtcdSettings,
    local: std::net::SocketAddr,
    tls: bool,
) -> Result<EtcdStore, QueenError> {
    let mut settings = settings.clone();
    if settings.advertise.is_empty() {
        let scheme = if tls { "https" } else { "http" };
        settings.advertise = if local.ip().is_unspecified() {
            format!("{scheme}://{}:{}", rbee_shared::hostname::local_hostname(), local.port())
        } else {
            format!("{scheme}://{local}")
        };
    }
    let store = EtcdStore::connect(settings).await?;
    tracing::info!(etcd = %store.describe(), advertise = %store.settings().advertise,
        ttl_s = store.settings().lease_ttl.as_secs(), "state kept in etcd; electing a leader");
    Ok(store)
}

/// Manages again the hives added (`AddHive`) or announced before a restart.
fn restore_hives(fleet: &Arc<Fleet>, kept: &[HiveRecord]) {
    for hive in kept.iter().filter(|h| !h.removed) {
        let origin = if hive.origin == "announced" { Origin::Announced } else { Origin::Api };
        match fleet.add(&hive.address, origin) {
            Ok((_, true)) => {
                tracing::info!(address = %hive.address, origin = %hive.origin, "hive restored from the state store")
            }
            Ok((_, false)) => {}
            Err(e) => {
                tracing::warn!(address = %hive.address, error = %e, "cannot manage a hive kept in the state store")
            }
        }
    }
}

/// Serves `/metrics` when configured. A default address already taken is warned about
/// and skipped; an address the operator gave must bind.
fn start_metrics(
    endpoint: Option<&rbee_shared::metrics_http::MetricsEndpoint>,
    best_effort: bool,
    fleet: &Arc<Fleet>,
    scheduler: &Arc<Scheduler>,
    cancel: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, QueenError> {
    let Some(endpoint) = endpoint else { return Ok(None) };
    let listener = match endpoint.bind() {
        Ok(l) => l,
        Err(e) if best_effort => {
            tracing::warn!(listen = %endpoint.listen, error = %e,
                "cannot listen for metrics on the default address; running without /metrics (give --metrics-listen)");
            return Ok(None);
        }
        Err(e) => {
            return Err(QueenError::Config(format!("cannot listen for metrics on {}: {e}", endpoint.listen)));
        }
    };
    let local = listener.local_addr().map_err(|e| QueenError::Config(format!("metrics listener: {e}")))?;
    tracing::info!(listen = %local, "serving Prometheus metrics at /metrics");
    let mut registry = crate::metrics::registry(fleet.clone(), scheduler.clone());
    crate::metrics::register_publish_delay(&mut registry, fleet.publish_delay().clone());
    let registry = Arc::new(registry);
    Ok(Some(tokio::spawn(rbee_shared::metrics_http::serve(
        listener,
        crate::metrics::render(registry),
        endpoint.access.clone(),
        cancel.clone(),
    ))))
}
