//! `queen place`, `release`, `reservations`, `policy status|check`: the scheduler,
//! from a running queen (or, for `policy check --fleet`, a saved fleet).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use rbee_proto::v1 as pb;
use rbee_shared::bytesize::format_bytes;

use super::client::{connect_scheduler, on_queens, rpc_error, scheduler};
use super::command::{RunCommand, commands, done, yes_or_no};
use super::flags::{ListArgs, QueenUrl};
use super::render::{render_place, since};

/// How long `queen place` waits for an answer. It is sent as the call's deadline, so a
/// queen that could only commit after it gives the reservation back instead of keeping
/// one nobody was told about.
const PLACE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// `queen place`. Returns whether it placed.
pub async fn place(args: PlaceArgs) -> Result<bool> {
    let request = pb::PlaceRequest {
        prefetch: args.prefetch,
        prefetch_from: args.prefetch_from.clone(),
        request_id: args.request_id.clone(),
        ..args.request.to_request(args.dry_run)
    };
    let resp = on_queens(&args.queen, scheduler, |mut c| {
        let request = request.clone();
        let mut request = tonic::Request::new(request.clone());
        request.set_timeout(PLACE_DEADLINE);
        async move { c.place(request).await }
    })
    .await?;
    if args.json {
        rbee_shared::outln!("{}", super::json(&resp)?)?;
    } else {
        rbee_shared::out!("{}", render_place(&resp))?;
    }
    Ok(matches!(resp.result, Some(pb::place_response::Result::Placement(_))))
}

/// `queen release ID`.
pub async fn release(args: ReleaseArgs) -> Result<()> {
    let request = pb::ReleaseRequest { reservation_id: args.id.clone() };
    on_queens(&args.queen, scheduler, |mut c| {
        let request = request.clone();
        async move { c.release(request).await }
    })
    .await?;
    rbee_shared::outln!("released {}", args.id)?;
    Ok(())
}

/// `queen reservations`.
pub async fn reservations(args: ListArgs) -> Result<()> {
    // The queen answers in pages; gather them all.
    let (mut client, url) = connect_scheduler(&args.queen).await?;
    let url = &url;
    let mut resp = pb::ListReservationsResponse::default();
    loop {
        let page_token = std::mem::take(&mut resp.next_page_token);
        let page = client
            .list_reservations(pb::ListReservationsRequest { page_size: 0, page_token })
            .await
            .map_err(|s| rpc_error(url, s))?
            .into_inner();
        resp.reservations.extend(page.reservations);
        resp.next_page_token = page.next_page_token;
        if resp.next_page_token.is_empty() {
            break;
        }
    }
    if args.json {
        rbee_shared::outln!("{}", super::json(&resp)?)?;
        return Ok(());
    }
    rbee_shared::outln!("{:<36} {:<20} {:<44} {:>10} {:<8} MODEL", "ID", "HIVE", "DEVICE", "BYTES", "STATE")?;
    for r in &resp.reservations {
        let state = if r.state() == pb::ReservationState::Settled { "settled" } else { "active" };
        // A gang: its GPUs, and the bytes on each.
        let device = if r.gang_device_ids.is_empty() {
            r.device_id.clone()
        } else {
            format!("{} (gang of {})", r.gang_device_ids.join(","), r.gang_device_ids.len())
        };
        rbee_shared::outln!(
            "{:<36} {:<20} {:<44} {:>10} {:<8} {}",
            r.id,
            r.hive_id,
            device,
            format_bytes(r.bytes),
            state,
            r.model
        )?;
    }
    Ok(())
}

/// `queen policy status`.
pub async fn policy_status(args: PolicyStatusArgs) -> Result<()> {
    let s =
        on_queens(&args.queen, scheduler, |mut c| async move { c.get_policy(pb::GetPolicyRequest {}).await })
            .await?;
    if args.json {
        rbee_shared::outln!("{}", super::json(&s)?)?;
        return Ok(());
    }
    rbee_shared::outln!("policy {} (loaded {})", s.source, since(s.loaded_at_unix_ms))?;
    rbee_shared::outln!(
        "failures {} fallbacks {} refused edits {}",
        s.failures,
        s.fallbacks,
        s.reload_failures
    )?;
    if let Some(e) = s.last_error {
        rbee_shared::outln!("last error: {e}")?;
    }
    Ok(())
}

/// `queen policy check FILE`: compile, then a dry run on the live or saved fleet.
/// Returns whether the policy placed.
pub async fn policy_check(args: PolicyCheckArgs) -> Result<bool> {
    use crate::scheduler::request::PlaceRequest;
    use crate::scheduler::{Outcome, Scheduler, SchedulerSettings, StaticHives};

    let hives: Vec<pb::HiveView> = match &args.fleet {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let list: pb::ListHivesResponse = serde_json::from_str(&text)
                .with_context(|| format!("{} is not `queen hives --json` output", path.display()))?;
            list.hives
        }
        None => super::fleet::all_hives(&args.queen).await?.hives,
    };
    let snapshots = hives
        .iter()
        .map(|h| crate::fleet::HiveSnapshot::try_from(h).map(std::sync::Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let mut request = args.request.clone();
    if request.vram.is_none() && request.ram.is_none() {
        request.vram = Some(1 << 30);
    }
    let req = PlaceRequest::try_from(&request.to_request(true))?;
    let settings = SchedulerSettings { policy_file: Some(args.file.clone()), ..SchedulerSettings::default() };
    let scheduler =
        Scheduler::new(std::sync::Arc::new(StaticHives(snapshots)), settings).map_err(|e| anyhow!("{e}"))?;
    rbee_shared::outln!(
        "policy {} compiles; fleet of {}",
        args.file.display(),
        super::render::count(hives.len(), "hive")
    )?;
    let outcome = tokio::task::spawn_blocking(move || scheduler.place_blocking(&req)).await??;
    let resp = pb::PlaceResponse::from(&outcome);
    rbee_shared::out!("{}", render_place(&resp))?;
    Ok(matches!(outcome, Outcome::Placed(_)))
}

commands! {
/// `queen policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Compile a policy and run it (dry) against the live fleet or a saved snapshot.
    Check(PolicyCheckArgs),
    /// Show the policy the queen uses and how often it failed.
    Status(PolicyStatusArgs),
}
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
            request_id: None,
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
    /// An idempotency key (1..=128 of [A-Za-z0-9._:-]): a retry with the same key answers
    /// the same reservation instead of reserving again.
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
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

/// `queen reservations`.
#[derive(Debug, Clone, Args)]
pub struct ReservationsArgs {
    /// Its flags.
    #[command(flatten)]
    pub list: ListArgs,
}

impl RunCommand for ReservationsArgs {
    async fn run(self) -> Result<ExitCode> {
        done(reservations(self.list).await)
    }
}

impl RunCommand for PlaceArgs {
    async fn run(self) -> Result<ExitCode> {
        Ok(yes_or_no(place(self).await?))
    }
}

impl RunCommand for ReleaseArgs {
    async fn run(self) -> Result<ExitCode> {
        done(release(self).await)
    }
}

impl RunCommand for PolicyCheckArgs {
    async fn run(self) -> Result<ExitCode> {
        Ok(yes_or_no(policy_check(self).await?))
    }
}

impl RunCommand for PolicyStatusArgs {
    async fn run(self) -> Result<ExitCode> {
        done(policy_status(self).await)
    }
}
