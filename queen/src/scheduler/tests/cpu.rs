//! A hive degraded only by its CPU load: GPU work still goes there (with the reason in
//! the answer), work on its CPU does not, and a rejection counts its causes.

use std::sync::Arc;

use crate::fleet::{ConnState, CpuBusy, Health, HealthReport, HiveSnapshot};
use crate::scheduler::request::{DeviceKind, PlaceRequest};
use crate::scheduler::synthetic::hive;
use crate::scheduler::{Outcome, Scheduler, SchedulerSettings, StaticHives};

const GIB: u64 = 1 << 30;
const REASON: &str = "cpu 97% (10 s mean) >= 95%";

/// A hive as `link::health` judges one whose CPU window mean is 97%.
fn busy(id: &str, used_gib: u64) -> Arc<HiveSnapshot> {
    let mut h = HiveSnapshot::clone(&hive(id, 1, 24, used_gib, 0.0, ConnState::Online, &[]));
    let devices = h.health.devices.clone();
    h.health = Arc::new(HealthReport {
        health: Health::Degraded,
        placement: Health::Healthy,
        reasons: vec![REASON.into()],
        devices,
        cpu_busy: Some(CpuBusy { limit_percent: 95.0, reason: REASON.into() }),
    });
    Arc::new(h.with_placement())
}

fn scheduler(hives: Vec<Arc<HiveSnapshot>>) -> Arc<Scheduler> {
    let mut settings = SchedulerSettings::default();
    settings.limits.budget = std::time::Duration::from_secs(2);
    Scheduler::new(Arc::new(StaticHives(hives)), settings).unwrap()
}

fn cpu(ram: u64) -> PlaceRequest {
    PlaceRequest { kind: DeviceKind::Cpu, ram_bytes: Some(ram), vram_bytes: 0, ..PlaceRequest::gpu(0) }
}

#[test]
fn a_cpu_busy_hive_takes_gpu_work_and_says_so() {
    let s = scheduler(vec![busy("busy-1", 4)]);
    let Outcome::Placed(p) = s.place_blocking(&PlaceRequest::gpu(8 * GIB)).unwrap() else {
        panic!("a CPU-busy hive must take GPU work");
    };
    assert_eq!(p.hive_id, "busy-1");
    assert_eq!(p.notes, [format!("busy-1: degraded: {REASON} (not a veto for GPU work)")]);
    let Outcome::Rejected { reason, hive_reasons } = s.place_blocking(&cpu(GIB)).unwrap() else {
        panic!("work on a busy CPU must not be placed");
    };
    assert!(reason.ends_with("no hive fits: 1 degraded (cpu >= 95%)"), "{reason}");
    assert_eq!(hive_reasons, [format!("busy-1: degraded: {REASON} (the request wants the CPU)")]);
}

#[test]
fn a_calm_hive_ranks_before_a_busy_one_of_equal_load() {
    let calm = hive("calm-1", 1, 24, 4, 0.0, ConnState::Online, &[]);
    let mut h = HiveSnapshot::clone(&busy("busy-1", 4));
    h.stats = Arc::new(crate::fleet::WindowStats { cpu_mean_percent: Some(97.0), ..Default::default() });
    let s = scheduler(vec![Arc::new(h.with_placement()), calm]);
    let Outcome::Placed(p) = s.place_blocking(&PlaceRequest::gpu(8 * GIB)).unwrap() else { panic!() };
    assert_eq!((p.hive_id.as_str(), p.notes.len()), ("calm-1", 0));
}

#[test]
fn a_rejection_counts_its_causes() {
    let hives = vec![
        busy("busy-1", 20),
        busy("busy-2", 20),
        busy("busy-3", 20),
        hive("lost-1", 1, 24, 4, 0.0, ConnState::Lost, &[]),
        hive("small-1", 1, 24, 20, 0.0, ConnState::Online, &[]),
        hive("small-2", 1, 24, 20, 0.0, ConnState::Online, &[]),
    ];
    let s = scheduler(hives);
    // GPU work: the busy hives are too full, not vetoed.
    let Outcome::Rejected { reason, .. } = s.place_blocking(&PlaceRequest::gpu(8 * GIB)).unwrap() else {
        panic!()
    };
    assert_eq!(reason, "no hive fits: 5 too little free VRAM, 1 lost");
    // CPU work: the busy hives are out for their CPU.
    let Outcome::Rejected { reason, .. } = s.place_blocking(&cpu(1 << 40)).unwrap() else { panic!() };
    assert_eq!(reason, "no hive fits: 3 degraded (cpu >= 95%), 1 lost, 2 too little available RAM");
}

/// A policy vetoes busy hives with `hive.cpu_busy` (the example in docs/scheduling.md).
#[test]
fn a_policy_can_keep_gpu_work_off_busy_hives() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let text = "fn place(request, fleet) {\n    let ranked = fleet.least_loaded(request, 8).filter(|d| !d.hive.cpu_busy);\n    if ranked.is_empty() { return reject(fleet.why_no_fit(request)); }\n    ranked\n}\n";
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    let mut settings = SchedulerSettings { policy_file: Some(file.path().to_owned()), ..Default::default() };
    settings.limits.budget = std::time::Duration::from_secs(2);
    let s = Scheduler::new(Arc::new(StaticHives(vec![busy("busy-1", 4)])), settings.clone()).unwrap();
    let Outcome::Rejected { reason, .. } = s.place_blocking(&PlaceRequest::gpu(8 * GIB)).unwrap() else {
        panic!("the policy vetoes the busy hive");
    };
    assert_eq!(reason, "every device that fits was passed over by the policy");
    let calm = hive("calm-1", 1, 24, 4, 0.0, ConnState::Online, &[]);
    let s = Scheduler::new(Arc::new(StaticHives(vec![busy("busy-1", 4), calm])), settings).unwrap();
    let Outcome::Placed(p) = s.place_blocking(&PlaceRequest::gpu(8 * GIB)).unwrap() else { panic!() };
    assert_eq!(p.hive_id, "calm-1");
}
