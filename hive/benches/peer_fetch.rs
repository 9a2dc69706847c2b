//! Peer fetch throughput (issue 27): the same `hive` binary fetches one model from a
//! local HTTP server and then from a peer hive that holds it, in the same run; and the
//! serving hive's CPU time per GB served.
//!
//! ```sh
//! cargo bench -p rbee-hive --bench peer_fetch             # 1024 MiB, 3 rounds
//! cargo bench -p rbee-hive --bench peer_fetch -- 256 5    # MiB ROUNDS
//! RBEE_BENCH_DIR=/mnt/nvme cargo bench -p rbee-hive --bench peer_fetch   # where files are written
//! ```
//!
//! Two hive processes on loopback: A (the peer) fetches the model once from the HTTP
//! server; then each round B fetches it as a new model from the HTTP server (`http`),
//! and as another new model from A alone (`FetchModel` with `peers = [A]`, no origin:
//! `peer`). Both are verified (sha256 while streaming), fsync'd and renamed: the time runs
//! from the call until the model directory appears. A's CPU is its user+system time
//! over the peer fetch (`/proc/PID/stat`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rbee_hive::test_support::fetch_url;
use rbee_hive::test_support::http_files::{FileServer, generated, sha256_hex};
use rbee_proto::v1 as pb;
use rbee_proto::v1::hive_client::HiveClient;
use tonic::transport::Channel;

mod support;
use support::{cpu_seconds, loadavg, median};

/// Starts the hive binary named `id` with `models` as its models directory; returns it
/// and its address.
fn start_hive(id: &str, models: &Path) -> (Child, String) {
    let mut hive = Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["serve", "--listen", "127.0.0.1:0", "--hive-id", id, "--demo"])
        .env("HIVE_DOWNLOAD_ALLOW", "127.0.0.1")
        .arg("--models-dir")
        .arg(models)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the hive binary");
    let stderr = hive.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listen=").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).expect("the hive logs its listen address");
    (hive, format!("http://{addr}"))
}

/// Calls FetchModel and waits until `models/id/file` exists; returns the seconds taken.
async fn fetch(
    client: &mut HiveClient<Channel>,
    request: pb::FetchModelRequest,
    models: &Path,
    file: &str,
) -> f64 {
    let path = models.join(&request.model_id).join(file);
    let request_id = request.model_id.clone();
    let started = Instant::now();
    client.fetch_model(request).await.unwrap();
    let mut checked = Instant::now();
    while !path.exists() {
        assert!(started.elapsed() < Duration::from_secs(900), "the hive did not finish");
        if checked.elapsed() > Duration::from_millis(500) {
            checked = Instant::now();
            let caps =
                client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
            if let Some(m) =
                caps.models.iter().find(|m| m.id == request_id && m.state == pb::ModelState::Failed as i32)
            {
                panic!("the fetch of {request_id} failed: {:?}", m.error);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mib: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let size = mib << 20;
    let dir =
        tempfile::tempdir_in(std::env::var_os("RBEE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into))
            .unwrap();
    let server = FileServer::start().await;
    let data = generated(size, 42);
    let sha = sha256_hex(&data);
    let url = server.add("bench.bin", data);
    let (models_a, models_b) = (dir.path().join("a"), dir.path().join("b"));
    let (mut a, url_a) = start_hive("bench-a", &models_a);
    let (mut b, url_b) = start_hive("bench-b", &models_b);
    let mut client_a = HiveClient::connect(url_a.clone()).await.unwrap();
    let mut client_b = HiveClient::connect(url_b).await.unwrap();
    fetch(
        &mut client_a,
        fetch_url("model", &url, Some(size as u64), Some(sha.clone())),
        &models_a,
        "bench.bin",
    )
    .await;

    let (mut http_rates, mut peer_rates, mut serve_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let id = format!("http-{round}");
        let took = fetch(
            &mut client_b,
            fetch_url(&id, &url, Some(size as u64), Some(sha.clone())),
            &models_b,
            "bench.bin",
        )
        .await;
        client_b.delete_model(pb::DeleteModelRequest { model_id: id }).await.unwrap();
        http_rates.push(size as f64 / took / 1e6);

        // B fetches the same model id A holds (a peer serves its model by that id).
        let request = pb::FetchModelRequest {
            model_id: "model".into(),
            source: None,
            peers: vec![pb::PeerSource { address: url_a.clone(), hive_id: "bench-a".into(), partial: false }],
            peer_files: vec![pb::ModelFile {
                path: "bench.bin".into(),
                size_bytes: size as u64,
                sha256: Some(sha.clone()),
            }],
        };
        let id = request.model_id.clone();
        let cpu_before = cpu_seconds(a.id());
        let took = fetch(&mut client_b, request, &models_b, "bench.bin").await;
        let cpu = cpu_seconds(a.id()) - cpu_before;
        client_b.delete_model(pb::DeleteModelRequest { model_id: id }).await.unwrap();
        peer_rates.push(size as f64 / took / 1e6);
        serve_cpu.push(cpu / (size as f64 / 1e9));
        println!(
            "round {round}: http {:.0} MB/s, peer {:.0} MB/s ({:.0}% of http), serving hive CPU {:.2} s/GB",
            http_rates[round],
            peer_rates[round],
            100.0 * peer_rates[round] / http_rates[round],
            serve_cpu[round]
        );
    }
    let (h, p) = (median(http_rates), median(peer_rates));
    println!("load average at the end: {}", loadavg());
    println!(
        "median over {rounds} rounds of {mib} MiB: http {h:.0} MB/s, peer {p:.0} MB/s = {:.0}% of http (target >= 90%); serving hive CPU {:.2} s per GB",
        100.0 * p / h,
        median(serve_cpu)
    );
    for hive in [&mut a, &mut b] {
        let _ = hive.kill();
        let _ = hive.wait();
    }
}
