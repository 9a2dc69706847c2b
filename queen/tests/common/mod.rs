//! Test helpers: real hives and a real queen on 127.0.0.1:0, the generated clients,
//! and a TCP proxy that can go silent (a partition that keeps sockets open).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use rbee_hive::HiveConfig;
use rbee_hive::monitor::GpuChoice;
use rbee_hive::source::simulated::Scenario;
use rbee_proto::v1 as pb;
use rbee_proto::v1::fleet_client::FleetClient;
use rbee_queen::QueenConfig;
use rbee_queen::fleet::{FleetSettings, Thresholds};
use rbee_queen::link::LinkSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tonic::transport::Channel;

pub mod scripted;

/// How long any expected event may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

pub const ONE_GPU: &str = r#"
[[gpu]]
id = "GPU-static-0"
vram_total = "80GiB"
util_percent = [10, 20]
vram_used = ["1GiB"]
temperature_c = [40]
"#;

/// Fast settings for tests: 200 ms samples, stale after 600 ms, lost after 2 s. The
/// host CPU rule is off: the test machine's own load must not make hives degraded.
pub fn fast_settings() -> FleetSettings {
    FleetSettings {
        thresholds: Thresholds { cpu_degraded_percent: 101.0, ..Default::default() },
        sample_interval: Duration::from_millis(200),
        stale_after_missed: 3,
        lost_timeout: Duration::from_secs(2),
        ..FleetSettings::default()
    }
}

/// Fast dialing for tests: 2 s connect timeout, reconnects after 100..400 ms.
pub fn fast_link() -> LinkSettings {
    LinkSettings {
        connect_timeout: Duration::from_secs(2),
        keepalive: Duration::from_secs(10),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        ..LinkSettings::default()
    }
}

/// A plaintext queen config with the fast settings, managing `hives`.
pub fn fast_config(hives: Vec<String>) -> QueenConfig {
    QueenConfig { link: fast_link(), ..QueenConfig::new(fast_settings(), hives) }
}

/// A hive running in this process.
pub struct TestHive {
    pub addr: SocketAddr,
    pub id: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), rbee_hive::HiveError>>,
}

impl TestHive {
    pub async fn start(id: &str, scenario: &str) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), id, scenario, None).await
    }

    pub async fn start_on(addr: SocketAddr, id: &str, scenario: &str, queen: Option<String>) -> Self {
        let mut config = HiveConfig::new(id, GpuChoice::Simulated(Scenario::parse(scenario).unwrap()));
        config.queen = queen;
        Self::start_config_on(addr, config).await
    }

    pub async fn start_config(config: HiveConfig) -> Self {
        Self::start_config_on("127.0.0.1:0".parse().unwrap(), config).await
    }

    pub async fn start_config_on(addr: SocketAddr, mut config: HiveConfig) -> Self {
        config.rescan_interval = Duration::from_millis(100);
        let id = config.hive_id.clone();
        let listener = bind_retrying(addr).await;
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(rbee_hive::run(config, listener, async {
            let _ = rx.await;
        }));
        Self { addr, id, stop: Some(tx), task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the hive: the server future is dropped, its connections close at once.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = tokio::time::timeout(DEADLINE, self.task).await;
    }
}

async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() > deadline => panic!("cannot bind {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A queen running in this process.
pub struct TestQueen {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), rbee_queen::QueenError>>,
}

impl TestQueen {
    pub async fn start(hives: Vec<String>) -> Self {
        Self::start_with(fast_config(hives), "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_with(config: QueenConfig, addr: SocketAddr) -> Self {
        let listener = bind_retrying(addr).await;
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(rbee_queen::run(config, listener, async {
            let _ = rx.await;
        }));
        Self { addr, stop: Some(tx), task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> FleetClient<Channel> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match FleetClient::connect(self.url()).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("queen did not come up: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(DEADLINE, self.task).await.expect("queen stops in time").unwrap().unwrap();
    }
}

/// Polls ListHives until `done` holds, failing after the deadline. Returns the hives.
pub async fn wait_for(
    client: &mut FleetClient<Channel>,
    what: &str,
    mut done: impl FnMut(&[pb::HiveView]) -> bool,
) -> Vec<pb::HiveView> {
    let deadline = Instant::now() + DEADLINE;
    // Subscribe first, then look: every change (and every sample) after the look wakes us.
    let mut events = client
        .watch_fleet(pb::WatchFleetRequest { sample_interval_ms: Some(100) })
        .await
        .expect("WatchFleet")
        .into_inner();
    loop {
        let hives = client.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives;
        if done(&hives) {
            return hives;
        }
        match tokio::time::timeout_at(deadline, events.message()).await {
            Ok(Ok(Some(_))) => {}
            Ok(other) => panic!("the watch ended while waiting for {what}: {other:?}"),
            Err(_) => panic!("timed out waiting for {what}; fleet: {hives:#?}"),
        }
    }
}

pub fn online(h: &pb::HiveView) -> bool {
    h.state() == pb::HiveState::Online
}

/// A WatchFleet stream.
pub struct Watch(pub tonic::Streaming<pb::FleetEvent>);

impl Watch {
    pub async fn open(client: &mut FleetClient<Channel>) -> Self {
        Self(client.watch_fleet(pb::WatchFleetRequest::default()).await.unwrap().into_inner())
    }

    /// Skips events until `pick` returns `Some`; returns it and when it arrived.
    pub async fn until<T>(&mut self, pick: impl FnMut(&pb::fleet_event::Event) -> Option<T>) -> (T, Instant) {
        self.until_within(DEADLINE, pick).await
    }

    /// Like [`Self::until`], with a deadline of `within` from now.
    pub async fn until_within<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&pb::fleet_event::Event) -> Option<T>,
    ) -> (T, Instant) {
        let deadline = Instant::now() + within;
        loop {
            let e = tokio::time::timeout_at(deadline, self.0.message())
                .await
                .expect("expected fleet event did not arrive before the deadline")
                .unwrap()
                .expect("watch ended");
            if let Some(t) = e.event.as_ref().and_then(&mut pick) {
                return (t, Instant::now());
            }
        }
    }
}

/// Waits for a state change of `address` to `to`.
pub fn state_to(
    address: &str,
    to: pb::HiveState,
) -> impl FnMut(&pb::fleet_event::Event) -> Option<pb::HiveStateChanged> {
    let address = address.to_owned();
    move |e| match e {
        pb::fleet_event::Event::StateChanged(c) if c.address == address && c.to() == to => Some(c.clone()),
        _ => None,
    }
}

/// A TCP proxy in front of `target` that can stop forwarding while keeping every socket open.
pub struct Proxy {
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, rx) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else { continue };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, rx.clone()));
                tokio::spawn(pump(sr, cw, rx.clone()));
            }
        });
        Self { addr, frozen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops forwarding; sockets stay open (a silent partition).
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *frozen.borrow_and_update() {
            // Hold both sockets open and forward nothing, forever.
            std::future::pending::<()>().await;
        }
        tokio::select! {
            changed = frozen.changed() => if changed.is_err() { return },
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if to.write_all(&buf[..n]).await.is_err() { return },
            }
        }
    }
}
