//! Models on a hive, end to end over real sockets: a real hive on `127.0.0.1:0`, the
//! generated tonic client, and an HTTP file server in this process that supports Range.

use std::path::Path;

use rbee_hive::test_support::http_files::{FileServer, generated, sha256_hex};
use rbee_hive::test_support::{
    TestHive, TestStream, as_diff, as_snapshot, download_of, fetch_url, models_config, subscribe,
};
use rbee_proto::v1 as pb;

/// The test file size (50 MiB).
const SIZE: usize = 50 << 20;

async fn hive(dir: &Path, hub: Option<String>) -> TestHive {
    TestHive::start_with(models_config("models-hive", dir, hub)).await
}

/// Files left under `dir/.partial`.
fn partial_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(".partial")).map(|d| d.count()).unwrap_or(0)
}

/// Waits for the final record of `model`, checking on the way that no record shows
/// the total before it is done.
async fn final_record(stream: &mut TestStream, model: &str) -> pb::DownloadProgress {
    stream
        .until(|m| {
            let d = download_of(m, model)?;
            let phase = pb::DownloadPhase::try_from(d.phase).unwrap();
            if phase != pb::DownloadPhase::Done
                && let Some(total) = d.bytes_total
            {
                assert!(d.bytes_done < total, "100% shown before ready: {d:?}");
            }
            matches!(
                phase,
                pb::DownloadPhase::Done | pb::DownloadPhase::Failed | pb::DownloadPhase::Cancelled
            )
            .then_some(d)
        })
        .await
}

#[tokio::test]
async fn a_download_is_verified_moved_into_place_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let data = generated(SIZE, 1);
    let url = server.add("weights.bin", data.clone());
    server.throttle(100 << 20);
    let hive = hive(dir.path(), None).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;

    let r = client
        .fetch_model(fetch_url("tiny", &url, Some(SIZE as u64), Some(sha256_hex(&data))))
        .await
        .unwrap();
    assert!(!r.get_ref().joined && !r.get_ref().already_ready);
    let moving = stream
        .until(|m| {
            download_of(m, "tiny")
                .filter(|d| d.bytes_done > 0 && d.phase == pb::DownloadPhase::Downloading as i32)
        })
        .await;
    assert_eq!(moving.bytes_total, Some(SIZE as u64));
    let sample_disk =
        stream.until(|m| rbee_hive::test_support::as_sample(m).and_then(|s| s.models_disk)).await;
    assert!(sample_disk.total_bytes > 0 && sample_disk.free_bytes <= sample_disk.total_bytes);

    let done = final_record(&mut stream, "tiny").await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    assert_eq!(done.bytes_done, SIZE as u64);
    assert_eq!(std::fs::read(dir.path().join("tiny/weights.bin")).unwrap(), data);
    assert!(dir.path().join("tiny/.rbee-model.json").is_file(), "a manifest is written");
    assert_eq!(partial_entries(dir.path()), 0, "nothing left in .partial");

    // The catalog says ready, with the hash, and a new subscriber's snapshot carries it.
    let mut late = TestStream::open(&mut client, subscribe(100)).await;
    let snap = late.until(as_snapshot).await;
    let model =
        snap.capabilities.unwrap().models.into_iter().find(|m| m.id == "tiny").expect("in the catalog");
    assert_eq!(model.state, pb::ModelState::Ready as i32);
    assert_eq!(model.files[0].sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    // ...and so does its sample: the final record is delivered to a late subscriber too.
    let again = late.until(|m| download_of(m, "tiny")).await;
    assert_eq!(again.phase, pb::DownloadPhase::Done as i32);

    // Fetching a ready model downloads nothing.
    let gets = server.gets();
    let r = client.fetch_model(fetch_url("tiny", &url, None, None)).await.unwrap();
    assert!(r.get_ref().already_ready);
    assert_eq!(server.gets(), gets);

    // The model survives a restart (its manifest), and delete removes it.
    hive.stop().await.unwrap();
    let hive = self::hive(dir.path(), None).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    let snap = stream.until(as_snapshot).await;
    assert!(
        snap.capabilities
            .unwrap()
            .models
            .iter()
            .any(|m| m.id == "tiny" && m.state == pb::ModelState::Ready as i32)
    );
    client.delete_model(pb::DeleteModelRequest { model_id: "tiny".into() }).await.unwrap();
    // Residency updates are diffs too (models_changed); wait for the removal.
    let diff = stream.until(|m| as_diff(m).filter(|d| !d.models_removed.is_empty())).await;
    assert_eq!(diff.models_removed, ["tiny"]);
    assert!(!dir.path().join("tiny").exists());
    let e = client.delete_model(pb::DeleteModelRequest { model_id: "tiny".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn a_corrupted_byte_fails_with_a_sha256_mismatch_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let data = generated(SIZE, 2);
    let url = server.add("w.bin", data.clone());
    server.corrupt("w.bin", SIZE / 2);
    let hive = hive(dir.path(), None).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    client.fetch_model(fetch_url("bad", &url, Some(SIZE as u64), Some(sha256_hex(&data)))).await.unwrap();
    let end = final_record(&mut stream, "bad").await;
    assert_eq!(end.phase, pb::DownloadPhase::Failed as i32);
    assert!(end.error.as_deref().unwrap_or_default().contains("sha256 mismatch"), "{end:?}");
    assert_eq!(partial_entries(dir.path()), 0, "no partial file left");
    assert!(!dir.path().join("bad").exists(), "no model directory");
    let caps = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
    assert!(
        !caps.models.iter().any(|m| m.id == "bad" && m.state != pb::ModelState::Failed as i32),
        "the model is not in the catalog except as failed: {:?}",
        caps.models
    );
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn a_dropped_connection_is_retried_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let data = generated(SIZE, 3);
    let url = server.add("w.bin", data.clone());
    server.drop_once_after((SIZE / 3) as u64);
    let hive = hive(dir.path(), None).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    client.fetch_model(fetch_url("flaky", &url, Some(SIZE as u64), Some(sha256_hex(&data)))).await.unwrap();
    let end = final_record(&mut stream, "flaky").await;
    assert_eq!(end.phase, pb::DownloadPhase::Done as i32, "{end:?}");
    assert!(server.gets() >= 2, "retried");
    assert!(
        server.bytes_sent() < (SIZE + SIZE / 10) as u64,
        "resumed, not restarted: {} bytes sent",
        server.bytes_sent()
    );
    assert_eq!(std::fs::read(dir.path().join("flaky/w.bin")).unwrap(), data);
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn a_declared_size_over_free_disk_is_refused_before_any_byte() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let url = server.add("w.bin", generated(1024, 4));
    let hive = hive(dir.path(), None).await;
    let mut client = hive.client().await;
    let free = rbee_hive::models::disk::space(dir.path()).unwrap().free_bytes;
    let e = client.fetch_model(fetch_url("huge", &url, Some(free + (1 << 40)), None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("not enough disk space"), "{}", e.message());
    assert_eq!(server.gets(), 0, "no byte was requested");
    assert_eq!(partial_entries(dir.path()), 0, "nothing written");
    // Bad input is refused precisely and the hive keeps serving.
    let e = client.fetch_model(fetch_url("../x", &url, None, None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("model_id"), "{}", e.message());
    let e = client.fetch_model(fetch_url("x", "ftp://h/a", None, None)).await.unwrap_err();
    assert!(e.message().contains("url"), "{}", e.message());
    client.discover(pb::DiscoverRequest {}).await.unwrap();
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn two_fetches_of_one_model_make_one_download_and_cancel_leaves_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let data = generated(SIZE, 5);
    let url = server.add("w.bin", data.clone());
    server.throttle(50 << 20);
    let hive = hive(dir.path(), None).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    let (mut c1, mut c2) = (client.clone(), client.clone());
    let (a, b) = tokio::join!(
        c1.fetch_model(fetch_url("shared", &url, Some(SIZE as u64), None)),
        c2.fetch_model(fetch_url("shared", &url, Some(SIZE as u64), None)),
    );
    let joined = [a.unwrap().into_inner().joined, b.unwrap().into_inner().joined];
    assert_eq!(joined.iter().filter(|j| **j).count(), 1, "one started, one joined: {joined:?}");
    assert_eq!(final_record(&mut stream, "shared").await.phase, pb::DownloadPhase::Done as i32);
    assert_eq!(server.gets(), 1, "one download");

    // Cancel a download half-way: no partial file stays, the model leaves the catalog.
    let url2 = server.add("w2.bin", data);
    client.fetch_model(fetch_url("cancelled", &url2, Some(SIZE as u64), None)).await.unwrap();
    stream.until(|m| download_of(m, "cancelled").filter(|d| d.bytes_done > 0)).await;
    client.cancel_fetch(pb::CancelFetchRequest { model_id: "cancelled".into() }).await.unwrap();
    let end = final_record(&mut stream, "cancelled").await;
    assert_eq!(end.phase, pb::DownloadPhase::Cancelled as i32);
    assert_eq!(partial_entries(dir.path()), 0, "no partial file left");
    assert!(!dir.path().join("cancelled").exists());
    let caps = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
    assert!(!caps.models.iter().any(|m| m.id == "cancelled"));
    let e = client.cancel_fetch(pb::CancelFetchRequest { model_id: "cancelled".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn a_hand_copied_model_is_picked_up_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let hive = hive(dir.path(), None).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    stream.until(as_snapshot).await;
    let data = generated(4 << 20, 6);
    std::fs::create_dir_all(dir.path().join("org--copied")).unwrap();
    std::fs::write(dir.path().join("org--copied/model.gguf"), &data).unwrap();
    let ready = stream
        .until(|m| {
            let d = as_diff(m)?;
            d.models_added
                .into_iter()
                .chain(d.models_changed)
                .find(|m| m.id == "org/copied" && m.state == pb::ModelState::Ready as i32)
        })
        .await;
    assert_eq!(ready.files[0].sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    assert!(dir.path().join("org--copied/.rbee-model.json").is_file());
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn hf_repositories_resolve_through_the_hub_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let weights = generated(8 << 20, 7);
    let config = br#"{"arch":"test"}"#.to_vec();
    server.add_hf_repo(
        "org/tiny",
        "main",
        "0123abcd",
        &[("config.json", config.clone()), ("model.safetensors", weights.clone())],
    );
    let hive = hive(dir.path(), Some(server.base())).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    let request = pb::FetchModelRequest {
        model_id: "org/tiny".into(),
        source: Some(pb::fetch_model_request::Source::Hf("hf://org/tiny".into())),
        ..Default::default()
    };
    client.fetch_model(request).await.unwrap();
    let end = final_record(&mut stream, "org/tiny").await;
    assert_eq!(end.phase, pb::DownloadPhase::Done as i32, "{end:?}");
    assert_eq!(std::fs::read(dir.path().join("org--tiny/model.safetensors")).unwrap(), weights);
    assert_eq!(std::fs::read(dir.path().join("org--tiny/config.json")).unwrap(), config);
    assert_eq!(server.hub_authorizations(), ["Bearer test-token"], "HF_TOKEN goes to the Hub API");

    // An unknown repository fails with the Hub's answer and leaves nothing.
    let request = pb::FetchModelRequest {
        model_id: "org/missing".into(),
        source: Some(pb::fetch_model_request::Source::Hf("hf://org/missing@v2".into())),
        ..Default::default()
    };
    client.fetch_model(request).await.unwrap();
    let end = final_record(&mut stream, "org/missing").await;
    assert_eq!(end.phase, pb::DownloadPhase::Failed as i32);
    assert!(end.error.unwrap_or_default().contains("404"));
    assert_eq!(partial_entries(dir.path()), 0);
    hive.stop().await.unwrap();
}

/// The `hive` binary serving on loopback with `models` and `extra` arguments and
/// environment, its stderr lines sent to the returned channel.
fn hive_binary(
    models: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["serve", "--listen", "127.0.0.1:0", "--hive-id", "models-start", "--demo"])
        .arg("--models-dir")
        .arg(models)
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .env_remove("HIVE_DOWNLOAD_ALLOW")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the hive binary");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Everything the binary said until it exited, and how it exited.
fn until_exit(mut child: std::process::Child, lines: std::sync::mpsc::Receiver<String>) -> (bool, String) {
    let status = child.wait().unwrap();
    (status.success(), lines.iter().collect::<Vec<_>>().join("\n"))
}

#[test]
fn the_hive_refuses_credentials_in_hf_endpoint_and_careless_allow_entries_and_logs_what_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let wait = std::time::Duration::from_secs(30);

    let (child, lines) =
        hive_binary(dir.path(), &[], &[("HF_ENDPOINT", "http://alice:PASSWORD@127.0.0.1:9/hub")]);
    let (ok, said) = until_exit(child, lines);
    assert!(!ok && said.contains("HF_ENDPOINT") && said.contains("HF_TOKEN"), "{said}");
    assert!(!said.contains("PASSWORD") && !said.contains("alice"), "{said}");

    for (entry, want) in [
        ("10.20.30.40/1", "did you mean 10.20.30.40/32 or 0.0.0.0/1"),
        ("169.254.169.254/0", "host bits set"),
    ] {
        let (child, lines) = hive_binary(dir.path(), &["--download-allow", entry], &[]);
        let (ok, said) = until_exit(child, lines);
        assert!(!ok && said.contains(want), "{entry}: {said}");
    }

    // A good list starts, and the log says what it opens (mapped entries as IPv4).
    let (mut child, lines) = hive_binary(
        dir.path(),
        &["--download-allow", "127.0.0.1,10.0.0.0/8,[::ffff:192.168.1.1],mirror.lan"],
        &[],
    );
    let line = loop {
        let line = lines.recv_timeout(wait).expect("the hive logs what --download-allow opens");
        if line.contains("--download-allow") {
            break line;
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        line.contains("INFO") && line.contains("127.0.0.1/32,10.0.0.0/8,192.168.1.1/32,mirror.lan"),
        "{line}"
    );
}
