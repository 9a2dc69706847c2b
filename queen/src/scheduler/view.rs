//! The fleet as a placement policy sees it: thin handles over the shared `Arc`
//! snapshots (no deep copy per call), the free memory after reservations, and the
//! eligibility rules shared by `fleet.candidates(request)` and rejection reasons.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rbee_shared::bytesize::format_bytes;
use rbee_shared::lock::RwLockExt;

use super::book::Book;
use super::index::{Bound, SharedIndex};
use super::request::{DeviceKind, PlaceRequest};
use crate::fleet::Health;
use crate::fleet::{ConnState, GpuLoad, GpuParts, HiveSnapshot, PlacementSummary};

/// The device id of a hive's CPU.
pub const CPU_DEVICE: &str = "cpu";

/// Most per-hive reasons reported with a rejection.
const MAX_REASONS: usize = 64;

/// The fleet at one moment, plus the book for free-memory lookups.
#[derive(Clone)]
pub struct FleetView {
    /// Hive snapshots.
    pub hives: Arc<Vec<Arc<HiveSnapshot>>>,
    /// The reservation book.
    pub book: Arc<RwLock<Book>>,
    /// The placement index over `hives` (see [`super::index`]); `None` walks every hive.
    pub index: Option<Arc<SharedIndex>>,
}

impl FleetView {
    /// A view of `hives` with `book`, without an index (every native walks every hive).
    pub fn new(hives: Arc<Vec<Arc<HiveSnapshot>>>, book: Arc<RwLock<Book>>) -> Self {
        Self { hives, book, index: None }
    }

    /// Elements a scan of the whole fleet walks, for a policy's op budget: each hive and
    /// each GPU (kept by the index, when the view has one, instead of counted per call).
    pub fn elements(&self) -> usize {
        match &self.index {
            Some(index) => index.elements(&self.hives),
            None => self.hives.iter().map(|h| 1 + h.caps.as_ref().map_or(0, |c| c.caps.gpus.len())).sum(),
        }
    }
}

/// A hive, for policies.
#[derive(Clone)]
pub struct HiveRef {
    /// The snapshot.
    pub hive: Arc<HiveSnapshot>,
    /// The book.
    pub book: Arc<RwLock<Book>>,
}

/// A device (a GPU, or a hive's CPU), for policies.
#[derive(Clone, Debug)]
pub struct DeviceRef {
    /// Its hive.
    pub hive: Arc<HiveSnapshot>,
    /// GPU id or [`CPU_DEVICE`].
    pub id: String,
    /// Total memory jobs can use (VRAM less what the driver reserves, or RAM for the CPU).
    pub total: u64,
    /// Observed used memory.
    pub used: u64,
    /// Free for placement after reservations, when the view was made.
    pub free: u64,
    /// The book, so that `device.hive` sees the same reservations.
    pub book: Arc<RwLock<Book>>,
    /// Where the GPU's parts are in `hive` (the placement summary's join; default for
    /// the CPU).
    pub parts: GpuParts,
}

/// Reads the book (placement scans run side by side).
pub fn read(book: &RwLock<Book>) -> RwLockReadGuard<'_, Book> {
    book.read_unpoisoned()
}

/// Writes the book (reserve, release, settle: short, and never across an `.await`).
pub fn write(book: &RwLock<Book>) -> RwLockWriteGuard<'_, Book> {
    book.write_unpoisoned()
}

impl DeviceRef {
    /// True for a hive's CPU.
    pub fn is_cpu(&self) -> bool {
        self.id == CPU_DEVICE
    }

    /// The GPU's live readings.
    pub fn live(&self) -> Option<&rbee_shared::GpuSample> {
        self.parts.live(self.hive.view_parts())
    }

    /// Who holds the GPU's memory, where the hive lists it (`None` for the CPU).
    pub fn processes(&self) -> Option<&rbee_shared::GpuProcesses> {
        self.live()?.processes.as_ref()
    }

    /// The GPU's description.
    pub fn gpu(&self) -> Option<&rbee_shared::GpuDevice> {
        self.hive.caps.as_ref()?.caps.gpus.get(&self.id)
    }

    /// Utilisation: the window mean, else the latest reading.
    pub fn util(&self) -> Option<f32> {
        if self.is_cpu() {
            return self.hive.stats.cpu_mean_percent.or(self.hive.latest.as_ref()?.cpu_percent);
        }
        self.parts.util(self.hive.view_parts())
    }

    /// The device's own health.
    pub fn health(&self) -> Health {
        if self.is_cpu() {
            let busy = if self.hive.health.cpu_busy.is_some() { Health::Degraded } else { Health::Healthy };
            return self.hive.health.placement.max(busy);
        }
        self.parts.health(self.hive.view_parts())
    }

    /// `hive/device`, for reasons.
    pub fn label(&self) -> String {
        format!("{}/{}", hive_name(&self.hive), self.id)
    }
}

/// The book, locked, and the shared handle to it.
pub struct Books<'a> {
    /// Locked for reading free memory.
    pub locked: &'a Book,
    /// Shared with the handles made.
    pub shared: &'a Arc<RwLock<Book>>,
}

pub use crate::fleet::usable_vram;

/// Builds a GPU's handle from the hive's placement summary (the one join of its
/// parts): `None` when the hive has no VRAM reading for it.
pub fn gpu_ref(hive: &Arc<HiveSnapshot>, id: &str, books: &Books<'_>) -> Option<DeviceRef> {
    let p = hive.placement();
    let (_, row) = p.gpu(id)?;
    gpu_handle(hive, id, row, books)
}

fn gpu_handle(hive: &Arc<HiveSnapshot>, id: &str, row: &GpuLoad, books: &Books<'_>) -> Option<DeviceRef> {
    let (total, used) = row.vram()?;
    let free = books.locked.free(&hive.address, id, total, used);
    Some(DeviceRef {
        hive: hive.clone(),
        id: id.to_owned(),
        total,
        used,
        free,
        book: books.shared.clone(),
        parts: row.parts,
    })
}

/// The handles of a hive's GPUs that have a VRAM reading, in device-index order, from
/// its placement summary.
pub fn gpu_refs(hive: &Arc<HiveSnapshot>, books: &Books<'_>) -> Vec<DeviceRef> {
    let Some(caps) = hive.caps.as_ref() else { return Vec::new() };
    let p = hive.placement();
    let mut gpus: Vec<_> = caps.caps.gpus.values().zip(p.gpus.iter()).collect();
    gpus.sort_by_key(|(g, _)| g.index);
    gpus.into_iter().filter_map(|(g, row)| gpu_handle(hive, &g.id, row, books)).collect()
}

/// Builds a hive's CPU handle: `None` without a sample.
pub fn cpu_ref(hive: &Arc<HiveSnapshot>, books: &Books<'_>) -> Option<DeviceRef> {
    let s = hive.latest.as_ref()?;
    let (total, used) = (s.ram_total_bytes, s.ram_used_bytes);
    let free = books.locked.free(&hive.address, CPU_DEVICE, total, used);
    Some(DeviceRef {
        hive: hive.clone(),
        id: CPU_DEVICE.to_owned(),
        total,
        used,
        free,
        book: books.shared.clone(),
        parts: GpuParts::default(),
    })
}

/// The bytes a request claims on a device.
pub fn claim_bytes(req: &PlaceRequest, device: &DeviceRef) -> u64 {
    if device.is_cpu() { req.ram_bytes.unwrap_or(0) } else { req.vram_bytes }
}

fn hive_name(h: &HiveSnapshot) -> &str {
    rbee_shared::identity::display_name(h.hive_id(), &h.address)
}

/// Why a hive or device cannot take a request: what a rejection's summary counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cause {
    /// No hive at all.
    EmptyFleet,
    /// The hive is not online.
    NotOnline(ConnState),
    /// The hive's health keeps it out of placement.
    Health(Health),
    /// The request wants the hive's CPU, and its CPU load is at or above this percent.
    CpuBusy(f32),
    /// The hive's labels do not match.
    Labels,
    /// The hive has no sample yet.
    NoSample,
    /// The hive has too little RAM available.
    Ram,
    /// A GPU has no VRAM reading.
    NoReading,
    /// A GPU's own health keeps it out.
    DeviceHealth(Health),
    /// A GPU has too little free VRAM.
    Vram,
    /// The hive's CPU has too little free RAM after reservations.
    CpuRam,
    /// The hive has no device of the kind asked for.
    NoDevice,
}

impl Cause {
    /// `n` of this cause, as a summary says it ("3 degraded (cpu >= 95%)").
    fn counted(self, n: usize) -> String {
        match self {
            Self::EmptyFleet => "the fleet is empty".to_owned(),
            Self::NotOnline(state) => format!("{n} {}", state.as_str()),
            Self::Health(level) => format!("{n} {}", level.as_str()),
            Self::CpuBusy(limit) => format!("{n} degraded (cpu >= {limit:.0}%)"),
            Self::Labels => format!("{n} without the labels asked for"),
            Self::NoSample => format!("{n} without a sample yet"),
            Self::Ram => format!("{n} too little available RAM"),
            Self::NoReading => format!("{n} without a VRAM reading"),
            Self::DeviceHealth(level) => format!("{n} GPU {}", level.as_str()),
            Self::Vram => format!("{n} too little free VRAM"),
            Self::CpuRam => format!("{n} too little free RAM"),
            Self::NoDevice => format!("{n} without a device of the kind asked for"),
        }
    }
}

/// Why a hive cannot take any placement, or `None` when it can be considered (`p` is
/// its placement summary). A hive whose CPU load is over the threshold is out only
/// for work on its CPU (`device_kind` CPU); for GPU work its load ranks it.
fn hive_excluded(h: &HiveSnapshot, p: &PlacementSummary, req: &PlaceRequest) -> Option<(Cause, String)> {
    // Named only in a reason: the id is behind one more pointer.
    let name = || hive_name(h);
    if h.state != ConnState::Online {
        return Some((Cause::NotOnline(h.state), format!("{}: {}", name(), h.state.as_str())));
    }
    if p.health != Health::Healthy {
        let why = format!("{}: {}: {}", name(), p.health.as_str(), h.health.reasons.join("; "));
        return Some((Cause::Health(p.health), why));
    }
    if req.kind == DeviceKind::Cpu
        && let Some(busy) = &h.health.cpu_busy
    {
        let why = format!("{}: degraded: {} (the request wants the CPU)", name(), busy.reason);
        return Some((Cause::CpuBusy(busy.limit_percent), why));
    }
    if !req.labels.is_empty() {
        let labels = h.caps.as_ref().map(|c| &c.caps.labels);
        for (k, v) in &req.labels {
            match labels.and_then(|l| l.get(k)) {
                Some(have) if have == v => {}
                Some(have) => {
                    return Some((Cause::Labels, format!("{}: label {k}={have}, wanted {k}={v}", name())));
                }
                None => return Some((Cause::Labels, format!("{}: no label {k}, wanted {k}={v}", name()))),
            }
        }
    }
    let Some(ram_load) = p.ram else {
        return Some((Cause::NoSample, format!("{}: no sample yet", name())));
    };
    if let Some(ram) = req.ram_bytes
        && ram_load.available < ram
    {
        let why =
            format!("{}: RAM {} available < {}", name(), format_bytes(ram_load.available), format_bytes(ram));
        return Some((Cause::Ram, why));
    }
    None
}

/// Which device of a hive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Device {
    /// The GPU at this position of the capabilities' GPU map (and of the summary).
    Gpu(usize),
    /// The hive's CPU.
    Cpu,
}

/// The id of the GPU at position `i` of the hive's capabilities.
fn gpu_id(h: &HiveSnapshot, i: usize) -> &str {
    h.caps.as_ref().and_then(|c| c.caps.gpus.values().nth(i)).map_or("", |g| g.id.as_str())
}

/// A device that fits, before any handle is made (scanning 8,000 devices should not
/// allocate 8,000 handles, nor read 8,000 id strings).
struct Fit<'a> {
    /// Its hive.
    hive: &'a Arc<HiveSnapshot>,
    /// Which device.
    device: Device,
    /// Total memory.
    total: u64,
    /// Observed used memory.
    used: u64,
    /// Free after reservations.
    free: u64,
    /// Utilisation (window mean, else latest), for ranking.
    util: f32,
    /// The hive's CPU utilisation, for ranking.
    hive_cpu: f32,
    /// Whether the hive's catalog lists any model.
    has_models: bool,
    /// Where a GPU's parts are in its hive (default for the CPU).
    parts: GpuParts,
}

impl<'a> Fit<'a> {
    /// GPU id or [`CPU_DEVICE`].
    fn id(&self) -> &'a str {
        match self.device {
            Device::Gpu(i) => gpu_id(self.hive, i),
            Device::Cpu => CPU_DEVICE,
        }
    }

    fn handle(&self, shared: &Arc<RwLock<Book>>) -> DeviceRef {
        DeviceRef {
            hive: self.hive.clone(),
            id: self.id().to_owned(),
            total: self.total,
            used: self.used,
            free: self.free,
            book: shared.clone(),
            parts: self.parts,
        }
    }
}

/// Which hives a scan walks.
#[derive(Debug, Clone, Copy)]
enum Visit<'v> {
    /// Every hive of the view.
    All,
    /// These positions of the view's hives, in this order (from the index).
    Only(&'v [u32]),
}

/// Which hives a native that only needs the devices that fit walks, from the view's
/// index: `None` walks every hive (no index, or a request that wants a hive's CPU,
/// which the index does not key). With `bounded`, the answer may be a bounded subset
/// (`true`: the most free first), see [`super::index`].
fn fitting_hives(view: &FleetView, req: &PlaceRequest, k: usize, bound: Bound) -> Option<(Vec<u32>, bool)> {
    let index = view.index.as_ref()?;
    let gpus_wanted = matches!(req.kind, DeviceKind::Cuda | DeviceKind::Any) && req.vram_bytes > 0;
    let cpu_wanted = matches!(req.kind, DeviceKind::Cpu | DeviceKind::Any) && req.ram_bytes.is_some();
    if !gpus_wanted || cpu_wanted {
        return None;
    }
    Some(index.candidates(&view.hives, &req.labels, k, req.vram_bytes, bound))
}

/// Walks the hives that have `k` GPUs that can take the request (see
/// [`fitting_hives`]): every one, or with `bound` a bounded subset on a large fleet.
/// Returns whether it was bounded.
fn scan_fitting<'a>(
    view: &'a FleetView,
    req: &PlaceRequest,
    book: &Book,
    k: usize,
    bound: Bound,
    fit: impl FnMut(Fit<'a>),
) -> bool {
    match fitting_hives(view, req, k, bound) {
        None => {
            scan(view, Visit::All, req, book, fit, |_, _| {});
            false
        }
        Some((at, bounded)) => {
            scan(view, Visit::Only(&at), req, book, fit, |_, _| {});
            bounded
        }
    }
}

/// Walks the fleet with the eligibility rules: `fit` sees every device that can take
/// the request now (healthy online hives with matching labels, healthy devices with
/// enough free memory); `note` hears why every other hive or device cannot.
///
/// It reads each hive's [`PlacementSummary`] (contiguous numbers, made when the hive
/// published) rather than matching GPU ids across the capabilities, sample, health and
/// statistics; ids are read only for reasons, and for hives with reservations.
fn scan<'a>(
    view: &'a FleetView,
    visit: Visit<'_>,
    req: &PlaceRequest,
    book: &Book,
    mut fit: impl FnMut(Fit<'a>),
    mut note: impl FnMut(Cause, &dyn Fn() -> String),
) {
    if view.hives.is_empty() {
        note(Cause::EmptyFleet, &|| "the fleet is empty".to_owned());
    }
    let gpus_wanted = matches!(req.kind, DeviceKind::Cuda | DeviceKind::Any) && req.vram_bytes > 0;
    let cpu_wanted = matches!(req.kind, DeviceKind::Cpu | DeviceKind::Any);
    let hives: Box<dyn Iterator<Item = &'a Arc<HiveSnapshot>>> = match visit {
        Visit::All => Box::new(view.hives.iter()),
        Visit::Only(at) => Box::new(at.iter().filter_map(|&i| view.hives.get(i as usize))),
    };
    for h in hives {
        if h.state != ConnState::Online {
            note(Cause::NotOnline(h.state), &|| format!("{}: {}", hive_name(h), h.state.as_str()));
            continue;
        }
        let p = h.placement();
        if let Some((cause, why)) = hive_excluded(h, &p, req) {
            note(cause, &|| why.clone());
            continue;
        }
        let Some(ram_load) = p.ram else { continue };
        // The hive's reservations, looked up once, and only when a device could fit.
        let mut reserved = None;
        let mut reserved = || *reserved.get_or_insert_with(|| book.hive(&h.address));
        let mut any = false;
        if gpus_wanted && h.caps.is_some() {
            for (i, gpu) in p.gpus.iter().enumerate() {
                any = true;
                let name = || format!("{}/{}", hive_name(h), gpu_id(h, i));
                let Some((total, used)) = gpu.vram() else {
                    note(Cause::NoReading, &|| format!("{}: no VRAM reading", name()));
                    continue;
                };
                if gpu.health != Health::Healthy {
                    note(Cause::DeviceHealth(gpu.health), &|| format!("{}: {}", name(), gpu.health.as_str()));
                    continue;
                }
                // Reservations only lower what is free: a device without room before
                // them has none after (the reason still says what is free after them).
                let unreserved = total.saturating_sub(used);
                let free = if unreserved < req.vram_bytes {
                    unreserved
                } else {
                    reserved().map_or(unreserved, |r| r.free(gpu_id(h, i), total, used))
                };
                if free < req.vram_bytes {
                    note(Cause::Vram, &|| {
                        let free = book.free(&h.address, gpu_id(h, i), total, used);
                        format!("{}: {} free < {}", name(), format_bytes(free), format_bytes(req.vram_bytes))
                    });
                    continue;
                }
                fit(Fit {
                    hive: h,
                    device: Device::Gpu(i),
                    total,
                    used,
                    free,
                    util: gpu.util,
                    hive_cpu: p.cpu_util,
                    has_models: p.has_models,
                    parts: gpu.parts,
                });
            }
        }
        if let Some(ram) = req.ram_bytes
            && cpu_wanted
        {
            any = true;
            let (total, used) = (ram_load.total, ram_load.used);
            let free = reserved().map_or(total.saturating_sub(used), |r| r.free(CPU_DEVICE, total, used));
            if let Some(busy) = h.health.cpu_busy.as_ref() {
                note(Cause::CpuBusy(busy.limit_percent), &|| {
                    format!("{}/cpu: degraded: {}", hive_name(h), busy.reason)
                });
            } else if free < ram {
                note(Cause::CpuRam, &|| {
                    format!("{}/cpu: {} free < {}", hive_name(h), format_bytes(free), format_bytes(ram))
                });
            } else {
                fit(Fit {
                    hive: h,
                    device: Device::Cpu,
                    total,
                    used,
                    free,
                    util: p.cpu_util,
                    hive_cpu: p.cpu_util,
                    has_models: p.has_models,
                    parts: GpuParts::default(),
                });
            }
        }
        if !any {
            note(Cause::NoDevice, &|| format!("{}: no {} device", hive_name(h), req.kind.as_str()));
        }
    }
}

/// The GPUs that can take a gang member's share now (`req.vram_bytes` each), hive by
/// hive in fleet order, with the eligibility rules of [`assess`]: `fit` hears each one's
/// hive, position in the capabilities' GPU map, usable total, free bytes and
/// utilisation; `note` why every other hive or GPU cannot.
pub fn scan_gpus<'a>(
    view: &'a FleetView,
    req: &PlaceRequest,
    mut fit: impl FnMut(&'a Arc<HiveSnapshot>, usize, u64, u64, f32),
    mut note: impl FnMut(&dyn Fn() -> String),
) {
    let locked = read(&view.book);
    let req = PlaceRequest { kind: DeviceKind::Cuda, ..req.clone() };
    scan(
        view,
        Visit::All,
        &req,
        &locked,
        |f| {
            if let Device::Gpu(i) = f.device {
                fit(f.hive, i, f.total, f.free, f.util);
            }
        },
        |_, why| note(why),
    );
}

/// [`scan_gpus`] over only the hives that have `req.gpus` GPUs with room, from the
/// view's index (without reasons). With `bound` on a large fleet it walks a bounded
/// subset, the most free first, and returns `true`.
pub fn scan_fitting_gpus<'a>(
    view: &'a FleetView,
    req: &PlaceRequest,
    bound: Bound,
    mut fit: impl FnMut(&'a Arc<HiveSnapshot>, usize, u64, u64, f32),
) -> bool {
    let locked = read(&view.book);
    let req = PlaceRequest { kind: DeviceKind::Cuda, ..req.clone() };
    scan_fitting(view, &req, &locked, (req.gpus as usize).max(1), bound, |f| {
        if let Device::Gpu(i) = f.device {
            fit(f.hive, i, f.total, f.free, f.util);
        }
    })
}

/// Every device that can take the request now, and (when `explain`) why the others
/// cannot (at most 64 reasons).
pub fn assess(view: &FleetView, req: &PlaceRequest, explain: bool) -> (Vec<DeviceRef>, Vec<String>) {
    let locked = read(&view.book);
    let mut fits = Vec::new();
    let mut reasons = Vec::new();
    if !explain {
        scan_fitting(view, req, &locked, 1, Bound::Exact, |f| fits.push(f.handle(&view.book)));
        return (fits, reasons);
    }
    scan(
        view,
        Visit::All,
        req,
        &locked,
        |f| fits.push(f.handle(&view.book)),
        |_, why| {
            if explain && reasons.len() < MAX_REASONS {
                reasons.push(why());
            }
        },
    );
    (fits, reasons)
}

/// Why nothing fits the request, counted by cause, e.g. "no hive fits: 3 degraded
/// (cpu >= 95%), 1 lost, 2 too little free VRAM" (causes in the order first met).
pub fn why_no_fit(view: &FleetView, req: &PlaceRequest) -> String {
    let locked = read(&view.book);
    let mut counts: Vec<(Cause, usize)> = Vec::new();
    scan(
        view,
        Visit::All,
        req,
        &locked,
        |_| {},
        |cause, _| match counts.iter_mut().find(|(c, _)| *c == cause) {
            Some((_, n)) => *n += 1,
            None => counts.push((cause, 1)),
        },
    );
    if counts.is_empty() {
        return "every device that fits was passed over by the policy".to_owned();
    }
    let causes: Vec<String> = counts.into_iter().map(|(c, n)| c.counted(n)).collect();
    format!("no hive fits: {}", causes.join(", "))
}

/// How to rank devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Least loaded first.
    LeastLoaded,
    /// Tightest fit first.
    BinPack,
    /// Nearest weights first (`request.model` in RAM, then on disk, then absent), then
    /// least loaded within each tier.
    NearestWeights,
}

fn hive_cpu(h: &HiveSnapshot) -> f32 {
    h.stats.cpu_mean_percent.or(h.latest.as_ref().and_then(|s| s.cpu_percent)).unwrap_or(0.0)
}

/// A device's ranking key and the device.
type Keyed<'a> = ((f32, f32, f32), Fit<'a>);

/// Best first: the key, then the hive address and device id (a total order, so equal
/// loads rank the same way every time).
fn better(a: &Keyed<'_>, b: &Keyed<'_>) -> std::cmp::Ordering {
    a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal).then_with(|| {
        let (a, b) = (&a.1, &b.1);
        let hive = if Arc::ptr_eq(a.hive, b.hive) {
            std::cmp::Ordering::Equal
        } else {
            a.hive.address.cmp(&b.hive.address)
        };
        hive.then_with(|| a.id().cmp(b.id()))
    })
}

/// The `n` best devices that can take the request, best first (every device when `n`
/// is 0), without making a handle for every device of the fleet. Only the best `n` are
/// kept while the fleet is walked: at 10,000 hives of 8 GPUs, a list of every device
/// and its key was megabytes written and sorted per call.
pub fn rank(view: &FleetView, req: &PlaceRequest, order: Order, n: usize) -> Vec<DeviceRef> {
    // On a large fleet, a ranking of the best `n` scores the devices of a bounded set
    // of hives (the most free first; the tightest first for bin-packing), unless that
    // set holds fewer than `n` devices that fit: then it ranks them all.
    let bound = match order {
        _ if n == 0 => Bound::Exact,
        Order::BinPack => Bound::LeastFree,
        Order::LeastLoaded | Order::NearestWeights => Bound::MostFree,
    };
    let locked = read(&view.book);
    let (best, bounded) = rank_in(view, req, order, n, &locked, bound);
    if bounded && best.len() < n {
        return rank_in(view, req, order, n, &locked, Bound::Exact).0;
    }
    best
}

/// [`rank`] over the hives [`scan_fitting`] walks with `bound`; whether it was bounded.
fn rank_in(
    view: &FleetView,
    req: &PlaceRequest,
    order: Order,
    n: usize,
    locked: &Book,
    bound: Bound,
) -> (Vec<DeviceRef>, bool) {
    let mut best: Vec<Keyed<'_>> = Vec::with_capacity(if n > 0 { n + 1 } else { 0 });
    // The tier of the hive whose devices are being walked (it is the hive's, not the
    // device's: computed once per hive, and only for hives with a catalog).
    let mut tier_of: Option<(*const HiveSnapshot, f32)> = None;
    let absent = super::weights::Tier::Absent as u8 as f32;
    let bounded = scan_fitting(view, req, locked, 1, bound, |f| {
        let key = match order {
            Order::LeastLoaded => (f.util, used_fraction(f.total, f.free), f.hive_cpu),
            Order::BinPack => (f.free as f32, 0.0, 0.0),
            Order::NearestWeights => {
                let here = Arc::as_ptr(f.hive);
                let tier = match tier_of {
                    _ if !f.has_models => absent,
                    Some((at, tier)) if at == here => tier,
                    _ => {
                        let tier = super::weights::tier(f.hive, &req.model) as u8 as f32;
                        tier_of = Some((here, tier));
                        tier
                    }
                };
                // Tier first; within it device utilisation, then memory in use
                // (both at most 100, so one key orders tier before load).
                (tier * 1000.0 + f.util, used_fraction(f.total, f.free), f.hive_cpu)
            }
        };
        let item = (key, f);
        if n == 0 {
            best.push(item);
            return;
        }
        if best.len() == n && best.last().is_some_and(|worst| better(&item, worst).is_ge()) {
            return;
        }
        let at = best.partition_point(|x| better(x, &item).is_lt());
        best.insert(at, item);
        best.truncate(n);
    });
    if n == 0 {
        best.sort_by(better);
    }
    (best.iter().map(|(_, f)| f.handle(&view.book)).collect(), bounded)
}

fn used_fraction(total: u64, free: u64) -> f32 {
    if total == 0 { 1.0 } else { 1.0 - free as f32 / total as f32 }
}

fn load_key(d: &DeviceRef) -> (f32, f32, f32) {
    (d.util().unwrap_or(0.0), used_fraction(d.total, d.free), hive_cpu(&d.hive))
}

/// Least loaded first: device utilisation (window mean), then memory in use after
/// reservations, then the hive's CPU.
pub fn sort_least_loaded(devices: &mut [DeviceRef]) {
    let mut keyed: Vec<((f32, f32, f32), usize)> =
        devices.iter().enumerate().map(|(i, d)| (load_key(d), i)).collect();
    keyed.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal).then(a.1.cmp(&b.1)));
    let sorted: Vec<DeviceRef> = keyed.into_iter().map(|(_, i)| devices[i].clone()).collect();
    devices.clone_from_slice(&sorted);
}

/// Tightest fit first: least free memory, so big devices stay free for big models.
pub fn sort_bin_pack(devices: &mut [DeviceRef]) {
    devices.sort_by(|a, b| {
        (a.free, a.hive.address.as_str(), a.id.as_str()).cmp(&(
            b.free,
            b.hive.address.as_str(),
            b.id.as_str(),
        ))
    });
}
