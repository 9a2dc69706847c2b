//! The hive's `/metrics` endpoint: real hive, real HTTP, `promtool check metrics`, every
//! series labelled `source="hive"`, the exposure and token rules, and idle connections
//! that must not starve a scrape.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rbee_hive::cli::{Cli, Command};
use rbee_hive::test_support::{ONE_GPU, TestHive, config, http_get, promtool_check_metrics};
use rbee_shared::metrics_http::{MetricsAccess, MetricsEndpoint};

const TOKEN: &str = "metrics-token-0123456789";

async fn hive_with_metrics(access: MetricsAccess) -> (TestHive, std::net::SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = config("metrics-hive", ONE_GPU);
    config.labels.insert("rbee.io/rack".into(), "r1".into());
    config.metrics = Some(MetricsEndpoint { listen: addr, listener: Some(Arc::new(listener)), access });
    (TestHive::start_with(config).await, addr)
}

#[tokio::test]
async fn the_hive_serves_its_gpus_and_promtool_accepts_them() {
    let (hive, addr) = hive_with_metrics(MetricsAccess::default()).await;
    let _ = hive.client().await;
    let (status, text) = http_get(addr, "/metrics", None).await;
    assert_eq!(status, 200, "{text}");
    let vram = "rbee_gpu_memory_total_bytes{source=\"hive\",hive=\"metrics-hive\",gpu=\"0\",uuid=\"GPU-static-0\"} 85899345920";
    assert!(text.contains(vram), "{text}");
    assert!(
        text.contains(
            "rbee_hive_labels_info{source=\"hive\",hive=\"metrics-hive\",label_rbee_io_rack=\"r1\",label_zone=\"test\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "rbee_gpu_temperature_celsius{source=\"hive\",hive=\"metrics-hive\",gpu=\"0\",uuid=\"GPU-static-0\"} 40"
        ),
        "{text}"
    );
    assert!(text.contains("rbee_hive_sample_ok{source=\"hive\",hive=\"metrics-hive\"} 1"), "{text}");
    // The hive's own cost: CPU seconds so far (a young process may have used less than one
    // clock tick) and resident memory.
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{{source=\"hive\",hive=\"metrics-hive\"}} ");
        let line =
            text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("{name}: {text}"));
        line.parse().unwrap()
    };
    assert!(value("rbee_hive_cpu_seconds_total") >= 0.0);
    assert!(value("rbee_hive_resident_memory_bytes") > 1e6);
    // No NVML, no NVML latency (the simulated source makes no driver calls).
    assert!(!text.contains("rbee_hive_nvml_call"), "{text}");
    // One source of truth per series: a Prometheus scraping this hive and the queen tells
    // the two apart by `source`, and dashboards select `source="queen"`.
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(line.contains("source=\"hive\""), "{line}");
    }
    for help in text.lines().filter(|l| l.starts_with("# HELP ")) {
        assert!(!help.ends_with(".."), "{help}");
    }
    // Zero-valued gauges are exported as 0.
    assert!(text.contains("rbee_hive_gpus_lost{source=\"hive\",hive=\"metrics-hive\"} 0"), "{text}");
    assert!(
        text.contains("rbee_model_downloads{source=\"hive\",hive=\"metrics-hive\",phase=\"failed\"} 0"),
        "{text}"
    );
    promtool_check_metrics(&text);
    let (status, _) = http_get(addr, "/other", None).await;
    assert_eq!(status, 404);
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn a_token_is_required_when_set() {
    let (hive, addr) = hive_with_metrics(MetricsAccess::new([TOKEN.as_bytes()])).await;
    let _ = hive.client().await;
    assert_eq!(http_get(addr, "/metrics", None).await.0, 401);
    assert_eq!(http_get(addr, "/metrics", Some("wrong-token-0123456789")).await.0, 401);
    let (status, text) = http_get(addr, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(text.contains("rbee_gpu_memory_total_bytes"));
    hive.stop().await.unwrap();
}

/// True while the server has not closed `s` (a non-blocking peek would wait).
fn still_open(s: &std::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(s.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn idle_connections_cannot_starve_a_scrape_and_are_closed() {
    let (hive, addr) = hive_with_metrics(MetricsAccess::default()).await;
    let _ = hive.client().await;
    // A slowloris: twice the connection cap, opened and left silent.
    let idle: Vec<std::net::TcpStream> = (0..2 * rbee_shared::metrics_http::MAX_CONNECTIONS)
        .map(|_| {
            let s = std::net::TcpStream::connect(addr).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let (status, text) = tokio::time::timeout(Duration::from_secs(120), http_get(addr, "/metrics", None))
        .await
        .expect("the scrape is answered");
    assert_eq!(status, 200, "{text}");
    // It was answered while idle connections were still open: it did not wait for them
    // to time out (before the fix it waited for two rounds of the header timeout).
    let open = idle.iter().filter(|s| still_open(s)).count();
    assert!(open > 0, "the scrape waited until every idle connection had been closed");
    // And the server closes every idle one, within its timeouts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while idle.iter().any(still_open) {
        assert!(tokio::time::Instant::now() < deadline, "idle connections left open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hive.stop().await.unwrap();
}

/// Hostile round 3, F6: a connect flood (connections that never send a byte) from
/// 127.0.0.2 must not close a scraper's connection from 127.0.0.1 that waits 0.5 s
/// between connect and request. Before the fix each new connection closed the oldest
/// idle one, the scraper's included: 6 of 10 such scrapes failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_flood_from_one_peer_does_not_close_a_slow_scrapers_connection() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (hive, addr) = hive_with_metrics(MetricsAccess::default()).await;
    let _ = hive.client().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let flood = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut held = std::collections::VecDeque::new();
            let mut opened = 0u64;
            while !stop.is_cancelled() {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                if let Ok(s) = socket.connect(addr).await {
                    held.push_back(s);
                    opened += 1;
                }
                if held.len() > 64 {
                    held.pop_front();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            opened
        }
    });
    let mut answered = 0;
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // A slow scraper: the flood goes on meanwhile.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let request = "GET /metrics HTTP/1.1\r\nhost: hive\r\nconnection: close\r\n\r\n";
        let mut reply = Vec::new();
        let ok = s.write_all(request.as_bytes()).await.is_ok()
            && tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut reply))
                .await
                .is_ok_and(|r| r.is_ok());
        if ok && reply.starts_with(b"HTTP/1.1 200") {
            answered += 1;
        }
    }
    stop.cancel();
    let opened = flood.await.unwrap();
    assert!(opened > 64, "the flood ran: {opened} connections");
    assert_eq!(answered, 10, "scrapes answered during the flood");
    hive.stop().await.unwrap();
}

fn serve_args(extra: &[&str]) -> Box<rbee_hive::config::ServeArgs> {
    let dir = tempfile::tempdir().unwrap().keep();
    let state = dir.to_str().unwrap().to_owned();
    let mut argv = vec!["hive", "serve", "--demo", "--hive-id", "h1", "--state-dir", &state];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Serve(args) => args,
        _ => unreachable!(),
    }
}

#[test]
fn metrics_beyond_loopback_need_a_token() {
    let err = serve_args(&["--metrics-listen", "0.0.0.0:9101"]).into_config().unwrap_err().to_string();
    assert!(err.contains("refusing to serve metrics on 0.0.0.0:9101"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let (_, config) =
        serve_args(&["--metrics-listen", "0.0.0.0:9101", "--metrics-token-file", token.to_str().unwrap()])
            .into_config()
            .unwrap();
    assert!(config.metrics.unwrap().access.enabled());
    let (_, config) = serve_args(&["--metrics-listen", "0.0.0.0:9101", "--insecure"]).into_config().unwrap();
    assert!(!config.metrics.unwrap().access.enabled());
    let (_, config) = serve_args(&[]).into_config().unwrap();
    assert!(config.metrics.is_none(), "off by default");
}

/// One GPU with every reading the sample path asks NVML for.
const ONE_NVML_GPU: &str = r#"
driver_version = "550.54.15"
cuda_version = "12.4"
[[gpu]]
uuid = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
name = "NVIDIA H100 80GB HBM3"
pci_bus_id = "00000000:17:00.0"
memory_total = "80GiB"
memory_used = ["5GiB"]
compute_capability = "9.0"
power_limit_w = 700
util_percent = [37]
temperature_c = [55]
power_draw_w = [310]
sm_clock_mhz = [1980]
mem_clock_mhz = [2619]
ecc_corrected = [4]
ecc_uncorrected = [0]
"#;

/// Scrapes `addr` until it answers (the hive is starting), within the deadline.
async fn scrape_when_up(addr: std::net::SocketAddr) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let (status, text) = http_get(addr, "/metrics", None).await;
            assert_eq!(status, 200, "{text}");
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "the metrics endpoint did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `NAME{source="hive",hive="nvml-metrics",call="CALL"[,le="LE"]} VALUE` as a number.
fn nvml_series(text: &str, suffix: &str, call: &str, le: Option<&str>) -> Option<f64> {
    let le = le.map(|le| format!(",le=\"{le}\"")).unwrap_or_default();
    let prefix = format!(
        "rbee_hive_nvml_call_seconds_{suffix}{{source=\"hive\",hive=\"nvml-metrics\",call=\"{call}\"{le}}} "
    );
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.parse().unwrap())
}

/// The hive reports the latency of its own NVML calls, by kind of call, timed around
/// the real calls: the real binary, nvml-wrapper's loading path and the fake driver
/// library (the same code path as a real driver's).
#[tokio::test]
async fn the_hive_reports_its_nvml_call_latency_per_kind_of_call() {
    use std::io::Write as _;
    let mut scenario = tempfile::NamedTempFile::new().unwrap();
    scenario.write_all(ONE_NVML_GPU.as_bytes()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let lib = rbee_hive::test_support::fake_nvml_lib(false);
    let listen = metrics.to_string();
    let args = [
        "--hive-id".as_ref(),
        "nvml-metrics".as_ref(),
        "--state-dir".as_ref(),
        state.path().as_os_str(),
        "--nvml-lib".as_ref(),
        lib.as_os_str(),
        "--metrics-listen".as_ref(),
        listen.as_ref(),
    ];
    let _hive = rbee_hive::test_support::HiveProcess::spawn(
        env!("CARGO_BIN_EXE_hive").as_ref(),
        &args,
        &[("RBEE_FAKE_NVML_SCENARIO", scenario.path().as_os_str())],
    );
    let first = scrape_when_up(metrics).await;
    assert!(first.contains("# TYPE rbee_hive_nvml_call_seconds histogram"), "{first}");
    // Every kind the sample path and the capability scan make is there.
    let calls = [
        "device_count",
        "handle",
        "memory_info",
        "utilization",
        "temperature",
        "power",
        "clocks",
        "ecc",
        "processes",
        "describe",
        "topology",
    ];
    for call in calls {
        let count = nvml_series(&first, "count", call, None).unwrap_or_else(|| panic!("{call}: {first}"));
        assert!(count >= 1.0, "{call}: {first}");
        assert_eq!(nvml_series(&first, "bucket", call, Some("+Inf")), Some(count), "{call}");
        let sum = nvml_series(&first, "sum", call, None).unwrap();
        assert!(sum > 0.0 && sum.is_finite(), "{call}: {sum}");
    }
    // Each reading is timed where it is made: one GPU read once per sample gives one
    // temperature, utilization, power and process-list call per sample, and two clock
    // and two ECC calls (SM and memory; corrected and uncorrected).
    let per_sample = |text: &str| nvml_series(text, "count", "temperature", None).unwrap();
    let samples = per_sample(&first);
    for (call, per) in
        [("utilization", 1.0), ("power", 1.0), ("processes", 1.0), ("clocks", 2.0), ("ecc", 2.0)]
    {
        assert_eq!(nvml_series(&first, "count", call, None), Some(per * samples), "{call}: {first}");
    }
    // A scrape samples: the counts grow with it.
    let mut second = http_get(metrics, "/metrics", None).await.1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while per_sample(&second) <= samples {
        assert!(tokio::time::Instant::now() < deadline, "no new NVML reading: {second}");
        second = http_get(metrics, "/metrics", None).await.1;
    }
    promtool_check_metrics(&second);
}
