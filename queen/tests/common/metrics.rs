//! What the metrics tests share: a queen serving `/metrics` on a bound loopback port,
//! and a real Prometheus scraping it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use rbee_hive::test_support::{DEADLINE, http_get};
use rbee_queen::QueenConfig;
use rbee_shared::metrics_http::{MetricsAccess, MetricsEndpoint};
use tokio::time::Instant;

use super::TestQueen;

/// A queen with `config`, serving `/metrics` to `access` on a fresh loopback port.
pub async fn queen_with_metrics(config: QueenConfig, access: MetricsAccess) -> (TestQueen, SocketAddr) {
    queen_with_metrics_on("127.0.0.1", config, access).await
}

/// Like [`queen_with_metrics`], bound on `ip` (e.g. `0.0.0.0`); the address returned is
/// the loopback one of the same port.
pub async fn queen_with_metrics_on(
    ip: &str,
    mut config: QueenConfig,
    access: MetricsAccess,
) -> (TestQueen, SocketAddr) {
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], listener.local_addr().unwrap().port()));
    config.metrics = Some(MetricsEndpoint { listen: addr, listener: Some(Arc::new(listener)), access });
    (TestQueen::start_with(config, "127.0.0.1:0".parse().unwrap()).await, addr)
}

/// A Prometheus process, killed when dropped.
pub struct Prometheus {
    /// Its HTTP API.
    pub addr: SocketAddr,
    /// The process.
    child: Child,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

impl Prometheus {
    /// Starts `prometheus` scraping `target` every second, with its config and data in `dir`;
    /// returns once it is ready.
    pub async fn start(binary: &Path, dir: &Path, target: SocketAddr) -> Self {
        Self::start_scraping(binary, dir, &[("rbee", target)]).await
    }

    /// Like [`Prometheus::start`], scraping each `(job, target)` every second.
    pub async fn start_scraping(binary: &Path, dir: &Path, targets: &[(&str, SocketAddr)]) -> Self {
        let config = dir.join("prometheus.yml");
        let mut text =
            String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n");
        for (job, target) in targets {
            text.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        std::fs::write(&config, text).unwrap();
        let addr = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start prometheus");
        let prometheus = Self { addr, child };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && http_get(addr, "/-/ready", None).await.0 == 200
            {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            // A retry pause: Prometheus tells nobody when it is ready.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The result vector of an instant query.
    pub async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let (status, body) =
            http_get(self.addr, &format!("/api/v1/query?query={}", encode(expr)), None).await;
        assert_eq!(status, 200, "query {expr}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "query {expr}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Queries `expr` until `done` holds for its result, failing after the deadline.
    pub async fn query_until(
        &self,
        expr: &str,
        mut done: impl FnMut(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let result = self.query(expr).await;
            if done(&result) {
                return result;
            }
            assert!(Instant::now() < deadline, "query {expr} never held; last result: {result:?}");
            // Prometheus scrapes every second; nothing announces a scrape.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// The value of one result of an instant query.
pub fn value(result: &serde_json::Value) -> f64 {
    result["value"][1].as_str().unwrap().parse().unwrap()
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
