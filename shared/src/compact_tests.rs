//! Tests of the compact sample codec: the receiver's view stays within every deadband
//! of the hive's latest reading, and is exact after each keyframe.

use proptest::prelude::*;
use rbee_proto::v1 as pb;

use super::*;

const GPUS: usize = 3;
const TOTAL: u64 = 80 << 30;

fn layout(version: u64) -> Layout {
    Layout {
        version,
        ids: (0..GPUS).map(|i| format!("GPU-{i}")).collect(),
        index: (0..GPUS as u32).collect(),
        vram_total: vec![TOTAL; GPUS],
        ram_total: 1 << 40,
    }
}

/// One step of the random walk: time passed, a few nudges, and now and then a value
/// unset, a core jumping, or GPU readings in whole units (as NVML gives them).
#[derive(Debug, Clone)]
struct Step {
    dt_ms: u64,
    nudges: Vec<f32>,
    unset: Option<u8>,
    /// A core (index modulo the cores) and how far it jumps, points.
    jump: Option<(usize, f32)>,
    whole: bool,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (
        prop_oneof![3 => 990u64..1010, 1 => 1u64..40_000],
        prop::collection::vec(-3.0f32..3.0, 12),
        prop::option::weighted(0.1, 0u8..8),
        prop::option::weighted(0.2, (0usize..16, -100.0f32..100.0)),
        any::<bool>(),
    )
        .prop_map(|(dt_ms, nudges, unset, jump, whole)| Step { dt_ms, nudges, unset, jump, whole });
    prop::collection::vec(step, 1..120)
}

/// Applies one step to a reading (a slow random walk with occasional unset values).
fn walk(s: &mut pb::Sample, step: &Step, n: usize) {
    s.taken_at_unix_ms += step.dt_ms;
    let pct = |v: f32| v.clamp(0.0, 100.0);
    s.cpu_percent = Some(pct(s.cpu_percent.unwrap_or(10.0) + step.nudges[0]));
    if s.cpu_per_core_percent.is_empty() && step.nudges[4] > 2.0 {
        // Cores come back, maybe as many as before, maybe not.
        s.cpu_per_core_percent = vec![50.0; if step.nudges[5] > 0.0 { 8 } else { 12 }];
    }
    for (i, c) in s.cpu_per_core_percent.iter_mut().enumerate() {
        *c = pct(*c + step.nudges[(i + 1) % 12]);
    }
    if let Some((core, by)) = step.jump {
        let n = s.cpu_per_core_percent.len();
        for c in s.cpu_per_core_percent.iter_mut().skip(core % n.max(1)).step_by(5) {
            *c = pct(*c + by);
        }
    }
    s.uptime_s = s.uptime_s.map(|_| uptime(s.taken_at_unix_ms));
    // Load averages have two decimals, as /proc/loadavg reports them.
    let hundredths = ((f64::from(step.nudges[1]) * 10.0).round() + 100.0).abs();
    s.load_average = Some(pb::LoadAverage { one: hundredths / 100.0, five: 0.5, fifteen: 0.25 });
    s.ram_used_bytes = (s.ram_used_bytes as i64 + (step.nudges[2] * 30_000_000.0) as i64).max(0) as u64;
    s.ram_available_bytes = (1 << 40) - s.ram_used_bytes;
    for (i, g) in s.gpus.iter_mut().enumerate() {
        let k = |j: usize| step.nudges[(3 + i * 3 + j) % 12];
        g.gpu_util_percent = Some(pct(g.gpu_util_percent.unwrap_or(0.0) + k(0)));
        g.mem_util_percent = Some(pct(g.mem_util_percent.unwrap_or(30.0) - k(1)));
        g.temperature_c = Some(g.temperature_c.unwrap_or(40.0) + k(1) / 2.0);
        if step.whole {
            for v in [&mut g.gpu_util_percent, &mut g.mem_util_percent, &mut g.temperature_c] {
                *v = v.map(f32::round);
            }
        }
        g.power_draw_mw = Some((g.power_draw_mw.unwrap_or(100_000) as f32 + k(2) * 2000.0).max(0.0) as u32);
        let used =
            (g.vram_used_bytes.unwrap_or(0) as f64 + f64::from(k(0)) * 40e6).clamp(0.0, TOTAL as f64) as u64;
        g.vram_used_bytes = Some(used);
        // Sometimes NVML's free is not exactly total minus used (reserved memory).
        g.vram_free_bytes = Some(TOTAL - used - if k(1) > 2.5 { 300 << 20 } else { 0 });
        g.xid_events = Some(g.xid_events.unwrap_or(0) + u64::from(k(2) > 2.9));
    }
    match step.unset {
        Some(0) => s.cpu_percent = None,
        Some(1) => s.gpus[n % GPUS].temperature_c = None,
        Some(2) => s.gpus[n % GPUS].vram_free_bytes = None,
        Some(3) => s.load_average = None,
        Some(4) => s.cpu_per_core_percent.clear(),
        Some(5) => s.gpus[n % GPUS].power_draw_mw = None,
        Some(6) => s.gpus[n % GPUS].mem_util_percent = None,
        _ => {}
    }
}

/// The host booted between two seconds, 1,000.3 s before the first reading.
const BOOTED_AT_MS: u64 = 1_700_000_000_000 - 1_000_300;

/// The uptime at `taken_at_unix_ms`: whole seconds since boot, as the kernel counts.
fn uptime(taken_at_unix_ms: u64) -> u64 {
    (taken_at_unix_ms - BOOTED_AT_MS) / 1000
}

fn first() -> pb::Sample {
    pb::Sample {
        taken_at_unix_ms: 1_700_000_000_000,
        cpu_window_ms: Some(1000),
        cpu_per_core_percent: vec![5.0; 8],
        ram_total_bytes: 1 << 40,
        uptime_s: Some(1000),
        capability_version: Some(1),
        gpus: (0..GPUS)
            .map(|i| pb::GpuSample { id: format!("GPU-{i}"), index: i as u32, ..Default::default() })
            .collect(),
        ..Default::default()
    }
}

fn within<T: Band + std::fmt::Debug>(
    what: &str,
    got: Option<T>,
    want: Option<T>,
    band: T,
) -> Result<(), TestCaseError> {
    match (got, want) {
        (None, None) => Ok(()),
        (Some(g), Some(w)) if !g.beyond(w, band) => Ok(()),
        _ => Err(TestCaseError::fail(format!("{what}: queen {got:?}, hive {want:?}, band {band:?}"))),
    }
}

/// The hive's reading as the compact form carries it exactly (per-core in whole percents).
fn exact(s: &pb::Sample) -> pb::Sample {
    let mut s = s.clone();
    s.cpu_per_core_percent = s.cpu_per_core_percent.iter().map(|p| f32::from(core_byte(*p))).collect();
    s
}

fn check(got: &pb::Sample, want: &pb::Sample) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.taken_at_unix_ms, want.taken_at_unix_ms);
    prop_assert_eq!(got.capability_version, want.capability_version);
    within("cpu", got.cpu_percent, want.cpu_percent, deadband::PERCENT)?;
    prop_assert_eq!(got.cpu_per_core_percent.len(), want.cpu_per_core_percent.len());
    for (g, w) in got.cpu_per_core_percent.iter().zip(&want.cpu_per_core_percent) {
        within("core", Some(*g), Some(*w), deadband::CORE_PERCENT)?;
    }
    let load = |s: &pb::Sample| s.load_average.map(|l| centi(l.one));
    within("load", load(got), load(want), deadband::LOAD_CENTI)?;
    within("ram used", Some(got.ram_used_bytes), Some(want.ram_used_bytes), deadband::RAM_BYTES)?;
    prop_assert_eq!(got.ram_total_bytes, want.ram_total_bytes);
    within("uptime", got.uptime_s, want.uptime_s, deadband::UPTIME_S)?;
    prop_assert_eq!(got.gpus.len(), want.gpus.len());
    for (g, w) in got.gpus.iter().zip(&want.gpus) {
        prop_assert_eq!(&g.id, &w.id);
        prop_assert_eq!(g.index, w.index);
        within("util", g.gpu_util_percent, w.gpu_util_percent, deadband::PERCENT)?;
        within("mem util", g.mem_util_percent, w.mem_util_percent, deadband::PERCENT)?;
        within("temperature", g.temperature_c, w.temperature_c, deadband::TEMPERATURE_C)?;
        within("power", g.power_draw_mw, w.power_draw_mw, deadband::POWER_MW)?;
        within("vram used", g.vram_used_bytes, w.vram_used_bytes, deadband::VRAM_BYTES)?;
        within("vram free", g.vram_free_bytes, w.vram_free_bytes, deadband::VRAM_BYTES)?;
        prop_assert_eq!(g.xid_events, w.xid_events);
    }
    Ok(())
}

proptest! {
    #[test]
    fn the_queen_is_always_within_the_deadband_and_exact_after_keyframes(steps in steps()) {
        let mut encoder = Encoder::new();
        let mut decoder = Decoder::new();
        let mut reading = first();
        let mut version = 1;
        for (n, step) in steps.iter().enumerate() {
            walk(&mut reading, step, n);
            if step.dt_ms > 39_000 {
                // Now and then the capabilities move on: positions may change, so a keyframe.
                version += 1;
                reading.capability_version = Some(version);
            }
            let layout = layout(version);
            let compact = encoder.encode(&reading, &layout).unwrap();
            let got = decoder.decode(&compact, &layout).unwrap();
            check(&got, &reading)?;
            if compact.taken_at_unix_ms.is_some() {
                prop_assert_eq!(got, exact(&reading), "a keyframe makes the view exact");
            }
        }
    }
}

#[test]
fn keyframes_come_first_every_30_s_and_on_new_capabilities() {
    let mut encoder = Encoder::new();
    let mut s = first();
    let key = |c: &pb::CompactSample| c.taken_at_unix_ms.is_some();
    assert!(key(&encoder.encode(&s, &layout(1)).unwrap()));
    let mut keys = 0;
    for _ in 0..60 {
        s.taken_at_unix_ms += 1000;
        keys += usize::from(key(&encoder.encode(&s, &layout(1)).unwrap()));
    }
    assert_eq!(keys, 2, "one keyframe per 30 s");
    assert!(key(&encoder.encode(&s, &layout(2)).unwrap()), "a new layout is a keyframe");
}

#[test]
fn an_unchanged_reading_costs_a_few_bytes() {
    use prost::Message;
    let mut encoder = Encoder::new();
    let mut s = first();
    encoder.encode(&s, &layout(1)).unwrap();
    s.taken_at_unix_ms += 1000;
    s.uptime_s = s.uptime_s.map(|u| u + 1);
    let c = encoder.encode(&s, &layout(1)).unwrap();
    assert!(c.encoded_len() <= 4, "{c:?} is {} bytes", c.encoded_len());
}

#[test]
fn bad_compact_samples_are_refused_and_leave_the_view() {
    let mut decoder = Decoder::new();
    let delta = pb::CompactSample { taken_at_delta_ms: 1000, ..Default::default() };
    assert_eq!(decoder.decode(&delta, &layout(1)), Err(CompactError::NoKeyframe));
    let gpu = |c: pb::CompactGpu| pb::CompactSample { gpus: vec![c], ..delta.clone() };
    let power = |delta: i32, power_draw_mw: Option<u32>| {
        gpu(pb::CompactGpu { position: 1, power_delta_w: Some(delta), power_draw_mw, ..Default::default() })
    };
    let key = pb::CompactSample {
        taken_at_unix_ms: Some(5),
        cpu_per_core: vec![50; 4],
        gpus: vec![pb::CompactGpu { position: 0, power_draw_mw: Some(300_400), ..Default::default() }],
        ..Default::default()
    };
    decoder.decode(&key, &layout(1)).unwrap();
    let held = decoder.decode(&pb::CompactSample::default(), &layout(1)).unwrap();
    let cores = |packed: Vec<u8>| pb::CompactSample { cpu_per_core_delta: packed, ..delta.clone() };
    let bad_cores = CompactError::BadCoreDelta;
    let bad_power = |delta, why| CompactError::BadPowerDelta { delta, why };
    for (bad, error) in [
        (
            gpu(pb::CompactGpu { position: 9, ..Default::default() }),
            CompactError::BadPosition { position: 9, gpus: GPUS },
        ),
        (pb::CompactSample { cpu_per_core: vec![101], ..delta.clone() }, CompactError::BadCore(101)),
        (cores(vec![0]), bad_cores("its bits per core are not 1..=8")),
        (cores(vec![9, 0, 0, 0, 0, 0]), bad_cores("its bits per core are not 1..=8")),
        (cores(vec![2, 0, 0]), bad_cores("its length does not match the cores held")),
        // Core 0 up by 51 (zigzag 102 in 7 bits): 101 %.
        (cores(vec![7, 102, 0, 0, 0]), bad_cores("a core leaves 0..=100")),
        (
            pb::CompactSample { cpu_per_core: vec![1; 4], ..cores(vec![1, 0]) },
            bad_cores("it comes on a keyframe or with cpu_per_core"),
        ),
        (
            pb::CompactSample { cpu_per_core_delta: vec![1, 0], ..key.clone() },
            bad_cores("it comes on a keyframe or with cpu_per_core"),
        ),
        (power(5, None), bad_power(5, "no power draw is held")),
        (
            gpu(pb::CompactGpu { power_delta_w: Some(5), power_draw_mw: Some(1), ..Default::default() }),
            bad_power(5, "it comes with power_draw_mw"),
        ),
        (
            gpu(pb::CompactGpu { power_delta_w: Some(-301), ..Default::default() }),
            bad_power(-301, "it leaves the range of a power draw"),
        ),
        (
            gpu(pb::CompactGpu { power_delta_w: Some(i32::MAX), ..Default::default() }),
            bad_power(i32::MAX, "it leaves the range of a power draw"),
        ),
    ] {
        assert_eq!(decoder.decode(&bad, &layout(1)), Err(error), "{bad:?}");
    }
    let mut after = decoder.decode(&delta, &layout(1)).unwrap();
    after.taken_at_unix_ms -= 1000;
    assert_eq!(after, held, "the bad ones left the view as it was");
    // Without the keyframe's cores, changes to them have nothing to apply to.
    decoder
        .decode(&pb::CompactSample { taken_at_unix_ms: Some(5), ..Default::default() }, &layout(1))
        .unwrap();
    assert_eq!(
        decoder.decode(&cores(vec![1, 0]), &layout(1)),
        Err(bad_cores("the receiver holds no per-core values to change"))
    );
}

/// Cores that moved a point or two cost two or three bits each on a delta; a jump that
/// needs more bits than a byte per core sends every core's byte instead. Either way
/// the receiver holds every core's whole percent.
#[test]
fn per_core_changes_travel_in_a_few_bits() {
    let mut encoder = Encoder::new();
    let mut decoder = Decoder::new();
    let mut s = first();
    s.cpu_per_core_percent = vec![5.0; 16];
    let mut step = |s: &mut pb::Sample| {
        let c = encoder.encode(s, &layout(1)).unwrap();
        let got = decoder.decode(&c, &layout(1)).unwrap().cpu_per_core_percent;
        if !c.cpu_per_core.is_empty() || !c.cpu_per_core_delta.is_empty() {
            assert_eq!(got, exact(s).cpu_per_core_percent);
        }
        s.taken_at_unix_ms += 1000;
        s.uptime_s = Some(uptime(s.taken_at_unix_ms));
        c
    };
    assert_eq!(step(&mut s).cpu_per_core.len(), 16, "a keyframe has a byte per core");
    for (i, c) in s.cpu_per_core_percent.iter_mut().enumerate() {
        *c += [2.0, -1.0, 0.4, 1.6][i % 4];
    }
    let c = step(&mut s);
    // +2 is zigzag 4: three bits for each of 16 cores, after the byte that says so.
    assert_eq!((c.cpu_per_core.len(), c.cpu_per_core_delta.len()), (0, 1 + 6), "{c:?}");
    s.cpu_per_core_percent[3] = 95.0;
    let c = step(&mut s);
    assert_eq!((c.cpu_per_core.len(), c.cpu_per_core_delta.len()), (16, 0), "{c:?}");
    s.cpu_per_core_percent[3] = 94.0;
    let c = step(&mut s);
    assert!(c.cpu_per_core.is_empty() && c.cpu_per_core_delta.is_empty(), "within a point: {c:?}");
}

/// A GPU's power draw moves in whole watts on a delta: the receiver holds the reading
/// rounded to the watt.
#[test]
fn power_moves_in_whole_watts() {
    let mut encoder = Encoder::new();
    let mut decoder = Decoder::new();
    let mut s = first();
    s.gpus[2].power_draw_mw = Some(300_400);
    let mut step = |s: &pb::Sample| {
        let c = encoder.encode(s, &layout(1)).unwrap();
        (decoder.decode(&c, &layout(1)).unwrap().gpus[2].power_draw_mw, c)
    };
    assert_eq!(step(&s).0, Some(300_400), "exact on a keyframe");
    s.taken_at_unix_ms += 1000;
    s.gpus[2].power_draw_mw = Some(305_300);
    assert_eq!(step(&s).0, Some(300_400), "within 5 W it stays");
    s.taken_at_unix_ms += 1000;
    s.gpus[2].power_draw_mw = Some(205_600);
    let (got, c) = step(&s);
    assert_eq!(got, Some(206_000));
    assert_eq!(c.gpus[0].power_delta_w, Some(-94));
    assert_eq!(c.gpus[0].power_draw_mw, None);
}

/// Samples come a few ms early or late: the uptime the receiver expects counts the
/// clock's second boundaries, so the hive never resends it (it once added each
/// interval's whole seconds, which lost a second on every interval under 1,000 ms).
#[test]
fn uptime_is_implied_however_the_intervals_jitter() {
    let mut encoder = Encoder::new();
    let mut s = first();
    encoder.encode(&s, &layout(1)).unwrap();
    for i in 0..29 {
        s.taken_at_unix_ms += if i % 2 == 0 { 999 } else { 1001 };
        s.uptime_s = Some(uptime(s.taken_at_unix_ms));
        let c = encoder.encode(&s, &layout(1)).unwrap();
        assert_eq!(c.uptime_s, None, "sample {i}: {c:?}");
    }
}

/// Fields the compact form does not encode one by one (added after it: reserved and
/// unattributed VRAM, process lists, lost GPUs, downloads, preloads, disk, bandwidth)
/// reach the receiver exactly, on keyframes and deltas, and cost nothing unchanged.
#[test]
fn later_fields_ride_in_extras_exactly() {
    use prost::Message;
    let mut encoder = Encoder::new();
    let mut decoder = Decoder::new();
    let mut s = first();
    s.gpus[1].vram_reserved_bytes = Some(512 << 20);
    s.gpus[1].unattributed_vram_bytes = Some(3 << 30);
    let process = |pid: u32, cpu: f32| pb::GpuProcess {
        pid,
        used_vram_bytes: Some(1 << 30),
        name: Some("python".into()),
        cpu_percent: Some(cpu),
        reservation_id: Some("r-1".into()),
        ..Default::default()
    };
    s.gpus[1].processes =
        Some(pb::GpuProcesses { listed: vec![process(7, 10.0)], unlisted: 2, unlisted_vram_bytes: 5 });
    s.lost_gpus =
        vec![pb::LostGpu { index: 4, id: "GPU-gone".into(), reason: "GPU_IS_LOST".into(), since_unix_ms: 9 }];
    s.downloads = vec![pb::DownloadProgress { model_id: "m".into(), bytes_done: 10, ..Default::default() }];
    s.models_disk = Some(pb::DiskSpace { path: "/m".into(), total_bytes: 100, free_bytes: 50 });
    s.read_bandwidth = Some(pb::ReadBandwidth { disk_bytes_per_s: Some(1e9), ram_bytes_per_s: None });
    let mut step = |s: &pb::Sample| {
        let c = encoder.encode(s, &layout(1)).unwrap();
        let got = decoder.decode(&c, &layout(1)).unwrap();
        assert_eq!(got, exact(s), "the receiver's view is the reading");
        c
    };
    assert!(step(&s).extras.is_some(), "a keyframe carries them");
    s.taken_at_unix_ms += 1000;
    s.uptime_s = s.uptime_s.map(|u| u + 1);
    let c = step(&s);
    assert!(c.extras.is_none() && c.gpus.is_empty(), "unchanged, they cost nothing: {c:?}");
    assert!(c.encoded_len() <= 4);
    s.taken_at_unix_ms += 1000;
    s.uptime_s = s.uptime_s.map(|u| u + 1);
    s.gpus[1].processes.as_mut().unwrap().listed.push(process(8, 50.0));
    s.downloads[0].bytes_done = 20;
    let c = step(&s);
    assert!(c.extras.is_some() && c.gpus[0].extras.is_some(), "changed, they are sent: {c:?}");
    s.taken_at_unix_ms += 1000;
    s.uptime_s = s.uptime_s.map(|u| u + 1);
    s.gpus[1].processes = None;
    s.lost_gpus.clear();
    step(&s);
}

#[test]
fn a_compact_frame_is_never_a_domain_message_of_its_own() {
    // It means something only against the stream's view: the receiver's edge decodes it
    // (`Decoder::decode_sample`); converted alone it is a precise error.
    let wire = pb::HiveMessage {
        seq: 1,
        hive_time_unix_ms: 0,
        payload: Some(pb::hive_message::Payload::CompactSample(pb::CompactSample::default())),
    };
    let err = crate::HiveStreamMessage::try_from(&wire).unwrap_err();
    assert_eq!(err.field, "compact_sample");
}

#[test]
fn domain_samples_encode_and_decode_to_the_same_domain_sample() {
    let layout = layout(1);
    let sample = crate::Sample {
        taken_at_unix_ms: 1_000,
        capability_version: Some(1),
        ram_total_bytes: 1 << 40,
        ram_used_bytes: 1 << 30,
        ram_available_bytes: (1 << 40) - (1 << 30),
        cpu_per_core_percent: vec![3.0, 97.0],
        gpus: vec![crate::GpuSample {
            id: "GPU-1".into(),
            index: 1,
            vram_used_bytes: Some(5 << 30),
            vram_free_bytes: Some(TOTAL - (5 << 30)),
            temperature_c: Some(61.0),
            ..Default::default()
        }],
        ..Default::default()
    };
    let c = Encoder::new().encode_sample(&sample, &layout).unwrap();
    let mut decoder = Decoder::new();
    assert_eq!(decoder.decode_sample(&c, &layout).unwrap(), sample);
    // A frame whose full sample does not validate is refused and leaves the view as it was.
    let bad =
        pb::CompactSample { taken_at_delta_ms: 1, ram_used_bytes: Some(u64::MAX), ..Default::default() };
    assert!(matches!(decoder.decode_sample(&bad, &layout), Err(CompactError::Invalid(_))));
    let held = decoder.decode_sample(&pb::CompactSample::default(), &layout).unwrap();
    assert_eq!(held.ram_used_bytes, sample.ram_used_bytes);
}
