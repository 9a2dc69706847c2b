//! Trust under faults: scripted hives (real tonic servers on 127.0.0.1:0) that do
//! what a real hive should not — ignore a resync, run an hour ahead, race hot-plugs,
//! flood diffs — against a real queen and its real clients.

mod common;

use std::time::Duration;

use common::scripted::{ScriptedHive, discover, gpu, sample};
use common::*;
use rbee_proto::v1 as pb;
use rbee_proto::v1::scheduler_client::SchedulerClient;
use tokio::sync::mpsc;

type Event = pb::fleet_event::Event;

async fn place(queen: &TestQueen, vram: u64) -> pb::PlaceResponse {
    let mut client = SchedulerClient::connect(queen.url()).await.unwrap();
    client.place(pb::PlaceRequest { vram_bytes: vram, ..Default::default() }).await.unwrap().into_inner()
}

fn placed(r: &pb::PlaceResponse) -> bool {
    matches!(r.result, Some(pb::place_response::Result::Placement(_)))
}

#[tokio::test]
async fn a_hive_whose_samples_stop_applying_goes_stale_is_not_placed_on_and_is_redialed() {
    let hive = ScriptedHive::start(discover("deaf", &["GPU-A"]), |mut s| async move {
        let _ = s.inbound.message().await;
        s.sample(sample(&["GPU-A"])).await;
        // A diff on a base the queen does not hold: the queen asks for a resync ...
        let gapped = pb::CapabilityDiff {
            base_version: 5,
            new_version: 6,
            gpus_added: vec![gpu("GPU-X", 1)],
            ..Default::default()
        };
        s.diff(gapped).await;
        // ... which this hive ignores, while it keeps the stream busy with samples.
        s.sample_forever(&["GPU-A"]).await;
    })
    .await;
    let queen = TestQueen::start(vec![hive.url.clone()]).await;
    let mut client = queen.client().await;
    let mut watch = Watch::open(&mut client).await;

    let (stale, _) = watch.until(state_to(&hive.url, pb::HiveState::Stale)).await;
    assert!(stale.reason.contains("no sample applied"), "{}", stale.reason);
    let view = client.get_hive(pb::GetHiveRequest { hive: "deaf".into() }).await.unwrap().into_inner();
    assert_ne!(view.state(), pb::HiveState::Online, "messages flow, but nothing applies: not fresh");
    assert_ne!(view.health(), pb::Health::Healthy);
    let r = place(&queen, 10 << 30).await;
    assert!(!placed(&r), "a placement on a hive whose samples do not apply: {r:?}");

    let (lost, _) = watch.until(state_to(&hive.url, pb::HiveState::Lost)).await;
    assert!(lost.reason.contains("resync"), "{}", lost.reason);
    wait_for(&mut client, "a redial", |hs| hs[0].counters.is_some_and(|c| c.reconnects >= 1)).await;
    assert!(hive.discovers() >= 2, "the queen dialed again");
}

#[tokio::test]
async fn a_hive_clock_an_hour_ahead_neither_hides_samples_nor_looks_fresher() {
    const HOUR_MS: i64 = 3_600_000;
    let hive = ScriptedHive::start(discover("ahead", &["GPU-A"]), |mut s| async move {
        s.clock_offset_ms = HOUR_MS;
        let _ = s.inbound.message().await;
        let mut first = sample(&["GPU-A"]);
        first.taken_at_unix_ms += HOUR_MS as u64;
        s.sample(first).await;
        // The hive's NTP catches up: the rest are stamped on time.
        s.sample_forever(&["GPU-A"]).await;
    })
    .await;
    let queen = TestQueen::start(vec![hive.url.clone()]).await;
    let mut client = queen.client().await;
    let mut watch = client
        .watch_fleet(pb::WatchFleetRequest { sample_interval_ms: Some(100), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut samples = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while samples < 5 {
        let e = tokio::time::timeout_at(deadline, watch.message())
            .await
            .expect("the watcher keeps getting this hive's samples")
            .unwrap()
            .unwrap();
        if let Some(Event::Sample(s)) = e.event {
            assert_eq!(s.hive_id, "ahead");
            assert!(s.sample_age_ms < 5_000, "age is on the queen's clock: {}", s.sample_age_ms);
            samples += 1;
        }
    }
    let view = client.get_hive(pb::GetHiveRequest { hive: "ahead".into() }).await.unwrap().into_inner();
    let skew = view.clock_skew_ms.expect("the skew is reported");
    assert!((HOUR_MS - 60_000..=HOUR_MS + 60_000).contains(&skew), "skew {skew} ms");
}

#[tokio::test]
async fn hot_plug_never_makes_the_hive_unhealthy_and_a_new_gpu_is_pending_until_measured() {
    const CYCLES: u64 = 100;
    let (ready_tx, mut ready) = mpsc::channel::<()>(1);
    let (go, go_rx) = mpsc::channel::<()>(1);
    let go_rx = std::sync::Arc::new(tokio::sync::Mutex::new(go_rx));
    let hive = ScriptedHive::start(discover("plug", &["GPU-A"]), move |mut s| {
        let (ready_tx, go_rx) = (ready_tx.clone(), go_rx.clone());
        async move {
            let _ = s.inbound.message().await;
            s.sample(sample(&["GPU-A"])).await;
            let mut version = 1;
            for cycle in 0..CYCLES {
                // The diff first, then a sample that names the new GPU.
                let add = pb::CapabilityDiff {
                    base_version: version,
                    new_version: version + 1,
                    gpus_added: vec![gpu("GPU-B", 1)],
                    ..Default::default()
                };
                s.diff(add).await;
                version += 1;
                if cycle == 0 {
                    let _ = ready_tx.send(()).await;
                    let _ = go_rx.lock().await.recv().await;
                }
                s.sample(sample(&["GPU-A", "GPU-B"])).await;
                let remove = pb::CapabilityDiff {
                    base_version: version,
                    new_version: version + 1,
                    gpus_removed: vec!["GPU-B".into()],
                    ..Default::default()
                };
                s.diff(remove).await;
                version += 1;
                s.sample(sample(&["GPU-A"])).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Done: a final state the test can wait for, then calm samples.
            let last = pb::CapabilityDiff {
                base_version: version,
                new_version: version + 1,
                gpus_added: vec![gpu("GPU-C", 1)],
                ..Default::default()
            };
            s.diff(last).await;
            s.sample_forever(&["GPU-A", "GPU-C"]).await;
        }
    })
    .await;
    let queen = TestQueen::start(vec![hive.url.clone()]).await;
    let mut client = queen.client().await;
    let mut watch = Watch::open(&mut client).await;

    tokio::time::timeout(DEADLINE, ready.recv()).await.expect("the first hot-plug").unwrap();
    let views = wait_for(&mut client, "GPU-B in the capabilities", |hs| {
        hs[0].capabilities.as_ref().is_some_and(|c| c.gpus.iter().any(|g| g.id == "GPU-B"))
    })
    .await;
    let view = &views[0];
    assert_eq!(view.health(), pb::Health::Healthy, "{:?}", view.health_reasons);
    let b = view.devices.iter().find(|d| d.device_id == "GPU-B").expect("GPU-B has a health entry");
    assert_eq!(b.health(), pb::Health::Pending, "{:?}", b.reasons);
    let r = place(&queen, 10 << 30).await;
    assert!(placed(&r), "the hive still takes work on GPU-A: {r:?}");
    go.send(()).await.unwrap();

    let final_version = 1 + 2 * CYCLES + 1;
    let (_, _) = watch
        .until(|e| match e {
            Event::HealthChanged(h) if h.address == hive.url && h.to() == pb::Health::Unhealthy => {
                panic!("a hot-plug made the hive unhealthy: {:?}", h.reasons)
            }
            Event::CapabilitiesChanged(c)
                if c.capabilities.as_ref().is_some_and(|c| c.version == final_version) =>
            {
                Some(())
            }
            _ => None,
        })
        .await;
}

#[tokio::test]
async fn a_diff_flood_reaches_each_watcher_coalesced() {
    const DIFFS: u64 = 20_000;
    let hive = ScriptedHive::start(discover("flood", &["GPU-A"]), |mut s| async move {
        let _ = s.inbound.message().await;
        s.sample(sample(&["GPU-A"])).await;
        for v in 1..=DIFFS {
            let mut diff = pb::CapabilityDiff { base_version: v, new_version: v + 1, ..Default::default() };
            if v % 2 == 1 {
                diff.gpus_added = vec![gpu("GPU-B", 1)];
            } else {
                diff.gpus_removed = vec!["GPU-B".into()];
            }
            if !s.diff(diff).await {
                return;
            }
            // Samples keep coming (a hive with only diffs for the lost timeout is lost).
            if v % 200 == 0 && !s.sample(sample(&["GPU-A"])).await {
                return;
            }
        }
        s.sample_forever(&["GPU-A"]).await;
    })
    .await;
    let queen = TestQueen::start(vec![hive.url.clone()]).await;
    let mut client = queen.client().await;
    let mut watch = Watch::open(&mut client).await;
    let mut events = 0u32;
    watch
        .until(|e| match e {
            Event::CapabilitiesChanged(c) if c.address == hive.url => {
                events += 1;
                c.capabilities.as_ref().is_some_and(|c| c.version == DIFFS + 1).then_some(())
            }
            // A watcher that fell behind the fleet's event channel gets one snapshot.
            Event::Snapshot(s) => {
                events += 1;
                let done = |h: &pb::HiveView| h.capabilities.as_ref().is_some_and(|c| c.version == DIFFS + 1);
                s.hives.iter().any(done).then_some(())
            }
            _ => None,
        })
        .await;
    // Thousands of diffs in a few seconds; at most one event per 100 ms reaches the watcher.
    assert!(events <= 200, "{events} capability events for one watcher");
    let view = client.get_hive(pb::GetHiveRequest { hive: "flood".into() }).await.unwrap().into_inner();
    let held = view.capabilities.unwrap();
    let ids: Vec<&str> = held.gpus.iter().map(|g| g.id.as_str()).collect();
    assert_eq!((held.version, ids), (DIFFS + 1, vec!["GPU-A"]), "every diff applied in order");
}

#[tokio::test]
async fn a_sample_measured_against_capabilities_the_queen_never_got_is_not_applied_and_resyncs() {
    use common::scripted::caps;
    let (asked_tx, mut asked) = mpsc::channel::<()>(1);
    let (go, go_rx) = mpsc::channel::<()>(1);
    let go_rx = std::sync::Arc::new(tokio::sync::Mutex::new(go_rx));
    let hive = ScriptedHive::start(discover("lossy", &["GPU-A"]), move |mut s| {
        let (asked_tx, go_rx) = (asked_tx.clone(), go_rx.clone());
        async move {
            let _ = s.inbound.message().await;
            let mut first = sample(&["GPU-A"]);
            first.capability_version = Some(1);
            s.sample(first).await;
            // The diff to version 2 (adding GPU-B) is lost; its sample arrives.
            let mut orphan = sample(&["GPU-A", "GPU-B"]);
            orphan.capability_version = Some(2);
            orphan.cpu_percent = Some(77.0);
            s.sample(orphan).await;
            // The queen asks for a resync: answer with the whole of version 2.
            while let Ok(Some(m)) = s.inbound.message().await {
                if m.resync {
                    break;
                }
            }
            let _ = asked_tx.send(()).await;
            let identity = discover("lossy", &[]).identity;
            let snapshot = pb::Snapshot {
                reason: pb::SnapshotReason::Resync as i32,
                identity,
                capabilities: Some(caps(2, &["GPU-A", "GPU-B"])),
            };
            s.send(pb::hive_message::Payload::Snapshot(snapshot)).await;
            let _ = go_rx.lock().await.recv().await;
            loop {
                let mut next = sample(&["GPU-A", "GPU-B"]);
                next.capability_version = Some(2);
                if !s.sample(next).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await;
    let queen = TestQueen::start(vec![hive.url.clone()]).await;
    let mut client = queen.client().await;

    tokio::time::timeout(DEADLINE, asked.recv()).await.expect("the queen asks for a resync").unwrap();
    let views = wait_for(&mut client, "version 2 from the resync", |hs| {
        hs[0].capabilities.as_ref().is_some_and(|c| c.version == 2)
    })
    .await;
    let view = &views[0];
    let counters = view.counters.unwrap();
    assert_eq!((counters.gaps, counters.resyncs), (1, 1), "{counters:?}");
    let latest = view.latest_sample.as_ref().expect("the first sample applied");
    assert_eq!(latest.cpu_percent, Some(5.0), "the orphan sample was never applied");
    assert_eq!(view.stats.as_ref().map(|s| s.samples), Some(1));
    // Until a sample measured against version 2 arrives, GPU-B is pending.
    let b = view.devices.iter().find(|d| d.device_id == "GPU-B").expect("GPU-B has a health entry");
    assert_eq!(b.health(), pb::Health::Pending, "{:?}", b.reasons);

    go.send(()).await.unwrap();
    wait_for(&mut client, "GPU-B measured", |hs| {
        hs[0].devices.iter().any(|d| d.device_id == "GPU-B" && d.health() == pb::Health::Healthy)
    })
    .await;
}

/// Reservations on a hive that stays gone past `--reservation-lost-grace` are dropped,
/// even while the queen keeps redialing it: each failed redial (lost, connecting, lost)
/// used to restart the count, so with a backoff shorter than the grace they were held
/// forever.
#[tokio::test]
async fn reservations_on_a_hive_gone_past_the_grace_are_dropped_while_it_is_redialed() {
    use common::scheduling::{TWO_GPUS, all_reservations, gpu_request, placement};
    let hive = TestHive::start(TWO_GPUS).await;
    let mut config = fast_config(vec![hive.url()]);
    config.scheduler.lost_grace = Duration::from_secs(2);
    let queen = TestQueen::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "the hive online with a sample", |h| {
        h.iter().any(|h| online(h) && h.latest_sample.is_some())
    })
    .await;
    let mut scheduler = SchedulerClient::connect(queen.url()).await.unwrap();
    let request = pb::PlaceRequest { ttl_ms: Some(3_600_000), ..gpu_request(1 << 30) };
    placement(scheduler.place(request).await.unwrap().into_inner());

    hive.kill().await;
    // Lost after 2 s without the stream, redialed every 100..400 ms, dropped 2 s later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !all_reservations(&mut scheduler, 10).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the reservation on the gone hive is still held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    queen.stop().await;
}

/// A lost hive stays lost while the queen redials it: one event when it is lost, none
/// per retry. Each redial used to flip it to connecting and back, so watchers got two
/// events per retry and a count of lost hives never held still.
#[tokio::test]
async fn a_lost_hive_stays_lost_while_it_is_redialed() {
    use common::scheduling::TWO_GPUS;
    let hive = TestHive::start(TWO_GPUS).await;
    let queen = TestQueen::start(vec![hive.url()]).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "the hive online", |h| h.iter().any(online)).await;
    let address = fleet.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives[0]
        .address
        .clone();
    let mut watch = Watch::open(&mut fleet).await;

    hive.kill().await;
    watch.until(state_to(&address, pb::HiveState::Lost)).await;
    // Redialed every 100..400 ms: three failed retries (a retry sends no event, so
    // the count is polled).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let hives = loop {
        let hives = fleet.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives;
        if hives[0].counters.is_some_and(|c| c.reconnects >= 3) {
            break hives;
        }
        assert!(tokio::time::Instant::now() < deadline, "no three redials: {:?}", hives[0]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(hives[0].state(), pb::HiveState::Lost, "{:?}", hives[0]);
    assert!(hives[0].last_error.is_some(), "the newest failure is shown");
    // Everything the watcher got since: no state change for this hive.
    while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_millis(300), watch.0.message()).await {
        if let Some(Event::StateChanged(c)) = e.event {
            assert_ne!(c.address, address, "a state change while the hive is redialed: {c:?}");
        }
    }
    queen.stop().await;
}
