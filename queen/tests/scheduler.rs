//! The Scheduler API end to end: a real queen, real hives (simulated GPUs), the
//! generated client.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::scheduling::*;
use common::*;
use rbee_proto::v1 as pb;
use rbee_queen::scheduler::SchedulerSettings;
use tokio::time::Instant;

/// Fast upkeep, and a wall-time budget that a loaded test machine does not break
/// (the runaway test sets its own).
fn settings() -> SchedulerSettings {
    let mut s = SchedulerSettings { maintain_every: Duration::from_millis(100), ..Default::default() };
    s.limits.budget = Duration::from_secs(2);
    s
}

fn reservation_dropped(e: &pb::fleet_event::Event) -> Option<pb::ReservationDropped> {
    match e {
        pb::fleet_event::Event::ReservationDropped(d) => Some(d.clone()),
        _ => None,
    }
}

fn rejection(r: pb::PlaceResponse) -> pb::Rejection {
    match r.result.unwrap() {
        pb::place_response::Result::Rejection(r) => r,
        pb::place_response::Result::Placement(p) => panic!("placed: {p:?}"),
    }
}

#[tokio::test]
async fn place_list_and_release() {
    let hive = TestHive::start_named("sched-1", TWO_GPUS).await;
    let (_queen, mut client) = queen_with(vec![hive.url()], settings()).await;
    let p = placement(client.place(gpu_request(8 * GIB)).await.unwrap().into_inner());
    assert_eq!(p.hive_id, "sched-1");
    assert_eq!(p.device_id, "GPU-0", "least loaded: 10% < 20%");
    assert_eq!(p.reserved_bytes, 8 * GIB);
    assert_eq!(p.free_after_bytes, 12 * GIB);
    assert!(!p.reservation_id.is_empty() && p.expires_at_unix_ms > rbee_shared::time::now_unix_ms());
    assert_eq!(p.policy, "built-in:least-loaded");

    let list = client.list_reservations(pb::ListReservationsRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.reservations.len(), 1);
    assert_eq!(list.reservations[0].state(), pb::ReservationState::Active);
    assert!(list.next_page_token.is_empty(), "one page");

    let dry = pb::PlaceRequest { dry_run: true, ..gpu_request(GIB) };
    assert!(placement(client.place(dry).await.unwrap().into_inner()).reservation_id.is_empty());
    assert_eq!(all_reservations(&mut client, 0).await.len(), 1);

    client.release(pb::ReleaseRequest { reservation_id: p.reservation_id.clone() }).await.unwrap();
    assert!(all_reservations(&mut client, 0).await.is_empty());
    let again = client.release(pb::ReleaseRequest { reservation_id: p.reservation_id }).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::NotFound);

    let bad = client
        .place(pb::PlaceRequest { device_kind: pb::DeviceKind::Cuda as i32, ..Default::default() })
        .await;
    let bad = bad.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("vram_bytes"), "{}", bad.message());

    let too_big = rejection(client.place(gpu_request(30 * GIB)).await.unwrap().into_inner());
    assert!(
        too_big.hive_reasons.contains(&"sched-1/GPU-0: 20.0 GiB free < 30.0 GiB".to_string()),
        "{too_big:?}"
    );
}

/// A model id follows one rule at every door (`rbee_shared::model::check_model_id`):
/// Place refuses what prefetch, preload and fetch refuse, and reserves nothing. An
/// empty model stays allowed (a placement for no model).
#[tokio::test]
async fn place_refuses_a_model_id_the_model_rule_refuses() {
    let hive = TestHive::start_named("sched-model", TWO_GPUS).await;
    let (_queen, mut client) = queen_with(vec![hive.url()], settings()).await;
    for bad in ["has space", "../etc", "a--b", ".hidden", "x".repeat(129).as_str(), "é"] {
        assert!(rbee_shared::model::check_model_id(bad).is_err(), "{bad:?}");
        let err = client.place(pb::PlaceRequest { model: bad.into(), ..gpu_request(GIB) }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(err.message().contains("model"), "{}", err.message());
    }
    assert!(all_reservations(&mut client, 0).await.is_empty(), "a refused Place reserves nothing");
    let ok = placement(
        client
            .place(pb::PlaceRequest { model: "org/llama-3.1".into(), ..gpu_request(GIB) })
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(!ok.reservation_id.is_empty());
    placement(client.place(gpu_request(GIB)).await.unwrap().into_inner());
}

/// The driver's reserved VRAM (NVML v2 reports it apart from used and free) is not
/// free: 80 GiB with 5 GiB used and 0.5 GiB reserved has 74.5 GiB to give, not 75.
#[tokio::test]
async fn place_does_not_promise_memory_the_driver_reserves() {
    const RESERVED: &str = r#"
[[gpu]]
id = "GPU-0"
vram_total = "80GiB"
vram_used = ["5GiB"]
vram_reserved = "512MiB"
"#;
    let hive = TestHive::start_named("reserved-1", RESERVED).await;
    let (_queen, mut client) = queen_with(vec![hive.url()], settings()).await;
    let over = rejection(client.place(gpu_request(75 * GIB - 100 * (1 << 20))).await.unwrap().into_inner());
    assert!(
        over.hive_reasons.contains(&"reserved-1/GPU-0: 74.5 GiB free < 74.9 GiB".to_string()),
        "{over:?}"
    );
    let p = placement(client.place(gpu_request(74 * GIB + GIB / 2)).await.unwrap().into_inner());
    assert_eq!((p.device_id.as_str(), p.free_after_bytes), ("GPU-0", 0));
}

/// Each GPU of a hive view carries what this queen's reservations hold there and what
/// a Place would grant there now (80 GiB, 12 GiB used, one 30 GiB reservation: 38 GiB),
/// in ListHives, GetHive and `queen hive`; a dry run admits exactly that.
#[tokio::test]
async fn hive_views_carry_the_reserved_and_placeable_figures() {
    const EIGHTY: &str = r#"
[[gpu]]
id = "GPU-0"
vram_total = "80GiB"
vram_used = ["12GiB"]
"#;
    let hive = TestHive::start_named("figures-1", EIGHTY).await;
    let (queen, mut client) = queen_with(vec![hive.url()], settings()).await;
    let mut fleet = queen.client().await;
    let figures = |v: &pb::HiveView| (v.devices[0].reserved_bytes, v.devices[0].placeable_bytes);
    let got = fleet.get_hive(pb::GetHiveRequest { hive: "figures-1".into() }).await.unwrap().into_inner();
    assert_eq!(figures(&got), (0, Some(68 * GIB)));

    let p = placement(client.place(gpu_request(30 * GIB)).await.unwrap().into_inner());
    assert_eq!(p.free_after_bytes, 38 * GIB);
    let got = fleet.get_hive(pb::GetHiveRequest { hive: "figures-1".into() }).await.unwrap().into_inner();
    assert_eq!(figures(&got), (30 * GIB, Some(38 * GIB)));
    let listed = fleet.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner();
    assert_eq!(figures(&listed.hives[0]), (30 * GIB, Some(38 * GIB)));

    let dry = |bytes| pb::PlaceRequest { dry_run: true, ..gpu_request(bytes) };
    placement(client.place(dry(38 * GIB)).await.unwrap().into_inner());
    rejection(client.place(dry(38 * GIB + 1)).await.unwrap().into_inner());

    let (ok, out, err) = cli::queen_cli(cli::args(&["hive", "figures-1", "--queen", &queen.url()])).await;
    assert!(ok, "{err}");
    assert!(out.contains("reserved 30.0 GiB placeable 38.0 GiB"), "{out}");
}

/// A hive degraded only by its CPU load (every load passes a 0% threshold) still takes
/// GPU placements, and the answer says why it is degraded; CPU work is refused, and the
/// rejection counts the cause.
#[tokio::test]
async fn a_cpu_busy_hive_still_takes_gpu_placements() {
    let hive = TestHive::start_named("cpu-busy-1", TWO_GPUS).await;
    let mut config = fast_config(vec![hive.url()]);
    config.fleet.thresholds.cpu_degraded_percent = 0.0;
    config.scheduler = settings();
    let queen = TestQueen::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "the hive online and degraded by its CPU", |hs| {
        hs.iter().all(|h| {
            online(h)
                && h.health() == pb::Health::Degraded
                && h.health_reasons.iter().any(|r| r.starts_with("cpu ") && r.ends_with(">= 0%"))
        })
    })
    .await;
    let mut client = pb::scheduler_client::SchedulerClient::connect(queen.url()).await.unwrap();
    let p = placement(client.place(gpu_request(8 * GIB)).await.unwrap().into_inner());
    assert_eq!(p.hive_id, "cpu-busy-1");
    assert!(
        p.notes.iter().any(|n| n.starts_with("cpu-busy-1: degraded: cpu ") && n.contains(">= 0%")),
        "{p:?}"
    );
    let cpu = pb::PlaceRequest {
        model: "m".into(),
        ram_bytes: Some(GIB),
        device_kind: pb::DeviceKind::Cpu as i32,
        ..Default::default()
    };
    let refused = rejection(client.place(cpu).await.unwrap().into_inner());
    assert!(refused.reason.ends_with("no hive fits: 1 degraded (cpu >= 0%)"), "{refused:?}");
}

#[tokio::test]
async fn two_hundred_concurrent_placements_never_oversubscribe_a_device() {
    let hives = [TestHive::start_named("c1", TWO_GPUS).await, TestHive::start_named("c2", TWO_GPUS).await];
    let (_queen, client) = queen_with(hives.iter().map(|h| h.url()).collect(), settings()).await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move { c.place(gpu_request(3 * GIB)).await.unwrap().into_inner() }));
    }
    let mut placed = 0;
    for t in tasks {
        if let Some(pb::place_response::Result::Placement(_)) = t.await.unwrap().result {
            placed += 1;
        }
    }
    // 20 GiB free per device holds 6 placements of 3 GiB; 4 devices: 24.
    assert_eq!(placed, 24);
    let mut c = client.clone();
    let list = all_reservations(&mut c, 0).await;
    let mut per_device: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in &list {
        *per_device.entry((r.hive_id.clone(), r.device_id.clone())).or_default() += r.bytes;
    }
    assert_eq!(per_device.len(), 4);
    for (device, sum) in per_device {
        assert!(sum <= 20 * GIB, "{device:?} holds {sum} bytes of reservations > 20 GiB free");
    }
}

#[tokio::test]
async fn reservations_survive_a_stale_hive_and_go_with_a_removed_one() {
    let hive = TestHive::start_named("flaky", TWO_GPUS).await;
    let proxy = Proxy::start(hive.addr).await;
    let (queen, mut client) = queen_with(vec![proxy.url()], settings()).await;
    let mut fleet = queen.client().await;
    let mut watch = Watch::open(&mut fleet).await;
    let p = placement(client.place(gpu_request(16 * GIB)).await.unwrap().into_inner());

    proxy.freeze();
    watch.until(state_to(&proxy.url(), pb::HiveState::Stale)).await;
    let list = all_reservations(&mut client, 0).await;
    assert_eq!(list.len(), 1, "kept while stale");
    let stale = rejection(client.place(gpu_request(GIB)).await.unwrap().into_inner());
    assert!(stale.hive_reasons.iter().any(|r| r.starts_with("flaky: stale")), "{stale:?}");

    fleet.remove_hive(pb::RemoveHiveRequest { hive: "flaky".into() }).await.unwrap();
    let (dropped, _) = watch.until(reservation_dropped).await;
    assert_eq!(dropped.reservation_id, p.reservation_id);
    assert_eq!(dropped.reason, "hive removed");
    assert!(all_reservations(&mut client, 0).await.is_empty());
}

#[tokio::test]
async fn unsettled_reservations_expire_with_an_event() {
    let hive = TestHive::start_named("ttl", TWO_GPUS).await;
    let (queen, mut client) = queen_with(vec![hive.url()], settings()).await;
    let mut fleet = queen.client().await;
    let mut watch = Watch::open(&mut fleet).await;
    let req = pb::PlaceRequest { ttl_ms: Some(1000), ..gpu_request(GIB) };
    let p = placement(client.place(req).await.unwrap().into_inner());
    let (dropped, _) = watch.until(reservation_dropped).await;
    assert_eq!(dropped.reservation_id, p.reservation_id);
    assert!(dropped.reason.contains("expired"), "{}", dropped.reason);
}

#[tokio::test]
async fn a_runaway_policy_answers_a_clear_error_and_a_fixed_file_is_hot_loaded() {
    let hive = TestHive::start_named("pol", TWO_GPUS).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.rhai");
    std::fs::write(&file, "fn place(request, fleet) {\n  while true {\n    let x = 1;\n  }\n}\n").unwrap();
    let mut s = settings();
    s.policy_file = Some(file.clone());
    s.limits.budget = Duration::from_millis(20);
    let (queen, mut client) = queen_with(vec![hive.url()], s).await;

    let err = client.place(gpu_request(GIB)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("wall-time budget") || err.message().contains("operations"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("(line 3, column") || err.message().contains("(line 2, column"),
        "{}",
        err.message()
    );
    let status = client.get_policy(pb::GetPolicyRequest {}).await.unwrap().into_inner();
    assert_eq!(status.failures, 1);
    // The queen keeps serving.
    let mut fleet = queen.client().await;
    assert_eq!(fleet.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives.len(), 1);

    // A broken edit is refused; the old policy stays.
    std::fs::write(&file, "fn place(request, fleet) { let = }").unwrap();
    let deadline = Instant::now() + DEADLINE;
    while client.get_policy(pb::GetPolicyRequest {}).await.unwrap().into_inner().reload_failures == 0 {
        assert!(Instant::now() < deadline, "the broken edit was never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A good edit is compiled, test-run and loaded.
    std::fs::write(&file, "fn place(request, fleet) { sort_bin_pack(fleet.candidates(request)) }\n").unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(r) = client.place(gpu_request(GIB)).await {
            let p = placement(r.into_inner());
            assert_eq!(p.policy, file.display().to_string());
            break;
        }
        assert!(Instant::now() < deadline, "the fixed policy was never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
