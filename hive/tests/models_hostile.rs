//! Models on a hive against hostile input, end to end over real sockets: ids and paths
//! that name the hive's own files, a Hub that answers odd commits, servers that change
//! a file under a resume or drip bytes, and catalog entries that disagree.

use std::path::Path;

use rbee_hive::test_support::http_files::{FileServer, generated, sha256_hex};
use rbee_hive::test_support::{
    TestHive, TestStream, as_diff, as_snapshot, download_of, fetch_url, models_config, subscribe,
};
use rbee_proto::v1 as pb;
use rbee_shared::model::MAX_MODEL_FILES;

async fn hive(dir: &Path, hub: Option<String>) -> TestHive {
    TestHive::start_with(models_config("hostile-hive", dir, hub)).await
}

/// Waits for the final record of `model`.
async fn final_record(stream: &mut TestStream, model: &str) -> pb::DownloadProgress {
    stream
        .until(|m| {
            let d = download_of(m, model)?;
            matches!(
                pb::DownloadPhase::try_from(d.phase),
                Ok(pb::DownloadPhase::Done | pb::DownloadPhase::Failed | pb::DownloadPhase::Cancelled)
            )
            .then_some(d)
        })
        .await
}

fn hf(model: &str, uri: &str) -> pb::FetchModelRequest {
    pb::FetchModelRequest {
        model_id: model.into(),
        source: Some(pb::fetch_model_request::Source::Hf(uri.into())),
        ..Default::default()
    }
}

#[tokio::test]
async fn ids_naming_the_hives_own_directories_are_refused_and_harm_no_download() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let data = generated(4 << 20, 11);
    let url = server.add("w.bin", data.clone());
    server.throttle(8 << 20);
    let hive = hive(dir.path(), None).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    client.fetch_model(fetch_url("inflight", &url, Some(data.len() as u64), None)).await.unwrap();
    stream.until(|m| download_of(m, "inflight").filter(|d| d.bytes_done > 0)).await;

    for bad in [".partial", ".trash", ".hidden", "org/.partial", "a/.."] {
        let check = |e: tonic::Status| {
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
            assert!(e.message().contains("model_id"), "{bad}: {}", e.message());
        };
        check(client.fetch_model(fetch_url(bad, &url, None, None)).await.unwrap_err());
        check(client.cancel_fetch(pb::CancelFetchRequest { model_id: bad.into() }).await.unwrap_err());
        check(client.delete_model(pb::DeleteModelRequest { model_id: bad.into() }).await.unwrap_err());
    }
    // File paths that clash with the hive's bookkeeping are refused too.
    for bad in ["w.bin.part", "w.bin.part.json", "fetch.json", ".rbee-model.json", "d/x.part"] {
        let mut request = fetch_url("clash", &url, None, None);
        if let Some(pb::fetch_model_request::Source::Urls(u)) = &mut request.source {
            u.files[0].path = Some(bad.into());
        }
        let e = client.fetch_model(request).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("path"), "{bad}: {}", e.message());
    }
    // The download in flight was not touched: it finishes with the right bytes.
    let end = final_record(&mut stream, "inflight").await;
    assert_eq!(end.phase, pb::DownloadPhase::Done as i32, "{end:?}");
    assert_eq!(std::fs::read(dir.path().join("inflight/w.bin")).unwrap(), data);
    assert!(!dir.path().join("clash").exists());
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn hub_listings_with_reserved_names_or_odd_commits_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let weights = generated(1 << 20, 12);
    let attributes = b"*.bin filter=lfs\n".to_vec();
    // Hidden metadata files are skipped; the model is its real files.
    server.add_hf_repo(
        "org/meta",
        "main",
        "00aa11bb",
        &[(".gitattributes", attributes.clone()), ("model.bin", weights.clone())],
    );
    // A file named like the hive's partial data.
    server.add_hf_repo(
        "org/clash",
        "main",
        "00aa11bc",
        &[("model.bin", weights.clone()), ("model.bin.part", attributes.clone())],
    );
    // A commit that is a path, not a commit.
    server.add_hf_repo("org/evil", "main", "../../x", &[("model.bin", weights.clone())]);
    let hive = hive(dir.path(), Some(server.base())).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;

    client.fetch_model(hf("org/meta", "hf://org/meta")).await.unwrap();
    let end = final_record(&mut stream, "org/meta").await;
    assert_eq!(end.phase, pb::DownloadPhase::Done as i32, "{end:?}");
    assert_eq!(std::fs::read(dir.path().join("org--meta/model.bin")).unwrap(), weights);
    assert!(!dir.path().join("org--meta/.gitattributes").exists());

    client.fetch_model(hf("org/clash", "hf://org/clash")).await.unwrap();
    let end = final_record(&mut stream, "org/clash").await;
    assert_eq!(end.phase, pb::DownloadPhase::Failed as i32, "{end:?}");
    assert!(end.error.as_deref().unwrap_or_default().contains(".part"), "{end:?}");

    let gets = server.gets();
    client.fetch_model(hf("org/evil", "hf://org/evil")).await.unwrap();
    let end = final_record(&mut stream, "org/evil").await;
    assert_eq!(end.phase, pb::DownloadPhase::Failed as i32, "{end:?}");
    assert!(end.error.as_deref().unwrap_or_default().contains("commit"), "{end:?}");
    assert_eq!(server.gets(), gets, "no file was requested with the token");

    let e = client.fetch_model(hf("org/x", "hf://org/x@../../y")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert_eq!(std::fs::read_dir(dir.path().join(".partial")).unwrap().count(), 0);
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn a_resume_refuses_a_206_of_another_version_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let (old, new) = (generated(4 << 20, 13), generated(4 << 20, 14));
    let url = server.add("w.bin", old.clone());
    let grown = generated(5 << 20, 15);
    let url2 = server.add("g.bin", old.clone());
    server.throttle(1 << 20);
    let hive = hive(dir.path(), None).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    // No size or sha256 declared: only the resume's checks stand between the two
    // versions and a mixed file.
    client.fetch_model(fetch_url("changed", &url, None, None)).await.unwrap();
    client.fetch_model(fetch_url("grown", &url2, None, None)).await.unwrap();
    for model in ["changed", "grown"] {
        stream.until(|m| download_of(m, model).filter(|d| d.bytes_done >= 1 << 20)).await;
    }
    hive.stop().await.unwrap();

    // While the hive is down the files change, and the server ignores If-Range.
    server.replace("w.bin", new.clone());
    server.replace("g.bin", grown.clone());
    server.ignore_if_range(true);
    server.throttle(0);
    let hive = self::hive(dir.path(), None).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    for (model, data) in [("changed", &new), ("grown", &grown)] {
        let end = final_record(&mut stream, model).await;
        assert_eq!(end.phase, pb::DownloadPhase::Done as i32, "{model}: {end:?}");
        let got = std::fs::read(dir.path().join(model).join(Path::new(&url_file(model)))).unwrap();
        assert!(got == *data, "{model}: the file is the new version, not a mix");
        let caps = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
        let entry = caps.models.iter().find(|m| m.id == model).unwrap();
        assert_eq!(entry.files[0].sha256.as_deref(), Some(sha256_hex(data).as_str()));
    }
    hive.stop().await.unwrap();
}

fn url_file(model: &str) -> &'static str {
    if model == "changed" { "w.bin" } else { "g.bin" }
}

/// The state of `model` if `m` is a diff that adds or changes it.
fn model_change(m: &pb::HiveMessage, model: &str) -> Option<pb::Model> {
    let d = as_diff(m)?;
    d.models_added.into_iter().chain(d.models_changed).find(|x| x.id == model)
}

#[tokio::test]
async fn a_hand_copied_file_still_being_written_is_not_frozen_as_ready() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    // A quiet period (the rescan interval) far longer than the copier's pauses, so a
    // busy machine cannot stretch a pause past it.
    let mut config = models_config("hostile-hive", dir.path(), None);
    config.models.as_mut().unwrap().rescan = std::time::Duration::from_secs(1);
    let hive = TestHive::start_with(config).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    stream.until(as_snapshot).await;
    let data = generated(3 << 20, 16);
    let model_dir = dir.path().join("slow");
    std::fs::create_dir_all(&model_dir).unwrap();
    let path = model_dir.join("w.bin");
    // A slow copy: 64 KiB every 50 ms, with the file standing still in between for
    // longer than a hash of it takes.
    let copier = {
        let (path, data) = (path.clone(), data.clone());
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::create(&path).unwrap();
            for chunk in data.chunks(64 << 10) {
                f.write_all(chunk).unwrap();
                f.flush().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
    };
    let ready =
        stream.until(|m| model_change(m, "slow").filter(|x| x.state == pb::ModelState::Ready as i32)).await;
    assert!(copier.is_finished(), "ready while the copy was still running: {ready:?}");
    assert_eq!(ready.files[0].sha256.as_deref(), Some(sha256_hex(&data).as_str()), "the whole file");
    copier.await.unwrap();

    // The file changes after it was verified: the model is verified again.
    let more = generated(1 << 20, 17);
    std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&more).unwrap();
    let again =
        stream.until(|m| model_change(m, "slow").filter(|x| x.state != pb::ModelState::Ready as i32)).await;
    assert_eq!(again.state, pb::ModelState::Unverified as i32, "{again:?}");
    let ready =
        stream.until(|m| model_change(m, "slow").filter(|x| x.state == pb::ModelState::Ready as i32)).await;
    let whole: Vec<u8> = data.iter().chain(&more).copied().collect();
    assert_eq!(ready.files[0].sha256.as_deref(), Some(sha256_hex(&whole).as_str()));
    assert_eq!(ready.size_bytes, whole.len() as u64);
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn the_free_disk_check_counts_downloads_in_flight_and_sizes_cannot_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let url = server.add("w.bin", generated(2 << 20, 18));
    server.throttle(256 << 10);
    let mut config = models_config("hostile-hive", dir.path(), None);
    config.models.as_mut().unwrap().max_downloads = 1;
    let hive = TestHive::start_with(config).await;
    let mut client = hive.client().await;
    // One download runs (slowly); a second, declaring 60% of the free disk, waits for
    // its slot: its bytes are promised already.
    client.fetch_model(fetch_url("running", &url, Some(2 << 20), None)).await.unwrap();
    let free = rbee_hive::models::disk::space(dir.path()).unwrap().free_bytes;
    let big = free / 10 * 6;
    client.fetch_model(fetch_url("queued", &server.url("big.bin"), Some(big), None)).await.unwrap();
    // A third of the same size fits the free disk alone, but not with the queued one.
    let e =
        client.fetch_model(fetch_url("third", &server.url("big.bin"), Some(big), None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("not enough disk space"), "{}", e.message());

    // Declared sizes that add past u64 are refused precisely; the hive keeps serving.
    let mut request = fetch_url("overflow", &url, Some(u64::MAX), None);
    if let Some(pb::fetch_model_request::Source::Urls(u)) = &mut request.source {
        u.files.push(pb::FileSource {
            url: server.url("b.bin"),
            path: Some("b.bin".into()),
            size_bytes: Some(1),
            sha256: None,
        });
    }
    let e = client.fetch_model(request).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("2^64"), "{}", e.message());
    for model in ["queued", "running"] {
        client.cancel_fetch(pb::CancelFetchRequest { model_id: model.into() }).await.unwrap();
    }
    client.discover(pb::DiscoverRequest {}).await.unwrap();
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn a_fetch_naming_other_content_than_the_model_has_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let data = generated(1 << 20, 19);
    let url = server.add("w.bin", data.clone());
    let hive = hive(dir.path(), None).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    let sha = sha256_hex(&data);
    let other = sha256_hex(b"other");
    client.fetch_model(fetch_url("pinned", &url, None, Some(sha.clone()))).await.unwrap();
    assert_eq!(final_record(&mut stream, "pinned").await.phase, pb::DownloadPhase::Done as i32);

    let e = client.fetch_model(fetch_url("pinned", &url, None, Some(other.clone()))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("ready with other content") && e.message().contains(&sha),
        "{}",
        e.message()
    );
    let e = client.fetch_model(fetch_url("pinned", &url, Some(7), None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    for same in [Some(sha.clone()), None] {
        let r = client.fetch_model(fetch_url("pinned", &url, None, same)).await.unwrap().into_inner();
        assert!(r.already_ready, "{r:?}");
    }

    // Joining a running download asks for its content too.
    server.throttle(256 << 10);
    let url2 = server.add("w2.bin", data.clone());
    client.fetch_model(fetch_url("running", &url2, None, Some(sha.clone()))).await.unwrap();
    let e = client.fetch_model(fetch_url("running", &url2, None, Some(other))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("running"), "{}", e.message());
    let r = client.fetch_model(fetch_url("running", &url2, None, Some(sha))).await.unwrap().into_inner();
    assert!(r.joined, "{r:?}");
    client.cancel_fetch(pb::CancelFetchRequest { model_id: "running".into() }).await.unwrap();
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn a_dripping_server_does_not_hold_a_download_slot() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let data = generated(1 << 20, 20);
    let url = server.add("w.bin", data.clone());
    server.drip(100);
    let mut config = models_config("hostile-hive", dir.path(), None);
    let models = config.models.as_mut().unwrap();
    models.max_downloads = 1;
    models.min_progress = rbee_hive::models::download::MinProgress {
        bytes: 64 << 10,
        window: std::time::Duration::from_millis(500),
    };
    let hive = TestHive::start_with(config).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    client.fetch_model(fetch_url("dripped", &url, None, None)).await.unwrap();
    let end = final_record(&mut stream, "dripped").await;
    assert_eq!(end.phase, pb::DownloadPhase::Failed as i32, "{end:?}");
    assert!(end.error.as_deref().unwrap_or_default().contains("too slow"), "{end:?}");
    assert_eq!(std::fs::read_dir(dir.path().join(".partial")).unwrap().count(), 0, "nothing left");

    // The slot is free again: the next download runs.
    server.drip(0);
    client.fetch_model(fetch_url("next", &url, None, Some(sha256_hex(&data)))).await.unwrap();
    assert_eq!(final_record(&mut stream, "next").await.phase, pb::DownloadPhase::Done as i32);
    hive.stop().await.unwrap();
}

/// Two file servers on ports P and P' where P' is P followed by a digit (2880 and
/// 28801): a text-prefix comparison of their URLs would take one for the other.
async fn lookalike_ports() -> (FileServer, FileServer) {
    let start = 2000 + (std::process::id() % 4000) as u16;
    for p in (start..6500).chain(2000..start) {
        let Ok(a) = FileServer::start_at(([127, 0, 0, 1], p).into()).await else { continue };
        if let Ok(b) = FileServer::start_at(([127, 0, 0, 1], p * 10 + 1).into()).await {
            return (a, b);
        }
    }
    panic!("no free pair of ports P, P*10+1");
}

#[tokio::test]
async fn the_hub_token_goes_only_to_the_hubs_origin_never_to_its_cdn_or_a_lookalike_port() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, lookalike) = lookalike_ports().await;
    assert!(lookalike.base().starts_with(&hub.base()), "{} {}", hub.base(), lookalike.base());
    let weights = generated(1 << 20, 30);
    hub.add_hf_repo("org/tok", "main", "0123abcd", &[("model.bin", weights.clone())]);
    // The Hub redirects the file to its CDN, on another origin.
    let cdn = FileServer::start().await;
    let blob = cdn.add("blobs/model.bin", weights.clone());
    hub.redirect("org/tok/resolve/0123abcd/model.bin", &blob);
    let hive = hive(dir.path(), Some(hub.base())).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;

    client.fetch_model(hf("org/tok", "hf://org/tok")).await.unwrap();
    let end = final_record(&mut stream, "org/tok").await;
    assert_eq!(end.phase, pb::DownloadPhase::Done as i32, "{end:?}");
    assert_eq!(std::fs::read(dir.path().join("org--tok/model.bin")).unwrap(), weights);
    assert_eq!(hub.hub_authorizations(), ["Bearer test-token"], "the Hub API gets the token");
    let cdn_seen = cdn.requests();
    assert!(!cdn_seen.is_empty() && cdn_seen.iter().all(|(_, a)| a.is_none()), "the CDN got {cdn_seen:?}");

    // A URL on port P' (whose decimal starts with the Hub's port) is another origin.
    let url = lookalike.add("w.bin", weights.clone());
    client.fetch_model(fetch_url("lookalike", &url, None, None)).await.unwrap();
    let end = final_record(&mut stream, "lookalike").await;
    assert_eq!(end.phase, pb::DownloadPhase::Done as i32, "{end:?}");
    let seen = lookalike.requests();
    assert!(!seen.is_empty() && seen.iter().all(|(_, a)| a.is_none()), "port P' got {seen:?}");
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn a_hub_listing_over_its_byte_cap_or_the_file_cap_is_refused_without_buffering_it() {
    use rbee_hive::models::hf::MAX_LISTING_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let hub = FileServer::start().await;
    // A listing four times the cap, of well-formed entries.
    let entry = r#"{"rfilename":"model-00001.bin","size":1},"#;
    let body = entry.repeat((4 * MAX_LISTING_BYTES as usize) / entry.len());
    let doc = format!(r#"{{"id":"org/huge","sha":"0123abcd","siblings":[{}]}}"#, body.trim_end_matches(','));
    let doc_len = doc.len() as u64;
    hub.add_json("api/models/org/huge/revision/main", doc.clone());
    hub.add_json("api/models/org/huge/revision/sized", doc);
    // 513 files: one more than a model may have.
    let files: Vec<(String, Vec<u8>)> =
        (0..=MAX_MODEL_FILES).map(|i| (format!("f{i:04}.bin"), vec![1u8])).collect();
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    hub.add_hf_repo("org/many", "main", "0123abce", &files);
    let hive = hive(dir.path(), Some(hub.base())).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;

    // Without a Content-Length the hive reads up to the cap and stops.
    hub.json_unsized(true);
    client.fetch_model(hf("org/huge", "hf://org/huge")).await.unwrap();
    let end = final_record(&mut stream, "org/huge").await;
    assert_eq!(end.phase, pb::DownloadPhase::Failed as i32, "{end:?}");
    let e = end.error.unwrap_or_default();
    assert!(e.contains("listing is larger than"), "{e}");
    let sent = hub.json_bytes_sent();
    assert!(sent < doc_len / 2, "the hive read {sent} of {doc_len} bytes");
    // With a Content-Length over the cap it reads nothing of the body.
    hub.json_unsized(false);
    client.fetch_model(hf("org/huge2", "hf://org/huge@sized")).await.unwrap();
    let end = final_record(&mut stream, "org/huge2").await;
    assert!(end.error.unwrap_or_default().contains("listing is larger than"));

    client.fetch_model(hf("org/many", "hf://org/many")).await.unwrap();
    let end = final_record(&mut stream, "org/many").await;
    assert_eq!(end.phase, pb::DownloadPhase::Failed as i32, "{end:?}");
    let e = end.error.unwrap_or_default();
    assert!(e.contains("513 files") && e.contains("512"), "{e}");
    assert_eq!(hub.gets(), 0, "no file was fetched");
    assert_eq!(std::fs::read_dir(dir.path().join(".partial")).unwrap().count(), 0);
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn a_model_without_regular_files_is_never_ready() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("weights.bin"), generated(1 << 20, 31)).unwrap();
    // A manifest of no files (as an older hive wrote for a directory of symlinks).
    let empty = dir.path().join("org--empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(
        empty.join(".rbee-model.json"),
        r#"{"id":"org/empty","files":[],"source":"hand-copied","ready_at_unix_ms":1}"#,
    )
    .unwrap();
    let hive = hive(dir.path(), None).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    // A hand-copied directory holding only symlinks (to a file, and to a directory).
    let links = dir.path().join("org--links");
    std::fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(outside.path().join("weights.bin"), links.join("model.bin")).unwrap();
    std::os::unix::fs::symlink(outside.path(), links.join("sub")).unwrap();

    // Follow both entries through the snapshot and the diffs until each has a reason.
    let mut seen = std::collections::BTreeMap::new();
    let seen = stream
        .until(|m| {
            let models = match (as_snapshot(m), as_diff(m)) {
                (Some(snap), _) => snap.capabilities.map(|c| c.models).unwrap_or_default(),
                (_, Some(d)) => d.models_added.into_iter().chain(d.models_changed).collect(),
                _ => Vec::new(),
            };
            for x in models.into_iter().filter(|x| x.id == "org/links" || x.id == "org/empty") {
                assert_ne!(
                    x.state,
                    pb::ModelState::Ready as i32,
                    "a model without files became ready: {x:?}"
                );
                seen.insert(x.id.clone(), x);
            }
            (seen.len() == 2 && seen.values().all(|x| x.error.is_some())).then(|| seen.clone())
        })
        .await;
    for m in seen.values() {
        assert_eq!(m.state, pb::ModelState::Unverified as i32, "{m:?}");
        assert!(m.error.as_deref().unwrap_or_default().contains("no regular files"), "{m:?}");
    }
    let caps = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
    for id in ["org/links", "org/empty"] {
        let m = caps.models.iter().find(|m| m.id == id).unwrap();
        assert_eq!(m.state, pb::ModelState::Unverified as i32, "{m:?}");
    }
    hive.stop().await.unwrap();
}

/// A Hub listing of `siblings` (JSON objects) pinned to a good commit.
fn listing(repo: &str, siblings: &[String]) -> String {
    format!(r#"{{"id":"{repo}","sha":"0123abcd","siblings":[{}]}}"#, siblings.join(","))
}

fn sibling(name: &str, sha256: &str) -> String {
    format!(r#"{{"rfilename":"{name}","size":1,"lfs":{{"sha256":"{sha256}","size":1}}}}"#)
}

#[tokio::test]
async fn hub_listing_entries_are_checked_like_url_sources_and_the_error_names_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let hub = FileServer::start().await;
    let good = sha256_hex(&[1u8]);
    // A hash of a megabyte of "Z": it would grow every record and Discover answer that
    // carries the model.
    let huge = "Z".repeat(1 << 20);
    hub.add_json("api/models/org/hash/revision/main", listing("org/hash", &[sibling("w.bin", &huge)]));
    hub.add_json("api/models/org/short/revision/main", listing("org/short", &[sibling("w.bin", "abc")]));
    hub.add_json(
        "api/models/org/dup/revision/main",
        listing("org/dup", &[sibling("w", &good), sibling("w", &good)]),
    );
    hub.add_json(
        "api/models/org/clash/revision/main",
        listing("org/clash", &[sibling("x", &good), sibling("x/y", &good)]),
    );
    for (repo, name) in [("org/hash", "w.bin"), ("org/short", "w.bin"), ("org/dup", "w"), ("org/clash", "x")]
    {
        hub.add(&format!("{repo}/resolve/0123abcd/{name}"), vec![1u8]);
    }
    hub.add("org/clash/resolve/0123abcd/x/y", vec![1u8]);
    let hive = hive(dir.path(), Some(hub.base())).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;

    for (repo, want) in [
        ("org/hash", r#"file "w.bin": lfs.sha256 is not 64 hex digits"#),
        ("org/short", r#"file "w.bin": lfs.sha256 is not 64 hex digits"#),
        ("org/dup", r#"file "w" appears twice"#),
        ("org/clash", r#"file "x" is also the directory of file "x/y""#),
    ] {
        client.fetch_model(hf(repo, &format!("hf://{repo}"))).await.unwrap();
        let end = final_record(&mut stream, repo).await;
        assert_eq!(end.phase, pb::DownloadPhase::Failed as i32, "{repo}: {:.300?}", end);
        let e = end.error.unwrap_or_default();
        assert!(e.contains(want) && e.len() < 1000, "{repo}: {} bytes: {:.300}", e.len(), e);
    }
    assert_eq!(hub.gets(), 0, "no file of a refused listing was fetched");
    // A URL list is held to the same rule, at once.
    let file = |path: &str| pb::FileSource {
        url: hub.url(&format!("org/clash/resolve/0123abcd/{path}")),
        path: Some(path.into()),
        size_bytes: None,
        sha256: None,
    };
    let request = pb::FetchModelRequest {
        model_id: "urls-clash".into(),
        source: Some(pb::fetch_model_request::Source::Urls(pb::UrlSource {
            files: vec![file("x/y"), file("x")],
        })),
        ..Default::default()
    };
    let e = client.fetch_model(request).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(r#"file "x" is also the directory of file "x/y""#), "{}", e.message());
    assert_eq!(hub.gets(), 0);
    // The catalog (what Discover and every subscriber get) stays small.
    let caps = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
    let size = prost::Message::encoded_len(&caps);
    assert!(size < 64 << 10, "Discover is {size} bytes");
    assert_eq!(std::fs::read_dir(dir.path().join(".partial")).unwrap().count(), 0);
    hive.stop().await.unwrap();
}

/// Asserts `text` holds none of the secrets a URL carried.
fn assert_no_secret(what: &str, text: &str) {
    for secret in ["PASSWORD", "SECRET", "AKIA", "alice"] {
        assert!(!text.contains(secret), "{what} shows {secret:?}: {text}");
    }
}

#[tokio::test]
async fn credentials_in_a_url_reach_no_error_record_or_manifest() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let data = generated(2 << 20, 21);
    server.add("w.bin", data.clone());
    let signed = |path: &str| {
        let base = server.url(path).replacen("http://", "http://alice:PASSWORD@", 1);
        format!("{base}?X-Amz-Signature=SECRET&X-Amz-Credential=AKIAXXXX%2Fus-east-1")
    };
    let hive = hive(dir.path(), None).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;

    // A 404: the error keeps the URL's host, path and query names, not its secrets.
    client.fetch_model(fetch_url("gone", &signed("missing.bin"), None, None)).await.unwrap();
    let end = final_record(&mut stream, "gone").await;
    assert_eq!(end.phase, pb::DownloadPhase::Failed as i32, "{end:?}");
    let e = end.error.unwrap_or_default();
    assert!(e.contains("HTTP 404") && e.contains("missing.bin?X-Amz-Signature&X-Amz-Credential"), "{e}");
    assert_no_secret("the download record", &e);
    let caps = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
    assert_no_secret("Discover", &format!("{caps:?}"));

    // A success: while it runs, the records that keep the whole URL (to resume) are
    // the hive's own (0600); the manifest it leaves holds no secret.
    server.throttle(4 << 20);
    client.fetch_model(fetch_url("signed", &signed("w.bin"), Some(data.len() as u64), None)).await.unwrap();
    stream.until(|m| download_of(m, "signed").filter(|d| d.bytes_done > 0)).await;
    let partial = std::fs::read_dir(dir.path().join(".partial")).unwrap().next().unwrap().unwrap().path();
    for record in ["fetch.json", "w.bin.part.json"] {
        let mode = std::fs::metadata(partial.join(record)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{record}");
    }
    let end = final_record(&mut stream, "signed").await;
    assert_eq!(end.phase, pb::DownloadPhase::Done as i32, "{end:?}");
    let manifest = std::fs::read_to_string(dir.path().join("signed/.rbee-model.json")).unwrap();
    assert!(manifest.contains("/w.bin?X-Amz-Signature"), "{manifest}");
    assert_no_secret("the manifest", &manifest);
    let caps = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
    assert_no_secret("Discover", &format!("{caps:?}"));
    hive.stop().await.unwrap();

    // A Hub endpoint with credentials (as a hive embedded elsewhere may be given): the
    // fetch fails before any request, and says so without them.
    let hub = FileServer::start().await;
    hub.add_hf_repo("org/r", "main", "0123abcd", &[("w.bin", vec![1u8])]);
    let dir = tempfile::tempdir().unwrap();
    let endpoint = hub.base().replacen("http://", "http://alice:PASSWORD@", 1);
    let hive = self::hive(dir.path(), Some(endpoint)).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    client.fetch_model(hf("org/r", "hf://org/r")).await.unwrap();
    let end = final_record(&mut stream, "org/r").await;
    assert_eq!(end.phase, pb::DownloadPhase::Failed as i32, "{end:?}");
    let e = end.error.unwrap_or_default();
    assert!(e.contains("HF_ENDPOINT") && e.contains("HF_TOKEN"), "{e}");
    assert_no_secret("the download record", &e);
    assert_eq!(hub.requests(), [], "no Basic auth went to the Hub");
    hive.stop().await.unwrap();
}
