//! The receiver's side of compact samples: [`apply`] turns the held view and a compact
//! sample into the next view (the encoder keeps its copy of the receiver's view with
//! it too), and [`Decoder`] holds a stream's view.

use std::cell::RefCell;

use rbee_proto::v1 as pb;

use super::extras::Known;
use super::{CompactError, Layout, core_byte, cores, seconds_passed, watts};
use crate::Sample;

/// Applies `c` to the receiver's `view` (what [`Decoder`] does; the encoder uses it to
/// keep its copy of the receiver's view).
pub fn apply(
    view: &mut Option<pb::Sample>,
    c: &pb::CompactSample,
    layout: &Layout,
) -> Result<(), CompactError> {
    let mut s = match (c.taken_at_unix_ms, view.take()) {
        (Some(at), _) => pb::Sample { taken_at_unix_ms: at, ..Default::default() },
        (None, Some(mut held)) => {
            let at = held.taken_at_unix_ms.saturating_add(c.taken_at_delta_ms);
            if let Some(u) = held.uptime_s.as_mut() {
                *u = u.saturating_add(seconds_passed(held.taken_at_unix_ms, at));
            }
            held.taken_at_unix_ms = at;
            held
        }
        (None, None) => return Err(CompactError::NoKeyframe),
    };
    let key = c.taken_at_unix_ms.is_some();
    if let Some(b) = c.cpu_per_core.iter().find(|b| **b > 100) {
        return Err(CompactError::BadCore(*b));
    }
    // Per-core CPU: every core's byte, or every core's change (on a delta only).
    let cores = match (c.cpu_per_core.is_empty(), c.cpu_per_core_delta.is_empty()) {
        (true, true) => None,
        (false, true) => Some(c.cpu_per_core.clone()),
        (true, false) if !key => {
            let held: Vec<u8> = s.cpu_per_core_percent.iter().map(|p| core_byte(*p)).collect();
            Some(cores::unpack(&c.cpu_per_core_delta, &held)?)
        }
        _ => return Err(CompactError::BadCoreDelta("it comes on a keyframe or with cpu_per_core")),
    };
    if let Some(extras) = &c.extras {
        s = s.known_onto(extras.clone());
    }
    if key {
        s.ram_total_bytes = layout.ram_total;
    }
    macro_rules! set {
        ($($f:ident),*) => { $( if c.$f.is_some() { s.$f = c.$f; } )* };
    }
    set!(capability_version, cpu_window_ms, cpu_percent, swap_total_bytes, swap_used_bytes, uptime_s);
    if let Some(v) = c.cpu_percent_whole {
        s.cpu_percent = Some(v as f32);
    }
    if let Some(v) = c.ram_total_bytes {
        s.ram_total_bytes = v;
    }
    if let Some(v) = c.ram_used_bytes {
        s.ram_used_bytes = v;
    }
    if let Some(v) = c.ram_available_bytes {
        s.ram_available_bytes = v;
    }
    if let Some(cores) = cores {
        s.cpu_per_core_percent = cores.into_iter().map(f32::from).collect();
    }
    if let Some(l) = c.load_average {
        let f = |v: u32| f64::from(v) / 100.0;
        s.load_average = Some(pb::LoadAverage { one: f(l.one), five: f(l.five), fifteen: f(l.fifteen) });
    }
    for number in &c.cleared {
        match number {
            2 => s.cpu_window_ms = None,
            3 => s.cpu_percent = None,
            4 => s.cpu_per_core_percent.clear(),
            5 => s.load_average = None,
            9 => s.swap_total_bytes = None,
            10 => s.swap_used_bytes = None,
            11 => s.uptime_s = None,
            13 => s.capability_version = None,
            _ => {}
        }
    }
    for g in &c.gpus {
        let p = g.position as usize;
        let (Some(id), Some(&total)) = (layout.ids.get(p), layout.vram_total.get(p)) else {
            return Err(CompactError::BadPosition { position: g.position, gpus: layout.ids.len() });
        };
        // The GPU usually sits at its position already (a keyframe sorts the list by
        // it): one comparison of ids, not one per GPU before it.
        let at = s.gpus.get(p).is_some_and(|o| &o.id == id).then_some(p);
        let slot = match at.or_else(|| s.gpus.iter().position(|o| &o.id == id)) {
            Some(i) => i,
            None => {
                s.gpus.push(pb::GpuSample { id: id.clone(), index: layout.index[p], ..Default::default() });
                s.gpus.len() - 1
            }
        };
        apply_gpu(&mut s.gpus[slot], g, total)?;
    }
    if key {
        s.gpus.sort_by_key(|g| layout.ids.binary_search(&g.id).unwrap_or(usize::MAX));
    }
    *view = Some(s);
    Ok(())
}

fn apply_gpu(s: &mut pb::GpuSample, c: &pb::CompactGpu, total: u64) -> Result<(), CompactError> {
    if let Some(extras) = &c.extras {
        *s = s.known_onto(extras.clone());
    }
    macro_rules! set {
        ($($f:ident),*) => { $( if c.$f.is_some() { s.$f = c.$f; } )* };
    }
    set!(
        vram_used_bytes,
        gpu_util_percent,
        mem_util_percent,
        temperature_c,
        power_draw_mw,
        sm_clock_mhz,
        mem_clock_mhz,
        ecc_corrected_volatile,
        ecc_uncorrected_volatile,
        xid_events,
        last_xid
    );
    if let Some(v) = c.gpu_util_whole {
        s.gpu_util_percent = Some(v as f32);
    }
    if let Some(v) = c.mem_util_whole {
        s.mem_util_percent = Some(v as f32);
    }
    if let Some(v) = c.temperature_whole {
        s.temperature_c = Some(v as f32);
    }
    if let Some(delta) = c.power_delta_w {
        let bad = |why| CompactError::BadPowerDelta { delta, why };
        let held = match (c.power_draw_mw, s.power_draw_mw) {
            (Some(_), _) => return Err(bad("it comes with power_draw_mw")),
            (None, None) => return Err(bad("no power draw is held")),
            (None, Some(held)) => held,
        };
        let mw = (watts(held) + i64::from(delta)) * 1000;
        s.power_draw_mw = Some(u32::try_from(mw).map_err(|_| bad("it leaves the range of a power draw"))?);
    }
    match (c.vram_free_bytes, c.vram_used_bytes) {
        (Some(f), _) => s.vram_free_bytes = Some(f),
        (None, Some(u)) => s.vram_free_bytes = Some(total.saturating_sub(u)),
        (None, None) => {}
    }
    for number in &c.cleared {
        match number {
            3 => s.vram_used_bytes = None,
            4 => s.vram_free_bytes = None,
            5 => s.gpu_util_percent = None,
            6 => s.mem_util_percent = None,
            7 => s.temperature_c = None,
            8 => s.power_draw_mw = None,
            9 => s.sm_clock_mhz = None,
            10 => s.mem_clock_mhz = None,
            11 => s.ecc_corrected_volatile = None,
            12 => s.ecc_uncorrected_volatile = None,
            13 => s.xid_events = None,
            14 => s.last_xid = None,
            _ => {}
        }
    }
    Ok(())
}

/// The receiver's side: turns compact samples back into full samples.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The view so far.
    view: Option<pb::Sample>,
}

thread_local! {
    /// A view no decoder holds any more, kept for its allocations: a decoder applies the
    /// next sample to a copy of its view made in it, so that a bad frame leaves the view
    /// as it was without new allocations per sample, and the view it replaces becomes
    /// the spare. One per thread, not one per decoder: a queen holds thousands of
    /// decoders and runs a few at once.
    static SPARE: RefCell<Option<pb::Sample>> = const { RefCell::new(None) };
}

/// Gives `view` back as the spare (a `None` keeps the spare there is).
fn give_back(view: Option<pb::Sample>) {
    if view.is_some() {
        SPARE.with(|s| *s.borrow_mut() = view);
    }
}

impl Decoder {
    /// A decoder that holds nothing yet (it needs a keyframe first).
    pub fn new() -> Self {
        Self::default()
    }

    /// The held view copied into the spare one (its allocations reused).
    fn next_view(&self) -> Option<pb::Sample> {
        let view = self.view.as_ref()?;
        let mut next = SPARE.with(|s| s.borrow_mut().take()).unwrap_or_default();
        copy_sample(view, &mut next);
        Some(next)
    }

    /// Makes `next` the view; the one it replaces becomes the spare.
    fn keep(&mut self, next: Option<pb::Sample>) {
        give_back(std::mem::replace(&mut self.view, next));
    }

    /// The full sample `c` makes of the held view, against `layout` (the capabilities
    /// the stream delivered). A bad compact sample leaves the view as it was.
    pub fn decode(&mut self, c: &pb::CompactSample, layout: &Layout) -> Result<pb::Sample, CompactError> {
        let mut view = self.next_view();
        if let Err(e) = apply(&mut view, c, layout) {
            give_back(view);
            return Err(e);
        }
        self.keep(view);
        Ok(self.view.clone().unwrap_or_default())
    }

    /// The domain sample `c` makes of the held view, against `layout`: the receiver's
    /// edge turns a compact frame straight into a [`Sample`]. A bad compact sample, or
    /// one whose full sample does not validate, leaves the view as it was.
    pub fn decode_sample(&mut self, c: &pb::CompactSample, layout: &Layout) -> Result<Sample, CompactError> {
        let mut view = self.next_view();
        if let Err(e) = apply(&mut view, c, layout) {
            give_back(view);
            return Err(e);
        }
        let sample = Sample::try_from(view.as_ref().unwrap_or(&pb::Sample::default()));
        match sample {
            Ok(sample) => {
                self.keep(view);
                Ok(sample)
            }
            Err(e) => {
                give_back(view);
                Err(e.into())
            }
        }
    }

    /// Forgets the view (a new stream, or a snapshot): the next sample must be a keyframe.
    pub fn reset(&mut self) {
        self.keep(None);
    }
}

/// Makes `into` a copy of `from`, reusing `into`'s allocations where it can (a GPU's
/// id, the per-core list, the GPU list itself). Every field is named, so a field added
/// to the message cannot be left out of the copy.
fn copy_sample(from: &pb::Sample, into: &mut pb::Sample) {
    let pb::Sample {
        taken_at_unix_ms,
        cpu_window_ms,
        cpu_percent,
        cpu_per_core_percent,
        load_average,
        ram_total_bytes,
        ram_used_bytes,
        ram_available_bytes,
        swap_total_bytes,
        swap_used_bytes,
        uptime_s,
        gpus,
        capability_version,
        downloads,
        models_disk,
        lost_gpus,
        preloads,
        read_bandwidth,
        cuts,
    } = from;
    into.taken_at_unix_ms = *taken_at_unix_ms;
    into.cpu_window_ms = *cpu_window_ms;
    into.cpu_percent = *cpu_percent;
    into.cpu_per_core_percent.clone_from(cpu_per_core_percent);
    into.load_average.clone_from(load_average);
    into.ram_total_bytes = *ram_total_bytes;
    into.ram_used_bytes = *ram_used_bytes;
    into.ram_available_bytes = *ram_available_bytes;
    into.swap_total_bytes = *swap_total_bytes;
    into.swap_used_bytes = *swap_used_bytes;
    into.uptime_s = *uptime_s;
    into.gpus.truncate(gpus.len());
    for (into, from) in into.gpus.iter_mut().zip(gpus) {
        copy_gpu(from, into);
    }
    let have = into.gpus.len();
    into.gpus.extend_from_slice(&gpus[have..]);
    into.capability_version = *capability_version;
    into.downloads.clone_from(downloads);
    into.models_disk.clone_from(models_disk);
    into.lost_gpus.clone_from(lost_gpus);
    into.preloads.clone_from(preloads);
    into.read_bandwidth.clone_from(read_bandwidth);
    into.cuts.clone_from(cuts);
}

/// [`copy_sample`] for one GPU.
fn copy_gpu(from: &pb::GpuSample, into: &mut pb::GpuSample) {
    let pb::GpuSample {
        id,
        index,
        vram_used_bytes,
        vram_free_bytes,
        gpu_util_percent,
        mem_util_percent,
        temperature_c,
        power_draw_mw,
        sm_clock_mhz,
        mem_clock_mhz,
        ecc_corrected_volatile,
        ecc_uncorrected_volatile,
        xid_events,
        last_xid,
        vram_reserved_bytes,
        processes,
        unattributed_vram_bytes,
    } = from;
    into.id.clone_from(id);
    into.index = *index;
    into.vram_used_bytes = *vram_used_bytes;
    into.vram_free_bytes = *vram_free_bytes;
    into.gpu_util_percent = *gpu_util_percent;
    into.mem_util_percent = *mem_util_percent;
    into.temperature_c = *temperature_c;
    into.power_draw_mw = *power_draw_mw;
    into.sm_clock_mhz = *sm_clock_mhz;
    into.mem_clock_mhz = *mem_clock_mhz;
    into.ecc_corrected_volatile = *ecc_corrected_volatile;
    into.ecc_uncorrected_volatile = *ecc_uncorrected_volatile;
    into.xid_events = *xid_events;
    into.last_xid = *last_xid;
    into.vram_reserved_bytes = *vram_reserved_bytes;
    into.processes.clone_from(processes);
    into.unattributed_vram_bytes = *unattributed_vram_bytes;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_into_a_spare_of_any_shape_equals_the_original() {
        let gpu = |id: &str, used| pb::GpuSample {
            id: id.into(),
            vram_used_bytes: Some(used),
            processes: Some(pb::GpuProcesses::default()),
            ..Default::default()
        };
        let from = pb::Sample {
            taken_at_unix_ms: 7,
            cpu_per_core_percent: vec![1.0, 2.0],
            gpus: vec![gpu("a", 1), gpu("b", 2)],
            cuts: vec!["x".into()],
            uptime_s: Some(3),
            ..Default::default()
        };
        let spares = [
            pb::Sample::default(),
            pb::Sample { gpus: vec![gpu("zzzz", 9)], ..Default::default() },
            pb::Sample {
                gpus: vec![gpu("c", 3), gpu("d", 4), gpu("e", 5)],
                cpu_per_core_percent: vec![0.0; 8],
                cuts: vec!["y".into(), "z".into()],
                swap_total_bytes: Some(1),
                ..Default::default()
            },
        ];
        for mut into in spares {
            copy_sample(&from, &mut into);
            assert_eq!(into, from);
        }
    }
}
