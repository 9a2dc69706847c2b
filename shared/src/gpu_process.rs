//! Who holds a GPU's memory: the compute processes on one GPU, as a sample carries
//! them (the top N by used VRAM, plus a count of the rest), and the worker tag that
//! ties a process to its reservation ([`ReservationToken`]).

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
    /// The reservation it was started for: the id the hive derived from the
    /// `RBEE_RESERVATION_TOKEN` in its environment ([`reservation_id_of_token`]), where
    /// the hive may read its environment. Only the holder of the reservation's token can
    /// make a process carry its id; `RBEE_RESERVATION_ID` alone is not read.
    pub reservation_id: Option<String>,
}

/// The environment variable that carries a worker's reservation token.
pub const RESERVATION_TOKEN_ENV: &str = "RBEE_RESERVATION_TOKEN";

/// The domain separator hashed before a token.
const TOKEN_DOMAIN: &[u8] = b"rbee reservation token v1\0";

/// The reservation id a token stands for: the first 128 bits of
/// `sha256("rbee reservation token v1\0" || token)`, written as a UUID
/// (`8-4-4-4-12` lowercase hex).
///
/// The id is public (any read-token holder lists reservations); the token is the
/// secret only the placing client gets. Finding a token for a given id is a preimage
/// of SHA-256, so a process can carry a reservation's id only by carrying its token.
pub fn reservation_id_of_token(token: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new().chain_update(TOKEN_DOMAIN).chain_update(token).finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// The secret tag of one reservation: 128 random bits, written as 32 lowercase hex
/// digits. Place answers it once, to the placing client only; its worker carries it as
/// `RBEE_RESERVATION_TOKEN`. The queen keeps only the reservation id, which is its
/// digest ([`reservation_id_of_token`]), so nothing the queen stores, logs or lists
/// holds it. `Debug` prints it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct ReservationToken(String);

impl ReservationToken {
    /// A fresh token from the thread's CSPRNG (ChaCha, seeded by the OS).
    pub fn generate() -> Self {
        use rand::Rng;
        let bits: [u8; 16] = rand::rng().random();
        Self(bits.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A token kept before (the queen's store keeps a keyed reservation's token).
    pub fn from_secret(secret: String) -> Self {
        Self(secret)
    }

    /// The reservation id it stands for.
    pub fn reservation_id(&self) -> String {
        reservation_id_of_token(self.0.as_bytes())
    }

    /// The secret itself, for the Place answer only.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ReservationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReservationToken(<redacted>)")
    }
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
    fn a_token_stands_for_one_id_and_never_shows_in_debug() {
        let token = super::ReservationToken::generate();
        assert_eq!(token.secret().len(), 32);
        assert!(token.secret().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(token, super::ReservationToken::generate());
        let id = token.reservation_id();
        assert_eq!(id, super::reservation_id_of_token(token.secret().as_bytes()));
        assert_eq!(id.len(), 36);
        assert!(!id.contains(token.secret()) && !format!("{token:?}").contains(token.secret()));
        // A fixed vector, so hives and queens of different versions agree.
        assert_eq!(super::reservation_id_of_token(b"t"), "cbf194bf-6253-331f-6bdb-7c11441786f5");
        assert_ne!(super::reservation_id_of_token(b"t"), super::reservation_id_of_token(b"u"));
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
