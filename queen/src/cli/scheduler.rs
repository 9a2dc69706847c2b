//! `queen place`, `release`, `reservations`, `policy status|check`: the scheduler,
//! from a running queen (or, for `policy check --fleet`, a saved fleet).

use anyhow::{Context, Result, anyhow};
use rbee_proto::v1 as pb;
use rbee_shared::bytesize::format_bytes;

use super::args::{ListArgs, PlaceArgs, PolicyCheckArgs, PolicyStatusArgs, ReleaseArgs};
use super::client::{connect_scheduler, on_queens, rpc_error, scheduler};
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
