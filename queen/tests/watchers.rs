//! Slow and greedy watchers: a client that opens WatchFleet streams, grants a huge
//! HTTP/2 window and never reads must not grow the queen without bound, and past the
//! limit it gets RESOURCE_EXHAUSTED while everyone else is served.

mod common;

use std::time::Duration;

use common::*;
use rbee_hive::test_support::{assert_rss_stays_within, greedy_reader, grpc_frame, rss_bytes};
use rbee_proto::v1 as pb;
use rbee_queen::QueenConfig;
use tokio::time::Instant;

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
        let request =
            grpc_frame(&pb::WatchFleetRequest { sample_interval_ms: Some(100), ..Default::default() });
        let (n, end) = greedy_reader(queen.addr, "/rbee.v1.Fleet/WatchFleet", request, true, 100).await;
        accepted += n;
        connections.push(end);
    }
    assert_eq!(accepted, 64, "exactly the limit is accepted");
    // A soak, not an event wait: memory is sampled over a window long enough for
    // unbounded buffering (1,000 streams of ~6 KiB events at 10/s) to pass the bound.
    let what = format!("{accepted} unread watchers");
    assert_rss_stays_within(before, 100 << 20, Duration::from_secs(12), &what).await;
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
