//! Synthetic fleets: hive snapshots built in memory, for benchmarks, unit tests and
//! examples. Never used by `queen serve`; the hives they describe do not exist.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rbee_shared::{
    Backend, Capabilities, CpuInfo, DeviceSourceKind, GpuDevice, GpuSample, HiveIdentity, MigMode, Sample,
    VersionedCapabilities,
};

use crate::fleet::{ConnState, HiveSnapshot, Origin};
use crate::fleet::{DeviceHealth, Health, HealthReport};

const GIB: u64 = 1 << 30;

/// One synthetic hive: `gpus` GPUs of `vram_gib` GiB, with `used_gib` used on each and
/// utilisation `util` percent, in state `state`, labelled `labels`.
pub fn hive(
    id: &str,
    gpus: usize,
    vram_gib: u64,
    used_gib: u64,
    util: f32,
    state: ConnState,
    labels: &[(&str, &str)],
) -> Arc<HiveSnapshot> {
    let labels: BTreeMap<String, String> =
        labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let mut caps = Capabilities {
        cpu: CpuInfo { model: "synthetic".into(), physical_cores: Some(32), logical_cores: 64 },
        ram_total_bytes: 512 * GIB,
        backends: vec![Backend::Cpu, Backend::Cuda],
        labels: labels.clone(),
        ..Capabilities::default()
    };
    let mut sample = Sample {
        taken_at_unix_ms: rbee_shared::time::now_unix_ms(),
        cpu_percent: Some(util / 2.0),
        ram_total_bytes: 512 * GIB,
        ram_used_bytes: 64 * GIB,
        ram_available_bytes: 448 * GIB,
        ..Sample::default()
    };
    let mut devices = Vec::new();
    for i in 0..gpus {
        let gid = format!("GPU-{id}-{i}");
        caps.gpus.insert(
            gid.clone(),
            GpuDevice {
                id: gid.clone(),
                index: i as u32,
                name: "Synthetic H100".into(),
                pci_bus_id: format!("00000000:{:02X}:00.0", i),
                compute_capability: None,
                vram_total_bytes: vram_gib * GIB,
                driver_version: None,
                cuda_version: None,
                power_limit_mw: None,
                mig_mode: MigMode::NotReported,
                topology: Default::default(),
            },
        );
        sample.gpus.push(GpuSample {
            id: gid.clone(),
            index: i as u32,
            vram_used_bytes: Some(used_gib * GIB),
            vram_free_bytes: Some((vram_gib - used_gib) * GIB),
            gpu_util_percent: Some((util + i as f32) % 100.0),
            temperature_c: Some(50.0),
            ..GpuSample::default()
        });
        devices.push(DeviceHealth {
            device_id: gid,
            index: i as u32,
            health: Health::Healthy,
            reasons: vec![],
        });
    }
    let online = state == ConnState::Online;
    Arc::new(
        HiveSnapshot {
            address: format!("http://{id}.synthetic:7835"),
            origin: Origin::Static,
            state,
            state_since_unix_ms: rbee_shared::time::now_unix_ms(),
            unreachable_since_unix_ms: None,
            identity: Some(Arc::new(HiveIdentity {
                hive_id: id.to_owned(),
                epoch: "synthetic".into(),
                hostname: id.to_owned(),
                advertised_address: String::new(),
                version: String::new(),
                protocol_version: 1,
                labels,
                gpu_source: DeviceSourceKind::Simulated,
                started_at_unix_ms: 0,
            })),
            caps: Some(Arc::new(VersionedCapabilities { version: 1, caps })),
            latest: Some(Arc::new(sample)),
            latest_received: Some(std::time::Instant::now()),
            samples_applied: 1,
            clock_skew_ms: Some(0),
            health: Arc::new(HealthReport {
                health: if online { Health::Healthy } else { Health::Degraded },
                placement: if online { Health::Healthy } else { Health::Degraded },
                reasons: if online { vec![] } else { vec![format!("no sample for {:.1} s", 4.0)] },
                devices,
                cpu_busy: None,
            }),
            stats: Default::default(),
            last_error: None,
            counters: Default::default(),
            sample_interval: Duration::from_secs(1),
            placement: Default::default(),
        }
        .with_placement(),
    )
}

/// `hives` online hives with `gpus` 80 GiB GPUs each, loads spread out.
pub fn fleet(hives: usize, gpus: usize) -> Vec<Arc<HiveSnapshot>> {
    (0..hives)
        .map(|i| {
            let zone = if i % 2 == 0 { "eu" } else { "us" };
            hive(
                &format!("hive-{i:05}"),
                gpus,
                80,
                (i % 40) as u64,
                (i * 7 % 100) as f32,
                ConnState::Online,
                &[("zone", zone)],
            )
        })
        .collect()
}
