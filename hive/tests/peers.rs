//! Issue 9, scripted peers: a raw queen that only answers `Announce` (re-announce
//! follows the queen's own streams, not anyone's), a raw HTTP/2 reader that grants a
//! huge window and then never reads (the hive's memory stays bounded), and a peer that
//! floods bad subscriptions (its warnings are rate-limited and counted).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use prost::Message;
use rbee_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A queen that answers every `rbee.v1.Fleet/Announce` with `added: true` and reports
/// each announce on a channel. Nothing else.
async fn scripted_queen() -> (SocketAddr, mpsc::UnboundedReceiver<pb::AnnounceRequest>) {
    let listener = TcpListener::bind((QUEEN_IP, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else { return };
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let path = request.uri().path().to_owned();
                        let mut body = request.into_body();
                        let mut buf = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            buf.extend_from_slice(&chunk);
                        }
                        if path == "/rbee.v1.Fleet/Announce"
                            && buf.len() >= 5
                            && let Ok(a) = pb::AnnounceRequest::decode(&buf[5..])
                        {
                            let _ = tx.send(a);
                        }
                        let response = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let Ok(mut send) = respond.send_response(response, false) else { return };
                        let _ = send.send_data(grpc_frame(&pb::AnnounceResponse { added: true }), false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let _ = send.send_trailers(trailers);
                    });
                }
            });
        }
    });
    (addr, rx)
}

async fn next_announce(announces: &mut mpsc::UnboundedReceiver<pb::AnnounceRequest>) -> pb::AnnounceRequest {
    tokio::time::timeout(DEADLINE, announces.recv())
        .await
        .expect("the hive announces before the deadline")
        .expect("the scripted queen runs")
}

#[tokio::test]
async fn a_third_party_stream_does_not_hold_back_the_re_announce_after_a_queen_restart() {
    let (queen_addr, mut announces) = scripted_queen().await;
    let mut config = config("announcing-hive", ONE_GPU);
    config.queen = Some(format!("http://{queen_addr}"));
    config.reannounce_after = Duration::from_millis(300);
    let hive = TestHive::start_with(config).await;
    let first = next_announce(&mut announces).await;
    assert_eq!(first.hive_id, "announcing-hive");

    // The queen streams from its own address; a third party from another.
    let mut queen = client_from(&hive.url(), QUEEN_IP).await;
    let mut queen_stream = TestStream::open(&mut queen, subscribe(100)).await;
    assert!(as_snapshot(&queen_stream.next().await.unwrap()).is_some());
    let mut third_party = hive.client().await;
    let mut watcher = TestStream::open(&mut third_party, subscribe(100)).await;
    assert!(as_snapshot(&watcher.next().await.unwrap()).is_some());
    while announces.try_recv().is_ok() {}

    // The queen restarts: its stream goes away; the third party's stays.
    drop(queen_stream);
    drop(queen);
    let again = next_announce(&mut announces).await;
    assert_eq!(again.hive_id, "announcing-hive");
    // The third party was never disturbed.
    assert!(as_sample(&watcher.next().await.unwrap()).is_some());
}

/// A scenario with 64 GPUs, so that each sample is a few KiB.
fn many_gpus() -> String {
    (0..64)
        .map(|i| format!("[[gpu]]\nid = \"GPU-sim-{i:02}\"\nvram_total = \"80GiB\"\nutil_percent = [10, 90]\nvram_used = [\"1GiB\"]\ntemperature_c = [40]\npower_draw_w = [300]\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_never_read_cannot_grow_the_hive_without_bound() {
    let hive = TestHive::start(&many_gpus()).await;
    hive.client().await;
    let before = rss_bytes();
    let mut accepted = 0;
    let mut connections = Vec::new();
    for _ in 0..10 {
        let (n, end) =
            greedy_reader(hive.addr, "/rbee.v1.Hive/MetricsStream", grpc_frame(&subscribe(100)), false, 100)
                .await;
        accepted += n;
        connections.push(end);
    }
    assert!(accepted <= rbee_hive::streams::DEFAULT_MAX_STREAMS, "{accepted} streams were accepted");
    // A soak, not an event wait: memory is sampled over a window long enough for
    // unbounded buffering (1,000 streams of ~3 KiB samples at 10/s) to pass the bound.
    let what = format!("{accepted} unread streams");
    assert_rss_stays_within(before, 100 << 20, Duration::from_secs(12), &what).await;
    // The hive still answers.
    let mut client = hive.client().await;
    assert!(client.discover(pb::DiscoverRequest {}).await.is_ok());
    drop(connections);
}

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_flood_of_bad_messages_logs_a_few_warnings_and_counts_the_rest() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let hive = TestHive::start(ONE_GPU).await;
    let mut client = hive.client().await;
    for _ in 0..40 {
        let mut s = TestStream::open(&mut client, subscribe(0)).await;
        let status = s.next().await.expect_err("an out-of-range interval is refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    // One more after the others, so that its line (if any) is written before we count.
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let warnings = text.lines().filter(|l| l.contains("bad MetricsStream message")).count();
    assert_eq!(warnings, 5, "a burst of 5 per peer per minute, then counted:\n{text}");
}
