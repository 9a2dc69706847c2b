//! The queen's embedded hive (`serve --local-hive`) follows the same download rule as
//! `hive serve`: loopback and other special destinations are refused unless
//! `HIVE_DOWNLOAD_ALLOW` opens them, and a malformed rule stops the start with a clear
//! error. Real `queen` binary, real loopback file server.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::process::QueenProcess;
use rbee_hive::test_support::http_files::{FileServer, generated, sha256_hex};

const QUEEN: &str = env!("CARGO_BIN_EXE_queen");

/// A running `queen serve --local-hive --local-hive-demo`, with its state and models
/// directories.
struct Queen {
    process: QueenProcess,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// `queen serve` with a local demo hive; `allow` is `HIVE_DOWNLOAD_ALLOW`, or unset.
fn serve(allow: Option<&str>) -> Command {
    let mut cmd = Command::new(QUEEN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--local-hive", "--local-hive-demo"])
        .env("RUST_LOG", "info")
        .env_remove("QUEEN_CONFIG")
        .env_remove("HIVE_DOWNLOAD_ALLOW");
    if let Some(a) = allow {
        cmd.env("HIVE_DOWNLOAD_ALLOW", a);
    }
    cmd
}

/// Starts it with models in a temp dir.
fn start(allow: Option<&str>) -> Queen {
    let (state, models) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cmd = serve(allow);
    cmd.arg("--state-dir").arg(state.path()).env("HIVE_MODELS_DIR", models.path());
    Queen { process: QueenProcess::start(cmd), _dirs: (state, models) }
}

fn cli(args: &[&str], url: &str) -> Output {
    Command::new(QUEEN).args(args).args(["--queen", url]).env_remove("QUEEN_TOKEN").output().unwrap()
}

/// The local hive's id, once it is online.
fn local_hive_id(url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cli(&["hives", "--json"], url);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(h) = v["hives"].as_array().and_then(|hs| hs.first())
            && h["state"] == "HIVE_STATE_ONLINE"
        {
            return h["hiveId"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the local hive never came online: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `queen fetch` of one generated file from `url`; its output.
async fn fetch(queen: &Queen, model: &str, url: &str, sha: &str) -> Output {
    let q = queen.process.url.clone();
    let (model, url, sha) = (model.to_owned(), url.to_owned(), sha.to_owned());
    tokio::task::spawn_blocking(move || {
        let hive = local_hive_id(&q);
        cli(&["fetch", &model, "--from", &url, "--sha256", &sha, "--hive", &hive, "--quiet"], &q)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_local_hive_refuses_loopback_unless_hive_download_allow_opens_it() {
    let server = FileServer::start().await;
    let data = generated(1 << 20, 7);
    let url = server.add("w.bin", data.clone());
    let sha = sha256_hex(&data);

    let closed = start(None);
    let out = fetch(&closed, "m", &url, &sha).await;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "a loopback download succeeded without HIVE_DOWNLOAD_ALLOW: {text}");
    assert!(text.contains("destination not allowed"), "{text}");
    drop(closed);

    let open = start(Some("127.0.0.1"));
    let out = fetch(&open, "m", &url, &sha).await;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "HIVE_DOWNLOAD_ALLOW=127.0.0.1 did not open loopback: {text}");
}

#[test]
fn a_malformed_hive_download_allow_stops_the_start_and_says_why() {
    let state = tempfile::tempdir().unwrap();
    let out = serve(Some("10.0.0.0/99")).arg("--state-dir").arg(state.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the queen started with a malformed rule: {err}");
    assert!(err.contains("HIVE_DOWNLOAD_ALLOW") && err.contains("10.0.0.0/99"), "{err}");
}
