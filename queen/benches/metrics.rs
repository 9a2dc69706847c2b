//! One `/metrics` scrape of a synthetic fleet (1,000 hives x 8 GPUs by default, and
//! 4,000 reservations): the time to gather and encode it, its size and its series.
//! Run:
//!
//!     cargo bench -p rbee-queen --bench metrics [-- HIVES GPUS SCRAPES RESERVATIONS]
//!
//! It measures what the endpoint does per scrape (the collector walks the snapshots
//! and the book, prometheus-client writes the text); HTTP is not included.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_queen::scheduler::request::PlaceRequest;
use rbee_queen::scheduler::{Scheduler, SchedulerSettings, StaticHives, synthetic};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let hives = args.first().copied().unwrap_or(1000);
    let gpus = args.get(1).copied().unwrap_or(8);
    let n = args.get(2).copied().unwrap_or(20);
    let reservations = args.get(3).copied().unwrap_or(hives * 4);
    let fleet = Arc::new(StaticHives(synthetic::fleet(hives, gpus)));
    // A generous policy budget: filling the book is set-up, not what is measured.
    let mut settings = SchedulerSettings::default();
    settings.limits.budget = Duration::from_secs(10);
    let scheduler = Scheduler::new(fleet.clone(), settings).unwrap();
    for _ in 0..reservations {
        scheduler.place_blocking(&PlaceRequest::gpu(1 << 30)).unwrap();
    }
    let registry = rbee_queen::metrics::registry(fleet, scheduler);
    let text = rbee_queen::metrics::encode(&registry).unwrap();
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let text = rbee_queen::metrics::encode(&registry).unwrap();
            std::hint::black_box(text.len());
            t.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "{hives} hives x {gpus} GPUs, {reservations} reservations: {series} series, {:.1} MiB; scrape p50 {:?}, max {:?} ({n} scrapes)",
        text.len() as f64 / (1 << 20) as f64,
        times[times.len() / 2],
        times[times.len() - 1],
    );
}
