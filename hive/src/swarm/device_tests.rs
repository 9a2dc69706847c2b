//! Tests of the simulated machine, and the committed scenario for the compact wire
//! figures in `docs/BENCHMARKS.md` ("Compact samples on the wire").

use prost::Message;
use rbee_proto::v1 as pb;
use rbee_shared::VersionedCapabilities;
use rbee_shared::compact::{Encoder, Layout};

use super::*;

#[test]
fn values_drift_rather_than_jump() {
    let mut rng = Rng::new(7);
    let mut gpu = GpuState::new(7, 0, &mut rng);
    gpu.mode = Mode::Steady(50.0);
    let mut last = gpu.clone();
    let mut temperature_steps = 0.0f32;
    for _ in 0..600 {
        gpu.advance(1.0, &mut rng);
        temperature_steps = temperature_steps.max((gpu.temperature - last.temperature).abs());
        last = gpu.clone();
    }
    assert!(temperature_steps < 3.0, "temperature moved {temperature_steps} °C in one second");
}

/// One reading of `host` after `dt` seconds on the simulation's clock.
fn reading(host: &mut SimulatedHost, taken_at_unix_ms: u64, dt: f32) -> Sample {
    host.step(dt);
    let mut sample = Sample { taken_at_unix_ms, ..Sample::default() };
    host.fill(&mut sample, std::time::Duration::from_secs_f32(dt));
    sample
}

/// Uptime is the simulation's clock, as the samples' times are (it once came from the
/// wall clock, so a simulated 10 minutes kept one uptime).
#[test]
fn uptime_follows_the_simulated_clock() {
    let mut host = SimulatedHost::new(3, 1, Arc::new(AtomicUsize::new(1)), 4);
    let first = reading(&mut host, 0, 1.0).uptime_s.unwrap();
    let mut last = first;
    for _ in 0..60 {
        last = reading(&mut host, 0, 1.0).uptime_s.unwrap();
    }
    assert_eq!(last - first, 60);
}

/// The 1-, 5- and 15-minute load averages are the kernel's exponential averages: after
/// the load rises, the 1-minute value leads and the 15-minute value lags (they once
/// were one value).
#[test]
fn load_averages_move_at_their_own_pace() {
    let mut host = SimulatedHost::new(5, 8, Arc::new(AtomicUsize::new(8)), 16);
    for gpu in &mut host.gpus {
        gpu.mode = Mode::Burst;
    }
    let mut load = None;
    let mut changes = 0;
    for _ in 0..120 {
        let now = reading(&mut host, 0, 1.0).load_average.unwrap();
        changes += usize::from(load.is_some_and(|l: LoadAverage| l.one != now.one));
        load = Some(now);
    }
    let load = load.unwrap();
    assert!(load.one > load.five && load.five > load.fifteen, "{load:?}");
    assert!(changes <= 120 / 5, "the kernel updates them every 5 s; they changed {changes} times");
}

/// What one run of the scenario measured.
#[derive(Debug, Default)]
struct Wire {
    /// Compact samples sent.
    samples: usize,
    /// Their bytes: all of them, keyframes, and on deltas the per-core CPU, the GPUs and
    /// the time since the previous sample.
    total: usize,
    keyframes: usize,
    cores: usize,
    gpus: usize,
    delta_ms: usize,
    /// How many keyframes, and the largest.
    keys: usize,
    key_max: usize,
    /// The full samples' bytes.
    full: usize,
}

impl Wire {
    fn per_sample(&self, bytes: usize) -> f64 {
        bytes as f64 / self.samples as f64
    }
}

/// The scenario: simulated host `seed` with 8 GPUs and 16 cores, sampled at 1 Hz for
/// 10 minutes; each sample is taken a few ms late, as a timer fires.
fn scenario(seed: u64) -> Wire {
    let mut host = SimulatedHost::new(seed, 8, Arc::new(AtomicUsize::new(8)), 16);
    let mut caps = Capabilities::default();
    host.scan(&mut caps).unwrap();
    let layout = Layout::of(&VersionedCapabilities { version: 1, caps });
    let mut encoder = Encoder::new();
    let mut late = Rng::new(seed ^ 0x5eed);
    let mut wire = Wire::default();
    let mut at = 1_700_000_000_000u64;
    for second in 0..600u64 {
        let taken_at = 1_700_000_000_000 + second * 1000 + late.next_u64() % 5;
        let dt = (taken_at - at) as f32 / 1000.0;
        at = taken_at;
        let mut sample = reading(&mut host, taken_at, dt.max(0.001));
        sample.capability_version = Some(1);
        let full = pb::Sample::from(&sample);
        let c = encoder.encode(&full, &layout).unwrap();
        let len = c.encoded_len();
        wire.samples += 1;
        wire.total += len;
        wire.full += full.encoded_len();
        if c.taken_at_unix_ms.is_some() {
            wire.keys += 1;
            wire.keyframes += len;
            wire.key_max = wire.key_max.max(len);
            continue;
        }
        let only = |f: &dyn Fn(&mut pb::CompactSample)| {
            let mut part = pb::CompactSample::default();
            f(&mut part);
            part.encoded_len()
        };
        wire.cores += only(&|p| {
            p.cpu_per_core = c.cpu_per_core.clone();
            p.cpu_per_core_delta = c.cpu_per_core_delta.clone();
        });
        wire.gpus += only(&|p| p.gpus = c.gpus.clone());
        wire.delta_ms += only(&|p| p.taken_at_delta_ms = c.taken_at_delta_ms);
    }
    wire
}

/// The committed "realistic change" scenario for the wire figures (run with
/// --nocapture for the figures in docs/BENCHMARKS.md).
#[test]
fn compact_samples_of_a_busy_8_gpu_host_are_small() {
    let w = scenario(42);
    let avg = w.per_sample(w.total);
    eprintln!(
        "8 GPUs, 16 cores, 1 Hz, 600 s, seed 42: compact {avg:.1} B/sample on average ({} keyframes, largest {} B); full {:.0} B/sample",
        w.keys,
        w.key_max,
        w.per_sample(w.full)
    );
    eprintln!(
        "  per sample: keyframes {:.1} B, per-core CPU {:.1} B, GPUs {:.1} B, time since the previous {:.1} B, the rest {:.1} B",
        w.per_sample(w.keyframes),
        w.per_sample(w.cores),
        w.per_sample(w.gpus),
        w.per_sample(w.delta_ms),
        w.per_sample(w.total - w.keyframes - w.cores - w.gpus - w.delta_ms)
    );
    let others: Vec<f64> = (1..=10).map(scenario).map(|w| w.per_sample(w.total)).collect();
    let worst = others.iter().copied().fold(0.0, f64::max);
    eprintln!("  seeds 1..=10: {others:.1?} B/sample");
    assert!(avg <= 64.0, "average compact sample {avg:.1} B");
    assert!(worst <= 64.0, "average compact sample {worst:.1} B on another seed");
    assert!(w.key_max <= 400, "keyframe {} B", w.key_max);
}

#[test]
fn hot_plug_changes_the_scanned_gpus() {
    let present = Arc::new(AtomicUsize::new(8));
    let mut host = SimulatedHost::new(1, 9, present.clone(), 16);
    let mut caps = Capabilities::default();
    host.scan(&mut caps).unwrap();
    assert_eq!(caps.gpus.len(), 8);
    present.store(9, Ordering::Relaxed);
    let mut caps = Capabilities::default();
    host.scan(&mut caps).unwrap();
    assert_eq!(caps.gpus.len(), 9);
    let mut sample = Sample::default();
    host.sample(&mut sample).unwrap();
    assert_eq!(sample.gpus.len(), 9);
    assert_eq!(sample.cpu_per_core_percent.len(), 16);
}

#[test]
fn a_shaped_host_reports_its_box_and_the_hot_plugged_spare_joins_the_last_socket() {
    let present = Arc::new(AtomicUsize::new(8));
    let mut host = SimulatedHost::new(1, 9, present.clone(), 16).with_shape(Shape::Pcie2x4);
    let mut caps = Capabilities::default();
    host.scan(&mut caps).unwrap();
    let by_index = |caps: &Capabilities, i: u32| caps.gpus.values().find(|g| g.index == i).unwrap().clone();
    let (g0, g1, g4) = (by_index(&caps, 0), by_index(&caps, 1), by_index(&caps, 4));
    assert_eq!(g0.topology.link(&g1.id).unwrap().nvlinks, Some(4));
    assert_eq!((g0.topology.numa_node, g4.topology.numa_node), (Some(0), Some(1)));
    assert_eq!(g0.topology.links.len(), 7);
    present.store(9, Ordering::Relaxed);
    let mut caps = Capabilities::default();
    host.scan(&mut caps).unwrap();
    assert_eq!(by_index(&caps, 8).topology.numa_node, Some(1));
    assert_eq!(by_index(&caps, 0).topology.links.len(), 8);

    let mut flat = SimulatedHost::new(1, 2, Arc::new(AtomicUsize::new(2)), 4);
    let mut caps = Capabilities::default();
    flat.scan(&mut caps).unwrap();
    assert!(caps.gpus.values().all(|g| g.topology == Default::default()), "no shape, no topology");
}
