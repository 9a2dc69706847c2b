//! Slow and greedy watchers: a client that opens WatchFleet streams, grants a huge
//! HTTP/2 window and never reads must not grow the queen without bound, and past the
//! limit it gets RESOURCE_EXHAUSTED while everyone else is served.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use prost::Message;
use rbee_proto::v1 as pb;
use rbee_queen::QueenConfig;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

fn grpc_frame(m: &impl Message) -> Bytes {
    let body = m.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(0);
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out.into()
}

/// 64 GPUs, so that every sample event is a few KiB.
fn many_gpus() -> String {
    (0..64)
        .map(|i| {
            format!(
                "[[gpu]]\nid = \"GPU-sim-{i:02}\"\nvram_total = \"80GiB\"\nutil_percent = [10, 90]\n\
                 vram_used = [\"1GiB\"]\ntemperature_c = [40]\npower_draw_w = [300]\n"
            )
        })
        .collect()
}

/// Opens `streams` WatchFleet streams (samples every 100 ms) on one connection that
/// grants a 1 GiB window, then stops reading its socket. Returns how many the queen
/// accepted and a sender that ends the connection.
async fn greedy_watcher(addr: SocketAddr, streams: usize) -> (usize, oneshot::Sender<()>) {
    let socket = TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 30)
        .initial_connection_window_size(1 << 30)
        .handshake::<_, Bytes>(socket)
        .await
        .unwrap();
    let (freeze_tx, freeze_rx) = oneshot::channel::<()>();
    let (end_tx, end_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            _ = &mut connection => return,
            _ = freeze_rx => {}
        }
        // Frozen: the socket stays open and nobody reads it.
        let _ = end_rx.await;
    });
    let mut accepted = 0;
    let mut held = Vec::new();
    for _ in 0..streams {
        client = client.ready().await.unwrap();
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/rbee.v1.Fleet/WatchFleet"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        let _ = send.send_data(grpc_frame(&pb::WatchFleetRequest { sample_interval_ms: Some(100) }), true);
        let response = tokio::time::timeout(DEADLINE, response).await.unwrap().unwrap();
        let refused = response.headers().get("grpc-status").is_some_and(|s| s == "8");
        if !refused {
            accepted += 1;
        }
        held.push((send, response));
    }
    let _ = freeze_tx.send(());
    tokio::spawn(async move {
        let _keep = (client, held);
        std::future::pending::<()>().await;
    });
    (accepted, end_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_that_never_read_cannot_grow_the_queen_without_bound() {
    let hive = TestHive::start_named("wide", &many_gpus()).await;
    let mut config = fast_config(vec![hive.url()]);
    config.fleet.sample_interval = Duration::from_millis(100);
    config.admission.max_watchers = 64;
    let queen = TestQueen::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let mut client = queen.client().await;
    wait_for(&mut client, "a sample", |hs| hs.iter().all(|h| h.latest_sample.is_some())).await;
    let before = rss_bytes();
    let mut accepted = 0;
    let mut connections = Vec::new();
    for _ in 0..10 {
        let (n, end) = greedy_watcher(queen.addr, 100).await;
        accepted += n;
        connections.push(end);
    }
    assert_eq!(accepted, 64, "exactly the limit is accepted");
    // A soak, not an event wait: memory is sampled over a window long enough for
    // unbounded buffering (1,000 streams of ~6 KiB events at 10/s) to pass the bound.
    let bound = 100 << 20;
    let end = Instant::now() + Duration::from_secs(12);
    let mut every = tokio::time::interval(Duration::from_millis(500));
    let mut peak = before;
    while Instant::now() < end {
        every.tick().await;
        peak = peak.max(rss_bytes());
        assert!(
            peak.saturating_sub(before) < bound,
            "RSS grew by {} MiB with {accepted} unread watchers",
            (peak - before) >> 20
        );
    }
    // Everyone else is still served, and a new watcher is refused clearly.
    let hives = client.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives;
    assert_eq!(hives.len(), 1);
    let refused = match client.watch_fleet(pb::WatchFleetRequest::default()).await {
        Err(s) => s,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("--max-watchers"), "{}", refused.message());
    drop(connections);
}

#[tokio::test]
async fn a_closed_watcher_gives_its_place_back() {
    let config = QueenConfig { ..fast_config(vec![]) };
    let mut config = config;
    config.admission.max_watchers = 1;
    let queen = TestQueen::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let mut client = queen.client().await;
    let mut first = client.watch_fleet(pb::WatchFleetRequest::default()).await.unwrap().into_inner();
    first.message().await.unwrap().expect("the first watcher gets its snapshot");
    let second = match client.watch_fleet(pb::WatchFleetRequest::default()).await {
        Err(s) => s,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(second.code(), tonic::Code::ResourceExhausted);
    drop(first);
    // The place comes back once the server sees the stream end.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match client.watch_fleet(pb::WatchFleetRequest::default()).await {
            Ok(r) => {
                let mut s = r.into_inner();
                if s.message().await.is_ok() {
                    break;
                }
            }
            Err(s) => assert_eq!(s.code(), tonic::Code::ResourceExhausted),
        }
        assert!(Instant::now() < deadline, "the closed watcher's place never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
