//! A placement request and a `ListReservations` page request, as the scheduler takes them
//! (validated from the wire at the API edge, `api/place_request.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::book::{Cursor, PlacedFor, Reservation};
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
    /// The client's idempotency key ([`check_request_id`]).
    pub request_id: Option<String>,
}

/// The longest request id.
pub const MAX_REQUEST_ID: usize = 128;

/// Checks a request id: 1 to [`MAX_REQUEST_ID`] bytes of `[A-Za-z0-9._:-]`
/// (`INVALID_ARGUMENT` naming what is wrong).
pub fn check_request_id(id: &str) -> Result<(), QueenError> {
    let bad = |m: String| Err(QueenError::InvalidArgument(m));
    if id.is_empty() || id.len() > MAX_REQUEST_ID {
        return bad(format!("request_id is {} bytes; it must be 1..={MAX_REQUEST_ID}", id.len()));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))) {
        return bad(format!("request_id holds {c:?}; only [A-Za-z0-9._:-] is allowed"));
    }
    Ok(())
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
            request_id: None,
        }
    }

    /// What a keyed request asks for besides its model (see [`crate::scheduler::book::Keyed`]).
    pub fn placed_for(&self) -> PlacedFor {
        PlacedFor {
            vram_bytes: self.vram_bytes,
            ram_bytes: self.ram_bytes,
            kind: self.kind.as_str().to_owned(),
            labels: self.labels.clone(),
            gpus: self.gpus,
            // Ignored for one GPU, so not part of what a one-GPU request asks for.
            topology: if self.gpus > 1 { self.topology } else { GangTopology::Any }.as_str().to_owned(),
        }
    }

    /// How this request differs from the one that made `r` (empty when it is the same
    /// request): each difference as `field: held X, asked Y`.
    pub fn differences(&self, r: &Reservation) -> Vec<String> {
        let Some(k) = &r.keyed else { return vec!["the reservation was placed without a request id".into()] };
        let mine = self.placed_for();
        let held = &k.placed_for;
        let mut out = Vec::new();
        if self.model != r.model {
            out.push(format!("model: held {:?}, asked {:?}", r.model, self.model));
        }
        if mine.vram_bytes != held.vram_bytes {
            out.push(format!("vram_bytes: held {}, asked {}", held.vram_bytes, mine.vram_bytes));
        }
        if mine.ram_bytes != held.ram_bytes {
            out.push(format!("ram_bytes: held {:?}, asked {:?}", held.ram_bytes, mine.ram_bytes));
        }
        if mine.kind != held.kind {
            out.push(format!("device_kind: held {}, asked {}", held.kind, mine.kind));
        }
        if mine.labels != held.labels {
            out.push(format!("labels: held {:?}, asked {:?}", held.labels, mine.labels));
        }
        if mine.gpus != held.gpus {
            out.push(format!("gpus: held {}, asked {}", held.gpus, mine.gpus));
        }
        if mine.topology != held.topology {
            out.push(format!("topology: held {}, asked {}", held.topology, mine.topology));
        }
        out
    }
}

/// A validated `Renew` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewRequest {
    /// The reservation.
    pub id: String,
    /// The new lifetime, from now.
    pub ttl: Duration,
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

/// The cursor a page token from [`page_token`] names, or `None` when `token` is not one
/// this queen gave out.
pub fn parse_page_token(token: &str) -> Option<Cursor> {
    token
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(ms, id)| Some((ms.parse::<u64>().ok()?, id)))
        .filter(|(_, id)| !id.is_empty() && id.len() <= 64)
        .map(|(created_at_unix_ms, id)| Cursor { created_at_unix_ms, id: id.to_owned() })
}
