//! A ring buffer of recent samples per hive (default 300: 5 minutes at 1 Hz), with
//! windowed mean and max. Entries are compact so that a large fleet stays small.

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
    /// VRAM used in MiB, `u32::MAX` when absent.
    vram_used_mib: u32,
}

/// One compact sample.
#[derive(Debug, Clone)]
struct Entry {
    /// When the sample was taken (hive clock), ms since the Unix epoch.
    at_ms: u64,
    /// CPU%, NaN when absent.
    cpu: f32,
    /// RAM used as % of total, NaN when unknown.
    ram: f32,
    /// Per GPU.
    gpus: Box<[GpuPoint]>,
}

/// Mean and max over values, NaN skipped.
#[derive(Default)]
struct Agg {
    sum: f64,
    n: u32,
    max: f32,
}

impl Agg {
    fn add(&mut self, v: f32) {
        if v.is_nan() {
            return;
        }
        self.max = if self.n == 0 { v } else { self.max.max(v) };
        self.sum += f64::from(v);
        self.n += 1;
    }
    fn mean(&self) -> Option<f32> {
        (self.n > 0).then(|| (self.sum / f64::from(self.n)) as f32)
    }
    fn max(&self) -> Option<f32> {
        (self.n > 0).then_some(self.max)
    }
}

/// The ring buffer.
#[derive(Debug, Clone)]
pub struct SampleWindow {
    /// Most entries kept.
    capacity: usize,
    /// Oldest first.
    entries: VecDeque<Entry>,
    /// GPU ids, indexed by `GpuPoint::slot`.
    ids: Vec<String>,
}

impl SampleWindow {
    /// A ring that keeps at most `capacity` samples.
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), entries: VecDeque::new(), ids: Vec::new() }
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

    /// Adds a sample, dropping the oldest when full.
    pub fn push(&mut self, s: &Sample) {
        if self.ids.len() > 4 * rbee_shared::convert::MAX_DEVICES {
            // Ids churned a lot (hot-plug storms): start the table afresh.
            self.ids.clear();
            self.entries.clear();
        }
        let gpus = s
            .gpus
            .iter()
            .map(|g| GpuPoint {
                slot: self.slot(&g.id),
                util: g.gpu_util_percent.unwrap_or(f32::NAN),
                vram_used_mib: g
                    .vram_used_bytes
                    .map_or(u32::MAX, |b| (b >> 20).min(u64::from(u32::MAX - 1)) as u32),
            })
            .collect();
        let ram = if s.ram_total_bytes > 0 {
            (s.ram_used_bytes as f64 / s.ram_total_bytes as f64 * 100.0) as f32
        } else {
            f32::NAN
        };
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            at_ms: s.taken_at_unix_ms,
            cpu: s.cpu_percent.unwrap_or(f32::NAN),
            ram,
            gpus,
        });
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn recent(&self, window: Duration) -> impl Iterator<Item = &Entry> {
        let newest = self.entries.back().map_or(0, |e| e.at_ms);
        let from = newest.saturating_sub(window.as_millis() as u64);
        self.entries.iter().rev().take_while(move |e| e.at_ms >= from)
    }

    /// Mean CPU% over the newest `window` of samples.
    pub fn cpu_mean(&self, window: Duration) -> Option<f32> {
        let mut a = Agg::default();
        self.recent(window).for_each(|e| a.add(e.cpu));
        a.mean()
    }

    /// Mean and max over the newest `window` of samples (measured on the hive's clock).
    pub fn stats(&self, window: Duration) -> WindowStats {
        let (mut cpu, mut ram, mut n) = (Agg::default(), Agg::default(), 0u32);
        let mut util: Vec<Agg> = Vec::new();
        let mut vram: Vec<Option<u32>> = Vec::new();
        util.resize_with(self.ids.len(), Agg::default);
        vram.resize(self.ids.len(), None);
        for e in self.recent(window) {
            n += 1;
            cpu.add(e.cpu);
            ram.add(e.ram);
            for g in e.gpus.iter() {
                let i = usize::from(g.slot);
                util[i].add(g.util);
                if g.vram_used_mib != u32::MAX {
                    vram[i] = Some(vram[i].map_or(g.vram_used_mib, |v| v.max(g.vram_used_mib)));
                }
            }
        }
        let latest: Vec<u16> =
            self.entries.back().map(|e| e.gpus.iter().map(|g| g.slot).collect()).unwrap_or_default();
        WindowStats {
            window_ms: window.as_millis() as u64,
            samples: n,
            cpu_mean_percent: cpu.mean(),
            cpu_max_percent: cpu.max(),
            ram_used_mean_percent: ram.mean(),
            ram_used_max_percent: ram.max(),
            gpus: latest
                .into_iter()
                .map(|slot| {
                    let i = usize::from(slot);
                    GpuStats {
                        device_id: self.ids[i].clone(),
                        util_mean_percent: util[i].mean(),
                        util_max_percent: util[i].max(),
                        vram_used_max_bytes: vram[i].map(|m| u64::from(m) << 20),
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_shared::GpuSample;

    fn s(at_ms: u64, cpu: f32, util: f32) -> Sample {
        Sample {
            taken_at_unix_ms: at_ms,
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

    #[test]
    fn keeps_at_most_capacity() {
        let mut w = SampleWindow::new(3);
        for i in 0..10 {
            w.push(&s(i * 1000, 1.0, 1.0));
        }
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn mean_and_max_cover_only_the_window() {
        let mut w = SampleWindow::new(300);
        w.push(&s(0, 100.0, 100.0));
        for i in 1..=10 {
            w.push(&s(60_000 + i * 1000, 10.0 * i as f32, 50.0));
        }
        let st = w.stats(Duration::from_secs(10));
        assert_eq!(st.samples, 10);
        assert_eq!(st.cpu_max_percent, Some(100.0));
        assert_eq!(st.cpu_mean_percent, Some(55.0));
        assert_eq!(st.gpus[0].util_max_percent, Some(50.0), "the old 100% is outside the window");
        assert_eq!(st.gpus[0].vram_used_max_bytes, Some(3 << 20));
        assert_eq!(st.ram_used_mean_percent, Some(50.0));
    }

    #[test]
    fn absent_metrics_stay_absent() {
        let mut w = SampleWindow::new(10);
        w.push(&Sample { taken_at_unix_ms: 1, ..Default::default() });
        let st = w.stats(Duration::from_secs(60));
        assert_eq!((st.samples, st.cpu_mean_percent, st.ram_used_mean_percent), (1, None, None));
    }
}
