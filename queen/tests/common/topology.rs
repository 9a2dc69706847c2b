//! A hive that reports its GPU topology (a scripted hive), for the gang tests: four
//! 80 GiB GPUs on one NUMA node, NVLink between GPU-0 and GPU-1 only.

use std::time::Duration;

use rbee_proto::v1 as pb;

use super::scheduling::{GIB, gpu_request};
use super::scripted::{ScriptedHive, discover, sample};

/// The GPUs' ids.
pub const GPUS: [&str; 4] = ["GPU-0", "GPU-1", "GPU-2", "GPU-3"];

/// `Discover` for four 80 GiB GPUs on one NUMA node; GPU-0 and GPU-1 share NVLink and hold 40 GiB
/// each, GPU-2 and GPU-3 are empty but unlinked.
pub fn topology_discover(id: &str) -> pb::DiscoverResponse {
    let mut d = discover(id, &GPUS);
    let caps = d.capabilities.as_mut().unwrap();
    for (i, gpu) in caps.gpus.iter_mut().enumerate() {
        let links = GPUS
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, peer)| pb::GpuLink {
                peer: (*peer).into(),
                pcie: pb::PcieLevel::Node as i32,
                nvlinks: Some(if i + j == 1 { 12 } else { 0 }),
            })
            .collect();
        gpu.topology = Some(pb::GpuTopology { numa_node: Some(0), links, ..Default::default() });
    }
    d
}

/// A sample: GPU-0 and GPU-1 hold 40 GiB each, GPU-2 and GPU-3 1 GiB.
pub fn topology_sample() -> pb::Sample {
    let mut s = sample(&GPUS);
    for (i, g) in s.gpus.iter_mut().enumerate() {
        g.vram_used_bytes = Some(if i < 2 { 40 * GIB } else { GIB });
    }
    s
}

/// Starts the hive `id`, sampling every 50 ms.
pub async fn topology_hive(id: &'static str) -> ScriptedHive {
    ScriptedHive::start(topology_discover(id), |mut script| async move {
        while script.sample(topology_sample()).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// A request for `gpus` GPUs with `vram` bytes free on each.
pub fn gang(gpus: u32, vram: u64, topology: pb::GangTopology) -> pb::PlaceRequest {
    pb::PlaceRequest { gpus: Some(gpus), topology: topology as i32, ..gpu_request(vram) }
}
