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

/// One step of the random walk: time passed and a few nudges.
#[derive(Debug, Clone)]
struct Step {
    dt_ms: u64,
    nudges: Vec<f32>,
    unset: Option<u8>,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (1u64..40_000, prop::collection::vec(-3.0f32..3.0, 12), prop::option::weighted(0.1, 0u8..6))
        .prop_map(|(dt_ms, nudges, unset)| Step { dt_ms, nudges, unset });
    prop::collection::vec(step, 1..120)
}

/// Applies one step to a reading (a slow random walk with occasional unset values).
fn walk(s: &mut pb::Sample, step: &Step, n: usize) {
    s.taken_at_unix_ms += step.dt_ms;
    let pct = |v: f32| v.clamp(0.0, 100.0);
    s.cpu_percent = Some(pct(s.cpu_percent.unwrap_or(10.0) + step.nudges[0]));
    for (i, c) in s.cpu_per_core_percent.iter_mut().enumerate() {
        *c = pct(*c + step.nudges[(i + 1) % 12]);
    }
    s.uptime_s = s.uptime_s.map(|u| u + step.dt_ms / 1000);
    // Load averages have two decimals, as /proc/loadavg reports them.
    let hundredths = ((f64::from(step.nudges[1]) * 10.0).round() + 100.0).abs();
    s.load_average = Some(pb::LoadAverage { one: hundredths / 100.0, five: 0.5, fifteen: 0.25 });
    s.ram_used_bytes = (s.ram_used_bytes as i64 + (step.nudges[2] * 30_000_000.0) as i64).max(0) as u64;
    s.ram_available_bytes = (1 << 40) - s.ram_used_bytes;
    for (i, g) in s.gpus.iter_mut().enumerate() {
        let k = |j: usize| step.nudges[(3 + i * 3 + j) % 12];
        g.gpu_util_percent = Some(pct(g.gpu_util_percent.unwrap_or(0.0) + k(0)));
        g.temperature_c = Some(g.temperature_c.unwrap_or(40.0) + k(1) / 2.0);
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
        _ => {}
    }
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
    let key = pb::CompactSample { taken_at_unix_ms: Some(5), ..Default::default() };
    decoder.decode(&key, &layout(1)).unwrap();
    let bad = pb::CompactSample {
        gpus: vec![pb::CompactGpu { position: 9, ..Default::default() }],
        ..delta.clone()
    };
    assert_eq!(decoder.decode(&bad, &layout(1)), Err(CompactError::BadPosition { position: 9, gpus: GPUS }));
    let core = pb::CompactSample { cpu_per_core: vec![101], ..delta.clone() };
    assert_eq!(decoder.decode(&core, &layout(1)), Err(CompactError::BadCore(101)));
    assert_eq!(decoder.decode(&delta, &layout(1)).unwrap().taken_at_unix_ms, 1005);
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
