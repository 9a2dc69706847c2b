//! A `WatchFleet` client for the load curve (issue 13, `docs/bench/scale.sh`): it
//! measures from the events a real client gets, so no polling of `ListHives` (and no
//! JSON printing) sits in the figures.
//!
//!     fleet_probe URL until STATE COUNT [TIMEOUT_S]
//!
//! Waits (retrying the connection until the queen answers) until at least COUNT hives
//! are in STATE (`online`, `lost`, `stale`, `connecting`, `pending`), kept current
//! from the snapshot and the state events; prints `ready` once it has the snapshot,
//! then `reached UNIX_SECONDS` (the moment it saw the count) and exits 0, or exits 1
//! after TIMEOUT_S (default 300) printing how many it saw.
//!
//!     fleet_probe URL watch SECONDS [INTERVAL_MS]
//!
//! Watches with samples at INTERVAL_MS (default 1000) for SECONDS and prints: samples
//! per second (first and last full seconds), each sample's age when the queen sent it
//! (the event's queen time minus the hive's `taken_at`, which includes the watcher's
//! own coalescing of up to INTERVAL_MS), and the client's lag (its receive time minus
//! the queen's send time) at the start and the end: a growing lag is a client that
//! does not keep up.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rbee_proto::v1 as pb;
use rbee_proto::v1::fleet_client::FleetClient;
use tonic::transport::Channel;

type Event = pb::fleet_event::Event;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

async fn connect(url: &str, timeout: Duration) -> Result<FleetClient<Channel>, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + timeout;
    loop {
        match FleetClient::connect(url.to_owned()).await {
            Ok(c) => return Ok(c.max_decoding_message_size(1 << 30)),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn state(name: &str) -> Result<pb::HiveState, String> {
    pb::HiveState::from_str_name(&format!("HIVE_STATE_{}", name.to_ascii_uppercase()))
        .ok_or_else(|| format!("unknown state {name:?}: online, lost, stale, connecting or pending"))
}

async fn until(
    url: &str,
    want: pb::HiveState,
    count: usize,
    timeout: Duration,
) -> Result<bool, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + timeout;
    let mut client = connect(url, timeout).await?;
    let mut events = client.watch_fleet(pb::WatchFleetRequest::default()).await?.into_inner();
    let mut tally = Tally { want, states: HashMap::new(), seen: 0 };
    let mut ready = false;
    loop {
        if ready && tally.seen >= count {
            let at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
            println!("reached {at:.3}");
            return Ok(true);
        }
        let e = match tokio::time::timeout_at(deadline.into(), events.message()).await {
            Ok(e) => e?.ok_or("the watch ended")?,
            Err(_) => {
                println!("timeout: {} of {count} hives {}", tally.seen, want.as_str_name());
                return Ok(false);
            }
        };
        match e.event {
            Some(Event::Snapshot(s)) => {
                tally.states.clear();
                tally.seen = 0;
                for h in &s.hives {
                    tally.set(&h.address, Some(h.state()));
                }
                if !ready {
                    ready = true;
                    println!("ready");
                }
            }
            Some(Event::HiveAdded(h)) => tally.set(&h.address, Some(h.state())),
            Some(Event::HiveRemoved(h)) => tally.set(&h.address, None),
            Some(Event::StateChanged(c)) => tally.set(&c.address, Some(c.to())),
            _ => {}
        }
    }
}

/// Each hive's state, and how many are in the wanted one (kept as states change, not
/// recounted per event: a cold start of 10,000 hives sends tens of thousands).
struct Tally {
    /// The state counted.
    want: pb::HiveState,
    /// By address.
    states: HashMap<String, pb::HiveState>,
    /// How many are in `want`.
    seen: usize,
}

impl Tally {
    /// Sets a hive's state (`None`: removed).
    fn set(&mut self, address: &str, to: Option<pb::HiveState>) {
        let from = match to {
            Some(to) => self.states.insert(address.to_owned(), to),
            None => self.states.remove(address),
        };
        self.seen = self.seen - usize::from(from == Some(self.want)) + usize::from(to == Some(self.want));
    }
}

/// The value at quantile `q` of sorted `v`.
fn pct(v: &[u64], q: f64) -> u64 {
    v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default()
}

async fn watch(url: &str, seconds: u64, interval_ms: u32) -> Result<(), Box<dyn std::error::Error>> {
    let mut client = connect(url, Duration::from_secs(10)).await?;
    let req = pb::WatchFleetRequest { sample_interval_ms: Some(interval_ms), ..Default::default() };
    let mut events = client.watch_fleet(req).await?.into_inner();
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let (mut ages, mut per_second, mut lags) = (Vec::new(), Vec::<u64>::new(), Vec::<(u64, u64)>::new());
    while let Ok(e) = tokio::time::timeout_at(end.into(), events.message()).await {
        let Some(e) = e? else { break };
        let Some(Event::Sample(s)) = &e.event else { continue };
        let Some(sample) = &s.sample else { continue };
        let second = start.elapsed().as_secs() as usize;
        if per_second.len() <= second {
            per_second.resize(second + 1, 0);
        }
        per_second[second] += 1;
        ages.push(e.queen_time_unix_ms.saturating_sub(sample.taken_at_unix_ms));
        lags.push((second as u64, now_ms().saturating_sub(e.queen_time_unix_ms)));
    }
    ages.sort_unstable();
    let full = per_second.len().saturating_sub(1);
    let lag_at = |from: u64, to: u64| {
        let mut v: Vec<u64> = lags.iter().filter(|(s, _)| (from..to).contains(s)).map(|(_, l)| *l).collect();
        v.sort_unstable();
        pct(&v, 0.99)
    };
    let last = full as u64;
    println!(
        "WatchFleet at {interval_ms} ms: {} samples in {seconds} s; per second: first {}, last {}; \
         sample age at send p50 {} ms, p99 {} ms, max {} ms; client lag p99 {} ms (first 5 s), {} ms (last 5 s)",
        ages.len(),
        per_second.get(1).copied().unwrap_or_default(),
        full.checked_sub(1).and_then(|i| per_second.get(i)).copied().unwrap_or_default(),
        pct(&ages, 0.5),
        pct(&ages, 0.99),
        pct(&ages, 1.0),
        lag_at(0, 5),
        lag_at(last.saturating_sub(5), last),
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: fleet_probe URL until STATE COUNT [TIMEOUT_S] | fleet_probe URL watch SECONDS [INTERVAL_MS]";
    let (Some(url), Some(mode)) = (args.first(), args.get(1)) else { return Err(usage.into()) };
    match mode.as_str() {
        "until" => {
            let want = state(args.get(2).ok_or(usage)?)?;
            let count: usize = args.get(3).ok_or(usage)?.parse()?;
            let timeout = Duration::from_secs(args.get(4).map_or(Ok(300), |a| a.parse())?);
            if !until(url, want, count, timeout).await? {
                std::process::exit(1);
            }
        }
        "watch" => {
            let seconds: u64 = args.get(2).ok_or(usage)?.parse()?;
            let interval_ms: u32 = args.get(3).map_or(Ok(1000), |a| a.parse())?;
            watch(url, seconds, interval_ms).await?;
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}
