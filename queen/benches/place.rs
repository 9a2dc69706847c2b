//! Place latency and throughput over a synthetic fleet (1,000 hives x 8 GPUs by
//! default) with the built-in least-loaded policy. Run:
//!
//!     cargo bench -p rbee-queen --bench place [-- HIVES GPUS PLACEMENTS]
//!
//! It measures `Scheduler::place_blocking` (policy run + admission control + a real
//! reservation), which is what the gRPC handler runs on a blocking thread; the
//! reservation is released outside the timed section so the fleet stays comparable.
//! A call that fails (the policy ran past its wall budget) or is rejected is counted
//! and printed, not fatal: its latency is still in the figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_queen::scheduler::request::PlaceRequest;
use rbee_queen::scheduler::{Outcome, Scheduler, SchedulerSettings, StaticHives, synthetic};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let hives = args.first().copied().unwrap_or(1000);
    let gpus = args.get(1).copied().unwrap_or(8);
    let n = args.get(2).copied().unwrap_or(5000);
    let scheduler =
        Scheduler::new(Arc::new(StaticHives(synthetic::fleet(hives, gpus))), SchedulerSettings::default())
            .unwrap();
    let req = PlaceRequest::gpu(4 << 30);

    // Warm up.
    for _ in 0..200 {
        if let Ok(Outcome::Placed(p)) = scheduler.place_blocking(&req) {
            scheduler.release(&p.reservation.unwrap().id).unwrap();
        }
    }

    let (mut lat, mut rejected, mut failed) = (Vec::with_capacity(n), 0usize, 0usize);
    for _ in 0..n {
        let t = Instant::now();
        let outcome = scheduler.place_blocking(&req);
        lat.push(t.elapsed());
        match outcome {
            Ok(Outcome::Placed(p)) => {
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
    println!("fleet: {hives} hives x {gpus} GPUs ({} devices), policy built-in:least-loaded", hives * gpus);
    println!(
        "place latency (1 thread, {n} calls, {rejected} rejected, {failed} failed): p50 {:?}  p99 {:?}  max {:?}  mean {:?}",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat[n - 1],
        mean
    );

    // Throughput: every core placing at once; reservations accumulate (8 GiB x calls).
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_thread = n / threads;
    let failures = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let scheduler = scheduler.clone();
            let req = req.clone();
            let failures = &failures;
            s.spawn(move || {
                for _ in 0..per_thread {
                    match scheduler.place_blocking(&req) {
                        Ok(Outcome::Placed(_)) => {}
                        other => {
                            let count = failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if count < 3 {
                                eprintln!("placement failed under load: {other:?}");
                            }
                        }
                    }
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let total = per_thread * threads;
    println!(
        "place throughput ({threads} threads, {total} placements kept): {:.0} placements/s",
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "reservations held: {}, failed placements: {}",
        scheduler.reservations().len(),
        failures.load(std::sync::atomic::Ordering::Relaxed)
    );
}
