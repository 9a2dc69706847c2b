//! A hostile hive's clock: samples stamped `u64::MAX` ms with an uptime of `u64::MAX` s,
//! and stream stamps 2^63 ms ahead (past `i64::MAX`). The queen must neither overflow nor call
//! such a hive healthy: ListHives shows it degraded, saying why, and it stays managed.
//! Then the same hive with sane figures is healthy again.

mod common;

use common::scripted::*;
use common::*;
use rbee_proto::v1 as pb;
use tokio::sync::watch;

#[tokio::test]
async fn a_hive_reporting_implausible_times_is_degraded_with_reasons_and_the_queen_does_not_overflow() {
    let (sane_tx, sane_rx) = watch::channel(false);
    let hive = ScriptedHive::start(discover("liar", &["GPU-A"]), move |mut s| {
        let sane = sane_rx.clone();
        async move {
            // The stream stamps are 2^63 ms ahead: read as signed, just past i64::MIN.
            s.clock_offset_ms = i64::MIN;
            let _ = s.inbound.message().await;
            loop {
                let mut sample = sample(&["GPU-A"]);
                if *sane.borrow() {
                    s.clock_offset_ms = 0;
                    sample.uptime_s = Some(3_600);
                } else {
                    sample.taken_at_unix_ms = u64::MAX;
                    sample.uptime_s = Some(u64::MAX);
                }
                if !s.sample(sample).await {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    })
    .await;
    let queen = TestQueen::start(vec![hive.url.clone()]).await;
    let mut client = queen.client().await;

    let hives = wait_for(&mut client, "the liar degraded for its clock", |hs| {
        hs.first().is_some_and(|h| {
            online(h)
                && h.health() == pb::Health::Degraded
                && h.health_reasons.iter().any(|r| r.contains("s ahead of the queen's clock"))
        })
    })
    .await;
    let reasons = &hives[0].health_reasons;
    assert!(
        reasons.iter().any(|r| r.starts_with("implausible uptime 18446744073709551615 s")),
        "{reasons:?}"
    );
    let skew = hives[0].clock_skew_ms.expect("the stamp's skew is reported");
    assert!(skew > i64::MAX / 2, "2^63 ms ahead is far ahead, not behind: {skew}");

    sane_tx.send(true).unwrap();
    wait_for(&mut client, "the liar healthy once its figures are sane", |hs| {
        hs.first().is_some_and(|h| online(h) && h.health() == pb::Health::Healthy)
    })
    .await;
    queen.stop().await;
}
