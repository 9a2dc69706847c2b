//! A ring buffer of recent samples per hive, with windowed mean and max. It keeps the
//! samples its windows cover (60 s by default: 61 samples at 1 Hz), never more than its
//! capacity (`history`, default 300); nothing else reads older samples, so they are
//! dropped. The ring is compact so that a large fleet stays small: it is two flat
//! queues (one 18-byte head per sample, one 10-byte point per GPU per sample), never
//! grown past what the capacity needs; with 8 GPUs a full ring of 300 samples and its
//! windows take under 40 KiB (`heap_bytes`, tested below).
//!
//! Windows are measured on the queen's receive clock, not the hive's: a hive whose
//! clock jumps cannot hide or stretch its own history. Each window keeps running sums
//! and monotonic max queues, so a new sample costs O(GPUs), not O(window x GPUs).

use std::collections::VecDeque;
use std::mem::size_of;
use std::time::Duration;

use rbee_shared::Sample;

use crate::fleet::{GpuStats, WindowStats};

/// One sample's head in the ring.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(2))]
struct Head {
    /// When the queen received it, ms on the window's own clock.
    at_ms: u64,
    /// CPU%, NaN when absent.
    cpu: f32,
    /// RAM used as % of total, NaN when unknown.
    ram: f32,
    /// How many GPU points follow in the point queue.
    gpus: u16,
}

/// One GPU's point of one sample.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(2))]
struct Point {
    /// Index into the hive's GPU id table at the time.
    slot: u16,
    /// Utilisation, NaN when absent.
    util: f32,
    /// VRAM used in MiB, [`NO_VRAM`] when absent.
    vram_mib: u32,
}

/// `Point::vram_mib` of a GPU that reported no VRAM use.
const NO_VRAM: u32 = u32::MAX;

impl Point {
    /// VRAM used in MiB as the windows hold it (NaN when absent).
    fn vram(self) -> f32 {
        let v = self.vram_mib;
        if v == NO_VRAM { f32::NAN } else { v as f32 }
    }
}

/// Pushes `v`, growing `q` to at most `limit` (never doubling past what it needs).
fn push_bounded<T>(q: &mut VecDeque<T>, v: T, limit: usize) {
    if q.len() == q.capacity() {
        let want = q.capacity().saturating_mul(2).max(8).min(limit).max(q.len() + 1);
        q.reserve_exact(want - q.len());
    }
    q.push_back(v);
}

/// Running mean and max over a sliding range of values, NaN skipped.
#[derive(Debug, Clone, Default)]
struct Sliding {
    /// Sum of the values in range.
    sum: f64,
    /// How many.
    n: u32,
    /// Candidates for the max, decreasing, with the entry they came from (its sequence
    /// number's low 32 bits: a window never spans 2^32 samples).
    maxq: VecDeque<(u32, f32)>,
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
        self.maxq.push_back((seq as u32, v));
    }

    fn remove(&mut self, seq: u64, v: f32) {
        if v.is_nan() {
            return;
        }
        self.n -= 1;
        // Start from exact zero so that rounding never accumulates across windows.
        self.sum = if self.n == 0 { 0.0 } else { self.sum - f64::from(v) };
        if self.maxq.front().is_some_and(|&(s, _)| s == seq as u32) {
            self.maxq.pop_front();
        }
    }

    fn mean(&self) -> Option<f32> {
        (self.n > 0).then(|| (self.sum / f64::from(self.n)) as f32)
    }

    fn max(&self) -> Option<f32> {
        self.maxq.front().map(|&(_, v)| v)
    }

    fn heap_bytes(&self) -> usize {
        self.maxq.capacity() * size_of::<(u32, f32)>()
    }
}

/// The aggregates of one window length.
#[derive(Debug, Clone)]
struct Span {
    /// Its length.
    len_ms: u64,
    /// False for the health rule's window, which needs only CPU.
    full: bool,
    /// The oldest entry inside it.
    head: u64,
    /// The first point of that entry (a position in the stream of points).
    head_point: u64,
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
    fn new(len: Duration, full: bool) -> Self {
        Self {
            len_ms: u64::try_from(len.as_millis()).unwrap_or(u64::MAX),
            full,
            head: 0,
            head_point: 0,
            samples: 0,
            cpu: Sliding::default(),
            ram: Sliding::default(),
            util: Vec::new(),
            vram: Vec::new(),
        }
    }

    fn add(&mut self, seq: u64, h: Head, points: impl Iterator<Item = Point>) {
        self.samples += 1;
        self.cpu.add(seq, h.cpu);
        if !self.full {
            return;
        }
        self.ram.add(seq, h.ram);
        for g in points {
            let i = usize::from(g.slot);
            if self.util.len() <= i {
                self.util.resize_with(i + 1, Sliding::default);
                self.vram.resize_with(i + 1, Sliding::default);
            }
            self.util[i].add(seq, g.util);
            self.vram[i].add(seq, g.vram());
        }
    }

    /// Takes the span's oldest entry out (`ring` holds it).
    fn remove_head(&mut self, ring: &Ring) {
        let seq = self.head;
        let h = ring.heads[(seq - ring.first_seq) as usize];
        let from = (self.head_point - ring.first_point) as usize;
        self.samples -= 1;
        self.head += 1;
        self.head_point += u64::from(h.gpus);
        self.cpu.remove(seq, h.cpu);
        if !self.full {
            return;
        }
        self.ram.remove(seq, h.ram);
        for g in ring.points.range(from..from + usize::from(h.gpus)) {
            let i = usize::from(g.slot);
            self.util[i].remove(seq, g.util);
            self.vram[i].remove(seq, g.vram());
        }
    }

    fn heap_bytes(&self) -> usize {
        let slidings = self.util.iter().chain(&self.vram).chain([&self.cpu, &self.ram]);
        (self.util.capacity() + self.vram.capacity()) * size_of::<Sliding>()
            + slidings.map(Sliding::heap_bytes).sum::<usize>()
    }
}

/// The samples kept, oldest first.
#[derive(Debug, Clone, Default)]
struct Ring {
    /// One per sample.
    heads: VecDeque<Head>,
    /// Every sample's GPU points, in sample order.
    points: VecDeque<Point>,
    /// The sequence number of `heads[0]`.
    first_seq: u64,
    /// The position of `points[0]` in the stream of points.
    first_point: u64,
}

/// The ring buffer and its two windows: the reported statistics and the health rule's
/// CPU mean.
#[derive(Debug, Clone)]
pub struct SampleWindow {
    /// Most entries kept.
    capacity: usize,
    /// The samples.
    ring: Ring,
    /// GPU ids, indexed by `Point::slot`.
    ids: Vec<String>,
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
            ring: Ring::default(),
            ids: Vec::new(),
            stats: Span::new(stats_window, true),
            cpu: Span::new(cpu_window, false),
        }
    }

    /// The slot of GPU `id`, the `at`-th of its sample: a GPU keeps the slot it was
    /// first seen in, which is usually its place in every sample (one comparison of
    /// ids, not one per GPU before it).
    fn slot(&mut self, at: usize, id: &str) -> u16 {
        let here = self.ids.get(at).is_some_and(|x| x == id).then_some(at);
        match here.or_else(|| self.ids.iter().position(|x| x == id)) {
            Some(i) => i as u16,
            None => {
                self.ids.push(id.to_owned());
                (self.ids.len() - 1) as u16
            }
        }
    }

    /// The next entry's sequence number.
    fn next_seq(&self) -> u64 {
        self.ring.first_seq + self.ring.heads.len() as u64
    }

    /// Drops entries that fell out of a window by time.
    fn trim(&mut self, newest_ms: u64) {
        let ring = &self.ring;
        for span in [&mut self.stats, &mut self.cpu] {
            let from = newest_ms.saturating_sub(span.len_ms);
            while let Some(h) = ring.heads.get((span.head - ring.first_seq) as usize) {
                if h.at_ms >= from {
                    break;
                }
                span.remove_head(ring);
            }
        }
    }

    /// Drops the oldest entry, out of the windows first so that their sums always match.
    fn pop_oldest(&mut self) {
        let ring = &mut self.ring;
        let Some(&h) = ring.heads.front() else { return };
        for span in [&mut self.stats, &mut self.cpu] {
            if span.head == ring.first_seq {
                span.remove_head(ring);
            }
        }
        ring.heads.pop_front();
        ring.points.drain(..usize::from(h.gpus));
        ring.first_seq += 1;
        ring.first_point += u64::from(h.gpus);
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
        if self.ring.heads.len() >= self.capacity {
            self.pop_oldest();
        }
        let ram = if s.ram_total_bytes > 0 {
            (s.ram_used_bytes as f64 / s.ram_total_bytes as f64 * 100.0) as f32
        } else {
            f32::NAN
        };
        let at_ms = self.ring.heads.back().map_or(received_ms, |h| h.at_ms.max(received_ms));
        let gpus = u16::try_from(s.gpus.len()).unwrap_or(u16::MAX);
        let head = Head { at_ms, cpu: s.cpu_percent.unwrap_or(f32::NAN), ram, gpus };
        let limit = self.capacity.saturating_mul(usize::from(gpus));
        for (at, g) in s.gpus.iter().take(usize::from(gpus)).enumerate() {
            let point = Point {
                slot: self.slot(at, &g.id),
                util: g.gpu_util_percent.unwrap_or(f32::NAN),
                vram_mib: g
                    .vram_used_bytes
                    .map_or(NO_VRAM, |b| u32::try_from(b >> 20).unwrap_or(NO_VRAM - 1)),
            };
            push_bounded(&mut self.ring.points, point, limit);
        }
        let seq = self.next_seq();
        push_bounded(&mut self.ring.heads, head, self.capacity);
        let from = self.ring.points.len() - usize::from(gpus);
        for span in [&mut self.stats, &mut self.cpu] {
            span.add(seq, head, self.ring.points.range(from..).copied());
        }
        self.trim(at_ms);
        // Entries that fell out of both windows are never read again: the ring keeps
        // what the windows cover, and at most `capacity` (at 1 Hz with 60 s windows,
        // 61 samples, not 300).
        let read_from = self.stats.head.min(self.cpu.head);
        while self.ring.first_seq < read_from && !self.ring.heads.is_empty() {
            self.pop_oldest();
        }
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.ring.heads.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ring.heads.is_empty()
    }

    /// Mean CPU% over the CPU window.
    pub fn cpu_mean(&self) -> Option<f32> {
        self.cpu.cpu.mean()
    }

    /// Bytes this window holds on the heap (the ring, the id table, the windows'
    /// queues), by the capacity of each allocation; the allocator's own overhead (a
    /// few words per allocation) is not counted.
    pub fn heap_bytes(&self) -> usize {
        self.ring.heads.capacity() * size_of::<Head>()
            + self.ring.points.capacity() * size_of::<Point>()
            + self.ids.capacity() * size_of::<String>()
            + self.ids.iter().map(String::capacity).sum::<usize>()
            + self.stats.heap_bytes()
            + self.cpu.heap_bytes()
    }

    /// Mean and max over the statistics window, for the GPUs of the newest sample.
    pub fn stats(&self) -> WindowStats {
        let mut out = WindowStats::default();
        self.stats_into(&mut out);
        out
    }

    /// [`SampleWindow::stats`] written over `out`, reusing its allocations (the per-GPU
    /// list and the device id strings): a link refills the statistics it published
    /// before last ([`super::recycle`]) instead of allocating them on every sample.
    pub fn stats_into(&self, out: &mut WindowStats) {
        let span = &self.stats;
        let newest = self.ring.heads.back().map(|h| usize::from(h.gpus)).unwrap_or(0);
        let points = self.ring.points.range(self.ring.points.len() - newest..);
        out.window_ms = span.len_ms;
        out.samples = span.samples;
        out.cpu_mean_percent = span.cpu.mean();
        out.cpu_max_percent = span.cpu.max();
        out.ram_used_mean_percent = span.ram.mean();
        out.ram_used_max_percent = span.ram.max();
        out.gpus.truncate(newest);
        for (k, g) in points.enumerate() {
            let i = usize::from(g.slot);
            let util_mean_percent = span.util[i].mean();
            let util_max_percent = span.util[i].max();
            let vram_used_max_bytes = span.vram[i].max().map(|m| (m as u64) << 20);
            match out.gpus.get_mut(k) {
                Some(o) => {
                    o.device_id.clone_from(&self.ids[i]);
                    o.util_mean_percent = util_mean_percent;
                    o.util_max_percent = util_max_percent;
                    o.vram_used_max_bytes = vram_used_max_bytes;
                }
                None => out.gpus.push(GpuStats {
                    device_id: self.ids[i].clone(),
                    util_mean_percent,
                    util_max_percent,
                    vram_used_max_bytes,
                }),
            }
        }
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
