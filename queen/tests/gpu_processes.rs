//! Who holds each GPU's memory, end to end: a real hive whose simulated GPU lists real
//! processes the test starts, a real queen, the generated clients. Settlement goes by
//! process: a known process growing settles nothing; a worker carrying its reservation
//! id settles exactly that reservation.

mod common;

use std::path::Path;
use std::time::Duration;

use common::scheduling::*;
use common::*;
use rbee_hive::test_support::{HiveProcess, built_artifact, fake_nvml_lib, sleeper, write_pid_file};
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
    let args = [
        "--hive-id".as_ref(),
        "fake-driver".as_ref(),
        "--rescan-interval".as_ref(),
        "100ms".as_ref(),
        "--state-dir".as_ref(),
        state.path().as_os_str(),
        "--nvml-lib".as_ref(),
        lib.as_os_str(),
    ];
    let hive = HiveProcess::spawn(
        &built_artifact("hive", "-p rbee-hive"),
        &args,
        &[("RBEE_FAKE_NVML_SCENARIO", scenario.as_os_str())],
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
    let r2 = placement(client.place(gpu_request(8 * GIB)).await.unwrap().into_inner()).reservation_id;

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

    // r2's worker starts, carrying its reservation id, and loads.
    let worker = sleeper(Some(&r2));
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
