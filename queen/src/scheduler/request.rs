//! A placement request, validated from the wire once.

use std::collections::BTreeMap;
use std::time::Duration;

use rbee_proto::v1 as pb;

use super::book::Cursor;
use crate::QueenError;

/// Default reservation lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(120);
/// Shortest and longest reservation lifetime a caller may ask for.
pub const TTL_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));

/// Reservations per `ListReservations` page when the caller gives no page size.
pub const DEFAULT_PAGE_SIZE: usize = 500;
/// Most reservations per page (a larger page size is lowered to this): 2,000 of at most
/// about 1 KiB each stay well under the 4 MiB message limit.
pub const MAX_PAGE_SIZE: usize = 2000;

/// Which kind of device a request wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A GPU when one fits, else a CPU.
    Any,
    /// An NVIDIA GPU.
    Cuda,
    /// A hive's CPU and RAM.
    Cpu,
}

impl DeviceKind {
    /// Lower-case name, as policies see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::Cuda => "cuda",
            Self::Cpu => "cpu",
        }
    }
}

/// How a gang's GPUs must be connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GangTopology {
    /// Any GPUs of one hive.
    Any,
    /// All on one NUMA node.
    SameNuma,
    /// Every pair NVLink-connected.
    Nvlink,
}

impl GangTopology {
    /// Lower-case name, as policies and the CLI see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::SameNuma => "numa",
            Self::Nvlink => "nvlink",
        }
    }
}

/// Most GPUs one gang may ask for.
pub const MAX_GANG: u32 = 64;

/// The gang fields of a wire request, validated: `(gpus, topology)`. An old client
/// that never sets `gpus` asks for 1 GPU, as before.
pub fn gang_of(r: &pb::PlaceRequest) -> Result<(u32, GangTopology), QueenError> {
    let bad = |m: String| Err(QueenError::InvalidArgument(m));
    let gpus = match r.gpus {
        None => 1,
        Some(n) if n == 0 || n > MAX_GANG => {
            return bad(format!("gpus = {n} is out of range 1..={MAX_GANG}"));
        }
        Some(n) => n,
    };
    let topology = match pb::GangTopology::try_from(r.topology) {
        Ok(pb::GangTopology::Any) => GangTopology::Any,
        Ok(pb::GangTopology::SameNuma) => GangTopology::SameNuma,
        Ok(pb::GangTopology::Nvlink) => GangTopology::Nvlink,
        Err(_) => return bad(format!("topology {} is unknown", r.topology)),
    };
    if gpus > 1 {
        if r.device_kind == pb::DeviceKind::Cpu as i32 {
            return bad(format!("gpus = {gpus} asks for a gang of GPUs, but device_kind is CPU"));
        }
        if r.vram_bytes == 0 {
            return bad(format!("vram_bytes (per GPU) must be > 0 for a gang of {gpus} GPUs"));
        }
    }
    Ok((gpus, topology))
}

/// A validated placement request.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaceRequest {
    /// The model.
    pub model: String,
    /// VRAM on each GPU, bytes.
    pub vram_bytes: u64,
    /// GPUs wanted on one hive (1 unless a gang).
    pub gpus: u32,
    /// How a gang's GPUs must be connected.
    pub topology: GangTopology,
    /// RAM on the hive, bytes.
    pub ram_bytes: Option<u64>,
    /// Device kind.
    pub kind: DeviceKind,
    /// Hive labels that must match.
    pub labels: BTreeMap<String, String>,
    /// Decide without reserving.
    pub dry_run: bool,
    /// Reservation lifetime.
    pub ttl: Duration,
    /// When the caller stops waiting (its gRPC deadline): a placement that would be
    /// committed after it is not made, and one committed after it is released.
    pub deadline: Option<std::time::Instant>,
}

impl PlaceRequest {
    /// A request for `vram_bytes` on any GPU (tests, benchmarks, policy checks).
    pub fn gpu(vram_bytes: u64) -> Self {
        Self {
            model: String::new(),
            vram_bytes,
            gpus: 1,
            topology: GangTopology::Any,
            ram_bytes: None,
            kind: DeviceKind::Cuda,
            labels: BTreeMap::new(),
            dry_run: false,
            ttl: DEFAULT_TTL,
            deadline: None,
        }
    }
}

impl TryFrom<&pb::PlaceRequest> for PlaceRequest {
    type Error = QueenError;

    fn try_from(r: &pb::PlaceRequest) -> Result<Self, QueenError> {
        let bad = |m: String| Err(QueenError::InvalidArgument(m));
        if r.model.len() > 256 {
            return bad(format!("model is {} bytes > 256", r.model.len()));
        }
        if let Err(e) = rbee_shared::labels::validate_labels(r.labels.iter()) {
            return bad(format!("labels: {e}"));
        }
        let kind = match pb::DeviceKind::try_from(r.device_kind) {
            Ok(pb::DeviceKind::Unspecified) => DeviceKind::Any,
            Ok(pb::DeviceKind::Cuda) => DeviceKind::Cuda,
            Ok(pb::DeviceKind::Cpu) => DeviceKind::Cpu,
            Err(_) => return bad(format!("device_kind {} is unknown", r.device_kind)),
        };
        match kind {
            DeviceKind::Cuda if r.vram_bytes == 0 => {
                return bad("vram_bytes must be > 0 for a CUDA placement".into());
            }
            DeviceKind::Cpu if r.ram_bytes.unwrap_or(0) == 0 => {
                return bad("ram_bytes must be > 0 for a CPU placement".into());
            }
            DeviceKind::Any if r.vram_bytes == 0 && r.ram_bytes.unwrap_or(0) == 0 => {
                return bad("vram_bytes or ram_bytes must be > 0".into());
            }
            _ => {}
        }
        let (gpus, topology) = gang_of(r)?;
        let ttl = match r.ttl_ms {
            None => DEFAULT_TTL,
            Some(ms) => {
                let d = Duration::from_millis(u64::from(ms));
                if !(TTL_RANGE.0..=TTL_RANGE.1).contains(&d) {
                    return bad(format!("ttl_ms = {ms} is out of range 1000..=3600000"));
                }
                d
            }
        };
        Ok(Self {
            model: r.model.clone(),
            vram_bytes: r.vram_bytes,
            gpus,
            topology,
            ram_bytes: r.ram_bytes.filter(|b| *b > 0),
            kind,
            labels: r.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            dry_run: r.dry_run,
            ttl,
            deadline: None,
        })
    }
}

/// A validated `ListReservations` request: one page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    /// Reservations on this page at most (1..=[`MAX_PAGE_SIZE`]).
    pub page_size: usize,
    /// Where the page starts (after this), from the caller's page token.
    pub after: Option<Cursor>,
}

/// The prefix of page tokens this queen gives out.
const TOKEN_PREFIX: &str = "r1.";

/// The page token that continues after `cursor` (opaque to clients).
pub fn page_token(cursor: &Cursor) -> String {
    format!("{TOKEN_PREFIX}{}.{}", cursor.created_at_unix_ms, cursor.id)
}

impl TryFrom<&pb::ListReservationsRequest> for ListRequest {
    type Error = QueenError;

    fn try_from(r: &pb::ListReservationsRequest) -> Result<Self, QueenError> {
        let page_size = match r.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => usize::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE),
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            let parsed = r
                .page_token
                .strip_prefix(TOKEN_PREFIX)
                .and_then(|rest| rest.split_once('.'))
                .and_then(|(ms, id)| Some((ms.parse::<u64>().ok()?, id)))
                .filter(|(_, id)| !id.is_empty() && id.len() <= 64);
            let Some((created_at_unix_ms, id)) = parsed else {
                return Err(QueenError::InvalidArgument(
                    "page_token is not one this queen gave out (pass next_page_token as is)".into(),
                ));
            };
            Some(Cursor { created_at_unix_ms, id: id.to_owned() })
        };
        Ok(Self { page_size, after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_validated_with_clear_messages() {
        let ok = pb::PlaceRequest {
            vram_bytes: 1,
            device_kind: pb::DeviceKind::Cuda as i32,
            ..Default::default()
        };
        assert_eq!(PlaceRequest::try_from(&ok).unwrap().kind, DeviceKind::Cuda);
        let zero = pb::PlaceRequest { device_kind: pb::DeviceKind::Cuda as i32, ..Default::default() };
        assert!(PlaceRequest::try_from(&zero).unwrap_err().to_string().contains("vram_bytes"));
        let cpu =
            pb::PlaceRequest { device_kind: pb::DeviceKind::Cpu as i32, vram_bytes: 5, ..Default::default() };
        assert!(PlaceRequest::try_from(&cpu).unwrap_err().to_string().contains("ram_bytes"));
        let ttl = pb::PlaceRequest { vram_bytes: 1, ttl_ms: Some(10), ..Default::default() };
        assert!(PlaceRequest::try_from(&ttl).unwrap_err().to_string().contains("ttl_ms"));
        let kind = pb::PlaceRequest { vram_bytes: 1, device_kind: 42, ..Default::default() };
        assert!(PlaceRequest::try_from(&kind).unwrap_err().to_string().contains("device_kind"));
    }

    #[test]
    fn gang_fields_are_validated_and_absent_means_one_gpu() {
        let old = pb::PlaceRequest { vram_bytes: 1, ..Default::default() };
        let r = PlaceRequest::try_from(&old).unwrap();
        assert_eq!((r.gpus, r.topology), (1, GangTopology::Any));
        let gang = pb::PlaceRequest {
            vram_bytes: 1,
            gpus: Some(8),
            topology: pb::GangTopology::Nvlink as i32,
            ..Default::default()
        };
        let r = PlaceRequest::try_from(&gang).unwrap();
        assert_eq!((r.gpus, r.topology), (8, GangTopology::Nvlink));
        for (req, says) in [
            (pb::PlaceRequest { vram_bytes: 1, gpus: Some(0), ..Default::default() }, "gpus = 0"),
            (pb::PlaceRequest { vram_bytes: 1, gpus: Some(65), ..Default::default() }, "gpus = 65"),
            (pb::PlaceRequest { vram_bytes: 1, topology: 9, ..Default::default() }, "topology 9"),
            (
                pb::PlaceRequest {
                    ram_bytes: Some(1),
                    gpus: Some(2),
                    device_kind: pb::DeviceKind::Cpu as i32,
                    ..Default::default()
                },
                "device_kind is CPU",
            ),
            (pb::PlaceRequest { ram_bytes: Some(1), gpus: Some(2), ..Default::default() }, "vram_bytes"),
        ] {
            let err = PlaceRequest::try_from(&req).unwrap_err();
            assert!(matches!(err, QueenError::InvalidArgument(_)), "{err}");
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn request_labels_follow_the_one_label_rule() {
        let with = |k: &str| pb::PlaceRequest {
            vram_bytes: 1,
            labels: [(k.to_owned(), "v".to_owned())].into(),
            ..Default::default()
        };
        assert!(PlaceRequest::try_from(&with("rbee.dev/zone")).is_ok());
        for bad in ["", "a b", &"k".repeat(64)] {
            let err = PlaceRequest::try_from(&with(bad)).unwrap_err().to_string();
            assert!(err.starts_with("labels: label key"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn list_requests_take_a_bounded_page_size_and_a_token_given_out() {
        let default = ListRequest::try_from(&pb::ListReservationsRequest::default()).unwrap();
        assert_eq!(default, ListRequest { page_size: DEFAULT_PAGE_SIZE, after: None });
        let big = pb::ListReservationsRequest { page_size: 1_000_000, ..Default::default() };
        assert_eq!(ListRequest::try_from(&big).unwrap().page_size, MAX_PAGE_SIZE);
        let cursor = Cursor { created_at_unix_ms: 17, id: "a.b-c".into() };
        let next = pb::ListReservationsRequest { page_token: page_token(&cursor), ..Default::default() };
        assert_eq!(ListRequest::try_from(&next).unwrap().after, Some(cursor));
        let forged = pb::ListReservationsRequest { page_token: "17.x".into(), ..Default::default() };
        assert!(ListRequest::try_from(&forged).unwrap_err().to_string().contains("page_token"));
    }
}
