//! The queen's per-sample ingest work, without the network: validate a wire sample
//! (8 GPUs), apply it, push it into the ring buffer, recompute the window statistics
//! and the health. Run:
//!
//!     cargo bench -p rbee-queen --bench ingest [-- SAMPLES]
//!
//! At 10,000 hives x 1 Hz the queen must do this 10,000 times a second; the figure
//! shows what fraction of one core that costs (HTTP/2 and protobuf decoding come on top).

use std::time::{Duration, Instant};

use rbee_proto::v1 as pb;
use rbee_queen::fleet::ConnState;
use rbee_queen::fleet::Thresholds;
use rbee_queen::link::health::{HealthInput, evaluate};
use rbee_queen::link::ingest::{IngestState, Outcome};
use rbee_queen::link::window::SampleWindow;
use rbee_queen::scheduler::synthetic;
use rbee_shared::HiveStreamMessage;

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200_000);
    let hive = synthetic::hive("bench", 8, 80, 10, 30.0, ConnState::Online, &[("zone", "eu")]);
    let caps = hive.caps.clone().unwrap();
    let identity = hive.identity.clone().unwrap();
    let wire_sample: pb::Sample = hive.latest.as_deref().unwrap().into();
    let mut state = IngestState::default();
    state.replace((*identity).clone(), (*caps).clone()).unwrap();
    state.start_stream();
    let thresholds = Thresholds::default();
    let mut window = SampleWindow::new(300, Duration::from_secs(60), thresholds.cpu_window);

    let start = Instant::now();
    for seq in 1..=n as u64 {
        let mut s = wire_sample.clone();
        s.taken_at_unix_ms = seq * 1000;
        let wire = pb::HiveMessage {
            seq,
            hive_time_unix_ms: 0,
            payload: Some(pb::hive_message::Payload::Sample(s)),
        };
        let message = HiveStreamMessage::try_from(&wire).expect("valid");
        let Outcome::Sample(sample) = state.apply(message) else { panic!("not a sample") };
        window.push(&sample, seq * 1000);
        let stats = window.stats();
        let report = evaluate(
            &HealthInput {
                state: ConnState::Online,
                silence: Some(Duration::ZERO),
                last_error: None,
                invalid: None,
                sample: Some(&sample),
                caps: Some(&caps),
                cpu_window_mean: window.cpu_mean(),
                received_unix_ms: Some(sample.taken_at_unix_ms),
                pending: &|_| false,
                links_down: &[],
            },
            &thresholds,
        );
        std::hint::black_box((stats, report));
    }
    let elapsed = start.elapsed();
    let per = elapsed / n as u32;
    println!("ingest: {n} samples of 8 GPUs in {elapsed:?}: {per:?} per sample");
    println!(
        "at 10,000 hives x 1 Hz that is {:.1}% of one core (network decoding not included)",
        per.as_secs_f64() * 10_000.0 * 100.0
    );
}
