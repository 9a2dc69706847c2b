//! The fleet as a placement policy sees it: thin handles over the shared `Arc`
//! snapshots (no deep copy per call), the free memory after reservations, and the
//! eligibility rules shared by `fleet.candidates(request)` and rejection reasons.

use std::sync::{Arc, Mutex};

use rbee_shared::bytesize::format_bytes;

use super::book::Book;
use super::request::{DeviceKind, PlaceRequest};
use crate::fleet::{ConnState, HiveSnapshot};
use crate::health::Health;

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
    pub book: Arc<Mutex<Book>>,
}

/// A hive, for policies.
#[derive(Clone)]
pub struct HiveRef {
    /// The snapshot.
    pub hive: Arc<HiveSnapshot>,
    /// The book.
    pub book: Arc<Mutex<Book>>,
}

/// A device (a GPU, or a hive's CPU), for policies.
#[derive(Clone, Debug)]
pub struct DeviceRef {
    /// Its hive.
    pub hive: Arc<HiveSnapshot>,
    /// GPU id or [`CPU_DEVICE`].
    pub id: String,
    /// Total memory (VRAM, or RAM for the CPU).
    pub total: u64,
    /// Observed used memory.
    pub used: u64,
    /// Free for placement after reservations, when the view was made.
    pub free: u64,
    /// The book, so that `device.hive` sees the same reservations.
    pub book: Arc<Mutex<Book>>,
}

pub fn lock(book: &Mutex<Book>) -> std::sync::MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(|p| p.into_inner())
}

impl DeviceRef {
    /// True for a hive's CPU.
    pub fn is_cpu(&self) -> bool {
        self.id == CPU_DEVICE
    }

    /// The GPU's live readings.
    pub fn live(&self) -> Option<&rbee_shared::GpuSample> {
        self.hive.latest.as_ref()?.gpus.iter().find(|g| g.id == self.id)
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
        let mean =
            self.hive.stats.gpus.iter().find(|g| g.device_id == self.id).and_then(|g| g.util_mean_percent);
        mean.or_else(|| self.live()?.gpu_util_percent)
    }

    /// The device's own health.
    pub fn health(&self) -> Health {
        if self.is_cpu() {
            return self.hive.health.health;
        }
        self.hive.health.devices.iter().find(|d| d.device_id == self.id).map_or(Health::Healthy, |d| d.health)
    }

    /// `hive/device`, for reasons.
    pub fn label(&self) -> String {
        let hive = if self.hive.hive_id().is_empty() { &self.hive.address } else { self.hive.hive_id() };
        format!("{hive}/{}", self.id)
    }
}

/// The book, locked, and the shared handle to it.
pub struct Books<'a> {
    /// Locked for reading free memory.
    pub locked: &'a Book,
    /// Shared with the handles made.
    pub shared: &'a Arc<Mutex<Book>>,
}

/// Builds a GPU's handle: `None` when the hive has no VRAM reading for it.
pub fn gpu_ref(hive: &Arc<HiveSnapshot>, id: &str, books: &Books<'_>) -> Option<DeviceRef> {
    let total = hive.caps.as_ref()?.caps.gpus.get(id)?.vram_total_bytes;
    let used = hive.latest.as_ref()?.gpus.iter().find(|g| g.id == id)?.vram_used_bytes?;
    let free = books.locked.free(&hive.address, id, total, used);
    Some(DeviceRef { hive: hive.clone(), id: id.to_owned(), total, used, free, book: books.shared.clone() })
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
    })
}

/// The bytes a request claims on a device.
pub fn claim_bytes(req: &PlaceRequest, device: &DeviceRef) -> u64 {
    if device.is_cpu() { req.ram_bytes.unwrap_or(0) } else { req.vram_bytes }
}

fn hive_name(h: &HiveSnapshot) -> &str {
    if h.hive_id().is_empty() { &h.address } else { h.hive_id() }
}

/// Why a hive cannot take any placement, or `None` when it can be considered.
fn hive_excluded(h: &HiveSnapshot, req: &PlaceRequest) -> Option<String> {
    let name = hive_name(h);
    if h.state != ConnState::Online {
        return Some(format!("{name}: {}", h.state.as_str()));
    }
    if h.health.health != Health::Healthy {
        return Some(format!("{name}: {}: {}", h.health.health.as_str(), h.health.reasons.join("; ")));
    }
    let labels = h.caps.as_ref().map(|c| &c.caps.labels);
    for (k, v) in &req.labels {
        match labels.and_then(|l| l.get(k)) {
            Some(have) if have == v => {}
            Some(have) => return Some(format!("{name}: label {k}={have}, wanted {k}={v}")),
            None => return Some(format!("{name}: no label {k}, wanted {k}={v}")),
        }
    }
    let sample = match h.latest.as_ref() {
        Some(s) => s,
        None => return Some(format!("{name}: no sample yet")),
    };
    if let Some(ram) = req.ram_bytes
        && sample.ram_available_bytes < ram
    {
        return Some(format!(
            "{name}: RAM {} available < {}",
            format_bytes(sample.ram_available_bytes),
            format_bytes(ram)
        ));
    }
    None
}

/// Runs the eligibility rules over the fleet: the devices that can take the request now
/// (healthy online hives with matching labels, healthy devices with enough free memory),
/// and, when `explain`, why every other hive or device cannot.
pub fn assess(view: &FleetView, req: &PlaceRequest, explain: bool) -> (Vec<DeviceRef>, Vec<String>) {
    let locked = lock(&view.book);
    let books = Books { locked: &locked, shared: &view.book };
    let mut fit = Vec::new();
    let mut reasons = Vec::new();
    let mut note = |r: String| {
        if explain && reasons.len() < MAX_REASONS {
            reasons.push(r);
        }
    };
    for h in view.hives.iter() {
        if let Some(why) = hive_excluded(h, req) {
            note(why);
            continue;
        }
        let mut devices = Vec::new();
        if matches!(req.kind, DeviceKind::Cuda | DeviceKind::Any)
            && req.vram_bytes > 0
            && let Some(caps) = h.caps.as_ref()
        {
            for id in caps.caps.gpus.keys() {
                match gpu_ref(h, id, &books) {
                    Some(d) => devices.push(d),
                    None => note(format!("{}/{id}: no VRAM reading", hive_name(h))),
                }
            }
        }
        if (req.kind == DeviceKind::Cpu || (req.kind == DeviceKind::Any && req.ram_bytes.is_some()))
            && let Some(d) = cpu_ref(h, &books)
        {
            devices.push(d);
        }
        if devices.is_empty() {
            note(format!("{}: no {} device", hive_name(h), req.kind.as_str()));
        }
        for d in devices {
            let need = claim_bytes(req, &d);
            if d.health() != Health::Healthy {
                note(format!("{}: {}", d.label(), d.health().as_str()));
            } else if d.free < need {
                note(format!("{}: {} free < {}", d.label(), format_bytes(d.free), format_bytes(need)));
            } else {
                fit.push(d);
            }
        }
    }
    if view.hives.is_empty() {
        note("the fleet is empty".to_owned());
    }
    (fit, reasons)
}

fn load_key(d: &DeviceRef) -> (f32, f32, f32) {
    let util = d.util().unwrap_or(0.0);
    let used_fraction = if d.total == 0 { 1.0 } else { 1.0 - d.free as f32 / d.total as f32 };
    let cpu =
        d.hive.stats.cpu_mean_percent.or(d.hive.latest.as_ref().and_then(|s| s.cpu_percent)).unwrap_or(0.0);
    (util, used_fraction, cpu)
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
