//! The queen's `/metrics`: promtool accepts it; a real Prometheus scrapes it (and the
//! hive's own endpoint) and its PromQL answers match what ListHives shows, each GPU
//! counted once; the Grafana dashboard provisions from files and every panel returns
//! data; the alert rules pass promtool's checks and unit tests; the endpoint follows
//! the queen's token and exposure rules; and idle connections cannot starve a scrape.

mod common;

use common::metrics::{Prometheus, queen_with_metrics, queen_with_metrics_on, value};
use common::scheduling::{GIB, gpu_request};
use common::{TestHive, fast_config, online, wait_for};
use rbee_hive::test_support::{external_tool, http_get, promtool_check_metrics};
use rbee_proto::v1 as pb;
use rbee_proto::v1::scheduler_client::SchedulerClient;
use rbee_queen::api::auth::Tokens;
use rbee_shared::metrics_http::{MetricsAccess, MetricsEndpoint};

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
        "rbee_hive_state{source=\"queen\",hive=\"promtool-hive\",state=\"online\"} 1",
        "rbee_hive_health{source=\"queen\",hive=\"promtool-hive\",health=\"healthy\"} 1",
        "rbee_gpu_memory_total_bytes{source=\"queen\",hive=\"promtool-hive\",gpu=\"0\",uuid=\"GPU-metrics-0\"} 85899345920",
        // 80 GiB - max(3 GiB used, 3 GiB baseline + 1 GiB reserved) = 76 GiB.
        "rbee_gpu_memory_placeable_bytes{source=\"queen\",hive=\"promtool-hive\",gpu=\"0\",uuid=\"GPU-metrics-0\"} 81604378624",
        "rbee_device_memory_reserved_bytes{source=\"queen\",hive=\"promtool-hive\",gpu=\"0\",uuid=\"GPU-metrics-0\"} 1073741824",
        "rbee_reservations{source=\"queen\",hive=\"promtool-hive\",state=\"active\"} 1",
        "rbee_place_requests_total{source=\"queen\",outcome=\"placed\"} 1",
        "rbee_place_requests_total{source=\"queen\",outcome=\"rejected\"} 1",
        "rbee_place_duration_seconds_count{source=\"queen\"} 2",
        "rbee_hive_labels_info{source=\"queen\",hive=\"promtool-hive\",label_zone=\"test\"} 1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // The queen's freshness: every applied sample's age at publish is in the histogram.
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("rbee_queen_sample_publish_delay_seconds_count{source=\"queen\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no publish delay count in:\n{text}"));
    assert!(count >= 1, "{text}");
    assert!(
        text.contains("rbee_queen_sample_publish_delay_seconds_bucket{source=\"queen\",le=\"0.1\"}"),
        "{text}"
    );
    for help in text.lines().filter(|l| l.starts_with("# HELP ")) {
        assert!(!help.ends_with(".."), "{help}");
    }
    promtool_check_metrics(&text);
    queen.stop().await;
    hive.stop().await.unwrap();
}

/// A simulated two-socket box (`pcie2x4`) of three GPUs: 0-1 over NVLink, 2 alone.
const LINKED: &str = r#"
topology = "pcie2x4"
[[gpu]]
id = "GPU-l0"
vram_total = "80GiB"
vram_used = ["1GiB"]
[[gpu]]
id = "GPU-l1"
vram_total = "80GiB"
vram_used = ["1GiB"]
[[gpu]]
id = "GPU-l2"
vram_total = "80GiB"
vram_used = ["1GiB"]
"#;

#[tokio::test]
async fn nvlink_peers_are_one_info_series_per_linked_pair_and_direction() {
    let hive = TestHive::start_named("linked", LINKED).await;
    let (queen, metrics) = queen_with_metrics(fast_config(vec![hive.url()]), MetricsAccess::default()).await;
    let mut client = queen.client().await;
    wait_for(&mut client, "the hive online", |hs| hs.iter().all(|h| online(h) && h.capabilities.is_some()))
        .await;
    let (status, text) = http_get(metrics, "/metrics", None).await;
    assert_eq!(status, 200, "{text}");
    let series: Vec<&str> = text.lines().filter(|l| l.starts_with("rbee_gpu_nvlink_peer_info{")).collect();
    assert_eq!(
        series,
        [
            "rbee_gpu_nvlink_peer_info{source=\"queen\",hive=\"linked\",gpu=\"0\",uuid=\"GPU-l0\",peer=\"1\",peer_uuid=\"GPU-l1\",links=\"4\"} 1",
            "rbee_gpu_nvlink_peer_info{source=\"queen\",hive=\"linked\",gpu=\"1\",uuid=\"GPU-l1\",peer=\"0\",peer_uuid=\"GPU-l0\",links=\"4\"} 1",
        ],
        "GPU 2 has no NVLink peer: no series"
    );
    promtool_check_metrics(&text);
    queen.stop().await;
    hive.stop().await.unwrap();
}

/// A hive (GPU with every reading, a models directory) serving its own `/metrics` too.
async fn hive_with_own_metrics(id: &str, models: &std::path::Path) -> (TestHive, std::net::SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = rbee_hive::test_support::config(id, FULL_GPU);
    config.models = Some(rbee_hive::models::ModelsConfig::new(models));
    config.metrics = Some(MetricsEndpoint {
        listen: addr,
        listener: Some(std::sync::Arc::new(listener)),
        access: MetricsAccess::default(),
    });
    (TestHive::start_with(config).await, addr)
}

/// A Prometheus that scrapes the hive's own `/metrics` as well as the queen's (as
/// `docs/metrics.md` allows) still counts each GPU once in every documented query and
/// dashboard panel, and the documented label join works; every panel of the dashboard,
/// its variables expanded as Grafana would, returns data on a fleet with one reservation.
#[tokio::test]
async fn prometheus_scrapes_the_queen_and_every_dashboard_panel_has_data() {
    let Some(binary) = external_tool("prometheus", "apt-get install prometheus") else { return };
    let models = tempfile::tempdir().unwrap();
    let (hive, hive_metrics) = hive_with_own_metrics("prom-hive", models.path()).await;
    let (queen, metrics) = queen_with_metrics(fast_config(vec![hive.url()]), MetricsAccess::default()).await;
    let mut client = queen.client().await;
    wait_for(&mut client, "the hive online with a sample", |hs| {
        hs.iter().all(|h| online(h) && h.latest_sample.is_some())
    })
    .await;
    let mut scheduler = SchedulerClient::connect(queen.url()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let targets = [("rbee-queen", metrics), ("rbee-hive", hive_metrics)];
    let prometheus = Prometheus::start_scraping(&binary, dir.path(), &targets).await;

    // What ListHives shows...
    let hives = client.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives;
    let total = hives[0].capabilities.as_ref().unwrap().gpus[0].vram_total_bytes;
    let used = hives[0].latest_sample.as_ref().unwrap().gpus[0].vram_used_bytes.unwrap();
    // ...is what PromQL answers, though both endpoints export the GPU.
    prometheus.query_until("rbee_gpu_memory_total_bytes{hive=\"prom-hive\"}", |r| r.len() == 2).await;
    let r = prometheus.query("sum(rbee_gpu_memory_total_bytes{source=\"queen\"})").await;
    assert_eq!(value(&r[0]) as u64, total, "one GPU counted once");
    let r = prometheus.query("rbee_gpu_memory_total_bytes{source=\"queen\",hive=\"prom-hive\"}").await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["metric"]["uuid"], "GPU-metrics-0");
    let r = prometheus.query("rbee_gpu_memory_used_bytes{source=\"queen\",hive=\"prom-hive\"}").await;
    assert_eq!(value(&r[0]) as u64, used);
    // The documented label join (docs/metrics.md) has one series per side: no "duplicate series".
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md")).unwrap();
    let join =
        docs.split("```promql\n").nth(1).and_then(|b| b.split("```").next()).expect("the join in the docs");
    let r = prometheus.query(join).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["metric"]["label_zone"], "test");
    assert_eq!(value(&r[0]) as u64, total);
    // An idle fleet reads 0 reserved, not "no data".
    let r = prometheus.query_until("sum(rbee_reservations{source=\"queen\"})", |r| r.len() == 1).await;
    assert_eq!(value(&r[0]), 0.0);

    // Placements spread over several scrapes, so that rates and quantiles have data.
    for n in 1..=3u64 {
        scheduler.place(gpu_request(GIB)).await.unwrap();
        let expr = "rbee_place_requests_total{source=\"queen\",outcome=\"placed\"}";
        prometheus.query_until(expr, |r| r.len() == 1 && value(&r[0]) as u64 == n).await;
    }
    let r = prometheus.query("sum(rbee_device_memory_reserved_bytes{source=\"queen\"})").await;
    assert_eq!(value(&r[0]) as u64, 3 * GIB);

    let dashboard = dashboard();
    // The variables, as Grafana resolves them: the label filter's default, then the hives
    // it matches (All: every one of them, as a regex alternation).
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let var = |name: &str| variables.iter().find(|v| v["name"] == name).unwrap();
    let labels = var("labels")["query"].as_str().unwrap();
    let hive_query = var("hive")["definition"].as_str().unwrap();
    let selector = hive_query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(", hive)"))
        .unwrap_or_else(|| panic!("hive variable: {hive_query}"));
    let hives_of = |filter: &str| selector.replace("$labels", filter);
    let found = prometheus.query_until(&hives_of(labels), |r| !r.is_empty()).await;
    let names: Vec<&str> = found.iter().map(|r| r["metric"]["hive"].as_str().unwrap()).collect();
    assert_eq!(names, ["prom-hive"], "one hive, though two endpoints are scraped");
    assert_eq!(prometheus.query(&hives_of("label_zone=\"test\"")).await.len(), 1);
    assert!(prometheus.query(&hives_of("label_zone=\"elsewhere\"")).await.is_empty());
    let all = format!("({})", names.join("|"));

    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$hive", &all);
            let result = prometheus.query_until(&expr, |r| !r.is_empty()).await;
            assert!(
                result.iter().all(|r| value(r).is_finite()),
                "panel {:?}: {expr} has no finite value: {result:?}",
                panel["title"]
            );
            // Each GPU and hive once: no panel sees the hive's own endpoint.
            assert!(result.iter().all(|r| r["metric"]["source"] != "hive"), "{expr}: {result:?}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} expressions in the dashboard");
    drop(prometheus);
    queen.stop().await;
    hive.stop().await.unwrap();
}

/// The dashboard file.
fn dashboard() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/rbee-fleet.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every selector of an `rbee_` metric in `expr`: the metric's name and what is between
/// its braces (`None`: no braces).
fn selectors(expr: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("rbee_") {
        let tail = &rest[at..];
        let len = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let (name, after) = tail.split_at(len);
        let braces = after.strip_prefix('{').and_then(|a| a.find('}').map(|end| a[..end].to_owned()));
        out.push((name.to_owned(), braces));
        rest = after;
    }
    out
}

/// The structure Grafana needs to provision the dashboard from a file, unedited: a
/// datasource variable every panel and query uses (no `${DS_...}` import input), hive and
/// label filters, and in every expression each rbee series selected from the queen only
/// (`source="queen"`) and, where it has a hive, from the chosen hives.
#[test]
fn the_dashboard_provisions_from_files() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/rbee-fleet.json");
    let text = std::fs::read_to_string(path).unwrap();
    assert!(!text.contains("${DS_"), "an import-only datasource input: provisioning cannot fill it");
    let d = dashboard();
    assert!(d["uid"].is_string() && d["title"].is_string(), "uid and title");
    let variables = d["templating"]["list"].as_array().expect("templating.list");
    let ds = variables
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .expect("a Prometheus datasource variable");
    let uid = format!("${{{}}}", ds["name"].as_str().unwrap());
    let refers = |v: &serde_json::Value| v["type"] == "prometheus" && v["uid"] == uid.as_str();
    let hive = variables.iter().find(|v| v["name"] == "hive").expect("a hive variable");
    assert_eq!(hive["type"], "query");
    assert!(refers(&hive["datasource"]), "hive variable datasource: {}", hive["datasource"]);
    assert!(hive["multi"] == true && hive["includeAll"] == true, "{hive}");
    let definition = hive["definition"].as_str().unwrap();
    assert_eq!(hive["query"]["query"], definition);
    assert!(definition.contains("source=\"queen\"") && definition.contains("$labels"), "{definition}");
    let labels = variables.iter().find(|v| v["name"] == "labels").expect("a label filter variable");
    assert_eq!(labels["type"], "textbox");
    assert!(!labels["query"].as_str().unwrap().is_empty(), "the label filter needs a valid default");

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = std::collections::BTreeSet::new();
    for panel in panels {
        let title = &panel["title"];
        assert!(ids.insert(panel["id"].as_u64().expect("a panel id")), "duplicate id: {title}");
        assert!(panel["gridPos"]["w"].is_u64() && panel["gridPos"]["h"].is_u64(), "{title}: gridPos");
        assert!(refers(&panel["datasource"]), "{title}: datasource {}", panel["datasource"]);
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            assert!(refers(&target["datasource"]), "{title}: target datasource {}", target["datasource"]);
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title}: empty expr");
            assert!(target["refId"].is_string(), "{title}: refId");
            let found = selectors(expr);
            assert!(!found.is_empty(), "{title}: {expr} reads no rbee series");
            for (name, braces) in found {
                let braces = braces.unwrap_or_else(|| panic!("{title}: {name} unfiltered in {expr}"));
                assert!(braces.contains("source=\"queen\""), "{title}: {name} without source=\"queen\"");
                let fleet_wide = ["rbee_place_", "rbee_policy_"].iter().any(|p| name.starts_with(p));
                assert!(
                    fleet_wide || braces.contains("hive=~\"$hive\""),
                    "{title}: {name} not filtered by the hive variable"
                );
            }
        }
    }
}

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");

/// The expressions of a Prometheus rules file (`expr: ...` and `expr: |` blocks).
fn rule_exprs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else { continue };
        if rest.trim() != "|" {
            out.push(rest.trim().to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        while let Some(next) =
            lines.next_if(|l| l.len() - l.trim_start().len() > indent || l.trim().is_empty())
        {
            block.push_str(next.trim());
            block.push(' ');
        }
        out.push(block.trim().to_owned());
    }
    out
}

/// `deploy/prometheus/rules.yml` passes `promtool check rules`; `promtool test rules`
/// runs `rules.test.yml`, which covers every alert; and every rule reads the queen's
/// series only (`source="queen"`), so scraping the hives too never doubles an alert.
#[test]
fn the_alert_rules_pass_promtool_and_are_all_tested() {
    let rules = std::fs::read_to_string(format!("{RULES}/rules.yml")).unwrap();
    let tests = std::fs::read_to_string(format!("{RULES}/rules.test.yml")).unwrap();
    let alerts: Vec<&str> =
        rules.lines().filter_map(|l| l.trim().strip_prefix("- alert:")).map(str::trim).collect();
    for wanted in [
        "RbeeHiveLost",
        "RbeeGpuLost",
        "RbeeGpuXid",
        "RbeeSamplesStale",
        "RbeeVramPlaceableLow",
        "RbeeDownloadsFailing",
    ] {
        assert!(alerts.contains(&wanted), "no {wanted} in rules.yml: {alerts:?}");
    }
    for alert in &alerts {
        assert!(tests.contains(&format!("alertname: {alert}\n")), "rules.test.yml does not test {alert}");
    }
    let exprs = rule_exprs(&rules);
    assert_eq!(exprs.len(), alerts.len(), "{exprs:?}");
    for expr in &exprs {
        for (name, braces) in selectors(expr) {
            let braces = braces.unwrap_or_else(|| panic!("{name} unfiltered in {expr}"));
            assert!(braces.contains("source=\"queen\""), "{name} without source=\"queen\" in {expr}");
        }
    }
    let Some(promtool) = external_tool("promtool", "apt-get install prometheus") else { return };
    for args in [["check", "rules", "rules.yml"], ["test", "rules", "rules.test.yml"]] {
        let out = std::process::Command::new(&promtool).args(args).current_dir(RULES).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
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
