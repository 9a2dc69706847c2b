//! GPU faults the hive reports, judged by the queen's health rules and announced as
//! events: a GPU that stops answering (GPU_IS_LOST) and a fatal XID. The hive side of
//! each (the real binary against the fake NVML library) is `hive/tests/nvml_fake.rs`.

mod common;

use common::scripted::*;
use common::*;
use rbee_proto::v1 as pb;
use rbee_proto::v1::fleet_event::Event;
use tokio::sync::watch;

/// The hive's story, one phase after another as the test moves it on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Calm,
    GpuBLost,
    GpuBBack,
    Xid79,
}

fn health_to(url: &str, to: pb::Health) -> impl FnMut(&Event) -> Option<pb::HiveHealthChanged> + '_ {
    move |e| match e {
        Event::HealthChanged(h) if h.address == url && h.to() == to => Some(h.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn a_lost_gpu_and_a_fatal_xid_show_as_health_reasons_and_events_until_they_clear() {
    let (phase_tx, phase_rx) = watch::channel(Phase::Calm);
    let hive = ScriptedHive::start(discover("faulty", &["GPU-A", "GPU-B"]), move |mut s| {
        let mut phase = phase_rx.clone();
        async move {
            let _ = s.inbound.message().await;
            let mut version = 1;
            loop {
                let now = *phase.borrow_and_update();
                let mut sample = match now {
                    Phase::GpuBLost => sample(&["GPU-A"]),
                    Phase::Calm | Phase::GpuBBack | Phase::Xid79 => sample(&["GPU-A", "GPU-B"]),
                };
                // The capability changes each phase brings, once.
                if now == Phase::GpuBLost && version == 1 {
                    let diff = pb::CapabilityDiff {
                        base_version: 1,
                        new_version: 2,
                        gpus_removed: vec!["GPU-B".into()],
                        ..Default::default()
                    };
                    s.diff(diff).await;
                    version = 2;
                }
                if now == Phase::GpuBBack && version == 2 {
                    let diff = pb::CapabilityDiff {
                        base_version: 2,
                        new_version: 3,
                        gpus_added: vec![gpu("GPU-B", 1)],
                        ..Default::default()
                    };
                    s.diff(diff).await;
                    version = 3;
                }
                if now == Phase::GpuBLost {
                    sample.lost_gpus.push(pb::LostGpu {
                        index: 1,
                        id: "GPU-B".into(),
                        reason: "open: GPU_IS_LOST: device fell off the bus".into(),
                        since_unix_ms: 1,
                    });
                }
                if now == Phase::Xid79 {
                    sample.gpus[0].xid_events = Some(1);
                    sample.gpus[0].last_xid = Some(79);
                }
                if !s.sample(sample).await {
                    return;
                }
                let _ = tokio::time::timeout(std::time::Duration::from_millis(50), phase.changed()).await;
            }
        }
    })
    .await;
    let queen = TestQueen::start(vec![hive.url.clone()]).await;
    let mut client = queen.client().await;
    wait_for(&mut client, "the hive online and healthy", |hs| {
        hs.iter().all(|h| online(h) && h.health() == pb::Health::Healthy)
    })
    .await;
    let mut watch = Watch::open(&mut client).await;

    phase_tx.send(Phase::GpuBLost).unwrap();
    let (lost, _) = watch.until(health_to(&hive.url, pb::Health::Degraded)).await;
    let reason = "gpu1 (GPU-B) does not answer: open: GPU_IS_LOST: device fell off the bus";
    assert_eq!(lost.reasons, [reason], "{lost:?}");
    let view = client.get_hive(pb::GetHiveRequest { hive: "faulty".into() }).await.unwrap().into_inner();
    assert!(view.health_reasons.contains(&reason.to_string()), "{view:?}");

    phase_tx.send(Phase::GpuBBack).unwrap();
    let (back, _) = watch.until(health_to(&hive.url, pb::Health::Healthy)).await;
    assert!(back.reasons.is_empty(), "{back:?}");

    phase_tx.send(Phase::Xid79).unwrap();
    let (xid, _) = watch.until(health_to(&hive.url, pb::Health::Unhealthy)).await;
    assert!(xid.reasons.contains(&"gpu0 1 critical XID events (last XID 79)".to_string()), "{xid:?}");
}
