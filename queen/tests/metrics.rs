//! The queen's `/metrics`: promtool accepts it; a real Prometheus scrapes it and its
//! PromQL answers match what ListHives shows; every panel of the Grafana dashboard
//! returns data; the endpoint follows the queen's token and exposure rules; and idle
//! connections cannot starve a scrape.

mod common;

use common::metrics::{Prometheus, queen_with_metrics, queen_with_metrics_on, value};
use common::scheduling::{GIB, gpu_request};
use common::{TestHive, fast_config, online, wait_for};
use rbee_hive::test_support::{external_tool, http_get, promtool_check_metrics};
use rbee_proto::v1 as pb;
use rbee_proto::v1::scheduler_client::SchedulerClient;
use rbee_queen::api::auth::Tokens;
use rbee_shared::metrics_http::MetricsAccess;

/// One GPU with every reading (power too), VRAM use constant: 80 GiB, 3 GiB used.
const FULL_GPU: &str = r#"
[[gpu]]
id = "GPU-metrics-0"
name = "Sim H100"
vram_total = "80GiB"
power_limit_w = 700
util_percent = [30, 60]
vram_used = ["3GiB"]
temperature_c = [55, 60]
power_draw_w = [300, 350]
"#;

const READ: &str = "read-token-0123456789";
const WRITE: &str = "write-token-0123456789";

/// A hive, a queen serving metrics with it online, and a Scheduler client.
async fn fleet(
    hive_id: &str,
) -> (TestHive, common::TestQueen, std::net::SocketAddr, SchedulerClient<tonic::transport::Channel>) {
    let hive = TestHive::start_named(hive_id, FULL_GPU).await;
    let (queen, metrics) = queen_with_metrics(fast_config(vec![hive.url()]), MetricsAccess::default()).await;
    let mut client = queen.client().await;
    wait_for(&mut client, "the hive online with a sample", |hs| {
        hs.iter().all(|h| online(h) && h.latest_sample.is_some())
    })
    .await;
    let scheduler = SchedulerClient::connect(queen.url()).await.unwrap();
    (hive, queen, metrics, scheduler)
}

#[tokio::test]
async fn promtool_accepts_the_fleet_metrics() {
    let (hive, queen, metrics, mut scheduler) = fleet("promtool-hive").await;
    scheduler.place(gpu_request(GIB)).await.unwrap();
    scheduler.place(gpu_request(500 * GIB)).await.unwrap();
    let (status, text) = http_get(metrics, "/metrics", None).await;
    assert_eq!(status, 200, "{text}");
    for expected in [
        "rbee_hive_state{hive=\"promtool-hive\",state=\"online\"} 1",
        "rbee_hive_health{hive=\"promtool-hive\",health=\"healthy\"} 1",
        "rbee_gpu_memory_total_bytes{hive=\"promtool-hive\",gpu=\"0\",uuid=\"GPU-metrics-0\"} 85899345920",
        // 80 GiB - max(3 GiB used, 3 GiB baseline + 1 GiB reserved) = 76 GiB.
        "rbee_gpu_memory_placeable_bytes{hive=\"promtool-hive\",gpu=\"0\",uuid=\"GPU-metrics-0\"} 81604378624",
        "rbee_device_memory_reserved_bytes{hive=\"promtool-hive\",gpu=\"0\",uuid=\"GPU-metrics-0\"} 1073741824",
        "rbee_reservations{hive=\"promtool-hive\",state=\"active\"} 1",
        "rbee_place_requests_total{outcome=\"placed\"} 1",
        "rbee_place_requests_total{outcome=\"rejected\"} 1",
        "rbee_place_duration_seconds_count 2",
        "rbee_hive_labels_info{hive=\"promtool-hive\",label_zone=\"test\"} 1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // The queen's freshness: every applied sample's age at publish is in the histogram.
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("rbee_queen_sample_publish_delay_seconds_count "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no publish delay count in:\n{text}"));
    assert!(count >= 1, "{text}");
    assert!(text.contains("rbee_queen_sample_publish_delay_seconds_bucket{le=\"0.1\"}"), "{text}");
    promtool_check_metrics(&text);
    queen.stop().await;
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn prometheus_scrapes_the_queen_and_every_dashboard_panel_has_data() {
    let Some(binary) = external_tool("prometheus", "apt-get install prometheus") else { return };
    let (hive, queen, metrics, mut scheduler) = fleet("prom-hive").await;
    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(&binary, dir.path(), metrics).await;

    // What ListHives shows...
    let mut client = queen.client().await;
    let hives = client.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives;
    let total = hives[0].capabilities.as_ref().unwrap().gpus[0].vram_total_bytes;
    let used = hives[0].latest_sample.as_ref().unwrap().gpus[0].vram_used_bytes.unwrap();
    // ...is what PromQL answers.
    let r = prometheus.query_until("rbee_gpu_memory_total_bytes{hive=\"prom-hive\"}", |r| r.len() == 1).await;
    assert_eq!(value(&r[0]) as u64, total);
    assert_eq!(r[0]["metric"]["uuid"], "GPU-metrics-0");
    let r = prometheus.query("rbee_gpu_memory_used_bytes{hive=\"prom-hive\"}").await;
    assert_eq!(value(&r[0]) as u64, used);

    // Placements spread over several scrapes, so that rates and quantiles have data.
    for n in 1..=3u64 {
        scheduler.place(gpu_request(GIB)).await.unwrap();
        let expr = "rbee_place_requests_total{outcome=\"placed\"}";
        prometheus.query_until(expr, |r| r.len() == 1 && value(&r[0]) as u64 == n).await;
    }
    let r = prometheus.query("sum(rbee_device_memory_reserved_bytes)").await;
    assert_eq!(value(&r[0]) as u64, 3 * GIB);

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/rbee-fleet.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let result = prometheus.query_until(expr, |r| !r.is_empty()).await;
            assert!(
                result.iter().all(|r| value(r).is_finite()),
                "panel {:?}: {expr} has no finite value: {result:?}",
                panel["title"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} expressions in the dashboard");
    drop(prometheus);
    queen.stop().await;
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn beyond_loopback_the_metrics_need_a_token() {
    let hive = TestHive::start_named("auth-hive", FULL_GPU).await;
    let tokens = Tokens::new(Some(READ), Some(WRITE));
    let config = rbee_queen::QueenConfig { tokens: tokens.clone(), ..fast_config(vec![hive.url()]) };
    let (queen, metrics) = queen_with_metrics_on("0.0.0.0", config, tokens.metrics_access()).await;
    let _ = queen.client().await;
    let (status, body) = http_get(metrics, "/metrics", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("bearer token"), "{body}");
    assert_eq!(http_get(metrics, "/metrics", Some("not-the-token-0123456789")).await.0, 401);
    assert_eq!(http_get(metrics, "/metrics", Some(READ)).await.0, 200);
    assert_eq!(http_get(metrics, "/metrics", Some(WRITE)).await.0, 200);
    queen.stop().await;
    hive.stop().await.unwrap();
}

#[test]
fn metrics_beyond_loopback_are_refused_without_tokens() {
    use rbee_queen::config::ServeArgs;
    let dir = tempfile::tempdir().unwrap();
    let args = |metrics: &str, insecure: bool| ServeArgs {
        metrics_listen: Some(metrics.parse().unwrap()),
        insecure,
        state_dir: Some(dir.path().to_owned()),
        ..Default::default()
    };
    let err = args("0.0.0.0:7834", false).into_config().unwrap_err().to_string();
    assert!(err.contains("refusing to serve metrics on 0.0.0.0:7834"), "{err}");
    let (_, config) = args("0.0.0.0:7834", true).into_config().unwrap();
    assert!(config.metrics.is_some());
    let (_, config) = args("127.0.0.1:7834", false).into_config().unwrap();
    assert!(!config.metrics.unwrap().access.enabled(), "loopback without tokens is open");
    let none = ServeArgs { no_metrics: true, state_dir: Some(dir.path().to_owned()), ..Default::default() };
    assert!(none.into_config().unwrap().1.metrics.is_none());
}

/// True while the server has not closed `s` (a non-blocking peek would wait).
fn still_open(s: &std::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(s.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn idle_connections_cannot_starve_a_scrape_of_the_queen() {
    let (queen, addr) = queen_with_metrics(fast_config(vec![]), MetricsAccess::default()).await;
    let idle: Vec<std::net::TcpStream> = (0..2 * rbee_shared::metrics_http::MAX_CONNECTIONS)
        .map(|_| {
            let s = std::net::TcpStream::connect(addr).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let scrape = tokio::time::timeout(std::time::Duration::from_secs(120), http_get(addr, "/metrics", None));
    let (status, text) = scrape.await.expect("the scrape is answered");
    assert_eq!(status, 200, "{text}");
    assert!(idle.iter().any(still_open), "the scrape waited until every idle connection had been closed");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    while idle.iter().any(still_open) {
        assert!(tokio::time::Instant::now() < deadline, "idle connections left open");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    queen.stop().await;
}
