//! A fetch prefers a peer (issue 27): real hives on 127.0.0.1:0, the counting Range
//! server as the origin, and a scripted peer that serves wrong bytes. The origin serves
//! nothing a peer holds; a peer that dies is resumed from the next source at the same
//! offset; wrong bytes are caught by the sha256 and not counted; refused peer addresses
//! are INVALID_ARGUMENT; over mutual TLS a peer must carry its hive id and a hive
//! without a client certificate reads nothing.

mod common;

use std::path::Path;
use std::pin::Pin;

use common::*;
use futures::{Stream, StreamExt};
use rbee_hive::HiveConfig;
use rbee_hive::models::peer_fetch_dial::{PeerDialer, PeerTls};
use rbee_proto::v1 as pb;
use rbee_proto::v1::hive_server::{Hive, HiveServer};
use tonic::{Request, Response, Status, Streaming};

/// The main test file's size: several of the server's chunks, small enough for CI.
const SIZE: usize = 24 << 20;

fn hive_config(id: &str, dir: &Path, edit: impl FnOnce(&mut rbee_hive::models::ModelsConfig)) -> HiveConfig {
    let mut config = models_config(id, dir, None);
    edit(config.models.as_mut().unwrap());
    config
}

/// The model's files, as the queen hands them to a fetching hive.
fn files_of(files: &[(&str, &[u8])]) -> Vec<pb::ModelFile> {
    files
        .iter()
        .map(|(path, data)| pb::ModelFile {
            path: (*path).into(),
            size_bytes: data.len() as u64,
            sha256: Some(http_files::sha256_hex(data)),
        })
        .collect()
}

fn peer(address: String, hive_id: &str) -> pb::PeerSource {
    pb::PeerSource { address, hive_id: hive_id.into(), partial: false }
}

/// A fetch of `url` as `w.bin` of `model`, from `peers` first (with the peer files when
/// there are peers).
fn fetch(model: &str, url: &str, data: &[u8], peers: Vec<pb::PeerSource>) -> pb::FetchModelRequest {
    let peer_files = if peers.is_empty() { Vec::new() } else { files_of(&[("w.bin", data)]) };
    pb::FetchModelRequest {
        peers,
        peer_files,
        ..fetch_url(model, url, Some(data.len() as u64), Some(http_files::sha256_hex(data)))
    }
}

/// Waits for the final record of `model` on `stream`.
async fn final_record(stream: &mut TestStream, model: &str) -> pb::DownloadProgress {
    stream
        .until(|m| {
            let d = download_of(m, model)?;
            let phase = pb::DownloadPhase::try_from(d.phase).unwrap();
            matches!(
                phase,
                pb::DownloadPhase::Done | pb::DownloadPhase::Failed | pb::DownloadPhase::Cancelled
            )
            .then_some(d)
        })
        .await
}

fn sources(d: &pb::DownloadProgress) -> Vec<(String, u64)> {
    d.sources.iter().map(|s| (s.source.clone(), s.bytes)).collect()
}

/// Fetches `request` on `hive` and waits for its end.
async fn fetch_to_end(hive: &TestHive, request: pb::FetchModelRequest) -> pb::DownloadProgress {
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    let model = request.model_id.clone();
    client.fetch_model(request).await.expect("FetchModel accepted");
    final_record(&mut stream, &model).await
}

#[tokio::test]
async fn a_second_hive_reads_the_model_from_the_first_and_the_origin_serves_nothing() {
    let origin = http_files::FileServer::start().await;
    let data = http_files::generated(SIZE, 1);
    let url = origin.add("w.bin", data.clone());
    let (dir_a, dir_b, dir_c) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestHive::start_with(hive_config("hive-a", dir_a.path(), |_| {})).await;
    let done = fetch_to_end(&a, fetch("m", &url, &data, vec![])).await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    assert_eq!(sources(&done), [("origin".to_owned(), SIZE as u64)]);
    let served = origin.bytes_sent();

    let b = TestHive::start_with(hive_config("hive-b", dir_b.path(), |_| {})).await;
    let done = fetch_to_end(&b, fetch("m", &url, &data, vec![peer(a.url(), "hive-a")])).await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    assert_eq!(origin.bytes_sent(), served, "the origin served bytes a peer holds");
    assert_eq!(std::fs::read(dir_b.path().join("m/w.bin")).unwrap(), data);
    assert_eq!(sources(&done), [("hive-a".to_owned(), SIZE as u64)]);

    // With no origin at all: the peers' files are the model.
    let c = TestHive::start_with(hive_config("hive-c", dir_c.path(), |_| {})).await;
    let request =
        pb::FetchModelRequest { source: None, ..fetch("m", &url, &data, vec![peer(b.url(), "hive-b")]) };
    let done = fetch_to_end(&c, request).await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    assert_eq!(std::fs::read(dir_c.path().join("m/w.bin")).unwrap(), data);
    assert_eq!(sources(&done), [("hive-b".to_owned(), SIZE as u64)]);
    assert_eq!(origin.bytes_sent(), served);
}

#[tokio::test]
async fn a_peer_killed_mid_transfer_is_resumed_from_the_origin_at_the_same_offset() {
    let origin = http_files::FileServer::start().await;
    let data = http_files::generated(SIZE, 2);
    let url = origin.add("w.bin", data.clone());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A holds the model and serves it slowly, so that B is mid-file when A dies.
    let a =
        TestHive::start_with(hive_config("hive-a", dir_a.path(), |m| m.serve.upload_limit = Some(4 << 20)))
            .await;
    let done = fetch_to_end(&a, fetch("m", &url, &data, vec![])).await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    let (served, gets) = (origin.bytes_sent(), origin.gets());

    let b = TestHive::start_with(hive_config("hive-b", dir_b.path(), |_| {})).await;
    let mut client = b.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    client.fetch_model(fetch("m", &url, &data, vec![peer(a.url(), "hive-a")])).await.unwrap();
    let seen = stream.until(|m| download_of(m, "m").filter(|d| d.bytes_done >= 2 << 20)).await;
    assert_eq!(sources(&seen).first().map(|s| s.0.as_str()), Some("hive-a"));
    a.kill().await;
    let done = final_record(&mut stream, "m").await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    assert_eq!(std::fs::read(dir_b.path().join("m/w.bin")).unwrap(), data);

    // The origin sent the rest, from where A stopped: no byte twice.
    let from_origin = origin.bytes_sent() - served;
    let got = sources(&done);
    let (peer_bytes, origin_bytes) = (got[0].1, got[1].1);
    assert_eq!((got[0].0.as_str(), got[1].0.as_str()), ("hive-a", "origin"), "{got:?}");
    assert_eq!(peer_bytes + origin_bytes, SIZE as u64, "{got:?}");
    assert_eq!(from_origin, origin_bytes, "the origin sent what the record says");
    assert!(
        from_origin <= SIZE as u64 - seen.bytes_done,
        "{from_origin} bytes from the origin after {} from A",
        seen.bytes_done
    );
    assert_eq!(origin.gets() - gets, 1, "one GET of the rest from the origin");
}

/// What a scripted peer's ReadModelFile does wrong.
#[derive(Clone, Copy)]
enum Fault {
    /// Serves the file with its last byte flipped.
    Corrupt,
    /// Sends this many bytes, then nothing, keeping the stream open.
    StallAfter(usize),
    /// Sends this many bytes, then fails with a long message.
    FailAfter(usize),
}

/// A hive whose ReadModelFile serves its one file with a [`Fault`]; nothing else.
#[derive(Clone)]
struct Corrupting {
    data: Vec<u8>,
    fault: Fault,
}

/// Serves a scripted peer on 127.0.0.1:0; returns its address.
async fn scripted_peer(data: &[u8], fault: Fault) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HiveServer::new(Corrupting { data: data.to_vec(), fault }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    address
}

type Chunks = Pin<Box<dyn Stream<Item = Result<pb::ModelFileChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Hive for Corrupting {
    async fn discover(
        &self,
        _: Request<pb::DiscoverRequest>,
    ) -> Result<Response<pb::DiscoverResponse>, Status> {
        Err(Status::unimplemented("a corrupting peer"))
    }

    type MetricsStreamStream = Pin<Box<dyn Stream<Item = Result<pb::HiveMessage, Status>> + Send>>;

    async fn metrics_stream(
        &self,
        _: Request<Streaming<pb::QueenMessage>>,
    ) -> Result<Response<Self::MetricsStreamStream>, Status> {
        Err(Status::unimplemented("a corrupting peer"))
    }

    async fn fetch_model(
        &self,
        _: Request<pb::FetchModelRequest>,
    ) -> Result<Response<pb::FetchModelResponse>, Status> {
        Err(Status::unimplemented("a corrupting peer"))
    }

    async fn cancel_fetch(
        &self,
        _: Request<pb::CancelFetchRequest>,
    ) -> Result<Response<pb::CancelFetchResponse>, Status> {
        Err(Status::unimplemented("a corrupting peer"))
    }

    async fn delete_model(
        &self,
        _: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        Err(Status::unimplemented("a corrupting peer"))
    }

    async fn preload_model(
        &self,
        _: Request<pb::PreloadModelRequest>,
    ) -> Result<Response<pb::PreloadModelResponse>, Status> {
        Err(Status::unimplemented("a corrupting peer"))
    }

    async fn evict_model(
        &self,
        _: Request<pb::EvictModelRequest>,
    ) -> Result<Response<pb::EvictModelResponse>, Status> {
        Err(Status::unimplemented("a corrupting peer"))
    }

    type ReadModelFileStream = Chunks;

    async fn read_model_file(
        &self,
        request: Request<pb::ReadModelFileRequest>,
    ) -> Result<Response<Chunks>, Status> {
        let offset = request.into_inner().offset as usize;
        let mut data = self.data.clone();
        let last = data.len() - 1;
        let end = match self.fault {
            Fault::Corrupt => {
                data[last] ^= 0xff;
                data.len()
            }
            Fault::StallAfter(n) | Fault::FailAfter(n) => (offset + n).min(data.len()),
        };
        let size = data.len() as u64;
        let chunks: Vec<_> = data[offset..end]
            .chunks(1 << 20)
            .enumerate()
            .map(|(i, c)| {
                Ok(pb::ModelFileChunk {
                    offset: (offset + i * (1 << 20)) as u64,
                    data: c.to_vec(),
                    size_bytes: (i == 0).then_some(size),
                    sha256: None,
                })
            })
            .collect();
        if let Fault::StallAfter(_) = self.fault {
            // The stream stays open and silent: only the minimum-progress rule ends it.
            let silent = futures::stream::pending();
            return Ok(Response::new(Box::pin(futures::stream::iter(chunks).chain(silent))));
        }
        if let Fault::FailAfter(_) = self.fault {
            let failed = Err(Status::internal(format!("disk on fire {}", "!".repeat(4000))));
            return Ok(Response::new(Box::pin(
                futures::stream::iter(chunks).chain(futures::stream::iter([failed])),
            )));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

#[tokio::test]
async fn a_peer_serving_wrong_bytes_is_caught_and_the_next_source_finishes_the_file() {
    let origin = http_files::FileServer::start().await;
    let data = http_files::generated(SIZE, 3);
    let url = origin.add("w.bin", data.clone());
    let evil = scripted_peer(&data, Fault::Corrupt).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestHive::start_with(hive_config("hive-a", dir_a.path(), |_| {})).await;
    assert_eq!(fetch_to_end(&a, fetch("m", &url, &data, vec![])).await.phase, pb::DownloadPhase::Done as i32);
    let served = origin.bytes_sent();

    // The corrupting peer first: its file fails the sha256, it is dropped, A serves the
    // file from byte 0 (and the origin nothing).
    let b = TestHive::start_with(hive_config("hive-b", dir_b.path(), |_| {})).await;
    let done =
        fetch_to_end(&b, fetch("m", &url, &data, vec![peer(evil.clone(), "evil"), peer(a.url(), "hive-a")]))
            .await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    assert_eq!(std::fs::read(dir_b.path().join("m/w.bin")).unwrap(), data);
    assert_eq!(sources(&done), [("hive-a".to_owned(), SIZE as u64)], "the bad peer's bytes are not counted");
    assert_eq!(origin.bytes_sent(), served);

    // With only the corrupting peer, the origin serves the whole file again.
    let done = fetch_to_end(&b, fetch("m2", &url, &data, vec![peer(evil, "evil")])).await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    assert_eq!(std::fs::read(dir_b.path().join("m2/w.bin")).unwrap(), data);
    assert_eq!(sources(&done), [("origin".to_owned(), SIZE as u64)]);
}

#[tokio::test]
async fn refused_peer_addresses_are_invalid_argument_and_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hive = TestHive::start_with(hive_config("hive-b", dir.path(), |_| {})).await;
    let mut client = hive.client().await;
    let data = b"weights".to_vec();
    let url = "http://127.0.0.1:9/w.bin";
    for (address, why) in [
        ("http://169.254.169.254:80", "link-local"),
        ("http://[::ffff:169.254.169.254]:80", "link-local"),
        ("http://2852039166:80", "link-local"),
        ("https://169.254.169.254:443", "link-local"),
        ("http://127.0.0.1:7834/models", "path"),
    ] {
        let e =
            client.fetch_model(fetch("m", url, &data, vec![peer(address.into(), "p")])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{address}: {e:?}");
        assert!(
            e.message().contains("peers[0].address") && e.message().contains(why),
            "{address}: {}",
            e.message()
        );
    }
    // Not a hive: the origin's name, this hive's id, this hive's own listener.
    let own = format!("http://127.0.0.1:{}", hive.addr.port());
    let own_localhost = format!("localhost:{}", hive.addr.port());
    for (p, field, why) in [
        (peer("http://127.0.0.1:1".into(), "origin"), "peers[0].hive_id", "origin"),
        (peer("http://127.0.0.1:1".into(), "hive-b"), "peers[0].hive_id", "this hive"),
        (peer(own, "other"), "peers[0].address", "own listener"),
        (peer(own_localhost, "other"), "peers[0].address", "own listener"),
    ] {
        let e = client.fetch_model(fetch("m", url, &data, vec![p.clone()])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{p:?}: {e:?}");
        assert!(e.message().contains(field) && e.message().contains(why), "{p:?}: {}", e.message());
    }
    let no_source = pb::FetchModelRequest { source: None, ..fetch("m", url, &data, vec![]) };
    let e = client.fetch_model(no_source).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let no_hashes = pb::FetchModelRequest {
        peer_files: vec![pb::ModelFile { path: "w.bin".into(), size_bytes: 7, sha256: None }],
        ..fetch("m", url, &data, vec![peer("http://127.0.0.1:1".into(), "p")])
    };
    let e = client.fetch_model(no_hashes).await.unwrap_err();
    assert!(e.message().contains("peer_files[0].sha256"), "{e:?}");
    // Nothing started: no catalog entry, no partial directory.
    let caps = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
    assert!(caps.models.is_empty(), "{:?}", caps.models);
    assert_eq!(std::fs::read_dir(dir.path().join(".partial")).map(|d| d.count()).unwrap_or(0), 0);
}

#[tokio::test]
async fn peers_this_hive_cannot_dial_are_skipped_and_the_origin_serves() {
    // A fleet whose hives have no --peer-ca (or no --peer-allow for plaintext): the
    // queen may still offer peers; the hive skips them and fetches as before.
    let origin = http_files::FileServer::start().await;
    let data = http_files::generated(1 << 20, 9);
    let url = origin.add("w.bin", data.clone());
    let dir = tempfile::tempdir().unwrap();
    let hive = TestHive::start_with(hive_config("hive-b", dir.path(), |_| {})).await;
    let unusable = vec![
        peer("https://gpu-2.example:7834".into(), "gpu-2"),
        peer("http://10.1.2.3:7834".into(), "gpu-3"),
        peer("http://gpu-4.example:7834".into(), "gpu-4"),
    ];
    let done = fetch_to_end(&hive, fetch("m", &url, &data, unusable.clone())).await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    assert_eq!(sources(&done), [("origin".to_owned(), data.len() as u64)]);
    assert_eq!(std::fs::read(dir.path().join("m/w.bin")).unwrap(), data);
    // Without an origin there is nothing left to fetch from: refused, naming why.
    let mut client = hive.client().await;
    let no_origin = pb::FetchModelRequest { source: None, ..fetch("m2", &url, &data, unusable) };
    let e = client.fetch_model(no_origin).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("none of them can be dialed") && e.message().contains("--peer-ca"), "{e:?}");
}

#[tokio::test]
async fn over_mutual_tls_a_peer_must_carry_its_hive_id_and_a_hive_without_a_client_certificate_reads_nothing()
{
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path();
    rbee_shared::certs::generate(c, &["localhost".into()], &["localhost".into()]).unwrap();
    let origin = http_files::FileServer::start().await;
    let data = http_files::generated(4 << 20, 4);
    let url = origin.add("w.bin", data.clone());
    let (dir_a, dir_b, dir_c) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A serves over TLS to clients of the queen CA, with a certificate naming "localhost".
    let plain_a = TestHive::start_with(hive_config("localhost", dir_a.path(), |_| {})).await;
    assert_eq!(
        fetch_to_end(&plain_a, fetch("m", &url, &data, vec![])).await.phase,
        pb::DownloadPhase::Done as i32
    );
    plain_a.stop().await.unwrap();
    let mut config = hive_config("localhost", dir_a.path(), |_| {});
    config.tls = Some(
        rbee_shared::tls::server_config(
            &c.join("hive-localhost.pem"),
            &c.join("hive-localhost.key"),
            Some(&c.join("queen-ca.pem")),
        )
        .unwrap(),
    );
    let a = TestHive::start_with(config).await;
    let address = format!("https://localhost:{}", a.addr.port());
    let mut served = origin.bytes_sent();

    // B holds a client certificate of the queen CA and trusts the hive CA.
    let tls =
        PeerTls::from_pem_files(&c.join("hive-ca.pem"), Some((&c.join("queen.pem"), &c.join("queen.key"))))
            .unwrap();
    let b = TestHive::start_with(hive_config("hive-b", dir_b.path(), |m| {
        m.peer_dialer = PeerDialer::new(Some(tls))
    }))
    .await;
    let done = fetch_to_end(&b, fetch("m", &url, &data, vec![peer(address.clone(), "localhost")])).await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    assert_eq!(sources(&done), [("localhost".to_owned(), data.len() as u64)]);
    assert_eq!(origin.bytes_sent(), served, "read over mutual TLS from the peer");
    // The same peer offered as another hive id: its certificate does not carry it.
    let done = fetch_to_end(&b, fetch("m2", &url, &data, vec![peer(address.clone(), "gpu-9")])).await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    assert_eq!(sources(&done), [("origin".to_owned(), data.len() as u64)]);
    served = origin.bytes_sent();

    // C trusts the hive CA but has no client certificate: A reads it nothing.
    let tls = PeerTls::from_pem_files(&c.join("hive-ca.pem"), None).unwrap();
    let hive_c = TestHive::start_with(hive_config("hive-c", dir_c.path(), |m| {
        m.peer_dialer = PeerDialer::new(Some(tls))
    }))
    .await;
    let done = fetch_to_end(&hive_c, fetch("m", &url, &data, vec![peer(address, "localhost")])).await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    assert_eq!(sources(&done), [("origin".to_owned(), data.len() as u64)]);
    assert_eq!(origin.bytes_sent() - served, data.len() as u64);
}

#[tokio::test]
async fn a_stalled_peer_is_dropped_after_the_minimum_progress_window_and_its_bytes_are_kept() {
    let origin = http_files::FileServer::start().await;
    let data = http_files::generated(SIZE, 5);
    let url = origin.add("w.bin", data.clone());
    let first = 3 << 20;
    let stalling = scripted_peer(&data, Fault::StallAfter(first)).await;
    let dir = tempfile::tempdir().unwrap();
    let b = TestHive::start_with(hive_config("hive-b", dir.path(), |m| {
        m.min_progress = rbee_hive::models::download::MinProgress {
            bytes: 64 << 10,
            window: std::time::Duration::from_millis(500),
        };
    }))
    .await;
    let done = fetch_to_end(&b, fetch("m", &url, &data, vec![peer(stalling, "stalling")])).await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    assert_eq!(std::fs::read(dir.path().join("m/w.bin")).unwrap(), data);
    // Its bytes were right (the sha256 of the whole file says so), and the origin sent
    // only the rest.
    let rest = (SIZE - first) as u64;
    assert_eq!(sources(&done), [("stalling".to_owned(), first as u64), ("origin".to_owned(), rest)]);
    assert_eq!(origin.bytes_sent(), rest);
}

#[tokio::test]
async fn a_hive_chains_on_the_prefix_a_downloading_peer_has_so_the_origin_serves_the_model_once() {
    let origin = http_files::FileServer::start().await;
    let data = http_files::generated(SIZE, 6);
    let url = origin.add("w.bin", data.clone());
    // Slow enough that B starts while A is mid-file.
    origin.throttle(8 << 20);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestHive::start_with(hive_config("hive-a", dir_a.path(), |_| {})).await;
    let mut a_client = a.client().await;
    let mut a_stream = TestStream::open(&mut a_client, subscribe(100)).await;
    a_client.fetch_model(fetch("m", &url, &data, vec![])).await.unwrap();
    a_stream.until(|m| download_of(m, "m").filter(|d| d.bytes_done > 1 << 20)).await;

    let b = TestHive::start_with(hive_config("hive-b", dir_b.path(), |_| {})).await;
    let chained = pb::PeerSource { partial: true, ..peer(a.url(), "hive-a") };
    let done = fetch_to_end(&b, fetch("m", &url, &data, vec![chained])).await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    assert_eq!(std::fs::read(dir_b.path().join("m/w.bin")).unwrap(), data);
    assert_eq!(sources(&done), [("hive-a".to_owned(), SIZE as u64)]);
    let a_done = final_record(&mut a_stream, "m").await;
    assert_eq!(a_done.phase, pb::DownloadPhase::Done as i32, "{a_done:?}");
    assert_eq!(origin.bytes_sent(), SIZE as u64, "the origin served the model once");
}

#[tokio::test]
async fn a_restarted_hive_resumes_its_fetch_from_the_same_peers() {
    let origin = http_files::FileServer::start().await;
    let data = http_files::generated(SIZE, 7);
    let url = origin.add("w.bin", data.clone());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a =
        TestHive::start_with(hive_config("hive-a", dir_a.path(), |m| m.serve.upload_limit = Some(8 << 20)))
            .await;
    assert_eq!(fetch_to_end(&a, fetch("m", &url, &data, vec![])).await.phase, pb::DownloadPhase::Done as i32);
    let served = origin.bytes_sent();

    let b = TestHive::start_with(hive_config("hive-b", dir_b.path(), |_| {})).await;
    let mut client = b.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    client.fetch_model(fetch("m", &url, &data, vec![peer(a.url(), "hive-a")])).await.unwrap();
    stream.until(|m| download_of(m, "m").filter(|d| d.bytes_done >= 2 << 20)).await;
    drop(stream);
    b.stop().await.unwrap();

    // The fetch record kept the peers: the restarted hive reads the rest from A.
    let b = TestHive::start_with(hive_config("hive-b", dir_b.path(), |_| {})).await;
    let mut client = b.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    let done = final_record(&mut stream, "m").await;
    assert_eq!(done.phase, pb::DownloadPhase::Done as i32, "{done:?}");
    assert_eq!(std::fs::read(dir_b.path().join("m/w.bin")).unwrap(), data);
    assert_eq!(origin.bytes_sent(), served, "the origin served nothing");
    let got = sources(&done);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "hive-a");
    assert!(got[0].1 < SIZE as u64, "the kept prefix is not fetched again: {got:?}");
}

#[tokio::test]
async fn a_fetch_of_the_most_files_with_peers_is_accepted_by_the_hive() {
    use rbee_shared::model::{MAX_MODEL_FILES, MAX_MODEL_PATH_BYTES, MAX_URL_BYTES};
    let dir = tempfile::tempdir().unwrap();
    let hive = TestHive::start_with(hive_config("hive-b", dir.path(), |_| {})).await;
    let mut client = hive.client().await;
    // Every file at the length limits: far over the 64 KiB other requests get.
    let sha = "a".repeat(64);
    let path = |i: usize| format!("{i:03}{}", "p".repeat(MAX_MODEL_PATH_BYTES - 3));
    let url = format!("http://127.0.0.1:9/{}", "u".repeat(MAX_URL_BYTES - 19));
    let files = (0..MAX_MODEL_FILES)
        .map(|i| pb::FileSource {
            url: url.clone(),
            path: Some(path(i)),
            size_bytes: Some(1),
            sha256: Some(sha.clone()),
        })
        .collect();
    let request = pb::FetchModelRequest {
        model_id: "many".into(),
        source: Some(pb::fetch_model_request::Source::Urls(pb::UrlSource { files })),
        peers: (0..15)
            .map(|i| peer(format!("http://127.0.0.1:{}", 1 + i), &format!("peer-{i:02}{}", "h".repeat(50))))
            .collect(),
        peer_files: (0..MAX_MODEL_FILES)
            .map(|i| pb::ModelFile { path: path(i), size_bytes: 1, sha256: Some(sha.clone()) })
            .collect(),
    };
    assert!(prost::Message::encoded_len(&request) > 1 << 20);
    let r = client.fetch_model(request).await;
    assert!(r.is_ok(), "{r:?}");
    client.cancel_fetch(pb::CancelFetchRequest { model_id: "many".into() }).await.unwrap();
}

#[tokio::test]
async fn a_fetch_whose_peers_all_fail_says_the_last_reason_and_counts_no_dropped_bytes() {
    let data = http_files::generated(4 << 20, 8);
    let first = scripted_peer(&data, Fault::FailAfter(1 << 20)).await;
    let second = scripted_peer(&data, Fault::FailAfter(1 << 20)).await;
    let dir = tempfile::tempdir().unwrap();
    let b = TestHive::start_with(hive_config("hive-b", dir.path(), |_| {})).await;
    let request = pb::FetchModelRequest {
        source: None,
        ..fetch("m", "http://127.0.0.1:9/w.bin", &data, vec![peer(first, "first"), peer(second, "second")])
    };
    let done = fetch_to_end(&b, request).await;
    assert_eq!(done.phase, pb::DownloadPhase::Failed as i32, "{done:?}");
    let error = done.error.clone().unwrap_or_default();
    assert!(error.contains("every peer failed and the fetch names no origin"), "{error}");
    assert!(error.contains("(last: second: Internal: disk on fire !!!"), "{error}");
    assert!(error.len() < 400, "the peer's text is bounded: {} bytes", error.len());
    // Their bytes were not kept (the file failed): not counted as kept from them.
    assert_eq!(sources(&done), Vec::<(String, u64)>::new(), "{done:?}");
}
