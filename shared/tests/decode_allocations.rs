//! The receiver decodes a compact delta without copying its view anew (issue 24, ingest
//! allocations): at 10,000 hives the queen decodes 10,000 frames a second, and each used
//! to clone the whole held sample (its GPU list, every GPU's id, the per-core list)
//! before applying the frame, so that a bad frame could leave the view as it was. The
//! copy now goes into a spare view (one per thread), whose allocations it reuses. A counting
//! global allocator measures one delta of 8 GPUs; a bad frame still changes nothing.

use std::alloc::System;

use rbee_proto::v1 as pb;
use rbee_shared::compact::{CompactError, Decoder, Encoder, Layout};
use rbee_shared::{GpuDevice, MigMode, Sample, VersionedCapabilities};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn caps() -> VersionedCapabilities {
    let mut caps = VersionedCapabilities { version: 1, caps: Default::default() };
    caps.caps.ram_total_bytes = 64 << 30;
    for i in 0..8u32 {
        let id = format!("GPU-{i:08x}");
        let gpu = GpuDevice {
            id: id.clone(),
            index: i,
            name: String::new(),
            pci_bus_id: String::new(),
            compute_capability: None,
            vram_total_bytes: 80 << 30,
            driver_version: None,
            cuda_version: None,
            power_limit_mw: None,
            mig_mode: MigMode::NotReported,
            topology: Default::default(),
        };
        caps.caps.gpus.insert(id, gpu);
    }
    caps
}

fn sample(second: u64) -> Sample {
    let mut s = Sample {
        taken_at_unix_ms: second * 1000,
        capability_version: Some(1),
        cpu_percent: Some(12.0),
        cpu_per_core_percent: vec![10.0; 16],
        ram_total_bytes: 64 << 30,
        ram_used_bytes: 8 << 30,
        ram_available_bytes: 56 << 30,
        ..Default::default()
    };
    s.gpus = (0..8u32)
        .map(|i| rbee_shared::GpuSample {
            id: format!("GPU-{i:08x}"),
            index: i,
            vram_used_bytes: Some(((second + u64::from(i)) % 40) << 30),
            gpu_util_percent: Some(((second * 7 + u64::from(i) * 13) % 100) as f32),
            temperature_c: Some(50.0),
            power_draw_mw: Some(300_000),
            ..Default::default()
        })
        .collect();
    s
}

#[test]
fn a_delta_is_decoded_without_copying_the_view_anew_and_a_bad_frame_changes_nothing() {
    let caps = caps();
    let layout = Layout::of(&caps);
    let mut encoder = Encoder::new();
    let frames: Vec<pb::CompactSample> =
        (1..=4).map(|t| encoder.encode_sample(&sample(t), &layout).unwrap()).collect();
    let mut decoder = Decoder::new();
    for f in &frames[..3] {
        decoder.decode_sample(f, &layout).unwrap();
    }
    let region = Region::new(GLOBAL);
    let decoded = decoder.decode_sample(&frames[3], &layout).unwrap();
    let change = region.change();
    assert_eq!(decoded, sample(4));
    // What the domain sample owns: its GPU list, each GPU's id and the per-core list
    // (10). Copying the view anew added as many again (20 on the old code).
    let allocations = change.allocations;
    assert!(allocations <= 12, "{allocations} allocations to decode a delta of 8 GPUs");
    // Each list is allocated at its length, not grown to it (3 reallocations on the old
    // code: the GPU list from 4 to 8, the per-core list from 4 to 16).
    assert_eq!(change.reallocations, 0, "reallocations to decode a delta of 8 GPUs");

    // A bad frame (a GPU position the capabilities do not have) leaves the view as it
    // was: the next good delta applies to it. (In the same test: the allocator counts
    // every thread's allocations.)
    let bad = pb::CompactSample {
        taken_at_delta_ms: 1000,
        gpus: vec![pb::CompactGpu { position: 8, ..Default::default() }],
        ..Default::default()
    };
    assert!(matches!(decoder.decode_sample(&bad, &layout), Err(CompactError::BadPosition { .. })));
    let next = encoder.encode_sample(&sample(5), &layout).unwrap();
    assert_eq!(decoder.decode_sample(&next, &layout).unwrap(), sample(5));
}
