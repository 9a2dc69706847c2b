//! Wire -> scheduler: the `rbee.v1.PlaceRequest` and `ListReservationsRequest` checks and
//! conversions, done once at the API edge so the scheduler never sees a generated type.

use std::time::Duration;

use rbee_proto::v1 as pb;

use crate::QueenError;
use crate::scheduler::request::{
    DEFAULT_PAGE_SIZE, DEFAULT_TTL, DeviceKind, GangTopology, ListRequest, MAX_GANG, MAX_PAGE_SIZE,
    PlaceRequest, RenewRequest, TTL_RANGE, check_request_id, parse_page_token,
};

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

impl TryFrom<&pb::PlaceRequest> for PlaceRequest {
    type Error = QueenError;

    fn try_from(r: &pb::PlaceRequest) -> Result<Self, QueenError> {
        let bad = |m: String| Err(QueenError::InvalidArgument(m));
        // A model id, when given, follows the one rule of every door (`rbee_shared::model`).
        if !r.model.is_empty()
            && let Err(e) = rbee_shared::model::check_model_id(&r.model)
        {
            return bad(format!("model: {e}"));
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
        let (gpus, topology) = gang_of(r)?;
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
            request_id: r.request_id.clone(),
        })
    }
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
            let Some(cursor) = parse_page_token(&r.page_token) else {
                return Err(QueenError::InvalidArgument(
                    "page_token is not one this queen gave out (pass next_page_token as is)".into(),
                ));
            };
            Some(cursor)
        };
        Ok(Self { page_size, after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::book::Cursor;
    use crate::scheduler::request::page_token;

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
