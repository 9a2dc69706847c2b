//! A scripted hive (a real tonic server on 127.0.0.1:0) that sends a gapped diff:
//! the queen must ask for a resync and never apply the diff.

//! A scripted hive (the common `ScriptedHive`: a real tonic server on 127.0.0.1:0) that
//! sends a gapped diff or garbage: the queen must ask for a resync and never apply it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::scripted::{ScriptedHive, caps, discover, gpu, sample};
use common::*;
use rbee_proto::v1 as pb;

/// A hive "scripted" with GPU-A (capabilities v1) that sends one sample, then `bad`,
/// and answers every resync request with the truth (v7: GPU-A and GPU-B) and calm
/// samples. Returns the hive and how many resyncs the queen asked for.
async fn start_scripted(bad: pb::hive_message::Payload) -> (ScriptedHive, Arc<AtomicUsize>) {
    let resyncs = Arc::new(AtomicUsize::new(0));
    let seen = resyncs.clone();
    let hive = ScriptedHive::start(discover("scripted", &["GPU-A"]), move |mut s| {
        let (bad, seen) = (bad.clone(), seen.clone());
        async move {
            let first = s.inbound.message().await.unwrap().unwrap();
            assert_eq!(first.known_capability_version, Some(1), "the queen resumes from Discover");
            s.sample(sample(&["GPU-A"])).await;
            s.send(bad).await;
            // Wait for the queen's resync request, then send the truth.
            while let Ok(Some(m)) = s.inbound.message().await {
                if m.resync {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let snapshot = pb::Snapshot {
                        reason: pb::SnapshotReason::Resync as i32,
                        identity: discover("scripted", &[]).identity,
                        capabilities: Some(caps(7, &["GPU-A", "GPU-B"])),
                    };
                    s.send(pb::hive_message::Payload::Snapshot(snapshot)).await;
                    s.sample_forever(&["GPU-A", "GPU-B"]).await;
                    return;
                }
            }
        }
    })
    .await;
    (hive, resyncs)
}

#[tokio::test]
async fn a_gapped_diff_leads_to_a_resync_not_wrong_state() {
    let gapped = pb::CapabilityDiff {
        base_version: 5,
        new_version: 6,
        gpus_added: vec![gpu("GPU-GAP", 1)],
        ..Default::default()
    };
    let (hive, seen) = start_scripted(pb::hive_message::Payload::Diff(gapped)).await;
    let queen = TestQueen::start(vec![hive.url.clone()]).await;
    let mut client = queen.client().await;
    let hs = wait_for(&mut client, "the resync snapshot (v7) taken", |hs| {
        hs.iter().any(|h| h.capabilities.as_ref().is_some_and(|c| c.version == 7))
    })
    .await;
    let caps = hs[0].capabilities.as_ref().unwrap();
    let ids: Vec<&str> = caps.gpus.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids, ["GPU-A", "GPU-B"], "the gapped diff was never applied");
    let c = hs[0].counters.unwrap();
    assert_eq!((c.gaps, c.resyncs), (1, 1), "{c:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(hs[0].state(), pb::HiveState::Online);
}

#[tokio::test]
async fn garbage_from_a_hive_marks_it_unhealthy_and_resyncs_without_touching_its_view() {
    let mut lying = sample(&["GPU-A"]);
    lying.ram_used_bytes = lying.ram_total_bytes + 1;
    lying.cpu_percent = Some(f32::NAN);
    let (hive, seen) = start_scripted(pb::hive_message::Payload::Sample(lying)).await;
    let queen = TestQueen::start(vec![]).await;
    let mut client = queen.client().await;
    let mut watch = Watch::open(&mut client).await;
    client.add_hive(pb::AddHiveRequest { address: hive.url.clone() }).await.unwrap();
    let (unhealthy, _) = watch
        .until(|e| match e {
            pb::fleet_event::Event::HealthChanged(h)
                if h.to() == pb::Health::Unhealthy
                    && h.reasons.iter().any(|r| r.contains("invalid data")) =>
            {
                Some(h.clone())
            }
            _ => None,
        })
        .await;
    assert!(
        unhealthy
            .reasons
            .iter()
            .any(|r| r.contains("invalid data from hive") && r.contains("sample.ram_used_bytes")),
        "{:?}",
        unhealthy.reasons
    );
    let hs = wait_for(&mut client, "resynced after garbage", |hs| {
        hs.iter()
            .any(|h| h.capabilities.as_ref().is_some_and(|c| c.version == 7) && h.latest_sample.is_some())
    })
    .await;
    let h = &hs[0];
    assert_eq!(h.counters.unwrap().invalid_messages, 1);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    let latest = h.latest_sample.as_ref().unwrap();
    assert!(latest.ram_used_bytes <= latest.ram_total_bytes, "the bad sample never reached the view");
}
