//! The queen's per-sample ingest work, without the network, as a link does it: a compact
//! frame (8 GPUs, the deltas a hive sends) decoded against the capabilities held, applied,
//! pushed into the ring buffer, the window statistics and the health recomputed, and a
//! new snapshot published. Run:
//!
//!     cargo bench -p rbee-queen --bench ingest [-- SAMPLES] [fresh]
//!
//! By default the statistics, the health report and the snapshot are refilled in place
//! when nobody else holds the ones published before last, as the link does
//! (`link::recycle`); `fresh` allocates them anew on every sample (the link before it
//! reused them), for a comparison in one run.
//!
//! At 10,000 hives x 1 Hz the queen must do this 10,000 times a second; the figure
//! shows what fraction of one core that costs (protobuf decoding included, HTTP/2 not).
//! Allocations per sample, a figure the machine's load does not change, come from
//! heaptrack on the bench's binary (the command is in docs/BENCHMARKS.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rbee_proto::v1 as pb;
use rbee_queen::fleet::{ConnState, HiveSnapshot, Thresholds};
use rbee_queen::link::health::{HealthInput, evaluate};
use rbee_queen::link::ingest::{IngestState, Outcome};
use rbee_queen::link::ingest_compact::CompactIngest;
use rbee_queen::link::recycle::Spares;
use rbee_queen::link::window::SampleWindow;
use rbee_queen::scheduler::synthetic;
use rbee_shared::compact::{Encoder, Layout};

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200_000);
    let fresh = std::env::args().any(|a| a == "fresh");
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
    let mut spares = Spares::default();

    // The frames the hive would send: every GPU's utilisation and memory move each time.
    let mut sample = hive.latest.as_deref().unwrap().clone();
    let mut encoder = Encoder::new();
    let frames: Vec<Vec<u8>> = (1..=1000u64)
        .map(|seq| {
            sample.taken_at_unix_ms = seq * 1000;
            for (i, g) in sample.gpus.iter_mut().enumerate() {
                g.gpu_util_percent = Some(((seq as usize * 7 + i * 13) % 100) as f32);
                g.vram_used_bytes = Some((((seq as usize + i) % 40) as u64 + 1) << 30);
            }
            let c = encoder.encode_sample(&sample, &layout).expect("encodes");
            let m = pb::HiveMessage {
                seq,
                hive_time_unix_ms: 0,
                payload: Some(pb::hive_message::Payload::CompactSample(c)),
            };
            m.encode_to_vec()
        })
        .collect();

    let start = Instant::now();
    for i in 0..n {
        // The frames go round; after the first, every one is a delta against its
        // predecessor (the first again after the last: a keyframe then starts over).
        let k = i % frames.len();
        if k == 0 {
            compact.reset();
            state.start_stream();
        }
        // Protobuf decoding as the stream does it (HTTP/2 not included).
        let frame = pb::HiveMessage::decode(frames[k].as_slice()).expect("decodes");
        let message = compact.decode(&frame, Some(&held)).expect("decodes");
        let Outcome::Sample(sample) = state.apply(message) else { panic!("not a sample") };
        let seq = i as u64 + 1;
        window.push(&sample, seq * 1000);
        view.stats = if fresh { Arc::new(window.stats()) } else { spares.stats(&window) };
        view.latest = Some(sample);
        let input = HealthInput {
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
        };
        view.health =
            if fresh { Arc::new(evaluate(&input, &thresholds)) } else { spares.health(&input, &thresholds) };
        view.refresh_placement();
        if fresh {
            tx.send_replace(Arc::new(view.clone()));
            continue;
        }
        spares.publish(&view, &tx);
    }
    let elapsed = start.elapsed();
    let per = elapsed / n as u32;
    let how = if fresh { "allocated anew" } else { "refilled in place" };
    println!("ingest ({how}): {n} samples of 8 GPUs in {elapsed:?}: {per:?} per sample");
    println!(
        "at 10,000 hives x 1 Hz that is {:.1}% of one core (HTTP/2 not included)",
        per.as_secs_f64() * 10_000.0 * 100.0
    );
}
