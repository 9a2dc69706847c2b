//! A scripted hive (a real tonic server on 127.0.0.1:0) that sends a gapped diff:
//! the queen must ask for a resync and never apply the diff.

mod common;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::Stream;
use rbee_proto::v1 as pb;
use rbee_proto::v1::hive_server::{Hive, HiveServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

fn gpu(id: &str) -> pb::GpuDevice {
    pb::GpuDevice { id: id.into(), name: "scripted".into(), vram_total_bytes: 1 << 30, ..Default::default() }
}

fn caps(version: u64, ids: &[&str]) -> pb::Capabilities {
    pb::Capabilities {
        version,
        gpus: ids.iter().map(|id| gpu(id)).collect(),
        cpu: Some(pb::CpuInfo { model: "scripted".into(), physical_cores: None, logical_cores: 1 }),
        ram_total_bytes: 1 << 30,
        backends: vec![pb::Backend::Cpu as i32, pb::Backend::Cuda as i32],
        labels: Default::default(),
        models: Vec::new(),
    }
}

fn identity() -> pb::HiveIdentity {
    pb::HiveIdentity {
        hive_id: "scripted".into(),
        epoch: "epoch-1".into(),
        protocol_version: 1,
        gpu_source: pb::DeviceSourceKind::Simulated as i32,
        ..Default::default()
    }
}

fn sample() -> pb::Sample {
    pb::Sample {
        taken_at_unix_ms: rbee_shared::time::now_unix_ms(),
        ram_total_bytes: 100,
        ram_used_bytes: 10,
        ram_available_bytes: 90,
        cpu_percent: Some(5.0),
        ..Default::default()
    }
}

/// What the scripted hive saw from the queen.
#[derive(Default)]
struct Seen {
    resyncs: usize,
}

#[derive(Clone)]
struct Scripted {
    seen: Arc<Mutex<Seen>>,
    /// What to send right after the first sample.
    bad: pb::hive_message::Payload,
}

#[tonic::async_trait]
impl Hive for Scripted {
    async fn discover(
        &self,
        _: Request<pb::DiscoverRequest>,
    ) -> Result<Response<pb::DiscoverResponse>, Status> {
        Ok(Response::new(pb::DiscoverResponse {
            identity: Some(identity()),
            capabilities: Some(caps(1, &["GPU-A"])),
        }))
    }

    type MetricsStreamStream = Pin<Box<dyn Stream<Item = Result<pb::HiveMessage, Status>> + Send>>;

    async fn metrics_stream(
        &self,
        request: Request<Streaming<pb::QueenMessage>>,
    ) -> Result<Response<Self::MetricsStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let seen = self.seen.clone();
        let bad = self.bad.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            let mut send = |payload| {
                seq += 1;
                pb::HiveMessage {
                    seq,
                    hive_time_unix_ms: rbee_shared::time::now_unix_ms(),
                    payload: Some(payload),
                }
            };
            let first = inbound.message().await.unwrap().unwrap();
            assert_eq!(first.known_capability_version, Some(1), "the queen resumes from Discover");
            let _ = tx.send(Ok(send(pb::hive_message::Payload::Sample(sample())))).await;
            let _ = tx.send(Ok(send(bad))).await;
            // Wait for the queen's resync request, then send the truth.
            while let Ok(Some(m)) = inbound.message().await {
                if m.resync {
                    seen.lock().unwrap().resyncs += 1;
                    let snapshot = pb::Snapshot {
                        reason: pb::SnapshotReason::Resync as i32,
                        identity: Some(identity()),
                        capabilities: Some(caps(7, &["GPU-A", "GPU-B"])),
                    };
                    let _ = tx.send(Ok(send(pb::hive_message::Payload::Snapshot(snapshot)))).await;
                    for _ in 0..50 {
                        if tx.send(Ok(send(pb::hive_message::Payload::Sample(sample())))).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
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
}

async fn start_scripted(bad: pb::hive_message::Payload) -> (String, Arc<Mutex<Seen>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let svc = Scripted { seen: seen.clone(), bad };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HiveServer::new(svc))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (url, seen)
}

#[tokio::test]
async fn a_gapped_diff_leads_to_a_resync_not_wrong_state() {
    let gapped = pb::CapabilityDiff {
        base_version: 5,
        new_version: 6,
        gpus_added: vec![gpu("GPU-GAP")],
        ..Default::default()
    };
    let (url, seen) = start_scripted(pb::hive_message::Payload::Diff(gapped)).await;
    let queen = TestQueen::start(vec![url]).await;
    let mut client = queen.client().await;
    let hs = wait_for(&mut client, "the resync snapshot (v7) taken", |hs| {
        hs.iter().any(|h| h.capabilities.as_ref().is_some_and(|c| c.version == 7))
    })
    .await;
    let caps = hs[0].capabilities.as_ref().unwrap();
    let ids: Vec<&str> = caps.gpus.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids, ["GPU-A", "GPU-B"], "the gapped diff was never applied");
    let c = hs[0].counters.unwrap();
    assert_eq!((c.gaps, c.resyncs), (1, 1), "{c:?}");
    assert_eq!(seen.lock().unwrap().resyncs, 1);
    assert_eq!(hs[0].state(), pb::HiveState::Online);
}

#[tokio::test]
async fn garbage_from_a_hive_marks_it_unhealthy_and_resyncs_without_touching_its_view() {
    let mut lying = sample();
    lying.ram_used_bytes = lying.ram_total_bytes + 1;
    lying.cpu_percent = Some(f32::NAN);
    let (url, seen) = start_scripted(pb::hive_message::Payload::Sample(lying)).await;
    let queen = TestQueen::start(vec![]).await;
    let mut client = queen.client().await;
    let mut watch = Watch::open(&mut client).await;
    client.add_hive(pb::AddHiveRequest { address: url }).await.unwrap();
    let (unhealthy, _) = watch
        .until(|e| match e {
            pb::fleet_event::Event::HealthChanged(h)
                if h.to() == pb::Health::Unhealthy
                    && h.reasons.iter().any(|r| r.contains("invalid data")) =>
            {
                Some(h.clone())
            }
            _ => None,
        })
        .await;
    assert!(
        unhealthy
            .reasons
            .iter()
            .any(|r| r.contains("invalid data from hive") && r.contains("sample.ram_used_bytes")),
        "{:?}",
        unhealthy.reasons
    );
    let hs = wait_for(&mut client, "resynced after garbage", |hs| {
        hs.iter()
            .any(|h| h.capabilities.as_ref().is_some_and(|c| c.version == 7) && h.latest_sample.is_some())
    })
    .await;
    let h = &hs[0];
    assert_eq!(h.counters.unwrap().invalid_messages, 1);
    assert_eq!(seen.lock().unwrap().resyncs, 1);
    let latest = h.latest_sample.as_ref().unwrap();
    assert!(latest.ram_used_bytes <= latest.ram_total_bytes, "the bad sample never reached the view");
}
