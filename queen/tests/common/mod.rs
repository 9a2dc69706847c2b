//! Test helpers: real hives (the hive crate's own [`TestHive`], one harness for both
//! crates) and a real queen on 127.0.0.1:0, the generated clients, and a TCP proxy that
//! can go silent (a partition that keeps sockets open).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

// Not every test file starts a hive.
#[allow(unused_imports)]
pub use rbee_hive::test_support::{DEADLINE, ONE_GPU, TestHive, bind_retrying};
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

pub mod cli;
pub mod metrics;
pub mod process;
pub mod scheduling;
pub mod scripted;
pub mod topology;

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

/// A hive configuration for tests (simulated GPUs from `scenario`, fast rescans),
/// announcing itself to `queen` when given.
pub fn hive_config(id: &str, scenario: &str, queen: Option<String>) -> rbee_hive::HiveConfig {
    let mut config = rbee_hive::test_support::config(id, scenario);
    config.queen = queen;
    config
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
        .watch_fleet(pb::WatchFleetRequest { sample_interval_ms: Some(100), ..Default::default() })
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
