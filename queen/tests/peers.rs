//! Weights from peers, the queen's part (issue 27): Scheduler.FetchModel hands the
//! fetching hive the hives that hold the model ready with matching hashes, `no_peers`
//! turns that off, a caller cannot name peers itself, and `all` fans a fetch out to
//! every matching hive as a chain on prefixes; `queen fetch --all` follows one bar per
//! hive and `queen models` counts the hives holding each model. Real queen, real hives,
//! a counting Range server, all on loopback.

mod common;

use common::cli::{args, queen_cli};
use common::{TestHive, TestQueen, online, wait_for};
use rbee_hive::test_support::http_files::{FileServer, generated, sha256_hex};
use rbee_hive::test_support::models_config;
use rbee_proto::v1 as pb;
use rbee_proto::v1::scheduler_client::SchedulerClient;

/// 8 MiB.
const SIZE: usize = 8 << 20;

fn ready_on(h: &pb::HiveView, model: &str) -> bool {
    h.capabilities
        .as_ref()
        .is_some_and(|c| c.models.iter().any(|m| m.id == model && m.state() == pb::ModelState::Ready))
}

fn url_fetch(model: &str, url: &str, sha256: Option<String>) -> pb::FetchModelRequest {
    sized_fetch(model, url, SIZE as u64, sha256)
}

fn sized_fetch(model: &str, url: &str, size: u64, sha256: Option<String>) -> pb::FetchModelRequest {
    pb::FetchModelRequest {
        model_id: model.into(),
        source: Some(pb::fetch_model_request::Source::Urls(pb::UrlSource {
            files: vec![pb::FileSource { url: url.into(), path: None, size_bytes: Some(size), sha256 }],
        })),
        ..Default::default()
    }
}

fn zone() -> std::collections::HashMap<String, String> {
    [("zone".to_owned(), "test".to_owned())].into()
}

type Fleet = pb::fleet_client::FleetClient<tonic::transport::Channel>;

/// Hives `peer-0`, `peer-1`, ... on loopback, one in each of `dirs`, one queen over
/// them, all online.
async fn fleet_of(dirs: &[tempfile::TempDir]) -> (Vec<TestHive>, TestQueen, Fleet) {
    let mut hives = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        hives.push(TestHive::start_with(models_config(&format!("peer-{i}"), dir.path(), None)).await);
    }
    let queen = TestQueen::start(hives.iter().map(TestHive::url).collect()).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "every hive online", |h| h.iter().filter(|h| online(h)).count() == dirs.len()).await;
    (hives, queen, fleet)
}

async fn fleet_of_three(dirs: &[tempfile::TempDir; 3]) -> (Vec<TestHive>, TestQueen, Fleet) {
    fleet_of(dirs).await
}

#[tokio::test]
async fn fetch_model_hands_the_ready_holders_as_peers_and_refuses_caller_named_peers() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let server = FileServer::start().await;
    let data = generated(SIZE, 31);
    let sha = sha256_hex(&data);
    let url = server.add("w.bin", data.clone());
    let (hives, queen, mut fleet) = fleet_of_three(&dirs).await;
    let mut scheduler = SchedulerClient::connect(queen.url()).await.unwrap();

    // No holder yet: no peers.
    let r = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(url_fetch("m", &url, Some(sha.clone()))),
            hive: "peer-0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.peers.is_empty(), "{:?}", r.peers);
    wait_for(&mut fleet, "m ready on peer-0", |h| {
        h.iter().any(|h| h.hive_id == "peer-0" && ready_on(h, "m"))
    })
    .await;

    // A caller may not name peers: INVALID_ARGUMENT, and nothing starts.
    let mut named = url_fetch("m", &url, Some(sha.clone()));
    named.peers =
        vec![pb::PeerSource { address: "http://127.0.0.1:9".into(), hive_id: "x".into(), partial: false }];
    let gets = server.gets();
    let e = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(named),
            hive: "peer-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("fetch.peers"), "{}", e.message());
    assert_eq!(server.gets(), gets);

    // The holder is handed to the next hive.
    let before = server.bytes_sent();
    let r = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(url_fetch("m", &url, Some(sha.clone()))),
            hive: "peer-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.hive_id, "peer-1");
    assert_eq!(r.peers, ["peer-0"]);
    wait_for(&mut fleet, "m ready on peer-1", |h| {
        h.iter().any(|h| h.hive_id == "peer-1" && ready_on(h, "m"))
    })
    .await;
    assert_eq!(std::fs::read(dirs[1].path().join("m/w.bin")).unwrap(), data);
    let from_origin = server.bytes_sent() - before;
    assert_eq!(from_origin, 0, "the origin served bytes a peer held");

    // Another hash than the holder's: no peers.
    let other = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(url_fetch("m", &url, Some("0".repeat(64)))),
            hive: "peer-2".into(),
            no_peers: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(other.peers.is_empty(), "a holder of other bytes is never offered: {:?}", other.peers);

    // no_peers: the origin only.
    let r = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(url_fetch("n", &url, Some(sha.clone()))),
            hive: "peer-1".into(),
            no_peers: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.peers.is_empty());

    // `queen models` counts the hives holding each model ready (text and --json).
    let q = queen.url();
    let (ok, out, err) = queen_cli(args(&["models", "--queen", &q])).await;
    assert!(ok, "{err}");
    assert!(out.contains("READY ON"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("m ") && l.trim_end().ends_with("2 hives")), "{out}");
    let (ok, out, err) = queen_cli(args(&["models", "--json", "--queen", &q])).await;
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let m = rows.as_array().unwrap().iter().find(|r| r["model"]["id"] == "m").unwrap();
    assert_eq!(m["readyOn"], 2, "{m}");
    assert!(m["hiveId"].is_string() && m["model"]["state"].is_string(), "old fields kept: {m}");

    queen.stop().await;
    for h in hives {
        h.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_fan_out_chains_each_hive_on_the_ones_before_it_and_the_cli_follows_them_all() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let server = FileServer::start().await;
    let data = generated(SIZE, 32);
    let sha = sha256_hex(&data);
    let url = server.add("w.bin", data.clone());
    server.throttle(16 << 20);
    let (hives, queen, mut fleet) = fleet_of_three(&dirs).await;
    let mut scheduler = SchedulerClient::connect(queen.url()).await.unwrap();

    // `all` needs labels.
    let e = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(url_fetch("f", &url, Some(sha.clone()))),
            hive: "peer-0".into(),
            all: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    let r = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(url_fetch("f", &url, Some(sha.clone()))),
            labels: zone(),
            all: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 3, "{r:?}");
    let ids: Vec<&str> = r.results.iter().map(|x| x.hive_id.as_str()).collect();
    assert_eq!(r.hive_id, ids[0]);
    assert!(r.results[0].peers.is_empty(), "the first reads from the origin");
    assert_eq!(r.results[1].peers, [ids[0]]);
    assert_eq!(r.results[2].peers, [ids[1], ids[0]]);
    assert!(r.results.iter().all(|x| x.result.is_some() && x.error.is_none() && !x.deferred), "{r:?}");
    wait_for(&mut fleet, "f ready on all three", |h| h.iter().filter(|h| ready_on(h, "f")).count() == 3)
        .await;
    for dir in &dirs {
        assert_eq!(std::fs::read(dir.path().join("f/w.bin")).unwrap(), data);
    }
    let served = server.bytes_sent();
    assert!(served <= SIZE as u64 * 11 / 10, "the origin served {served} bytes for a {SIZE}-byte model");

    // The CLI: one bar per hive, exit 0 when all are ready (here all already are).
    let q = queen.url();
    let (ok, out, err) = queen_cli(args(&[
        "fetch",
        "f",
        "--from",
        &url,
        "--sha256",
        &sha,
        "--label",
        "zone=test",
        "--all",
        "--quiet",
        "--queen",
        &q,
    ]))
    .await;
    assert!(ok, "{out} {err}");
    for id in ["peer-0", "peer-1", "peer-2"] {
        assert!(out.contains(&format!("f is ready on {id}")), "{out}");
    }

    // Without the hashes the others wait for the first: deferred, then all ready.
    let (ok, out, err) = queen_cli(args(&[
        "fetch",
        "g",
        "--from",
        &url,
        "--label",
        "zone=test",
        "--all",
        "--quiet",
        "--queen",
        &q,
    ]))
    .await;
    assert!(ok, "{out} {err}");
    assert!(err.contains("starts once the first hive has the files"), "{err}");
    for id in ["peer-0", "peer-1", "peer-2"] {
        assert!(out.contains(&format!("g is ready on {id}")), "{out}");
    }
    // Where the bytes came from: the first from the origin, the others from peers.
    assert_eq!(out.lines().filter(|l| l.contains("from origin")).count(), 1, "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("from peer-")).count(), 2, "{out}");
    // `--all` without `--label` is a usage error.
    let (ok, _, err) =
        queen_cli(args(&["fetch", "g", "--from", &url, "--hive", "peer-0", "--all", "--queen", &q])).await;
    assert!(!ok && err.contains("--label"), "{err}");

    queen.stop().await;
    for h in hives {
        h.stop().await.unwrap();
    }
}

/// Polls the fleet until `n` hives hold `model` ready; how long that took.
async fn until_ready_on(fleet: &mut Fleet, model: &str, n: usize) -> std::time::Duration {
    let start = std::time::Instant::now();
    let deadline = start + std::time::Duration::from_secs(900);
    loop {
        let hives = fleet.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives;
        if hives.iter().filter(|h| ready_on(h, model)).count() >= n {
            return start.elapsed();
        }
        assert!(std::time::Instant::now() < deadline, "{model} not ready on {n} hives in time");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The fan-out benchmark (docs/BENCHMARKS.md, "Weights from peers: fan-out"): one
/// hive's fetch from the counting origin, then a fan-out of another model (same size)
/// to all hives; the origin's bytes and the wall times. `RBEE_BENCH_MIB` (default 256),
/// `RBEE_BENCH_HIVES` (default 4).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: cargo test --release -p rbee-queen --test peers fan_out_bench -- --ignored --nocapture"]
async fn fan_out_bench() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let size = env("RBEE_BENCH_MIB", 256) << 20;
    let n = env("RBEE_BENCH_HIVES", 4);
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let server = FileServer::start().await;
    let (one, fan) = (generated(size, 41), generated(size, 42));
    let (one_sha, fan_sha) = (sha256_hex(&one), sha256_hex(&fan));
    let one_url = server.add("one.bin", one);
    let fan_url = server.add("fan.bin", fan);
    let (hives, queen, mut fleet) = fleet_of(&dirs).await;
    let mut scheduler = SchedulerClient::connect(queen.url()).await.unwrap();

    let r = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(sized_fetch("one", &one_url, size as u64, Some(one_sha))),
            hive: "peer-0".into(),
            no_peers: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.result.is_some());
    let single = until_ready_on(&mut fleet, "one", 1).await;
    let single_bytes = server.bytes_sent();

    let r = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(sized_fetch("fan", &fan_url, size as u64, Some(fan_sha))),
            labels: zone(),
            all: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), n);
    let fanned = until_ready_on(&mut fleet, "fan", n).await;
    let fan_bytes = server.bytes_sent() - single_bytes;
    println!(
        "fan-out bench: {} MiB model, {n} hives: one hive {:.2} s (origin {:.2}x); fan-out {:.2} s ({:.2}x one hive), origin served {:.3}x the size",
        size >> 20,
        single.as_secs_f64(),
        single_bytes as f64 / size as f64,
        fanned.as_secs_f64(),
        fanned.as_secs_f64() / single.as_secs_f64(),
        fan_bytes as f64 / size as f64,
    );
    queen.stop().await;
    for h in hives {
        h.stop().await.unwrap();
    }
}

/// Asks `hive` to fetch `model` from `url` with no declared hash.
async fn unhashed_fetch(
    scheduler: &mut SchedulerClient<tonic::transport::Channel>,
    model: &str,
    url: &str,
    hive: &str,
    no_peers: bool,
) -> pb::ScheduleFetchResponse {
    let mut fetch = url_fetch(model, url, None);
    if let Some(pb::fetch_model_request::Source::Urls(u)) = &mut fetch.source {
        u.files[0].path = Some("w.bin".into());
    }
    scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(fetch),
            hive: hive.into(),
            no_peers,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn holders_that_disagree_on_the_content_are_never_offered_without_a_hash_and_models_shows_it() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let server = FileServer::start().await;
    let (right, wrong) = (generated(SIZE, 41), generated(SIZE, 42));
    let right_url = server.add("right.bin", right.clone());
    let wrong_url = server.add("wrong.bin", wrong);
    let (hives, queen, mut fleet) = fleet_of(&dirs).await;
    let mut scheduler = SchedulerClient::connect(queen.url()).await.unwrap();
    // peer-0 holds another content of "c" than peer-1 and peer-2 (as a corrupted copy
    // would), nothing declares the hash.
    unhashed_fetch(&mut scheduler, "c", &wrong_url, "peer-0", true).await;
    unhashed_fetch(&mut scheduler, "c", &right_url, "peer-1", true).await;
    unhashed_fetch(&mut scheduler, "c", &right_url, "peer-2", true).await;
    wait_for(&mut fleet, "c ready on three", |h| h.iter().filter(|h| ready_on(h, "c")).count() == 3).await;

    // Without a hash: no peer at all (old code handed the best-ranked holder), and why.
    let r = unhashed_fetch(&mut scheduler, "c", &right_url, "peer-3", false).await;
    assert!(r.peers.is_empty(), "holders that disagree are never offered: {:?}", r.peers);
    let note = r.peers_note.expect("the response says why");
    assert!(note.contains("2 different contents"), "{note}");
    wait_for(&mut fleet, "c ready on peer-3", |h| {
        h.iter().any(|h| h.hive_id == "peer-3" && ready_on(h, "c"))
    })
    .await;
    assert_eq!(std::fs::read(dirs[3].path().join("c/w.bin")).unwrap(), right);

    // `queen models` shows the disagreement (text and --json, old fields kept).
    let q = queen.url();
    let (ok, out, err) = queen_cli(args(&["models", "--queen", &q])).await;
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with("c ") && l.trim_end().ends_with("4 hives (2 contents)")),
        "{out}"
    );
    let (ok, out, err) = queen_cli(args(&["models", "--json", "--queen", &q])).await;
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let c = rows.as_array().unwrap().iter().find(|r| r["model"]["id"] == "c").unwrap();
    assert_eq!(c["readyOn"], 4, "{c}");
    assert_eq!(c["readyContents"], serde_json::json!([3, 1]), "{c}");

    queen.stop().await;
    for h in hives {
        h.stop().await.unwrap();
    }
}

/// A URL source of `urls`, sizes declared, no hashes.
fn many_files(model: &str, urls: &[String], size: u64) -> pb::FetchModelRequest {
    pb::FetchModelRequest {
        model_id: model.into(),
        source: Some(pb::fetch_model_request::Source::Urls(pb::UrlSource {
            files: urls
                .iter()
                .map(|u| pb::FileSource { url: u.clone(), path: None, size_bytes: Some(size), sha256: None })
                .collect(),
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_512_file_fetch_passes_the_queen_and_the_hive_request_never_exceeds_what_a_hive_accepts() {
    use prost::Message as _;
    use rbee_queen::api::peers::HIVE_FETCH_REQUEST_LIMIT_BYTES as LIMIT;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let server = FileServer::start().await;
    let urls: Vec<String> =
        (0..512).map(|i| server.add(&format!("shard-{i:04}-of-0512.bin"), generated(16, i))).collect();
    let (hives, queen, mut fleet) = fleet_of(&dirs).await;
    let mut scheduler = SchedulerClient::connect(queen.url()).await.unwrap();

    // A holder of all 512 files.
    let fetch = many_files("many", &urls, 16);
    let r = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(fetch.clone()),
            hive: "peer-0".into(),
            no_peers: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.result.is_some(), "{r:?}");
    wait_for(&mut fleet, "many ready on peer-0", |h| {
        h.iter().any(|h| h.hive_id == "peer-0" && ready_on(h, "many"))
    })
    .await;

    // The next hive's request with the holder's file list (peer_files) would be about
    // twice as large: the queen hands the peers only where a hive accepts the request
    // (old code sent it and the hive refused it for its size).
    let r = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(fetch.clone()),
            hive: "peer-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.result.is_some(), "{r:?}");
    let mut with_peers = fetch.clone();
    with_peers.peers =
        vec![pb::PeerSource { address: hives[0].url(), hive_id: "peer-0".into(), partial: false }];
    with_peers.peer_files = (0..512)
        .map(|i| pb::ModelFile {
            path: format!("shard-{i:04}-of-0512.bin"),
            size_bytes: 16,
            sha256: Some("0".repeat(64)),
        })
        .collect();
    if with_peers.encoded_len() > LIMIT {
        assert!(r.peers.is_empty(), "{:?}", r.peers);
        let note = r.peers_note.expect("why no peers");
        assert!(note.contains("more than a hive accepts"), "{note}");
    } else {
        assert_eq!(r.peers, ["peer-0"]);
    }
    wait_for(&mut fleet, "many ready on peer-1", |h| {
        h.iter().any(|h| h.hive_id == "peer-1" && ready_on(h, "many"))
    })
    .await;

    // 512 files with long URLs: over the usual 64 KiB, within the queen's own limit
    // for Scheduler (old code: the decoder refused it). A hive that would not accept
    // it gets nothing: INVALID_ARGUMENT naming the size.
    let long: Vec<String> = urls.iter().map(|u| format!("{u}?{}", "p".repeat(200))).collect();
    let big = many_files("big", &long, 16);
    assert!(big.encoded_len() > 64 * 1024);
    let gets = server.gets();
    let r = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(big.clone()),
            hive: "peer-1".into(),
            ..Default::default()
        })
        .await;
    if big.encoded_len() > LIMIT {
        let e = r.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("more than a hive accepts"), "{}", e.message());
        assert_eq!(server.gets(), gets, "nothing started");
    } else {
        assert!(r.unwrap().into_inner().result.is_some());
    }
    // Far past the queen's own limit (about 5 MB): RESOURCE_EXHAUSTED, and it keeps serving.
    let huge: Vec<String> =
        (0..600).map(|i| format!("http://127.0.0.1:9/{i}?{}", "p".repeat(8000))).collect();
    let e = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(many_files("huge", &huge, 16)),
            hive: "peer-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(fleet.list_hives(pb::ListHivesRequest::default()).await.is_ok());

    queen.stop().await;
    for h in hives {
        h.stop().await.unwrap();
    }
}

/// `queen serve` on `listen` over `hives`, its state in `state`.
fn serve(listen: &str, hives: &[TestHive], state: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_queen"));
    cmd.args(["serve", "--listen", listen, "--sample-interval", "200ms", "--state-dir"]).arg(state);
    for h in hives {
        cmd.args(["--hive", &h.url()]);
    }
    cmd.env("RUST_LOG", "info")
        .env_remove("QUEEN_CONFIG")
        .env_remove("QUEEN_STATE_DIR")
        .env_remove("QUEEN_RESET_STATE")
        .env_remove("QUEEN_TOKEN")
        .stdout(std::process::Stdio::null());
    cmd
}

#[tokio::test]
async fn a_fan_out_whose_queen_is_killed_says_what_started_and_the_same_command_resumes_it() {
    use common::process::QueenProcess;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let state = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let data = generated(SIZE, 51);
    let url = server.add("w.bin", data.clone());
    // About 4 s for the first hive: the queen dies while the others wait for it.
    server.throttle(2 << 20);
    let mut hives = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        hives.push(TestHive::start_with(models_config(&format!("peer-{i}"), dir.path(), None)).await);
    }
    let mut queen = QueenProcess::start(serve("127.0.0.1:0", &hives, state.path()));
    let mut fleet = queen.fleet().await;
    wait_for(&mut fleet, "every hive online", |h| h.iter().filter(|h| online(h)).count() == 3).await;

    // No sha256: the others are held back until the first is ready.
    let q = queen.url.clone();
    let argv =
        args(&["fetch", "g", "--from", &url, "--label", "zone=test", "--all", "--quiet", "--queen", &q]);
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_queen"))
        .args(&argv)
        .env_remove("QUEEN_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let downloading = |h: &pb::HiveView| {
        h.latest_sample
            .as_ref()
            .is_some_and(|s| s.downloads.iter().any(|d| d.model_id == "g" && d.bytes_done > 0))
    };
    let seen = wait_for(&mut fleet, "g downloading on the first hive", |h| h.iter().any(downloading)).await;
    let first = seen.iter().find(|h| downloading(h)).unwrap().hive_id.clone();
    queen.kill_9();
    let out = tokio::task::spawn_blocking(move || cli.wait_with_output()).await.unwrap().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    // Old code: a raw transport error and nothing else.
    assert!(err.contains("lost the queen at"), "{err}");
    assert!(err.contains(&format!("started on: {first} (downloading)")), "{err}");
    assert!(err.contains("keep running"), "{err}");
    let others: Vec<String> = (0..3).map(|i| format!("peer-{i}")).filter(|id| *id != first).collect();
    assert!(err.contains(&format!("not started: {}", others.join(", "))), "{err}");
    let resume = err.lines().skip_while(|l| !l.starts_with("to resume")).nth(1).expect("the command").trim();
    assert_eq!(resume, format!("{} {}", env!("CARGO_BIN_EXE_queen"), argv.join(" ")), "{err}");

    // A queen on the same address again; the same command joins the running download
    // and starts the rest: all three ready, each with the origin's bytes.
    let queen = QueenProcess::start(serve(q.trim_start_matches("http://"), &hives, state.path()));
    let mut fleet = queen.fleet().await;
    wait_for(&mut fleet, "every hive online again", |h| h.iter().filter(|h| online(h)).count() == 3).await;
    let (ok, out, err) = queen_cli(argv.clone()).await;
    assert!(ok, "{out} {err}");
    assert!(err.contains(&format!("joined the download of g on {first}")), "{err}");
    for id in ["peer-0", "peer-1", "peer-2"] {
        assert!(out.contains(&format!("g is ready on {id}")), "{out}");
    }
    for dir in &dirs {
        assert_eq!(std::fs::read(dir.path().join("g/w.bin")).unwrap(), data);
    }
    for h in hives {
        h.stop().await.unwrap();
    }
}
