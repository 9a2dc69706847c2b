//! Issue 9, freshness and consistency, on the real server with the generated client:
//! every sample matches the capabilities the stream has delivered, and `taken_at`
//! strictly increases on a stream.

mod common;

use std::collections::BTreeSet;

use common::*;
use rbee_proto::v1 as pb;
use tokio::time::Instant;

/// `cycles` GPUs that each appear and go again, one after the other, after a static one.
fn hot_plug_scenario(cycles: usize, first_s: f64, period_s: f64, present_s: f64) -> String {
    let mut s = String::from("[[gpu]]\nid = \"GPU-base\"\nvram_total = \"24GiB\"\nutil_percent = [5]\n");
    for i in 0..cycles {
        let at = first_s + i as f64 * period_s;
        s.push_str(&format!(
            "[[gpu]]\nid = \"GPU-hot-{i}\"\nindex = {}\nvram_total = \"48GiB\"\nutil_percent = [50]\n\
             appear_at_s = {at:.3}\nremove_at_s = {:.3}\n",
            i + 1,
            at + present_s
        ));
    }
    s
}

fn ids<'a>(ids: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    ids.into_iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_matches_the_capabilities_delivered_through_100_hot_plug_cycles() {
    const CYCLES: usize = 100;
    let (first, period, present) = (0.5, 0.09, 0.05);
    let mut config = config("hotplug-hive", &hot_plug_scenario(CYCLES, first, period, present));
    // Rescans at another pace than the samples, so that a sample often sees a GPU the
    // last rescan did not.
    config.rescan_interval = std::time::Duration::from_millis(70);
    let hive = TestHive::start_with(config).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;

    let snapshot = as_snapshot(&stream.next().await.unwrap()).expect("a snapshot first");
    let caps = snapshot.capabilities.unwrap();
    let mut held_version = caps.version;
    let mut held: BTreeSet<String> = ids(caps.gpus.iter().map(|g| &g.id));

    let end = Instant::now()
        + std::time::Duration::from_secs_f64(first + CYCLES as f64 * period + 0.5)
        + std::time::Duration::from_millis(300);
    let (mut samples, mut with_hot_gpu, mut diffs) = (0, 0, 0);
    while Instant::now() < end {
        let m = stream.next().await.unwrap();
        match m.payload.unwrap() {
            pb::hive_message::Payload::Diff(d) => {
                assert_eq!(d.base_version, held_version, "a diff applies to the held version");
                for g in &d.gpus_added {
                    assert!(held.insert(g.id.clone()), "{} added twice", g.id);
                }
                for id in &d.gpus_removed {
                    assert!(held.remove(id), "{id} removed but not held");
                }
                held_version = d.new_version;
                diffs += 1;
            }
            pb::hive_message::Payload::Sample(s) => {
                assert_eq!(
                    s.capability_version,
                    Some(held_version),
                    "sample seq {} is stamped with the version the stream delivered",
                    m.seq
                );
                let seen = ids(s.gpus.iter().map(|g| &g.id));
                assert_eq!(seen, held, "sample seq {} names exactly the delivered GPUs", m.seq);
                samples += 1;
                if seen.len() > 1 {
                    with_hot_gpu += 1;
                }
            }
            pb::hive_message::Payload::Snapshot(_) => panic!("no resync was asked for"),
            pb::hive_message::Payload::CompactSample(_) => panic!("compact samples were not asked for"),
        }
    }
    assert!(samples >= 50, "{samples} samples");
    assert!(diffs >= 20, "hot-plug was exercised: {diffs} diffs");
    assert!(with_hot_gpu >= 5, "samples saw hot-plugged GPUs: {with_hot_gpu}");
    hive.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_at_strictly_increases_when_a_reading_is_slower_than_the_interval() {
    // Each reading takes 250 ms; the caller asks for one every 100 ms.
    let scenario = format!("sample_latency_s = 0.25\n{ONE_GPU}");
    let hive = TestHive::start(&scenario).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    assert!(as_snapshot(&stream.next().await.unwrap()).is_some());
    let mut taken = Vec::new();
    while taken.len() < 8 {
        taken.push(stream.until(as_sample).await.taken_at_unix_ms);
    }
    assert!(taken.windows(2).all(|w| w[1] > w[0]), "taken_at must strictly increase: {taken:?}");
    hive.stop().await.unwrap();
}
