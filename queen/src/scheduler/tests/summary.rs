//! The placement scan reads each hive's placement summary (made when the hive
//! publishes). These tests hold it to the plain rules, written out here the
//! straightforward way (GPU ids matched across the capabilities, the sample, the health
//! report and the statistics), on random fleets with unhealthy devices, missing
//! readings, driver-reserved VRAM, reservations, labels, stale hives, reordered
//! readings and snapshots changed without refreshing their summary.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rbee_shared::bytesize::format_bytes;

use crate::fleet::{ConnState, DeviceHealth, GpuStats, Health, HealthReport, HiveSnapshot, WindowStats};
use crate::scheduler::book::{Book, Claim};
use crate::scheduler::request::{DeviceKind, PlaceRequest};
use crate::scheduler::synthetic::hive;
use crate::scheduler::view::{self, FleetView};

const GIB: u64 = 1 << 30;

/// A device the plain rules let through: address, id, total, used, free, utilisation
/// and the hive's CPU utilisation.
type Fit = (String, String, u64, u64, u64, f32, f32);

fn name(h: &HiveSnapshot) -> &str {
    rbee_shared::identity::display_name(h.hive_id(), &h.address)
}

/// Why the hive as a whole is out, by the plain rules.
fn excluded(h: &HiveSnapshot, req: &PlaceRequest) -> Option<String> {
    let n = name(h);
    if h.state != ConnState::Online {
        return Some(format!("{n}: {}", h.state.as_str()));
    }
    if h.health.placement != Health::Healthy {
        return Some(format!("{n}: {}: {}", h.health.placement.as_str(), h.health.reasons.join("; ")));
    }
    // A busy CPU keeps out work on the CPU only.
    if req.kind == DeviceKind::Cpu
        && let Some(busy) = &h.health.cpu_busy
    {
        return Some(format!("{n}: degraded: {} (the request wants the CPU)", busy.reason));
    }
    let labels = h.caps.as_ref().map(|c| &c.caps.labels);
    for (k, v) in &req.labels {
        match labels.and_then(|l| l.get(k)) {
            Some(have) if have == v => {}
            Some(have) => return Some(format!("{n}: label {k}={have}, wanted {k}={v}")),
            None => return Some(format!("{n}: no label {k}, wanted {k}={v}")),
        }
    }
    let s = h.latest.as_deref()?;
    match req.ram_bytes {
        Some(ram) if s.ram_available_bytes < ram => Some(format!(
            "{n}: RAM {} available < {}",
            format_bytes(s.ram_available_bytes),
            format_bytes(ram)
        )),
        _ => None,
    }
}

/// Every device that can take the request, and why every other cannot.
fn reference(hives: &[Arc<HiveSnapshot>], req: &PlaceRequest, book: &Book) -> (Vec<Fit>, Vec<String>) {
    let (mut fits, mut reasons) = (Vec::new(), Vec::new());
    for h in hives {
        let n = name(h);
        if let Some(why) = excluded(h, req) {
            reasons.push(why);
            continue;
        }
        let Some(s) = h.latest.as_deref() else {
            reasons.push(format!("{n}: no sample yet"));
            continue;
        };
        let cpu = h.stats.cpu_mean_percent.or(s.cpu_percent).unwrap_or(0.0);
        let mut any = false;
        if matches!(req.kind, DeviceKind::Cuda | DeviceKind::Any)
            && req.vram_bytes > 0
            && let Some(caps) = h.caps.as_deref()
        {
            for gpu in caps.caps.gpus.values() {
                any = true;
                let id = &gpu.id;
                let live = s.gpus.iter().find(|g| &g.id == id);
                let Some((live, used)) = live.and_then(|g| Some((g, g.vram_used_bytes?))) else {
                    reasons.push(format!("{n}/{id}: no VRAM reading"));
                    continue;
                };
                let health = h
                    .health
                    .devices
                    .iter()
                    .find(|d| &d.device_id == id)
                    .map_or(Health::Healthy, |d| d.health);
                if health != Health::Healthy {
                    reasons.push(format!("{n}/{id}: {}", health.as_str()));
                    continue;
                }
                let total = gpu.vram_total_bytes.saturating_sub(live.vram_reserved_bytes.unwrap_or(0));
                let free = book.free(&h.address, id, total, used);
                if free < req.vram_bytes {
                    let (free, want) = (format_bytes(free), format_bytes(req.vram_bytes));
                    reasons.push(format!("{n}/{id}: {free} free < {want}"));
                    continue;
                }
                let mean = h.stats.gpus.iter().find(|g| &g.device_id == id).and_then(|g| g.util_mean_percent);
                let util = mean.or(live.gpu_util_percent).unwrap_or(0.0);
                fits.push((h.address.clone(), id.clone(), total, used, free, util, cpu));
            }
        }
        if let Some(ram) = req.ram_bytes
            && matches!(req.kind, DeviceKind::Cpu | DeviceKind::Any)
        {
            any = true;
            let (total, used) = (s.ram_total_bytes, s.ram_used_bytes);
            let free = book.free(&h.address, view::CPU_DEVICE, total, used);
            if let Some(busy) = &h.health.cpu_busy {
                reasons.push(format!("{n}/cpu: degraded: {}", busy.reason));
            } else if free < ram {
                reasons.push(format!("{n}/cpu: {} free < {}", format_bytes(free), format_bytes(ram)));
            } else {
                fits.push((h.address.clone(), view::CPU_DEVICE.into(), total, used, free, cpu, cpu));
            }
        }
        if !any {
            reasons.push(format!("{n}: no {} device", req.kind.as_str()));
        }
    }
    if hives.is_empty() {
        reasons.push("the fleet is empty".into());
    }
    (fits, reasons)
}

/// A synthetic hive, roughened by the bits of `seed`: per GPU a missing reading, an
/// unhealthy or pending device, driver-reserved VRAM, a window mean; per hive a
/// degraded report, no sample, a CPU mean, readings in reverse order. `refresh: false`
/// leaves the summary as it was before the changes.
pub(super) fn rough(i: usize, gpus: usize, used: u64, seed: u64, refresh: bool) -> Arc<HiveSnapshot> {
    let bit = |b: u32| seed >> b & 1 == 1;
    let state = if bit(0) && bit(1) { ConnState::Stale } else { ConnState::Online };
    let zone = if bit(2) { "eu" } else { "us" };
    let base = hive(&format!("h{i:02}"), gpus, 40, used, (seed % 97) as f32, state, &[("zone", zone)]);
    let mut h = HiveSnapshot::clone(&base);
    let mut sample = (**h.latest.as_ref().unwrap()).clone();
    let mut health = HealthReport::clone(&h.health);
    let mut stats = WindowStats::default();
    for (g, live) in sample.gpus.iter_mut().enumerate() {
        let gb = |b: u32| bit(8 + 6 * g as u32 + b);
        if gb(0) && gb(1) {
            live.vram_used_bytes = None;
        }
        if gb(2) {
            live.vram_reserved_bytes = Some((g as u64 + 1) * GIB);
        }
        if gb(3) && gb(4) {
            health.devices[g].health = if gb(5) { Health::Pending } else { Health::Unhealthy };
        }
        if gb(5) {
            let util_mean_percent = gb(4).then_some(g as f32 * 3.0);
            let stat = GpuStats { device_id: live.id.clone(), util_mean_percent, ..stats_row() };
            stats.gpus.push(stat);
        }
    }
    if bit(3) {
        sample.gpus.reverse();
        stats.gpus.reverse();
    }
    if bit(4) && bit(5) && state == ConnState::Online {
        health.health = Health::Degraded;
        health.placement = Health::Degraded;
        health.reasons.push("ram 92% >= 90%".into());
    }
    // Degraded by its CPU alone (as link::health judges it): placeable for GPU work.
    if bit(40) && state == ConnState::Online {
        let reason = "cpu 99% (30 s mean) >= 90%".to_owned();
        health.health = Health::Degraded;
        health.reasons.push(reason.clone());
        health.cpu_busy = Some(crate::fleet::CpuBusy { limit_percent: 90.0, reason });
    }
    if bit(6) {
        stats.cpu_mean_percent = Some((seed % 13) as f32);
    }
    health.devices.retain(|d: &DeviceHealth| !(bit(7) && d.index == 0));
    h.latest = (!(bit(4) && bit(6))).then(|| Arc::new(sample));
    h.health = Arc::new(health);
    h.stats = Arc::new(stats);
    if refresh {
        h.refresh_placement();
    }
    Arc::new(h)
}

fn stats_row() -> GpuStats {
    GpuStats {
        device_id: String::new(),
        util_mean_percent: None,
        util_max_percent: None,
        vram_used_max_bytes: None,
    }
}

fn used_fraction(total: u64, free: u64) -> f32 {
    if total == 0 { 1.0 } else { 1.0 - free as f32 / total as f32 }
}

proptest::proptest! {
    /// The summary-based scan admits exactly the devices the plain rules admit, with the
    /// same figures, says the same reasons for the rest, and ranks by the same loads.
    #[test]
    fn the_summary_scan_follows_the_plain_rules(
        hives in proptest::collection::vec((0usize..4, 0u64..40, proptest::num::u64::ANY, proptest::bool::ANY), 0..12),
        reservations in proptest::collection::vec((0usize..12, 0usize..4, 1u64..30), 0..8),
        vram_gib in 0u64..40,
        ram_gib in proptest::option::of(0u64..500),
        kind in 0usize..3,
        labelled in proptest::bool::ANY,
    ) {
        let fleet: Vec<Arc<HiveSnapshot>> = hives
            .iter()
            .enumerate()
            .map(|(i, &(gpus, used, seed, refresh))| rough(i, gpus, used, seed, refresh))
            .collect();
        let mut book = Book::default();
        for &(h, g, gib) in &reservations {
            let Some(h) = fleet.get(h) else { continue };
            let Some(gpu) = h.caps.as_ref().and_then(|c| c.caps.gpus.values().nth(g)) else { continue };
            let claim = Claim {
                hive_id: h.hive_id(),
                model: "m",
                bytes: gib * GIB,
                total: gpu.vram_total_bytes,
                observed: 0,
                processes: None,
                ttl: Duration::from_secs(60),
                now_ms: rbee_shared::time::now_unix_ms(),
            };
            let _ = book.reserve(&h.address, &gpu.id, &claim);
        }
        let mut req = PlaceRequest {
            kind: [DeviceKind::Any, DeviceKind::Cuda, DeviceKind::Cpu][kind],
            ram_bytes: ram_gib.map(|g| g * GIB),
            ..PlaceRequest::gpu(vram_gib * GIB)
        };
        if labelled {
            req.labels.insert("zone".into(), "eu".into());
        }
        let (want, why) = reference(&fleet, &req, &book);
        let view = FleetView { hives: Arc::new(fleet), book: Arc::new(RwLock::new(book)), index: None };

        let (fits, reasons) = view::assess(&view, &req, true);
        let got: Vec<_> = fits.iter().map(|d| (d.hive.address.clone(), d.id.clone(), d.total, d.used, d.free)).collect();
        let expected: Vec<_> = want.iter().map(|f| (f.0.clone(), f.1.clone(), f.2, f.3, f.4)).collect();
        proptest::prop_assert_eq!(got, expected);
        proptest::prop_assert_eq!(&reasons[..], &why[..why.len().min(64)]);

        let mut ranked = want.clone();
        ranked.sort_by(|a, b| {
            let key = |f: &Fit| (f.5, used_fraction(f.2, f.4), f.6);
            key(a).partial_cmp(&key(b)).unwrap().then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1)))
        });
        let ranked: Vec<_> = ranked.into_iter().map(|f| (f.0, f.1)).collect();
        let got: Vec<_> = view::rank(&view, &req, view::Order::LeastLoaded, 0)
            .into_iter()
            .map(|d| (d.hive.address.clone(), d.id))
            .collect();
        proptest::prop_assert_eq!(got, ranked);
    }
}

proptest::proptest! {
    /// The device handles (`gpu_ref`, and `hive.devices` through `gpu_refs`) read the
    /// summary's one join of a GPU's parts: their reading, utilisation and health are
    /// what the plain id matching gives, on rough fleets (reordered readings, missing
    /// ones, unlisted devices, summaries left stale).
    #[test]
    fn device_handles_read_the_summary_join(
        hives in proptest::collection::vec((0usize..4, 0u64..40, proptest::num::u64::ANY, proptest::bool::ANY), 0..8),
    ) {
        let book = Arc::new(RwLock::new(Book::default()));
        let locked = view::read(&book);
        let books = view::Books { locked: &locked, shared: &book };
        for (i, &(gpus, used, seed, refresh)) in hives.iter().enumerate() {
            let h = rough(i, gpus, used, seed, refresh);
            let mut want = Vec::new();
            if let Some(caps) = h.caps.as_deref() {
                for gpu in caps.caps.gpus_by_index() {
                    let id = &gpu.id;
                    let live = h.latest.as_deref().and_then(|s| s.gpus.iter().find(|g| &g.id == id));
                    let mean = h.stats.gpus.iter().find(|g| &g.device_id == id).and_then(|g| g.util_mean_percent);
                    let util = mean.or_else(|| live?.gpu_util_percent);
                    let health =
                        h.health.devices.iter().find(|d| &d.device_id == id).map_or(Health::Healthy, |d| d.health);
                    let handle = view::gpu_ref(&h, id, &books);
                    let reading = live.and_then(|l| l.vram_used_bytes).is_some();
                    proptest::prop_assert_eq!(handle.is_some(), reading, "{}", id);
                    if let Some(d) = handle {
                        proptest::prop_assert_eq!(d.live(), live);
                        proptest::prop_assert_eq!(d.util(), util);
                        proptest::prop_assert_eq!(d.health(), health);
                        proptest::prop_assert_eq!(d.used, live.unwrap().vram_used_bytes.unwrap());
                        want.push((id.clone(), util, health));
                    }
                }
            }
            let got: Vec<_> = view::gpu_refs(&h, &books).iter().map(|d| (d.id.clone(), d.util(), d.health())).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
