//! The real hive server on 127.0.0.1:0, driven by the generated tonic client.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use rbee_proto::v1 as pb;

#[tokio::test]
async fn discover_reports_identity_and_simulated_capabilities() {
    let hive = TestHive::start(ONE_GPU).await;
    let resp = hive.client().await.discover(pb::DiscoverRequest {}).await.unwrap().into_inner();
    let id = resp.identity.unwrap();
    assert_eq!(id.hive_id, "test-hive");
    assert!(!id.epoch.is_empty());
    assert_eq!(id.protocol_version, 1);
    assert_eq!(id.gpu_source(), pb::DeviceSourceKind::Simulated);
    assert_eq!(id.advertised_address, hive.url());
    assert_eq!(id.labels.get("zone").map(String::as_str), Some("test"));
    let caps = resp.capabilities.unwrap();
    assert_eq!(caps.version, 1);
    assert_eq!(caps.gpus.len(), 1);
    assert_eq!(caps.gpus[0].vram_total_bytes, 80 << 30);
    assert!(caps.cpu.unwrap().logical_cores >= 1);
    assert!(caps.ram_total_bytes > 0);
    assert!(caps.backends.contains(&(pb::Backend::Cuda as i32)));
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn a_new_process_start_is_a_new_epoch() {
    let a = TestHive::start(ONE_GPU).await;
    let b = TestHive::start(ONE_GPU).await;
    let ea =
        a.client().await.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().identity.unwrap().epoch;
    let eb =
        b.client().await.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().identity.unwrap().epoch;
    assert_ne!(ea, eb);
}

#[tokio::test]
async fn an_empty_first_message_subscribes_with_a_snapshot_then_samples_at_the_interval() {
    let hive = TestHive::start(ONE_GPU).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(200)).await;
    let first = stream.next().await.unwrap();
    assert_eq!(first.seq, 1);
    let snap = as_snapshot(&first).expect("first message is a snapshot");
    assert_eq!(snap.reason(), pb::SnapshotReason::Initial);
    assert_eq!(snap.capabilities.unwrap().gpus.len(), 1);

    let mut times = Vec::new();
    for expected_seq in 2..=6 {
        let m = stream.next().await.unwrap();
        assert_eq!(m.seq, expected_seq, "sequence numbers have no gaps");
        let s = as_sample(&m).expect("a sample");
        assert_eq!(s.gpus.len(), 1);
        assert!(s.ram_total_bytes > 0 && s.ram_used_bytes <= s.ram_total_bytes);
        times.push(m.hive_time_unix_ms);
    }
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = gaps.iter().sum::<u64>() / gaps.len() as u64;
    assert!((150..=400).contains(&mean), "mean gap {mean} ms for a 200 ms interval ({gaps:?})");

    // `{}` with defaults works too (1 s).
    let mut plain = TestStream::open(&mut client, pb::QueenMessage::default()).await;
    assert!(as_snapshot(&plain.next().await.unwrap()).is_some());
    assert!(as_sample(&plain.next().await.unwrap()).is_some());
}

#[tokio::test]
async fn a_hot_plugged_gpu_arrives_as_a_diff_with_the_right_base() {
    let scenario = r#"
        [[gpu]]
        id = "GPU-base"
        vram_total = "24GiB"
        [[gpu]]
        id = "GPU-hotplug"
        vram_total = "48GiB"
        appear_at_s = 0.6
        remove_at_s = 1.4
    "#;
    let hive = TestHive::start(scenario).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(1000)).await;
    let snap = as_snapshot(&stream.next().await.unwrap()).unwrap();
    let held = snap.capabilities.unwrap();
    assert_eq!(held.gpus.len(), 1);

    let added = stream.until(as_diff).await;
    assert_eq!(added.base_version, held.version);
    assert_eq!(added.new_version, held.version + 1);
    assert_eq!(added.gpus_added.len(), 1);
    assert_eq!(added.gpus_added[0].id, "GPU-hotplug");
    assert!(added.gpus_removed.is_empty() && added.cpu.is_none() && added.labels.is_none());

    let removed = stream.until(as_diff).await;
    assert_eq!(removed.base_version, added.new_version);
    assert_eq!(removed.gpus_removed, ["GPU-hotplug"]);

    // Discover agrees with what the stream said.
    let now = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
    assert_eq!(now.version, removed.new_version);
    assert_eq!(now.gpus.len(), 1);
}

#[tokio::test]
async fn resuming_with_the_current_version_gets_no_snapshot_and_an_old_one_does() {
    let hive = TestHive::start(ONE_GPU).await;
    let mut client = hive.client().await;
    let d = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner();
    let (epoch, version) = (d.identity.unwrap().epoch, d.capabilities.unwrap().version);

    let resume = |epoch: &str, version| pb::QueenMessage {
        sample_interval_ms: Some(100),
        known_epoch: Some(epoch.to_owned()),
        known_capability_version: Some(version),
        resync: false,
        compact: false,
    };
    let mut current = TestStream::open(&mut client, resume(&epoch, version)).await;
    let first = current.next().await.unwrap();
    assert!(as_sample(&first).is_some(), "current view: first message is a sample, got {first:?}");

    let mut old = TestStream::open(&mut client, resume(&epoch, version - 1)).await;
    let snap = as_snapshot(&old.next().await.unwrap()).expect("an outdated view gets a snapshot");
    assert_eq!(snap.reason(), pb::SnapshotReason::Outdated);

    let mut other_epoch = TestStream::open(&mut client, resume("some-older-epoch", version)).await;
    let snap = as_snapshot(&other_epoch.next().await.unwrap()).expect("another epoch gets a snapshot");
    assert_eq!(snap.reason(), pb::SnapshotReason::Outdated);
}

#[tokio::test]
async fn interval_changes_and_resync_requests_are_honoured() {
    let hive = TestHive::start(ONE_GPU).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(60_000)).await;
    assert!(as_snapshot(&stream.next().await.unwrap()).is_some());
    // At 60 s nothing more would come within the deadline; at 100 ms five samples do.
    stream.tx.send(subscribe(100)).await.unwrap();
    for _ in 0..5 {
        stream.until(as_sample).await;
    }
    stream.tx.send(pb::QueenMessage { resync: true, ..Default::default() }).await.unwrap();
    let snap = stream.until(as_snapshot).await;
    assert_eq!(snap.reason(), pb::SnapshotReason::Resync);
}

#[tokio::test]
async fn cpu_utilisation_is_measured_while_a_core_burns() {
    let hive = TestHive::start(ONE_GPU).await;
    let mut client = hive.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let burner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        })
    };
    let mut stream = TestStream::open(&mut client, subscribe(300)).await;
    let busy = stream.until(|m| as_sample(m).filter(|s| s.cpu_percent.is_some_and(|p| p > 10.0))).await;
    stop.store(true, Ordering::Relaxed);
    burner.join().unwrap();
    assert!(busy.cpu_window_ms.unwrap() >= 20);
    assert!(!busy.cpu_per_core_percent.is_empty());
    assert!(busy.cpu_per_core_percent.iter().all(|p| (0.0..=100.0).contains(p)));
}

#[tokio::test]
async fn bad_intervals_are_invalid_arguments_and_the_server_keeps_serving() {
    let hive = TestHive::start(ONE_GPU).await;
    let mut client = hive.client().await;
    for bad in [0, 50, 3_600_000] {
        let mut stream = TestStream::open(&mut client, subscribe(bad)).await;
        let status = stream.next().await.expect_err("an out-of-range interval is refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("sample_interval_ms"), "{}", status.message());
        assert!(status.message().contains("100..=60000"), "{}", status.message());
    }
    // A bad change on a healthy stream ends that stream with the same clear error...
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    assert!(as_snapshot(&stream.next().await.unwrap()).is_some());
    stream.tx.send(subscribe(0)).await.unwrap();
    let status = loop {
        match stream.next().await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // ...and everything else keeps working.
    let mut other = TestStream::open(&mut client, subscribe(100)).await;
    assert!(as_snapshot(&other.next().await.unwrap()).is_some());
    assert!(client.discover(pb::DiscoverRequest {}).await.is_ok());
}

#[tokio::test]
async fn several_callers_stream_independently() {
    let hive = TestHive::start(ONE_GPU).await;
    let mut client = hive.client().await;
    let mut fast = TestStream::open(&mut client, subscribe(100)).await;
    let mut slow = TestStream::open(&mut client, subscribe(60_000)).await;
    assert!(as_snapshot(&fast.next().await.unwrap()).is_some());
    assert!(as_snapshot(&slow.next().await.unwrap()).is_some());
    for _ in 0..3 {
        assert!(as_sample(&fast.next().await.unwrap()).is_some());
    }
    // Closing one stream does not disturb the other.
    drop(slow);
    assert!(as_sample(&fast.next().await.unwrap()).is_some());
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_returns() {
    let hive = TestHive::start(ONE_GPU).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    assert!(as_snapshot(&stream.next().await.unwrap()).is_some());
    hive.stop().await.expect("clean shutdown with a stream open");
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(_)) = tokio_stream::StreamExt::next(&mut stream.rx).await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ended at shutdown");
}

#[tokio::test]
async fn health_reports_serving() {
    let hive = TestHive::start(ONE_GPU).await;
    let channel = tonic::transport::Channel::from_shared(hive.url()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest { service: "rbee.v1.Hive".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
}

/// A hive stopped while a stream waits for its next reading (held silent by the fleet
/// simulator, a resample due) ends that stream. The stop once made the wait return
/// "no reading, try again" at once, so the session spun on a worker thread forever and
/// its stream never ended.
#[tokio::test]
async fn a_silenced_hive_that_stops_ends_its_streams() {
    use rbee_hive::swarm::{Swarm, SwarmConfig};
    use std::time::Duration;
    // The hive runs on a runtime of its own, so that a session spinning there cannot
    // stall this test's clock: the test fails rather than hangs.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = SwarmConfig {
        count: 1,
        gpus: 1,
        cores: 2,
        id_prefix: "stop".into(),
        first_address: std::net::Ipv4Addr::LOCALHOST,
        ..SwarmConfig::default()
    };
    let mut swarm = rt.spawn(Swarm::start(config)).await.unwrap().expect("one simulated hive");
    let mut client = rbee_proto::v1::hive_client::HiveClient::connect(swarm.url(0)).await.unwrap();
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    stream.until(as_sample).await;
    swarm.silence(0, true);
    // Let a tick fall due while silent (nothing outside the hive shows it): the session
    // now waits inside its reading, with a resample pending.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = rt.spawn(async move {
        swarm.kill(0).await;
        swarm
    });
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let _swarm = killed.await.unwrap();
        while let Some(Ok(_)) = tokio_stream::StreamExt::next(&mut stream.rx).await {}
    })
    .await;
    rt.shutdown_background();
    assert!(ended.is_ok(), "the stream of a stopped hive ends");
}
