//! The server's settings: `queen serve`'s flags ([`serve`]) and config file
//! ([`file`]) merge into one validated [`QueenConfig`], which [`crate::run`] takes.

mod etcd;
mod file;
mod serve;

pub use etcd::EtcdTlsArgs;
pub use file::{FileConfig, HiveEntry};
pub use serve::{DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN, ServeArgs, default_state_dir};

use crate::admission::AdmissionSettings;
use crate::api::auth::Tokens;
use crate::fleet::FleetSettings;
use crate::link::LinkSettings;
use crate::scheduler::SchedulerSettings;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct QueenConfig {
    /// How the fleet judges freshness and health.
    pub fleet: FleetSettings,
    /// How hives are dialed and kept.
    pub link: LinkSettings,
    /// Which addresses may announce themselves, and how often.
    pub admission: AdmissionSettings,
    /// Hives to manage from the start.
    pub hives: Vec<String>,
    /// A hive to run in this process, if any.
    pub local_hive: Option<crate::local_hive::LocalHiveConfig>,
    /// Placement policy and reservations.
    pub scheduler: SchedulerSettings,
    /// TLS for the queen's own port.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Bearer tokens for the Fleet and Scheduler APIs.
    pub tokens: Tokens,
    /// The state directory (reservations, run-time hives, the accepted policy);
    /// `None` keeps nothing across restarts (tests, benchmarks). `queen serve` always
    /// gives one.
    pub state_dir: Option<std::path::PathBuf>,
    /// Move a broken state store aside and start with an empty one.
    pub reset_state: bool,
    /// The Prometheus `/metrics` endpoint; `None` serves none.
    pub metrics: Option<rbee_shared::metrics_http::MetricsEndpoint>,
    /// When the metrics address cannot be bound, warn and run without metrics (the
    /// default address) instead of failing (an address the operator gave).
    pub metrics_best_effort: bool,
    /// Keep the state in etcd, shared with other queens (`--store etcd://`), instead of
    /// the state directory.
    pub etcd: Option<crate::store::EtcdSettings>,
}

impl QueenConfig {
    /// A plaintext, token-less configuration (loopback use, tests).
    pub fn new(fleet: FleetSettings, hives: Vec<String>) -> Self {
        Self {
            fleet,
            link: LinkSettings::default(),
            admission: AdmissionSettings::default(),
            hives,
            local_hive: None,
            scheduler: Default::default(),
            tls: None,
            tokens: Default::default(),
            state_dir: None,
            reset_state: false,
            metrics: None,
            metrics_best_effort: false,
            etcd: None,
        }
    }
}
