//! Downloads through the queen, as an operator runs them with the `queen` binary: a
//! fetch without a declared size shows its total (so a percentage and an ETA) while it
//! runs and its size once done; `queen cancel-fetch` and `queen rm-model` stop a
//! download or delete a model on a hive with only the queen's write token; Ctrl-C on
//! `queen fetch` cancels the download (`--cancel-on-interrupt`) or prints the command
//! that does, and exits 130.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{args, queen_cli};
use common::{TestHive, TestQueen, Watch, online, wait_for};
use rbee_hive::test_support::http_files::{FileServer, generated};
use rbee_hive::test_support::models_config;
use rbee_proto::v1 as pb;
use rbee_proto::v1::scheduler_client::SchedulerClient;

const QUEEN: &str = env!("CARGO_BIN_EXE_queen");
/// 16 MiB.
const SIZE: usize = 16 << 20;
/// Longest a test waits for anything.
const WAIT: Duration = Duration::from_secs(30);

/// Starts `queen fetch MODEL --from URL --hive HIVE --quiet EXTRA...` in the background.
fn spawn_fetch(q: &str, model: &str, url: &str, hive: &str, extra: &[&str]) -> Child {
    Command::new(QUEEN)
        .args(["fetch", model, "--from", url, "--hive", hive, "--quiet", "--queen", q])
        .args(extra)
        .env_remove("QUEEN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run queen fetch")
}

/// Waits for `child` to exit: its exit code, stdout and stderr.
async fn exited(mut child: Child) -> (Option<i32>, String, String) {
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("queen fetch did not exit in time");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A watch with 100 ms samples.
async fn watch(queen: &TestQueen) -> Watch {
    let mut fleet = queen.client().await;
    Watch(
        fleet
            .watch_fleet(pb::WatchFleetRequest { sample_interval_ms: Some(100), ..Default::default() })
            .await
            .unwrap()
            .into_inner(),
    )
}

/// The download record of `model` on `hive` an event carries, if any.
fn download(e: &pb::fleet_event::Event, hive: &str, model: &str) -> Option<pb::DownloadProgress> {
    let sample = match e {
        pb::fleet_event::Event::Sample(s) if s.hive_id == hive => s.sample.as_ref()?,
        pb::fleet_event::Event::Snapshot(s) => {
            s.hives.iter().find(|h| h.hive_id == hive)?.latest_sample.as_ref()?
        }
        _ => return None,
    };
    sample.downloads.iter().find(|d| d.model_id == model).cloned()
}

/// Waits until the download of `model` on `hive` is in `phase` (with bytes, for
/// DOWNLOADING); returns its record.
async fn until_phase(
    w: &mut Watch,
    hive: &str,
    model: &str,
    phase: pb::DownloadPhase,
) -> pb::DownloadProgress {
    w.until_within(WAIT, |e| {
        download(e, hive, model)
            .filter(|d| d.phase() == phase && (phase != pb::DownloadPhase::Downloading || d.bytes_done > 0))
    })
    .await
    .0
}

/// Sends SIGINT to `child`, as Ctrl-C does.
fn interrupt(child: &Child) {
    let ok = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -INT");
}

/// A hive with models under `dir`, a queen managing it, the hive online.
async fn fleet(id: &str, dir: &std::path::Path) -> (TestHive, TestQueen) {
    let hive = TestHive::start_with(models_config(id, dir, None)).await;
    let queen = TestQueen::start(vec![hive.url()]).await;
    let mut client = queen.client().await;
    wait_for(&mut client, "the hive online", |h| h.iter().any(online)).await;
    (hive, queen)
}

/// No `--size`: the hive takes the total from the server's Content-Length, so the
/// progress records carry it while downloading (a percentage and an ETA), and `queen
/// downloads` shows the model's size once done instead of `?`.
#[tokio::test]
async fn a_fetch_without_a_size_shows_its_total_while_running_and_once_done() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let url = server.add("w.bin", generated(SIZE, 31));
    server.throttle(2 << 20);
    let (hive, queen) = fleet("dl-total", dir.path()).await;
    let q = queen.url();
    let mut w = watch(&queen).await;

    let fetch = spawn_fetch(&q, "sizeless", &url, "dl-total", &[]);
    let d = until_phase(&mut w, "dl-total", "sizeless", pb::DownloadPhase::Downloading).await;
    assert_eq!(d.bytes_total, Some(SIZE as u64), "the running download has its total: {d:?}");
    let d =
        w.until_within(WAIT, |e| download(e, "dl-total", "sizeless").filter(|d| d.eta_ms.is_some())).await.0;
    assert_eq!(d.phase(), pb::DownloadPhase::Downloading, "{d:?}");
    let (ok, out, _) = queen_cli(args(&["downloads", "--queen", &q])).await;
    assert!(ok, "{out}");
    let line = out.lines().find(|l| l.contains("sizeless")).unwrap_or_default().to_owned();
    assert!(line.contains("/16.0 MiB") && line.contains('%') && line.contains("ETA"), "{out}");

    server.throttle(0);
    let (code, out, err) = exited(fetch).await;
    assert_eq!(code, Some(0), "{out} {err}");
    let (ok, out, err) = queen_cli(args(&["downloads", "--json", "--queen", &q])).await;
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["download"]["modelId"] == "sizeless")
        .unwrap_or_else(|| panic!("no download row: {out}"))
        .clone();
    assert_eq!(row["download"]["phase"], "DOWNLOAD_PHASE_DONE", "{row}");
    assert_eq!(row["download"]["bytesTotal"], SIZE.to_string(), "{row}");
    let (_, out, _) = queen_cli(args(&["downloads", "--queen", &q])).await;
    assert!(!out.contains("/?"), "a finished download shows its size: {out}");
    assert!(out.contains("16.0 MiB/16.0 MiB 100%"), "{out}");
    queen.stop().await;
    hive.stop().await.unwrap();
}

/// A server that sends no length: the total is unknown while the download runs, but
/// the final record (and `queen downloads`) carries the model's size.
#[tokio::test]
async fn a_download_without_any_length_shows_its_size_once_done() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let url = server.add("u.bin", generated(1 << 20, 35));
    server.files_unsized(true);
    let (hive, queen) = fleet("dl-unsized", dir.path()).await;
    let q = queen.url();
    let (ok, out, err) = queen_cli(args(&[
        "fetch",
        "unsized",
        "--from",
        &url,
        "--hive",
        "dl-unsized",
        "--quiet",
        "--queen",
        &q,
    ]))
    .await;
    assert!(ok, "{out} {err}");
    let mut client = queen.client().await;
    let hives = wait_for(&mut client, "the final record", |h| {
        h.iter().filter_map(|h| h.latest_sample.as_ref()).any(|s| {
            s.downloads.iter().any(|d| d.model_id == "unsized" && d.phase() == pb::DownloadPhase::Done)
        })
    })
    .await;
    let d = hives
        .iter()
        .filter_map(|h| h.latest_sample.as_ref())
        .flat_map(|s| s.downloads.iter())
        .find(|d| d.model_id == "unsized")
        .unwrap()
        .clone();
    assert_eq!((d.bytes_done, d.bytes_total), (1 << 20, Some(1 << 20)), "{d:?}");
    let (_, out, _) = queen_cli(args(&["downloads", "--queen", &q])).await;
    assert!(out.contains("1.0 MiB/1.0 MiB 100%"), "{out}");
    queen.stop().await;
    hive.stop().await.unwrap();
}

/// `queen cancel-fetch` stops a slow download on the hive (by hive, then by label),
/// which removes its partial files; `queen rm-model` deletes a ready model and its
/// files. Nothing to act on is a clear error.
#[tokio::test]
async fn cancel_fetch_and_rm_model_act_on_the_hive_through_the_queen() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let slow = server.add("slow.bin", generated(SIZE, 32));
    let small = server.add("small.bin", generated(1 << 20, 33));
    server.throttle(1 << 20);
    let (hive, queen) = fleet("dl-cancel", dir.path()).await;
    let q = queen.url();
    let mut w = watch(&queen).await;

    // By hive.
    let fetch = spawn_fetch(&q, "slow", &slow, "dl-cancel", &[]);
    until_phase(&mut w, "dl-cancel", "slow", pb::DownloadPhase::Downloading).await;
    let (ok, out, err) =
        queen_cli(args(&["cancel-fetch", "slow", "--hive", "dl-cancel", "--queen", &q])).await;
    assert!(ok, "{out} {err}");
    assert!(out.contains("dl-cancel: slow download cancelled"), "{out}");
    until_phase(&mut w, "dl-cancel", "slow", pb::DownloadPhase::Cancelled).await;
    let (code, _, err) = exited(fetch).await;
    assert_ne!(code, Some(0), "the followed download was cancelled: {err}");
    assert!(err.contains("cancelled"), "{err}");
    assert!(!dir.path().join(".partial/slow").exists(), "the partial files are removed");

    // By label: only hives that download the model.
    let fetch = spawn_fetch(&q, "slow2", &slow, "dl-cancel", &[]);
    until_phase(&mut w, "dl-cancel", "slow2", pb::DownloadPhase::Downloading).await;
    let (ok, out, err) =
        queen_cli(args(&["cancel-fetch", "slow2", "--label", "zone=test", "--json", "--queen", &q])).await;
    assert!(ok, "{out} {err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["results"][0]["hiveId"], "dl-cancel", "{answer}");
    until_phase(&mut w, "dl-cancel", "slow2", pb::DownloadPhase::Cancelled).await;
    exited(fetch).await;

    // Nothing downloads it: a clear error, by label and by hive.
    let (ok, _, err) =
        queen_cli(args(&["cancel-fetch", "slow2", "--label", "zone=test", "--queen", &q])).await;
    assert!(!ok && err.contains("no online hive matching"), "{err}");
    let (ok, _, err) =
        queen_cli(args(&["cancel-fetch", "slow2", "--hive", "dl-cancel", "--queen", &q])).await;
    assert!(!ok && err.contains("no download of slow2"), "{err}");

    // A ready model is deleted with its files.
    server.throttle(0);
    let (ok, out, err) = queen_cli(args(&[
        "fetch",
        "small",
        "--from",
        &small,
        "--hive",
        "dl-cancel",
        "--quiet",
        "--queen",
        &q,
    ]))
    .await;
    assert!(ok, "{out} {err}");
    assert!(dir.path().join("small/small.bin").exists());
    let mut client = queen.client().await;
    let has = |model: &'static str| {
        move |h: &[pb::HiveView]| {
            h.iter().any(|h| h.capabilities.as_ref().is_some_and(|c| c.models.iter().any(|m| m.id == model)))
        }
    };
    wait_for(&mut client, "small in the catalog", has("small")).await;
    let (ok, out, err) = queen_cli(args(&["rm-model", "small", "--label", "zone=test", "--queen", &q])).await;
    assert!(ok, "{out} {err}");
    assert!(out.contains("dl-cancel: small deleted"), "{out}");
    assert!(!dir.path().join("small").exists(), "the model's files are gone");
    wait_for(&mut client, "small gone from the catalog", |h| !has("small")(h)).await;
    let (ok, _, err) = queen_cli(args(&["rm-model", "small", "--hive", "dl-cancel", "--queen", &q])).await;
    assert!(!ok && err.contains("not in the catalog"), "{err}");
    let (ok, _, err) = queen_cli(args(&["rm-model", "small", "--label", "zone=test", "--queen", &q])).await;
    assert!(!ok && err.contains("no online hive matching"), "{err}");

    // Bad input is refused with the field.
    let mut scheduler = SchedulerClient::connect(q.clone()).await.unwrap();
    let e = scheduler
        .delete_model(pb::ScheduleModelRequest {
            model_id: "a b".into(),
            hive: "dl-cancel".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("model_id"), "{}", e.message());
    let e = scheduler
        .cancel_fetch(pb::ScheduleModelRequest {
            model_id: "m".into(),
            hive: "h".repeat(4096),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = scheduler
        .cancel_fetch(pb::ScheduleModelRequest { model_id: "m".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    queen.stop().await;
    hive.stop().await.unwrap();
}

/// CancelFetch and DeleteModel are writes: a read token is refused.
#[tokio::test]
async fn cancel_fetch_and_delete_model_need_the_write_token() {
    const READ: &str = "read-token-aaaaaaaaaaaaaaaa";
    const WRITE: &str = "write-token-bbbbbbbbbbbbbbbb";
    let dir = tempfile::tempdir().unwrap();
    let hive = TestHive::start_with(models_config("dl-auth", dir.path(), None)).await;
    let config = rbee_queen::QueenConfig {
        tokens: rbee_queen::api::auth::Tokens::new(Some(READ), Some(WRITE)),
        ..common::fast_config(vec![hive.url()])
    };
    let queen = TestQueen::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    // The hive must be in the fleet first (else the answer is "no hive dl-auth").
    let mut fleet = rbee_proto::v1::fleet_client::FleetClient::connect(queen.url()).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut r = tonic::Request::new(pb::ListHivesRequest::default());
        rbee_shared::bearer::authorize(&mut r, READ).unwrap();
        if fleet.list_hives(r).await.unwrap().into_inner().hives.iter().any(online) {
            break;
        }
        assert!(Instant::now() < deadline, "the hive is not online after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut scheduler = SchedulerClient::connect(queen.url()).await.unwrap();
    let with = |token: &str| {
        let mut r = tonic::Request::new(pb::ScheduleModelRequest {
            model_id: "m".into(),
            hive: "dl-auth".into(),
            ..Default::default()
        });
        rbee_shared::bearer::authorize(&mut r, token).unwrap();
        r
    };
    for delete in [false, true] {
        let e = if delete {
            scheduler.delete_model(with(READ)).await.unwrap_err()
        } else {
            scheduler.cancel_fetch(with(READ)).await.unwrap_err()
        };
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "delete={delete}: {e:?}");
        let answer = if delete {
            scheduler.delete_model(with(WRITE)).await
        } else {
            scheduler.cancel_fetch(with(WRITE)).await
        };
        // Past the token: the hive answers (it has nothing to cancel or delete).
        let answer = answer.unwrap_or_else(|e| panic!("delete={delete}: the write token passes: {e:?}"));
        let error = answer.into_inner().results[0].error.clone().unwrap_or_default();
        assert!(error.contains("dl-auth"), "{error}");
    }
    queen.stop().await;
    hive.stop().await.unwrap();
}

/// Ctrl-C on `queen fetch --cancel-on-interrupt` cancels the download on the hive and
/// exits 130; without the flag the download goes on, and the printed command cancels it.
#[tokio::test]
async fn ctrl_c_on_queen_fetch_cancels_or_says_how() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let slow = server.add("slow.bin", generated(SIZE, 34));
    server.throttle(1 << 20);
    let (hive, queen) = fleet("dl-int", dir.path()).await;
    let q = queen.url();
    let mut w = watch(&queen).await;

    let fetch = spawn_fetch(&q, "ctrl-c", &slow, "dl-int", &["--cancel-on-interrupt"]);
    until_phase(&mut w, "dl-int", "ctrl-c", pb::DownloadPhase::Downloading).await;
    interrupt(&fetch);
    let (code, _, err) = exited(fetch).await;
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("cancelled the download of ctrl-c on dl-int"), "{err}");
    until_phase(&mut w, "dl-int", "ctrl-c", pb::DownloadPhase::Cancelled).await;

    // Without the flag: the download goes on, and the printed command cancels it.
    let fetch = spawn_fetch(&q, "goes-on", &slow, "dl-int", &[]);
    until_phase(&mut w, "dl-int", "goes-on", pb::DownloadPhase::Downloading).await;
    interrupt(&fetch);
    let (code, _, err) = exited(fetch).await;
    assert_eq!(code, Some(130), "{err}");
    let command = err.split("To cancel it: ").nth(1).unwrap_or_else(|| panic!("no command: {err}")).trim();
    assert_eq!(command, format!("queen cancel-fetch goes-on --hive dl-int --queen {q}"));
    let sent = server.bytes_sent();
    let d = w
        .until_within(WAIT, |e| download(e, "dl-int", "goes-on").filter(|_| server.bytes_sent() > sent))
        .await
        .0;
    assert_eq!(d.phase(), pb::DownloadPhase::Downloading, "the download goes on: {d:?}");
    let words: Vec<String> = command.split_whitespace().skip(1).map(str::to_owned).collect();
    let (ok, out, err) = queen_cli(words).await;
    assert!(ok, "the printed command works: {out} {err}");
    until_phase(&mut w, "dl-int", "goes-on", pb::DownloadPhase::Cancelled).await;
    queen.stop().await;
    hive.stop().await.unwrap();
}

/// On a terminal, Ctrl-C on `queen fetch` asks whether to cancel; "y" cancels the
/// download on the hive (the terminal is a pty that `script` makes; Ctrl-C is the ^C
/// byte the pty turns into SIGINT).
#[tokio::test]
async fn ctrl_c_on_a_terminal_asks_and_y_cancels() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let slow = server.add("slow.bin", generated(SIZE, 36));
    server.throttle(1 << 20);
    let (hive, queen) = fleet("dl-tty", dir.path()).await;
    let q = queen.url();
    let mut w = watch(&queen).await;

    let line = format!("'{QUEEN}' fetch asked --from {slow} --hive dl-tty --quiet --queen {q}");
    let mut child = Command::new("script")
        .args(["-qefc", &line, "/dev/null"])
        .env_remove("QUEEN_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run script");
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let s = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            s.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    until_phase(&mut w, "dl-tty", "asked", pb::DownloadPhase::Downloading).await;
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + WAIT;
    while !screen.lock().unwrap().contains("[y/N]") {
        assert!(Instant::now() < deadline, "no question: {}", screen.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        screen.lock().unwrap().contains("Cancel the download of asked on dl-tty?"),
        "{}",
        screen.lock().unwrap()
    );
    stdin.write_all(b"y\n").unwrap();
    stdin.flush().unwrap();
    until_phase(&mut w, "dl-tty", "asked", pb::DownloadPhase::Cancelled).await;
    let (code, _, _) = exited(child).await;
    assert_eq!(code, Some(130), "{}", screen.lock().unwrap());
    assert!(
        screen.lock().unwrap().contains("cancelled the download of asked on dl-tty"),
        "{}",
        screen.lock().unwrap()
    );
    queen.stop().await;
    hive.stop().await.unwrap();
}

/// On a mutual-TLS fleet only the queen's client certificate reaches a hive: an
/// operator with the queen's CA and write token fetches, cancels and deletes through
/// the queen, while the hive refuses the operator's own direct call.
#[tokio::test]
async fn through_the_queen_an_operator_needs_no_hive_certificate() {
    use rbee_proto::v1::hive_client::HiveClient;
    use rbee_queen::link::HiveTls;
    use tonic::transport::Endpoint;
    const READ: &str = "read-token-aaaaaaaaaaaaaaaa";
    const WRITE: &str = "write-token-bbbbbbbbbbbbbbbb";
    let pki = tempfile::tempdir().unwrap();
    let pki = pki.path();
    rbee_shared::certs::generate(pki, &["localhost".into()], &["localhost".into()]).unwrap();
    let models = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let small = server.add("small.bin", generated(1 << 20, 37));
    let slow = server.add("slow.bin", generated(SIZE, 38));

    let mut config = models_config("localhost", models.path(), None);
    config.tls = Some(
        rbee_shared::tls::server_config(
            &pki.join("hive-localhost.pem"),
            &pki.join("hive-localhost.key"),
            Some(&pki.join("queen-ca.pem")),
        )
        .unwrap(),
    );
    let hive = TestHive::start_with(config).await;
    let hive_url = format!("https://localhost:{}", hive.addr.port());
    let mut link = common::fast_link();
    link.hive_tls = Some(
        HiveTls::from_pem_files(
            &pki.join("hive-ca.pem"),
            Some((&pki.join("queen.pem"), &pki.join("queen.key"))),
        )
        .unwrap(),
    );
    let config = rbee_queen::QueenConfig {
        tls: Some(
            rbee_shared::tls::server_config(&pki.join("queen.pem"), &pki.join("queen.key"), None).unwrap(),
        ),
        tokens: rbee_queen::api::auth::Tokens::new(Some(READ), Some(WRITE)),
        link,
        ..common::fast_config(vec![hive_url.clone()])
    };
    let queen = TestQueen::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let q = format!("https://localhost:{}", queen.addr.port());
    let token = pki.join("write.token");
    std::fs::write(&token, WRITE).unwrap();
    let ca = pki.join("queen-ca.pem").display().to_string();
    let token = token.display().to_string();
    let tls = |list: &[&str]| {
        let mut v = args(list);
        v.extend(args(&["--queen", &q, "--ca", &ca, "--token-file", &token]));
        v
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, out, _) = queen_cli(tls(&["hives", "--json"])).await;
        if out.contains("HIVE_STATE_ONLINE") {
            break;
        }
        assert!(Instant::now() < deadline, "the TLS hive never came online: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The operator's own call to the hive, without a client certificate, is refused.
    let direct = Endpoint::from_shared(hive_url.clone())
        .unwrap()
        .tls_config(rbee_shared::tls::client_config(&pki.join("hive-ca.pem"), None).unwrap())
        .unwrap()
        .connect()
        .await;
    let refused = match direct {
        Err(_) => true,
        Ok(ch) => HiveClient::new(ch)
            .delete_model(pb::DeleteModelRequest { model_id: "small".into() })
            .await
            .is_err(),
    };
    assert!(refused, "the hive takes only the queen's certificate");

    // Through the queen: fetch, delete; a slow fetch, cancelled.
    let (ok, out, err) =
        queen_cli(tls(&["fetch", "small", "--from", &small, "--hive", "localhost", "--quiet"])).await;
    assert!(ok, "{out} {err}");
    let (ok, out, err) = queen_cli(tls(&["rm-model", "small", "--hive", "localhost"])).await;
    assert!(ok, "{out} {err}");
    assert!(!models.path().join("small").exists(), "deleted through the queen");
    server.throttle(1 << 20);
    let mut fetch = Command::new(QUEEN);
    fetch
        .args(tls(&["fetch", "slow", "--from", &slow, "--hive", "localhost", "--quiet"]))
        .env_remove("QUEEN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fetch = fetch.spawn().unwrap();
    while server.bytes_sent() < (1 << 20) + (256 << 10) {
        assert!(Instant::now() < deadline + WAIT, "the slow download did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, out, err) = queen_cli(tls(&["cancel-fetch", "slow", "--hive", "localhost"])).await;
    assert!(ok, "{out} {err}");
    let (code, _, err) = exited(fetch).await;
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("slow on localhost was cancelled"), "{err}");
    queen.stop().await;
    hive.stop().await.unwrap();
}

/// Ctrl-C while the queen has not answered yet (it accepted the connection and says
/// nothing) ends `queen fetch` at once with 130, instead of being swallowed.
#[tokio::test]
async fn ctrl_c_before_the_queen_answers_ends_queen_fetch() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let q = format!("http://{}", silent.local_addr().unwrap());
    let fetch = spawn_fetch(&q, "never", "https://example.invalid/w.bin", "h", &[]);
    // The command is reaching the queen once its connection arrives; hold it open.
    let (_held, _) = tokio::time::timeout(WAIT, silent.accept()).await.expect("no connection").unwrap();
    interrupt(&fetch);
    let (code, _, err) = exited(fetch).await;
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("interrupted before the queen answered"), "{err}");
}
