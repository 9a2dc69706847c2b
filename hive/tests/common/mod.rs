//! Test helpers: a real hive on 127.0.0.1:0 with simulated GPUs, and a real client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use rbee_hive::HiveConfig;
use rbee_hive::monitor::GpuChoice;
use rbee_hive::source::simulated::Scenario;
use rbee_proto::v1 as pb;
use rbee_proto::v1::hive_client::HiveClient;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// How long any single expected event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A running hive.
pub struct TestHive {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), rbee_hive::HiveError>>,
}

impl TestHive {
    pub async fn start(scenario: &str, rescan: Duration) -> Self {
        let mut config =
            HiveConfig::new("test-hive", GpuChoice::Simulated(Scenario::parse(scenario).unwrap()));
        config.rescan_interval = rescan;
        config.labels.insert("zone".into(), "test".into());
        Self::start_with(config).await
    }

    pub async fn start_with(config: HiveConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(rbee_hive::run(config, listener, async {
            let _ = rx.await;
        }));
        Self { addr, stop: Some(tx), task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> HiveClient<Channel> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match HiveClient::connect(self.url()).await {
                Ok(c) => return c,
                Err(e) if tokio::time::Instant::now() > deadline => panic!("hive did not come up: {e}"),
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }

    pub async fn stop(mut self) -> Result<(), rbee_hive::HiveError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(DEADLINE, self.task).await.expect("hive did not stop in time").unwrap()
    }
}

/// An open MetricsStream: a sender for queen messages and the hive's replies.
pub struct TestStream {
    pub tx: mpsc::Sender<pb::QueenMessage>,
    pub rx: tonic::Streaming<pb::HiveMessage>,
}

impl TestStream {
    pub async fn open(client: &mut HiveClient<Channel>, first: pb::QueenMessage) -> Self {
        let (tx, rx) = mpsc::channel(8);
        tx.send(first).await.unwrap();
        let rx = client.metrics_stream(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Self { tx, rx }
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
        let deadline = tokio::time::Instant::now() + DEADLINE;
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

pub fn as_sample(m: &pb::HiveMessage) -> Option<pb::Sample> {
    match &m.payload {
        Some(pb::hive_message::Payload::Sample(s)) => Some(s.clone()),
        _ => None,
    }
}

pub fn as_snapshot(m: &pb::HiveMessage) -> Option<pb::Snapshot> {
    match &m.payload {
        Some(pb::hive_message::Payload::Snapshot(s)) => Some(s.clone()),
        _ => None,
    }
}

pub fn as_diff(m: &pb::HiveMessage) -> Option<pb::CapabilityDiff> {
    match &m.payload {
        Some(pb::hive_message::Payload::Diff(d)) => Some(d.clone()),
        _ => None,
    }
}

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
