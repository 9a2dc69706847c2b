//! The queen's command line (every flag also an environment variable), its TOML config
//! file, and the validated settings they merge into. Precedence: flag or env var, then
//! the config file, then the built-in default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use rbee_shared::{MAX_SAMPLE_INTERVAL, MIN_SAMPLE_INTERVAL};
use serde::Deserialize;

use crate::QueenError;
use crate::admission::{AllowList, normalize_address};
use crate::health::Thresholds;
use crate::scheduler::SchedulerSettings;

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7833";
/// Where the client subcommands find the queen by default.
pub const DEFAULT_QUEEN_URL: &str = "http://127.0.0.1:7833";

/// rbee queen: discovers hives and holds a live fleet view (state, health, freshness).
#[derive(Debug, Parser)]
#[command(name = "queen", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The queen's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve rbee.v1.Fleet: discover hives, hold their streams, judge their health.
    Serve(Box<ServeArgs>),
    /// List hives as a table (--json for scripts).
    Hives(ListArgs),
    /// Show one hive in detail, by hive id or address.
    Hive(HiveArgs),
    /// Print a line per fleet change until interrupted.
    Watch(WatchArgs),
    /// Ask the queen to manage a hive at an address.
    Add(AddArgs),
    /// Ask the queen to stop managing a hive (hive id or address).
    Remove(RemoveArgs),
    /// Place a model with the queen's policy and reserve its memory (exit code 3 when rejected).
    Place(PlaceArgs),
    /// Release a reservation.
    Release(ReleaseArgs),
    /// List reservations.
    Reservations(ListArgs),
    /// Work with placement policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Write a development CA and certificates for a mutual-TLS fleet.
    Certs(CertsArgs),
}

/// `queen certs`.
#[derive(Debug, Clone, Args)]
pub struct CertsArgs {
    /// Directory to write into.
    #[arg(long, default_value = "certs")]
    pub out: PathBuf,
    /// Names the queen's certificate is valid for (DNS names or IPs); repeatable.
    #[arg(long = "queen-name", default_values = ["localhost", "127.0.0.1"])]
    pub queen_names: Vec<String>,
    /// A hive's name (DNS name or IP the queen dials); repeatable.
    #[arg(long = "hive-name", default_values = ["localhost"])]
    pub hives: Vec<String>,
}

/// `queen policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Compile a policy and run it (dry) against the live fleet or a saved snapshot.
    Check(PolicyCheckArgs),
    /// Show the policy the queen uses and how often it failed.
    Status(QueenUrl),
}

/// What to place (shared by `place` and `policy check`).
#[derive(Debug, Clone, Args)]
pub struct RequestArgs {
    /// VRAM the model needs on one GPU, e.g. 8GiB.
    #[arg(long, value_parser = rbee_shared::bytesize::parse_bytes)]
    pub vram: Option<u64>,
    /// RAM the model needs on the hive, e.g. 16GiB (required for --kind cpu).
    #[arg(long, value_parser = rbee_shared::bytesize::parse_bytes)]
    pub ram: Option<u64>,
    /// Device kind.
    #[arg(long, value_enum, default_value = "any")]
    pub kind: KindArg,
    /// The model's name.
    #[arg(long, default_value = "")]
    pub model: String,
    /// A hive label that must match, KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = rbee_hive::config::parse_label)]
    pub labels: Vec<(String, String)>,
    /// How long the reservation lasts unless the model shows up or it is released (1s..=1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
}

/// Device kinds on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    /// A GPU when one fits, else a CPU.
    Any,
    /// An NVIDIA GPU.
    Cuda,
    /// A hive's CPU and RAM.
    Cpu,
}

impl RequestArgs {
    /// The wire request.
    pub fn to_request(&self, dry_run: bool) -> rbee_proto::v1::PlaceRequest {
        use rbee_proto::v1 as pb;
        pb::PlaceRequest {
            model: self.model.clone(),
            vram_bytes: self.vram.unwrap_or(0),
            ram_bytes: self.ram,
            device_kind: match self.kind {
                KindArg::Any => pb::DeviceKind::Unspecified,
                KindArg::Cuda => pb::DeviceKind::Cuda,
                KindArg::Cpu => pb::DeviceKind::Cpu,
            } as i32,
            labels: self.labels.iter().cloned().collect(),
            dry_run,
            ttl_ms: self.ttl.map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
        }
    }
}

/// `queen place`.
#[derive(Debug, Clone, Args)]
pub struct PlaceArgs {
    /// What to place.
    #[command(flatten)]
    pub request: RequestArgs,
    /// Decide, but reserve nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the PlaceResponse as JSON.
    #[arg(long)]
    pub json: bool,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// `queen release ID`.
#[derive(Debug, Clone, Args)]
pub struct ReleaseArgs {
    /// The reservation id.
    pub id: String,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// `queen policy check FILE`.
#[derive(Debug, Clone, Args)]
pub struct PolicyCheckArgs {
    /// The policy file (Rhai).
    pub file: PathBuf,
    /// A saved fleet (`queen hives --json` output) instead of the live queen's.
    #[arg(long, value_name = "SNAPSHOT.json")]
    pub fleet: Option<PathBuf>,
    /// What to place [default: --vram 1GiB].
    #[command(flatten)]
    pub request: RequestArgs,
    /// The queen, when no --fleet is given.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// Where and how the client subcommands reach the queen.
#[derive(Debug, Clone, Args)]
pub struct QueenUrl {
    /// The queen's URL (https:// when it serves TLS).
    #[arg(long = "queen", env = "QUEEN_URL", default_value = DEFAULT_QUEEN_URL, value_name = "URL")]
    pub url: String,
    /// CA that signs the queen's certificate (the queen CA), for https://.
    #[arg(long = "ca", env = "QUEEN_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// File holding a bearer token (or set QUEEN_TOKEN to the token itself).
    #[arg(long = "token-file", env = "QUEEN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// `queen hives`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Print the ListHives response as JSON (the same mapping grpcurl prints).
    #[arg(long)]
    pub json: bool,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// `queen hive ID`.
#[derive(Debug, Clone, Args)]
pub struct HiveArgs {
    /// Hive id or address.
    pub hive: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// `queen watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Also print each hive's newest sample at most this often (e.g. 1s).
    #[arg(long, value_parser = parse_interval)]
    pub samples: Option<Duration>,
    /// Print each event as a JSON line.
    #[arg(long)]
    pub json: bool,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// `queen add ADDR`.
#[derive(Debug, Clone, Args)]
pub struct AddArgs {
    /// The hive's address, e.g. http://10.0.0.5:7835.
    pub address: String,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// `queen remove ID`.
#[derive(Debug, Clone, Args)]
pub struct RemoveArgs {
    /// Hive id or address.
    pub hive: String,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// `queen serve` flags. Unset flags fall back to the config file, then to defaults.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (listen, hives, allow-list, timings, [health] thresholds).
    #[arg(long, env = "QUEEN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7833].
    #[arg(long, env = "QUEEN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// A hive to manage, e.g. http://10.0.0.5:7835; repeatable (env: comma-separated).
    #[arg(long = "hive", env = "QUEEN_HIVES", value_name = "ADDR", value_delimiter = ',')]
    pub hives: Vec<String>,
    /// Also start a hive in this process (this machine's GPUs, or --local-hive-demo) and manage it.
    #[arg(long, env = "QUEEN_LOCAL_HIVE")]
    pub local_hive: bool,
    /// With --local-hive: use the hive's built-in simulated GPUs instead of NVML.
    #[arg(long, env = "QUEEN_LOCAL_HIVE_DEMO", requires = "local_hive")]
    pub local_hive_demo: bool,
    /// Networks announced hives may be in (CIDR); repeatable [default: 127.0.0.0/8, ::1/128].
    #[arg(long = "allow", env = "QUEEN_ALLOW", value_name = "CIDR", value_delimiter = ',')]
    pub allow: Vec<IpNet>,
    /// Sample interval asked of every hive [default: 1s; 100ms..=60s].
    #[arg(long, env = "QUEEN_SAMPLE_INTERVAL", value_parser = parse_interval)]
    pub sample_interval: Option<Duration>,
    /// A hive silent for this many sample intervals is stale [default: 3].
    #[arg(long, env = "QUEEN_STALE_AFTER_MISSED")]
    pub stale_after_missed: Option<u32>,
    /// A hive silent this long is lost and redialed [default: 10s].
    #[arg(long, env = "QUEEN_LOST_TIMEOUT", value_parser = humantime::parse_duration)]
    pub lost_timeout: Option<Duration>,
    /// HTTP/2 keepalive ping interval and timeout, to find half-open connections [default: 5s].
    #[arg(long, env = "QUEEN_KEEPALIVE", value_parser = humantime::parse_duration)]
    pub keepalive: Option<Duration>,
    /// Longest reconnect backoff [default: 30s].
    #[arg(long, env = "QUEEN_BACKOFF_MAX", value_parser = humantime::parse_duration)]
    pub backoff_max: Option<Duration>,
    /// Placement policy (Rhai), watched for edits [default: the built-in least-loaded policy].
    #[arg(long, env = "QUEEN_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// When the policy fails (error, limit, time budget), answer with the built-in default instead of an error.
    #[arg(long, env = "QUEEN_POLICY_FALLBACK")]
    pub policy_fallback: bool,
    /// Wall-time budget of one policy call [default: 50ms].
    #[arg(long, env = "QUEEN_POLICY_BUDGET", value_parser = humantime::parse_duration)]
    pub policy_budget: Option<Duration>,
    /// Drop reservations on a hive lost for longer than this [default: 60s].
    #[arg(long, env = "QUEEN_RESERVATION_LOST_GRACE", value_parser = humantime::parse_duration)]
    pub reservation_lost_grace: Option<Duration>,
    /// Most reservations held per hive; Place answers RESOURCE_EXHAUSTED past it [default: 1024].
    #[arg(long, env = "QUEEN_MAX_RESERVATIONS_PER_HIVE", value_name = "N")]
    pub max_reservations_per_hive: Option<usize>,
    /// Most reservations held in all; Place answers RESOURCE_EXHAUSTED past it [default: 65536].
    #[arg(long, env = "QUEEN_MAX_RESERVATIONS", value_name = "N")]
    pub max_reservations: Option<usize>,
    /// TLS certificate (PEM) the queen serves with; also its client identity towards hives.
    #[arg(long, env = "QUEEN_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "QUEEN_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA that signs hive certificates: hives are dialed over mutual TLS (https://).
    #[arg(long, env = "QUEEN_HIVE_CA", value_name = "FILE", requires = "tls_cert")]
    pub hive_ca: Option<PathBuf>,
    /// File with the read token (or set QUEEN_READ_TOKEN to the token itself).
    #[arg(long, env = "QUEEN_READ_TOKEN_FILE", value_name = "FILE")]
    pub read_token_file: Option<PathBuf>,
    /// File with the write token (or set QUEEN_WRITE_TOKEN to the token itself).
    #[arg(long, env = "QUEEN_WRITE_TOKEN_FILE", value_name = "FILE")]
    pub write_token_file: Option<PathBuf>,
    /// Allow a non-loopback listen address without TLS and tokens. Logs a warning at every start.
    #[arg(long, env = "QUEEN_INSECURE")]
    pub insecure: bool,
}

/// Parses a sample interval and checks its bounds.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 500ms, 1s)"))?;
    if !(MIN_SAMPLE_INTERVAL..=MAX_SAMPLE_INTERVAL).contains(&d) {
        return Err(format!("{s:?} is out of range 100ms..=60s"));
    }
    Ok(d)
}

/// A `[[hive]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiveEntry {
    /// The hive's address.
    pub address: String,
}

/// The config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Listen address.
    pub listen: Option<SocketAddr>,
    /// Static hives.
    pub hive: Vec<HiveEntry>,
    /// Announce allow-list.
    pub allow: Option<Vec<IpNet>>,
    /// Start a local hive.
    pub local_hive: Option<bool>,
    /// Sample interval.
    #[serde(default, with = "opt_duration")]
    pub sample_interval: Option<Duration>,
    /// Stale after this many intervals.
    pub stale_after_missed: Option<u32>,
    /// Lost timeout.
    #[serde(default, with = "opt_duration")]
    pub lost_timeout: Option<Duration>,
    /// Keepalive.
    #[serde(default, with = "opt_duration")]
    pub keepalive: Option<Duration>,
    /// Max backoff.
    #[serde(default, with = "opt_duration")]
    pub backoff_max: Option<Duration>,
    /// Samples kept per hive.
    pub history: Option<usize>,
    /// Window of the reported statistics.
    #[serde(default, with = "opt_duration")]
    pub stats_window: Option<Duration>,
    /// Health thresholds.
    pub health: Thresholds,
    /// Placement policy file.
    pub policy: Option<PathBuf>,
    /// Fall back to the built-in policy when the policy fails.
    pub policy_fallback: Option<bool>,
    /// Wall-time budget of one policy call.
    #[serde(default, with = "opt_duration")]
    pub policy_budget: Option<Duration>,
    /// Drop reservations on hives lost longer than this.
    #[serde(default, with = "opt_duration")]
    pub reservation_lost_grace: Option<Duration>,
    /// Most reservations per hive.
    pub max_reservations_per_hive: Option<usize>,
    /// Most reservations in all.
    pub max_reservations: Option<usize>,
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, QueenError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| QueenError::Io { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|e| QueenError::Config(format!("{}: {e}", path.display())))
    }
}

/// How the queen watches hives.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Sample interval asked of every hive.
    pub sample_interval: Duration,
    /// Stale after this many silent intervals.
    pub stale_after_missed: u32,
    /// Lost after this much silence.
    pub lost_timeout: Duration,
    /// Dial and Discover timeout.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive interval and timeout.
    pub keepalive: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Samples kept per hive.
    pub history: usize,
    /// Window of the reported statistics.
    pub stats_window: Duration,
    /// Health thresholds.
    pub thresholds: Thresholds,
    /// Announce allow-list.
    pub allow: AllowList,
    /// Most hives the queen manages.
    pub max_hives: usize,
    /// Mutual TLS for dialing hives (`https://` addresses); plaintext then only to loopback.
    pub hive_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Most Announce calls per second (burst of twice that).
    pub announce_rate: u32,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            sample_interval: Duration::from_secs(1),
            stale_after_missed: 3,
            lost_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            keepalive: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            history: 300,
            stats_window: Duration::from_secs(60),
            thresholds: Thresholds::default(),
            allow: AllowList::default(),
            max_hives: 100_000,
            hive_tls: None,
            announce_rate: 20,
        }
    }
}

impl FleetSettings {
    /// Silence after which a hive is stale.
    pub fn stale_after(&self) -> Duration {
        self.sample_interval.saturating_mul(self.stale_after_missed)
    }

    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), QueenError> {
        let bad = |m: String| Err(QueenError::Config(m));
        if !(MIN_SAMPLE_INTERVAL..=MAX_SAMPLE_INTERVAL).contains(&self.sample_interval) {
            return bad("sample_interval must be 100ms..=60s".into());
        }
        if !(1..=100).contains(&self.stale_after_missed) {
            return bad("stale_after_missed must be 1..=100".into());
        }
        let day = Duration::from_secs(86_400);
        if self.lost_timeout > day
            || self.keepalive > day
            || self.backoff_max > day
            || self.stats_window > day
        {
            return bad("lost_timeout, keepalive, backoff_max and stats_window must be at most 1 day".into());
        }
        if self.lost_timeout <= self.stale_after() {
            return bad(format!(
                "lost_timeout ({}) must be longer than stale_after_missed x sample_interval ({})",
                humantime::format_duration(self.lost_timeout),
                humantime::format_duration(self.stale_after())
            ));
        }
        if self.keepalive < Duration::from_millis(100) || self.backoff_max < self.backoff_min {
            return bad("keepalive must be >= 100ms and backoff_max >= 500ms".into());
        }
        if self.history == 0 || self.history > 86_400 {
            return bad("history must be 1..=86400 samples".into());
        }
        self.thresholds.validate().map_err(QueenError::Config)
    }
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct QueenConfig {
    /// Fleet settings.
    pub fleet: FleetSettings,
    /// Hives to manage from the start.
    pub hives: Vec<String>,
    /// A hive to run in this process, if any.
    pub local_hive: Option<rbee_hive::HiveConfig>,
    /// Placement policy and reservations.
    pub scheduler: crate::scheduler::SchedulerSettings,
    /// TLS for the queen's own port.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Bearer tokens for the Fleet and Scheduler APIs.
    pub tokens: crate::auth::Tokens,
}

impl QueenConfig {
    /// A plaintext, token-less configuration (loopback use, tests).
    pub fn new(fleet: FleetSettings, hives: Vec<String>) -> Self {
        Self {
            fleet,
            hives,
            local_hive: None,
            scheduler: Default::default(),
            tls: None,
            tokens: Default::default(),
        }
    }
}

impl ServeArgs {
    /// Merges flags, the config file and defaults, and validates. Returns the listen
    /// address and the configuration.
    pub fn into_config(self) -> Result<(SocketAddr, QueenConfig), QueenError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let d = FleetSettings::default();
        let fleet = FleetSettings {
            sample_interval: self.sample_interval.or(file.sample_interval).unwrap_or(d.sample_interval),
            stale_after_missed: self
                .stale_after_missed
                .or(file.stale_after_missed)
                .unwrap_or(d.stale_after_missed),
            lost_timeout: self.lost_timeout.or(file.lost_timeout).unwrap_or(d.lost_timeout),
            keepalive: self.keepalive.or(file.keepalive).unwrap_or(d.keepalive),
            backoff_max: self.backoff_max.or(file.backoff_max).unwrap_or(d.backoff_max),
            history: file.history.unwrap_or(d.history),
            stats_window: file.stats_window.unwrap_or(d.stats_window),
            thresholds: file.health.clone(),
            allow: if !self.allow.is_empty() {
                AllowList::new(self.allow.clone())
            } else {
                file.allow.clone().map(AllowList::new).unwrap_or_default()
            },
            ..d
        };
        fleet.validate()?;
        let mut hives = Vec::new();
        for raw in self.hives.iter().chain(file.hive.iter().map(|h| &h.address)) {
            let address =
                normalize_address(raw).map_err(|e| QueenError::Config(format!("hive {raw:?}: {e}")))?;
            if !hives.contains(&address) {
                hives.push(address);
            }
        }
        let local_hive = (self.local_hive || file.local_hive.unwrap_or(false)).then(|| {
            let gpu = if self.local_hive_demo {
                let scenario = rbee_hive::source::simulated::Scenario::parse(
                    rbee_hive::source::simulated::DEMO_SCENARIO,
                )
                .expect("the built-in demo scenario is valid");
                rbee_hive::monitor::GpuChoice::Simulated(scenario)
            } else {
                rbee_hive::monitor::GpuChoice::Nvml
            };
            let id = hostname_id();
            rbee_hive::HiveConfig::new(id, gpu)
        });
        let listen =
            self.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        let defaults = SchedulerSettings::default();
        let mut limits = defaults.limits;
        limits.budget = self.policy_budget.or(file.policy_budget).unwrap_or(limits.budget);
        if limits.budget.is_zero() || limits.budget > Duration::from_secs(10) {
            return Err(QueenError::Config("policy_budget must be in (0, 10s]".into()));
        }
        let reservations = crate::scheduler::book::BookLimits {
            per_hive: self
                .max_reservations_per_hive
                .or(file.max_reservations_per_hive)
                .unwrap_or(defaults.reservations.per_hive),
            total: self.max_reservations.or(file.max_reservations).unwrap_or(defaults.reservations.total),
        };
        if reservations.per_hive == 0 || reservations.per_hive > reservations.total {
            return Err(QueenError::Config(
                "max_reservations_per_hive must be in 1..=max_reservations".into(),
            ));
        }
        let scheduler = SchedulerSettings {
            reservations,
            policy_file: self.policy.clone().or(file.policy.clone()),
            fallback_to_default: self.policy_fallback || file.policy_fallback.unwrap_or(false),
            limits,
            lost_grace: self
                .reservation_lost_grace
                .or(file.reservation_lost_grace)
                .unwrap_or(defaults.lost_grace),
            ..defaults
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Some(rbee_shared::tls::server(cert, key, None).map_err(QueenError::Config)?)
            }
            _ => None,
        };
        let mut fleet = fleet;
        if let (Some(ca), Some(cert), Some(key)) = (&self.hive_ca, &self.tls_cert, &self.tls_key) {
            fleet.hive_tls =
                Some(rbee_shared::tls::client(ca, Some((cert, key))).map_err(QueenError::Config)?);
        }
        let tokens =
            crate::auth::Tokens::load(self.read_token_file.as_deref(), self.write_token_file.as_deref())?;
        if !listen.ip().is_loopback() && (tls.is_none() || !tokens.enabled()) {
            if !self.insecure {
                return Err(QueenError::Config(format!(
                    "refusing to listen on {listen} without TLS and tokens: give --tls-cert/--tls-key and \
                     --read-token-file/--write-token-file (or QUEEN_READ_TOKEN/QUEEN_WRITE_TOKEN), bind a \
                     loopback address, or pass --insecure"
                )));
            }
            tracing::warn!(%listen, tls = tls.is_some(), tokens = tokens.enabled(),
                "INSECURE: listening on a non-loopback address without TLS and tokens; anyone who can reach it \
                 can read the fleet, reserve VRAM and add hives");
        }
        Ok((listen, QueenConfig { fleet, hives, local_hive, scheduler, tls, tokens }))
    }
}

/// The local hive's id: `local-HOSTNAME`.
fn hostname_id() -> String {
    let host: String = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' })
        .take(48)
        .collect();
    if host.is_empty() { "local".into() } else { format!("local-{host}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queen.toml");
        std::fs::write(
            &path,
            "lost_timeout = \"20s\"\nsample_interval = \"2s\"\n[[hive]]\naddress = \"10.0.0.5:7835\"\n[health]\ngpu_temp_unhealthy_c = 95.0\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            sample_interval: Some(Duration::from_millis(500)),
            hives: vec!["http://127.0.0.1:9".into()],
            ..Default::default()
        };
        let (listen, cfg) = args.into_config().unwrap();
        assert_eq!(listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(cfg.fleet.sample_interval, Duration::from_millis(500));
        assert_eq!(cfg.fleet.lost_timeout, Duration::from_secs(20));
        assert_eq!(cfg.fleet.thresholds.gpu_temp_unhealthy_c, 95.0);
        assert_eq!(cfg.hives, ["http://127.0.0.1:9", "http://10.0.0.5:7835"]);
    }

    #[test]
    fn the_documented_example_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/queen.example.toml");
        let args = ServeArgs { config: Some(path.into()), ..Default::default() };
        let (listen, cfg) = args.into_config().unwrap();
        assert_eq!(listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(cfg.fleet.thresholds, Thresholds::default());
        assert_eq!(cfg.hives, ["http://127.0.0.1:7835"]);
    }

    #[test]
    fn bad_configs_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queen.toml");
        std::fs::write(&path, "lost_timout = \"20s\"\n").unwrap();
        let err =
            ServeArgs { config: Some(path), ..Default::default() }.into_config().unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
        let err = ServeArgs { config: Some("/nonexistent.toml".into()), ..Default::default() }
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent.toml"), "{err}");
        let err = ServeArgs { lost_timeout: Some(Duration::from_secs(1)), ..Default::default() }
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("lost_timeout"), "{err}");
    }
}
