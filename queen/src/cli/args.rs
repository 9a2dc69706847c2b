//! The queen's command line: the subcommands and their arguments. Every flag also
//! reads an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use crate::config::ServeArgs;

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
    /// A live full-screen view of the fleet (follows WatchFleet; q quits).
    Top(TopArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page (roff) of queen to stdout, or write every page (queen(1),
    /// queen-serve(1), ...) into --dir.
    Man(ManArgs),
    /// Copy a stopped queen's state directory into etcd, to move it to --store etcd://.
    Migrate(MigrateArgs),
    /// Have a hive download a model and follow it with a progress bar (exit 0 when ready).
    Fetch(FetchArgs),
    /// List the models on every hive: state and size (--json for scripts).
    Models(ListArgs),
    /// List running (and just finished) model downloads on every hive (--json for scripts).
    Downloads(ListArgs),
    /// Have hives read a model into RAM (page cache) and keep it warm within their budget.
    Preload(CacheArgs),
    /// Have hives drop a model from RAM (page cache).
    Evict(CacheArgs),
    /// Cancel a model download on hives (the partial files are removed).
    CancelFetch(super::model_removal::ModelRemovalArgs),
    /// Delete a model and its files from hives (cancelling its download if one runs).
    RmModel(super::model_removal::ModelRemovalArgs),
}

/// `queen preload|evict MODEL (--hive ID | --label K=V)`.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// The model id on the hives.
    pub model: String,
    /// The hive, by id or address.
    #[arg(long, conflicts_with = "labels", required_unless_present = "labels")]
    pub hive: Option<String>,
    /// Or every online hive with this label that holds the model, KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = rbee_shared::labels::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Return at once instead of when the preloads are done.
    #[arg(long)]
    pub no_wait: bool,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// `queen migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The state directory to copy (its queen must be stopped).
    #[arg(long, env = "QUEEN_STATE_DIR", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Where to copy it: etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "QUEEN_STORE", value_name = "URL")]
    pub store: String,
    /// The etcd key prefix the queens will use.
    #[arg(long, env = "QUEEN_ETCD_PREFIX", value_name = "PREFIX", default_value = "/rbee/queen/")]
    pub etcd_prefix: String,
    /// TLS to etcd.
    #[command(flatten)]
    pub etcd_tls: crate::config::EtcdTlsArgs,
}

/// `queen man [--dir DIR]`.
#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write queen.1 and one page per subcommand (queen-serve.1, queen-policy-check.1, ...)
    /// into this directory instead of printing queen(1).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `queen completions SHELL`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `queen top`.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// Show only hives with this label, KEY=VALUE (press / to change it in the view).
    #[arg(long = "label", value_name = "KEY=VALUE", env = "QUEEN_TOP_LABEL", value_parser = rbee_shared::labels::parse_label)]
    pub label: Option<(String, String)>,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// `queen fetch MODEL --from URL|hf://org/repo[@rev] (--hive ID | --label K=V)`.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// The model id on the hive, e.g. llama-3.1-8b-q4 or org/repo.
    pub model: String,
    /// Where from: an http(s) URL of one file, or hf://org/repo[@revision].
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// Expected SHA-256 of the file (hex), verified while it downloads.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Declared size of the file (e.g. 4GiB), checked against the hive's free disk first.
    #[arg(long, value_parser = rbee_shared::bytesize::parse_bytes)]
    pub size: Option<u64>,
    /// The hive, by id or address.
    #[arg(long, conflicts_with = "labels")]
    pub hive: Option<String>,
    /// Or any online hive with this label, KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = rbee_shared::labels::parse_label)]
    pub labels: Vec<(String, String)>,
    /// No progress bar (the outcome is still printed).
    #[arg(long, env = "QUEEN_QUIET")]
    pub quiet: bool,
    /// On Ctrl-C, cancel the download on the hive (otherwise, on a terminal, ask; if not cancelled it goes on, and the command that cancels it is printed).
    #[arg(long)]
    pub cancel_on_interrupt: bool,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
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
    Status(PolicyStatusArgs),
}

/// `queen policy status`.
#[derive(Debug, Clone, Args)]
pub struct PolicyStatusArgs {
    /// Print the GetPolicy answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// What to place (shared by `place` and `policy check`).
#[derive(Debug, Clone, Args)]
pub struct RequestArgs {
    /// VRAM the model needs on one GPU (on EACH GPU of a gang), e.g. 8GiB.
    #[arg(long, value_parser = rbee_shared::bytesize::parse_bytes)]
    pub vram: Option<u64>,
    /// GPUs wanted on one hive, for a tensor-parallel worker (1..=64; default 1).
    #[arg(long)]
    pub gpus: Option<u32>,
    /// How a gang's GPUs must be connected.
    #[arg(long, value_enum, default_value = "any")]
    pub topology: TopologyArg,
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
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = rbee_shared::labels::parse_label)]
    pub labels: Vec<(String, String)>,
    /// How long the reservation lasts unless the model shows up or it is released (1s..=1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
}

/// Gang topologies on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TopologyArg {
    /// Any GPUs of one hive (the tightest that fits is still preferred).
    Any,
    /// All on one NUMA node.
    Numa,
    /// Every pair NVLink-connected.
    Nvlink,
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
            prefetch: false,
            prefetch_from: None,
            gpus: self.gpus,
            topology: match self.topology {
                TopologyArg::Any => pb::GangTopology::Any,
                TopologyArg::Numa => pb::GangTopology::SameNuma,
                TopologyArg::Nvlink => pb::GangTopology::Nvlink,
            } as i32,
        }
    }
}

/// `queen place`.
#[derive(Debug, Clone, Args)]
pub struct PlaceArgs {
    /// What to place.
    #[command(flatten)]
    pub request: RequestArgs,
    /// After reserving, have the hive fetch the model if it lacks it and read it into RAM.
    #[arg(long)]
    pub prefetch: bool,
    /// Where the hive fetches the model from when it lacks it: hf://org/repo[@rev] or an http(s) URL.
    #[arg(long, value_name = "URL", requires = "prefetch")]
    pub prefetch_from: Option<String>,
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
    /// The queen's URL (https:// when it serves TLS), or several, comma-separated (queens sharing etcd): calls go to the first that answers, and writes follow the leader.
    #[arg(long = "queen", env = "QUEEN_URL", default_value = DEFAULT_QUEEN_URL, value_name = "URL[,URL...]", value_parser = parse_queen_urls)]
    pub url: String,
    /// CA that signs the queen's certificate (the queen CA), for https:// (without it, the
    /// web PKI's roots).
    #[arg(long = "ca", env = "QUEEN_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// File holding a bearer token (or set QUEEN_TOKEN to the token itself).
    #[arg(long = "token-file", env = "QUEEN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// `--queen`: one or more comma-separated URLs, each http:// or https:// (a queen
/// speaks gRPC over HTTP/2; any other scheme was once taken for http).
pub fn parse_queen_urls(text: &str) -> Result<String, QueenUrlError> {
    let mut any = false;
    for url in text.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        any = true;
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("http" | "https")) {
            return Err(QueenUrlError::Scheme(url.to_owned()));
        }
    }
    if !any {
        return Err(QueenUrlError::Empty);
    }
    Ok(text.to_owned())
}

/// Why a `--queen` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueenUrlError {
    /// A URL whose scheme is not http or https.
    #[error("{0:?} is not an http:// or https:// URL")]
    Scheme(String),
    /// Nothing but commas and spaces.
    #[error("no URL given")]
    Empty,
}

impl QueenUrl {
    /// The queens' URLs, in the order given.
    pub fn urls(&self) -> Vec<String> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect()
    }
}

/// `queen hives`, `reservations`, `models`, `downloads`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table (the proto3 JSON mapping grpcurl prints: camelCase,
    /// every field, zeros and empty lists included).
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
    #[arg(long)]
    pub samples: Option<rbee_shared::SampleInterval>,
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
    /// The queen dials it only inside its allow-list (`queen serve --allow`).
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
