//! Gang placement latency over a synthetic fleet of DGX-style hives (1,000 hives x 8
//! GPUs by default, every pair on NVSwitch, two NUMA nodes of 4, loads spread out) with
//! the built-in default policy (`fleet.best_gangs`). Run:
//!
//!     cargo bench -p rbee-queen --bench place_gang [-- HIVES PLACEMENTS]
//!
//! It measures `Scheduler::place_blocking` for gangs of 2, 4 and 8 GPUs in turn, with
//! `topology` NVLINK, SAME_NUMA (NVLINK for 8) and ANY in turn (the policy run with the
//! native gang search, and the all-or-nothing commit of a real reservation); the
//! reservation is released
//! outside the timed section so the fleet stays comparable. A call that is rejected or
//! fails is counted and printed. With `GANG_PROFILE=1` it times the parts instead: the
//! eligibility scan, the hives' links (cached per capabilities) and `gang::best`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_queen::scheduler::request::{GangTopology, PlaceRequest};
use rbee_queen::scheduler::{Outcome, Scheduler, SchedulerSettings, StaticHives, synthetic};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let hives = args.first().copied().unwrap_or(1000);
    let n = args.get(1).copied().unwrap_or(3000);
    let scheduler =
        Scheduler::new(Arc::new(StaticHives(synthetic::dgx_fleet(hives))), SchedulerSettings::default())
            .unwrap();
    let topologies = [GangTopology::Nvlink, GangTopology::SameNuma, GangTopology::Any];
    // 8 GPUs on one NUMA node do not exist on these boxes (4 per node): ask NVLink.
    let request = |i: usize| {
        let gpus = [2, 4, 8][i % 3];
        let topology = match topologies[(i / 3) % 3] {
            GangTopology::SameNuma if gpus == 8 => GangTopology::Nvlink,
            t => t,
        };
        PlaceRequest { gpus, topology, ..PlaceRequest::gpu(20 << 30) }
    };

    if std::env::var("GANG_PROFILE").is_ok() {
        use rbee_queen::scheduler::{gang, view};
        let fleet = Arc::new(synthetic::dgx_fleet(hives));
        let v = view::FleetView { hives: fleet.clone(), book: Default::default(), index: None };
        let req = PlaceRequest { gpus: 4, ..PlaceRequest::gpu(20 << 30) };
        for (what, f) in [
            (
                "scan",
                &(|| {
                    let mut c = 0usize;
                    view::scan_gpus(&v, &req, |_, _, _, _, _| c += 1, |_| {});
                    c
                }) as &dyn Fn() -> usize,
            ),
            ("links", &|| fleet.iter().filter_map(|h| gang::Links::cached(h)).count()),
            ("best", &|| gang::best(&v, &req, 8).len()),
        ] {
            let t = Instant::now();
            let mut x = 0;
            for _ in 0..200 {
                x += f();
            }
            println!("{what}: {:?} per call ({x})", t.elapsed() / 200);
        }
        return;
    }
    // Warm up.
    for i in 0..200 {
        if let Ok(Outcome::Placed(p)) = scheduler.place_blocking(&request(i)) {
            scheduler.release(&p.reservation.unwrap().id).unwrap();
        }
    }

    let (mut lat, mut rejected, mut failed) = (Vec::with_capacity(n), 0usize, 0usize);
    for i in 0..n {
        let req = request(i);
        let t = Instant::now();
        let outcome = scheduler.place_blocking(&req);
        lat.push(t.elapsed());
        match outcome {
            Ok(Outcome::Placed(p)) => {
                assert_eq!(p.devices.len(), req.gpus as usize);
                scheduler.release(&p.reservation.unwrap().id).unwrap();
            }
            Ok(Outcome::Rejected { reason, .. }) => {
                rejected += 1;
                if rejected <= 3 {
                    eprintln!("rejected: {reason}");
                }
            }
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("place failed: {e}");
                }
            }
        }
    }
    lat.sort();
    let mean = lat.iter().sum::<Duration>() / n as u32;
    println!(
        "fleet: {hives} DGX-style hives x 8 GPUs ({} GPUs), policy built-in:least-loaded (fleet.best_gangs)",
        hives * 8
    );
    println!(
        "gang place latency (gangs of 2/4/8, nvlink/numa/any; 1 thread, {n} calls, {rejected} rejected, {failed} failed): p50 {:?}  p99 {:?}  max {:?}  mean {:?}",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat[n - 1],
        mean
    );
}
