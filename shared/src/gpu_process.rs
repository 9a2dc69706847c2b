//! Who holds a GPU's memory: the compute processes on one GPU, as a sample carries
//! them (the top N by used VRAM, plus a count of the rest).

/// How many processes per GPU a sample lists unless told otherwise.
pub const DEFAULT_MAX_GPU_PROCESSES: usize = 32;
/// The most processes per GPU a sample may list (the wire bound).
pub const MAX_GPU_PROCESSES: usize = 1024;

/// One process using a GPU, with what the hive could learn of it from `/proc`.
/// Every field the hive could not read is `None`.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct GpuProcess {
    /// The process id (in the hive's pid namespace).
    pub pid: u32,
    /// VRAM it uses on this GPU, bytes (`None` when the driver does not say).
    pub used_vram_bytes: Option<u64>,
    /// Its command name (`/proc/PID/comm`).
    pub name: Option<String>,
    /// Its resident memory, bytes (`/proc/PID/status` `VmRSS`).
    pub rss_bytes: Option<u64>,
    /// CPU use since the previous sample, percent of one core (can exceed 100).
    pub cpu_percent: Option<f32>,
    /// Its cgroup path (the unified v2 path, else the v1 memory/cpu path).
    pub cgroup: Option<String>,
    /// The container runtime its cgroup names: `docker`, `containerd`, `cri-o`,
    /// `podman` or `kubepods` (a Kubernetes pod whose runtime the path does not say).
    pub container_runtime: Option<String>,
    /// The container id its cgroup names.
    pub container_id: Option<String>,
    /// The systemd unit its cgroup names (`nginx.service`, `session-3.scope`).
    pub systemd_unit: Option<String>,
    /// Its cgroup's `memory.current`, bytes (cgroup v2 only).
    pub cgroup_memory_bytes: Option<u64>,
    /// Its cgroup's `cpu.stat` `usage_usec`: CPU time used, microseconds (cgroup v2 only).
    pub cgroup_cpu_usage_usec: Option<u64>,
    /// The reservation it was started for (`RBEE_RESERVATION_ID` in its environment),
    /// where the hive may read its environment.
    pub reservation_id: Option<String>,
}

/// The processes on one GPU.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct GpuProcesses {
    /// The processes using the most VRAM, most first (at most the hive's limit).
    pub listed: Vec<GpuProcess>,
    /// How many more processes use the GPU than are listed.
    pub unlisted: u32,
    /// The VRAM those unlisted processes use, bytes.
    pub unlisted_vram_bytes: u64,
}

impl GpuProcesses {
    /// The VRAM the listed processes use, bytes (saturating).
    pub fn listed_vram_bytes(&self) -> u64 {
        self.listed.iter().filter_map(|p| p.used_vram_bytes).fold(0u64, u64::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use rbee_proto::v1 as pb;

    use crate::{GpuSample, Sample};

    fn wire(processes: Option<pb::GpuProcesses>, unattributed: Option<u64>) -> pb::Sample {
        pb::Sample {
            gpus: vec![pb::GpuSample {
                id: "GPU-a".into(),
                vram_used_bytes: Some(10 << 30),
                processes,
                unattributed_vram_bytes: unattributed,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn process(pid: u32) -> pb::GpuProcess {
        pb::GpuProcess {
            pid,
            used_vram_bytes: Some(1 << 30),
            name: Some("python3".into()),
            ..Default::default()
        }
    }

    fn gpu(s: &pb::Sample) -> Result<GpuSample, crate::ConvertError> {
        Sample::try_from(s).map(|s| s.gpus[0].clone())
    }

    #[test]
    fn absent_and_empty_lists_stay_apart_on_the_wire() {
        assert_eq!(gpu(&wire(None, None)).unwrap().processes, None);
        let empty = gpu(&wire(Some(pb::GpuProcesses::default()), Some(0))).unwrap();
        assert_eq!(empty.processes.map(|p| p.listed.len()), Some(0));
        let listed = wire(
            Some(pb::GpuProcesses { listed: vec![process(7)], unlisted: 2, unlisted_vram_bytes: 5 }),
            Some(1),
        );
        let back = gpu(&listed).unwrap();
        assert_eq!(pb::GpuSample::from(&back), listed.gpus[0]);
    }

    #[test]
    fn bad_process_lists_name_the_field() {
        let twice =
            wire(Some(pb::GpuProcesses { listed: vec![process(7), process(7)], ..Default::default() }), None);
        assert!(gpu(&twice).unwrap_err().to_string().contains("listed[1].pid"));
        let many = (0..=super::MAX_GPU_PROCESSES as u32).map(process).collect();
        let many = wire(Some(pb::GpuProcesses { listed: many, ..Default::default() }), None);
        assert!(gpu(&many).unwrap_err().to_string().contains("processes.listed"));
        let long_name = pb::GpuProcess { name: Some("x".repeat(1000)), ..process(1) };
        let long = wire(Some(pb::GpuProcesses { listed: vec![long_name], ..Default::default() }), None);
        assert!(gpu(&long).unwrap_err().to_string().contains("listed[0].name"));
        let nan = pb::GpuProcess { cpu_percent: Some(f32::NAN), ..process(1) };
        let nan = wire(Some(pb::GpuProcesses { listed: vec![nan], ..Default::default() }), None);
        assert!(gpu(&nan).unwrap_err().to_string().contains("cpu_percent"));
        assert!(
            gpu(&wire(None, Some(11 << 30))).unwrap_err().to_string().contains("unattributed_vram_bytes")
        );
    }
}
