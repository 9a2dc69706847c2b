//! Test support (feature `test-support`): a real hive on `127.0.0.1:0` with simulated
//! GPUs, a real `MetricsStream` client, and helpers to pick messages. One harness for
//! the hive's and the queen's tests.

pub mod http_files;
pub mod model_files;

use std::net::SocketAddr;
use std::time::Duration;

use rbee_proto::v1 as pb;
use rbee_proto::v1::hive_client::HiveClient;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::monitor::GpuChoice;
use crate::source::simulated::Scenario;
use crate::{HiveConfig, HiveError};

/// How long any single expected event may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// One static simulated GPU.
pub const ONE_GPU: &str = r#"
[[gpu]]
id = "GPU-static-0"
name = "Sim A100"
vram_total = "80GiB"
util_percent = [10, 20]
vram_used = ["1GiB", "2GiB"]
temperature_c = [40]
"#;

/// A test configuration: simulated GPUs from `scenario`, rescanned every 100 ms, with
/// the label `zone=test`.
pub fn config(id: &str, scenario: &str) -> HiveConfig {
    let scenario = Scenario::parse(scenario).expect("a valid test scenario");
    let mut config = HiveConfig::new(id, GpuChoice::Simulated(scenario));
    config.rescan_interval = Duration::from_millis(100);
    config.labels.insert("zone".into(), "test".into());
    config
}

/// A hive running in this process.
pub struct TestHive {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its hive id.
    pub id: String,
    /// Resolves the shutdown future.
    stop: Option<oneshot::Sender<()>>,
    /// The server task.
    task: tokio::task::JoinHandle<Result<(), HiveError>>,
}

impl TestHive {
    /// `test-hive` with `scenario` (see [`config`]).
    pub async fn start(scenario: &str) -> Self {
        Self::start_with(config("test-hive", scenario)).await
    }

    /// A hive named `id` with `scenario` (see [`config`]).
    pub async fn start_named(id: &str, scenario: &str) -> Self {
        Self::start_with(config(id, scenario)).await
    }

    /// A hive with `config` on `127.0.0.1:0`.
    pub async fn start_with(config: HiveConfig) -> Self {
        Self::start_with_on("127.0.0.1:0".parse().expect("an address"), config).await
    }

    /// A hive with `config` on `addr` (retried until the deadline, for a restart on the
    /// same port).
    pub async fn start_with_on(addr: SocketAddr, config: HiveConfig) -> Self {
        let id = config.hive_id.clone();
        let listener = bind_retrying(addr).await;
        let addr = listener.local_addr().expect("a bound address");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(crate::run(config, listener, async {
            let _ = rx.await;
        }));
        Self { addr, id, stop: Some(tx), task }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected client (retried until the deadline).
    pub async fn client(&self) -> HiveClient<Channel> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match HiveClient::connect(self.url()).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("hive did not come up: {e}"),
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }

    /// Kills the hive: the server future is dropped, its connections close at once.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Stops the hive gracefully and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), HiveError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("hive did not stop in time")
            .expect("hive task panicked")
    }
}

/// Binds `addr`, retrying until the deadline.
pub async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() > deadline => panic!("cannot bind {addr}: {e}"),
            // A retry pause, not an event wait: nothing tells us when the port frees.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// An open MetricsStream: a sender for queen messages and the hive's replies.
pub struct TestStream {
    /// Messages to the hive.
    pub tx: mpsc::Sender<pb::QueenMessage>,
    /// Messages from the hive.
    pub rx: tonic::Streaming<pb::HiveMessage>,
}

impl TestStream {
    /// Opens a stream with `first` as the subscription.
    pub async fn open(client: &mut HiveClient<Channel>, first: pb::QueenMessage) -> Self {
        Self::try_open(client, first).await.expect("the hive accepts the stream")
    }

    /// Opens a stream, returning the hive's refusal.
    pub async fn try_open(
        client: &mut HiveClient<Channel>,
        first: pb::QueenMessage,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(8);
        tx.send(first).await.expect("a fresh channel");
        let rx = client.metrics_stream(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { tx, rx })
    }

    /// The next message, failing the test after the deadline.
    pub async fn next(&mut self) -> Result<pb::HiveMessage, tonic::Status> {
        tokio::time::timeout(DEADLINE, self.rx.next())
            .await
            .expect("no message from the hive before the deadline")
            .expect("stream ended")
    }

    /// Skips messages until `pick` returns `Some`.
    pub async fn until<T>(&mut self, mut pick: impl FnMut(&pb::HiveMessage) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.next())
                .await
                .expect("expected message did not arrive before the deadline")
                .expect("stream ended")
                .expect("stream failed");
            if let Some(t) = pick(&m) {
                return t;
            }
        }
    }
}

/// A subscription at `interval_ms`.
pub fn subscribe(interval_ms: u32) -> pb::QueenMessage {
    pb::QueenMessage { sample_interval_ms: Some(interval_ms), ..Default::default() }
}

/// The sample in `m`, if it is one.
pub fn as_sample(m: &pb::HiveMessage) -> Option<pb::Sample> {
    match &m.payload {
        Some(pb::hive_message::Payload::Sample(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The snapshot in `m`, if it is one.
pub fn as_snapshot(m: &pb::HiveMessage) -> Option<pb::Snapshot> {
    match &m.payload {
        Some(pb::hive_message::Payload::Snapshot(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The diff in `m`, if it is one.
pub fn as_diff(m: &pb::HiveMessage) -> Option<pb::CapabilityDiff> {
    match &m.payload {
        Some(pb::hive_message::Payload::Diff(d)) => Some(d.clone()),
        _ => None,
    }
}

/// This process's resident memory, from `/proc/self/status`.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("VmRSS in kB") * 1024
}

/// A soak, not an event wait: samples this process's RSS every 500 ms for `window` and
/// fails as soon as it has grown by `bound` bytes or more over `before`. Returns the
/// peak growth.
pub async fn assert_rss_stays_within(before: u64, bound: u64, window: Duration, what: &str) -> u64 {
    let end = Instant::now() + window;
    let mut every = tokio::time::interval(Duration::from_millis(500));
    let mut peak = before;
    while Instant::now() < end {
        every.tick().await;
        peak = peak.max(rss_bytes());
        let grown = peak.saturating_sub(before);
        assert!(grown < bound, "RSS grew by {} MiB with {what}", grown >> 20);
    }
    peak.saturating_sub(before)
}

/// One message as a gRPC length-prefixed frame.
pub fn grpc_frame(m: &impl prost::Message) -> bytes::Bytes {
    let body = m.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(0);
    out.extend_from_slice(&u32::try_from(body.len()).expect("a small message").to_be_bytes());
    out.extend_from_slice(&body);
    out.into()
}

/// A reader that never reads: opens `streams` calls of the gRPC method `path` (e.g.
/// `/rbee.v1.Hive/MetricsStream`) on one HTTP/2 connection to `addr` that grants a
/// 1 GiB window, sends `request` on each (ending the request stream when
/// `end_request`), then stops reading its socket while keeping it open. Returns how
/// many calls the server accepted (not refused with RESOURCE_EXHAUSTED) and a sender
/// that ends the connection.
pub async fn greedy_reader(
    addr: SocketAddr,
    path: &str,
    request: bytes::Bytes,
    end_request: bool,
    streams: usize,
) -> (usize, oneshot::Sender<()>) {
    let socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 30)
        .initial_connection_window_size(1 << 30)
        .max_concurrent_reset_streams(10_000)
        .handshake::<_, bytes::Bytes>(socket)
        .await
        .expect("an HTTP/2 handshake");
    let (freeze_tx, freeze_rx) = oneshot::channel::<()>();
    let (end_tx, end_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            _ = &mut connection => return,
            _ = freeze_rx => {}
        }
        // Frozen: the socket stays open and nobody reads it.
        let _ = end_rx.await;
    });
    let mut accepted = 0;
    let mut held = Vec::new();
    for _ in 0..streams {
        client = client.ready().await.expect("room for a stream");
        let call = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("a request");
        let (response, mut send) = client.send_request(call, false).expect("a stream");
        // A refused stream may already be closed: the server answered before the body.
        let _ = send.send_data(request.clone(), end_request);
        let response = tokio::time::timeout(DEADLINE, response).await.expect("an answer").expect("headers");
        let refused = response.headers().get("grpc-status").is_some_and(|s| s == "8");
        if !refused {
            accepted += 1;
        }
        held.push((send, response));
    }
    let _ = freeze_tx.send(());
    // Keep every stream (and the client) alive while frozen.
    tokio::spawn(async move {
        let _keep = (client, held);
        std::future::pending::<()>().await;
    });
    (accepted, end_tx)
}

/// Another loopback address, so that a test can tell "the queen" from everyone else.
pub const QUEEN_IP: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// A hive client whose connection comes from `local` (e.g. [`QUEEN_IP`]).
pub async fn client_from(url: &str, local: std::net::IpAddr) -> HiveClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("a URL")
        .local_address(Some(local))
        .connect()
        .await
        .expect("a connection");
    HiveClient::new(channel)
}

/// The services a server at `url` lists through gRPC reflection v1, sorted.
pub async fn reflected_services(url: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("a URL")
        .connect()
        .await
        .expect("connect");
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let answer = tokio::time::timeout(DEADLINE, answers.message())
        .await
        .expect("an answer before the deadline")
        .expect("a reflection answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

/// An external program a test needs (etcd, prometheus, promtool, grpcurl, ...), found on
/// `PATH`. Where it is missing the test is skipped loudly, with the reason on stderr;
/// where `RBEE_REQUIRE_TOOLS=1` (CI sets it) a missing tool fails the test instead.
/// `install` says how to get it, e.g. "apt-get install etcd-server".
pub fn external_tool(name: &str, install: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        let required = std::env::var_os("RBEE_REQUIRE_TOOLS").is_some_and(|v| v == "1")
            || (name == "grpcurl" && std::env::var_os("RBEE_REQUIRE_GRPCURL").is_some());
        assert!(!required, "{name} is required here (RBEE_REQUIRE_TOOLS=1) but is not on PATH: {install}");
        eprintln!("SKIPPED: {name} is not on PATH ({install}); this test did not run");
    }
    found
}

/// The workspace's build output directory (`target/debug`), found from the running
/// test executable (`target/debug/deps/NAME-HASH`).
pub fn build_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent().and_then(|deps| deps.parent()).expect("target/debug/deps/TEST").to_owned()
}

/// `file` in the build directory, or a failure that says what to build. `cargo test
/// --workspace` builds every member's binaries (the `hive` binary); `cargo test -p
/// CRATE` alone builds only that crate's.
pub fn built_artifact(file: &str, build: &str) -> std::path::PathBuf {
    let path = build_dir().join(file);
    assert!(
        path.is_file(),
        "{} is not built: `cargo test --workspace` builds it; alone, run `cargo build {build}` first",
        path.display()
    );
    path
}

/// The fake NVML library (`rbee-nvml-fake`), or its old-driver build when
/// `old_driver`. Both are dev-dependencies of the crates whose tests load them, so
/// that any `cargo test` building those tests builds the cdylib too; cargo leaves a
/// dependency's cdylib in `deps/` under its plain name.
pub fn fake_nvml_lib(old_driver: bool) -> std::path::PathBuf {
    let (file, package) = match old_driver {
        false => ("librbee_nvml_fake.so", "rbee-nvml-fake"),
        true => ("librbee_nvml_fake_old_driver.so", "rbee-nvml-fake-old-driver"),
    };
    let path = build_dir().join("deps").join(file);
    assert!(
        path.is_file(),
        "{} is not built: add {package} to this crate's [dev-dependencies], or run `cargo build -p {package}`",
        path.display()
    );
    path
}

/// The real `hive` binary serving on a free loopback port; killed when dropped.
pub struct HiveProcess {
    /// The running binary.
    child: std::process::Child,
    /// Where it listens (`127.0.0.1:PORT`).
    pub addr: String,
}

impl HiveProcess {
    /// Starts `bin serve --listen 127.0.0.1:0 ARGS` with `envs` and waits (with a
    /// deadline) for the log line that names its address. Its log is read to the end,
    /// so it never blocks on a full pipe.
    pub fn spawn(
        bin: &std::path::Path,
        args: &[&std::ffi::OsStr],
        envs: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the hive binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listen=").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
                }
            }
        });
        let addr = rx.recv_timeout(DEADLINE).expect("the hive logs its listen address");
        Self { child, addr }
    }

    /// `bin` loading the NVML library `lib` (the fake one: [`fake_nvml_lib`]) with the
    /// scenario file `scenario`, as hive `hive_id`, its state in `state`, rescanning every
    /// 100 ms.
    pub fn on_fake_driver(
        bin: &std::path::Path,
        lib: &std::path::Path,
        scenario: &std::path::Path,
        hive_id: &str,
        state: &std::path::Path,
    ) -> Self {
        let args = [
            "--hive-id".as_ref(),
            hive_id.as_ref(),
            "--rescan-interval".as_ref(),
            "100ms".as_ref(),
            "--state-dir".as_ref(),
            state.as_os_str(),
            "--nvml-lib".as_ref(),
            lib.as_os_str(),
        ];
        Self::spawn(bin, &args, &[("RBEE_FAKE_NVML_SCENARIO", scenario.as_os_str())])
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for HiveProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks that every man page in `dir` that another page refers to (roff writes
/// `queen\-policy\-check(1)`) exists, for pages named `PREFIX-...`; returns how many
/// references it followed.
pub fn man_references_resolve(dir: &std::path::Path, prefix: &str) -> usize {
    let mut referred = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap().replace("\\-", "-");
        for (at, _) in text.match_indices("(1)") {
            let before = &text[..at];
            let start = before.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).map_or(0, |i| i + 1);
            let name = &before[start..];
            if name.starts_with(&format!("{prefix}-")) {
                referred += 1;
                assert!(dir.join(format!("{name}.1")).is_file(), "{name}(1) is referred to but missing");
            }
        }
    }
    referred
}

/// A plain HTTP/1.0 `GET` of `path` on `addr` (with `authorization: Bearer TOKEN` when
/// given): the status code and the body. For the `/metrics` endpoints.
pub async fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(DEADLINE, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    // HTTP/1.0: the reply is never chunked, and the server closes the connection after it.
    let request = format!("GET {path} HTTP/1.0\r\nhost: {addr}\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).await.expect("send the request");
    let mut reply = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut reply))
        .await
        .expect("reply in time")
        .expect("read");
    let reply = String::from_utf8(reply).expect("a UTF-8 reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a header and a body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    (status, body.to_owned())
}

/// Runs `promtool check metrics` on `text`; `false` when promtool is missing (skipped,
/// see [`external_tool`]). Panics with promtool's complaints when it finds any.
pub fn promtool_check_metrics(text: &str) -> bool {
    use std::io::Write;
    let Some(promtool) = external_tool("promtool", "apt-get install prometheus") else { return false };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start promtool");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics failed:\n{said}\n--- input:\n{text}"
    );
    true
}

/// Runs `systemd-analyze verify` on the unit file `unit` with its `ExecStart` program
/// `installed` (e.g. `/usr/local/bin/hive`) replaced by `built` (verify needs the
/// program to exist). `None` when systemd-analyze is missing (skipped, see
/// [`external_tool`]); else what it said (empty when the unit is clean) and whether it
/// passed.
pub fn systemd_verify(
    unit: &std::path::Path,
    installed: &str,
    built: &std::path::Path,
) -> Option<(bool, String)> {
    let tool = external_tool("systemd-analyze", "apt-get install systemd")?;
    let text = std::fs::read_to_string(unit).expect("read the unit");
    assert!(text.contains(installed), "{} does not start {installed}", unit.display());
    let dir = tempfile_dir();
    let copy = dir.join(unit.file_name().expect("a file name"));
    std::fs::write(&copy, text.replace(installed, &built.display().to_string())).expect("write the copy");
    let out =
        std::process::Command::new(tool).arg("verify").arg(&copy).output().expect("systemd-analyze ran");
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some((out.status.success() && said.trim().is_empty(), said))
}

/// A fresh directory under the system's temp dir.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rbee-unit-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}
/// A test configuration (see [`config`]) with a models directory at `dir`, rescanned
/// every 200 ms, downloads allowed from `127.0.0.1`, with the Hub at `hub` (a [`http_files::FileServer`]'s base URL).
pub fn models_config(id: &str, dir: &std::path::Path, hub: Option<String>) -> HiveConfig {
    let mut c = config(id, ONE_GPU);
    let mut models = crate::models::ModelsConfig::new(dir);
    models.rescan = Duration::from_millis(200);
    // The test servers listen on loopback: `--download-allow 127.0.0.1`.
    models.egress = crate::models::egress::EgressRule::with_loopback();
    if let Some(endpoint) = hub {
        models.hub = crate::models::hf::HubConfig { endpoint, token: Some("test-token".into()) };
    }
    c.models = Some(models);
    c
}

/// The download record of `model` in a stream message, if it is a sample carrying one.
pub fn download_of(m: &pb::HiveMessage, model: &str) -> Option<pb::DownloadProgress> {
    as_sample(m)?.downloads.into_iter().find(|d| d.model_id == model)
}

/// A `FetchModel` request for one URL.
pub fn fetch_url(model: &str, url: &str, size: Option<u64>, sha256: Option<String>) -> pb::FetchModelRequest {
    pb::FetchModelRequest {
        model_id: model.into(),
        source: Some(pb::fetch_model_request::Source::Urls(pb::UrlSource {
            files: vec![pb::FileSource { url: url.into(), path: None, size_bytes: size, sha256 }],
        })),
        ..Default::default()
    }
}

/// Checks an example environment file (`deploy/systemd/*.env.example`): every
/// `PREFIX*` variable it sets (or shows commented out) is one that `cli` reads, and
/// it names at least `min` of them.
pub fn check_env_example(file: &std::path::Path, prefix: &str, cli: &clap::Command, min: usize) {
    let text = std::fs::read_to_string(file).expect("read the example env file");
    let known: Vec<String> = cli
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    let mut seen = 0;
    for line in text.lines() {
        let line = line.trim_start_matches('#');
        let Some((name, _)) = line.split_once('=') else { continue };
        if name.starts_with(prefix) {
            assert!(known.iter().any(|k| k == name), "{}: {name} is no {prefix} variable", file.display());
            seen += 1;
        }
    }
    assert!(seen >= min, "only {seen} variables in {}", file.display());
}

/// A `sleep 60` child standing in for a GPU worker, killed when the test ends however
/// it ends.
pub struct Sleeper(std::process::Child);

impl Sleeper {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a [`Sleeper`], with the reservation token `RBEE_RESERVATION_TOKEN` in its
/// environment when given.
pub fn sleeper(token: Option<&str>) -> Sleeper {
    match token {
        Some(t) => sleeper_with_env(&[("RBEE_RESERVATION_TOKEN", t)]),
        None => sleeper_with_env(&[]),
    }
}

/// Starts a [`Sleeper`] with these variables added to its environment.
pub fn sleeper_with_env(vars: &[(&str, &str)]) -> Sleeper {
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("60");
    cmd.envs(vars.iter().copied());
    let reservation = vars.first();
    let child = cmd.spawn().expect("spawn sleep");
    // Callers read its name and environment from /proc: wait until both are the new
    // program's. The kernel names the process early in exec and fills in the
    // environment's bounds later, so a name of `sleep` alone does not mean that
    // `environ` is readable yet (it reads empty in between).
    let (comm, environ) = (format!("/proc/{}/comm", child.id()), format!("/proc/{}/environ", child.id()));
    let has_env = reservation.is_some() || std::env::vars_os().next().is_some();
    let ready = || {
        std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep")
            && (!has_env || std::fs::read(&environ).is_ok_and(|e| !e.is_empty()))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "the sleeper never showed as `sleep` in {comm}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Sleeper(child)
}

/// Puts `pid` in `file` at once (write aside, then rename), for the simulated source
/// and the fake NVML library, which re-read such files at every sample or call.
pub fn write_pid_file(file: &std::path::Path, pid: u32) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, pid.to_string()).expect("write the pid file");
    std::fs::rename(tmp, file).expect("move the pid file into place");
}
