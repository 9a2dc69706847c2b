//! Tests of the per-hive sample ring and its windows.

use super::*;
use proptest::prelude::*;
use rbee_shared::GpuSample;

fn s(cpu: f32, util: f32) -> Sample {
    Sample {
        cpu_percent: Some(cpu),
        ram_total_bytes: 100,
        ram_used_bytes: 50,
        gpus: vec![GpuSample {
            id: "g".into(),
            gpu_util_percent: Some(util),
            vram_used_bytes: Some(3 << 20),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn window(capacity: usize, secs: u64) -> SampleWindow {
    SampleWindow::new(capacity, Duration::from_secs(secs), Duration::from_secs(secs))
}

#[test]
fn keeps_at_most_capacity() {
    let mut w = window(3, 60);
    for i in 0..10 {
        w.push(&s(1.0, 1.0), i * 1000);
    }
    assert_eq!(w.len(), 3);
    assert_eq!(w.stats().samples, 3, "the window never counts what the ring dropped");
}

#[test]
fn mean_and_max_cover_only_the_window() {
    let mut w = window(300, 10);
    w.push(&s(100.0, 100.0), 0);
    for i in 1..=10 {
        w.push(&s(10.0 * i as f32, 50.0), 60_000 + i * 1000);
    }
    let st = w.stats();
    assert_eq!(st.samples, 10);
    assert_eq!(st.cpu_max_percent, Some(100.0));
    assert_eq!(st.cpu_mean_percent, Some(55.0));
    assert_eq!(st.gpus[0].util_max_percent, Some(50.0), "the old 100% is outside the window");
    assert_eq!(st.gpus[0].vram_used_max_bytes, Some(3 << 20));
    assert_eq!(st.ram_used_mean_percent, Some(50.0));
}

#[test]
fn absent_metrics_stay_absent() {
    let mut w = window(10, 60);
    w.push(&Sample { taken_at_unix_ms: 1, ..Default::default() }, 1);
    let st = w.stats();
    assert_eq!((st.samples, st.cpu_mean_percent, st.ram_used_mean_percent), (1, None, None));
}

#[test]
fn a_hive_clock_jump_does_not_hide_history() {
    let mut w = window(300, 10);
    let mut future = s(90.0, 1.0);
    future.taken_at_unix_ms = u64::MAX / 2;
    w.push(&future, 1_000);
    w.push(&s(10.0, 1.0), 2_000);
    assert_eq!(w.stats().samples, 2, "both are inside the window on the queen's clock");
}

/// A realistic 8-GPU hive: utilisation drifting, VRAM in model steps.
fn busy(i: u64) -> Sample {
    let wave = |g: u64| ((i * 7 + g * 13) % 100) as f32 * 0.9 + (i % 3) as f32 * 0.3;
    Sample {
        cpu_percent: Some(wave(99)),
        ram_total_bytes: 512 << 30,
        ram_used_bytes: (64 + i % 7) << 30,
        gpus: (0..8)
            .map(|g| GpuSample {
                id: format!("GPU-0000{g:04x}-aaaa-bbbb-cccc-0123456789ab"),
                gpu_util_percent: Some(wave(g)),
                vram_used_bytes: Some(((i / 40 + g) % 20) << 32),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Issue 13: a full ring of 8 GPUs at the default settings (at most 300 samples, 60 s
/// windows) holds at most 40 KiB, counted by allocation (not timed). With the
/// windows' max queues at their worst (every value falling for a whole window).
#[test]
fn a_full_ring_of_8_gpus_fits_in_40_kib() {
    for falling in [false, true] {
        let mut w = SampleWindow::new(300, Duration::from_secs(60), Duration::from_secs(60));
        for i in 0..900u64 {
            let mut s = busy(i);
            if falling {
                let v = 100.0 - (i % 120) as f32 / 1.2;
                s.cpu_percent = Some(v);
                for g in &mut s.gpus {
                    g.gpu_util_percent = Some(v);
                    g.vram_used_bytes = Some((1000 - i % 120) << 20);
                }
            }
            w.push(&s, i * 1000);
        }
        // 1 Hz with 60 s windows: the 61 samples they cover are kept, not 300.
        assert_eq!(w.len(), 61);
        let bytes = w.heap_bytes();
        eprintln!(
            "8 GPUs, capacity 300, 60 s windows, falling={falling}: {} samples, {bytes} B on the heap",
            w.len()
        );
        assert!(bytes <= 40 << 10, "{bytes} B");
    }
}

/// The window over the naive recomputation it replaced.
fn naive(points: &[(u64, f32)], capacity: usize, len_ms: u64) -> (u32, Option<f32>, Option<f32>) {
    let kept = &points[points.len().saturating_sub(capacity)..];
    let newest = kept.last().map_or(0, |p| p.0);
    let inside: Vec<f32> =
        kept.iter().filter(|p| p.0 >= newest.saturating_sub(len_ms)).map(|p| p.1).collect();
    let vals: Vec<f32> = inside.iter().copied().filter(|v| !v.is_nan()).collect();
    let mean = (!vals.is_empty())
        .then(|| (vals.iter().map(|v| f64::from(*v)).sum::<f64>() / vals.len() as f64) as f32);
    let max = vals.iter().copied().reduce(f32::max);
    (inside.len() as u32, mean, max)
}

proptest! {
    #[test]
    fn running_sums_match_a_full_recount(
        steps in prop::collection::vec((0u64..3_000, prop_oneof![Just(f32::NAN), 0.0f32..100.0]), 1..200),
        capacity in 1usize..50,
        len_s in 1u64..20,
    ) {
        let mut w = window(capacity, len_s);
        let mut at = 0;
        let mut points = Vec::new();
        for (gap, cpu) in steps {
            at += gap;
            w.push(&s(cpu, cpu), at);
            points.push((at, cpu));
            let (n, mean, max) = naive(&points, capacity, len_s * 1000);
            let st = w.stats();
            prop_assert_eq!(st.samples, n);
            prop_assert_eq!(st.cpu_max_percent, max);
            match (st.cpu_mean_percent, mean) {
                (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-3, "{} vs {}", a, b),
                (a, b) => prop_assert_eq!(a, b),
            }
        }
    }
}

/// Samples older than every window are not kept: nothing reads them. A ring of 300
/// at 1 Hz with 10 s windows used to hold 300 samples, five minutes nobody could see.
#[test]
fn the_ring_keeps_only_what_its_windows_cover() {
    let mut w = window(300, 10);
    for i in 0..300u64 {
        w.push(&busy(i), i * 1000);
    }
    assert_eq!(w.len(), 11, "10 s at 1 Hz, both ends included");
    assert_eq!(w.stats().samples, 11);
    // The capacity still bounds a ring whose windows would hold more.
    let mut w = window(5, 60);
    for i in 0..30u64 {
        w.push(&busy(i), i * 1000);
    }
    assert_eq!(w.len(), 5);
}

proptest! {
    /// Statistics written over a reused value (any earlier statistics, of more or fewer
    /// GPUs, other ids) are the same as freshly computed ones.
    #[test]
    fn stats_into_a_reused_value_equal_fresh_stats(
        gpus in prop::collection::vec(0usize..10, 1..30),
        reuse_from in 0usize..30,
    ) {
        let mut w = window(300, 10);
        let mut reused = WindowStats::default();
        for (i, &n) in gpus.iter().enumerate() {
            let mut sample = busy(i as u64);
            sample.gpus.truncate(n);
            if n > 0 && i % 2 == 1 {
                sample.gpus[0].id = format!("other-{i}");
            }
            w.push(&sample, i as u64 * 1000);
            if i >= reuse_from {
                w.stats_into(&mut reused);
                prop_assert_eq!(&reused, &w.stats());
            }
        }
    }
}
