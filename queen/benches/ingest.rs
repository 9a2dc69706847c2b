//! The queen's per-sample ingest work, without the network, as a link does it: a compact
//! frame (8 GPUs, the deltas a hive sends) decoded against the capabilities held, applied,
//! pushed into the ring buffer, the window statistics and the health recomputed, and a
//! new snapshot published. Run:
//!
//!     cargo bench -p rbee-queen --bench ingest [-- SAMPLES]
//!
//! At 10,000 hives x 1 Hz the queen must do this 10,000 times a second; the figure
//! shows what fraction of one core that costs (HTTP/2 and protobuf decoding come on
//! top). It also counts the heap allocations per sample (a counting global allocator):
//! a figure that does not depend on the machine's load.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rbee_proto::v1 as pb;
use rbee_queen::fleet::{ConnState, HiveSnapshot, Thresholds};
use rbee_queen::link::health::{HealthInput, evaluate};
use rbee_queen::link::ingest::{IngestState, Outcome};
use rbee_queen::link::ingest_compact::CompactIngest;
use rbee_queen::link::window::SampleWindow;
use rbee_queen::scheduler::synthetic;
use rbee_shared::compact::{Encoder, Layout};

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200_000);
    let hive = synthetic::hive("bench", 8, 80, 10, 30.0, ConnState::Online, &[("zone", "eu")]);
    let caps = hive.caps.clone().unwrap();
    let identity = hive.identity.clone().unwrap();
    let layout = Layout::of(&caps);
    let mut state = IngestState::default();
    state.replace((*identity).clone(), (*caps).clone()).unwrap();
    state.start_stream();
    let held = state.caps.clone().unwrap();
    let thresholds = Thresholds::default();
    let mut window = SampleWindow::new(300, Duration::from_secs(60), thresholds.cpu_window);
    let mut compact = CompactIngest::default();
    let (tx, _rx) = tokio::sync::watch::channel(hive.clone());
    let mut view = HiveSnapshot::clone(&hive);

    // The frames the hive would send: every GPU's utilisation and memory move each time.
    let mut sample = hive.latest.as_deref().unwrap().clone();
    let mut encoder = Encoder::new();
    let frames: Vec<pb::HiveMessage> = (1..=1000u64)
        .map(|seq| {
            sample.taken_at_unix_ms = seq * 1000;
            for (i, g) in sample.gpus.iter_mut().enumerate() {
                g.gpu_util_percent = Some(((seq as usize * 7 + i * 13) % 100) as f32);
                g.vram_used_bytes = Some((((seq as usize + i) % 40) as u64 + 1) << 30);
            }
            let c = encoder.encode_sample(&sample, &layout).expect("encodes");
            pb::HiveMessage {
                seq,
                hive_time_unix_ms: 0,
                payload: Some(pb::hive_message::Payload::CompactSample(c)),
            }
        })
        .collect();

    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let start = Instant::now();
    for i in 0..n {
        // The frames go round; after the first, every one is a delta against its
        // predecessor (the first again after the last: a keyframe then starts over).
        let k = i % frames.len();
        if k == 0 {
            compact.reset();
            state.start_stream();
        }
        let mut frame = frames[k].clone();
        frame.seq = k as u64 + 1;
        let message = compact.decode(&frame, Some(&held)).expect("decodes");
        let Outcome::Sample(sample) = state.apply(message) else { panic!("not a sample") };
        let seq = i as u64 + 1;
        window.push(&sample, seq * 1000);
        view.stats = Arc::new(window.stats());
        view.latest = Some(Arc::new(*sample));
        let report = evaluate(
            &HealthInput {
                state: ConnState::Online,
                silence: Some(Duration::ZERO),
                last_error: None,
                invalid: None,
                sample: view.latest.as_deref(),
                caps: Some(&held),
                cpu_window_mean: window.cpu_mean(),
                received_unix_ms: view.latest.as_ref().map(|s| s.taken_at_unix_ms),
                pending: &|_| false,
                links_down: &[],
            },
            &thresholds,
        );
        view.health = Arc::new(report);
        view.refresh_placement();
        tx.send_replace(Arc::new(view.clone()));
    }
    let elapsed = start.elapsed();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
    let per = elapsed / n as u32;
    println!("ingest: {n} samples of 8 GPUs in {elapsed:?}: {per:?} per sample");
    println!("allocations: {:.1} per sample", allocations as f64 / n as f64);
    println!(
        "at 10,000 hives x 1 Hz that is {:.1}% of one core (network decoding not included)",
        per.as_secs_f64() * 10_000.0 * 100.0
    );
}
