//! The flags of the hive's commands (every flag is also an environment variable) and
//! the validated configuration the server runs with. The command tree built on them is
//! in `cli.rs`, above this file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use rbee_shared::gpu_process::{DEFAULT_MAX_GPU_PROCESSES, MAX_GPU_PROCESSES};
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

/// Where GPU data comes from (shared by `serve` and `probe`).
#[derive(Debug, Clone, Args)]
pub struct GpuArgs {
    /// Use simulated GPUs from this scenario file (TOML) instead of NVML. For tests and demos.
    #[arg(long, env = "HIVE_SIMULATE", value_name = "FILE", conflicts_with = "demo")]
    pub simulate: Option<PathBuf>,
    /// Use the built-in demo scenario of simulated GPUs instead of NVML.
    #[arg(long, env = "HIVE_DEMO")]
    pub demo: bool,
    /// Topology shape of the simulated GPUs (--simulate, --demo), instead of the scenario's: dgx8 (every
    /// pair over NVSwitch), pcie2x4 (2 NUMA nodes, NVLink in pairs) or none.
    #[arg(long, env = "HIVE_SIM_TOPOLOGY", value_enum, value_name = "SHAPE", conflicts_with = "nvml_lib")]
    pub sim_topology: Option<crate::source::sim_topology::Shape>,
    /// Load NVML from this library instead of the system's libnvidia-ml.so (e.g. a driver in an unusual
    /// place, or the fake library of rbee-nvml-fake).
    #[arg(long, env = "HIVE_NVML_LIB", value_name = "PATH", conflicts_with_all = ["simulate", "demo"])]
    pub nvml_lib: Option<PathBuf>,
    /// Most processes listed per GPU in each sample, by VRAM used (the rest are counted); 0..=1024.
    #[arg(long, env = "HIVE_MAX_GPU_PROCESSES", default_value_t = DEFAULT_MAX_GPU_PROCESSES, value_parser = parse_max_gpu_processes)]
    pub max_gpu_processes: usize,
}

impl GpuArgs {
    /// Loads the chosen source's configuration.
    pub fn choice(&self) -> Result<GpuChoice, HiveError> {
        let shaped = |s: Scenario| match self.sim_topology {
            Some(shape) => s.with_shape(shape),
            None => s,
        };
        if let Some(path) = &self.simulate {
            return Ok(GpuChoice::Simulated(shaped(Scenario::load(path)?)));
        }
        if self.demo {
            let scenario = Scenario::parse(DEMO_SCENARIO)
                .map_err(|source| HiveError::Scenario { path: "<built-in demo>".into(), source })?;
            return Ok(GpuChoice::Simulated(shaped(scenario)));
        }
        Ok(GpuChoice::Nvml { lib: self.nvml_lib.clone() })
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
    /// Serve Prometheus metrics of this machine at http://ADDR/metrics (off when not given). Beyond
    /// loopback a metrics token is required (or --insecure).
    #[arg(long, env = "HIVE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// File holding the bearer token scrapers must send to /metrics (or set HIVE_METRICS_TOKEN to the token itself).
    #[arg(long, env = "HIVE_METRICS_TOKEN_FILE", value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// GPU source.
    #[command(flatten)]
    pub gpu: GpuArgs,
    /// Directory of the model catalog and downloads (default: $XDG_DATA_HOME/rbee/models or
    /// ~/.local/share/rbee/models).
    #[arg(long, env = "HIVE_MODELS_DIR", value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Model downloads that run at once; more wait for a slot.
    #[arg(long, env = "HIVE_MAX_DOWNLOADS", default_value_t = crate::models::DEFAULT_MAX_DOWNLOADS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub max_downloads: usize,
    /// Destinations model downloads may fetch from besides public addresses: CIDRs, addresses or host
    /// names, comma-separated (e.g. an internal mirror: 10.20.0.0/16,mirror.corp). Loopback, link-local
    /// (cloud metadata), private, CGNAT, multicast and other special addresses, and this host's own
    /// addresses, are refused otherwise. A CIDR may not have bits set past its prefix; a name never
    /// opens link-local addresses (only a CIDR does).
    #[arg(long = "download-allow", env = "HIVE_DOWNLOAD_ALLOW", value_name = "CIDR|HOST", value_delimiter = ',',
          value_parser = crate::models::egress::parse_allow)]
    pub download_allow: Vec<crate::models::egress::Allow>,
    /// CA that signs the other hives' server certificates: FetchModel may then name https:// peers to
    /// read model files from (their certificate must also carry the peer's hive id). Needs
    /// --peer-tls-cert and --peer-tls-key: hives serve their files only to callers with a client
    /// certificate. Without it only plaintext peers (loopback, --peer-allow) are read from.
    #[arg(long, env = "HIVE_PEER_CA", value_name = "FILE", requires_all = ["peer_tls_cert", "peer_tls_key"])]
    pub peer_ca: Option<PathBuf>,
    /// Networks (CIDR, comma-separated) where FetchModel may name plaintext http:// peers besides
    /// loopback: a fleet without TLS on a private network. Bytes are still checked by sha256, but
    /// nothing authenticates such a peer. Plaintext callers from these networks may read this
    /// hive's ready files too. Link-local (cloud metadata) addresses are never dialed.
    #[arg(long = "peer-allow", env = "HIVE_PEER_ALLOW", value_name = "CIDR", value_delimiter = ',',
          value_parser = parse_peer_net)]
    pub peer_allow: Vec<crate::models::egress::Net>,
    /// Client certificate (PEM) this hive presents to peers it reads model files from: one from the
    /// CA the other hives trust as --client-ca (e.g. from `queen certs`).
    #[arg(long, env = "HIVE_PEER_TLS_CERT", value_name = "FILE", requires_all = ["peer_tls_key", "peer_ca"])]
    pub peer_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --peer-tls-cert.
    #[arg(long, env = "HIVE_PEER_TLS_KEY", value_name = "FILE", requires = "peer_tls_cert")]
    pub peer_tls_key: Option<PathBuf>,
    /// Most bytes of preloaded models kept warm in the page cache (e.g. 64GiB); beyond it the least
    /// recently used preloaded model is evicted first. Unset: no budget, only MemAvailable limits.
    #[arg(long, env = "HIVE_RAM_CACHE_BUDGET", value_name = "SIZE", value_parser = parse_budget)]
    pub ram_cache_budget: Option<u64>,
    /// How often each model's page-cache residency is measured (100ms..=60s).
    #[arg(long, env = "HIVE_RESIDENCY_INTERVAL", default_value = "10s", value_parser = parse_sample_interval)]
    pub residency_interval: Duration,
    /// Memory pressure (PSI "some avg10", percent) above which preloads are refused and running ones
    /// back off, then stop.
    #[arg(long, env = "HIVE_PRELOAD_PRESSURE_LIMIT", default_value_t = crate::preload::DEFAULT_PRESSURE_LIMIT,
          value_parser = parse_pressure_limit)]
    pub preload_pressure_limit: f64,
    /// Serve this hive's ready model files to peer hives (ReadModelFile), so that a fleet fetches a model
    /// from the origin about once: only to callers with a client certificate from --client-ca (plaintext
    /// callers on loopback only). --serve-models=false turns it off.
    #[arg(long, env = "HIVE_SERVE_MODELS", value_name = "BOOL", default_value_t = true,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub serve_models: bool,
    /// Most bytes per second all uploads to peers send together, e.g. 500MB or 1GiB (a trailing /s is
    /// allowed). Unset: unlimited.
    #[arg(long, env = "HIVE_PEER_UPLOAD_LIMIT", value_name = "BYTES/S", value_parser = parse_upload_limit)]
    pub peer_upload_limit: Option<u64>,
    /// Most uploads to peers at once (1..=64); beyond it a peer gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "HIVE_MAX_PEER_UPLOADS", default_value_t = crate::models::serve::DEFAULT_MAX_PEER_UPLOADS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=crate::models::serve::MAX_PEER_UPLOADS as u64))]
    pub max_peer_uploads: usize,
    /// Threads that run the hive's async work (gRPC, streams, downloads); 1 runs it on the main
    /// thread. Device reads, hashing and preloads run on a separate blocking pool, so one is enough
    /// for a 1 Hz agent; raise it for many parallel downloads over fast links.
    #[arg(long, env = "HIVE_WORKER_THREADS", default_value_t = DEFAULT_WORKER_THREADS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub worker_threads: usize,
}

/// Default `--worker-threads`.
pub const DEFAULT_WORKER_THREADS: usize = 1;

/// Why a `--ram-cache-budget` or `--preload-pressure-limit` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreloadFlagError {
    /// A budget of zero.
    #[error("the budget must be above 0")]
    ZeroBudget,
    /// Not a byte size.
    #[error(transparent)]
    Size(#[from] rbee_shared::bytesize::ByteSizeError),
    /// Not a percentage in (0, 100].
    #[error("{0:?} is not a percentage in (0, 100]")]
    Pressure(String),
}

/// Parses `--ram-cache-budget`: a byte size above zero.
pub fn parse_budget(s: &str) -> Result<u64, PreloadFlagError> {
    match rbee_shared::bytesize::parse_bytes(s)? {
        0 => Err(PreloadFlagError::ZeroBudget),
        n => Ok(n),
    }
}

/// Parses `--peer-upload-limit`: a byte size per second above zero (`500MB`, `1GiB/s`).
pub fn parse_upload_limit(s: &str) -> Result<u64, PreloadFlagError> {
    let t = s.trim();
    parse_budget(t.strip_suffix("/s").unwrap_or(t))
}

/// Parses `--preload-pressure-limit`: a percentage in (0, 100].
pub fn parse_pressure_limit(s: &str) -> Result<f64, PreloadFlagError> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 100.0 => Ok(v),
        _ => Err(PreloadFlagError::Pressure(s.to_owned())),
    }
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

/// A `--max-gpu-processes` value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} must be a whole number in 0..={MAX_GPU_PROCESSES}")]
pub struct MaxGpuProcessesError(String);

/// Parses one `--peer-allow` entry: a network (CIDR) or an address, never a name.
pub fn parse_peer_net(s: &str) -> Result<crate::models::egress::Net, PeerNetError> {
    match crate::models::egress::parse_allow(s).map_err(|e| PeerNetError::Bad(e.to_string()))? {
        crate::models::egress::Allow::Net(n) => Ok(n),
        crate::models::egress::Allow::Host(h) => Err(PeerNetError::Name(h)),
    }
}

/// A `--peer-allow` entry that is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerNetError {
    /// Not a CIDR or an address.
    #[error("{0}")]
    Bad(String),
    /// A host name.
    #[error("{0}: --peer-allow takes networks (CIDR), not names")]
    Name(String),
}

/// Parses `--max-gpu-processes`: at most the wire bound.
pub fn parse_max_gpu_processes(s: &str) -> Result<usize, MaxGpuProcessesError> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= MAX_GPU_PROCESSES)
        .ok_or_else(|| MaxGpuProcessesError(s.to_owned()))
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
    /// Most processes listed per GPU in each sample.
    pub max_gpu_processes: usize,
    /// The Prometheus `/metrics` endpoint, if any.
    pub metrics: Option<rbee_shared::metrics_http::MetricsEndpoint>,
    /// The models directory; `None` runs without one (FetchModel answers FAILED_PRECONDITION).
    pub models: Option<crate::models::ModelsConfig>,
    /// Preloading and residency (used only with a models directory).
    pub preload: crate::preload::PreloadConfig,
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
            max_gpu_processes: DEFAULT_MAX_GPU_PROCESSES,
            metrics: None,
            models: None,
            preload: crate::preload::PreloadConfig::default(),
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
        let metrics = self.metrics_endpoint()?;
        crate::models::hf::HubConfig::from_env().check().map_err(|e| HiveError::Config(e.to_string()))?;
        crate::models::egress::log_allowed(&self.download_allow);
        let peer_tls = match &self.peer_ca {
            Some(ca) => Some(crate::models::peer_fetch_dial::PeerTls::from_pem_files(
                ca,
                self.peer_tls_cert.as_deref().zip(self.peer_tls_key.as_deref()),
            )?),
            None => None,
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
            max_gpu_processes: self.gpu.max_gpu_processes,
            queen: self.queen,
            queen_tls,
            queen_token,
            tls,
            max_streams: self.max_streams,
            reannounce_after: REANNOUNCE_AFTER,
            metrics,
            models: Some(crate::models::ModelsConfig {
                max_downloads: self.max_downloads,
                optional: self.models_dir.is_none(),
                egress: crate::models::egress::EgressRule::new(self.download_allow.clone()),
                peer_dialer: crate::models::peer_fetch_dial::PeerDialer::new(peer_tls)
                    .with_plaintext_networks(self.peer_allow.clone()),
                serve: crate::models::serve::ServeConfig {
                    enabled: self.serve_models,
                    upload_limit: self.peer_upload_limit,
                    max_uploads: self.max_peer_uploads,
                    plaintext_readers: self.peer_allow.clone(),
                },
                ..crate::models::ModelsConfig::new(
                    self.models_dir.clone().unwrap_or_else(crate::models::default_models_dir),
                )
            }),
            preload: crate::preload::PreloadConfig {
                budget: self.ram_cache_budget,
                residency_interval: self.residency_interval,
                pressure_limit: self.preload_pressure_limit,
                ..crate::preload::PreloadConfig::default()
            },
        };
        Ok((self.listen, config))
    }

    /// The metrics endpoint from `--metrics-listen` and its token, checked against the
    /// exposure rule.
    fn metrics_endpoint(&self) -> Result<Option<rbee_shared::metrics_http::MetricsEndpoint>, HiveError> {
        use rbee_shared::metrics_http::{MetricsAccess, MetricsEndpoint, check_exposure};
        let Some(listen) = self.metrics_listen else { return Ok(None) };
        let token = match (&self.metrics_token_file, std::env::var("HIVE_METRICS_TOKEN")) {
            (Some(path), _) => std::fs::read_to_string(path)
                .map_err(|e| HiveError::Config(format!("--metrics-token-file {}: {e}", path.display())))?,
            (None, Ok(token)) => token,
            (None, Err(_)) => String::new(),
        };
        let token = token.trim();
        if !token.is_empty() && (token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic())) {
            return Err(HiveError::Config(
                "the metrics token must be at least 16 printable ASCII characters".into(),
            ));
        }
        let access = MetricsAccess::new((!token.is_empty()).then_some(token.as_bytes()));
        check_exposure(listen, &access, self.insecure, "--metrics-listen")
            .map_err(|e| HiveError::Config(e.to_string()))?;
        if !listen.ip().is_loopback() && !access.enabled() {
            tracing::warn!(%listen, "INSECURE: serving metrics beyond loopback without a token");
        }
        Ok(Some(MetricsEndpoint { listen, listener: None, access }))
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
    fn upload_limits_are_sizes_per_second_above_zero() {
        assert_eq!(parse_upload_limit("100M"), Ok(100_000_000));
        assert_eq!(parse_upload_limit("1GiB/s"), Ok(1 << 30));
        assert_eq!(parse_upload_limit("4096"), Ok(4096));
        assert!(parse_upload_limit("0").is_err());
        assert!(parse_upload_limit("fast").is_err());
    }

    #[test]
    fn max_gpu_processes_is_bounded_by_the_wire() {
        assert_eq!(parse_max_gpu_processes("32"), Ok(32));
        assert!(parse_max_gpu_processes("1025").is_err());
        assert!(parse_max_gpu_processes("-1").is_err());
    }
}
