//! `hive probe`: this machine's capabilities and one live sample, printed once
//! (a one-shot `nvidia-smi` + `free`).

use std::fmt::Write as _;
use std::time::Duration;

use rbee_shared::bytesize::format_bytes;
use rbee_shared::{Capabilities, DeviceSourceKind, Sample};
use serde::Serialize;

use crate::HiveError;
use crate::monitor::{GpuChoice, Monitor};

/// The CPU measurement window of a probe.
pub const PROBE_WINDOW: Duration = Duration::from_millis(250);

/// What a probe found.
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    /// The machine's hostname.
    pub hostname: String,
    /// Where the GPU data came from.
    pub gpu_source: DeviceSourceKind,
    /// The capabilities.
    pub capabilities: Capabilities,
    /// One sample, CPU measured over [`PROBE_WINDOW`].
    pub sample: Sample,
}

/// Opens the sources, scans, and takes one sample over a short window. Blocks.
pub fn probe(gpu: GpuChoice, max_gpu_processes: usize) -> Result<ProbeReport, HiveError> {
    let mut monitor = Monitor::open(gpu, Default::default())?;
    monitor.limit_gpu_processes(max_gpu_processes);
    let capabilities = monitor.scan()?;
    monitor.sample()?;
    std::thread::sleep(PROBE_WINDOW);
    let sample = monitor.sample()?;
    Ok(ProbeReport {
        hostname: rbee_shared::hostname::local_hostname(),
        gpu_source: monitor.gpu_source(),
        capabilities,
        sample,
    })
}

/// A report as `hive probe --json` prints it: the proto3 JSON mapping of the wire types
/// (camelCase, 64-bit counts as strings, enum names), as grpcurl prints `Discover` and
/// the queen's `--json` prints a hive: one JSON style everywhere. Zeros and empty lists
/// are printed; unset optional fields are left out.
pub fn to_json(r: &ProbeReport) -> Result<String, serde_json::Error> {
    use rbee_proto::v1 as pb;
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire {
        hostname: String,
        gpu_source: pb::DeviceSourceKind,
        capabilities: pb::Capabilities,
        sample: pb::Sample,
    }
    let versioned = rbee_shared::VersionedCapabilities { version: 1, caps: r.capabilities.clone() };
    let wire = Wire {
        hostname: r.hostname.clone(),
        gpu_source: r.gpu_source.into(),
        capabilities: (&versioned).into(),
        sample: (&r.sample).into(),
    };
    let mut value = serde_json::to_value(&wire)?;
    drop_nulls(&mut value);
    serde_json::to_string_pretty(&value)
}

/// Leaves out the nulls of unset optional and message fields, at any depth.
fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v}{unit}"))
}

/// Renders a report as human-readable text.
pub fn render(r: &ProbeReport) -> String {
    let (c, s) = (&r.capabilities, &r.sample);
    let mut out = String::new();
    let _ = writeln!(out, "host {}  gpu source: {}", r.hostname, r.gpu_source.as_str());
    let _ = writeln!(
        out,
        "CPU  {} | {} logical, {} physical cores | busy {} over {} | load {}",
        c.cpu.model,
        c.cpu.logical_cores,
        opt(c.cpu.physical_cores, ""),
        opt(s.cpu_percent.map(|p| format!("{p:.1}")), "%"),
        opt(s.cpu_window_ms, " ms"),
        s.load_average.map_or_else(|| "-".into(), |l| format!("{:.2} {:.2} {:.2}", l.one, l.five, l.fifteen)),
    );
    let _ = writeln!(
        out,
        "RAM  used {} of {}, available {} | swap {} of {} | uptime {}",
        format_bytes(s.ram_used_bytes),
        format_bytes(s.ram_total_bytes),
        format_bytes(s.ram_available_bytes),
        opt(s.swap_used_bytes.map(format_bytes), ""),
        opt(s.swap_total_bytes.map(format_bytes), ""),
        opt(s.uptime_s, " s"),
    );
    let backends: Vec<String> = c.backends.iter().map(|b| format!("{b:?}").to_lowercase()).collect();
    let _ = writeln!(out, "backends: {}", backends.join(", "));
    for lost in &s.lost_gpus {
        let id = lost.id.as_deref().unwrap_or("-");
        let _ = writeln!(out, "GPU {} ({id}) does not answer: {}", lost.index, lost.reason);
    }
    if c.gpus.is_empty() {
        let _ = writeln!(out, "no GPUs");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<4} {:<28} {:<18} {:>22} {:>6} {:>6} {:>14}  ID",
        "GPU", "NAME", "BUS", "VRAM USED / TOTAL", "UTIL", "TEMP", "POWER / LIMIT"
    );
    for gpu in c.gpus_by_index() {
        let live = s.gpus.iter().find(|g| g.id == gpu.id);
        let used = live.and_then(|g| g.vram_used_bytes).map(format_bytes);
        let _ = writeln!(
            out,
            "{:<4} {:<28} {:<18} {:>22} {:>6} {:>6} {:>14}  {}",
            gpu.index,
            gpu.name,
            gpu.pci_bus_id,
            format!("{} / {}", opt(used, ""), format_bytes(gpu.vram_total_bytes)),
            opt(live.and_then(|g| g.gpu_util_percent), "%"),
            opt(live.and_then(|g| g.temperature_c), "C"),
            format!(
                "{} / {}",
                opt(live.and_then(|g| g.power_draw_mw).map(|mw| mw / 1000), "W"),
                opt(gpu.power_limit_mw.map(|mw| mw / 1000), "W")
            ),
            gpu.id,
        );
    }
    out
}
