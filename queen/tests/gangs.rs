//! Gang placement end to end: a real queen, a hive reporting its GPU topology (a
//! scripted hive: NVLink between GPU-0 and GPU-1 only), the generated client and the
//! `queen place` CLI; and a gang kept across `kill -9` of the queen (redb store).

mod common;

use std::process::Command;
use std::time::Duration;

use common::cli::{args, queen_cli};
use common::process::QueenProcess;
use common::scheduling::*;
use common::topology::*;
use common::*;
use rbee_proto::v1 as pb;
use rbee_queen::scheduler::SchedulerSettings;

const QUEEN: &str = env!("CARGO_BIN_EXE_queen");

fn settings() -> SchedulerSettings {
    let mut s = SchedulerSettings { maintain_every: Duration::from_millis(100), ..Default::default() };
    s.limits.budget = Duration::from_secs(2);
    s
}

fn rejection(r: pb::PlaceResponse) -> pb::Rejection {
    match r.result.unwrap() {
        pb::place_response::Result::Rejection(r) => r,
        pb::place_response::Result::Placement(p) => panic!("placed: {p:?}"),
    }
}

fn device_ids(p: &pb::Placement) -> Vec<&str> {
    p.devices.iter().map(|d| d.device_id.as_str()).collect()
}

#[tokio::test]
async fn a_gang_takes_the_nvlink_pair_holds_both_gpus_and_is_released_as_one() {
    let hive = topology_hive("topo").await;
    let (_queen, mut client) = queen_with(vec![hive.url.clone()], settings()).await;

    // The pair has 40 GiB free each, the others 79: the pair is NVLink, so it wins.
    let p = placement(client.place(gang(2, 30 * GIB, pb::GangTopology::Any)).await.unwrap().into_inner());
    assert_eq!(device_ids(&p), ["GPU-0", "GPU-1"]);
    assert_eq!(p.device_id, "GPU-0", "old clients see the first GPU");
    assert_eq!(p.topology, "nvlink");
    assert_eq!(p.reserved_bytes, 30 * GIB);
    assert_eq!(p.devices.iter().map(|d| d.index).collect::<Vec<_>>(), [Some(0), Some(1)]);
    assert!(p.devices.iter().all(|d| d.free_after_bytes == 10 * GIB), "{p:?}");

    let listed = all_reservations(&mut client, 0).await;
    assert_eq!(listed.len(), 1, "one reservation for the gang");
    assert_eq!(listed[0].gang_device_ids, ["GPU-0", "GPU-1"]);

    // No second gang can use the pair's GPUs.
    let no = rejection(client.place(gang(2, 30 * GIB, pb::GangTopology::Nvlink)).await.unwrap().into_inner());
    assert!(
        no.hive_reasons.iter().any(|r| r == "topo: 2 GPUs have 30.0 GiB free but only 1 share NVLink"),
        "{no:?}"
    );
    let any = placement(client.place(gang(2, 30 * GIB, pb::GangTopology::Any)).await.unwrap().into_inner());
    assert_eq!(device_ids(&any), ["GPU-2", "GPU-3"]);

    client.release(pb::ReleaseRequest { reservation_id: p.reservation_id.clone() }).await.unwrap();
    let again =
        placement(client.place(gang(2, 30 * GIB, pb::GangTopology::Nvlink)).await.unwrap().into_inner());
    assert_eq!(device_ids(&again), ["GPU-0", "GPU-1"], "released as one: both GPUs free again");

    // Bad gangs are INVALID_ARGUMENT and change nothing.
    let before = all_reservations(&mut client, 0).await.len();
    for bad in [
        pb::PlaceRequest { gpus: Some(0), ..gpu_request(GIB) },
        pb::PlaceRequest { gpus: Some(65), ..gpu_request(GIB) },
        pb::PlaceRequest { topology: 7, ..gpu_request(GIB) },
    ] {
        let err = client.place(bad).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{}", err.message());
    }
    assert_eq!(all_reservations(&mut client, 0).await.len(), before);

    // A gang larger than any hive is a rejection that says so, not an error.
    let huge = rejection(client.place(gang(16, GIB, pb::GangTopology::Any)).await.unwrap().into_inner());
    assert!(
        huge.hive_reasons.iter().any(|r| r.contains("no hive has 16 GPUs (the largest has 4)")),
        "{huge:?}"
    );
}

#[tokio::test]
async fn queen_place_asks_for_a_gang_and_exits_3_when_rejected() {
    let hive = topology_hive("cli").await;
    let (queen, _client) = queen_with(vec![hive.url.clone()], settings()).await;
    let url = queen.url();
    let (ok, out, err) = queen_cli(args(&[
        "place",
        "--queen",
        &url,
        "--gpus",
        "2",
        "--vram",
        "30GiB",
        "--topology",
        "nvlink",
        "--dry-run",
        "--json",
    ]))
    .await;
    assert!(ok, "{err}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap();
    assert!(out.contains("\"devices\"") && out.contains("\"nvlink\""), "{out}");
    assert!(out.contains("GPU-0") && out.contains("GPU-1"), "{out}");

    let (ok, out, err) = queen_cli(args(&[
        "place",
        "--queen",
        &url,
        "--gpus",
        "2",
        "--vram",
        "30GiB",
        "--topology",
        "nvlink",
    ]))
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("gang of 2 GPUs (nvlink)"), "{out}");
    let (ok, out, err) = queen_cli(args(&["reservations", "--queen", &url])).await;
    assert!(ok, "{err}");
    assert!(out.contains("GPU-0,GPU-1 (gang of 2)"), "{out}");

    // On a blocking thread: this test's runtime serves the queen.
    let three = tokio::task::spawn_blocking(move || {
        Command::new(QUEEN)
            .args(["place", "--queen", &url, "--gpus", "3", "--vram", "30GiB", "--topology", "nvlink"])
            .env_remove("QUEEN_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&three.stdout);
    assert_eq!(
        three.status.code(),
        Some(3),
        "rejected is exit 3: {text} {}",
        String::from_utf8_lossy(&three.stderr)
    );
    assert!(text.contains("cli: 2 of 4 GPUs have 30.0 GiB free, the gang needs 3"), "{text}");
}

/// Waits until the queen's one hive is online with a sample.
async fn hive_online(queen: &QueenProcess) {
    let mut fleet = queen.fleet().await;
    wait_for(&mut fleet, "the hive online with a sample", |hs| {
        hs.len() == 1 && hs.iter().all(|h| online(h) && h.latest_sample.is_some())
    })
    .await;
}

#[tokio::test]
async fn a_gang_survives_kill_9_of_the_queen() {
    let state = tempfile::tempdir().unwrap();
    let hive = topology_hive("durable").await;
    let serve = || {
        let config = state.path().join("calm.toml");
        std::fs::write(&config, "[health]\ncpu_degraded_percent = 101.0\n").unwrap();
        let mut cmd = Command::new(QUEEN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--sample-interval", "200ms", "--hive", &hive.url])
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(state.path())
            .env("RUST_LOG", "info")
            .env_remove("QUEEN_CONFIG")
            .env_remove("QUEEN_STATE_DIR")
            .env_remove("QUEEN_RESET_STATE")
            .stdout(std::process::Stdio::null());
        QueenProcess::start(cmd)
    };
    let mut queen = serve();
    hive_online(&queen).await;
    let mut client = queen.scheduler().await;
    let p = placement(client.place(gang(2, 30 * GIB, pb::GangTopology::Nvlink)).await.unwrap().into_inner());
    assert_eq!(device_ids(&p), ["GPU-0", "GPU-1"]);
    queen.kill_9();
    drop(queen);

    let queen = serve();
    assert!(queen.logged("reservations restored from the state store"));
    let mut client = queen.scheduler().await;
    let kept = all_reservations(&mut client, 0).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].id, p.reservation_id);
    assert_eq!(kept[0].gang_device_ids, ["GPU-0", "GPU-1"]);
    hive_online(&queen).await;
    // Both GPUs still count the gang after the restart.
    let no = rejection(client.place(gang(2, 30 * GIB, pb::GangTopology::Nvlink)).await.unwrap().into_inner());
    assert!(no.hive_reasons.iter().any(|r| r.contains("only 1 share NVLink")), "{no:?}");
    client.release(pb::ReleaseRequest { reservation_id: p.reservation_id }).await.unwrap();
    assert!(all_reservations(&mut client, 0).await.is_empty());
}

/// `/metrics` counts placements by gang size, and shows a gang's bytes reserved on each
/// of its GPUs.
#[tokio::test]
async fn metrics_count_gang_sizes_and_show_the_bytes_on_each_gpu() {
    use common::metrics::queen_with_metrics;
    use rbee_hive::test_support::http_get;
    let hive = topology_hive("metered").await;
    let (queen, metrics) = queen_with_metrics(
        fast_config(vec![hive.url.clone()]),
        rbee_shared::metrics_http::MetricsAccess::default(),
    )
    .await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "the hive online with a sample", |hs| {
        hs.iter().all(|h| online(h) && h.latest_sample.is_some())
    })
    .await;
    let mut client = rbee_proto::v1::scheduler_client::SchedulerClient::connect(queen.url()).await.unwrap();
    placement(client.place(gang(2, 30 * GIB, pb::GangTopology::Nvlink)).await.unwrap().into_inner());
    placement(client.place(gpu_request(GIB)).await.unwrap().into_inner());
    let (status, text) = http_get(metrics, "/metrics", None).await;
    assert_eq!(status, 200, "{text}");
    for expected in [
        "rbee_place_gang_size_total{source=\"queen\",gpus=\"2\"} 1",
        "rbee_place_gang_size_total{source=\"queen\",gpus=\"1\"} 1",
        "rbee_device_memory_reserved_bytes{source=\"queen\",hive=\"metered\",gpu=\"0\",uuid=\"GPU-0\"} 32212254720",
        "rbee_device_memory_reserved_bytes{source=\"queen\",hive=\"metered\",gpu=\"1\",uuid=\"GPU-1\"} 32212254720",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
