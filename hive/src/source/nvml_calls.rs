//! How long the hive's NVML calls take: one latency histogram per kind of call, timed
//! around the real calls ([`super::nvml::NvmlSource`]) and exported on the hive's
//! `/metrics` as `rbee_hive_nvml_call_seconds{call=...}` (`docs/metrics.md`).
//!
//! A slow driver (a GPU in trouble, a busy persistence daemon) shows here first: a
//! sample waits for every one of these calls. Recording is lock-free (relaxed atomics):
//! the sampling thread writes, a scrape reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A kind of NVML call, by what it asks the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvmlCall {
    /// `nvmlDeviceGetCount`.
    DeviceCount,
    /// `nvmlDeviceGetHandleByIndex` and `nvmlDeviceGetUUID`.
    Handle,
    /// `nvmlDeviceGetMemoryInfo` (`_v2`).
    MemoryInfo,
    /// `nvmlDeviceGetUtilizationRates`.
    Utilization,
    /// `nvmlDeviceGetTemperature`.
    Temperature,
    /// `nvmlDeviceGetPowerUsage`.
    Power,
    /// `nvmlDeviceGetClockInfo` (SM and memory clocks, one call each).
    Clocks,
    /// `nvmlDeviceGetTotalEccErrors` (corrected and uncorrected, one call each).
    Ecc,
    /// `nvmlDeviceGetComputeRunningProcesses`.
    Processes,
    /// `nvmlEventSetWait` with no wait (draining XID events), once per sample.
    Events,
    /// A MIG GPU's instances: their count, handles, UUIDs and memory.
    Mig,
    /// Describing one GPU at a capability scan: name, PCI info, compute capability,
    /// power limit, MIG mode.
    Describe,
    /// The topology read of a capability scan (NUMA, CPU affinity, PCIe, NVLink).
    Topology,
}

impl NvmlCall {
    /// Every kind, in the order they are exported.
    pub const ALL: [NvmlCall; 13] = [
        NvmlCall::DeviceCount,
        NvmlCall::Handle,
        NvmlCall::MemoryInfo,
        NvmlCall::Utilization,
        NvmlCall::Temperature,
        NvmlCall::Power,
        NvmlCall::Clocks,
        NvmlCall::Ecc,
        NvmlCall::Processes,
        NvmlCall::Events,
        NvmlCall::Mig,
        NvmlCall::Describe,
        NvmlCall::Topology,
    ];

    /// The `call` label value.
    pub fn label(self) -> &'static str {
        match self {
            NvmlCall::DeviceCount => "device_count",
            NvmlCall::Handle => "handle",
            NvmlCall::MemoryInfo => "memory_info",
            NvmlCall::Utilization => "utilization",
            NvmlCall::Temperature => "temperature",
            NvmlCall::Power => "power",
            NvmlCall::Clocks => "clocks",
            NvmlCall::Ecc => "ecc",
            NvmlCall::Processes => "processes",
            NvmlCall::Events => "events",
            NvmlCall::Mig => "mig",
            NvmlCall::Describe => "describe",
            NvmlCall::Topology => "topology",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// Upper bounds of the histogram buckets, in seconds (`+Inf` follows): a healthy
/// driver answers in microseconds, a troubled one in milliseconds to seconds.
pub const BUCKETS_S: [f64; 10] = [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 1e-2, 0.1, 1.0];

/// One kind's latency histogram.
#[derive(Debug, Default)]
struct Histogram {
    /// Calls per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS_S.len() + 1],
    /// Total time, nanoseconds.
    sum_ns: AtomicU64,
}

/// A histogram as read at a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSnapshot {
    /// The kind of call.
    pub call: NvmlCall,
    /// Calls so far.
    pub count: u64,
    /// Their total time, seconds.
    pub sum_s: f64,
    /// `(upper bound, calls in this bucket)`, not cumulative, `+Inf` last (the form
    /// prometheus-client encodes).
    pub buckets: Vec<(f64, u64)>,
}

/// The latency histograms of every kind of NVML call.
#[derive(Debug, Default)]
pub struct NvmlCalls {
    /// Indexed by [`NvmlCall`].
    kinds: [Histogram; NvmlCall::ALL.len()],
}

impl NvmlCalls {
    /// Empty histograms.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` (the NVML call) and records how long it took under `call`.
    pub fn time<T>(&self, call: NvmlCall, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.record(call, started.elapsed());
        out
    }

    /// Records one call of `call` that took `took`.
    pub fn record(&self, call: NvmlCall, took: Duration) {
        let h = &self.kinds[call.slot()];
        let s = took.as_secs_f64();
        let bucket = BUCKETS_S.iter().position(|&le| s <= le).unwrap_or(BUCKETS_S.len());
        h.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        h.sum_ns.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The kinds called at least once, for a scrape. The count is the buckets' sum, so
    /// a scrape's count and buckets always agree.
    pub fn snapshot(&self) -> Vec<CallSnapshot> {
        NvmlCall::ALL
            .iter()
            .filter_map(|&call| {
                let h = &self.kinds[call.slot()];
                let buckets: Vec<(f64, u64)> = BUCKETS_S
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(h.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
                    .collect();
                let count: u64 = buckets.iter().map(|(_, n)| n).sum();
                (count > 0).then(|| CallSnapshot {
                    call,
                    count,
                    sum_s: h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
                    buckets,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_land_in_the_bucket_of_their_duration_and_idle_kinds_are_left_out() {
        let calls = NvmlCalls::new();
        assert!(calls.snapshot().is_empty());
        calls.record(NvmlCall::Temperature, Duration::from_micros(5));
        calls.record(NvmlCall::Temperature, Duration::from_micros(10));
        calls.record(NvmlCall::Temperature, Duration::from_millis(3));
        calls.record(NvmlCall::Temperature, Duration::from_secs(2));
        let out = calls.time(NvmlCall::Power, || 7);
        assert_eq!(out, 7);
        let snap = calls.snapshot();
        let kinds: Vec<&str> = snap.iter().map(|s| s.call.label()).collect();
        assert_eq!(kinds, ["temperature", "power"]);
        let t = &snap[0];
        assert_eq!(t.count, 4);
        assert!((t.sum_s - 2.003015).abs() < 1e-9, "{}", t.sum_s);
        assert_eq!(t.buckets.len(), BUCKETS_S.len() + 1);
        assert_eq!(t.buckets.last(), Some(&(f64::INFINITY, 1)), "2 s is over the last bound");
        let at = |le: f64| t.buckets.iter().find(|(b, _)| *b == le).map(|(_, n)| *n);
        assert_eq!(at(1e-5), Some(2), "a call on a bound counts in that bucket");
        assert_eq!(at(1e-2), Some(1));
        assert_eq!(snap[1].count, 1);
    }

    #[test]
    fn every_kind_has_its_own_slot_and_label() {
        for (i, call) in NvmlCall::ALL.iter().enumerate() {
            assert_eq!(call.slot(), i);
        }
        let labels: std::collections::BTreeSet<&str> = NvmlCall::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels.len(), NvmlCall::ALL.len());
    }
}
