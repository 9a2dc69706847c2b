//! End to end: a real queen and real hives (simulated GPUs) on 127.0.0.1, over gRPC.

mod common;

use std::time::Duration;

use common::*;
use rbee_proto::v1 as pb;
use rbee_queen::QueenConfig;
use tokio::time::Instant;

#[tokio::test]
async fn three_hives_are_discovered_and_their_samples_reach_list_hives() {
    let hives = [
        TestHive::start_named("hive-a", ONE_GPU).await,
        TestHive::start_named("hive-b", ONE_GPU).await,
        TestHive::start_named("hive-c", ONE_GPU).await,
    ];
    let queen = TestQueen::start(hives.iter().map(|h| h.url()).collect()).await;
    let mut client = queen.client().await;
    let list = wait_for(&mut client, "3 hives online with samples", |hs| {
        hs.len() == 3 && hs.iter().all(|h| online(h) && h.latest_sample.is_some())
    })
    .await;
    let mut ids: Vec<_> = list.iter().map(|h| h.hive_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["hive-a", "hive-b", "hive-c"]);
    for h in &list {
        assert_eq!(h.origin(), pb::HiveOrigin::Static);
        assert_eq!(h.health(), pb::Health::Healthy, "{:?}", h.health_reasons);
        assert!(h.sample_age_ms.unwrap() < 2_000, "fresh data has a small age");
        assert_eq!(h.capabilities.as_ref().unwrap().gpus.len(), 1);
        assert_eq!(h.identity.as_ref().unwrap().gpu_source(), pb::DeviceSourceKind::Simulated);
        assert_eq!(h.sample_interval_ms, 200);
    }
    // Windowed statistics fill up as samples arrive.
    let list = wait_for(&mut client, "windowed stats", |hs| {
        hs.iter().all(|h| h.stats.as_ref().is_some_and(|s| s.samples >= 3))
    })
    .await;
    let stats = list[0].stats.as_ref().unwrap();
    assert!(stats.cpu_mean_percent.is_some(), "{stats:?}");
    assert!(matches!(stats.gpus[0].util_max_percent, Some(u) if u == 10.0 || u == 20.0), "{stats:?}");
    // GetHive by id and by address.
    let by_id = client.get_hive(pb::GetHiveRequest { hive: "hive-b".into() }).await.unwrap().into_inner();
    let by_addr =
        client.get_hive(pb::GetHiveRequest { hive: by_id.address.clone() }).await.unwrap().into_inner();
    assert_eq!(by_id.hive_id, by_addr.hive_id);
    let missing = client.get_hive(pb::GetHiveRequest { hive: "nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    queen.stop().await;
}

#[tokio::test]
async fn a_hot_plugged_gpu_shows_in_get_hive_within_2_s() {
    let scenario = r#"
        [[gpu]]
        id = "GPU-base"
        vram_total = "24GiB"
        [[gpu]]
        id = "GPU-hotplug"
        vram_total = "48GiB"
        appear_at_s = 1.5
    "#;
    let hive = TestHive::start_named("hot", scenario).await;
    let queen = TestQueen::start(vec![hive.url()]).await;
    let mut client = queen.client().await;
    let mut watch = Watch::open(&mut client).await;
    // The GPU appears 1.5 s after the hive started; it must show within 2 s of that.
    let (caps, _) = watch
        .until_within(Duration::from_millis(3500), |e| match e {
            pb::fleet_event::Event::CapabilitiesChanged(c)
                if c.capabilities.as_ref().is_some_and(|c| c.gpus.iter().any(|g| g.id == "GPU-hotplug")) =>
            {
                c.capabilities.clone()
            }
            _ => None,
        })
        .await;
    assert!(caps.version >= 2);
    let h = client.get_hive(pb::GetHiveRequest { hive: "hot".into() }).await.unwrap().into_inner();
    assert!(
        h.capabilities.unwrap().gpus.iter().any(|g| g.id == "GPU-hotplug"),
        "GetHive agrees with the event"
    );
}

#[tokio::test]
async fn a_killed_hive_is_lost_within_1_s_and_a_restarted_one_comes_back_with_a_new_epoch() {
    let hive = TestHive::start_named("phoenix", ONE_GPU).await;
    let (addr, url) = (hive.addr, hive.url());
    let queen = TestQueen::start(vec![url.clone()]).await;
    let mut client = queen.client().await;
    let before =
        wait_for(&mut client, "online", |hs| hs.iter().all(|h| online(h) && h.latest_sample.is_some())).await;
    let old_epoch = before[0].identity.as_ref().unwrap().epoch.clone();
    let mut watch = Watch::open(&mut client).await;

    hive.kill().await;
    // A broken connection is lost at once, long before the 2 s silence timeout.
    let (change, _) =
        watch.until_within(Duration::from_millis(1500), state_to(&url, pb::HiveState::Lost)).await;
    assert!(!change.reason.is_empty());
    let lost = client.get_hive(pb::GetHiveRequest { hive: url.clone() }).await.unwrap().into_inner();
    assert_eq!(lost.health(), pb::Health::Unhealthy);
    assert!(lost.health_reasons[0].starts_with("lost:"), "{:?}", lost.health_reasons);
    assert!(lost.latest_sample.is_some(), "old data is kept, with its age");

    let _again = TestHive::start_with_on(addr, hive_config("phoenix", ONE_GPU, None)).await;
    let (restarted, _) = watch
        .until(|e| match e {
            pb::fleet_event::Event::CapabilitiesChanged(c) if c.restarted => Some(c.clone()),
            _ => None,
        })
        .await;
    assert_ne!(restarted.epoch, old_epoch);
    let back = wait_for(&mut client, "back online", |hs| hs.iter().all(online)).await;
    assert_ne!(back[0].identity.as_ref().unwrap().epoch, old_epoch);
    let counters = back[0].counters.unwrap();
    assert!(counters.restarts >= 1 && counters.reconnects >= 1, "{counters:?}");
}

#[tokio::test]
async fn a_silent_partition_makes_a_hive_stale_then_lost_within_the_configured_bounds() {
    let hive = TestHive::start_named("behind-proxy", ONE_GPU).await;
    let proxy = Proxy::start(hive.addr).await;
    let queen = TestQueen::start(vec![proxy.url()]).await;
    let mut client = queen.client().await;
    wait_for(&mut client, "online with a sample", |hs| {
        hs.iter().all(|h| online(h) && h.latest_sample.is_some())
    })
    .await;
    let mut watch = Watch::open(&mut client).await;

    let frozen_at = Instant::now();
    proxy.freeze();
    let settings = fast_settings();
    let (_, stale_at) = watch.until(state_to(&proxy.url(), pb::HiveState::Stale)).await;
    let stale_after = stale_at - frozen_at;
    // Stale after 3 missed intervals (600 ms); the last sample may be up to one interval old.
    assert!(
        stale_after >= settings.stale_after() - settings.sample_interval,
        "stale too early: {stale_after:?}"
    );
    let stale =
        client.get_hive(pb::GetHiveRequest { hive: "behind-proxy".into() }).await.unwrap().into_inner();
    assert_eq!(stale.health(), pb::Health::Degraded);
    assert!(
        stale.health_reasons.iter().any(|r| r.starts_with("no sample for")),
        "{:?}",
        stale.health_reasons
    );
    assert!(stale.sample_age_ms.unwrap() >= 400, "stale data is not shown as fresh");

    let (lost, lost_at) = watch.until(state_to(&proxy.url(), pb::HiveState::Lost)).await;
    let lost_after = lost_at - frozen_at;
    assert!(lost_after >= settings.lost_timeout - settings.sample_interval, "lost too early: {lost_after:?}");
    assert!(lost.reason.contains("no sample applied for"), "{}", lost.reason);
}

#[tokio::test]
async fn a_restarted_queen_rebuilds_the_fleet() {
    let hives = [TestHive::start_named("r1", ONE_GPU).await, TestHive::start_named("r2", ONE_GPU).await];
    let config = fast_config(hives.iter().map(|h| h.url()).collect());
    let queen = TestQueen::start_with(config.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = queen.addr;
    let mut client = queen.client().await;
    wait_for(&mut client, "2 online", |hs| hs.len() == 2 && hs.iter().all(online)).await;
    queen.stop().await;

    // An announced hive comes back too: it re-announces once no queen streams from it.
    let announced = TestHive::start_with(hive_config("r3", ONE_GPU, Some(format!("http://{addr}")))).await;
    let queen = TestQueen::start_with(config, addr).await;
    let mut client = queen.client().await;
    let hs =
        wait_for(&mut client, "3 online after restart", |hs| hs.len() == 3 && hs.iter().all(online)).await;
    let r3 = hs.iter().find(|h| h.hive_id == "r3").expect("the announced hive");
    assert_eq!(r3.origin(), pb::HiveOrigin::Announced);
    assert_eq!(r3.address, announced.url());
}

#[tokio::test]
async fn announce_outside_the_allow_list_is_refused_and_loopback_is_discovered() {
    let queen = TestQueen::start(vec![]).await;
    let mut client = queen.client().await;
    let refused = client
        .announce(pb::AnnounceRequest { address: "http://10.20.30.40:7835".into(), hive_id: "evil".into() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("allow-list"), "{}", refused.message());
    let bad =
        client.announce(pb::AnnounceRequest { address: "not a url".into(), hive_id: String::new() }).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    assert!(
        client.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives.is_empty(),
        "nothing dialed"
    );

    let hive = TestHive::start_named("good", ONE_GPU).await;
    let ok =
        client.announce(pb::AnnounceRequest { address: hive.url(), hive_id: "good".into() }).await.unwrap();
    assert!(ok.into_inner().added);
    wait_for(&mut client, "announced hive online", |hs| {
        hs.len() == 1 && online(&hs[0]) && hs[0].hive_id == "good"
    })
    .await;
}

/// One hive-id rule at every door (`rbee_shared::identity::check_hive_id`): an Announce
/// that names a hive id the hive itself could never take is refused and adds nothing.
#[tokio::test]
async fn announce_with_a_hive_id_the_hive_id_rule_refuses_is_invalid_and_adds_nothing() {
    let queen = TestQueen::start(vec![]).await;
    let mut client = queen.client().await;
    let hive = TestHive::start_named("good", ONE_GPU).await;
    for bad in ["has space", "a/b", "é", &"x".repeat(65)] {
        assert!(rbee_shared::identity::check_hive_id(bad).is_err(), "{bad:?}");
        let err = client
            .announce(pb::AnnounceRequest { address: hive.url(), hive_id: bad.to_owned() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(err.message().contains("hive id"), "{}", err.message());
    }
    assert!(
        client.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives.is_empty(),
        "a refused announce adds nothing"
    );
}

#[tokio::test]
async fn add_and_remove_at_runtime() {
    let queen = TestQueen::start(vec![]).await;
    let mut client = queen.client().await;
    let mut watch = Watch::open(&mut client).await;
    let (snapshot, _) = watch
        .until(|e| match e {
            pb::fleet_event::Event::Snapshot(s) => Some(s.clone()),
            _ => None,
        })
        .await;
    assert!(snapshot.hives.is_empty());

    let hive = TestHive::start_named("dyn", ONE_GPU).await;
    let added =
        client.add_hive(pb::AddHiveRequest { address: hive.addr.to_string() }).await.unwrap().into_inner();
    assert!(added.added);
    assert_eq!(added.hive.unwrap().address, hive.url(), "a bare host:port is normalised to http://");
    let again = client.add_hive(pb::AddHiveRequest { address: hive.url() }).await.unwrap().into_inner();
    assert!(!again.added);
    watch.until(state_to(&hive.url(), pb::HiveState::Online)).await;

    let bad =
        client.add_hive(pb::AddHiveRequest { address: "http://host-without-port".into() }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("port"), "{}", bad.message());

    client.remove_hive(pb::RemoveHiveRequest { hive: "dyn".into() }).await.unwrap();
    watch
        .until(|e| matches!(e, pb::fleet_event::Event::HiveRemoved(r) if r.hive_id == "dyn").then_some(()))
        .await;
    assert!(client.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives.is_empty());
    let gone = client.remove_hive(pb::RemoveHiveRequest { hive: "dyn".into() }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn local_hive_runs_in_process_and_is_managed() {
    let local = hive_config("local-test", ONE_GPU, None);
    let config = QueenConfig { local_hive: Some(local), ..fast_config(vec![]) };
    let queen = TestQueen::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let mut client = queen.client().await;
    let hs = wait_for(&mut client, "local hive online", |hs| {
        hs.len() == 1 && online(&hs[0]) && hs[0].latest_sample.is_some()
    })
    .await;
    assert_eq!(hs[0].origin(), pb::HiveOrigin::Local);
    assert_eq!(hs[0].hive_id, "local-test");
    queen.stop().await;
}

#[tokio::test]
async fn watch_fleet_sends_samples_at_the_asked_rate_and_refuses_bad_rates() {
    let hive = TestHive::start_named("w", ONE_GPU).await;
    let queen = TestQueen::start(vec![hive.url()]).await;
    let mut client = queen.client().await;
    let bad =
        client.watch_fleet(pb::WatchFleetRequest { sample_interval_ms: Some(5), ..Default::default() }).await;
    let err = match bad {
        Err(s) => s,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut stream = client
        .watch_fleet(pb::WatchFleetRequest { sample_interval_ms: Some(200), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut samples = 0;
    let deadline = Instant::now() + DEADLINE;
    while samples < 3 {
        let e = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("samples arrive")
            .unwrap()
            .unwrap();
        if let Some(pb::fleet_event::Event::Sample(s)) = e.event {
            assert_eq!(s.hive_id, "w");
            samples += 1;
        }
    }
}

/// The events of `stream` numbered after `after`, up to and with the first removal.
async fn events_until_removed(
    stream: &mut tonic::Streaming<pb::FleetEvent>,
    after: u64,
) -> Vec<(u64, pb::fleet_event::Event)> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    loop {
        let e = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("events until the removal arrive")
            .unwrap()
            .expect("the stream stays open");
        let event = e.event.unwrap();
        if e.fleet_seq <= after {
            continue;
        }
        let removed = matches!(event, pb::fleet_event::Event::HiveRemoved(_));
        got.push((e.fleet_seq, event));
        if removed {
            return got;
        }
    }
}

/// A client that reconnects with resume_after_seq gets exactly the events it missed
/// (those a watcher that stayed connected saw), numbered without a gap, and no
/// snapshot.
#[tokio::test]
async fn watch_fleet_resumes_with_exactly_the_missed_events() {
    let hive = TestHive::start_named("resume-1", ONE_GPU).await;
    let queen = TestQueen::start(vec![hive.url()]).await;
    let mut client = queen.client().await;
    wait_for(&mut client, "the hive online", |hs| hs.iter().all(online)).await;
    let watcher = client.clone();
    let open = |after: Option<u64>, epoch: u64| {
        let mut client = watcher.clone();
        async move {
            let req =
                pb::WatchFleetRequest { resume_after_seq: after, resume_epoch: epoch, ..Default::default() };
            client.watch_fleet(req).await.unwrap().into_inner()
        }
    };
    let mut stayed = open(None, 0).await;
    let mut left = open(None, 0).await;
    let snapshot = left.message().await.unwrap().unwrap();
    assert!(matches!(snapshot.event, Some(pb::fleet_event::Event::Snapshot(_))));
    let (seq, epoch) = (snapshot.fleet_seq, snapshot.queen_epoch);
    drop(left);

    client.add_hive(pb::AddHiveRequest { address: "127.0.0.1:9".into() }).await.unwrap();
    client.remove_hive(pb::RemoveHiveRequest { hive: "127.0.0.1:9".into() }).await.unwrap();
    let missed = events_until_removed(&mut stayed, seq).await;
    assert!(matches!(missed[0].1, pb::fleet_event::Event::HiveAdded(_)), "{missed:?}");

    let mut resumed = open(Some(seq), epoch).await;
    let got = events_until_removed(&mut resumed, 0).await;
    assert_eq!(got, missed);
    let numbers: Vec<u64> = got.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (seq + 1..=seq + got.len() as u64).collect::<Vec<_>>());

    // The same seq from another queen's numbering: a reset snapshot.
    let mut other = open(Some(seq), epoch ^ 1).await;
    let reset = other.message().await.unwrap().unwrap();
    let Some(pb::fleet_event::Event::Snapshot(s)) = reset.event else { panic!("{reset:?}") };
    assert!(s.reset);
    // A seq from the future: refused.
    let mut c = client.clone();
    let ahead =
        pb::WatchFleetRequest { resume_after_seq: Some(1 << 40), resume_epoch: epoch, ..Default::default() };
    let refused = match c.watch_fleet(ahead).await {
        Err(s) => s,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}

/// The hives' links run on threads of their own at a lower priority (`server.rs`), so a
/// Place that arrives preempts ingest rather than sharing the cores evenly with it: the
/// links' threads (`queen-links`) carry the nice value, the API's do not. On one shared
/// runtime there were no such threads.
#[test]
fn the_links_run_on_threads_of_their_own_at_a_lower_priority_than_the_api() {
    fn nice_of(stat: &str) -> i64 {
        // Field 19 (nice), counted after the command's closing parenthesis.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split_whitespace().nth(16).unwrap().parse().unwrap()
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let hive = TestHive::start_named("hive-a", ONE_GPU).await;
        let queen = TestQueen::start(vec![hive.url()]).await;
        let mut client = queen.client().await;
        wait_for(&mut client, "the hive online with a sample", |hs| {
            hs.len() == 1 && online(&hs[0]) && hs[0].latest_sample.is_some()
        })
        .await;
        let me = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The API runs on this test's runtime: its threads have tokio's default names.
        let (mut links, mut api) = (Vec::new(), Vec::new());
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(task.path().join("comm")),
                std::fs::read_to_string(task.path().join("stat")),
            ) else {
                continue;
            };
            if comm.trim() == rbee_queen::LINKS_THREAD_NAME {
                links.push(nice_of(&stat));
            } else if comm.starts_with("tokio-r") {
                api.push(nice_of(&stat));
            }
        }
        let base = nice_of(&me);
        assert!(!links.is_empty(), "no thread named {}", rbee_queen::LINKS_THREAD_NAME);
        let lowered = (base + i64::from(rbee_queen::LINKS_NICE)).min(19);
        assert!(links.iter().all(|&n| n == lowered), "links' threads at nice {links:?}, expected {lowered}");
        assert!(
            !api.is_empty() && api.iter().all(|&n| n == base),
            "the API's threads at nice {api:?}, expected {base}"
        );
        queen.stop().await;
    });
}
