//! A placement request and a `ListReservations` page request, as the scheduler takes them
//! (validated from the wire at the API edge, `api/place_request.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::book::Cursor;

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

/// A validated placement request.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaceRequest {
    /// The model.
    pub model: String,
    /// VRAM on one GPU, bytes.
    pub vram_bytes: u64,
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
            ram_bytes: None,
            kind: DeviceKind::Cuda,
            labels: BTreeMap::new(),
            dry_run: false,
            ttl: DEFAULT_TTL,
            deadline: None,
        }
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
