//! GPU faults the hive reports, judged by the queen's health rules and announced as
//! events: a GPU that stops answering (GPU_IS_LOST) and a fatal XID; and the VRAM the
//! driver reserves, which Place must not promise. Once from a scripted hive (every
//! phase under the test's control), once end to end: the real `hive` binary on the
//! fake NVML library (`rbee-nvml-fake`), dialed by a real queen.

mod common;

use std::io::Write as _;

use common::scheduling::{GIB, gpu_request};
use common::scripted::*;
use common::*;
use rbee_hive::test_support::{HiveProcess, built_artifact, fake_nvml_lib};
use rbee_proto::v1 as pb;
use rbee_proto::v1::fleet_event::Event;
use rbee_proto::v1::scheduler_client::SchedulerClient;
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

/// Two GPUs on the fake driver: GPU-b falls off the bus from 5 s to 7 s, GPU-a raises
/// XID 79 at 8 s (late enough for the queen to connect and place first on a busy machine). Each GPU has 0.5 GiB reserved by the driver.
const FAKE_DRIVER: &str = r#"
[[gpu]]
uuid = "GPU-a"
memory_total = "80GiB"
memory_used = ["5GiB"]
memory_reserved = "512MiB"
util_percent = [10]
temperature_c = [40]
xid = [{ at_s = 8.0, code = 79 }]
[[gpu]]
uuid = "GPU-b"
memory_total = "80GiB"
memory_used = ["10GiB"]
memory_reserved = "512MiB"
util_percent = [10]
temperature_c = [40]
lost_at_s = 5.0
back_at_s = 7.0
"#;

#[tokio::test]
async fn the_real_hive_on_the_fake_driver_reports_a_lost_gpu_and_xid_79_and_place_counts_reserved_vram() {
    let hive_bin = built_artifact("hive", "-p rbee-hive");
    let mut scenario = tempfile::NamedTempFile::new().unwrap();
    scenario.write_all(FAKE_DRIVER.as_bytes()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let lib = fake_nvml_lib(false);
    let hive = HiveProcess::on_fake_driver(&hive_bin, &lib, scenario.path(), "fake-driver", state.path());
    let queen = TestQueen::start(vec![hive.url()]).await;
    let mut client = queen.client().await;
    let mut watch = Watch::open(&mut client).await;
    wait_for(&mut client, "the hive online with a sample", |hs| {
        hs.iter().all(|h| online(h) && h.latest_sample.is_some())
    })
    .await;

    // 80 GiB - 5 GiB used - 0.5 GiB reserved: 74.5 GiB to give, not 75.
    let mut scheduler = SchedulerClient::connect(queen.url()).await.unwrap();
    let dry = |vram| pb::PlaceRequest { dry_run: true, ..gpu_request(vram) };
    let r = scheduler.place(dry(75 * GIB - 100 * (1 << 20))).await.unwrap().into_inner();
    let Some(pb::place_response::Result::Rejection(r)) = r.result else { panic!("placed: {r:?}") };
    assert!(r.hive_reasons.contains(&"fake-driver/GPU-a: 74.5 GiB free < 74.9 GiB".to_string()), "{r:?}");
    let r = scheduler.place(dry(74 * GIB + GIB / 2)).await.unwrap().into_inner();
    assert!(matches!(r.result, Some(pb::place_response::Result::Placement(_))), "{r:?}");

    let url = hive.url();
    let (lost, _) = watch
        .until(|e| match e {
            Event::HealthChanged(h)
                if h.address == url && h.reasons.iter().any(|r| r.contains("does not answer")) =>
            {
                Some(h.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(lost.to(), pb::Health::Degraded, "{lost:?}");
    assert!(
        lost.reasons
            .iter()
            .any(|r| r.starts_with("gpu1 (GPU-b) does not answer:") && r.contains("GPU_IS_LOST"))
    );
    let (back, _) = watch.until(health_to(&url, pb::Health::Healthy)).await;
    assert!(back.reasons.is_empty(), "{back:?}");
    let (xid, _) = watch.until(health_to(&url, pb::Health::Unhealthy)).await;
    assert!(xid.reasons.contains(&"gpu0 1 critical XID events (last XID 79)".to_string()), "{xid:?}");
    drop(hive);
}

/// Two GPUs over 4 NVLink links, down from 4 s to 7 s (late enough that the queen
/// has seen them up on a loaded machine).
const LINK_DOWN: &str = r#"
[[gpu]]
uuid = "GPU-x"
pci_bus_id = "00000000:18:00.0"
memory_total = "80GiB"
numa_node = 0
nvlink = [{ peer = 1, links = 4, down_at_s = 4.0, up_at_s = 7.0 }]
[[gpu]]
uuid = "GPU-y"
pci_bus_id = "00000000:2A:00.0"
memory_total = "80GiB"
numa_node = 0
nvlink = [{ peer = 0, links = 4, down_at_s = 4.0, up_at_s = 7.0 }]
"#;

#[tokio::test]
async fn an_nvlink_that_goes_down_on_the_real_hive_reaches_the_queen_as_a_diff_and_a_degraded_reason() {
    let hive_bin = built_artifact("hive", "-p rbee-hive");
    let mut scenario = tempfile::NamedTempFile::new().unwrap();
    scenario.write_all(LINK_DOWN.as_bytes()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let lib = fake_nvml_lib(false);
    let hive = HiveProcess::on_fake_driver(&hive_bin, &lib, scenario.path(), "linked", state.path());
    let queen = TestQueen::start(vec![hive.url()]).await;
    let mut client = queen.client().await;
    let mut watch = Watch::open(&mut client).await;
    let url = hive.url();
    let nvlinks = |h: &pb::HiveView| -> Vec<Option<u32>> {
        let gpus = h.capabilities.as_ref().map_or(&[][..], |c| &c.gpus[..]);
        gpus.iter().flat_map(|g| g.topology.iter().flat_map(|t| t.links.iter().map(|l| l.nvlinks))).collect()
    };

    let (down, _) = watch
        .until(|e| match e {
            Event::HealthChanged(h) if h.address == url && h.reasons.iter().any(|r| r.contains("NVLink")) => {
                Some(h.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(down.to(), pb::Health::Degraded, "{down:?}");
    assert_eq!(down.reasons, ["GPU-x: NVLink to GPU-y down (4 -> 0 links)"]);
    let hives = wait_for(&mut client, "the diff in the queen's view", |hs| {
        hs.iter().any(|h| nvlinks(h) == [Some(0), Some(0)])
    })
    .await;
    assert_eq!(hives.len(), 1);

    let (up, _) = watch.until(health_to(&url, pb::Health::Healthy)).await;
    assert!(up.reasons.is_empty(), "{up:?}");
    wait_for(&mut client, "the links back", |hs| hs.iter().any(|h| nvlinks(h) == [Some(4), Some(4)])).await;
    drop(hive);
}
