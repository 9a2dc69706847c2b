//! A hive serves its models to peers (`ReadModelFile`, issue 27): the real server on
//! 127.0.0.1:0 and the generated tonic client. Ready files only (and growing ones with
//! `allow_partial`), every traversal form NOT_FOUND, changed files never served, the
//! upload limit and slots, mutual TLS, and telemetry on time under a saturating read.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rbee_hive::HiveConfig;
use rbee_hive::models::layout;
use rbee_hive::models::manifest::{self, Manifest};
use rbee_proto::v1 as pb;
use rbee_proto::v1::hive_client::HiveClient;
use rbee_shared::ModelFile;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

/// Writes model `id` with `files` into `root` and a manifest with their real sha256, as
/// a download leaves it: the hive opens it as ready.
fn make_model(root: &Path, id: &str, files: &[(&str, &[u8])]) -> std::path::PathBuf {
    make_model_from(root, id, files, "test")
}

/// [`make_model`] with the manifest's `source` (`hand-copied`: verified from disk).
fn make_model_from(root: &Path, id: &str, files: &[(&str, &[u8])], source: &str) -> std::path::PathBuf {
    let dir = layout::model_dir(root, id);
    let mut listed = Vec::new();
    for (path, data) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        listed.push(ModelFile {
            path: (*path).to_owned(),
            size_bytes: data.len() as u64,
            sha256: Some(http_files::sha256_hex(data)),
        });
    }
    let m = Manifest { id: id.to_owned(), files: listed, source: source.into(), ready_at_unix_ms: 0 };
    manifest::write(&dir.join(layout::MANIFEST), &m).unwrap();
    dir
}

fn request(model: &str, path: &str, offset: u64) -> pb::ReadModelFileRequest {
    pb::ReadModelFileRequest { model_id: model.into(), path: path.into(), offset, allow_partial: false }
}

/// What one read returned: every chunk, or the status that ended it (with the chunks
/// before it).
struct Read {
    chunks: Vec<pb::ModelFileChunk>,
    end: Result<(), tonic::Status>,
}

impl Read {
    fn data(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|c| c.data.iter().copied()).collect()
    }

    fn code(&self) -> Code {
        self.end.as_ref().err().map_or(Code::Ok, tonic::Status::code)
    }
}

async fn read(client: &mut HiveClient<Channel>, req: pb::ReadModelFileRequest) -> Read {
    let mut chunks = Vec::new();
    let mut stream = match client.read_model_file(req).await {
        Ok(s) => s.into_inner(),
        Err(status) => return Read { chunks, end: Err(status) },
    };
    let end = tokio::time::timeout(DEADLINE, async {
        while let Some(item) = stream.next().await {
            chunks.push(item?);
        }
        Ok(())
    })
    .await
    .expect("the read ends within the deadline");
    Read { chunks, end }
}

/// Waits until the hive's catalog (Discover) shows `model` in `state`.
async fn until_state(client: &mut HiveClient<Channel>, model: &str, state: pb::ModelState) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let caps = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
        if caps.models.iter().any(|m| m.id == model && m.state() == state) {
            return;
        }
        assert!(Instant::now() < deadline, "{model} never became {state:?}: {:?}", caps.models);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hive_with_models(dir: &Path, edit: impl FnOnce(&mut rbee_hive::models::ModelsConfig)) -> HiveConfig {
    let mut config = models_config("peer-hive", dir, None);
    edit(config.models.as_mut().unwrap());
    config
}

#[tokio::test]
async fn a_ready_file_is_served_whole_or_from_an_offset_with_its_verified_hash() {
    let root = tempfile::tempdir().unwrap();
    let weights = http_files::generated(3 * (1 << 20) + 12_345, 7);
    let config = b"{\"layers\": 2}".to_vec();
    make_model(root.path(), "org/llm", &[("model.safetensors", &weights), ("cfg/config.json", &config)]);
    let hive = TestHive::start_with(hive_with_models(root.path(), |_| {})).await;
    let mut client = hive.client().await;

    let whole = read(&mut client, request("org/llm", "model.safetensors", 0)).await;
    whole.end.as_ref().unwrap();
    assert_eq!(whole.data(), weights);
    let first = &whole.chunks[0];
    assert_eq!(first.size_bytes, Some(weights.len() as u64));
    assert_eq!(first.sha256.as_deref(), Some(http_files::sha256_hex(&weights).as_str()));
    assert!(whole.chunks[1..].iter().all(|c| c.size_bytes.is_none() && c.sha256.is_none()));
    let mut at = 0;
    for c in &whole.chunks {
        assert_eq!(c.offset, at, "chunks in order, no gap");
        assert!((1..=1 << 20).contains(&c.data.len()), "chunks of at most 1 MiB: {}", c.data.len());
        at += c.data.len() as u64;
    }

    let resumed = read(&mut client, request("org/llm", "model.safetensors", 1_000_001)).await;
    resumed.end.as_ref().unwrap();
    assert_eq!(resumed.chunks[0].offset, 1_000_001);
    assert_eq!(resumed.chunks[0].size_bytes, Some(weights.len() as u64));
    assert_eq!(resumed.data(), weights[1_000_001..]);

    let nested = read(&mut client, request("org/llm", "cfg/config.json", 0)).await;
    assert_eq!((nested.code(), nested.data()), (Code::Ok, config.clone()));

    // At the end: one empty chunk that says the size; past it: OUT_OF_RANGE.
    let end = read(&mut client, request("org/llm", "cfg/config.json", config.len() as u64)).await;
    assert_eq!(end.code(), Code::Ok);
    assert_eq!(end.chunks.len(), 1);
    assert_eq!(end.chunks[0].size_bytes, Some(config.len() as u64));
    assert!(end.chunks[0].data.is_empty());
    let past = read(&mut client, request("org/llm", "cfg/config.json", config.len() as u64 + 1)).await;
    assert_eq!(past.code(), Code::OutOfRange, "{:?}", past.end);
}

#[tokio::test]
async fn every_traversal_form_and_every_file_not_served_is_not_found() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.bin"), b"secret!!").unwrap();
    std::fs::write(root.path().join("w.bin"), b"secret!!").unwrap();
    let dir = make_model(root.path(), "m", &[("w.bin", b"weights!"), ("sub/x.bin", b"weights!")]);
    make_model(root.path(), "other", &[("w.bin", b"weights!")]);
    let hive = TestHive::start_with(hive_with_models(root.path(), |_| {})).await;
    let mut client = hive.client().await;
    assert_eq!(read(&mut client, request("m", "w.bin", 0)).await.code(), Code::Ok);

    let abs = dir.join("w.bin").display().to_string();
    let not_found = [
        "../w.bin",
        "../other/w.bin",
        "sub/../w.bin",
        "./w.bin",
        "/etc/passwd",
        abs.as_str(),
        "//w.bin",
        "sub//x.bin",
        "w.bin/",
        "%2e%2e/w.bin",
        "%2e%2e%2fw.bin",
        "..%2fw.bin",
        "w.bin\0",
        "w.bin\0../../etc/passwd",
        "W.BIN",
        "sub",
        ".rbee-model.json",
        "sub\\x.bin",
        "..",
        ".",
    ];
    for path in not_found {
        let r = read(&mut client, request("m", path, 0)).await;
        assert_eq!(r.code(), Code::NotFound, "{path:?}: {:?}", r.end);
        assert!(r.chunks.is_empty());
    }
    // A model that is not in the catalog; bad syntax is INVALID_ARGUMENT.
    assert_eq!(read(&mut client, request("absent", "w.bin", 0)).await.code(), Code::NotFound);
    for (model, path) in [("../m", "w.bin"), ("/m", "w.bin"), ("", "w.bin"), ("m", "")] {
        let r = read(&mut client, request(model, path, 0)).await;
        assert_eq!(r.code(), Code::InvalidArgument, "{model:?} {path:?}: {:?}", r.end);
    }
    let long = "a/".repeat(3000);
    assert_eq!(read(&mut client, request("m", &long, 0)).await.code(), Code::InvalidArgument);

    // A symlink swapped in for a file, or for a directory on its path: never followed.
    let secret = outside.path().join("secret.bin");
    std::fs::remove_file(dir.join("w.bin")).unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("w.bin")).unwrap();
    std::fs::remove_dir_all(dir.join("sub")).unwrap();
    std::fs::create_dir(outside.path().join("sub")).unwrap();
    std::fs::write(outside.path().join("sub/x.bin"), b"secret!!").unwrap();
    std::os::unix::fs::symlink(outside.path().join("sub"), dir.join("sub")).unwrap();
    for path in ["w.bin", "sub/x.bin"] {
        let r = read(&mut client, request("m", path, 0)).await;
        assert_eq!(r.code(), Code::NotFound, "{path:?}: {:?}", r.end);
        assert!(r.chunks.is_empty(), "not a byte of the outside file");
    }
}

#[tokio::test]
async fn a_model_that_is_not_ready_is_not_found() {
    let root = tempfile::tempdir().unwrap();
    // Hand-copied, not verified yet: no manifest, and it keeps changing.
    let dir = layout::model_dir(root.path(), "copying");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("w.bin"), b"half a model").unwrap();
    let server = http_files::FileServer::start().await;
    let data = http_files::generated(1 << 20, 3);
    let url = server.add("slow.bin", data.clone());
    server.throttle(64 << 10);
    let hive =
        TestHive::start_with(hive_with_models(root.path(), |m| m.rescan = Duration::from_secs(3600))).await;
    let mut client = hive.client().await;
    until_state(&mut client, "copying", pb::ModelState::Unverified).await;
    assert_eq!(read(&mut client, request("copying", "w.bin", 0)).await.code(), Code::NotFound);

    client.fetch_model(fetch_url("dl", &url, Some(data.len() as u64), None)).await.unwrap();
    until_state(&mut client, "dl", pb::ModelState::Downloading).await;
    let r = read(&mut client, request("dl", "slow.bin", 0)).await;
    assert_eq!(r.code(), Code::NotFound, "a downloading model without allow_partial: {:?}", r.end);
    assert!(r.end.unwrap_err().message().contains("allow_partial"));
    client.cancel_fetch(pb::CancelFetchRequest { model_id: "dl".into() }).await.unwrap();
}

#[tokio::test]
async fn a_file_changed_since_verification_is_never_served_and_the_model_is_verified_again() {
    let root = tempfile::tempdir().unwrap();
    let old = http_files::generated(2 << 20, 1);
    let dir = make_model(root.path(), "m", &[("a.bin", &old), ("b.bin", &old)]);
    let hive =
        TestHive::start_with(hive_with_models(root.path(), |m| m.rescan = Duration::from_secs(3600))).await;
    let mut client = hive.client().await;
    until_state(&mut client, "m", pb::ModelState::Ready).await;

    // Rewritten in place, same size, newer mtime: refused at open.
    let new = http_files::generated(2 << 20, 2);
    std::fs::write(dir.join("a.bin"), &new).unwrap();
    let r = read(&mut client, request("m", "a.bin", 0)).await;
    assert_eq!(r.code(), Code::NotFound, "{:?}", r.end);
    assert!(r.chunks.is_empty());
    assert!(r.end.unwrap_err().message().contains("changed on disk"));
    until_state(&mut client, "m", pb::ModelState::Unverified).await;
}

#[tokio::test]
async fn a_hand_copied_file_changed_behind_its_mtime_ends_with_data_loss_and_is_verified_again() {
    let root = tempfile::tempdir().unwrap();
    let old = http_files::generated(2 << 20, 1);
    let dir = make_model_from(root.path(), "m", &[("a.bin", &old)], "hand-copied");
    let hive =
        TestHive::start_with(hive_with_models(root.path(), |m| m.rescan = Duration::from_millis(200))).await;
    let mut client = hive.client().await;
    until_state(&mut client, "m", pb::ModelState::Ready).await;

    // Same size, and the old mtime put back: only the hash of what is sent tells.
    let path = dir.join("a.bin");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut new = old.clone();
    new[1_500_000] ^= 0xff;
    std::fs::write(&path, &new).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
    let r = read(&mut client, request("m", "a.bin", 0)).await;
    assert_eq!(r.code(), Code::DataLoss, "{:?}", r.end);
    // Then it is verified again, and served with its new hash.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = read(&mut client, request("m", "a.bin", 0)).await;
        if r.code() == Code::Ok {
            assert_eq!(r.chunks[0].sha256.as_deref(), Some(http_files::sha256_hex(&new).as_str()));
            assert_eq!(r.data(), new);
            break;
        }
        assert!(Instant::now() < deadline, "never verified again: {:?}", r.end);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The catalog entry of `model` once its error says `want`.
async fn until_refused(client: &mut HiveClient<Channel>, model: &str, want: &str) -> pb::Model {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let caps = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
        if let Some(m) =
            caps.models.iter().find(|m| m.id == model && m.error.as_ref().is_some_and(|e| e.contains(want)))
        {
            return m.clone();
        }
        assert!(Instant::now() < deadline, "{model} never got an error: {:?}", caps.models);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_downloaded_file_changed_on_disk_is_never_ready_again_with_other_bytes() {
    let root = tempfile::tempdir().unwrap();
    let old = http_files::generated(2 << 20, 1);
    let dir = make_model(root.path(), "m", &[("a.bin", &old), ("b.bin", &old)]);
    let hive =
        TestHive::start_with(hive_with_models(root.path(), |m| m.rescan = Duration::from_millis(200))).await;
    let mut client = hive.client().await;
    until_state(&mut client, "m", pb::ModelState::Ready).await;

    // Same size, old mtime put back: caught by serving (DATA_LOSS), and then the model
    // stays unverified with the download's hash, never ready with the new bytes.
    let path = dir.join("a.bin");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut new = old.clone();
    new[1_500_000] ^= 0xff;
    // Replaced in one rename, so that no rescan sees the new mtime.
    let staged = root.path().join("staged.bin");
    std::fs::write(&staged, &new).unwrap();
    std::fs::File::options().write(true).open(&staged).unwrap().set_modified(mtime).unwrap();
    std::fs::rename(&staged, &path).unwrap();
    let r = read(&mut client, request("m", "a.bin", 0)).await;
    assert_eq!(r.code(), Code::DataLoss, "{:?}", r.end);
    let m = until_refused(&mut client, "m", "after it was downloaded").await;
    let error = m.error.clone().unwrap();
    assert_eq!(m.state(), pb::ModelState::Unverified, "{error}");
    let (got, want) = (http_files::sha256_hex(&new), http_files::sha256_hex(&old));
    assert!(error.contains("\"a.bin\" changed after it was downloaded"), "{error}");
    assert!(error.contains(&format!("sha256 {got}, downloaded as {want}")), "{error}");
    assert!(error.contains("fetch it again"), "{error}");
    // Several rescans later it is still not ready, and nothing is served.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let caps = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
    let m = caps.models.iter().find(|m| m.id == "m").unwrap();
    assert_eq!(m.state(), pb::ModelState::Unverified, "{m:?}");
    for file in ["a.bin", "b.bin"] {
        let r = read(&mut client, request("m", file, 0)).await;
        assert_eq!(r.code(), Code::NotFound, "{file}: {:?}", r.end);
    }
    // The downloaded bytes put back: ready again, with the download's hashes.
    std::fs::write(&path, &old).unwrap();
    until_state(&mut client, "m", pb::ModelState::Ready).await;
    let r = read(&mut client, request("m", "a.bin", 0)).await;
    assert_eq!(r.code(), Code::Ok, "{:?}", r.end);
    assert_eq!(r.chunks[0].sha256.as_deref(), Some(want.as_str()));
    let kept = manifest::read::<Manifest>(&dir.join(layout::MANIFEST)).unwrap();
    assert_eq!(kept.source, "test", "still the download's manifest");

    // Truncated (the rescan sees the size): refused at once, with both sizes.
    std::fs::File::options().write(true).open(dir.join("b.bin")).unwrap().set_len(1000).unwrap();
    let m = until_refused(&mut client, "m", "after it was downloaded").await;
    let error = m.error.clone().unwrap();
    assert_eq!(m.state(), pb::ModelState::Unverified, "{error}");
    assert!(error.contains(&format!("1000 bytes, downloaded as {} bytes", old.len())), "{error}");
}

#[tokio::test]
async fn a_changed_download_survives_a_restart_unready() {
    let root = tempfile::tempdir().unwrap();
    let old = http_files::generated(1 << 20, 3);
    let dir = make_model(root.path(), "m", &[("a.bin", &old)]);
    // Zeroed while the hive was down (mtime newer than the manifest).
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(dir.join("a.bin"), vec![0u8; old.len()]).unwrap();
    let hive =
        TestHive::start_with(hive_with_models(root.path(), |m| m.rescan = Duration::from_millis(100))).await;
    let mut client = hive.client().await;
    let m = until_refused(&mut client, "m", "after it was downloaded").await;
    assert_eq!(m.state(), pb::ModelState::Unverified, "{m:?}");
    assert!(m.error.unwrap().contains("changed after it was downloaded"));
}

#[tokio::test]
async fn uploads_beyond_the_limit_are_resource_exhausted_until_one_ends() {
    let root = tempfile::tempdir().unwrap();
    make_model(root.path(), "m", &[("w.bin", &http_files::generated(32 << 20, 5))]);
    let mut config = hive_with_models(root.path(), |m| m.serve.max_uploads = 2);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = listener.local_addr().unwrap();
    config.metrics = Some(rbee_shared::metrics_http::MetricsEndpoint {
        listen: metrics,
        listener: Some(std::sync::Arc::new(listener)),
        access: rbee_shared::metrics_http::MetricsAccess::new(None),
    });
    let hive = TestHive::start_with(config).await;
    let mut client = hive.client().await;
    // Two readers that take one chunk and then stall: both slots held.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = client.read_model_file(request("m", "w.bin", 0)).await.unwrap().into_inner();
        s.next().await.unwrap().unwrap();
        held.push(s);
    }
    let refused = read(&mut client, request("m", "w.bin", 0)).await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{:?}", refused.end);
    assert!(refused.end.unwrap_err().message().contains("--max-peer-uploads"));
    // /metrics says so: two running, one refused, bytes sent.
    let (status, text) = http_get(metrics, "/metrics", None).await;
    assert_eq!(status, 200);
    let value = |name: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("{name}:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("rbee_hive_peer_uploads"), 2);
    assert_eq!(value("rbee_hive_peer_uploads_refused_total"), 1);
    assert!(value("rbee_hive_peer_upload_bytes_total") >= 2 * rbee_hive::models::serve::CHUNK_BYTES as u64);
    promtool_check_metrics(&text);
    drop(held.pop());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = read(&mut client, request("m", "w.bin", 30 << 20)).await;
        if r.code() == Code::Ok {
            break;
        }
        assert_eq!(r.code(), Code::ResourceExhausted, "{:?}", r.end);
        assert!(Instant::now() < deadline, "the slot of a reader that left is never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serving_can_be_turned_off() {
    let root = tempfile::tempdir().unwrap();
    make_model(root.path(), "m", &[("w.bin", b"weights")]);
    let hive = TestHive::start_with(hive_with_models(root.path(), |m| m.serve.enabled = false)).await;
    let r = read(&mut hive.client().await, request("m", "w.bin", 0)).await;
    assert_eq!(r.code(), Code::FailedPrecondition, "{:?}", r.end);
    assert!(r.end.unwrap_err().message().contains("--serve-models"));
}

#[tokio::test]
async fn on_mutual_tls_a_caller_without_a_client_certificate_reads_nothing() {
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path();
    rbee_shared::certs::generate(c, &["localhost".into()], &["localhost".into()]).unwrap();
    let root = tempfile::tempdir().unwrap();
    make_model(root.path(), "m", &[("w.bin", b"weights")]);
    let mut config = hive_with_models(root.path(), |_| {});
    config.tls = Some(
        rbee_shared::tls::server_config(
            &c.join("hive-localhost.pem"),
            &c.join("hive-localhost.key"),
            Some(&c.join("queen-ca.pem")),
        )
        .unwrap(),
    );
    let hive = TestHive::start_with(config).await;
    let url = format!("https://{}", hive.addr);
    let connect = |identity: Option<(&Path, &Path)>| {
        let tls = rbee_shared::tls::client_config(&c.join("hive-ca.pem"), identity)
            .unwrap()
            .domain_name("localhost");
        let url = url.clone();
        async move {
            let deadline = Instant::now() + DEADLINE;
            loop {
                let endpoint = Channel::from_shared(url.clone()).unwrap().tls_config(tls.clone()).unwrap();
                match endpoint.connect().await {
                    Ok(ch) => return Ok(HiveClient::new(ch)),
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    };
    // A client certificate from the CA the hive trusts: served.
    let mut peer = connect(Some((&c.join("queen.pem"), &c.join("queen.key")))).await.unwrap();
    let ok = read(&mut peer, request("m", "w.bin", 0)).await;
    assert_eq!((ok.code(), ok.data()), (Code::Ok, b"weights".to_vec()), "{:?}", ok.end);
    // None: the handshake or the call fails, and no byte comes back.
    match connect(None).await {
        Err(_) => {}
        Ok(mut anonymous) => {
            let r = read(&mut anonymous, request("m", "w.bin", 0)).await;
            assert_ne!(r.code(), Code::Ok);
            assert!(r.chunks.is_empty());
        }
    }
}

#[tokio::test]
async fn the_upload_limit_holds() {
    const LIMIT: u64 = 4 << 20;
    let size = 10usize << 20;
    let root = tempfile::tempdir().unwrap();
    let weights = http_files::generated(size, 9);
    make_model(root.path(), "m", &[("w.bin", &weights)]);
    let hive =
        TestHive::start_with(hive_with_models(root.path(), |m| m.serve.upload_limit = Some(LIMIT))).await;
    let mut client = hive.client().await;
    let started = Instant::now();
    let r = read(&mut client, request("m", "w.bin", 0)).await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(r.code(), Code::Ok, "{:?}", r.end);
    assert_eq!(r.data(), weights);
    // At most the limit (plus its burst of one chunk) and 10%; a loaded CI machine may
    // be slower, never faster.
    let burst = rbee_hive::models::serve::CHUNK_BYTES as f64;
    let rate = (size as f64 - burst) / secs;
    assert!(rate <= LIMIT as f64 * 1.1, "{rate:.0} B/s over the limit of {LIMIT} B/s");
    assert!(rate >= LIMIT as f64 * 0.5, "{rate:.0} B/s, far under the limit of {LIMIT} B/s");

    // Two readers at once share the one limit.
    let (mut a, mut b) = (client.clone(), client.clone());
    let started = Instant::now();
    let (ra, rb) =
        tokio::join!(read(&mut a, request("m", "w.bin", 0)), read(&mut b, request("m", "w.bin", 5 << 20)));
    let secs = started.elapsed().as_secs_f64();
    assert_eq!((ra.code(), rb.code()), (Code::Ok, Code::Ok));
    let both = (ra.data().len() + rb.data().len()) as f64;
    let rate = (both - burst) / secs;
    assert!(rate <= LIMIT as f64 * 1.1, "two readers: {rate:.0} B/s over the limit of {LIMIT} B/s");
    assert!(rate >= LIMIT as f64 * 0.5, "two readers: {rate:.0} B/s, far under the limit of {LIMIT} B/s");
}

fn partial(model: &str, path: &str, offset: u64) -> pb::ReadModelFileRequest {
    pb::ReadModelFileRequest { allow_partial: true, ..request(model, path, offset) }
}

#[tokio::test]
async fn a_file_being_downloaded_is_served_as_it_grows_and_ends_at_its_size() {
    let root = tempfile::tempdir().unwrap();
    let server = http_files::FileServer::start().await;
    let data = http_files::generated(3 << 20, 11);
    let url = server.add("w.bin", data.clone());
    server.throttle(1 << 20);
    let hive = TestHive::start_with(hive_with_models(root.path(), |_| {})).await;
    let mut client = hive.client().await;
    let sha = http_files::sha256_hex(&data);
    client.fetch_model(fetch_url("m", &url, Some(data.len() as u64), Some(sha.clone()))).await.unwrap();
    until_state(&mut client, "m", pb::ModelState::Downloading).await;

    // From the start, and from an offset the download has not reached yet; both
    // outlive the renames that make the model ready.
    let (mut a, mut b) = (client.clone(), client.clone());
    let (whole, tail) =
        tokio::join!(read(&mut a, partial("m", "w.bin", 0)), read(&mut b, partial("m", "w.bin", 2 << 20)));
    assert_eq!(whole.code(), Code::Ok, "{:?}", whole.end);
    assert_eq!(whole.data(), data);
    assert_eq!(whole.chunks[0].size_bytes, Some(data.len() as u64));
    assert_eq!(whole.chunks[0].sha256, None, "not verified by this hive yet: the reader checks it");
    assert_eq!(tail.code(), Code::Ok, "{:?}", tail.end);
    assert_eq!(tail.data(), data[2 << 20..]);
    until_state(&mut client, "m", pb::ModelState::Ready).await;
}

#[tokio::test]
async fn a_partial_read_ends_aborted_when_its_download_is_cancelled() {
    let root = tempfile::tempdir().unwrap();
    let server = http_files::FileServer::start().await;
    let data = http_files::generated(4 << 20, 12);
    let url = server.add("w.bin", data.clone());
    let unsized_url = server.add("unsized.bin", data.clone());
    server.throttle(256 << 10);
    let hive = TestHive::start_with(hive_with_models(root.path(), |_| {})).await;
    let mut client = hive.client().await;
    client.fetch_model(fetch_url("m", &url, Some(data.len() as u64), None)).await.unwrap();
    // A download of undeclared size: its end is not known, so it is not served, even
    // when its hash is declared.
    let hashed_url = server.add("hashed.bin", data.clone());
    client.fetch_model(fetch_url("u", &unsized_url, None, None)).await.unwrap();
    let sha = Some(http_files::sha256_hex(&data));
    client.fetch_model(fetch_url("h", &hashed_url, None, sha)).await.unwrap();
    until_state(&mut client, "u", pb::ModelState::Downloading).await;
    until_state(&mut client, "h", pb::ModelState::Downloading).await;
    for (model, file) in [("u", "unsized.bin"), ("h", "hashed.bin")] {
        let r = read(&mut client, partial(model, file, 0)).await;
        assert_eq!(r.code(), Code::NotFound, "{model}: {:?}", r.end);
        assert!(r.end.unwrap_err().message().contains("size is not known"));
    }

    let mut stream = client.read_model_file(partial("m", "w.bin", 0)).await.unwrap().into_inner();
    let first = tokio::time::timeout(DEADLINE, stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.offset, 0);
    assert!(!first.data.is_empty());
    client.cancel_fetch(pb::CancelFetchRequest { model_id: "m".into() }).await.unwrap();
    let mut got = first.data.len();
    let end = tokio::time::timeout(DEADLINE, async {
        while let Some(item) = stream.next().await {
            got += item?.data.len();
        }
        Ok(())
    })
    .await
    .unwrap();
    let status: tonic::Status = end.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(got < data.len());
}

#[test]
fn telemetry_stays_on_time_while_a_peer_reads_as_fast_as_it_can() {
    let root = tempfile::tempdir().unwrap();
    make_model(root.path(), "m", &[("w.bin", &http_files::generated(64 << 20, 4))]);
    let hive = HiveProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_hive")),
        &[
            "--hive-id".as_ref(),
            "busy".as_ref(),
            "--demo".as_ref(),
            "--models-dir".as_ref(),
            root.path().as_os_str(),
        ],
        &[],
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = client_from(&hive.url(), "127.0.0.1".parse().unwrap()).await;
        until_state(&mut client, "m", pb::ModelState::Ready).await;
        let stop = tokio_util::sync::CancellationToken::new();
        // Two readers pull the file over and over, as fast as the hive sends it (one
        // worker thread, the default).
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (mut client, stop) = (client.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut bytes = 0u64;
                    while !stop.is_cancelled() {
                        let r = read(&mut client, request("m", "w.bin", 0)).await;
                        assert_eq!(r.code(), Code::Ok, "{:?}", r.end);
                        bytes += r.data().len() as u64;
                    }
                    bytes
                })
            })
            .collect();
        let mut stream = TestStream::open(&mut client, subscribe(200)).await;
        let mut times = Vec::new();
        while times.len() < 16 {
            let m = stream.next().await.unwrap();
            if as_sample(&m).is_some() {
                times.push(m.hive_time_unix_ms);
            }
        }
        stop.cancel();
        let mut served = 0;
        for r in readers {
            served += r.await.unwrap();
        }
        assert!(served >= 64 << 20, "the readers got only {served} bytes");
        let gaps: Vec<u64> = times.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
        // 200 ms samples; generous slack for a loaded machine, far under a stall.
        assert!(gaps.iter().all(|g| *g <= 1_000), "samples late while serving: {gaps:?}");
        let mean = gaps.iter().sum::<u64>() / gaps.len() as u64;
        assert!(mean <= 400, "mean gap {mean} ms for a 200 ms interval: {gaps:?}");
    });
}

#[tokio::test]
async fn a_partial_read_ends_aborted_when_its_download_starts_the_file_over() {
    let root = tempfile::tempdir().unwrap();
    let server = http_files::FileServer::start().await;
    let old = http_files::generated(4 << 20, 13);
    let url = server.add("w.bin", old.clone());
    server.throttle(512 << 10);
    // The first connection breaks after 1 MiB; by then the file has changed on the
    // server, so the resume gets the whole new file (If-Range) and the hive writes
    // its .part file over from byte 0.
    server.drop_once_after(1 << 20);
    let hive = TestHive::start_with(hive_with_models(root.path(), |_| {})).await;
    let mut client = hive.client().await;
    client.fetch_model(fetch_url("m", &url, Some(old.len() as u64), None)).await.unwrap();
    let mut stream = client.read_model_file(partial("m", "w.bin", 0)).await.unwrap().into_inner();
    let first = tokio::time::timeout(DEADLINE, stream.next()).await.unwrap().unwrap().unwrap();
    server.replace("w.bin", http_files::generated(4 << 20, 14));
    let mut got = first.data.clone();
    let end = tokio::time::timeout(DEADLINE, async {
        while let Some(item) = stream.next().await {
            got.extend_from_slice(&item?.data);
        }
        Ok(())
    })
    .await
    .unwrap();
    let status: tonic::Status = end.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("started the file over"), "{status:?}");
    assert_eq!(got, old[..got.len()], "only bytes of the file as it was are sent");
}

#[tokio::test]
async fn a_hive_shutting_down_ends_its_uploads_with_unavailable_and_does_not_wait_for_them() {
    let root = tempfile::tempdir().unwrap();
    make_model(root.path(), "m", &[("w.bin", &http_files::generated(16 << 20, 6))]);
    let server = http_files::FileServer::start().await;
    let url = server.add("slow.bin", http_files::generated(4 << 20, 8));
    server.throttle(64 << 10);
    let hive =
        TestHive::start_with(hive_with_models(root.path(), |m| m.serve.upload_limit = Some(256 << 10))).await;
    let mut client = hive.client().await;
    client.fetch_model(fetch_url("dl", &url, Some(4 << 20), None)).await.unwrap();
    // A throttled reader of a ready file, a reader that stopped reading, and a reader
    // waiting for a download's bytes: none of them holds the shutdown up.
    let mut slow = client.read_model_file(request("m", "w.bin", 0)).await.unwrap().into_inner();
    slow.next().await.unwrap().unwrap();
    let mut stalled = client.read_model_file(request("m", "w.bin", 1 << 20)).await.unwrap().into_inner();
    stalled.next().await.unwrap().unwrap();
    let waiting = client.read_model_file(partial("dl", "slow.bin", 3 << 20)).await.unwrap();
    let slow_end = tokio::spawn(async move {
        loop {
            match slow.next().await {
                Some(Ok(_)) => {}
                Some(Err(status)) => return Some(status.code()),
                None => return None,
            }
        }
    });
    hive.stop().await.unwrap();
    let code = tokio::time::timeout(DEADLINE, slow_end).await.unwrap().unwrap();
    assert!(
        matches!(code, Some(Code::Unavailable)),
        "a reader cut off by the shutdown sees an error, not the end of the file: {code:?}"
    );
    drop((stalled, waiting));
}
