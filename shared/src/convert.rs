//! The one boundary between wire types (`rbee_proto::v1`) and domain types.
//!
//! Domain -> wire is infallible (`From`). Wire -> domain is `TryFrom` and validates
//! once, here: a bad message is rejected with the field and the reason.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use rbee_proto::v1 as pb;

use crate::gpu_process::MAX_GPU_PROCESSES;
pub use crate::labels::MAX_LABELS;
use crate::stream_message::MAX_EPOCH_BYTES;
use crate::{
    Backend, Capabilities, CapabilityDiff, ComputeCapability, ConvertError, CpuInfo, DeviceSourceKind,
    GpuDevice, GpuProcess, GpuProcesses, GpuSample, HiveIdentity, HivePayload, HiveStreamMessage, KnownView,
    LoadAverage, LostGpu, MigMode, QueenStreamMessage, Sample, SampleInterval, SnapshotReason,
    VersionedCapabilities,
};

pub mod models;
mod topology;

/// Most GPUs one hive may report.
pub const MAX_DEVICES: usize = 64;
/// Longest string (bytes) any field may carry.
pub const MAX_STRING_BYTES: usize = 256;
/// Most per-core CPU readings one sample may carry.
pub const MAX_CORES: usize = 4096;

/// A value checked on its way in from the wire. The checks take the field's name as
/// `impl Display` (e.g. `format_args!("{field}.id")`) and build its text only for an
/// error: a sample of 8 GPUs is checked without formatting a name per field.
pub(crate) type Checked<T> = std::result::Result<T, ConvertError>;

fn check_str(field: impl fmt::Display, s: &str) -> Checked<String> {
    if s.len() > MAX_STRING_BYTES {
        return Err(ConvertError::new(field.to_string(), format!("{} bytes > {MAX_STRING_BYTES}", s.len())));
    }
    Ok(s.to_owned())
}

fn check_opt_str(field: impl fmt::Display, s: &Option<String>) -> Checked<Option<String>> {
    s.as_deref().map(|s| check_str(field, s)).transpose()
}

fn check_percent(field: impl fmt::Display, v: Option<f32>) -> Checked<Option<f32>> {
    match v {
        Some(p) if !(p.is_finite() && (0.0..=100.0).contains(&p)) => {
            Err(ConvertError::new(field.to_string(), format!("{p} is not a percentage in 0..=100")))
        }
        other => Ok(other),
    }
}

fn check_finite(field: impl fmt::Display, v: Option<f32>) -> Checked<Option<f32>> {
    match v {
        Some(x) if !x.is_finite() => Err(ConvertError::new(field.to_string(), format!("{x} is not finite"))),
        other => Ok(other),
    }
}

fn labels_from_wire(field: &str, labels: &HashMap<String, String>) -> Checked<BTreeMap<String, String>> {
    crate::labels::validate_labels(labels.iter()).map_err(|e| ConvertError::new(field, e.to_string()))?;
    Ok(labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn labels_to_wire(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl From<Backend> for pb::Backend {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Cpu => pb::Backend::Cpu,
            Backend::Cuda => pb::Backend::Cuda,
        }
    }
}

fn backends_from_wire(field: &str, raw: &[i32]) -> Checked<Vec<Backend>> {
    let mut out = raw
        .iter()
        .map(|&b| match pb::Backend::try_from(b) {
            Ok(pb::Backend::Cpu) => Ok(Backend::Cpu),
            Ok(pb::Backend::Cuda) => Ok(Backend::Cuda),
            _ => Err(ConvertError::new(field, format!("unknown backend {b}"))),
        })
        .collect::<Checked<Vec<_>>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

fn backends_to_wire(b: &[Backend]) -> Vec<i32> {
    b.iter().map(|&b| pb::Backend::from(b) as i32).collect()
}

impl From<&GpuDevice> for pb::GpuDevice {
    fn from(g: &GpuDevice) -> Self {
        Self {
            id: g.id.clone(),
            index: g.index,
            name: g.name.clone(),
            pci_bus_id: g.pci_bus_id.clone(),
            compute_capability: g
                .compute_capability
                .map(|c| pb::ComputeCapability { major: c.major, minor: c.minor }),
            vram_total_bytes: g.vram_total_bytes,
            driver_version: g.driver_version.clone(),
            cuda_version: g.cuda_version.clone(),
            power_limit_mw: g.power_limit_mw,
            mig_mode: match g.mig_mode {
                MigMode::NotReported => pb::MigMode::Unspecified,
                MigMode::Disabled => pb::MigMode::Disabled,
                MigMode::Enabled => pb::MigMode::Enabled,
            } as i32,
            topology: Some(pb::GpuTopology::from(&g.topology)),
        }
    }
}

fn gpu_from_wire(field: &str, g: &pb::GpuDevice) -> Checked<GpuDevice> {
    if g.id.is_empty() {
        return Err(ConvertError::new(format!("{field}.id"), "must not be empty"));
    }
    Ok(GpuDevice {
        id: check_str(format_args!("{field}.id"), &g.id)?,
        index: g.index,
        name: check_str(format_args!("{field}.name"), &g.name)?,
        pci_bus_id: check_str(format_args!("{field}.pci_bus_id"), &g.pci_bus_id)?,
        compute_capability: g
            .compute_capability
            .map(|c| ComputeCapability { major: c.major, minor: c.minor }),
        vram_total_bytes: g.vram_total_bytes,
        driver_version: check_opt_str(format_args!("{field}.driver_version"), &g.driver_version)?,
        cuda_version: check_opt_str(format_args!("{field}.cuda_version"), &g.cuda_version)?,
        power_limit_mw: g.power_limit_mw,
        mig_mode: match pb::MigMode::try_from(g.mig_mode) {
            Ok(pb::MigMode::Unspecified) => MigMode::NotReported,
            Ok(pb::MigMode::Disabled) => MigMode::Disabled,
            Ok(pb::MigMode::Enabled) => MigMode::Enabled,
            Err(_) => {
                return Err(ConvertError::new(
                    format!("{field}.mig_mode"),
                    format!("unknown value {}", g.mig_mode),
                ));
            }
        },
        topology: topology::topology_from_wire(&format!("{field}.topology"), &g.id, g.topology.as_ref())?,
    })
}

fn gpus_from_wire(field: &str, gpus: &[pb::GpuDevice]) -> Checked<Vec<GpuDevice>> {
    if gpus.len() > MAX_DEVICES {
        return Err(ConvertError::new(field, format!("{} devices > {MAX_DEVICES}", gpus.len())));
    }
    let mut seen = std::collections::HashSet::new();
    gpus.iter()
        .enumerate()
        .map(|(i, g)| {
            let gpu = gpu_from_wire(&format!("{field}[{i}]"), g)?;
            if !seen.insert(gpu.id.clone()) {
                return Err(ConvertError::new(
                    format!("{field}[{i}].id"),
                    format!("duplicate device id {:?}", gpu.id),
                ));
            }
            Ok(gpu)
        })
        .collect()
}

impl From<&CpuInfo> for pb::CpuInfo {
    fn from(c: &CpuInfo) -> Self {
        Self { model: c.model.clone(), physical_cores: c.physical_cores, logical_cores: c.logical_cores }
    }
}

fn cpu_from_wire(field: &str, c: &pb::CpuInfo) -> Checked<CpuInfo> {
    Ok(CpuInfo {
        model: check_str(format_args!("{field}.model"), &c.model)?,
        physical_cores: c.physical_cores,
        logical_cores: c.logical_cores,
    })
}

impl From<&VersionedCapabilities> for pb::Capabilities {
    fn from(v: &VersionedCapabilities) -> Self {
        let c = &v.caps;
        Self {
            version: v.version,
            gpus: c.gpus_by_index().into_iter().map(Into::into).collect(),
            cpu: Some((&c.cpu).into()),
            ram_total_bytes: c.ram_total_bytes,
            backends: backends_to_wire(&c.backends),
            labels: labels_to_wire(&c.labels),
            models: c.models.values().map(Into::into).collect(),
        }
    }
}

impl TryFrom<&pb::Capabilities> for VersionedCapabilities {
    type Error = ConvertError;
    fn try_from(c: &pb::Capabilities) -> Checked<Self> {
        let cpu = c.cpu.as_ref().ok_or_else(|| ConvertError::new("capabilities.cpu", "is required"))?;
        Ok(Self {
            version: c.version,
            caps: Capabilities {
                gpus: gpus_from_wire("capabilities.gpus", &c.gpus)?
                    .into_iter()
                    .map(|g| (g.id.clone(), g))
                    .collect(),
                cpu: cpu_from_wire("capabilities.cpu", cpu)?,
                ram_total_bytes: c.ram_total_bytes,
                backends: backends_from_wire("capabilities.backends", &c.backends)?,
                labels: labels_from_wire("capabilities.labels", &c.labels)?,
                models: models::models_from_wire("capabilities.models", &c.models)?
                    .into_iter()
                    .map(|m| (m.id.clone(), m))
                    .collect(),
            },
        })
    }
}

impl From<DeviceSourceKind> for pb::DeviceSourceKind {
    fn from(k: DeviceSourceKind) -> Self {
        match k {
            DeviceSourceKind::None => pb::DeviceSourceKind::None,
            DeviceSourceKind::Nvml => pb::DeviceSourceKind::Nvml,
            DeviceSourceKind::Simulated => pb::DeviceSourceKind::Simulated,
        }
    }
}

impl From<&HiveIdentity> for pb::HiveIdentity {
    fn from(i: &HiveIdentity) -> Self {
        Self {
            hive_id: i.hive_id.clone(),
            epoch: i.epoch.clone(),
            hostname: i.hostname.clone(),
            advertised_address: i.advertised_address.clone(),
            version: i.version.clone(),
            protocol_version: i.protocol_version,
            labels: labels_to_wire(&i.labels),
            gpu_source: pb::DeviceSourceKind::from(i.gpu_source) as i32,
            started_at_unix_ms: i.started_at_unix_ms,
        }
    }
}

/// A wire GPU source as the domain's (`UNSPECIFIED` is `None`, no GPU source); `None`
/// for an unknown value. The CLI names a source by this and [`DeviceSourceKind::as_str`].
pub fn device_source_from_wire(k: i32) -> Option<DeviceSourceKind> {
    match pb::DeviceSourceKind::try_from(k).ok()? {
        pb::DeviceSourceKind::Nvml => Some(DeviceSourceKind::Nvml),
        pb::DeviceSourceKind::Simulated => Some(DeviceSourceKind::Simulated),
        pb::DeviceSourceKind::None | pb::DeviceSourceKind::Unspecified => Some(DeviceSourceKind::None),
    }
}

impl TryFrom<&pb::HiveIdentity> for HiveIdentity {
    type Error = ConvertError;
    fn try_from(i: &pb::HiveIdentity) -> Checked<Self> {
        for (field, v) in [("identity.hive_id", &i.hive_id), ("identity.epoch", &i.epoch)] {
            if v.is_empty() {
                return Err(ConvertError::new(field, "must not be empty"));
            }
        }
        Ok(Self {
            hive_id: {
                crate::identity::check_hive_id(&i.hive_id)
                    .map_err(|e| ConvertError::new("identity.hive_id", e.0))?;
                i.hive_id.clone()
            },
            epoch: check_str("identity.epoch", &i.epoch)?,
            hostname: check_str("identity.hostname", &i.hostname)?,
            advertised_address: check_str("identity.advertised_address", &i.advertised_address)?,
            version: check_str("identity.version", &i.version)?,
            protocol_version: i.protocol_version,
            labels: labels_from_wire("identity.labels", &i.labels)?,
            gpu_source: device_source_from_wire(i.gpu_source).ok_or_else(|| {
                ConvertError::new("identity.gpu_source", format!("unknown value {}", i.gpu_source))
            })?,
            started_at_unix_ms: i.started_at_unix_ms,
        })
    }
}

impl From<&CapabilityDiff> for pb::CapabilityDiff {
    fn from(d: &CapabilityDiff) -> Self {
        Self {
            base_version: d.base_version,
            new_version: d.new_version,
            gpus_added: d.gpus_added.iter().map(Into::into).collect(),
            gpus_removed: d.gpus_removed.clone(),
            gpus_changed: d.gpus_changed.iter().map(Into::into).collect(),
            cpu: d.cpu.as_ref().map(Into::into),
            ram_total_bytes: d.ram_total_bytes,
            backends: d.backends.as_ref().map(|b| pb::BackendList { backends: backends_to_wire(b) }),
            labels: d.labels.as_ref().map(|l| pb::Labels { labels: labels_to_wire(l) }),
            models_added: d.models_added.iter().map(Into::into).collect(),
            models_removed: d.models_removed.clone(),
            models_changed: d.models_changed.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<&pb::CapabilityDiff> for CapabilityDiff {
    type Error = ConvertError;
    fn try_from(d: &pb::CapabilityDiff) -> Checked<Self> {
        if d.gpus_removed.len() > MAX_DEVICES {
            return Err(ConvertError::new(
                "diff.gpus_removed",
                format!("{} ids > {MAX_DEVICES}", d.gpus_removed.len()),
            ));
        }
        Ok(Self {
            base_version: d.base_version,
            new_version: d.new_version,
            gpus_added: gpus_from_wire("diff.gpus_added", &d.gpus_added)?,
            gpus_removed: d
                .gpus_removed
                .iter()
                .map(|id| check_str("diff.gpus_removed", id))
                .collect::<Checked<_>>()?,
            gpus_changed: gpus_from_wire("diff.gpus_changed", &d.gpus_changed)?,
            cpu: d.cpu.as_ref().map(|c| cpu_from_wire("diff.cpu", c)).transpose()?,
            ram_total_bytes: d.ram_total_bytes,
            backends: d
                .backends
                .as_ref()
                .map(|b| backends_from_wire("diff.backends", &b.backends))
                .transpose()?,
            labels: d.labels.as_ref().map(|l| labels_from_wire("diff.labels", &l.labels)).transpose()?,
            models_added: models::models_from_wire("diff.models_added", &d.models_added)?,
            models_removed: models::model_ids_from_wire("diff.models_removed", &d.models_removed)?,
            models_changed: models::models_from_wire("diff.models_changed", &d.models_changed)?,
        })
    }
}

impl From<&GpuSample> for pb::GpuSample {
    fn from(g: &GpuSample) -> Self {
        Self {
            id: g.id.clone(),
            index: g.index,
            vram_used_bytes: g.vram_used_bytes,
            vram_free_bytes: g.vram_free_bytes,
            gpu_util_percent: g.gpu_util_percent,
            mem_util_percent: g.mem_util_percent,
            temperature_c: g.temperature_c,
            power_draw_mw: g.power_draw_mw,
            sm_clock_mhz: g.sm_clock_mhz,
            mem_clock_mhz: g.mem_clock_mhz,
            ecc_corrected_volatile: g.ecc_corrected_volatile,
            ecc_uncorrected_volatile: g.ecc_uncorrected_volatile,
            xid_events: g.xid_events,
            last_xid: g.last_xid,
            vram_reserved_bytes: g.vram_reserved_bytes,
            processes: g.processes.as_ref().map(Into::into),
            unattributed_vram_bytes: g.unattributed_vram_bytes,
        }
    }
}

/// `f` of every item (with its position), in a vector allocated once at its length:
/// collecting `Result`s grows a vector from a guess instead (4, 8, 16, ...: a
/// reallocation per doubling, for every sample the queen converts).
fn each_checked<T, U>(items: &[T], mut f: impl FnMut(usize, &T) -> Checked<U>) -> Checked<Vec<U>> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        out.push(f(i, item)?);
    }
    Ok(out)
}

fn gpu_sample_from_wire(field: impl fmt::Display + Copy, g: &pb::GpuSample) -> Checked<GpuSample> {
    if let (Some(used), Some(free)) = (g.vram_used_bytes, g.vram_free_bytes)
        && used.checked_add(free).is_none()
    {
        return Err(ConvertError::new(format!("{field}.vram_used_bytes"), "used + free overflows"));
    }
    if let (Some(used), Some(free), Some(reserved)) =
        (g.vram_used_bytes, g.vram_free_bytes, g.vram_reserved_bytes)
        && used.checked_add(free).and_then(|s| s.checked_add(reserved)).is_none()
    {
        return Err(ConvertError::new(
            format!("{field}.vram_reserved_bytes"),
            "used + free + reserved overflows",
        ));
    }
    if let (Some(used), Some(rest)) = (g.vram_used_bytes, g.unattributed_vram_bytes)
        && rest > used
    {
        return Err(ConvertError::new(
            format!("{field}.unattributed_vram_bytes"),
            format!("{rest} > vram_used_bytes {used}"),
        ));
    }
    Ok(GpuSample {
        id: check_str(format_args!("{field}.id"), &g.id)?,
        index: g.index,
        vram_used_bytes: g.vram_used_bytes,
        vram_free_bytes: g.vram_free_bytes,
        gpu_util_percent: check_percent(format_args!("{field}.gpu_util_percent"), g.gpu_util_percent)?,
        mem_util_percent: check_percent(format_args!("{field}.mem_util_percent"), g.mem_util_percent)?,
        temperature_c: check_finite(format_args!("{field}.temperature_c"), g.temperature_c)?,
        power_draw_mw: g.power_draw_mw,
        sm_clock_mhz: g.sm_clock_mhz,
        mem_clock_mhz: g.mem_clock_mhz,
        ecc_corrected_volatile: g.ecc_corrected_volatile,
        ecc_uncorrected_volatile: g.ecc_uncorrected_volatile,
        xid_events: g.xid_events,
        last_xid: g.last_xid,
        processes: g
            .processes
            .as_ref()
            .map(|p| gpu_processes_from_wire(format_args!("{field}.processes"), p))
            .transpose()?,
        unattributed_vram_bytes: g.unattributed_vram_bytes,
        vram_reserved_bytes: g.vram_reserved_bytes,
    })
}

fn lost_gpu_from_wire(field: impl fmt::Display + Copy, l: &pb::LostGpu) -> Checked<LostGpu> {
    Ok(LostGpu {
        index: l.index,
        id: (!l.id.is_empty()).then(|| check_str(format_args!("{field}.id"), &l.id)).transpose()?,
        reason: check_str(format_args!("{field}.reason"), &l.reason)?,
        since_unix_ms: l.since_unix_ms,
    })
}

impl From<&GpuProcess> for pb::GpuProcess {
    fn from(p: &GpuProcess) -> Self {
        Self {
            pid: p.pid,
            used_vram_bytes: p.used_vram_bytes,
            name: p.name.clone(),
            rss_bytes: p.rss_bytes,
            cpu_percent: p.cpu_percent,
            cgroup: p.cgroup.clone(),
            container_runtime: p.container_runtime.clone(),
            container_id: p.container_id.clone(),
            systemd_unit: p.systemd_unit.clone(),
            cgroup_memory_bytes: p.cgroup_memory_bytes,
            cgroup_cpu_usage_usec: p.cgroup_cpu_usage_usec,
            reservation_id: p.reservation_id.clone(),
        }
    }
}

impl From<&GpuProcesses> for pb::GpuProcesses {
    fn from(p: &GpuProcesses) -> Self {
        Self {
            listed: p.listed.iter().map(Into::into).collect(),
            unlisted: p.unlisted,
            unlisted_vram_bytes: p.unlisted_vram_bytes,
        }
    }
}

fn gpu_process_from_wire(field: impl fmt::Display + Copy, p: &pb::GpuProcess) -> Checked<GpuProcess> {
    let s = |name: &str, v: &Option<String>| check_opt_str(format_args!("{field}.{name}"), v);
    if let Some(c) = p.cpu_percent
        && !(c.is_finite() && c >= 0.0)
    {
        return Err(ConvertError::new(
            format!("{field}.cpu_percent"),
            format!("{c} is not a percentage >= 0"),
        ));
    }
    Ok(GpuProcess {
        pid: p.pid,
        used_vram_bytes: p.used_vram_bytes,
        name: s("name", &p.name)?,
        rss_bytes: p.rss_bytes,
        cpu_percent: p.cpu_percent,
        cgroup: s("cgroup", &p.cgroup)?,
        container_runtime: s("container_runtime", &p.container_runtime)?,
        container_id: s("container_id", &p.container_id)?,
        systemd_unit: s("systemd_unit", &p.systemd_unit)?,
        cgroup_memory_bytes: p.cgroup_memory_bytes,
        cgroup_cpu_usage_usec: p.cgroup_cpu_usage_usec,
        reservation_id: s("reservation_id", &p.reservation_id)?,
    })
}

fn gpu_processes_from_wire(field: impl fmt::Display + Copy, p: &pb::GpuProcesses) -> Checked<GpuProcesses> {
    if p.listed.len() > MAX_GPU_PROCESSES {
        return Err(ConvertError::new(
            format!("{field}.listed"),
            format!("{} processes > {MAX_GPU_PROCESSES}", p.listed.len()),
        ));
    }
    let mut pids = std::collections::HashSet::with_capacity(p.listed.len());
    let listed = p
        .listed
        .iter()
        .enumerate()
        .map(|(i, proc)| {
            if !pids.insert(proc.pid) {
                return Err(ConvertError::new(
                    format!("{field}.listed[{i}].pid"),
                    format!("pid {} is listed twice", proc.pid),
                ));
            }
            gpu_process_from_wire(format_args!("{field}.listed[{i}]"), proc)
        })
        .collect::<Checked<Vec<_>>>()?;
    Ok(GpuProcesses { listed, unlisted: p.unlisted, unlisted_vram_bytes: p.unlisted_vram_bytes })
}

impl From<&Sample> for pb::Sample {
    fn from(s: &Sample) -> Self {
        Self {
            taken_at_unix_ms: s.taken_at_unix_ms,
            cpu_window_ms: s.cpu_window_ms,
            cpu_percent: s.cpu_percent,
            cpu_per_core_percent: s.cpu_per_core_percent.clone(),
            load_average: s.load_average.map(|l| pb::LoadAverage {
                one: l.one,
                five: l.five,
                fifteen: l.fifteen,
            }),
            ram_total_bytes: s.ram_total_bytes,
            ram_used_bytes: s.ram_used_bytes,
            ram_available_bytes: s.ram_available_bytes,
            swap_total_bytes: s.swap_total_bytes,
            swap_used_bytes: s.swap_used_bytes,
            uptime_s: s.uptime_s,
            gpus: s.gpus.iter().map(Into::into).collect(),
            capability_version: s.capability_version,
            lost_gpus: s
                .lost_gpus
                .iter()
                .map(|l| pb::LostGpu {
                    index: l.index,
                    id: l.id.clone().unwrap_or_default(),
                    reason: l.reason.clone(),
                    since_unix_ms: l.since_unix_ms,
                })
                .collect(),
            downloads: s.downloads.iter().map(Into::into).collect(),
            models_disk: s.models_disk.as_ref().map(Into::into),
            preloads: s.preloads.iter().map(Into::into).collect(),
            read_bandwidth: s.read_bandwidth.as_ref().map(Into::into),
            cuts: s.cuts.clone(),
        }
    }
}

impl TryFrom<&pb::Sample> for Sample {
    type Error = ConvertError;
    fn try_from(s: &pb::Sample) -> Checked<Self> {
        if s.ram_used_bytes > s.ram_total_bytes {
            return Err(ConvertError::new(
                "sample.ram_used_bytes",
                format!("{} > ram_total_bytes {}", s.ram_used_bytes, s.ram_total_bytes),
            ));
        }
        if s.ram_available_bytes > s.ram_total_bytes {
            return Err(ConvertError::new(
                "sample.ram_available_bytes",
                format!("{} > ram_total_bytes {}", s.ram_available_bytes, s.ram_total_bytes),
            ));
        }
        if let (Some(used), Some(total)) = (s.swap_used_bytes, s.swap_total_bytes)
            && used > total
        {
            return Err(ConvertError::new(
                "sample.swap_used_bytes",
                format!("{used} > swap_total_bytes {total}"),
            ));
        }
        if s.cpu_per_core_percent.len() > MAX_CORES {
            return Err(ConvertError::new(
                "sample.cpu_per_core_percent",
                format!("{} cores > {MAX_CORES}", s.cpu_per_core_percent.len()),
            ));
        }
        if s.lost_gpus.len() > MAX_DEVICES {
            return Err(ConvertError::new(
                "sample.lost_gpus",
                format!("{} devices > {MAX_DEVICES}", s.lost_gpus.len()),
            ));
        }
        if s.gpus.len() > MAX_DEVICES {
            return Err(ConvertError::new(
                "sample.gpus",
                format!("{} devices > {MAX_DEVICES}", s.gpus.len()),
            ));
        }
        let load_average = match s.load_average {
            Some(l) if ![l.one, l.five, l.fifteen].iter().all(|x| x.is_finite() && *x >= 0.0) => {
                return Err(ConvertError::new("sample.load_average", "values must be finite and >= 0"));
            }
            Some(l) => Some(LoadAverage { one: l.one, five: l.five, fifteen: l.fifteen }),
            None => None,
        };
        Ok(Self {
            taken_at_unix_ms: s.taken_at_unix_ms,
            cpu_window_ms: s.cpu_window_ms,
            cpu_percent: check_percent("sample.cpu_percent", s.cpu_percent)?,
            cpu_per_core_percent: each_checked(&s.cpu_per_core_percent, |i, p| {
                check_percent(format_args!("sample.cpu_per_core_percent[{i}]"), Some(*p))
                    .map(|p| p.unwrap_or(0.0))
            })?,
            load_average,
            ram_total_bytes: s.ram_total_bytes,
            ram_used_bytes: s.ram_used_bytes,
            ram_available_bytes: s.ram_available_bytes,
            swap_total_bytes: s.swap_total_bytes,
            swap_used_bytes: s.swap_used_bytes,
            uptime_s: s.uptime_s,
            gpus: each_checked(&s.gpus, |i, g| gpu_sample_from_wire(format_args!("sample.gpus[{i}]"), g))?,
            capability_version: s.capability_version,
            lost_gpus: each_checked(&s.lost_gpus, |i, l| {
                lost_gpu_from_wire(format_args!("sample.lost_gpus[{i}]"), l)
            })?,
            downloads: models::downloads_from_wire("sample.downloads", &s.downloads)?,
            models_disk: s
                .models_disk
                .as_ref()
                .map(|d| models::disk_from_wire("sample.models_disk", d))
                .transpose()?,
            preloads: models::downloads_from_wire("sample.preloads", &s.preloads)?,
            read_bandwidth: s
                .read_bandwidth
                .as_ref()
                .map(|b| models::read_bandwidth_from_wire("sample.read_bandwidth", b))
                .transpose()?,
            cuts: crate::view_budget::cuts_from_wire(&s.cuts),
        })
    }
}

impl From<SnapshotReason> for pb::SnapshotReason {
    fn from(r: SnapshotReason) -> Self {
        match r {
            SnapshotReason::Initial => pb::SnapshotReason::Initial,
            SnapshotReason::Outdated => pb::SnapshotReason::Outdated,
            SnapshotReason::Resync => pb::SnapshotReason::Resync,
            SnapshotReason::Unspecified => pb::SnapshotReason::Unspecified,
        }
    }
}

impl From<&HivePayload> for pb::hive_message::Payload {
    fn from(p: &HivePayload) -> Self {
        use pb::hive_message::Payload;
        match p {
            HivePayload::Snapshot { reason, identity, capabilities } => Payload::Snapshot(pb::Snapshot {
                reason: pb::SnapshotReason::from(*reason) as i32,
                identity: Some(identity.into()),
                capabilities: Some(capabilities.into()),
            }),
            HivePayload::Sample(s) => Payload::Sample(s.into()),
            HivePayload::Diff(d) => Payload::Diff(d.into()),
        }
    }
}

impl From<&HiveStreamMessage> for pb::HiveMessage {
    fn from(m: &HiveStreamMessage) -> Self {
        Self { seq: m.seq, hive_time_unix_ms: m.hive_time_unix_ms, payload: Some((&m.payload).into()) }
    }
}

impl From<&QueenStreamMessage> for pb::QueenMessage {
    fn from(m: &QueenStreamMessage) -> Self {
        Self {
            sample_interval_ms: m.sample_interval.map(SampleInterval::as_millis_u32),
            known_epoch: m.known.as_ref().map(|k| k.epoch.clone()),
            known_capability_version: m.known.as_ref().map(|k| k.capability_version),
            resync: m.resync,
            compact: m.compact,
        }
    }
}

impl TryFrom<&pb::QueenMessage> for QueenStreamMessage {
    type Error = ConvertError;
    fn try_from(m: &pb::QueenMessage) -> Checked<Self> {
        let sample_interval = m
            .sample_interval_ms
            .map(|ms| SampleInterval::from_millis(u64::from(ms)))
            .transpose()
            .map_err(|e| ConvertError::new("sample_interval_ms", e.to_string()))?;
        let known = match (&m.known_epoch, m.known_capability_version) {
            (None, None) => None,
            (Some(epoch), Some(version)) => {
                if epoch.is_empty() || epoch.len() > MAX_EPOCH_BYTES {
                    return Err(ConvertError::new(
                        "known_epoch",
                        format!("must be 1..={MAX_EPOCH_BYTES} bytes, got {}", epoch.len()),
                    ));
                }
                Some(KnownView { epoch: epoch.clone(), capability_version: version })
            }
            _ => {
                return Err(ConvertError::new(
                    "known_epoch",
                    "known_epoch and known_capability_version must be set together",
                ));
            }
        };
        Ok(Self { sample_interval, known, resync: m.resync, compact: m.compact })
    }
}

impl TryFrom<&pb::HiveMessage> for HiveStreamMessage {
    type Error = ConvertError;
    fn try_from(m: &pb::HiveMessage) -> Checked<Self> {
        use pb::hive_message::Payload;
        let payload = match m.payload.as_ref().ok_or_else(|| ConvertError::new("payload", "is required"))? {
            Payload::Sample(s) => HivePayload::Sample(s.try_into()?),
            Payload::Diff(d) => HivePayload::Diff(d.try_into()?),
            // Only means something against the stream's earlier samples: the receiver's
            // edge decodes it (`compact::Decoder::decode_sample`) before this conversion.
            Payload::CompactSample(_) => {
                return Err(ConvertError::new(
                    "compact_sample",
                    "is decoded against the stream's view at the receiver's edge, not converted alone",
                ));
            }
            Payload::Snapshot(s) => HivePayload::Snapshot {
                reason: match pb::SnapshotReason::try_from(s.reason) {
                    Ok(pb::SnapshotReason::Initial) => SnapshotReason::Initial,
                    Ok(pb::SnapshotReason::Outdated) => SnapshotReason::Outdated,
                    Ok(pb::SnapshotReason::Resync) => SnapshotReason::Resync,
                    _ => SnapshotReason::Unspecified,
                },
                identity: s
                    .identity
                    .as_ref()
                    .ok_or_else(|| ConvertError::new("snapshot.identity", "is required"))?
                    .try_into()?,
                capabilities: s
                    .capabilities
                    .as_ref()
                    .ok_or_else(|| ConvertError::new("snapshot.capabilities", "is required"))?
                    .try_into()?,
            },
        };
        Ok(Self { seq: m.seq, hive_time_unix_ms: m.hive_time_unix_ms, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Discover`'s identity takes exactly the hive ids the one rule takes
    /// (`identity::check_hive_id`, which the hive's `--hive-id` and `Announce` use too).
    #[test]
    fn discover_takes_the_hive_ids_the_one_rule_takes() {
        let long = "x".repeat(65);
        for id in ["gpu-node-7", "a.b_c-D9", "has space", "a/b", "é", "x:1", long.as_str(), &long[1..]] {
            let wire = pb::HiveIdentity { hive_id: id.into(), epoch: "e".into(), ..Default::default() };
            let converted = HiveIdentity::try_from(&wire);
            assert_eq!(
                converted.is_ok(),
                crate::identity::check_hive_id(id).is_ok(),
                "{id:?}: {converted:?}"
            );
        }
    }

    fn gpu(id: &str) -> GpuDevice {
        GpuDevice {
            id: id.into(),
            index: 0,
            name: "Sim".into(),
            pci_bus_id: "0000:01:00.0".into(),
            compute_capability: Some(ComputeCapability { major: 9, minor: 0 }),
            vram_total_bytes: 80 << 30,
            driver_version: None,
            cuda_version: Some("12.4".into()),
            power_limit_mw: Some(700_000),
            mig_mode: MigMode::Disabled,
            topology: Default::default(),
        }
    }

    #[test]
    fn capabilities_round_trip() {
        let mut caps = Capabilities {
            ram_total_bytes: 1 << 34,
            backends: vec![Backend::Cpu, Backend::Cuda],
            ..Default::default()
        };
        caps.gpus.insert("GPU-a".into(), gpu("GPU-a"));
        caps.labels.insert("zone".into(), "eu".into());
        let v = VersionedCapabilities { version: 7, caps };
        let wire = pb::Capabilities::from(&v);
        assert_eq!(VersionedCapabilities::try_from(&wire).unwrap(), v);
    }

    #[test]
    fn duplicate_device_ids_are_rejected_with_the_field() {
        let wire = pb::Capabilities {
            gpus: vec![(&gpu("GPU-a")).into(), (&gpu("GPU-a")).into()],
            cpu: Some(pb::CpuInfo::default()),
            ..Default::default()
        };
        let err = VersionedCapabilities::try_from(&wire).unwrap_err();
        assert_eq!(err.field, "capabilities.gpus[1].id");
        assert!(err.reason.contains("duplicate"), "{err}");
    }

    #[test]
    fn sample_with_used_above_total_is_rejected() {
        let wire = pb::Sample { ram_total_bytes: 10, ram_used_bytes: 11, ..Default::default() };
        assert_eq!(Sample::try_from(&wire).unwrap_err().field, "sample.ram_used_bytes");
    }

    #[test]
    fn non_finite_percentages_are_rejected() {
        let wire = pb::Sample { cpu_percent: Some(f32::NAN), ..Default::default() };
        assert_eq!(Sample::try_from(&wire).unwrap_err().field, "sample.cpu_percent");
        let wire = pb::Sample { cpu_per_core_percent: vec![5.0, 101.0], ..Default::default() };
        assert_eq!(Sample::try_from(&wire).unwrap_err().field, "sample.cpu_per_core_percent[1]");
    }

    #[test]
    fn queen_messages_round_trip_and_validate() {
        let m = QueenStreamMessage {
            sample_interval: Some(SampleInterval::from_millis(250).unwrap()),
            known: Some(KnownView { epoch: "e".into(), capability_version: 3 }),
            resync: true,
            compact: true,
        };
        assert_eq!(QueenStreamMessage::try_from(&pb::QueenMessage::from(&m)).unwrap(), m);
        assert_eq!(
            QueenStreamMessage::try_from(&pb::QueenMessage::default()).unwrap(),
            QueenStreamMessage::default()
        );
        for ms in [0, 99, 60_001, u32::MAX] {
            let wire = pb::QueenMessage { sample_interval_ms: Some(ms), ..Default::default() };
            let err = QueenStreamMessage::try_from(&wire).unwrap_err();
            assert_eq!(err.field, "sample_interval_ms");
            assert!(err.reason.contains("100..=60000"), "{err}");
        }
        let half = pb::QueenMessage { known_epoch: Some("e".into()), ..Default::default() };
        assert_eq!(QueenStreamMessage::try_from(&half).unwrap_err().field, "known_epoch");
        let long = pb::QueenMessage {
            known_epoch: Some("e".repeat(65)),
            known_capability_version: Some(1),
            ..Default::default()
        };
        assert_eq!(QueenStreamMessage::try_from(&long).unwrap_err().field, "known_epoch");
    }

    #[test]
    fn hive_messages_round_trip() {
        let sample = Sample { taken_at_unix_ms: 5, capability_version: Some(2), ..Default::default() };
        let m = HiveStreamMessage { seq: 3, hive_time_unix_ms: 9, payload: HivePayload::Sample(sample) };
        assert_eq!(HiveStreamMessage::try_from(&pb::HiveMessage::from(&m)).unwrap(), m);
    }

    #[test]
    fn labels_follow_the_one_rule() {
        let wire = |k: &str| pb::Capabilities {
            cpu: Some(pb::CpuInfo::default()),
            labels: [(k.to_owned(), "v".to_owned())].into(),
            ..Default::default()
        };
        assert!(VersionedCapabilities::try_from(&wire("zone")).is_ok());
        for bad in ["", "a b", &"k".repeat(64)] {
            let err = VersionedCapabilities::try_from(&wire(bad)).unwrap_err();
            assert_eq!(err.field, "capabilities.labels", "{err}");
        }
    }

    #[test]
    fn oversized_strings_are_rejected() {
        let mut g = gpu("GPU-a");
        g.name = "x".repeat(MAX_STRING_BYTES + 1);
        let wire = pb::Capabilities {
            gpus: vec![(&g).into()],
            cpu: Some(pb::CpuInfo::default()),
            ..Default::default()
        };
        assert_eq!(VersionedCapabilities::try_from(&wire).unwrap_err().field, "capabilities.gpus[0].name");
    }
}
