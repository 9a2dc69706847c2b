//! The hive's command line (every flag is also an environment variable) and the
//! validated configuration the server runs with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rbee_shared::labels::LabelError;
use rbee_shared::{DEFAULT_SAMPLE_INTERVAL, IntervalError, SampleInterval};

use crate::HiveError;
use crate::announce::REANNOUNCE_AFTER;
use crate::identity::{default_state_dir, resolve_hive_id};
use crate::monitor::GpuChoice;
use crate::source::simulated::{DEMO_SCENARIO, Scenario};
use crate::streams::{DEFAULT_MAX_STREAMS, QUEEN_RESERVE};

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7835";

/// rbee hive: knows this machine's GPUs, CPU and RAM and streams live telemetry to the queen.
#[derive(Debug, Parser)]
#[command(name = "hive", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The hive's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the rbee.v1.Hive gRPC API (Discover, MetricsStream), health and reflection.
    Serve(Box<ServeArgs>),
    /// Print this machine's capabilities and one live sample, then exit.
    Probe(ProbeArgs),
    /// Serve many simulated hives from this process (the fleet simulator, for scale tests and benchmarks).
    Swarm(Box<crate::swarm::SwarmArgs>),
}

/// Where GPU data comes from (shared by `serve` and `probe`).
#[derive(Debug, Clone, Args)]
pub struct GpuArgs {
    /// Use simulated GPUs from this scenario file (TOML) instead of NVML. For tests and demos.
    #[arg(long, env = "HIVE_SIMULATE", value_name = "FILE", conflicts_with = "demo")]
    pub simulate: Option<PathBuf>,
    /// Use the built-in demo scenario of simulated GPUs instead of NVML.
    #[arg(long, env = "HIVE_DEMO")]
    pub demo: bool,
}

impl GpuArgs {
    /// Loads the chosen source's configuration.
    pub fn choice(&self) -> Result<GpuChoice, HiveError> {
        if let Some(path) = &self.simulate {
            return Ok(GpuChoice::Simulated(Scenario::load(path)?));
        }
        if self.demo {
            let scenario = Scenario::parse(DEMO_SCENARIO)
                .map_err(|source| HiveError::Scenario { path: "<built-in demo>".into(), source })?;
            return Ok(GpuChoice::Simulated(scenario));
        }
        Ok(GpuChoice::Nvml)
    }
}

/// `hive serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on. Binding a non-loopback address exposes telemetry to the network.
    #[arg(long, env = "HIVE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Address the queen should dial (default: http://LISTEN, with the real port when LISTEN's port is 0).
    #[arg(long, env = "HIVE_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,
    /// Stable hive id (default: generated once and kept in the state directory).
    #[arg(long, env = "HIVE_ID")]
    pub hive_id: Option<String>,
    /// A label KEY=VALUE reported with the capabilities; repeatable (env: comma-separated). KEY is
    /// 1..=63 of [A-Za-z0-9._/-], VALUE at most 256 bytes.
    #[arg(long = "label", env = "HIVE_LABELS", value_name = "KEY=VALUE", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Sample interval for streams that do not ask for one (100ms..=60s).
    #[arg(long, env = "HIVE_SAMPLE_INTERVAL", default_value = "1s", value_parser = parse_sample_interval)]
    pub sample_interval: Duration,
    /// How often capabilities are rescanned for changes such as hot-plug (100ms..=60s).
    #[arg(long, env = "HIVE_RESCAN_INTERVAL", default_value = "1s", value_parser = parse_sample_interval)]
    pub rescan_interval: Duration,
    /// Directory that keeps the generated hive id (default: $XDG_STATE_HOME/rbee/hive or ~/.local/state/rbee/hive).
    #[arg(long, env = "HIVE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Announce this hive to the queen at URL (it then discovers and streams from it).
    #[arg(long, env = "HIVE_QUEEN", value_name = "URL")]
    pub queen: Option<String>,
    /// CA that signs the queen's TLS certificate (for an https:// --queen).
    #[arg(long, env = "HIVE_QUEEN_CA", value_name = "FILE")]
    pub queen_ca: Option<PathBuf>,
    /// File holding the queen's write token for Announce (or set HIVE_QUEEN_TOKEN to the token itself).
    #[arg(long, env = "HIVE_QUEEN_TOKEN_FILE", value_name = "FILE")]
    pub queen_token_file: Option<PathBuf>,
    /// TLS certificate (PEM) this hive serves with.
    #[arg(long, env = "HIVE_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "HIVE_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve only clients whose certificate chains to this CA (the queen's CA): mutual TLS.
    #[arg(long, env = "HIVE_CLIENT_CA", value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Most MetricsStreams served at once; beyond it a caller gets RESOURCE_EXHAUSTED. With --queen, 2 of
    /// them are kept for that queen.
    #[arg(long, env = "HIVE_MAX_STREAMS", default_value_t = DEFAULT_MAX_STREAMS, value_parser = parse_max_streams)]
    pub max_streams: usize,
    /// Allow serving a non-loopback address without mutual TLS. Anyone who can reach it reads telemetry.
    #[arg(long, env = "HIVE_INSECURE")]
    pub insecure: bool,
    /// GPU source.
    #[command(flatten)]
    pub gpu: GpuArgs,
}

/// `hive probe` flags.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// GPU source.
    #[command(flatten)]
    pub gpu: GpuArgs,
}

/// Parses `KEY=VALUE` by the one label rule ([`rbee_shared::labels`]).
pub fn parse_label(s: &str) -> Result<(String, String), LabelError> {
    rbee_shared::labels::parse_label(s)
}

/// Parses a duration like `500ms`, `1s`, `2m` and checks it is a valid sample interval.
pub fn parse_sample_interval(s: &str) -> Result<Duration, IntervalError> {
    SampleInterval::parse(s).map(SampleInterval::get)
}

/// A `--max-streams` value that is not a number above the queen's reserve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} must be a whole number greater than {QUEEN_RESERVE}")]
pub struct MaxStreamsError(String);

/// Parses `--max-streams`: more than the queen's reserve.
pub fn parse_max_streams(s: &str) -> Result<usize, MaxStreamsError> {
    s.trim().parse::<usize>().ok().filter(|n| *n > QUEEN_RESERVE).ok_or_else(|| MaxStreamsError(s.to_owned()))
}

/// The validated configuration `run` takes.
#[derive(Debug, Clone)]
pub struct HiveConfig {
    /// Stable hive id.
    pub hive_id: String,
    /// Address to advertise; `None` derives it from the bound listener.
    pub advertise: Option<String>,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Sample interval for subscribers that do not set one.
    pub default_interval: Duration,
    /// Capability rescan interval.
    pub rescan_interval: Duration,
    /// GPU source.
    pub gpu: GpuChoice,
    /// A queen to announce to.
    pub queen: Option<String>,
    /// TLS for dialing the queen.
    pub queen_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Bearer token for Announce.
    pub queen_token: Option<String>,
    /// TLS (and mutual TLS) for serving.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Most MetricsStreams at once (with a queen, 2 are kept for it).
    pub max_streams: usize,
    /// Announce again after the queen has held no stream for this long.
    pub reannounce_after: Duration,
}

impl HiveConfig {
    /// A configuration with defaults, for embedding and tests.
    pub fn new(hive_id: impl Into<String>, gpu: GpuChoice) -> Self {
        Self {
            hive_id: hive_id.into(),
            advertise: None,
            labels: BTreeMap::new(),
            default_interval: DEFAULT_SAMPLE_INTERVAL,
            rescan_interval: Duration::from_secs(1),
            gpu,
            queen: None,
            queen_tls: None,
            queen_token: None,
            tls: None,
            max_streams: DEFAULT_MAX_STREAMS,
            reannounce_after: REANNOUNCE_AFTER,
        }
    }
}

impl ServeArgs {
    /// Validates the flags and resolves the hive id (may create the state directory).
    pub fn into_config(self) -> Result<(SocketAddr, HiveConfig), HiveError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Some(rbee_shared::tls::server_config(cert, key, self.client_ca.as_deref())?)
            }
            _ => None,
        };
        if !self.listen.ip().is_loopback() && self.client_ca.is_none() {
            if !self.insecure {
                return Err(HiveError::Config(format!(
                    "refusing to serve telemetry on {} without mutual TLS: give --tls-cert, --tls-key and \
                     --client-ca (the queen's CA), bind a loopback address, or pass --insecure",
                    self.listen
                )));
            }
            tracing::warn!(
                listen = %self.listen,
                "INSECURE: serving a non-loopback address without mutual TLS; anyone who can reach it reads this machine's telemetry"
            );
        }
        let queen_tls = match &self.queen_ca {
            Some(ca) => Some(rbee_shared::tls::client_config(ca, None)?),
            None => None,
        };
        let queen_token = match (&self.queen_token_file, std::env::var("HIVE_QUEEN_TOKEN")) {
            (Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| HiveError::Config(format!("--queen-token-file {}: {e}", path.display())))?
                    .trim()
                    .to_owned(),
            ),
            (None, Ok(token)) if !token.trim().is_empty() => Some(token.trim().to_owned()),
            _ => None,
        };
        let state_dir = self.state_dir.clone().unwrap_or_else(default_state_dir);
        let hive_id = resolve_hive_id(self.hive_id.as_deref(), &state_dir)?;
        let config = HiveConfig {
            hive_id,
            advertise: self.advertise,
            labels: self.labels.into_iter().collect(),
            default_interval: self.sample_interval,
            rescan_interval: self.rescan_interval,
            gpu: self.gpu.choice()?,
            queen: self.queen,
            queen_tls,
            queen_token,
            tls,
            max_streams: self.max_streams,
            reannounce_after: REANNOUNCE_AFTER,
        };
        Ok((self.listen, config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_out_of_range_are_refused() {
        assert_eq!(parse_sample_interval("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_sample_interval("0s").unwrap_err().to_string().contains("out of range"));
        assert!(parse_sample_interval("2h").unwrap_err().to_string().contains("out of range"));
        assert!(parse_sample_interval("soon").is_err());
    }

    #[test]
    fn labels_are_key_value() {
        assert_eq!(parse_label("zone=eu"), Ok(("zone".into(), "eu".into())));
        assert!(parse_label("zone").is_err());
        assert!(parse_label("=eu").is_err());
        assert!(parse_label(&format!("{}=v", "k".repeat(64))).is_err());
    }

    #[test]
    fn max_streams_must_exceed_the_reserve() {
        assert_eq!(parse_max_streams("64"), Ok(64));
        assert!(parse_max_streams("2").is_err());
        assert!(parse_max_streams("many").is_err());
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
