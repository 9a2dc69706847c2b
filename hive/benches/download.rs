//! Download throughput of the `hive` binary against `curl`, from the same local HTTP
//! server in the same run, and the hive's CPU time per GB downloaded.
//!
//! ```sh
//! cargo bench -p rbee-hive --bench download             # 512 MiB, 3 rounds
//! cargo bench -p rbee-hive --bench download -- 1024 5   # MiB ROUNDS
//! RBEE_BENCH_HIVE=/path/to/hive cargo bench -p rbee-hive --bench download   # another build
//! ```
//!
//! Each round: curl writes the file to disk, then the hive fetches it as a new model
//! (sha256 verified while streaming, fsync, rename). The hive's time runs from the
//! FetchModel call until its model directory appears; its CPU is user+system time of
//! the hive process over that span (from /proc). curl leaves its file in the page
//! cache, where the hive's file is on disk before it is ready, so each round also
//! times an fsync of curl's file after curl exits ("curl+fsync": the same durability
//! as the hive's, done after the transfer instead of during it).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rbee_hive::test_support::fetch_url;
use rbee_hive::test_support::http_files::{FileServer, generated, sha256_hex};
use rbee_proto::v1::hive_client::HiveClient;

mod support;
use support::{cpu_seconds, loadavg, median};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mib: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(512);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let size = mib << 20;
    let dir =
        tempfile::tempdir_in(std::env::var_os("RBEE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into))
            .unwrap();
    let server = FileServer::start().await;
    let data = generated(size, 42);
    let sha = sha256_hex(&data);
    let url = server.add("bench.bin", data);

    let models = dir.path().join("models");
    // Another hive binary (an older build, to compare) when asked; else this build's.
    let program = std::env::var("RBEE_BENCH_HIVE").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hive").into());
    let mut hive = Command::new(&program)
        .args(["serve", "--listen", "127.0.0.1:0", "--hive-id", "bench", "--demo"])
        // The file server is on loopback (an env var: an older build ignores it).
        .env("HIVE_DOWNLOAD_ALLOW", "127.0.0.1")
        .arg("--models-dir")
        .arg(&models)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start the hive binary {program}: {e}"));
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
    let mut client = HiveClient::connect(format!("http://{addr}")).await.unwrap();

    let (mut curl_rates, mut synced_rates, mut hive_rates, mut cpu_per_gb) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let out = dir.path().join("curl.bin");
        let started = Instant::now();
        let status = Command::new("curl").args(["-sS", "-o"]).arg(&out).arg(&url).status().expect("run curl");
        assert!(status.success(), "curl failed");
        let curl = started.elapsed().as_secs_f64();
        std::fs::File::open(&out).and_then(|f| f.sync_all()).expect("fsync curl's file");
        let curl_synced = started.elapsed().as_secs_f64();
        std::fs::remove_file(&out).unwrap();

        let id = format!("bench-{round}");
        let cpu_before = cpu_seconds(hive.id());
        let started = Instant::now();
        client.fetch_model(fetch_url(&id, &url, Some(size as u64), Some(sha.clone()))).await.unwrap();
        while !models.join(&id).join("bench.bin").exists() {
            assert!(started.elapsed() < Duration::from_secs(600), "the hive did not finish");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(hive.id()) - cpu_before;
        client.delete_model(rbee_proto::v1::DeleteModelRequest { model_id: id }).await.unwrap();

        let gb = size as f64 / 1e9;
        curl_rates.push(size as f64 / curl / 1e6);
        synced_rates.push(size as f64 / curl_synced / 1e6);
        hive_rates.push(size as f64 / took / 1e6);
        cpu_per_gb.push(cpu / gb);
        println!(
            "round {round}: curl {:.0} MB/s, curl+fsync {:.0} MB/s, hive {:.0} MB/s ({:.0}% of curl, {:.0}% of curl+fsync), hive CPU {:.2} s/GB",
            curl_rates[round],
            synced_rates[round],
            hive_rates[round],
            100.0 * hive_rates[round] / curl_rates[round],
            100.0 * hive_rates[round] / synced_rates[round],
            cpu_per_gb[round]
        );
    }
    let (c, s, h) = (median(curl_rates), median(synced_rates), median(hive_rates));
    println!("hive: {program}; load average at the end: {}", loadavg());
    println!(
        "median over {rounds} rounds of {mib} MiB: curl {c:.0} MB/s, curl+fsync {s:.0} MB/s, hive {h:.0} MB/s = {:.0}% of curl (target >= 90%), {:.0}% of curl+fsync; hive CPU {:.2} s per GB",
        100.0 * h / c,
        100.0 * h / s,
        median(cpu_per_gb)
    );
    let _ = hive.kill();
    let _ = hive.wait();
}
