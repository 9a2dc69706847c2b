//! A ring buffer of recent samples per hive (default 300: 5 minutes at 1 Hz), with
//! windowed mean and max. Entries are compact so that a large fleet stays small.
//!
//! Windows are measured on the queen's receive clock, not the hive's: a hive whose
//! clock jumps cannot hide or stretch its own history. Each window keeps running sums
//! and monotonic max queues, so a new sample costs O(GPUs), not O(window x GPUs).

use std::collections::VecDeque;
use std::time::Duration;

use rbee_shared::Sample;

use crate::fleet::{GpuStats, WindowStats};

/// One GPU's point in a compact entry.
#[derive(Debug, Clone, Copy)]
struct GpuPoint {
    /// Index into the hive's GPU id table at the time.
    slot: u16,
    /// Utilisation, NaN when absent.
    util: f32,
    /// VRAM used in MiB, NaN when absent.
    vram_used_mib: f32,
}

/// One compact sample.
#[derive(Debug, Clone)]
struct Entry {
    /// Position in the stream of entries (0, 1, 2, ...).
    seq: u64,
    /// When the queen received it, ms on the window's own clock.
    at_ms: u64,
    /// CPU%, NaN when absent.
    cpu: f32,
    /// RAM used as % of total, NaN when unknown.
    ram: f32,
    /// Per GPU.
    gpus: Box<[GpuPoint]>,
}

/// Running mean and max over a sliding range of values, NaN skipped.
#[derive(Debug, Clone, Default)]
struct Sliding {
    /// Sum of the values in range.
    sum: f64,
    /// How many.
    n: u32,
    /// Candidates for the max, decreasing, with the entry they came from.
    maxq: VecDeque<(u64, f32)>,
}

impl Sliding {
    fn add(&mut self, seq: u64, v: f32) {
        if v.is_nan() {
            return;
        }
        self.sum += f64::from(v);
        self.n += 1;
        while self.maxq.back().is_some_and(|&(_, b)| b <= v) {
            self.maxq.pop_back();
        }
        self.maxq.push_back((seq, v));
    }

    fn remove(&mut self, seq: u64, v: f32) {
        if v.is_nan() {
            return;
        }
        self.n -= 1;
        // Start from exact zero so that rounding never accumulates across windows.
        self.sum = if self.n == 0 { 0.0 } else { self.sum - f64::from(v) };
        if self.maxq.front().is_some_and(|&(s, _)| s == seq) {
            self.maxq.pop_front();
        }
    }

    fn mean(&self) -> Option<f32> {
        (self.n > 0).then(|| (self.sum / f64::from(self.n)) as f32)
    }

    fn max(&self) -> Option<f32> {
        self.maxq.front().map(|&(_, v)| v)
    }
}

/// The aggregates of one window length.
#[derive(Debug, Clone)]
struct Span {
    /// Its length.
    len_ms: u64,
    /// The oldest entry inside it.
    head: u64,
    /// Entries inside it.
    samples: u32,
    /// CPU%.
    cpu: Sliding,
    /// RAM used %.
    ram: Sliding,
    /// Per GPU slot: utilisation.
    util: Vec<Sliding>,
    /// Per GPU slot: VRAM used (MiB).
    vram: Vec<Sliding>,
}

impl Span {
    fn new(len: Duration) -> Self {
        Self {
            len_ms: u64::try_from(len.as_millis()).unwrap_or(u64::MAX),
            head: 0,
            samples: 0,
            cpu: Sliding::default(),
            ram: Sliding::default(),
            util: Vec::new(),
            vram: Vec::new(),
        }
    }

    fn add(&mut self, e: &Entry) {
        self.samples += 1;
        self.cpu.add(e.seq, e.cpu);
        self.ram.add(e.seq, e.ram);
        for g in e.gpus.iter() {
            let i = usize::from(g.slot);
            if self.util.len() <= i {
                self.util.resize_with(i + 1, Sliding::default);
                self.vram.resize_with(i + 1, Sliding::default);
            }
            self.util[i].add(e.seq, g.util);
            self.vram[i].add(e.seq, g.vram_used_mib);
        }
    }

    fn remove(&mut self, e: &Entry) {
        self.samples -= 1;
        self.head = e.seq + 1;
        self.cpu.remove(e.seq, e.cpu);
        self.ram.remove(e.seq, e.ram);
        for g in e.gpus.iter() {
            let i = usize::from(g.slot);
            self.util[i].remove(e.seq, g.util);
            self.vram[i].remove(e.seq, g.vram_used_mib);
        }
    }
}

/// The ring buffer and its two windows: the reported statistics and the health rule's
/// CPU mean.
#[derive(Debug, Clone)]
pub struct SampleWindow {
    /// Most entries kept.
    capacity: usize,
    /// Oldest first.
    entries: VecDeque<Entry>,
    /// GPU ids, indexed by `GpuPoint::slot`.
    ids: Vec<String>,
    /// The next entry's sequence number.
    next_seq: u64,
    /// The statistics window.
    stats: Span,
    /// The CPU window of the health rule.
    cpu: Span,
}

impl SampleWindow {
    /// A ring that keeps at most `capacity` samples, with statistics over `stats_window`
    /// and a CPU mean over `cpu_window`.
    pub fn new(capacity: usize, stats_window: Duration, cpu_window: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: VecDeque::new(),
            ids: Vec::new(),
            next_seq: 0,
            stats: Span::new(stats_window),
            cpu: Span::new(cpu_window),
        }
    }

    fn slot(&mut self, id: &str) -> u16 {
        match self.ids.iter().position(|x| x == id) {
            Some(i) => i as u16,
            None => {
                self.ids.push(id.to_owned());
                (self.ids.len() - 1) as u16
            }
        }
    }

    /// Drops entries that fell out of a window by time.
    fn trim(&mut self, newest_ms: u64) {
        let Some(first) = self.entries.front().map(|e| e.seq) else { return };
        for span in [&mut self.stats, &mut self.cpu] {
            let from = newest_ms.saturating_sub(span.len_ms);
            while let Some(e) = self.entries.get((span.head - first) as usize) {
                if e.at_ms >= from {
                    break;
                }
                span.remove(e);
            }
        }
    }

    /// Adds a sample received at `received_ms` (the queen's clock, ms since any fixed
    /// point; never decreasing), dropping the oldest when full.
    pub fn push(&mut self, s: &Sample, received_ms: u64) {
        if self.ids.len() > 4 * rbee_shared::convert::MAX_DEVICES {
            // Ids churned a lot (hot-plug storms): start the table afresh.
            *self = Self::new(
                self.capacity,
                Duration::from_millis(self.stats.len_ms),
                Duration::from_millis(self.cpu.len_ms),
            );
        }
        let gpus = s
            .gpus
            .iter()
            .map(|g| GpuPoint {
                slot: self.slot(&g.id),
                util: g.gpu_util_percent.unwrap_or(f32::NAN),
                vram_used_mib: g.vram_used_bytes.map_or(f32::NAN, |b| (b >> 20) as f32),
            })
            .collect();
        let ram = if s.ram_total_bytes > 0 {
            (s.ram_used_bytes as f64 / s.ram_total_bytes as f64 * 100.0) as f32
        } else {
            f32::NAN
        };
        let at_ms = self.entries.back().map_or(received_ms, |e| e.at_ms.max(received_ms));
        let entry = Entry { seq: self.next_seq, at_ms, cpu: s.cpu_percent.unwrap_or(f32::NAN), ram, gpus };
        self.next_seq += 1;
        self.stats.add(&entry);
        self.cpu.add(&entry);
        self.entries.push_back(entry);
        // Leave the windows before leaving the ring, so their sums always match.
        if self.entries.len() > self.capacity {
            let oldest = self.entries.front().map_or(0, |e| e.seq);
            for span in [&mut self.stats, &mut self.cpu] {
                if span.head == oldest {
                    span.remove(&self.entries[0]);
                }
            }
            self.entries.pop_front();
        }
        self.trim(at_ms);
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Mean CPU% over the CPU window.
    pub fn cpu_mean(&self) -> Option<f32> {
        self.cpu.cpu.mean()
    }

    /// Mean and max over the statistics window, for the GPUs of the newest sample.
    pub fn stats(&self) -> WindowStats {
        let span = &self.stats;
        let newest = self.entries.back();
        WindowStats {
            window_ms: span.len_ms,
            samples: span.samples,
            cpu_mean_percent: span.cpu.mean(),
            cpu_max_percent: span.cpu.max(),
            ram_used_mean_percent: span.ram.mean(),
            ram_used_max_percent: span.ram.max(),
            gpus: newest
                .map(|e| {
                    e.gpus
                        .iter()
                        .map(|g| {
                            let i = usize::from(g.slot);
                            GpuStats {
                                device_id: self.ids[i].clone(),
                                util_mean_percent: span.util[i].mean(),
                                util_max_percent: span.util[i].max(),
                                vram_used_max_bytes: span.vram[i].max().map(|m| (m as u64) << 20),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
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
}
