//! The client subcommands: `queen hives`, `hive`, `watch`, `add`, `remove`, `place`,
//! `release`, `reservations`, `policy check|status`. They talk
//! to a running queen over the same gRPC API scheduler clients use.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use rbee_proto::v1 as pb;
use rbee_proto::v1::fleet_client::FleetClient;
use rbee_proto::v1::scheduler_client::SchedulerClient;
use rbee_shared::bytesize::format_bytes;
use tonic::transport::Channel;

use crate::config::{
    AddArgs, HiveArgs, ListArgs, PlaceArgs, PolicyCheckArgs, QueenUrl, ReleaseArgs, RemoveArgs, WatchArgs,
};

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Authed = tonic::service::interceptor::InterceptedService<Channel, BearerToken>;

async fn channel(q: &QueenUrl) -> Result<(Channel, BearerToken)> {
    let url = &q.url;
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .with_context(|| format!("--queen {url:?} is not a URL"))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(ca) = &q.ca {
        let tls = rbee_shared::tls::client(ca, None).map_err(|e| anyhow!(e))?;
        endpoint = endpoint.tls_config(tls).context("TLS set-up")?;
    }
    let token = match (&q.token_file, std::env::var("QUEEN_TOKEN")) {
        (Some(path), _) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("--token-file {}", path.display()))?)
        }
        (None, Ok(t)) => Some(t),
        _ => None,
    };
    let token = match token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| anyhow!("the token has characters HTTP headers cannot carry"))?,
        ),
        None => None,
    };
    let channel = endpoint.connect().await.with_context(|| format!("cannot reach the queen at {url}"))?;
    Ok((channel, BearerToken(token)))
}

async fn connect(q: &QueenUrl) -> Result<FleetClient<Authed>> {
    let (channel, token) = channel(q).await?;
    Ok(FleetClient::with_interceptor(channel, token))
}

fn rpc_error(url: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!("queen at {url}: {:?}: {}", s.code(), s.message())
}

fn state_name(v: &pb::HiveView) -> &'static str {
    match v.state() {
        pb::HiveState::Pending => "pending",
        pb::HiveState::Connecting => "connecting",
        pb::HiveState::Online => "online",
        pb::HiveState::Stale => "stale",
        pb::HiveState::Lost => "lost",
        pb::HiveState::Removed => "removed",
        pb::HiveState::Unspecified => "?",
    }
}

fn health_name(h: pb::Health) -> &'static str {
    match h {
        pb::Health::Healthy => "healthy",
        pb::Health::Degraded => "degraded",
        pb::Health::Unhealthy => "unhealthy",
        pb::Health::Unspecified => "?",
    }
}

fn age(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
}

fn vram(v: &pb::HiveView) -> (u64, u64) {
    let total = v.capabilities.as_ref().map_or(0, |c| c.gpus.iter().map(|g| g.vram_total_bytes).sum());
    let used = v.latest_sample.as_ref().map_or(0, |s| s.gpus.iter().filter_map(|g| g.vram_used_bytes).sum());
    (used, total)
}

/// Renders hives as a table.
pub fn render_table(hives: &[pb::HiveView]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<10} {:<9} {:>6} {:>5} {:>22} {:>4} {:>22}  {:<24} REASONS",
        "HIVE", "STATE", "HEALTH", "AGE", "CPU", "RAM USED/TOTAL", "GPUS", "VRAM USED/TOTAL", "ADDRESS"
    );
    for v in hives {
        let s = v.latest_sample.as_ref();
        let cpu = s.and_then(|s| s.cpu_percent).map_or_else(|| "-".into(), |p| format!("{p:.0}%"));
        let ram = s.map_or_else(
            || "-".into(),
            |s| format!("{}/{}", format_bytes(s.ram_used_bytes), format_bytes(s.ram_total_bytes)),
        );
        let (used, total) = vram(v);
        let gpus = v.capabilities.as_ref().map_or(0, |c| c.gpus.len());
        let _ = writeln!(
            out,
            "{:<24} {:<10} {:<9} {:>6} {:>5} {:>22} {:>4} {:>22}  {:<24} {}",
            if v.hive_id.is_empty() { "(not discovered)" } else { &v.hive_id },
            state_name(v),
            health_name(v.health()),
            age(v.sample_age_ms),
            cpu,
            ram,
            gpus,
            if total == 0 { "-".into() } else { format!("{}/{}", format_bytes(used), format_bytes(total)) },
            v.address,
            v.health_reasons.join("; "),
        );
    }
    out
}

fn since(unix_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let ago = SystemTime::now().duration_since(t).unwrap_or_default();
    format!("{} ({:.0} s ago)", humantime::format_rfc3339_seconds(t), ago.as_secs_f64())
}

/// Renders one hive in detail.
pub fn render_detail(v: &pb::HiveView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "hive      {}", if v.hive_id.is_empty() { "(not discovered)" } else { &v.hive_id });
    let _ = writeln!(out, "address   {}", v.address);
    let _ = writeln!(out, "state     {} since {}", state_name(v), since(v.state_since_unix_ms));
    let _ = writeln!(out, "health    {}", health_name(v.health()));
    for r in &v.health_reasons {
        let _ = writeln!(out, "          - {r}");
    }
    if let Some(e) = &v.last_error {
        let _ = writeln!(out, "last error {e}");
    }
    if let Some(i) = &v.identity {
        let _ = writeln!(
            out,
            "host      {} (hive {} , protocol {}, epoch {})",
            i.hostname, i.version, i.protocol_version, i.epoch
        );
        let _ = writeln!(out, "gpu source {:?}", i.gpu_source());
    }
    if let Some(c) = &v.capabilities {
        let cpu = c.cpu.as_ref();
        let _ = writeln!(
            out,
            "caps      v{}: {} ({} logical cores), RAM {}, labels {:?}",
            c.version,
            cpu.map_or("", |c| c.model.as_str()),
            cpu.map_or(0, |c| c.logical_cores),
            format_bytes(c.ram_total_bytes),
            c.labels
        );
        let s = v.latest_sample.as_ref();
        for g in &c.gpus {
            let live = s.and_then(|s| s.gpus.iter().find(|x| x.id == g.id));
            let health = v.devices.iter().find(|d| d.device_id == g.id);
            let _ = writeln!(
                out,
                "  gpu{:<3} {:<28} vram {}/{} util {} temp {} {}  {}",
                g.index,
                g.name,
                live.and_then(|l| l.vram_used_bytes).map_or("-".into(), format_bytes),
                format_bytes(g.vram_total_bytes),
                live.and_then(|l| l.gpu_util_percent).map_or("-".into(), |u| format!("{u:.0}%")),
                live.and_then(|l| l.temperature_c).map_or("-".into(), |t| format!("{t:.0}C")),
                health.map_or("", |h| health_name(h.health())),
                g.id,
            );
        }
    }
    if let Some(s) = &v.latest_sample {
        let _ = writeln!(
            out,
            "sample    age {}: cpu {} ram {}/{}",
            age(v.sample_age_ms),
            s.cpu_percent.map_or("-".into(), |p| format!("{p:.1}%")),
            format_bytes(s.ram_used_bytes),
            format_bytes(s.ram_total_bytes)
        );
    }
    if let Some(st) = &v.stats {
        let f = |x: Option<f32>| x.map_or("-".into(), |x| format!("{x:.1}%"));
        let _ = writeln!(
            out,
            "window    {} s, {} samples: cpu mean {} max {}, ram mean {} max {}",
            st.window_ms / 1000,
            st.samples,
            f(st.cpu_mean_percent),
            f(st.cpu_max_percent),
            f(st.ram_used_mean_percent),
            f(st.ram_used_max_percent)
        );
    }
    if let Some(c) = &v.counters {
        let _ = writeln!(
            out,
            "counters  reconnects {} gaps {} resyncs {} restarts {} invalid {}",
            c.reconnects, c.gaps, c.resyncs, c.restarts, c.invalid_messages
        );
    }
    out
}

/// `queen hives`.
pub async fn hives(args: ListArgs) -> Result<()> {
    let url = &args.queen.url;
    let resp = connect(&args.queen)
        .await?
        .list_hives(pb::ListHivesRequest {})
        .await
        .map_err(|s| rpc_error(url, s))?;
    let resp = resp.into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        print!("{}", render_table(&resp.hives));
    }
    Ok(())
}

/// `queen hive ID`.
pub async fn hive(args: HiveArgs) -> Result<()> {
    let url = &args.queen.url;
    let view = connect(&args.queen)
        .await?
        .get_hive(pb::GetHiveRequest { hive: args.hive.clone() })
        .await
        .map_err(|s| rpc_error(url, s))?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", render_detail(&view));
    }
    Ok(())
}

/// One line for a fleet event.
pub fn render_event(e: &pb::FleetEvent) -> String {
    use pb::fleet_event::Event;
    let t = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(e.queen_time_unix_ms));
    let name = |id: &str, addr: &str| if id.is_empty() { addr.to_owned() } else { id.to_owned() };
    let body = match &e.event {
        None => "(empty)".to_owned(),
        Some(Event::Snapshot(s)) => {
            let mut line =
                format!("snapshot: {} hives{}", s.hives.len(), if s.coalesced { " (coalesced)" } else { "" });
            for h in &s.hives {
                let _ = write!(
                    line,
                    "\n    {} {} {}",
                    name(&h.hive_id, &h.address),
                    state_name(h),
                    health_name(h.health())
                );
            }
            line
        }
        Some(Event::HiveAdded(h)) => format!("added {}", h.address),
        Some(Event::HiveRemoved(r)) => format!("removed {}", name(&r.hive_id, &r.address)),
        Some(Event::StateChanged(c)) => {
            format!("{} {:?} -> {:?}: {}", name(&c.hive_id, &c.address), c.from(), c.to(), c.reason)
        }
        Some(Event::HealthChanged(c)) => format!(
            "{} health {} -> {} {}",
            name(&c.hive_id, &c.address),
            health_name(c.from()),
            health_name(c.to()),
            c.reasons.join("; ")
        ),
        Some(Event::CapabilitiesChanged(c)) => format!(
            "{} capabilities v{}{}: {} gpus",
            name(&c.hive_id, &c.address),
            c.capabilities.as_ref().map_or(0, |c| c.version),
            if c.restarted { " (hive restarted, new epoch)" } else { "" },
            c.capabilities.as_ref().map_or(0, |c| c.gpus.len())
        ),
        Some(Event::ReservationDropped(r)) => format!(
            "{} reservation {} on {} dropped: {}",
            name(&r.hive_id, &r.address),
            r.reservation_id,
            r.device_id,
            r.reason
        ),
        Some(Event::Sample(s)) => {
            let sample = s.sample.as_ref();
            format!(
                "{} sample cpu {} ram {} gpus {} (age {} ms)",
                name(&s.hive_id, &s.address),
                sample.and_then(|s| s.cpu_percent).map_or("-".into(), |p| format!("{p:.0}%")),
                sample.map_or("-".into(), |s| format_bytes(s.ram_used_bytes)),
                sample.map_or(0, |s| s.gpus.len()),
                s.sample_age_ms
            )
        }
    };
    format!("{t} #{} {body}", e.seq)
}

/// `queen watch`.
pub async fn watch(args: WatchArgs) -> Result<()> {
    let url = &args.queen.url;
    let request = pb::WatchFleetRequest { sample_interval_ms: args.samples.map(|d| d.as_millis() as u32) };
    let mut stream =
        connect(&args.queen).await?.watch_fleet(request).await.map_err(|s| rpc_error(url, s))?.into_inner();
    loop {
        tokio::select! {
            () = rbee_shared::shutdown::shutdown_signal() => return Ok(()),
            event = stream.message() => match event.map_err(|s| rpc_error(url, s))? {
                Some(e) if args.json => println!("{}", serde_json::to_string(&e)?),
                Some(e) => println!("{}", render_event(&e)),
                None => return Ok(()),
            },
        }
    }
}

/// `queen add ADDR`.
pub async fn add(args: AddArgs) -> Result<()> {
    let url = &args.queen.url;
    let resp = connect(&args.queen)
        .await?
        .add_hive(pb::AddHiveRequest { address: args.address.clone() })
        .await
        .map_err(|s| rpc_error(url, s))?
        .into_inner();
    let address = resp.hive.map(|h| h.address).unwrap_or_default();
    println!("{} {address}", if resp.added { "added" } else { "already managed:" });
    Ok(())
}

/// `queen remove ID`.
pub async fn remove(args: RemoveArgs) -> Result<()> {
    let url = &args.queen.url;
    let resp = connect(&args.queen)
        .await?
        .remove_hive(pb::RemoveHiveRequest { hive: args.hive.clone() })
        .await
        .map_err(|s| rpc_error(url, s))?
        .into_inner();
    println!("removed {}", resp.address);
    Ok(())
}

async fn connect_scheduler(q: &QueenUrl) -> Result<SchedulerClient<Authed>> {
    let (channel, token) = channel(q).await?;
    Ok(SchedulerClient::with_interceptor(channel, token))
}

/// Renders a placement answer.
pub fn render_place(r: &pb::PlaceResponse) -> String {
    use pb::place_response::Result as R;
    match &r.result {
        Some(R::Placement(p)) => {
            let mut out = format!(
                "placed on {}/{} ({}): {} {}, {} free after",
                p.hive_id,
                p.device_id,
                p.address,
                format_bytes(p.reserved_bytes),
                if p.reservation_id.is_empty() { "would be reserved (dry run)" } else { "reserved" },
                format_bytes(p.free_after_bytes),
            );
            if !p.reservation_id.is_empty() {
                let left = p.expires_at_unix_ms.saturating_sub(rbee_shared::time::now_unix_ms()) / 1000;
                let _ = write!(
                    out,
                    "\nreservation {} (expires in {left} s unless the model shows up)",
                    p.reservation_id
                );
            }
            let _ = write!(
                out,
                "\npolicy {}{}",
                p.policy,
                if p.fallback { " (fallback: the configured policy failed)" } else { "" }
            );
            out + "\n"
        }
        Some(R::Rejection(rej)) => {
            let mut out = format!("rejected: {}\n", rej.reason);
            for r in &rej.hive_reasons {
                let _ = writeln!(out, "  - {r}");
            }
            out
        }
        None => "(empty answer)\n".into(),
    }
}

/// `queen place`. Returns whether it placed.
pub async fn place(args: PlaceArgs) -> Result<bool> {
    let url = &args.queen.url;
    let resp = connect_scheduler(&args.queen)
        .await?
        .place(args.request.to_request(args.dry_run))
        .await
        .map_err(|s| rpc_error(url, s))?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        print!("{}", render_place(&resp));
    }
    Ok(matches!(resp.result, Some(pb::place_response::Result::Placement(_))))
}

/// `queen release ID`.
pub async fn release(args: ReleaseArgs) -> Result<()> {
    let url = &args.queen.url;
    connect_scheduler(&args.queen)
        .await?
        .release(pb::ReleaseRequest { reservation_id: args.id.clone() })
        .await
        .map_err(|s| rpc_error(url, s))?;
    println!("released {}", args.id);
    Ok(())
}

/// `queen reservations`.
pub async fn reservations(args: ListArgs) -> Result<()> {
    let url = &args.queen.url;
    // The queen answers in pages; gather them all.
    let mut client = connect_scheduler(&args.queen).await?;
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
        println!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(());
    }
    println!("{:<36} {:<20} {:<44} {:>10} {:<8} MODEL", "ID", "HIVE", "DEVICE", "BYTES", "STATE");
    for r in &resp.reservations {
        let state = if r.state() == pb::ReservationState::Settled { "settled" } else { "active" };
        println!(
            "{:<36} {:<20} {:<44} {:>10} {:<8} {}",
            r.id,
            r.hive_id,
            r.device_id,
            format_bytes(r.bytes),
            state,
            r.model
        );
    }
    Ok(())
}

/// `queen policy status`.
pub async fn policy_status(queen: QueenUrl) -> Result<()> {
    let url = &queen.url;
    let s = connect_scheduler(&queen)
        .await?
        .get_policy(pb::GetPolicyRequest {})
        .await
        .map_err(|s| rpc_error(url, s))?;
    let s = s.into_inner();
    println!("policy {} (loaded {})", s.source, since(s.loaded_at_unix_ms));
    println!("failures {} fallbacks {} refused edits {}", s.failures, s.fallbacks, s.reload_failures);
    if let Some(e) = s.last_error {
        println!("last error: {e}");
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
        None => {
            let url = &args.queen.url;
            connect(&args.queen)
                .await?
                .list_hives(pb::ListHivesRequest {})
                .await
                .map_err(|s| rpc_error(url, s))?
                .into_inner()
                .hives
        }
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
    println!("policy {} compiles; fleet of {} hives", args.file.display(), hives.len());
    let outcome = tokio::task::spawn_blocking(move || scheduler.place_blocking(&req)).await??;
    let resp = pb::PlaceResponse::from(&outcome);
    print!("{}", render_place(&resp));
    Ok(matches!(outcome, Outcome::Placed(_)))
}
