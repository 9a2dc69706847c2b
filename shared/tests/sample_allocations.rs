//! A valid sample is checked on its way in without formatting a field name per field
//! (issue 24, ingest allocations): the queen converts every hive's sample every second,
//! and names are only needed for an error. A counting global allocator measures the
//! conversion of an 8-GPU sample; an error still names its field.

use std::alloc::System;

use rbee_proto::v1 as pb;
use rbee_shared::Sample;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn eight_gpus() -> pb::Sample {
    pb::Sample {
        taken_at_unix_ms: 1,
        cpu_percent: Some(12.5),
        cpu_per_core_percent: vec![10.0; 16],
        ram_total_bytes: 64 << 30,
        ram_used_bytes: 8 << 30,
        gpus: (0..8)
            .map(|i| pb::GpuSample {
                id: format!("GPU-{i:08x}"),
                index: i,
                vram_used_bytes: Some(1 << 30),
                vram_free_bytes: Some(79 << 30),
                gpu_util_percent: Some(40.0),
                mem_util_percent: Some(20.0),
                temperature_c: Some(55.0),
                power_draw_mw: Some(300_000),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn a_valid_sample_is_checked_without_a_name_per_field_and_an_error_names_it() {
    let wire = eight_gpus();
    let _warm = Sample::try_from(&wire).unwrap();
    let region = Region::new(GLOBAL);
    let sample = Sample::try_from(&wire).unwrap();
    let allocations = region.change().allocations;
    assert_eq!(sample.gpus.len(), 8);
    // What a converted sample owns: the GPU list, each GPU's id, the per-core list and a
    // few empty-or-small vectors: 10 today. Names formatted per field (5 per GPU, one per
    // core) made it 66 on the old code.
    assert!(allocations <= 16, "{allocations} allocations to convert an 8-GPU sample");

    // An error still names its field. (In the same test: the allocator counts every
    // thread's allocations, so no other test of this binary may run meanwhile.)
    let mut wire = eight_gpus();
    wire.gpus[5].gpu_util_percent = Some(101.0);
    let e = Sample::try_from(&wire).unwrap_err();
    assert_eq!(e.field, "sample.gpus[5].gpu_util_percent");
    let mut wire = eight_gpus();
    wire.cpu_per_core_percent[3] = f32::NAN;
    assert_eq!(Sample::try_from(&wire).unwrap_err().field, "sample.cpu_per_core_percent[3]");
}
