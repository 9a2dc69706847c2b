//! A scripted hive: a real tonic `rbee.v1.Hive` server on 127.0.0.1:0 whose
//! `MetricsStream` is whatever the test's script sends. For faults a real hive never
//! makes: ignored resyncs, clocks an hour ahead, floods, hot-plug races.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::Stream;
use futures::future::BoxFuture;
use rbee_proto::v1 as pb;
use rbee_proto::v1::hive_server::{Hive, HiveServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// One stream's end of the script: what the queen sends, and where to send messages.
pub struct Script {
    /// The queen's messages.
    pub inbound: Streaming<pb::QueenMessage>,
    /// Messages to the queen.
    out: mpsc::Sender<Result<pb::HiveMessage, Status>>,
    /// The next sequence number.
    seq: u64,
    /// Added to the real clock for `hive_time_unix_ms`.
    pub clock_offset_ms: i64,
}

impl Script {
    /// Sends one payload with the next sequence number; false once the queen is gone.
    pub async fn send(&mut self, payload: pb::hive_message::Payload) -> bool {
        self.seq += 1;
        let now = rbee_shared::time::now_unix_ms() as i64 + self.clock_offset_ms;
        let message =
            pb::HiveMessage { seq: self.seq, hive_time_unix_ms: now as u64, payload: Some(payload) };
        self.out.send(Ok(message)).await.is_ok()
    }

    /// Sends a sample.
    pub async fn sample(&mut self, sample: pb::Sample) -> bool {
        self.send(pb::hive_message::Payload::Sample(sample)).await
    }

    /// Sends calm samples naming `gpus` every 50 ms until the queen hangs up.
    pub async fn sample_forever(&mut self, gpus: &[&str]) {
        while self.sample(sample(gpus)).await {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Sends a capability diff.
    pub async fn diff(&mut self, diff: pb::CapabilityDiff) -> bool {
        self.send(pb::hive_message::Payload::Diff(diff)).await
    }
}

type ScriptFn = Arc<dyn Fn(Script) -> BoxFuture<'static, ()> + Send + Sync>;

/// The server's state.
#[derive(Clone)]
struct Scripted {
    discover: pb::DiscoverResponse,
    script: ScriptFn,
    discovers: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Hive for Scripted {
    async fn discover(
        &self,
        _: Request<pb::DiscoverRequest>,
    ) -> Result<Response<pb::DiscoverResponse>, Status> {
        self.discovers.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(self.discover.clone()))
    }

    type MetricsStreamStream = Pin<Box<dyn Stream<Item = Result<pb::HiveMessage, Status>> + Send>>;

    async fn metrics_stream(
        &self,
        request: Request<Streaming<pb::QueenMessage>>,
    ) -> Result<Response<Self::MetricsStreamStream>, Status> {
        let (out, rx) = mpsc::channel(64);
        let script = Script { inbound: request.into_inner(), out, seq: 0, clock_offset_ms: 0 };
        tokio::spawn((self.script)(script));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_model(
        &self,
        _: Request<pb::FetchModelRequest>,
    ) -> Result<Response<pb::FetchModelResponse>, Status> {
        Err(Status::unimplemented("a scripted hive has no models"))
    }

    async fn cancel_fetch(
        &self,
        _: Request<pb::CancelFetchRequest>,
    ) -> Result<Response<pb::CancelFetchResponse>, Status> {
        Err(Status::unimplemented("a scripted hive has no models"))
    }

    async fn delete_model(
        &self,
        _: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        Err(Status::unimplemented("a scripted hive has no models"))
    }

    async fn preload_model(
        &self,
        _: Request<pb::PreloadModelRequest>,
    ) -> Result<Response<pb::PreloadModelResponse>, Status> {
        Err(Status::unimplemented("a scripted hive has no models"))
    }

    async fn evict_model(
        &self,
        _: Request<pb::EvictModelRequest>,
    ) -> Result<Response<pb::EvictModelResponse>, Status> {
        Err(Status::unimplemented("a scripted hive has no models"))
    }

    type ReadModelFileStream = Pin<Box<dyn Stream<Item = Result<pb::ModelFileChunk, Status>> + Send>>;

    async fn read_model_file(
        &self,
        _: Request<pb::ReadModelFileRequest>,
    ) -> Result<Response<Self::ReadModelFileStream>, Status> {
        Err(Status::unimplemented("a scripted hive has no models"))
    }
}

/// A running scripted hive.
pub struct ScriptedHive {
    /// Its address.
    pub url: String,
    discovers: Arc<AtomicUsize>,
}

impl ScriptedHive {
    /// Serves `discover` and runs `script` for every MetricsStream.
    pub async fn start<F, Fut>(discover: pb::DiscoverResponse, script: F) -> Self
    where
        F: Fn(Script) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let discovers = Arc::new(AtomicUsize::new(0));
        let svc = Scripted {
            discover,
            script: Arc::new(move |s| Box::pin(script(s))),
            discovers: discovers.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(HiveServer::new(svc))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Self { url, discovers }
    }

    /// How many times the queen called Discover (one per connection).
    pub fn discovers(&self) -> usize {
        self.discovers.load(Ordering::SeqCst)
    }
}

/// A GPU of 80 GiB.
pub fn gpu(id: &str, index: u32) -> pb::GpuDevice {
    pb::GpuDevice {
        id: id.into(),
        index,
        name: "scripted".into(),
        vram_total_bytes: 80 << 30,
        ..Default::default()
    }
}

/// Capabilities at `version` with these GPUs.
pub fn caps(version: u64, gpus: &[&str]) -> pb::Capabilities {
    pb::Capabilities {
        version,
        gpus: gpus.iter().enumerate().map(|(i, id)| gpu(id, i as u32)).collect(),
        cpu: Some(pb::CpuInfo { model: "scripted".into(), physical_cores: None, logical_cores: 1 }),
        ram_total_bytes: 1 << 30,
        backends: vec![pb::Backend::Cpu as i32, pb::Backend::Cuda as i32],
        labels: Default::default(),
        models: Vec::new(),
    }
}

/// `Discover`'s answer for hive `id` with these GPUs at version 1.
pub fn discover(id: &str, gpus: &[&str]) -> pb::DiscoverResponse {
    pb::DiscoverResponse {
        identity: Some(pb::HiveIdentity {
            hive_id: id.into(),
            epoch: "epoch-1".into(),
            protocol_version: 1,
            gpu_source: pb::DeviceSourceKind::Simulated as i32,
            ..Default::default()
        }),
        capabilities: Some(caps(1, gpus)),
    }
}

/// A calm sample naming these GPUs (1 GiB of VRAM used each), taken now.
pub fn sample(gpus: &[&str]) -> pb::Sample {
    pb::Sample {
        taken_at_unix_ms: rbee_shared::time::now_unix_ms(),
        ram_total_bytes: 1 << 30,
        ram_used_bytes: 1 << 28,
        ram_available_bytes: 3 << 28,
        cpu_percent: Some(5.0),
        gpus: gpus
            .iter()
            .map(|id| pb::GpuSample {
                id: (*id).into(),
                vram_used_bytes: Some(1 << 30),
                gpu_util_percent: Some(10.0),
                temperature_c: Some(40.0),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
