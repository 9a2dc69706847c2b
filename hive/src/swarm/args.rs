//! `hive swarm` flags (every one also an environment variable) and the command's loop:
//! start the hives, play the fault script, run until SIGINT/SIGTERM.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio::time::Instant;

use super::{FIRST_ADDRESS, Fault, Swarm, SwarmConfig};
use crate::HiveError;
use crate::config::{parse_label, parse_sample_interval};

/// `hive swarm` flags.
#[derive(Debug, Clone, Args)]
pub struct SwarmArgs {
    /// How many simulated hives to serve from this process (each needs 2 file descriptors or more).
    #[arg(long, env = "HIVE_SWARM_COUNT", default_value_t = 100)]
    pub count: usize,
    /// GPUs per simulated hive at start (hot-plug adds one, or takes it away again).
    #[arg(long, env = "HIVE_SWARM_GPUS", default_value_t = 8)]
    pub gpus: u32,
    /// Topology shape of every hive's GPUs: dgx8 (every pair over NVSwitch), pcie2x4 (2 NUMA nodes,
    /// NVLink in pairs) or none.
    #[arg(long, env = "HIVE_SWARM_TOPOLOGY", value_enum, value_name = "SHAPE", default_value = "none")]
    pub topology: crate::source::sim_topology::Shape,
    /// Logical CPU cores per simulated hive.
    #[arg(long, env = "HIVE_SWARM_CORES", default_value_t = 16)]
    pub cores: u32,
    /// Hive ids are PREFIX-00000, PREFIX-00001, ...
    #[arg(long, env = "HIVE_SWARM_ID_PREFIX", default_value = "sim")]
    pub id_prefix: String,
    /// The first hive's loopback IP; hive i serves on this address plus i.
    #[arg(long, env = "HIVE_SWARM_FIRST_ADDRESS", default_value_t = FIRST_ADDRESS)]
    pub first_address: Ipv4Addr,
    /// The port every hive listens on (0: any free port per hive).
    #[arg(long, env = "HIVE_SWARM_PORT", default_value_t = 0)]
    pub port: u16,
    /// Announce every hive to the queen at URL.
    #[arg(long, env = "HIVE_SWARM_QUEEN", value_name = "URL")]
    pub queen: Option<String>,
    /// Hives started (and announced) per second; 0 starts them all at once.
    #[arg(long, env = "HIVE_SWARM_ANNOUNCE_RATE", default_value_t = 0.0)]
    pub announce_rate: f64,
    /// Sample interval for streams that do not ask for one (100ms..=60s).
    #[arg(long, env = "HIVE_SWARM_SAMPLE_INTERVAL", default_value = "1s", value_parser = parse_sample_interval)]
    pub sample_interval: Duration,
    /// A label KEY=VALUE every hive reports; repeatable (env: comma-separated).
    #[arg(long = "label", env = "HIVE_SWARM_LABELS", value_name = "KEY=VALUE", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// A fault AT:ACTION:AMOUNT, e.g. 30s:kill:10% or 1m:restart:25; repeatable (env: comma-separated).
    /// ACTION is kill, revive, silence, unsilence, restart or hotplug; AT counts from when all hives started.
    #[arg(long = "fault", env = "HIVE_SWARM_FAULTS", value_delimiter = ',', value_parser = parse_fault)]
    pub faults: Vec<Fault>,
    /// Write every hive's URL to FILE, one a line, once all have started.
    #[arg(long, env = "HIVE_SWARM_URLS_FILE", value_name = "FILE")]
    pub urls_file: Option<PathBuf>,
}

fn parse_fault(s: &str) -> Result<Fault, super::fault::FaultError> {
    s.parse()
}

impl SwarmArgs {
    /// The swarm configuration these flags ask for.
    pub fn config(&self) -> SwarmConfig {
        SwarmConfig {
            count: self.count,
            gpus: self.gpus,
            cores: self.cores,
            id_prefix: self.id_prefix.clone(),
            first_address: self.first_address,
            port: self.port,
            queen: self.queen.clone(),
            announce_rate: self.announce_rate,
            sample_interval: self.sample_interval,
            labels: self.labels.iter().cloned().collect(),
            topology: self.topology,
        }
    }
}

/// Raises this process's soft open-file limit to its hard limit (a swarm holds a
/// listener and a connection or more per hive). Returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
        }
    }
}

/// `hive swarm`: starts the hives, plays the faults, and runs until `shutdown`.
pub async fn run(args: SwarmArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<(), HiveError> {
    let limit = raise_fd_limit();
    if (args.count as u64).saturating_mul(2) > limit {
        tracing::warn!(count = args.count, limit, "the open-file limit may be too low for this many hives");
    }
    let started = Instant::now();
    let mut swarm = Swarm::start(args.config()).await?;
    tracing::info!(hives = swarm.len(), took = ?started.elapsed(), "swarm started");
    if let Some(path) = &args.urls_file {
        let text: String = swarm.urls().iter().map(|u| format!("{u}\n")).collect();
        std::fs::write(path, text).map_err(|e| HiveError::Config(format!("{}: {e}", path.display())))?;
    }
    let mut faults = args.faults.clone();
    faults.sort_by_key(|f| f.at);
    let zero = Instant::now();
    tokio::pin!(shutdown);
    for fault in faults {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep_until(zero + fault.at) => {}
        }
        let picked = swarm.apply(fault.action, fault.amount).await?;
        tracing::info!(?fault.action, hives = picked.len(), "fault applied");
    }
    shutdown.await;
    swarm.stop().await;
    Ok(())
}
