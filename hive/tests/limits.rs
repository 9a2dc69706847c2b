//! Issue 9, slow and greedy clients and consistency of answers: the stream limit with
//! the queen's reserve, bounded memory for readers that never read, RESOURCE_EXHAUSTED
//! for an oversized message, and reflection that lists only the hive's services.

mod common;

use common::*;
use rbee_proto::v1 as pb;
use tokio::time::Instant;

#[tokio::test]
async fn streams_beyond_the_limit_get_resource_exhausted_with_a_clear_message() {
    let mut config = config("limited-hive", ONE_GPU);
    config.max_streams = 4;
    let hive = TestHive::start_with(config).await;
    let mut client = hive.client().await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = TestStream::open(&mut client, subscribe(60_000)).await;
        assert!(as_snapshot(&s.next().await.unwrap()).is_some());
        open.push(s);
    }
    let refused =
        TestStream::try_open(&mut client, subscribe(60_000)).await.err().expect("the 5th is refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("at most 4 MetricsStreams") && refused.message().contains("--max-streams"),
        "{}",
        refused.message()
    );
    // Discover is not a stream: it keeps working.
    assert!(client.discover(pb::DiscoverRequest {}).await.is_ok());
    // A closed stream frees its slot.
    drop(open.pop());
    let deadline = Instant::now() + DEADLINE;
    loop {
        match TestStream::try_open(&mut client, subscribe(60_000)).await {
            Ok(mut s) => {
                assert!(as_snapshot(&s.next().await.unwrap()).is_some());
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                assert!(Instant::now() < deadline, "the closed stream's slot was never freed");
                tokio::task::yield_now().await;
            }
        }
    }
}

#[tokio::test]
async fn the_announced_queen_keeps_a_reserve_that_others_cannot_take() {
    let mut config = config("reserve-hive", ONE_GPU);
    config.max_streams = 4;
    // Nothing listens there: the hive keeps retrying the announce, which is fine here.
    config.queen = Some(format!("http://{QUEEN_IP}:9"));
    let hive = TestHive::start_with(config).await;
    let mut others = hive.client().await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TestStream::open(&mut others, subscribe(60_000)).await);
    }
    let refused = TestStream::try_open(&mut others, subscribe(60_000)).await.err().expect("refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("reserved"), "{}", refused.message());

    let mut queen = client_from(&hive.url(), QUEEN_IP).await;
    let deadline = Instant::now() + DEADLINE;
    for _ in 0..2 {
        let mut s = loop {
            match TestStream::try_open(&mut queen, subscribe(60_000)).await {
                Ok(s) => break s,
                // The announcer resolves the queen's address when it starts.
                Err(_) if Instant::now() < deadline => tokio::task::yield_now().await,
                Err(status) => panic!("the queen was refused: {status}"),
            }
        };
        assert!(as_snapshot(&s.next().await.unwrap()).is_some());
        held.push(s);
    }
    let full = TestStream::try_open(&mut queen, subscribe(60_000)).await.err().expect("the limit holds");
    assert_eq!(full.code(), tonic::Code::ResourceExhausted);
}

#[tokio::test]
async fn an_oversized_stream_message_is_resource_exhausted() {
    let hive = TestHive::start(ONE_GPU).await;
    let mut client = hive.client().await;
    let huge = pb::QueenMessage {
        // Over the Hive service's limit: the largest valid FetchModel (tonic's limit is
        // per service).
        known_epoch: Some("e".repeat(rbee_shared::model::MAX_FETCH_REQUEST_BYTES + 1)),
        known_capability_version: Some(1),
        ..Default::default()
    };
    let status = match TestStream::try_open(&mut client, huge).await {
        Err(status) => status,
        Ok(mut s) => s.next().await.expect_err("an oversized message is refused"),
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    // The server keeps serving.
    let mut ok = TestStream::open(&mut client, subscribe(100)).await;
    assert!(as_snapshot(&ok.next().await.unwrap()).is_some());
}

#[tokio::test]
async fn reflection_lists_only_the_services_the_hive_serves() {
    let hive = TestHive::start(ONE_GPU).await;
    hive.client().await;
    let names = reflected_services(&hive.url()).await;
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "rbee.v1.Hive",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_on_a_reused_connection_are_not_held_back_by_nagle() {
    // A Discover answer larger than one loopback segment (64 KiB): under Nagle's
    // algorithm its last, partial segment waits for the ACK of the first, and the
    // client delays that ACK by about 40 ms.
    let gpus: String = (0..64)
        .map(|i| {
            format!(
                "[[gpu]]\nid = \"GPU-{i:02}-{}\"\nname = \"{}\"\nvram_total = \"80GiB\"\n",
                "x".repeat(200),
                "n".repeat(250)
            )
        })
        .collect();
    let mut config = config("large-hive", &gpus);
    for i in 0..64 {
        config.labels.insert(format!("label-{i:02}-{}", "k".repeat(50)), "v".repeat(256));
    }
    let hive = TestHive::start_with(config).await;
    let mut client = hive.client().await;
    let mut took = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        let answer = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner();
        took.push(started.elapsed());
        assert!(prost::Message::encoded_len(&answer) > 64 * 1024);
    }
    took.sort();
    let median = took[took.len() / 2];
    // Nagle's algorithm with delayed ACKs costs about 40 ms per call; without it a
    // local Discover takes a few ms even in a debug build.
    assert!(median < std::time::Duration::from_millis(20), "median Discover {median:?} ({took:?})");
}
