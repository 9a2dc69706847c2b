//! Capability rescans: a change is published within the rescan interval whether or not
//! streams sample, and while they sample the rescan rides on their measurements instead
//! of taking a blocking thread of its own every interval.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbee_hive::HiveError;
use rbee_hive::monitor::{Monitor, Telemetry};
use rbee_hive::source::DeviceSource;
use rbee_shared::{Capabilities, DeviceSourceKind, Sample};
use tokio_util::sync::CancellationToken;

/// What the source saw, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Sample,
    Scan,
}

type Log = Arc<Mutex<Vec<(Instant, Event)>>>;

/// A host source whose CPU model the test changes; it logs every read.
struct Changing {
    model: Arc<Mutex<String>>,
    log: Log,
}

impl DeviceSource for Changing {
    fn kind(&self) -> DeviceSourceKind {
        DeviceSourceKind::None
    }

    fn scan(&mut self, caps: &mut Capabilities) -> Result<(), HiveError> {
        self.log.lock().unwrap().push((Instant::now(), Event::Scan));
        caps.cpu.model = self.model.lock().unwrap().clone();
        Ok(())
    }

    fn sample(&mut self, _sample: &mut Sample) -> Result<(), HiveError> {
        self.log.lock().unwrap().push((Instant::now(), Event::Sample));
        Ok(())
    }
}

const EVERY: Duration = Duration::from_millis(100);

/// Waits (up to a deadline) until the published CPU model is `want`.
async fn published(telemetry: &Telemetry, want: &str) {
    let mut rx = telemetry.watch_capabilities();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|c| c.caps.cpu.model == want))
        .await
        .unwrap_or_else(|_| panic!("CPU model {want:?} not published within 5 s"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_rescanned_idle_and_while_sampling_and_sampling_does_the_rescan() {
    let model = Arc::new(Mutex::new("a".to_owned()));
    let log: Log = Arc::default();
    let source = Changing { model: model.clone(), log: log.clone() };
    let monitor = Monitor::from_sources(vec![Box::new(source)], BTreeMap::new());
    let telemetry = Telemetry::start(monitor).await.unwrap();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    tokio::spawn(telemetry.clone().rescan_loop(EVERY, cancel.clone()));

    // No stream samples: the loop rescans on its own.
    *model.lock().unwrap() = "b".into();
    published(&telemetry, "b").await;

    // A stream samples at the rescan interval, out of phase with the loop's last scan.
    tokio::time::sleep(EVERY / 2).await;
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut from = 0;
    for i in 0..30 {
        ticker.tick().await;
        telemetry.sample().await.unwrap();
        if i == 5 {
            *model.lock().unwrap() = "c".into();
        }
        if i == 14 {
            // The loop's schedule drifts onto the samples' within 10 intervals.
            from = log.lock().unwrap().len();
        }
    }
    published(&telemetry, "c").await;

    // From then on the scans came right after a reading, on the measurement's thread,
    // not on the loop's schedule (a sample more than 10% late on a loaded machine lets
    // the loop scan first, so only most of them are asked for).
    let events = log.lock().unwrap()[from..].to_vec();
    let scans = events.iter().filter(|(_, e)| *e == Event::Scan).count();
    let after_a_reading = events
        .windows(2)
        .filter(|w| {
            w[0].1 == Event::Sample && w[1].1 == Event::Scan && w[1].0 - w[0].0 < Duration::from_millis(20)
        })
        .count();
    assert!(scans >= 8, "capabilities were rescanned only {scans} times in 15 intervals: {events:?}");
    assert!(
        after_a_reading * 2 >= scans,
        "only {after_a_reading} of {scans} rescans rode on a measurement: {events:?}"
    );
}
