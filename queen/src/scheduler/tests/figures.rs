//! The Fleet API's per-device figures against admission: on random reservations,
//! releases and samples (driver-reserved VRAM and process lists included), `placeable`
//! is exactly what a dry-run Place admits (it admits `placeable` bytes and refuses one
//! byte more), and `reserved` is the sum of the active reservations.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use rbee_shared::Sample;
use rbee_shared::gpu_process::{GpuProcess, GpuProcesses};

use crate::fleet::{ConnState, HiveSnapshot};
use crate::scheduler::request::PlaceRequest;
use crate::scheduler::synthetic::hive;
use crate::scheduler::{HiveSource, Outcome, Scheduler, SchedulerSettings};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A fleet whose one hive gets new samples.
struct Swap(Mutex<Arc<HiveSnapshot>>);

impl HiveSource for Swap {
    fn hives(&self) -> Vec<Arc<HiveSnapshot>> {
        vec![self.0.lock().unwrap().clone()]
    }
}

impl Swap {
    /// A new sample: `used` VRAM in use, `reserved` kept by the driver, and the listed
    /// processes (pid, VRAM) when the hive lists them.
    fn sample(&self, used: u64, reserved: u64, processes: Option<&[(u32, u64)]>) {
        let mut h = self.0.lock().unwrap();
        let mut next = HiveSnapshot::clone(&h);
        let mut s = Sample::clone(next.latest.as_deref().unwrap());
        s.gpus[0].vram_used_bytes = Some(used);
        s.gpus[0].vram_reserved_bytes = Some(reserved);
        s.gpus[0].processes = processes.map(|list| GpuProcesses {
            listed: list
                .iter()
                .map(|&(pid, bytes)| GpuProcess { pid, used_vram_bytes: Some(bytes), ..Default::default() })
                .collect(),
            ..Default::default()
        });
        next.latest = Some(Arc::new(s));
        *h = Arc::new(next.with_placement());
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Reserve this many MiB.
    Reserve(u64),
    /// Release the n-th reservation still held (modulo their count).
    Release(usize),
    /// A sample with this many MiB used and this many MiB reserved by the driver, and
    /// maybe a process list (pid, MiB), then upkeep (settles what it shows).
    Sample(u64, u64, Option<Vec<(u32, u64)>>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..40 * 1024).prop_map(Op::Reserve),
        (0usize..8).prop_map(Op::Release),
        (
            0u64..80 * 1024,
            0u64..1024,
            proptest::option::of(proptest::collection::vec((1u32..6, 0u64..30 * 1024), 0..4)),
        )
            .prop_map(|(u, r, p)| Op::Sample(u, r, p)),
    ]
}

fn dry(bytes: u64) -> PlaceRequest {
    PlaceRequest { dry_run: true, ..PlaceRequest::gpu(bytes) }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn placeable_is_what_a_dry_run_admits(
        used in 0u64..80 * 1024,
        ops in proptest::collection::vec(op(), 1..24),
    ) {
        let fleet = Arc::new(Swap(Mutex::new(hive("fig", 1, 80, 0, 0.0, ConnState::Online, &[]))));
        fleet.sample(used * MIB, 0, None);
        let mut settings = SchedulerSettings::default();
        settings.limits.budget = std::time::Duration::from_secs(2);
        let s = Scheduler::new(fleet.clone(), settings).unwrap();
        for op in ops {
            match op {
                Op::Reserve(mib) => {
                    let _ = s.place_blocking(&PlaceRequest::gpu(mib * MIB)).unwrap();
                }
                Op::Release(n) => {
                    let held = s.reservations();
                    if !held.is_empty() {
                        s.release(&held[n % held.len()].id).unwrap();
                    }
                }
                Op::Sample(used, reserved, processes) => {
                    let processes: Option<Vec<(u32, u64)>> =
                        processes.map(|p| p.into_iter().map(|(pid, mib)| (pid, mib * MIB)).collect());
                    // The device's use covers what its processes use.
                    let listed: u64 = processes.iter().flatten().map(|p| p.1).sum();
                    fleet.sample((used * MIB).max(listed).min(80 * GIB), reserved * MIB, processes.as_deref());
                    s.upkeep_once();
                }
            }
            // As the queen does every `maintain_every`: the candidate scan reads the
            // book as of its last settlement (the figures and the commit settle with
            // the newest sample themselves).
            s.upkeep_once();
            let h = fleet.hives().remove(0);
            let figures = s.figures(&h);
            prop_assert_eq!(figures.len(), 1);
            let f = &figures[0];
            let active: u64 = s
                .reservations()
                .iter()
                .filter(|r| r.state == crate::scheduler::book::ReservationState::Active)
                .map(|r| r.bytes)
                .sum();
            prop_assert_eq!(f.reserved, active);
            let placeable = f.placeable.unwrap();
            prop_assert!(placeable <= 80 * GIB);
            if placeable > 0 {
                let admitted = s.place_blocking(&dry(placeable)).unwrap();
                prop_assert!(matches!(admitted, Outcome::Placed(_)), "{placeable} refused: {admitted:?}");
            }
            let refused = s.place_blocking(&dry(placeable + 1)).unwrap();
            prop_assert!(matches!(refused, Outcome::Rejected { .. }), "{} admitted: {refused:?}", placeable + 1);
        }
    }
}

/// The brief's example: 80 GiB, 12 GiB in use, one 30 GiB reservation: 38 GiB placeable.
#[test]
fn eighty_gib_with_twelve_used_and_thirty_reserved_leaves_thirty_eight() {
    let fleet = Arc::new(Swap(Mutex::new(hive("fig", 1, 80, 12, 0.0, ConnState::Online, &[]))));
    let s = Scheduler::new(fleet.clone(), SchedulerSettings::default()).unwrap();
    assert!(matches!(s.place_blocking(&PlaceRequest::gpu(30 * GIB)).unwrap(), Outcome::Placed(_)));
    let f = &s.figures(&fleet.hives()[0])[0];
    assert_eq!((f.reserved, f.placeable), (30 * GIB, Some(38 * GIB)));
}
