//! Models with the built `hive` binary: a download survives a SIGKILL of the hive and
//! resumes after the restart, and grpcurl sees the progress on MetricsStream.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rbee_hive::test_support::http_files::{FileServer, generated, sha256_hex};
use rbee_hive::test_support::{TestStream, download_of, external_tool, fetch_url, subscribe};
use rbee_proto::v1 as pb;
use rbee_proto::v1::hive_client::HiveClient;

/// 50 MiB.
const SIZE: usize = 50 << 20;

struct Hive {
    child: Child,
    addr: String,
}

impl Drop for Hive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_hive(models: &Path) -> Hive {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["serve", "--listen", "127.0.0.1:0", "--hive-id", "models-bin", "--demo"])
        .args(["--download-allow", "127.0.0.1"])
        .arg("--models-dir")
        .arg(models)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the hive binary");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listen=").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).expect("the hive logs its listen address");
    Hive { child, addr }
}

async fn client(hive: &Hive) -> HiveClient<tonic::transport::Channel> {
    HiveClient::connect(format!("http://{}", hive.addr)).await.expect("connect to the hive")
}

#[tokio::test]
async fn a_killed_hive_resumes_its_download_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let data = generated(SIZE, 11);
    let url = server.add("w.bin", data.clone());
    server.throttle(25 << 20);
    let mut hive = start_hive(dir.path());
    let mut c = client(&hive).await;
    let mut stream = TestStream::open(&mut c, subscribe(100)).await;
    c.fetch_model(fetch_url("resumed", &url, Some(SIZE as u64), Some(sha256_hex(&data)))).await.unwrap();
    stream.until(|m| download_of(m, "resumed").filter(|d| d.bytes_done >= (SIZE as u64) * 2 / 5)).await;
    hive.child.kill().unwrap(); // SIGKILL: no shutdown code runs.
    hive.child.wait().unwrap();
    drop(stream);
    let before = server.bytes_sent();
    assert!(dir.path().join(".partial/resumed/w.bin.part").is_file(), "the partial file survives");

    let hive = start_hive(dir.path());
    let mut c = client(&hive).await;
    let mut stream = TestStream::open(&mut c, subscribe(100)).await;
    let end = stream
        .until(|m| {
            download_of(m, "resumed").filter(|d| {
                d.phase != pb::DownloadPhase::Downloading as i32
                    && d.phase != pb::DownloadPhase::Resolving as i32
                    && d.phase != pb::DownloadPhase::Verifying as i32
            })
        })
        .await;
    assert_eq!(end.phase, pb::DownloadPhase::Done as i32, "{end:?}");
    let after = server.bytes_sent() - before;
    assert!(after < (SIZE as u64) * 7 / 10, "resumed: {after} of {SIZE} bytes sent after the restart");
    assert_eq!(std::fs::read(dir.path().join("resumed/w.bin")).unwrap(), data);
}

fn grpcurl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("grpcurl").args(args).output().expect("run grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test]
async fn grpcurl_starts_a_download_and_sees_its_progress_on_the_stream() {
    if external_tool("grpcurl", "see .ci/run: grpcurl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let url = server.add("w.bin", generated(SIZE, 12));
    server.throttle(10 << 20);
    let hive = start_hive(dir.path());
    let addr = hive.addr.clone();
    let request = format!(
        r#"{{"modelId":"grpcurl-model","urls":{{"files":[{{"url":"{url}","sizeBytes":"{SIZE}"}}]}}}}"#
    );
    let (ok, out, err) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || grpcurl(&["-plaintext", "-d", &request, &addr, "rbee.v1.Hive/FetchModel"])
    })
    .await
    .unwrap();
    assert!(ok, "FetchModel: {out} {err}");
    let (_, out, err) = tokio::task::spawn_blocking(move || {
        grpcurl(&[
            "-plaintext",
            "-max-time",
            "2",
            "-d",
            r#"{"sampleIntervalMs": 200}"#,
            &addr,
            "rbee.v1.Hive/MetricsStream",
        ])
    })
    .await
    .unwrap();
    assert!(out.contains("\"downloads\""), "no download records in:\n{out}\n{err}");
    assert!(out.contains("\"modelId\": \"grpcurl-model\""), "{out}");
    assert!(out.contains("\"bytesDone\""), "{out}");
    assert!(out.contains("DOWNLOAD_PHASE_DOWNLOADING"), "{out}");
    assert!(out.contains("\"modelsDisk\""), "{out}");
    assert!(out.contains("MODEL_STATE_DOWNLOADING"), "the snapshot's catalog has it: {out}");
    // Cancel through grpcurl; nothing stays.
    let addr = hive.addr.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        grpcurl(&["-plaintext", "-d", r#"{"modelId":"grpcurl-model"}"#, &addr, "rbee.v1.Hive/CancelFetch"])
    })
    .await
    .unwrap();
    assert!(ok, "CancelFetch: {out} {err}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(dir.path().join(".partial")).unwrap().count() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "partial files stay after cancel");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
