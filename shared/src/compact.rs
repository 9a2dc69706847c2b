//! Compact samples: a stream's samples as deadband deltas against what the stream
//! already delivered (`CompactSample` on the wire; the rules are in
//! `docs/protocol.md`, "Compact samples").
//!
//! Both ends hold the same view: the encoder applies every compact sample it makes to
//! its own copy with the decoder's [`apply`], so what it compares the next reading
//! against is exactly what the receiver holds. A value is sent when it moved beyond
//! its [`deadband`] from that view, so the receiver is never further than the deadband
//! from the hive's latest reading; a keyframe (the first sample, a new capability
//! version, and at least every [`KEYFRAME_EVERY_MS`]) carries every value and makes the
//! view exact (per-core CPU is whole percents in compact form). Integer units keep it
//! small: whole percents and °C, power changes in whole watts, per-core changes packed
//! in a few bits each (`compact_cores.rs`).
//!
//! GPUs are named by their position in the delivered capabilities' GPUs, ordered by id
//! ([`Layout`]). `Sample`/`GpuSample` fields the compact form does not encode one by one
//! (fields added after it) ride along whole in `extras`, sent when any of them changed.
//!
//! This is a conversion at the wire's edge, so it works on the wire types: the hive's
//! outbound edge (`hive/src/stream_compact.rs`) encodes a domain [`Sample`] with
//! [`Encoder::encode_sample`], and the queen's inbound edge (`queen/src/link/ingest_compact.rs`)
//! decodes a frame straight into a domain [`Sample`] with [`Decoder::decode_sample`]. The
//! view both ends hold stays in wire form inside this module, so the two ends apply the
//! very same [`apply`].

use rbee_proto::v1 as pb;

use crate::{Sample, VersionedCapabilities};

#[path = "compact_cores.rs"]
mod cores;
#[path = "compact_decode.rs"]
mod decode;
#[path = "compact_extras.rs"]
mod extras;

use cores::core_byte;
pub use decode::{Decoder, apply};
use extras::{gpu_extras, sample_extras};

/// A keyframe is sent at least this often (ms of `taken_at`).
pub const KEYFRAME_EVERY_MS: u64 = 30_000;

/// How far each value may drift before it is sent again (see `docs/protocol.md`).
pub mod deadband {
    /// Any percentage (CPU, GPU and memory utilisation), points.
    pub const PERCENT: f32 = 1.0;
    /// Per-core CPU, whole points (values travel as whole percents).
    pub const CORE_PERCENT: f32 = 1.0;
    /// Temperature, °C.
    pub const TEMPERATURE_C: f32 = 1.0;
    /// VRAM used and free, bytes (64 MiB).
    pub const VRAM_BYTES: u64 = 64 << 20;
    /// RAM and swap, bytes (64 MiB).
    pub const RAM_BYTES: u64 = 64 << 20;
    /// Power draw, mW (5 W).
    pub const POWER_MW: u32 = 5_000;
    /// SM and memory clocks, MHz.
    pub const CLOCK_MHZ: u32 = 15;
    /// The CPU measurement window, ms.
    pub const CPU_WINDOW_MS: u32 = 100;
    /// Load averages, hundredths.
    pub const LOAD_CENTI: u32 = 5;
    /// Uptime against the previous uptime plus the time passed, s.
    pub const UPTIME_S: u64 = 1;
}

/// Why a compact sample cannot be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    /// The full sample a compact sample makes of the held view is not a valid sample.
    #[error("the sample a compact sample makes is invalid: {0}")]
    Invalid(#[from] crate::ConvertError),
    /// A delta arrived before any keyframe.
    #[error("a compact delta arrived before any keyframe")]
    NoKeyframe,
    /// A GPU position outside the delivered capabilities.
    #[error("compact GPU position {position} is outside the {gpus} GPUs of the held capabilities")]
    BadPosition {
        /// The position sent.
        position: u32,
        /// GPUs held.
        gpus: usize,
    },
    /// A sample names a GPU the capabilities do not have.
    #[error("sample GPU {0:?} is not in the delivered capabilities")]
    UnknownGpu(String),
    /// Per-core CPU bytes above 100.
    #[error("compact per-core CPU value {0} is above 100")]
    BadCore(u8),
    /// Per-core CPU changes that cannot be applied.
    #[error("compact per-core CPU changes cannot be applied: {0}")]
    BadCoreDelta(&'static str),
    /// A GPU's power change that cannot be applied.
    #[error("compact GPU power change of {delta} W cannot be applied: {why}")]
    BadPowerDelta {
        /// The change sent, W.
        delta: i32,
        /// Why it cannot be applied.
        why: &'static str,
    },
}

/// The capabilities both ends hold, as the compact form refers to them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Layout {
    /// The capability version.
    pub version: u64,
    /// GPU ids in position order (sorted).
    pub ids: Vec<String>,
    /// Each GPU's NVML index, by position.
    pub index: Vec<u32>,
    /// Each GPU's VRAM, by position.
    pub vram_total: Vec<u64>,
    /// The host's RAM.
    pub ram_total: u64,
}

impl Layout {
    /// The layout of delivered capabilities.
    pub fn of(caps: &VersionedCapabilities) -> Self {
        let gpus = caps.caps.gpus.values();
        Self {
            version: caps.version,
            ids: gpus.clone().map(|g| g.id.clone()).collect(),
            index: gpus.clone().map(|g| g.index).collect(),
            vram_total: gpus.map(|g| g.vram_total_bytes).collect(),
            ram_total: caps.caps.ram_total_bytes,
        }
    }
}

/// Values that can move beyond a deadband.
trait Band: Copy + PartialEq {
    fn beyond(self, held: Self, band: Self) -> bool;
}

impl Band for f32 {
    fn beyond(self, held: f32, band: f32) -> bool {
        // NaN is beyond every band: a NaN difference must be sent, never held.
        use std::cmp::Ordering::{Equal, Less};
        !matches!((self - held).abs().partial_cmp(&band), Some(Less | Equal))
    }
}

impl Band for u32 {
    fn beyond(self, held: u32, band: u32) -> bool {
        self.abs_diff(held) > band
    }
}

impl Band for u64 {
    fn beyond(self, held: u64, band: u64) -> bool {
        self.abs_diff(held) > band
    }
}

/// What to send for one field: the value on a keyframe or when it moved beyond `band`;
/// on a delta, a field that became unset is listed in `cleared` as `number`.
fn field<T: Band>(
    now: Option<T>,
    held: Option<T>,
    band: T,
    key: bool,
    cleared: &mut Vec<u32>,
    number: u32,
) -> Option<T> {
    match (now, held) {
        (None, Some(_)) if !key => {
            cleared.push(number);
            None
        }
        (None, _) => None,
        (Some(v), Some(h)) if !key && !v.beyond(h, band) => None,
        (Some(v), _) => Some(v),
    }
}

fn centi(v: f64) -> u32 {
    (v * 100.0).round().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// `v` rounded to a whole number (percentages are never negative; NaN never gets here:
/// the wire conversion refuses it).
fn whole(v: f32) -> i32 {
    if v.is_finite() { v.round().clamp(-1e6, 1e6) as i32 } else { 0 }
}

/// `v` as a whole number when it is one (and fits in 0..=1e6 or, signed, ±1e6): it
/// travels in the whole-unit field exactly.
fn exact_whole(v: f32) -> Option<i32> {
    (v.fract() == 0.0 && v.abs() <= 1e6).then_some(v as i32)
}

/// The uptime a receiver expects to have passed between two `taken_at`s: the whole
/// seconds of the clock that `to` is past `from`. Counting second boundaries (rather
/// than whole seconds in each interval) keeps the expected uptime within 1 s of the
/// real one however the intervals jitter around a second.
fn seconds_passed(from_ms: u64, to_ms: u64) -> u64 {
    (to_ms / 1000).saturating_sub(from_ms / 1000)
}

/// Power in whole watts (rounded to the nearest), from mW.
fn watts(mw: u32) -> i64 {
    (i64::from(mw) + 500) / 1000
}

/// The hive's side: turns a stream's readings into compact samples.
#[derive(Debug, Default)]
pub struct Encoder {
    /// What the receiver holds (exactly what [`apply`] made of what was sent).
    view: Option<pb::Sample>,
    /// The layout the view was made with.
    layout_version: u64,
    /// `taken_at` of the last keyframe.
    keyframe_at: u64,
}

impl Encoder {
    /// A new encoder (its first sample is a keyframe).
    pub fn new() -> Self {
        Self::default()
    }

    /// The compact form of the domain sample `now` (see [`Encoder::encode`]).
    pub fn encode_sample(
        &mut self,
        now: &Sample,
        layout: &Layout,
    ) -> Result<pb::CompactSample, CompactError> {
        self.encode(&pb::Sample::from(now), layout)
    }

    /// The compact form of `now` against what this stream delivered, measured against
    /// `layout` (the capabilities the stream has delivered).
    pub fn encode(&mut self, now: &pb::Sample, layout: &Layout) -> Result<pb::CompactSample, CompactError> {
        let held = self.view.as_ref().filter(|v| {
            self.layout_version == layout.version
                && now.taken_at_unix_ms >= v.taken_at_unix_ms
                && now.taken_at_unix_ms - self.keyframe_at < KEYFRAME_EVERY_MS
        });
        let key = held.is_none();
        let empty = pb::Sample::default();
        let h = held.unwrap_or(&empty);
        let mut c = pb::CompactSample::default();
        let mut cl = Vec::new();
        if key {
            c.taken_at_unix_ms = Some(now.taken_at_unix_ms);
        } else {
            c.taken_at_delta_ms = now.taken_at_unix_ms - h.taken_at_unix_ms;
        }
        c.capability_version =
            if key || now.capability_version != h.capability_version { now.capability_version } else { None };
        if !key && now.capability_version.is_none() && h.capability_version.is_some() {
            cl.push(13);
        }
        c.cpu_window_ms = field(now.cpu_window_ms, h.cpu_window_ms, deadband::CPU_WINDOW_MS, key, &mut cl, 2);
        c.cpu_percent = field(now.cpu_percent, h.cpu_percent, deadband::PERCENT, key, &mut cl, 3);
        if !key {
            c.cpu_percent_whole = c.cpu_percent.take().map(|p| whole(p) as u32);
        }
        let cores_moved = now.cpu_per_core_percent.len() != h.cpu_per_core_percent.len()
            || now
                .cpu_per_core_percent
                .iter()
                .zip(&h.cpu_per_core_percent)
                .any(|(n, h)| n.beyond(*h, deadband::CORE_PERCENT));
        if key || cores_moved {
            let bytes: Vec<u8> = now.cpu_per_core_percent.iter().map(|p| core_byte(*p)).collect();
            let held: Vec<u8> = h.cpu_per_core_percent.iter().map(|p| core_byte(*p)).collect();
            let packed =
                (!key && !held.is_empty() && held.len() == bytes.len()).then(|| cores::pack(&bytes, &held));
            match packed {
                Some(packed) if packed.len() < bytes.len() => c.cpu_per_core_delta = packed,
                _ => c.cpu_per_core = bytes,
            }
            if now.cpu_per_core_percent.is_empty() && !key {
                cl.push(4);
            }
        }
        let load = |l: Option<pb::LoadAverage>| l.map(|l| (centi(l.one), centi(l.five), centi(l.fifteen)));
        let (ln, lh) = (load(now.load_average), load(h.load_average));
        c.load_average = match (ln, lh) {
            (None, Some(_)) if !key => {
                cl.push(5);
                None
            }
            (Some(n), Some(h))
                if !key
                    && [(n.0, h.0), (n.1, h.1), (n.2, h.2)]
                        .iter()
                        .all(|(a, b)| !a.beyond(*b, deadband::LOAD_CENTI)) =>
            {
                None
            }
            (n, _) => n.map(|(one, five, fifteen)| pb::CompactLoad { one, five, fifteen }),
        };
        // RAM total: only when it is not the capabilities' (or changed since sent).
        let total_now = (now.ram_total_bytes != layout.ram_total).then_some(now.ram_total_bytes);
        let total_held = (h.ram_total_bytes != layout.ram_total).then_some(h.ram_total_bytes);
        c.ram_total_bytes =
            if key { total_now } else { (total_now != total_held).then_some(now.ram_total_bytes) };
        c.ram_used_bytes =
            field(Some(now.ram_used_bytes), Some(h.ram_used_bytes), deadband::RAM_BYTES, key, &mut cl, 7);
        c.ram_available_bytes = field(
            Some(now.ram_available_bytes),
            Some(h.ram_available_bytes),
            deadband::RAM_BYTES,
            key,
            &mut cl,
            8,
        );
        c.swap_total_bytes =
            field(now.swap_total_bytes, h.swap_total_bytes, deadband::RAM_BYTES, key, &mut cl, 9);
        c.swap_used_bytes =
            field(now.swap_used_bytes, h.swap_used_bytes, deadband::RAM_BYTES, key, &mut cl, 10);
        c.uptime_s = field(
            now.uptime_s,
            h.uptime_s.map(|u| u.saturating_add(seconds_passed(h.taken_at_unix_ms, now.taken_at_unix_ms))),
            deadband::UPTIME_S,
            key,
            &mut cl,
            11,
        );
        let extras = sample_extras(now);
        if extras != sample_extras(h) || (key && extras != pb::Sample::default()) {
            c.extras = Some(extras);
        }
        for g in &now.gpus {
            let position =
                layout.ids.binary_search(&g.id).map_err(|_| CompactError::UnknownGpu(g.id.clone()))?;
            let old = h.gpus.iter().find(|o| o.id == g.id);
            c.gpus.extend(encode_gpu(g, old, position, layout.vram_total[position], key));
        }
        c.cleared = cl;
        let mut view = self.view.take();
        apply(&mut view, &c, layout)?;
        self.view = view;
        self.layout_version = layout.version;
        if key {
            self.keyframe_at = now.taken_at_unix_ms;
        }
        Ok(c)
    }
}

fn encode_gpu(
    g: &pb::GpuSample,
    old: Option<&pb::GpuSample>,
    position: usize,
    total: u64,
    key: bool,
) -> Option<pb::CompactGpu> {
    let empty = pb::GpuSample::default();
    let key = key || old.is_none();
    let h = old.unwrap_or(&empty);
    let mut cl = Vec::new();
    let mut c = pb::CompactGpu {
        position: u32::try_from(position).unwrap_or(u32::MAX),
        vram_used_bytes: field(g.vram_used_bytes, h.vram_used_bytes, deadband::VRAM_BYTES, key, &mut cl, 3),
        gpu_util_percent: field(g.gpu_util_percent, h.gpu_util_percent, deadband::PERCENT, key, &mut cl, 5),
        mem_util_percent: field(g.mem_util_percent, h.mem_util_percent, deadband::PERCENT, key, &mut cl, 6),
        temperature_c: field(g.temperature_c, h.temperature_c, deadband::TEMPERATURE_C, key, &mut cl, 7),
        power_draw_mw: field(g.power_draw_mw, h.power_draw_mw, deadband::POWER_MW, key, &mut cl, 8),
        sm_clock_mhz: field(g.sm_clock_mhz, h.sm_clock_mhz, deadband::CLOCK_MHZ, key, &mut cl, 9),
        mem_clock_mhz: field(g.mem_clock_mhz, h.mem_clock_mhz, deadband::CLOCK_MHZ, key, &mut cl, 10),
        ecc_corrected_volatile: field(
            g.ecc_corrected_volatile,
            h.ecc_corrected_volatile,
            0,
            key,
            &mut cl,
            11,
        ),
        ecc_uncorrected_volatile: field(
            g.ecc_uncorrected_volatile,
            h.ecc_uncorrected_volatile,
            0,
            key,
            &mut cl,
            12,
        ),
        xid_events: field(g.xid_events, h.xid_events, 0, key, &mut cl, 13),
        last_xid: field(g.last_xid, h.last_xid, 0, key, &mut cl, 14),
        ..Default::default()
    };
    // Free VRAM: the receiver takes total minus used whenever used is sent, else keeps
    // what it held; free is sent only when that would be wrong (beyond the band, or at
    // all on a keyframe).
    let would = match c.vram_used_bytes {
        Some(u) => Some(total.saturating_sub(u)),
        None if key => None,
        None => h.vram_free_bytes,
    };
    c.vram_free_bytes = match (g.vram_free_bytes, would) {
        (None, Some(_)) => {
            cl.push(4);
            None
        }
        (None, None) => None,
        (Some(f), Some(w)) if (key && f == w) || (!key && !f.beyond(w, deadband::VRAM_BYTES)) => None,
        (Some(f), _) => Some(f),
    };
    if key {
        // A whole reading (NVML reports whole percents and °C) travels whole, exactly.
        let unsigned = |v: &mut Option<f32>| {
            let w = v.and_then(exact_whole).and_then(|w| u32::try_from(w).ok());
            if w.is_some() {
                *v = None;
            }
            w
        };
        c.gpu_util_whole = unsigned(&mut c.gpu_util_percent);
        c.mem_util_whole = unsigned(&mut c.mem_util_percent);
        c.temperature_whole = c.temperature_c.and_then(exact_whole);
        if c.temperature_whole.is_some() {
            c.temperature_c = None;
        }
    } else {
        // A delta carries whole units: within half a unit of the reading when sent.
        c.gpu_util_whole = c.gpu_util_percent.take().map(|p| whole(p) as u32);
        c.mem_util_whole = c.mem_util_percent.take().map(|p| whole(p) as u32);
        c.temperature_whole = c.temperature_c.take().map(whole);
        // Power as the change in whole watts from the held value (within 0.5 W when sent).
        if let (Some(p), Some(held)) = (c.power_draw_mw, h.power_draw_mw) {
            c.power_draw_mw = None;
            c.power_delta_w = Some(i32::try_from(watts(p) - watts(held)).unwrap_or(i32::MAX));
        }
    }
    let extras = gpu_extras(g);
    if extras != gpu_extras(h) || (key && extras != pb::GpuSample::default()) {
        c.extras = Some(extras);
    }
    c.cleared = cl;
    let changed = key || c != pb::CompactGpu { position: c.position, ..Default::default() };
    changed.then_some(c)
}

#[cfg(test)]
#[path = "compact_tests.rs"]
mod tests;
