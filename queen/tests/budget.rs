//! The fleet view under a flood stays readable by default clients (4 MiB a message):
//! hostile hives stuffing download records into compact `extras`, and failing
//! `FetchModel` calls against a real hive, directly and through `Scheduler.FetchModel`.
//! ListHives, WatchFleet and `queen hives` keep working, each flooded hive stays
//! managed, shown Degraded with a reason that says what was cut, and failing fetches
//! are limited per caller.

mod common;

use std::process::Command;

use common::scripted::{ScriptedHive, discover, sample};
use common::{TestHive, TestQueen, online, wait_for};
use rbee_hive::test_support::http_files::FileServer;
use rbee_hive::test_support::{QUEEN_IP, models_config};
use rbee_proto::v1 as pb;
use rbee_proto::v1::scheduler_client::SchedulerClient;
use rbee_shared::VersionedCapabilities;
use rbee_shared::compact::{Encoder, Layout};
use rbee_shared::view_budget::{MAX_DISCOVER_BYTES, MAX_FAILED_ENTRIES, MAX_RECORDS};

const QUEEN: &str = env!("CARGO_BIN_EXE_queen");
/// The limit of a default gRPC client.
const DEFAULT_CLIENT_LIMIT: usize = 4 << 20;

/// A failed download record of about 800 bytes.
fn record(i: usize) -> pb::DownloadProgress {
    pb::DownloadProgress {
        model_id: format!("flood-{i:05}"),
        phase: pb::DownloadPhase::Failed as i32,
        error: Some(format!("{i:05} {}", "e".repeat(760))),
        attempt: 1,
        updated_at_unix_ms: i as u64,
        ..Default::default()
    }
}

/// `Discover` of a hive whose catalog holds 3,000 failed entries with 1 KB errors
/// (~3 MB).
fn fat_discover(id: &str) -> pb::DiscoverResponse {
    let mut d = discover(id, &["g0"]);
    d.capabilities.as_mut().unwrap().models = (0..3000)
        .map(|i| pb::Model {
            id: format!("failed-{i:04}"),
            state: pb::ModelState::Failed as i32,
            error: Some("x".repeat(1000)),
            ..Default::default()
        })
        .collect();
    d
}

/// A hive with a fat catalog ([`fat_discover`]) that sends 4,096 download records of
/// ~800 B in its compact samples' extras (~3.3 MB: under the 4 MiB a hive message may
/// be; ~19 MB of view for three such hives).
async fn hostile(id: &'static str) -> ScriptedHive {
    ScriptedHive::start(fat_discover(id), move |mut script| async move {
        let caps = fat_discover(id).capabilities.unwrap();
        let layout = Layout::of(&VersionedCapabilities::try_from(&caps).unwrap());
        let mut encoder = Encoder::new();
        let downloads: Vec<pb::DownloadProgress> = (0..4096).map(record).collect();
        loop {
            let mut s = sample(&["g0"]);
            s.capability_version = Some(1);
            s.downloads = downloads.clone();
            let compact = encoder.encode(&s, &layout).unwrap();
            if !script.send(pb::hive_message::Payload::CompactSample(compact)).await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
}

fn cut_reason(h: &pb::HiveView, what: &str) -> bool {
    h.health() == pb::Health::Degraded && h.health_reasons.iter().any(|r| r.contains(what))
}

/// ListHives, the first WatchFleet snapshot (all its parts) and `queen hives` (table
/// and JSON), all through clients with the default 4 MiB limit. Returns the hives.
async fn the_view_reads_whole(queen: &TestQueen, expected: usize) -> Vec<pb::HiveView> {
    let mut client = queen.client().await;
    let page = client.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner();
    assert!(prost::Message::encoded_len(&page) < DEFAULT_CLIENT_LIMIT);
    assert_eq!(page.hives.len(), expected);
    assert!(
        page.hives.iter().all(|h| h.latest_sample.as_ref().is_none_or(|s| s.downloads.len() <= MAX_RECORDS))
    );

    let mut watch = client.watch_fleet(pb::WatchFleetRequest::default()).await.unwrap().into_inner();
    let mut seen = 0;
    loop {
        let event = watch.message().await.unwrap().expect("the watch goes on");
        let Some(pb::fleet_event::Event::Snapshot(part)) = event.event else { continue };
        seen += part.hives.len();
        if !part.more {
            break;
        }
    }
    assert_eq!(seen, expected, "the snapshot names every hive");

    let url = queen.url();
    let (table, json) = tokio::task::spawn_blocking(move || {
        let run = |extra: &[&str]| {
            let out = Command::new(QUEEN)
                .arg("hives")
                .args(extra)
                .args(["--queen", &url])
                .env_remove("QUEEN_TOKEN")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "queen hives {extra:?} failed: {err}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        (run(&[]), run(&["--json"]))
    })
    .await
    .unwrap();
    for h in &page.hives {
        assert!(table.contains(&h.hive_id), "{table}");
        assert!(json.contains(&h.hive_id));
    }
    page.hives
}

#[tokio::test]
async fn hostile_hives_stuffing_extras_are_cut_and_the_view_stays_readable() {
    let hives = [hostile("stuffer-a").await, hostile("stuffer-b").await, hostile("stuffer-c").await];
    let queen = TestQueen::start(hives.iter().map(|h| h.url.clone()).collect()).await;
    let mut client = queen.client().await;
    let cut = format!("downloads: kept {MAX_RECORDS} of 4096 records");
    let catalog_cut = format!("catalog: kept {MAX_FAILED_ENTRIES} of 3000 failed entries");
    wait_for(&mut client, "every stuffing hive online, degraded, saying what was cut", |hs| {
        hs.len() == 3 && hs.iter().all(|h| online(h) && cut_reason(h, &cut) && cut_reason(h, &catalog_cut))
    })
    .await;
    let seen = the_view_reads_whole(&queen, 3).await;
    for h in &seen {
        let s = h.latest_sample.as_ref().unwrap();
        assert_eq!(s.downloads.len(), MAX_RECORDS);
        assert!(s.cuts.iter().any(|c| c == &cut), "{:?}", s.cuts);
        assert_eq!(h.capabilities.as_ref().unwrap().models.len(), MAX_FAILED_ENTRIES);
    }
    queen.stop().await;
}

/// A fetch of a file the server does not have (404): the download fails at once.
fn missing(server: &FileServer, i: usize) -> pb::FetchModelRequest {
    pb::FetchModelRequest {
        model_id: format!("missing-{i:04}"),
        source: Some(pb::fetch_model_request::Source::Urls(pb::UrlSource {
            files: vec![pb::FileSource {
                url: server.url(&format!("missing-{i}.bin")),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn failing_fetches_on_a_hive_are_limited_per_caller_and_the_hive_stays_visible() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let hive = TestHive::start_with(models_config("flooded", dir.path(), None)).await;
    let queen = TestQueen::start(vec![hive.url()]).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "the hive online", |h| h.iter().any(online)).await;
    let mut direct = hive.client().await;

    // Each download fails at once (404); the hive refuses new ones from this caller
    // once its failures pile up.
    let mut refused = None;
    for i in 0..3000 {
        if let Err(status) = direct.fetch_model(missing(&server, i)).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("3,000 failing fetches, none refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("too many failed downloads"), "{}", refused.message());

    let hives = wait_for(&mut fleet, "the hive degraded, saying downloads were refused", |hs| {
        hs.iter().any(|h| online(h) && cut_reason(h, "new downloads refused"))
    })
    .await;
    assert_eq!(hives[0].state(), pb::HiveState::Online, "never lost for being big");
    the_view_reads_whole(&queen, 1).await;

    // A cut says what the view left out, not what the hive can run: it still places.
    let mut scheduler = SchedulerClient::connect(queen.url()).await.unwrap();
    let answer = scheduler
        .place(pb::PlaceRequest { vram_bytes: 1 << 30, dry_run: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(answer.result, Some(pb::place_response::Result::Placement(_))),
        "a hive with a cut view was refused placement: {answer:?}"
    );

    // What a queen that starts now would read first is within its budget.
    let discover = direct.discover(pb::DiscoverRequest {}).await.unwrap().into_inner();
    assert!(prost::Message::encoded_len(&discover) < MAX_DISCOVER_BYTES);
    let failed =
        discover.capabilities.unwrap().models.iter().filter(|m| m.state() == pb::ModelState::Failed).count();
    assert!(failed <= MAX_FAILED_ENTRIES, "{failed} failed entries");
    queen.stop().await;
}

#[tokio::test]
async fn failing_scheduler_fetches_are_limited_per_caller_at_the_queen() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start().await;
    let hive = TestHive::start_with(models_config("shared", dir.path(), None)).await;
    let queen = TestQueen::start(vec![hive.url()]).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "the hive online", |h| h.iter().any(online)).await;
    let fetch = |i| pb::ScheduleFetchRequest {
        hive: "shared".into(),
        fetch: Some(missing(&server, i)),
        ..Default::default()
    };

    // One caller's failing fetches are refused by the queen...
    let mut flooder = SchedulerClient::connect(queen.url()).await.unwrap();
    let mut accepted = 0;
    let refused = loop {
        match flooder.fetch_model(fetch(accepted)).await {
            Ok(_) => accepted += 1,
            Err(status) => break status,
        }
        assert!(accepted < 3000, "3,000 failing fetches, none refused");
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("from this caller"), "{}", refused.message());

    // ...before they use up what the hive allows the queen: another caller still fetches.
    let channel = tonic::transport::Endpoint::from_shared(queen.url())
        .unwrap()
        .local_address(Some(QUEEN_IP))
        .connect()
        .await
        .unwrap();
    let mut other = SchedulerClient::new(channel);
    let r = other.fetch_model(fetch(10_000)).await;
    assert!(r.is_ok(), "after {accepted} failing fetches of another caller: {r:?}");
    queen.stop().await;
}
