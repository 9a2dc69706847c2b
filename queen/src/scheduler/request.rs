//! A placement request, validated from the wire once.

use std::collections::BTreeMap;
use std::time::Duration;

use rbee_proto::v1 as pb;

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

impl TryFrom<&pb::RenewRequest> for RenewRequest {
    type Error = QueenError;

    fn try_from(r: &pb::RenewRequest) -> Result<Self, QueenError> {
        let id = r.reservation_id.trim();
        if id.is_empty() || id.len() > 64 {
            return Err(QueenError::InvalidArgument("reservation_id must be 1..=64 bytes".into()));
        }
        let ttl = Duration::from_millis(u64::from(r.ttl_ms));
        if r.ttl_ms == 0 || ttl > TTL_RANGE.1 {
            return Err(QueenError::InvalidArgument(format!(
                "ttl_ms = {} is out of range 1..=3600000 (renew again to keep it longer)",
                r.ttl_ms
            )));
        }
        Ok(Self { id: id.to_owned(), ttl })
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
        if let Some(id) = &r.request_id {
            check_request_id(id)?;
        }
        Ok(Self {
            model: r.model.clone(),
            vram_bytes: r.vram_bytes,
            ram_bytes: r.ram_bytes.filter(|b| *b > 0),
            kind,
            labels: r.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            dry_run: r.dry_run,
            ttl,
            deadline: None,
            request_id: r.request_id.clone(),
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
    fn request_ids_are_short_and_plain() {
        let with =
            |id: &str| pb::PlaceRequest { vram_bytes: 1, request_id: Some(id.into()), ..Default::default() };
        for good in ["a", "job-1.retry_2:x", &"k".repeat(128)] {
            assert_eq!(PlaceRequest::try_from(&with(good)).unwrap().request_id.as_deref(), Some(good));
        }
        for bad in ["", "a b", "a/b", "é", &"k".repeat(129), "a\n"] {
            let err = PlaceRequest::try_from(&with(bad)).unwrap_err();
            assert!(matches!(err, QueenError::InvalidArgument(_)), "{bad:?}");
            assert!(err.to_string().starts_with("request_id"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn renew_ttls_are_one_ms_to_one_hour() {
        let with = |ttl_ms: u32| pb::RenewRequest { reservation_id: "r".into(), ttl_ms };
        assert_eq!(RenewRequest::try_from(&with(1)).unwrap().ttl, Duration::from_millis(1));
        assert_eq!(RenewRequest::try_from(&with(3_600_000)).unwrap().ttl, TTL_RANGE.1);
        for bad in [0, 3_600_001, u32::MAX] {
            assert!(RenewRequest::try_from(&with(bad)).unwrap_err().to_string().contains("ttl_ms"), "{bad}");
        }
        let no_id = pb::RenewRequest { reservation_id: " ".into(), ttl_ms: 5 };
        assert!(RenewRequest::try_from(&no_id).unwrap_err().to_string().contains("reservation_id"));
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
