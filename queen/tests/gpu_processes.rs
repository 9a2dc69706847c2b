//! Who holds each GPU's memory, end to end: a real hive whose simulated GPU lists real
//! processes the test starts, a real queen, the generated clients. Settlement goes by
//! process: a known process growing settles nothing; a worker carrying its reservation
//! token settles exactly that reservation; a process carrying another tenant's
//! reservation id (public) and a guessed token is untagged, and its memory counts.

mod common;

use std::path::Path;
use std::time::Duration;

use common::scheduling::*;
use common::*;
use rbee_hive::test_support::{
    HiveProcess, built_artifact, fake_nvml_lib, sleeper, sleeper_with_env, write_pid_file,
};
use rbee_proto::v1 as pb;
use rbee_queen::scheduler::SchedulerSettings;
use tokio::time::Instant;

async fn states(
    client: &mut rbee_proto::v1::scheduler_client::SchedulerClient<tonic::transport::Channel>,
) -> Vec<(String, pb::ReservationState)> {
    all_reservations(client, 0).await.into_iter().map(|r| (r.id.clone(), r.state())).collect()
}

fn gpu_processes(h: &pb::HiveView) -> Option<&pb::GpuProcesses> {
    h.latest_sample.as_ref()?.gpus.first()?.processes.as_ref()
}

#[tokio::test]
async fn a_tagged_worker_settles_its_reservation_and_another_process_growing_settles_none() {
    let dir = tempfile::tempdir().unwrap();
    let pid = |name: &str| dir.path().join(name);
    // One 80 GiB GPU whose used VRAM is the sum of its processes. "other" holds 4 GiB;
    // once its pid file is renamed to grown.pid it holds 20 GiB.
    let scenario = format!(
        "step_s = 0.1\n[[gpu]]\nid = \"GPU-0\"\nvram_total = \"80GiB\"\nutil_percent = [10]\n\
         [[gpu.process]]\npid_file = {:?}\nused = [\"4GiB\"]\n\
         [[gpu.process]]\npid_file = {:?}\nused = [\"20GiB\"]\n\
         [[gpu.process]]\npid_file = {:?}\nused = [\"8GiB\"]\n",
        pid("other.pid"),
        pid("grown.pid"),
        pid("worker.pid"),
    );
    let hive = TestHive::start_named("procs", &scenario).await;
    tagged_worker_story(hive.url(), dir.path()).await;
    hive.stop().await.unwrap();
}

/// The same story end to end through NVML: the real `hive` binary loads the fake
/// driver library (`--nvml-lib`), whose process list names the processes this test
/// starts (pid files the library re-reads at every call) and whose used VRAM is the
/// sum of them.
#[tokio::test]
async fn through_the_fake_nvml_library_a_tagged_worker_settles_exactly_its_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let pid = |name: &str| dir.path().join(name);
    let scenario_text = format!(
        "[[gpu]]\nuuid = \"GPU-0\"\nmemory_total = \"80GiB\"\nutil_percent = [10]\n\
         process = [{{ pid_file = {:?}, used_memory = \"4GiB\" }}, \
         {{ pid_file = {:?}, used_memory = \"20GiB\" }}, {{ pid_file = {:?}, used_memory = \"8GiB\" }}]\n",
        pid("other.pid"),
        pid("grown.pid"),
        pid("worker.pid"),
    );
    let scenario = pid("scenario.toml");
    std::fs::write(&scenario, scenario_text).unwrap();
    let state = tempfile::tempdir().unwrap();
    let lib = fake_nvml_lib(false);
    let hive = HiveProcess::on_fake_driver(
        &built_artifact("hive", "-p rbee-hive"),
        &lib,
        &scenario,
        "fake-driver",
        state.path(),
    );
    tagged_worker_story(hive.url(), dir.path()).await;
    drop(hive);
}

/// A queen with one hive whose GPU-0 lists the processes named by `other.pid` (4 GiB),
/// `grown.pid` (20 GiB) and `worker.pid` (8 GiB) in `dir`. Two reservations; a known
/// process grows by both together: neither settles. A worker tagged with the second
/// reservation loads: exactly that one settles.
async fn tagged_worker_story(hive_url: String, dir: &Path) {
    let (other_pid, grown_pid, worker_pid) =
        (dir.join("other.pid"), dir.join("grown.pid"), dir.join("worker.pid"));
    let other = sleeper(None);
    write_pid_file(&other_pid, other.pid());
    let settings = SchedulerSettings { maintain_every: Duration::from_millis(100), ..Default::default() };
    let (queen, mut client) = queen_with(vec![hive_url], settings).await;
    let mut fleet = queen.client().await;
    let other_id = other.pid();
    let hives = wait_for(&mut fleet, "the other process at the queen", |hs| {
        hs.iter().filter_map(gpu_processes).any(|p| p.listed.iter().any(|p| p.pid == other_id))
    })
    .await;
    let listed = &gpu_processes(&hives[0]).unwrap().listed[0];
    assert_eq!(listed.name.as_deref(), Some("sleep"));
    assert!(listed.rss_bytes.is_some_and(|r| r > 0) && listed.cgroup.is_some(), "{listed:?}");

    let r1 = placement(client.place(gpu_request(8 * GIB)).await.unwrap().into_inner()).reservation_id;
    let p2 = placement(client.place(gpu_request(8 * GIB)).await.unwrap().into_inner());
    let (r2, t2) = (p2.reservation_id, p2.reservation_token);
    assert_eq!(t2.len(), 32, "Place answers the worker's secret tag");

    // The known process grows by both reservations together: under the whole-device
    // rule both would settle now.
    std::fs::rename(&other_pid, &grown_pid).unwrap();
    wait_for(&mut fleet, "the growth at the queen", |hs| {
        hs.iter()
            .filter_map(|h| h.latest_sample.as_ref())
            .any(|s| s.gpus[0].vram_used_bytes == Some(20 * GIB))
    })
    .await;
    // Its growth is not promised away either: 80 - (20 used + 16 still to load).
    let dry = pb::PlaceRequest { dry_run: true, ..gpu_request(GIB) };
    assert_eq!(placement(client.place(dry).await.unwrap().into_inner()).free_after_bytes, 43 * GIB);

    // r2's worker starts, carrying its reservation token, and loads.
    let worker = sleeper(Some(&t2));
    write_pid_file(&worker_pid, worker.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = states(&mut client).await;
        let state = |id: &str| now.iter().find(|(r, _)| r == id).map(|(_, s)| *s);
        if state(&r2) == Some(pb::ReservationState::Settled) {
            // Upkeep has seen the grown process (it came first) and settled only r2.
            assert_eq!(state(&r1), Some(pb::ReservationState::Active), "r1 settled early: {now:?}");
            break;
        }
        assert_eq!(state(&r1), Some(pb::ReservationState::Active), "r1 settled early: {now:?}");
        assert!(Instant::now() < deadline, "r2 never settled: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hives = client_hives(&mut fleet).await;
    let worker_seen =
        gpu_processes(&hives[0]).unwrap().listed.iter().find(|p| p.pid == worker.pid()).cloned();
    assert_eq!(worker_seen.and_then(|p| p.reservation_id), Some(r2));
    drop((worker, other));
    queen.stop().await;
}

async fn client_hives(
    fleet: &mut rbee_proto::v1::fleet_client::FleetClient<tonic::transport::Channel>,
) -> Vec<pb::HiveView> {
    fleet.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives
}

/// 80 GiB; `other.pid` holds 25 GiB, `forged.pid` 10 GiB, `worker.pid` 20 GiB.
fn forged_scenario_sim(dir: &Path) -> String {
    format!(
        "step_s = 0.1\n[[gpu]]\nid = \"GPU-0\"\nvram_total = \"80GiB\"\nutil_percent = [10]\n\
         [[gpu.process]]\npid_file = {:?}\nused = [\"25GiB\"]\n\
         [[gpu.process]]\npid_file = {:?}\nused = [\"10GiB\"]\n\
         [[gpu.process]]\npid_file = {:?}\nused = [\"20GiB\"]\n",
        dir.join("other.pid"),
        dir.join("forged.pid"),
        dir.join("worker.pid"),
    )
}

#[tokio::test]
async fn a_forged_tag_hides_no_memory_and_the_true_token_still_settles() {
    let dir = tempfile::tempdir().unwrap();
    let hive = TestHive::start_named("forged", &forged_scenario_sim(dir.path())).await;
    forged_tag_story(hive.url(), dir.path()).await;
    hive.stop().await.unwrap();
}

/// The same attack through the fake NVML library and the real `hive` binary.
#[tokio::test]
async fn through_the_fake_nvml_library_a_forged_tag_hides_no_memory() {
    let dir = tempfile::tempdir().unwrap();
    let pid = |name: &str| dir.path().join(name);
    let scenario_text = format!(
        "[[gpu]]\nuuid = \"GPU-0\"\nmemory_total = \"80GiB\"\nutil_percent = [10]\n\
         process = [{{ pid_file = {:?}, used_memory = \"25GiB\" }}, \
         {{ pid_file = {:?}, used_memory = \"10GiB\" }}, {{ pid_file = {:?}, used_memory = \"20GiB\" }}]\n",
        pid("other.pid"),
        pid("forged.pid"),
        pid("worker.pid"),
    );
    let scenario = pid("scenario.toml");
    std::fs::write(&scenario, scenario_text).unwrap();
    let state = tempfile::tempdir().unwrap();
    let lib = fake_nvml_lib(false);
    let hive = HiveProcess::on_fake_driver(
        &built_artifact("hive", "-p rbee-hive"),
        &lib,
        &scenario,
        "fake-driver-forged",
        state.path(),
    );
    forged_tag_story(hive.url(), dir.path()).await;
    drop(hive);
}

/// Issue 26 part 5: on an 80 GiB GPU where another tenant holds 25 GiB, the victim
/// reserves 20 GiB. An attacker starts a 10 GiB process carrying the victim's (public)
/// reservation id and a guessed token. True free: 80 - 25 - 10 - 20 = 25 GiB. The old
/// queen counted the attacker's 10 GiB inside the victim's reservation (35 GiB free)
/// and admitted a 35 GiB Place. Here the forged process is untagged: 25 GiB free, the
/// 35 GiB Place is refused, and the victim's worker, carrying the token Place gave it,
/// still settles its reservation.
async fn forged_tag_story(hive_url: String, dir: &Path) {
    let other = sleeper(None);
    write_pid_file(&dir.join("other.pid"), other.pid());
    let settings = SchedulerSettings { maintain_every: Duration::from_millis(100), ..Default::default() };
    let (queen, mut client) = queen_with(vec![hive_url], settings).await;
    let mut fleet = queen.client().await;
    let other_pid = other.pid();
    wait_for(&mut fleet, "the other tenant's process at the queen", |hs| {
        hs.iter().filter_map(gpu_processes).any(|p| p.listed.iter().any(|p| p.pid == other_pid))
    })
    .await;

    let victim = placement(client.place(gpu_request(20 * GIB)).await.unwrap().into_inner());
    let (victim_id, victim_token) = (victim.reservation_id.clone(), victim.reservation_token.clone());
    assert_eq!(victim.free_after_bytes, 35 * GIB);

    // The attacker lists reservations (a read token suffices) and copies the victim's id
    // into both variables: the old one and, as a guess, the token.
    let listed = all_reservations(&mut client, 0).await;
    assert!(listed.iter().any(|r| r.id == victim_id));
    let forged = sleeper_with_env(&[
        ("RBEE_RESERVATION_ID", victim_id.as_str()),
        ("RBEE_RESERVATION_TOKEN", victim_id.as_str()),
    ]);
    write_pid_file(&dir.join("forged.pid"), forged.pid());
    let forged_pid = forged.pid();
    let hives = wait_for(&mut fleet, "the forged process at the queen", |hs| {
        hs.iter().filter_map(gpu_processes).any(|p| p.listed.iter().any(|p| p.pid == forged_pid))
    })
    .await;
    let seen = gpu_processes(&hives[0]).unwrap().listed.iter().find(|p| p.pid == forged_pid).cloned();
    assert_ne!(
        seen.and_then(|p| p.reservation_id).as_deref(),
        Some(victim_id.as_str()),
        "the fleet view shows no forged tag"
    );

    // Its 10 GiB count as used: 25 GiB free, not 35.
    let dry = pb::PlaceRequest { dry_run: true, ..gpu_request(GIB) };
    assert_eq!(placement(client.place(dry).await.unwrap().into_inner()).free_after_bytes, 24 * GIB);
    let over = client.place(gpu_request(35 * GIB)).await.unwrap().into_inner();
    assert!(
        matches!(over.result, Some(pb::place_response::Result::Rejection(_))),
        "a 35 GiB Place over-commits the GPU by 10 GiB: {over:?}"
    );
    assert_eq!(states(&mut client).await, vec![(victim_id.clone(), pb::ReservationState::Active)]);

    // The victim's worker carries the token Place answered, and loads: it settles.
    let worker = sleeper(Some(&victim_token));
    write_pid_file(&dir.join("worker.pid"), worker.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    while states(&mut client).await != vec![(victim_id.clone(), pb::ReservationState::Settled)] {
        assert!(Instant::now() < deadline, "the victim's reservation never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hives = client_hives(&mut fleet).await;
    let listed = &gpu_processes(&hives[0]).unwrap().listed;
    let worker_seen = listed.iter().find(|p| p.pid == worker.pid()).and_then(|p| p.reservation_id.clone());
    assert_eq!(worker_seen, Some(victim_id.clone()));
    // 80 - 25 - 10 - 20: all of it in the samples now.
    let dry = pb::PlaceRequest { dry_run: true, ..gpu_request(GIB) };
    assert_eq!(placement(client.place(dry).await.unwrap().into_inner()).free_after_bytes, 24 * GIB);

    // The token was answered to the placing client only: no listing holds it.
    let text = format!("{hives:?} {:?}", all_reservations(&mut client, 0).await);
    assert!(!text.contains(&victim_token), "a listing leaks the token");
    drop((worker, forged, other));
    queen.stop().await;
}

/// The tag survives a queen restart: the queen keeps no token, only the reservation id
/// (the token's digest) in its state store, and that is enough to recognise the worker.
/// Another process (10 GiB) is there at Place time and gone when the worker loads, so
/// the whole-device rule that restored reservations also follow cannot settle it
/// (20 GiB observed < 10 + 20): only the tag can.
#[tokio::test]
async fn a_worker_tag_still_settles_its_reservation_after_a_queen_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let scenario = format!(
        "step_s = 0.1\n[[gpu]]\nid = \"GPU-0\"\nvram_total = \"80GiB\"\nutil_percent = [10]\n\
         [[gpu.process]]\npid_file = {:?}\nused = [\"10GiB\"]\n\
         [[gpu.process]]\npid_file = {:?}\nused = [\"20GiB\"]\n",
        dir.path().join("other.pid"),
        dir.path().join("worker.pid"),
    );
    let other = sleeper(None);
    write_pid_file(&dir.path().join("other.pid"), other.pid());
    let hive = TestHive::start_named("restart", &scenario).await;
    let config = |hive: String| rbee_queen::QueenConfig {
        state_dir: Some(state.path().to_owned()),
        scheduler: SchedulerSettings { maintain_every: Duration::from_millis(100), ..Default::default() },
        ..fast_config(vec![hive])
    };
    let queen = TestQueen::start_with(config(hive.url()), "127.0.0.1:0".parse().unwrap()).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "the hive online", |hs| hs.iter().all(|h| online(h) && h.latest_sample.is_some()))
        .await;
    let mut client = pb::scheduler_client::SchedulerClient::connect(queen.url()).await.unwrap();
    let other_pid = other.pid();
    wait_for(&mut fleet, "the other process", |hs| {
        hs.iter().filter_map(gpu_processes).any(|p| p.listed.iter().any(|p| p.pid == other_pid))
    })
    .await;
    let placed = placement(client.place(gpu_request(20 * GIB)).await.unwrap().into_inner());
    queen.stop().await;
    std::fs::remove_file(dir.path().join("other.pid")).unwrap();
    drop(other);

    let queen = TestQueen::start_with(config(hive.url()), "127.0.0.1:0".parse().unwrap()).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "the hive online again", |hs| {
        hs.iter().all(|h| online(h) && h.latest_sample.is_some())
    })
    .await;
    let mut client = pb::scheduler_client::SchedulerClient::connect(queen.url()).await.unwrap();
    let restored = states(&mut client).await;
    assert_eq!(restored, vec![(placed.reservation_id.clone(), pb::ReservationState::Active)]);
    let text = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap_or_default())
        .any(|bytes| bytes.windows(32).any(|w| w == placed.reservation_token.as_bytes()));
    assert!(!text, "the state store holds the token");

    let worker = sleeper(Some(&placed.reservation_token));
    write_pid_file(&dir.path().join("worker.pid"), worker.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    while states(&mut client).await != vec![(placed.reservation_id.clone(), pb::ReservationState::Settled)] {
        assert!(Instant::now() < deadline, "the tagged worker never settled its restored reservation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(worker);
    queen.stop().await;
    hive.stop().await.unwrap();
}

/// Hostile round 3, F4: the victim places 20 GiB on an 80 GiB GPU; before its worker
/// starts, an attacker starts an untagged 20 GiB process, which settles the reservation
/// by size, and exits. The old queen left it settled: a 61 GiB Place was admitted, and
/// the victim's worker then loaded 20 GiB: 81 GiB promised on 80. Now the settlement is
/// undone once the process that made it is gone: 60 GiB free, the 61 GiB Place refused.
#[tokio::test]
async fn a_settlement_by_a_process_that_exits_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let attacker_pid = dir.path().join("attacker.pid");
    let scenario = format!(
        "step_s = 0.1\n[[gpu]]\nid = \"GPU-0\"\nvram_total = \"80GiB\"\nutil_percent = [10]\n\
         [[gpu.process]]\npid_file = {attacker_pid:?}\nused = [\"20GiB\"]\n",
    );
    let hive = TestHive::start_named("short-lived", &scenario).await;
    let settings = SchedulerSettings { maintain_every: Duration::from_millis(100), ..Default::default() };
    let (queen, mut client) = queen_with(vec![hive.url()], settings).await;
    let mut fleet = queen.client().await;

    let victim = placement(client.place(gpu_request(20 * GIB)).await.unwrap().into_inner());
    assert_eq!(victim.free_after_bytes, 60 * GIB);
    let attacker = sleeper(None);
    write_pid_file(&attacker_pid, attacker.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    while states(&mut client).await != vec![(victim.reservation_id.clone(), pb::ReservationState::Settled)] {
        assert!(Instant::now() < deadline, "the attacker's process never settled the reservation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The attacker exits.
    std::fs::remove_file(&attacker_pid).unwrap();
    let gone = attacker.pid();
    drop(attacker);
    wait_for(&mut fleet, "the attacker gone from the process list", |hs| {
        hs.iter().filter_map(gpu_processes).all(|p| p.listed.iter().all(|p| p.pid != gone))
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while states(&mut client).await != vec![(victim.reservation_id.clone(), pb::ReservationState::Active)] {
        assert!(Instant::now() < deadline, "the settlement was never undone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let over = client.place(gpu_request(61 * GIB)).await.unwrap().into_inner();
    assert!(
        matches!(over.result, Some(pb::place_response::Result::Rejection(_))),
        "a 61 GiB Place over-commits the GPU by 1 GiB: {over:?}"
    );
    let dry = pb::PlaceRequest { dry_run: true, ..gpu_request(GIB) };
    assert_eq!(placement(client.place(dry).await.unwrap().into_inner()).free_after_bytes, 59 * GIB);

    // The victim's worker loads, carrying its token: settled again, by its own worker.
    let worker = sleeper(Some(&victim.reservation_token));
    write_pid_file(&attacker_pid, worker.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    while states(&mut client).await != vec![(victim.reservation_id.clone(), pb::ReservationState::Settled)] {
        assert!(Instant::now() < deadline, "the victim's worker never settled its reservation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(worker);
    queen.stop().await;
    hive.stop().await.unwrap();
}
