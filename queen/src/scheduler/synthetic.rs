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

/// A hive's GPU topology, for [`shaped`]: per GPU its used memory, NUMA node and MIG
/// parent, and the pairs linked by NVLink and by one PCIe switch.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// VRAM of each GPU, GiB.
    pub vram_gib: u64,
    /// Used VRAM per GPU, GiB (its length is the GPU count).
    pub used_gib: Vec<u64>,
    /// NUMA node per GPU (`None`: not reported).
    pub numa: Vec<Option<u32>>,
    /// MIG parent per GPU (`None`: a whole GPU).
    pub mig_parent: Vec<Option<String>>,
    /// Pairs linked by NVLink (directly or through an NVSwitch).
    pub nvlink: Vec<(usize, usize)>,
    /// Pairs behind one PCIe switch (`PIX`).
    pub switch: Vec<(usize, usize)>,
}

impl Shape {
    /// A DGX-style box: 8 GPUs of 80 GiB, every pair on NVSwitch, two NUMA nodes of 4.
    pub fn dgx() -> Self {
        let all: Vec<(usize, usize)> = (0..8).flat_map(|i| (i + 1..8).map(move |j| (i, j))).collect();
        Self {
            vram_gib: 80,
            used_gib: vec![0; 8],
            numa: (0..8).map(|i| Some(i as u32 / 4)).collect(),
            mig_parent: vec![None; 8],
            nvlink: all,
            switch: vec![(0, 1), (2, 3), (4, 5), (6, 7)],
        }
    }

    /// A two-socket PCIe box: 2 NUMA nodes of 4 GPUs of 80 GiB, NVLink bridges in pairs
    /// (0-1, 2-3, 4-5, 6-7), each pair behind one PCIe switch.
    pub fn two_socket_pairs() -> Self {
        let pairs = vec![(0, 1), (2, 3), (4, 5), (6, 7)];
        Self {
            vram_gib: 80,
            used_gib: vec![0; 8],
            numa: (0..8).map(|i| Some(i as u32 / 4)).collect(),
            mig_parent: vec![None; 8],
            nvlink: pairs.clone(),
            switch: pairs,
        }
    }

    /// One 80 GiB GPU split into `instances` MIG instances (devices of their own, with
    /// its id as their parent) of `80 / instances` GiB each.
    pub fn mig(instances: usize) -> Self {
        Self {
            vram_gib: 80 / instances.max(1) as u64,
            used_gib: vec![0; instances],
            numa: vec![Some(0); instances],
            mig_parent: vec![Some("GPU-physical-0".into()); instances],
            nvlink: Vec::new(),
            switch: Vec::new(),
        }
    }
}

/// A synthetic online hive with the GPUs and topology of `shape` (GPU ids
/// `GPU-{id}-{i}`, in index order).
pub fn shaped(id: &str, shape: &Shape) -> Arc<HiveSnapshot> {
    use rbee_shared::{GpuLink, PcieLevel};
    let n = shape.used_gib.len();
    let base = hive(id, n, shape.vram_gib, 0, 10.0, ConnState::Online, &[]);
    let mut h = (*base).clone();
    let ids: Vec<String> = (0..n).map(|i| format!("GPU-{id}-{i}")).collect();
    let has =
        |pairs: &[(usize, usize)], i: usize, j: usize| pairs.iter().any(|p| *p == (i, j) || *p == (j, i));
    let mut caps = h
        .caps
        .as_ref()
        .map(|c| (**c).clone())
        .unwrap_or_else(|| VersionedCapabilities { version: 1, caps: Capabilities::default() });
    for (i, gid) in ids.iter().enumerate() {
        let Some(gpu) = caps.caps.gpus.get_mut(gid) else { continue };
        gpu.topology.numa_node = shape.numa.get(i).copied().flatten();
        gpu.topology.mig_parent = shape.mig_parent.get(i).cloned().flatten();
        gpu.topology.links = (0..n)
            .filter(|j| *j != i)
            .map(|j| GpuLink {
                peer: ids[j].clone(),
                pcie: Some(if has(&shape.switch, i, j) {
                    PcieLevel::Single
                } else if shape.numa.get(i) == shape.numa.get(j) {
                    PcieLevel::Node
                } else {
                    PcieLevel::System
                }),
                nvlinks: Some(if has(&shape.nvlink, i, j) { 12 } else { 0 }),
            })
            .collect();
        gpu.topology.links.sort_by(|a, b| a.peer.cmp(&b.peer));
    }
    h.caps = Some(Arc::new(caps));
    let mut sample = h.latest.as_ref().map(|s| (**s).clone()).unwrap_or_default();
    for (i, g) in sample.gpus.iter_mut().enumerate() {
        let used = shape.used_gib.get(i).copied().unwrap_or(0) * GIB;
        g.vram_used_bytes = Some(used);
        g.vram_free_bytes = Some((shape.vram_gib * GIB).saturating_sub(used));
        g.gpu_util_percent = Some(10.0);
    }
    h.latest = Some(Arc::new(sample));
    Arc::new(h.with_placement())
}

/// `hives` online DGX-style hives ([`Shape::dgx`]) with loads spread out.
pub fn dgx_fleet(hives: usize) -> Vec<Arc<HiveSnapshot>> {
    (0..hives)
        .map(|i| {
            let mut shape = Shape::dgx();
            shape.used_gib = (0..8).map(|g| ((i * 7 + g * 13) % 50) as u64).collect();
            shaped(&format!("hive-{i:05}"), &shape)
        })
        .collect()
}
