//! Prometheus metrics of one machine: the families both daemons export for a hive and
//! its GPUs (the hive for itself on `hive serve --metrics-listen`, the queen for every
//! hive it manages), and the hive's own `/metrics` endpoint.
//!
//! Values are read at scrape time from a sample and the capabilities; nothing is kept.
//! The text is written by `prometheus-client`. Names and labels: see `docs/metrics.md`.
//!
//! One source of truth per series: both endpoints export the same families, so every
//! series carries a `source` label naming the endpoint ([`SOURCE_LABEL`]: `queen` or
//! `hive`), and every dashboard, rule and documented query selects `source="queen"`.
//! A Prometheus that scrapes the hives as well as the queen then never double counts.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use rbee_shared::metrics_http::label_name;
use rbee_shared::{Capabilities, HiveIdentity, Sample};

use crate::monitor::Telemetry;
use crate::streams::Streams;

/// A metric's labels: name and value.
pub type Labels = Vec<(String, String)>;

/// The label every series of an endpoint carries, naming the endpoint that wrote it.
pub const SOURCE_LABEL: &str = "source";

/// The `source` value of the hive's own `/metrics`.
pub const SOURCE_HIVE: &str = "hive";

/// The download phases exported by `rbee_model_downloads`, each as 0 when none is in it.
const DOWNLOAD_PHASES: [rbee_shared::DownloadPhase; 6] = [
    rbee_shared::DownloadPhase::Resolving,
    rbee_shared::DownloadPhase::Downloading,
    rbee_shared::DownloadPhase::Verifying,
    rbee_shared::DownloadPhase::Done,
    rbee_shared::DownloadPhase::Failed,
    rbee_shared::DownloadPhase::Cancelled,
];

/// A registry whose every series carries `source="<source>"` (collectors included).
pub fn registry_for(source: &'static str) -> Registry {
    Registry::with_labels(std::iter::once((SOURCE_LABEL.into(), source.into())))
}

/// Encodes a gauge family; nothing when `rows` is empty.
pub fn gauges<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    rows: impl IntoIterator<Item = (Labels, V)>,
) -> fmt::Result {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// Encodes a counter family (`_total` is appended to `name`); nothing when `rows` is empty.
pub fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
    }
    Ok(())
}

/// Encodes an info family (`_info` is appended to `name`; each series has the value 1).
pub fn infos(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = Labels>,
) -> fmt::Result {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Info)?;
    for labels in rows {
        m.encode_info(&labels)?;
    }
    Ok(())
}

/// `(name, value)` as a label pair.
pub fn label(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

/// A unit not in prometheus-client's list (`ratio`, `watts`, `hertz`).
pub fn unit(name: &str) -> Option<Unit> {
    Some(Unit::Other(name.to_owned()))
}

/// One machine as its metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct MachineView<'a> {
    /// The `hive` label: the hive id (the queen uses the address before discovery).
    pub hive: &'a str,
    /// Who it is, once known.
    pub identity: Option<&'a HiveIdentity>,
    /// What it has, once known.
    pub caps: Option<&'a Capabilities>,
    /// Its newest sample.
    pub sample: Option<&'a Sample>,
}

/// The labels of one GPU: `hive`, `gpu` (index) and `uuid` (the GPU id).
fn gpu_labels(hive: &str, index: u32, id: &str) -> Labels {
    vec![label("hive", hive), label("gpu", index.to_string()), label("uuid", id)]
}

/// The hive's operator labels as one info series: each key as a label `label_KEY`
/// (made a valid label name; when two keys map to one name, the first wins).
pub fn labels_info(hive: &str, labels: &std::collections::BTreeMap<String, String>) -> Labels {
    let mut seen = BTreeSet::new();
    let mut out = vec![label("hive", hive)];
    for (k, v) in labels {
        let name = format!("label_{}", label_name(k));
        if seen.insert(name.clone()) {
            out.push((name, v.clone()));
        }
    }
    out
}

/// Encodes every machine family for `machines` (one HELP/TYPE per family).
pub fn encode_machines(enc: &mut DescriptorEncoder, machines: &[MachineView<'_>]) -> fmt::Result {
    infos(
        enc,
        "rbee_hive",
        "A hive's identity (value 1).",
        machines.iter().filter_map(|m| {
            let i = m.identity?;
            Some(vec![
                label("hive", m.hive),
                label("hostname", &*i.hostname),
                label("version", &*i.version),
                label("gpu_source", i.gpu_source.as_str()),
                label("epoch", &*i.epoch),
            ])
        }),
    )?;
    infos(
        enc,
        "rbee_hive_labels",
        "A hive's operator labels, one label_KEY per label (value 1).",
        machines.iter().filter_map(|m| Some(labels_info(m.hive, &m.caps?.labels))),
    )?;
    let hive = |m: &MachineView<'_>| vec![label("hive", m.hive)];
    let samples = || machines.iter().filter_map(|m| Some((m, m.sample?)));
    gauges(
        enc,
        "rbee_hive_cpu_usage",
        "CPU busy over the hive's last window, 0..1 of all cores.",
        unit("ratio"),
        samples().filter_map(|(m, s)| Some((hive(m), f64::from(s.cpu_percent?) / 100.0))),
    )?;
    gauges(
        enc,
        "rbee_hive_cpu_cores",
        "Logical CPU cores.",
        None,
        machines.iter().filter_map(|m| Some((hive(m), u64::from(m.caps?.cpu.logical_cores)))),
    )?;
    gauges(
        enc,
        "rbee_hive_load1",
        "One-minute load average.",
        None,
        samples().filter_map(|(m, s)| Some((hive(m), s.load_average.as_ref()?.one))),
    )?;
    gauges(
        enc,
        "rbee_hive_memory_total",
        "RAM installed.",
        Some(Unit::Bytes),
        samples().map(|(m, s)| (hive(m), s.ram_total_bytes)),
    )?;
    gauges(
        enc,
        "rbee_hive_memory_used",
        "RAM in use.",
        Some(Unit::Bytes),
        samples().map(|(m, s)| (hive(m), s.ram_used_bytes)),
    )?;
    gauges(
        enc,
        "rbee_hive_memory_available",
        "RAM available for new work.",
        Some(Unit::Bytes),
        samples().map(|(m, s)| (hive(m), s.ram_available_bytes)),
    )?;
    gauges(
        enc,
        "rbee_hive_uptime",
        "The machine's uptime.",
        Some(Unit::Seconds),
        samples().filter_map(|(m, s)| Some((hive(m), s.uptime_s?))),
    )?;
    gauges(
        enc,
        "rbee_hive_gpus_lost",
        "GPUs the driver lists but that stopped answering (e.g. fallen off the bus); 0 when none.",
        None,
        samples().map(|(m, s)| (hive(m), s.lost_gpus.len() as u64)),
    )?;
    gauges(
        enc,
        "rbee_models_disk_total",
        "Size of the filesystem that holds the models directory (absent: downloads are off).",
        Some(Unit::Bytes),
        samples().filter_map(|(m, s)| Some((hive(m), s.models_disk.as_ref()?.total_bytes))),
    )?;
    gauges(
        enc,
        "rbee_models_disk_free",
        "Space the hive may still write on the filesystem of the models directory.",
        Some(Unit::Bytes),
        samples().filter_map(|(m, s)| Some((hive(m), s.models_disk.as_ref()?.free_bytes))),
    )?;
    gauges(
        enc,
        "rbee_model_downloads",
        "Model downloads by phase: running ones, and those that ended within the last minute.",
        None,
        samples().flat_map(|(m, s)| {
            DOWNLOAD_PHASES.iter().map(move |p| {
                let n = s.downloads.iter().filter(|d| d.phase == *p).count() as u64;
                (vec![label("hive", m.hive), label("phase", p.as_str())], n)
            })
        }),
    )?;
    encode_gpus(enc, machines)
}

/// The per-GPU families.
fn encode_gpus(enc: &mut DescriptorEncoder, machines: &[MachineView<'_>]) -> fmt::Result {
    infos(
        enc,
        "rbee_gpu",
        "A GPU's model and driver (value 1).",
        machines.iter().filter_map(|m| m.caps.map(|c| (m, c))).flat_map(|(m, c)| {
            c.gpus.values().map(move |g| {
                let mut l = gpu_labels(m.hive, g.index, &g.id);
                l.push(label("name", &*g.name));
                l.push(label("pci_bus_id", &*g.pci_bus_id));
                l.push(label("driver_version", g.driver_version.clone().unwrap_or_default()));
                l
            })
        }),
    )?;
    gauges(
        enc,
        "rbee_gpu_memory_total",
        "VRAM installed.",
        Some(Unit::Bytes),
        machines.iter().filter_map(|m| m.caps.map(|c| (m, c))).flat_map(|(m, c)| {
            c.gpus.values().map(move |g| (gpu_labels(m.hive, g.index, &g.id), g.vram_total_bytes))
        }),
    )?;
    gauges(
        enc,
        "rbee_gpu_power_limit",
        "The GPU's power limit.",
        unit("watts"),
        machines.iter().filter_map(|m| m.caps.map(|c| (m, c))).flat_map(|(m, c)| {
            c.gpus.values().filter_map(move |g| {
                Some((gpu_labels(m.hive, g.index, &g.id), f64::from(g.power_limit_mw?) / 1000.0))
            })
        }),
    )?;
    let gpus = || {
        machines
            .iter()
            .filter_map(|m| m.sample.map(|s| (m, s)))
            .flat_map(|(m, s)| s.gpus.iter().map(move |g| (gpu_labels(m.hive, g.index, &g.id), g)))
    };
    gauges(
        enc,
        "rbee_gpu_memory_used",
        "VRAM in use, as the driver reports it.",
        Some(Unit::Bytes),
        gpus().filter_map(|(l, g)| Some((l, g.vram_used_bytes?))),
    )?;
    gauges(
        enc,
        "rbee_gpu_memory_free",
        "VRAM free, as the driver reports it (reservations not counted).",
        Some(Unit::Bytes),
        gpus().filter_map(|(l, g)| Some((l, g.vram_free_bytes?))),
    )?;
    gauges(
        enc,
        "rbee_gpu_utilization",
        "Time the GPU was busy over the driver's last window, 0..1.",
        unit("ratio"),
        gpus().filter_map(|(l, g)| Some((l, f64::from(g.gpu_util_percent?) / 100.0))),
    )?;
    gauges(
        enc,
        "rbee_gpu_memory_utilization",
        "Time the memory bus was busy over the driver's last window, 0..1.",
        unit("ratio"),
        gpus().filter_map(|(l, g)| Some((l, f64::from(g.mem_util_percent?) / 100.0))),
    )?;
    gauges(
        enc,
        "rbee_gpu_temperature",
        "GPU temperature.",
        Some(Unit::Celsius),
        gpus().filter_map(|(l, g)| Some((l, f64::from(g.temperature_c?)))),
    )?;
    gauges(
        enc,
        "rbee_gpu_power",
        "Power drawn.",
        unit("watts"),
        gpus().filter_map(|(l, g)| Some((l, f64::from(g.power_draw_mw?) / 1000.0))),
    )?;
    gauges(
        enc,
        "rbee_gpu_sm_clock",
        "SM clock.",
        unit("hertz"),
        gpus().filter_map(|(l, g)| Some((l, f64::from(g.sm_clock_mhz?) * 1e6))),
    )?;
    counters(
        enc,
        "rbee_gpu_ecc_corrected_errors",
        "Corrected ECC errors since the driver loaded (volatile).",
        None,
        gpus().filter_map(|(l, g)| Some((l, g.ecc_corrected_volatile?))),
    )?;
    counters(
        enc,
        "rbee_gpu_ecc_uncorrected_errors",
        "Uncorrected ECC errors since the driver loaded (volatile).",
        None,
        gpus().filter_map(|(l, g)| Some((l, g.ecc_uncorrected_volatile?))),
    )?;
    counters(
        enc,
        "rbee_gpu_xid_events",
        "XID events seen since the hive started.",
        None,
        gpus().filter_map(|(l, g)| Some((l, g.xid_events?))),
    )?;
    gauges(
        enc,
        "rbee_gpu_last_xid",
        "The last XID code seen (0: none).",
        None,
        gpus().filter_map(|(l, g)| Some((l, g.last_xid?))),
    )
}

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
        )
    }
}

/// What the hive's `/metrics` endpoint renders: a fresh sample on every scrape.
pub fn render(
    identity: Arc<HiveIdentity>,
    telemetry: Arc<Telemetry>,
    streams: Streams,
) -> rbee_shared::metrics_http::Render {
    Arc::new(move || {
        let (identity, telemetry, streams) = (identity.clone(), telemetry.clone(), streams.clone());
        Box::pin(async move {
            let sample = match telemetry.sample().await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics scrape: sampling failed");
                    None
                }
            };
            let scrape = Scrape { identity, caps: telemetry.capabilities(), sample, streams: streams.open() };
            let mut registry = registry_for(SOURCE_HIVE);
            registry.register_collector(Box::new(scrape));
            let mut text = String::new();
            prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
            Ok(text)
        })
    })
}
