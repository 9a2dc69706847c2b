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
//!
//! With the word `ingest` among the arguments the hives are a live `Fleet` and a thread
//! publishes every hive's view once a second meanwhile (as the links do at 1 Hz: a new
//! snapshot, then the change noted), so each Place also brings the placement index up to
//! date with what was published since the last one:
//!
//!     cargo bench -p rbee-queen --bench place -- 10000 8 1000 ingest

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_queen::fleet::{Fleet, FleetSettings, HiveSnapshot, NewHive, Origin, Watcher};
use rbee_queen::scheduler::request::PlaceRequest;
use rbee_queen::scheduler::{HiveSource, Outcome, Scheduler, SchedulerSettings, StaticHives, synthetic};

type Sender = tokio::sync::watch::Sender<Arc<HiveSnapshot>>;

/// Keeps each added hive's sender, as a link would.
#[derive(Clone, Default)]
struct Senders(Arc<std::sync::Mutex<Vec<(String, Sender)>>>);

impl Watcher for Senders {
    fn start(&self, hive: NewHive) {
        let address = hive.publish.borrow().address.clone();
        self.0.lock().unwrap().push((address, hive.publish));
    }
}

/// A live fleet of `views`, and a thread that publishes each hive's view (a new snapshot
/// of it) once a second until `stop`.
fn live(views: Vec<Arc<HiveSnapshot>>, stop: Arc<std::sync::atomic::AtomicBool>) -> Arc<Fleet> {
    let senders = Senders::default();
    let fleet = Fleet::new(FleetSettings::default(), Default::default(), senders.clone());
    for v in &views {
        fleet.add(&v.address, Origin::Static).unwrap();
    }
    let hives: Vec<(String, Sender, Arc<HiveSnapshot>)> = std::mem::take(&mut *senders.0.lock().unwrap())
        .into_iter()
        .zip(views)
        .map(|((address, tx), v)| {
            let v = Arc::new(HiveSnapshot { address: address.clone(), ..HiveSnapshot::clone(&v) });
            (address, tx, v)
        })
        .collect();
    let publisher = fleet.clone();
    std::thread::spawn(move || {
        let n = hives.len().max(1);
        let start = Instant::now();
        let mut i = 0usize;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // Hive `i` of round `i / n` publishes at `i / n` seconds and its share of one.
            let due = start + Duration::from_secs_f64(i as f64 / n as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let (address, tx, view) = &hives[i % n];
            tx.send_replace(Arc::new(HiveSnapshot::clone(view)));
            publisher.changed(address);
            i += 1;
        }
    });
    fleet
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let hives = args.first().copied().unwrap_or(1000);
    let gpus = args.get(1).copied().unwrap_or(8);
    let n = args.get(2).copied().unwrap_or(5000);
    let ingest = std::env::args().any(|a| a == "ingest");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let source: Arc<dyn HiveSource> = if ingest {
        live(synthetic::fleet(hives, gpus), stop.clone())
    } else {
        Arc::new(StaticHives(synthetic::fleet(hives, gpus)))
    };
    let scheduler = Scheduler::new(source, SchedulerSettings::default()).unwrap();
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
    let publishing =
        if ingest { format!(", each hive publishing at 1 Hz ({hives} views/s)") } else { String::new() };
    println!(
        "fleet: {hives} hives x {gpus} GPUs ({} devices), policy built-in:least-loaded{publishing}",
        hives * gpus
    );
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
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}
