//! `Place` over gRPC against a running queen, at a steady rate, for the load curve
//! (issue 13, `docs/bench/scale.sh`): each call is a real placement (a reservation),
//! released again outside the timed call so the fleet stays comparable. Prints the
//! latency percentiles the client saw.
//!
//!     cargo run --release -p rbee-queen --example place_load -- http://127.0.0.1:7833 1000 50
//!
//! Arguments: the queen's URL, how many calls (default 1000), calls per second
//! (default 50).

use std::time::{Duration, Instant};

use rbee_proto::v1 as pb;
use rbee_proto::v1::scheduler_client::SchedulerClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args.first().cloned().unwrap_or_else(|| "http://127.0.0.1:7833".into());
    let n: usize = args.get(1).map_or(Ok(1000), |a| a.parse())?;
    let rate: f64 = args.get(2).map_or(Ok(50.0), |a| a.parse())?;
    let mut client = SchedulerClient::connect(url).await?;
    let req = pb::PlaceRequest {
        model: "bench".into(),
        vram_bytes: 4 << 30,
        device_kind: pb::DeviceKind::Cuda as i32,
        ttl_ms: Some(60_000),
        ..Default::default()
    };
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut lat, mut rejected, mut failed) = (Vec::with_capacity(n), 0, 0);
    for _ in 0..n {
        ticker.tick().await;
        let t = Instant::now();
        let answer = client.place(req.clone()).await;
        let took = t.elapsed();
        match answer.map(|r| r.into_inner().result) {
            Ok(Some(pb::place_response::Result::Placement(p))) => {
                lat.push(took);
                client.release(pb::ReleaseRequest { reservation_id: p.reservation_id }).await?;
            }
            Ok(_) => {
                lat.push(took);
                rejected += 1;
            }
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("Place failed: {e}");
                }
            }
        }
    }
    lat.sort();
    // Failed calls (e.g. the policy past its time budget) are counted, not timed.
    let p = |q: f64| lat.get(((lat.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default();
    println!(
        "Place over gRPC: {} answered of {n} at {rate}/s ({rejected} rejected, {failed} failed): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        p(1.0).as_secs_f64() * 1e3
    );
    Ok(())
}
