//! The hive's own `/metrics` endpoint (`hive serve --metrics-listen`): a fresh sample on
//! every scrape, encoded with the machine families both daemons share
//! ([`rbee_shared::machine_metrics`]), plus the hive's own stream gauges, its uploads of
//! model files to peers, and its own
//! cost (CPU time and resident memory, read from `/proc/self` at the scrape, never on
//! the sampling path; the latency of its NVML calls, timed where they are made,
//! [`crate::source::nvml_calls`]). Every series
//! carries `source="hive"` ([`SOURCE_HIVE`]). Names and labels: see `docs/metrics.md`.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use rbee_shared::machine_metrics::{MachineView, encode_machines, gauges, label, registry_for};
use rbee_shared::{HiveIdentity, Sample};

use crate::models::serve::{PeerServer, UploadCounts};
use crate::monitor::Telemetry;
use crate::procs::proc_stat::{USER_HZ, parse_cpu_ticks, parse_rss_bytes};
use crate::source::nvml_calls::CallSnapshot;
use crate::streams::Streams;

/// The `source` value of the hive's own `/metrics`.
pub const SOURCE_HIVE: &str = "hive";

/// One scrape of the hive: its identity, capabilities, a fresh sample, open streams.
#[derive(Debug)]
struct Scrape {
    /// Who the hive is.
    identity: Arc<HiveIdentity>,
    /// Its capabilities now.
    caps: Arc<rbee_shared::VersionedCapabilities>,
    /// A sample taken for this scrape; `None` when sampling failed.
    sample: Option<Sample>,
    /// MetricsStreams open now.
    streams: usize,
    /// What this process costs, at the scrape.
    cost: OwnCost,
    /// Uploads of model files to peers (with a models directory).
    uploads: Option<UploadCounts>,
    /// The latency of the NVML calls made so far, by kind (empty without NVML).
    nvml_calls: Vec<CallSnapshot>,
}

/// What the hive process itself costs: CPU time used and resident memory (`None` where
/// `/proc/self` cannot be read).
#[derive(Debug, Clone, Copy, Default)]
struct OwnCost {
    /// User + system CPU seconds since the process started.
    cpu_seconds: Option<f64>,
    /// Resident memory, bytes.
    resident_bytes: Option<u64>,
}

impl OwnCost {
    /// Reads `/proc/self/stat` and `/proc/self/status`.
    fn read() -> Self {
        let read = |f: &str| std::fs::read_to_string(format!("/proc/self/{f}")).ok();
        Self {
            cpu_seconds: read("stat").and_then(|s| parse_cpu_ticks(&s)).map(|t| t as f64 / USER_HZ as f64),
            resident_bytes: read("status").and_then(|s| parse_rss_bytes(&s)),
        }
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let hive = self.identity.hive_id.as_str();
        let view = MachineView {
            hive,
            identity: Some(&self.identity),
            caps: Some(&self.caps.caps),
            sample: self.sample.as_ref(),
        };
        encode_machines(&mut enc, &[view])?;
        gauges(
            &mut enc,
            "rbee_hive_streams_open",
            "MetricsStreams this hive serves now.",
            None,
            [(vec![label("hive", hive)], self.streams as u64)],
        )?;
        gauges(
            &mut enc,
            "rbee_hive_sample_ok",
            "1 when this scrape's sample was taken, 0 when sampling failed.",
            None,
            [(vec![label("hive", hive)], u64::from(self.sample.is_some()))],
        )?;
        if let Some(cpu) = self.cost.cpu_seconds {
            let mut m = enc.encode_descriptor(
                "rbee_hive_cpu",
                "CPU time (user + system) this hive process has used since it started.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            m.encode_family(&vec![label("hive", hive)])?.encode_counter::<NoLabelSet, _, f64>(&cpu, None)?;
        }
        gauges(
            &mut enc,
            "rbee_hive_resident_memory",
            "Resident memory of this hive process.",
            Some(Unit::Bytes),
            self.cost.resident_bytes.map(|b| (vec![label("hive", hive)], b)),
        )?;
        if let Some(u) = self.uploads {
            encode_uploads(&mut enc, hive, u)?;
        }
        if !self.nvml_calls.is_empty() {
            let mut m = enc.encode_descriptor(
                "rbee_hive_nvml_call",
                "How long this hive's NVML calls take, by kind of call.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for calls in &self.nvml_calls {
                m.encode_family(&vec![label("hive", hive), label("call", calls.call.label())])?
                    .encode_histogram::<NoLabelSet>(calls.sum_s, calls.count, &calls.buckets, None)?;
            }
        }
        Ok(())
    }
}

/// The peer upload families: running now, bytes sent, calls refused.
fn encode_uploads(enc: &mut DescriptorEncoder, hive: &str, u: UploadCounts) -> fmt::Result {
    gauges(
        enc,
        "rbee_hive_peer_uploads",
        "Uploads of model files to peer hives running now (at most --max-peer-uploads).",
        None,
        [(vec![label("hive", hive)], u.running)],
    )?;
    let counters = [
        (
            "rbee_hive_peer_upload",
            "Model file bytes this hive sent to peer hives.",
            Some(Unit::Bytes),
            u.bytes,
        ),
        (
            "rbee_hive_peer_uploads_refused",
            "ReadModelFile calls refused because --max-peer-uploads were running.",
            None,
            u.refused,
        ),
    ];
    for (name, help, unit, value) in counters {
        let mut m = enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
        m.encode_family(&vec![label("hive", hive)])?.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

/// What the hive's `/metrics` endpoint renders: a fresh sample on every scrape.
pub fn render(
    identity: Arc<HiveIdentity>,
    telemetry: Arc<Telemetry>,
    streams: Streams,
    uploads: Option<PeerServer>,
) -> rbee_shared::metrics_http::Render {
    Arc::new(move || {
        let (identity, telemetry, streams) = (identity.clone(), telemetry.clone(), streams.clone());
        let uploads = uploads.as_ref().map(PeerServer::counts);
        Box::pin(async move {
            let sample = match telemetry.sample().await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics scrape: sampling failed");
                    None
                }
            };
            let scrape = Scrape {
                identity,
                caps: telemetry.capabilities(),
                sample,
                streams: streams.open(),
                cost: OwnCost::read(),
                uploads,
                nvml_calls: telemetry.nvml_calls().map(|c| c.snapshot()).unwrap_or_default(),
            };
            let mut registry = registry_for(SOURCE_HIVE);
            registry.register_collector(Box::new(scrape));
            let mut text = String::new();
            prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
            Ok(text)
        })
    })
}
