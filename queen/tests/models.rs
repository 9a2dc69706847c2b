//! Models through the queen: Scheduler.FetchModel forwarded to a chosen hive, the
//! Fleet API showing models and downloads, and the `queen fetch` binary following the
//! download on the fleet stream, its exit code matching the outcome.

mod common;

use std::process::Command;

use common::cli::{args, queen_cli};
use common::{TestHive, TestQueen, online, wait_for};
use rbee_hive::test_support::http_files::{FileServer, generated, sha256_hex};
use rbee_hive::test_support::models_config;
use rbee_proto::v1 as pb;
use rbee_proto::v1::scheduler_client::SchedulerClient;

const QUEEN: &str = env!("CARGO_BIN_EXE_queen");
/// 50 MiB.
const SIZE: usize = 50 << 20;

#[tokio::test]
async fn queen_fetch_follows_the_download_and_exits_with_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let data = generated(SIZE, 21);
    let url = server.add("w.bin", data.clone());
    server.throttle(100 << 20);
    let hive = TestHive::start_with(models_config("models-q", dir.path(), None)).await;
    let queen = TestQueen::start(vec![hive.url()]).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "the hive online", |h| h.iter().any(online)).await;
    let q = queen.url();

    let sha = sha256_hex(&data);
    let (ok, out, err) = queen_cli(args(&[
        "fetch", "good", "--from", &url, "--sha256", &sha, "--hive", "models-q", "--quiet", "--queen", &q,
    ]))
    .await;
    assert!(ok, "queen fetch failed: {out} {err}");
    assert!(out.contains("good is ready on models-q"), "{out}");
    assert_eq!(std::fs::read(dir.path().join("good/w.bin")).unwrap(), data);

    // A wrong hash: non-zero exit, with the hive's reason.
    let (ok, out, err) = queen_cli(args(&[
        "fetch",
        "wrong",
        "--from",
        &url,
        "--sha256",
        &"0".repeat(64),
        "--label",
        "zone=test",
        "--quiet",
        "--queen",
        &q,
    ]))
    .await;
    assert!(!ok, "a failed download exits non-zero: {out}");
    assert!(err.contains("sha256 mismatch"), "{err}");

    // A ready model with other content than the caller names: non-zero, not "ready".
    let (ok, out, err) = queen_cli(args(&[
        "fetch",
        "good",
        "--from",
        &url,
        "--sha256",
        &"1".repeat(64),
        "--hive",
        "models-q",
        "--quiet",
        "--queen",
        &q,
    ]))
    .await;
    assert!(!ok, "another sha256 than the ready model's exits non-zero: {out}");
    assert!(err.contains("ready with other content"), "{err}");

    // The Fleet API shows the models and the downloads per hive.
    let (ok, out, err) = queen_cli(args(&["models", "--json", "--queen", &q])).await;
    assert!(ok, "{err}");
    let models: serde_json::Value = serde_json::from_str(&out).unwrap();
    let states: Vec<(String, String)> = models
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (m["model"]["id"].as_str().unwrap().to_owned(), m["model"]["state"].as_str().unwrap().to_owned())
        })
        .collect();
    assert!(states.contains(&("good".into(), "MODEL_STATE_READY".into())), "{states:?}");
    assert!(states.contains(&("wrong".into(), "MODEL_STATE_FAILED".into())), "{states:?}");
    let (ok, out, _) = queen_cli(args(&["downloads", "--queen", &q])).await;
    assert!(ok && out.contains("good") && out.contains("done") && out.contains("sha256 mismatch"), "{out}");

    // Scheduler.FetchModel: a ready model is not downloaded again; bad input is precise.
    let mut scheduler = SchedulerClient::connect(q.clone()).await.unwrap();
    let fetch = |id: &str| pb::FetchModelRequest {
        model_id: id.into(),
        source: Some(pb::fetch_model_request::Source::Urls(pb::UrlSource {
            files: vec![pb::FileSource { url: url.clone(), path: None, size_bytes: None, sha256: None }],
        })),
        ..Default::default()
    };
    let gets = server.gets();
    let r = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(fetch("good")),
            labels: [("zone".to_owned(), "test".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.hive_id, "models-q");
    assert!(r.result.unwrap().already_ready);
    assert_eq!(server.gets(), gets);
    let e = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(fetch("a b")),
            hive: "models-q".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("model_id"), "{}", e.message());
    for bad in [".partial", ".trash", "org/.hidden"] {
        let e = scheduler
            .fetch_model(pb::ScheduleFetchRequest {
                fetch: Some(fetch(bad)),
                hive: "models-q".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
    }
    let e = scheduler
        .fetch_model(pb::ScheduleFetchRequest {
            fetch: Some(fetch("x")),
            hive: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    queen.stop().await;
    hive.stop().await.unwrap();
}

/// A hive that dies mid-download: `queen fetch` does not wait forever on a hive that
/// can no longer report; it exits non-zero once the queen declares the hive lost,
/// saying so.
#[tokio::test]
async fn queen_fetch_exits_when_the_hive_is_lost_mid_download() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let data = generated(SIZE, 22);
    let url = server.add("slow.bin", data.clone());
    server.throttle(4 << 20);
    let hive = TestHive::start_with(models_config("models-lost", dir.path(), None)).await;
    let queen = TestQueen::start(vec![hive.url()]).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "the hive online", |h| h.iter().any(online)).await;

    let sha = sha256_hex(&data);
    let q = queen.url();
    let mut fetch = Command::new(QUEEN)
        .args(["fetch", "slow", "--from", &url, "--sha256", &sha, "--hive", "models-lost", "--quiet"])
        .args(["--queen", &q])
        .env_remove("QUEEN_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run queen fetch");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.bytes_sent() < 1 << 20 {
        assert!(std::time::Instant::now() < deadline, "the download did not start");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    hive.kill().await;
    // Lost after 2 s without the stream (the tests' queen settings), then the CLI exits.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = fetch.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = fetch.kill();
            panic!("queen fetch still waits on a lost hive");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let out = fetch.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "a download whose hive is lost exits non-zero: {err}");
    assert!(err.contains("models-lost") && err.contains("lost"), "the error says the hive is lost: {err}");
    queen.stop().await;
}
