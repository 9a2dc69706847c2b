//! Queen domain -> wire (`rbee.v1.Fleet` messages). The one place these conversions live.

use rbee_proto::v1 as pb;

use crate::fleet::{ConnState, Counters, FleetEvent, HiveSnapshot, Origin};
use crate::fleet::{Health, HealthReport, WindowStats};
use crate::scheduler::SchedulerEvent;
use crate::scheduler::figures::DeviceFigures;

impl From<ConnState> for pb::HiveState {
    fn from(s: ConnState) -> Self {
        match s {
            ConnState::Pending => Self::Pending,
            ConnState::Connecting => Self::Connecting,
            ConnState::Online => Self::Online,
            ConnState::Stale => Self::Stale,
            ConnState::Lost => Self::Lost,
            ConnState::Removed => Self::Removed,
        }
    }
}

impl From<Health> for pb::Health {
    fn from(h: Health) -> Self {
        match h {
            Health::Healthy => Self::Healthy,
            Health::Pending => Self::Pending,
            Health::Degraded => Self::Degraded,
            Health::Unhealthy => Self::Unhealthy,
        }
    }
}

impl From<Origin> for pb::HiveOrigin {
    fn from(o: Origin) -> Self {
        match o {
            Origin::Static => Self::Static,
            Origin::Api => Self::Api,
            Origin::Announced => Self::Announced,
            Origin::Local => Self::Local,
        }
    }
}

impl From<&WindowStats> for pb::WindowStats {
    fn from(s: &WindowStats) -> Self {
        Self {
            window_ms: s.window_ms,
            samples: s.samples,
            cpu_mean_percent: s.cpu_mean_percent,
            cpu_max_percent: s.cpu_max_percent,
            ram_used_mean_percent: s.ram_used_mean_percent,
            ram_used_max_percent: s.ram_used_max_percent,
            gpus: s
                .gpus
                .iter()
                .map(|g| pb::GpuWindowStats {
                    device_id: g.device_id.clone(),
                    util_mean_percent: g.util_mean_percent,
                    util_max_percent: g.util_max_percent,
                    vram_used_max_bytes: g.vram_used_max_bytes,
                })
                .collect(),
        }
    }
}

impl From<&Counters> for pb::HiveCounters {
    fn from(c: &Counters) -> Self {
        Self {
            reconnects: c.reconnects,
            gaps: c.gaps,
            resyncs: c.resyncs,
            restarts: c.restarts,
            invalid_messages: c.invalid_messages,
        }
    }
}

fn devices(h: &HealthReport) -> Vec<pb::DeviceHealth> {
    h.devices
        .iter()
        .map(|d| pb::DeviceHealth {
            device_id: d.device_id.clone(),
            index: d.index,
            health: pb::Health::from(d.health) as i32,
            reasons: d.reasons.clone(),
            reserved_bytes: 0,
            placeable_bytes: None,
        })
        .collect()
}

/// A hive's view with each GPU's reservation figures ([`DeviceFigures`]: what this
/// queen's reservations hold there, and what admission would grant there now).
pub fn hive_view(h: &HiveSnapshot, figures: &[DeviceFigures]) -> pb::HiveView {
    let mut view = pb::HiveView::from(h);
    for d in &mut view.devices {
        if let Some(f) = figures.iter().find(|f| f.device_id == d.device_id) {
            d.reserved_bytes = f.reserved;
            d.placeable_bytes = f.placeable;
        }
    }
    view
}

impl From<&HiveSnapshot> for pb::HiveView {
    fn from(h: &HiveSnapshot) -> Self {
        Self {
            address: h.address.clone(),
            hive_id: h.hive_id().to_owned(),
            state: pb::HiveState::from(h.state) as i32,
            state_since_unix_ms: h.state_since_unix_ms,
            origin: pb::HiveOrigin::from(h.origin) as i32,
            identity: h.identity.as_deref().map(Into::into),
            capabilities: h.caps.as_deref().map(Into::into),
            latest_sample: h.latest.as_deref().map(Into::into),
            sample_age_ms: h.sample_age().map(|a| a.as_millis() as u64),
            health: pb::Health::from(h.health.health) as i32,
            health_reasons: h.health.reasons.clone(),
            devices: devices(&h.health),
            stats: Some(h.stats.as_ref().into()),
            clock_skew_ms: h.clock_skew_ms,
            last_error: h.last_error.as_deref().map(str::to_owned),
            counters: Some((&h.counters).into()),
            sample_interval_ms: h.sample_interval.as_millis() as u32,
        }
    }
}

impl From<&FleetEvent> for pb::fleet_event::Event {
    fn from(e: &FleetEvent) -> Self {
        use pb::fleet_event::Event;
        match e {
            FleetEvent::Added(h) => Event::HiveAdded(h.as_ref().into()),
            FleetEvent::Removed { address, hive_id } => {
                Event::HiveRemoved(pb::HiveRemoved { address: address.clone(), hive_id: hive_id.clone() })
            }
            FleetEvent::StateChanged { hive, from, reason } => Event::StateChanged(pb::HiveStateChanged {
                address: hive.address.clone(),
                hive_id: hive.hive_id().to_owned(),
                from: pb::HiveState::from(*from) as i32,
                to: pb::HiveState::from(hive.state) as i32,
                reason: reason.clone(),
            }),
            FleetEvent::HealthChanged { hive, from } => Event::HealthChanged(pb::HiveHealthChanged {
                address: hive.address.clone(),
                hive_id: hive.hive_id().to_owned(),
                from: pb::Health::from(*from) as i32,
                to: pb::Health::from(hive.health.health) as i32,
                reasons: hive.health.reasons.clone(),
            }),
            FleetEvent::CapabilitiesChanged { hive, restarted, caps } => {
                Event::CapabilitiesChanged(pb::HiveCapabilitiesChanged {
                    address: hive.address.clone(),
                    hive_id: hive.hive_id().to_owned(),
                    restarted: *restarted,
                    epoch: hive.identity.as_ref().map(|i| i.epoch.clone()).unwrap_or_default(),
                    capabilities: Some(caps.as_ref().into()),
                })
            }
        }
    }
}

impl From<&SchedulerEvent> for pb::fleet_event::Event {
    fn from(e: &SchedulerEvent) -> Self {
        match e {
            SchedulerEvent::ReservationDropped { reservation: r, reason } => {
                pb::fleet_event::Event::ReservationDropped(pb::ReservationDropped {
                    reservation_id: r.id.clone(),
                    hive_id: r.hive_id.clone(),
                    address: r.address.clone(),
                    device_id: r.device_id.clone(),
                    reason: reason.clone(),
                    gang_device_ids: r.gang.clone(),
                })
            }
        }
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;

    /// A dropped gang names every GPU it freed, not only the first.
    #[test]
    fn a_dropped_gang_names_every_gpu() {
        let r = crate::scheduler::book::Reservation {
            id: "r".into(),
            hive_id: "h".into(),
            address: "http://a:7835".into(),
            device_id: "GPU-0".into(),
            model: "m".into(),
            bytes: 5,
            state: crate::scheduler::book::ReservationState::Active,
            created_at_unix_ms: 1,
            expires_at_unix_ms: 2,
            keyed: None,
            gang: vec!["GPU-0".into(), "GPU-1".into()],
        };
        let e = SchedulerEvent::ReservationDropped { reservation: r, reason: "expired".into() };
        let pb::fleet_event::Event::ReservationDropped(d) = pb::fleet_event::Event::from(&e) else {
            panic!("a dropped reservation")
        };
        assert_eq!(d.device_id, "GPU-0");
        assert_eq!(d.gang_device_ids, ["GPU-0", "GPU-1"]);
    }
}

/// A reservation's wire message as JSON (for the scheduler's test that the domain
/// reservation, its record and its wire message hold the same fields).
#[cfg(test)]
pub(crate) fn reservation_wire_json(r: &crate::scheduler::book::Reservation) -> serde_json::Value {
    serde_json::to_value(pb::Reservation::from(r)).expect("a wire message is JSON")
}

impl From<&crate::scheduler::book::Reservation> for pb::Reservation {
    fn from(r: &crate::scheduler::book::Reservation) -> Self {
        use crate::scheduler::book::ReservationState;
        Self {
            id: r.id.clone(),
            hive_id: r.hive_id.clone(),
            address: r.address.clone(),
            device_id: r.device_id.clone(),
            model: r.model.clone(),
            bytes: r.bytes,
            state: match r.state {
                ReservationState::Active => pb::ReservationState::Active,
                ReservationState::Settled => pb::ReservationState::Settled,
                ReservationState::Released => pb::ReservationState::Released,
            } as i32,
            created_at_unix_ms: r.created_at_unix_ms,
            expires_at_unix_ms: r.expires_at_unix_ms,
            gang_device_ids: r.gang.clone(),
        }
    }
}

impl From<&crate::scheduler::Outcome> for pb::PlaceResponse {
    fn from(o: &crate::scheduler::Outcome) -> Self {
        use crate::scheduler::Outcome;
        use crate::scheduler::weights::Tier;
        use pb::place_response::Result as R;
        let result = match o {
            Outcome::Placed(p) => R::Placement(pb::Placement {
                hive_id: p.hive_id.clone(),
                address: p.address.clone(),
                device_id: p.device_id.clone(),
                reservation_id: p.reservation.as_ref().map(|r| r.id.clone()).unwrap_or_default(),
                expires_at_unix_ms: p.reservation.as_ref().map_or(0, |r| r.expires_at_unix_ms),
                reserved_bytes: p.bytes,
                free_after_bytes: p.free_after,
                policy: p.policy.clone(),
                fallback: p.fallback,
                weights: match p.weights.tier {
                    Tier::Ram => pb::WeightsLocation::Ram,
                    Tier::Disk => pb::WeightsLocation::Disk,
                    Tier::Absent => pb::WeightsLocation::Absent,
                } as i32,
                model_bytes: p.weights.bytes,
                estimated_load_ms: p.weights.est_load_ms,
                prefetching: p.prefetching,
                reservation_token: p.token.as_ref().map(|t| t.secret().to_owned()).unwrap_or_default(),
                notes: p.notes.clone(),
                devices: p
                    .devices
                    .iter()
                    .map(|d| pb::PlacedDevice {
                        device_id: d.device_id.clone(),
                        index: d.index,
                        free_after_bytes: d.free_after,
                    })
                    .collect(),
                topology: p.level.map(|l| l.as_str().to_owned()).unwrap_or_default(),
            }),
            Outcome::Rejected { reason, hive_reasons } => {
                R::Rejection(pb::Rejection { reason: reason.clone(), hive_reasons: hive_reasons.clone() })
            }
        };
        Self { result: Some(result) }
    }
}

impl From<&crate::scheduler::PolicyStatus> for pb::PolicyStatus {
    fn from(s: &crate::scheduler::PolicyStatus) -> Self {
        Self {
            source: s.source.clone(),
            loaded_at_unix_ms: s.loaded_at_unix_ms,
            failures: s.failures,
            fallbacks: s.fallbacks,
            reload_failures: s.reload_failures,
            last_error: s.last_error.clone(),
        }
    }
}

/// Wire -> domain for a saved fleet (`queen hives --json` output), used by
/// `queen policy check --fleet FILE`. Validates like every other inbound message.
impl TryFrom<&pb::HiveView> for HiveSnapshot {
    type Error = crate::QueenError;

    fn try_from(v: &pb::HiveView) -> Result<Self, crate::QueenError> {
        use std::sync::Arc;
        use std::time::{Duration, Instant};

        use crate::fleet::{DeviceHealth, GpuStats};

        let bad = |e: rbee_shared::ConvertError| {
            crate::QueenError::InvalidArgument(format!("hive {}: {e}", v.address))
        };
        let health = |h: i32| health_from_wire(h).unwrap_or(Health::Unhealthy);
        let state = conn_state_from_wire(v.state).unwrap_or(ConnState::Pending);
        let origin = match v.origin() {
            pb::HiveOrigin::Api => Origin::Api,
            pb::HiveOrigin::Announced => Origin::Announced,
            pb::HiveOrigin::Local => Origin::Local,
            pb::HiveOrigin::Static | pb::HiveOrigin::Unspecified => Origin::Static,
        };
        let stats = v.stats.as_ref().map_or_else(WindowStats::default, |s| WindowStats {
            window_ms: s.window_ms,
            samples: s.samples,
            cpu_mean_percent: s.cpu_mean_percent,
            cpu_max_percent: s.cpu_max_percent,
            ram_used_mean_percent: s.ram_used_mean_percent,
            ram_used_max_percent: s.ram_used_max_percent,
            gpus: s
                .gpus
                .iter()
                .map(|g| GpuStats {
                    device_id: g.device_id.clone(),
                    util_mean_percent: g.util_mean_percent,
                    util_max_percent: g.util_max_percent,
                    vram_used_max_bytes: g.vram_used_max_bytes,
                })
                .collect(),
        });
        let age = v.sample_age_ms.map(Duration::from_millis);
        let cpu_busy = v.health_reasons.iter().find_map(|r| cpu_busy_of(r));
        Ok(Self {
            address: v.address.clone(),
            origin,
            state,
            state_since_unix_ms: v.state_since_unix_ms,
            unreachable_since_unix_ms: None,
            identity: v.identity.as_ref().map(TryInto::try_into).transpose().map_err(bad)?.map(Arc::new),
            caps: v.capabilities.as_ref().map(TryInto::try_into).transpose().map_err(bad)?.map(Arc::new),
            latest: v.latest_sample.as_ref().map(TryInto::try_into).transpose().map_err(bad)?.map(Arc::new),
            latest_received: age.and_then(|a| Instant::now().checked_sub(a)),
            samples_applied: u64::from(v.latest_sample.is_some()),
            clock_skew_ms: v.clock_skew_ms,
            health: Arc::new(HealthReport {
                health: health(v.health),
                // A hive degraded by its CPU alone stays placeable for GPU work, as it
                // was in the queen that saved it.
                placement: if cpu_busy.is_some() && v.health_reasons.len() == 1 {
                    Health::Healthy
                } else {
                    health(v.health)
                },
                cpu_busy,
                reasons: v.health_reasons.clone(),
                devices: v
                    .devices
                    .iter()
                    .map(|d| DeviceHealth {
                        device_id: d.device_id.clone(),
                        index: d.index,
                        health: health(d.health),
                        reasons: d.reasons.clone(),
                    })
                    .collect(),
            }),
            stats: Arc::new(stats),
            last_error: v.last_error.as_deref().map(Arc::from),
            counters: Default::default(),
            sample_interval: Duration::from_millis(u64::from(v.sample_interval_ms)),
            placement: Default::default(),
        }
        .with_placement())
    }
}

/// The CPU load reason of a saved hive view ("cpu 97% (10 s mean) >= 95%"), read back.
fn cpu_busy_of(reason: &str) -> Option<crate::fleet::CpuBusy> {
    let limit = reason.strip_prefix("cpu ")?.rsplit_once(">= ")?.1.strip_suffix('%')?.parse().ok()?;
    Some(crate::fleet::CpuBusy { limit_percent: limit, reason: reason.to_owned() })
}

/// One page of `ListHives`: where to start and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HivePage {
    /// Start after this address (`None`: from the first).
    pub after: Option<String>,
    /// Hives in the page.
    pub size: usize,
}

impl HivePage {
    /// Hives per page when the caller does not say.
    pub const DEFAULT_SIZE: usize = 100;
    /// Most hives per page (a page of 64-GPU hives stays within the 4 MiB message limit).
    pub const MAX_SIZE: usize = 1000;
    /// Marks the queen's own tokens.
    const TOKEN_PREFIX: &'static str = "h1.";

    /// The answer for `hives`, fetched as `size + 1` so that the last page is known.
    /// The page also ends before it would pass [`view_budget::MAX_ANSWER_BYTES`]
    /// (never before its first hive, which the per-hive budgets keep far smaller).
    ///
    /// [`view_budget::MAX_ANSWER_BYTES`]: rbee_shared::view_budget::MAX_ANSWER_BYTES
    pub fn response(
        &self,
        hives: &[std::sync::Arc<HiveSnapshot>],
        figures: &dyn Fn(&HiveSnapshot) -> Vec<DeviceFigures>,
    ) -> pb::ListHivesResponse {
        let page =
            views_within(hives.iter().take(self.size), rbee_shared::view_budget::MAX_ANSWER_BYTES, figures);
        let next_page_token = match (hives.len() > page.len(), page.last()) {
            (true, Some(last)) => Self::token(&last.address),
            _ => String::new(),
        };
        pb::ListHivesResponse {
            hives: page,
            queen_time_unix_ms: rbee_shared::time::now_unix_ms(),
            next_page_token,
        }
    }

    fn token(address: &str) -> String {
        let hex: String = address.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}{hex}", Self::TOKEN_PREFIX)
    }
}

impl TryFrom<&pb::ListHivesRequest> for HivePage {
    type Error = crate::QueenError;

    fn try_from(r: &pb::ListHivesRequest) -> Result<Self, crate::QueenError> {
        let size = match r.page_size as usize {
            0 => Self::DEFAULT_SIZE,
            n if n <= Self::MAX_SIZE => n,
            n => {
                return Err(crate::QueenError::InvalidArgument(format!(
                    "page_size = {n} is out of range: must be 0 (the default, {}) or 1..={}",
                    Self::DEFAULT_SIZE,
                    Self::MAX_SIZE
                )));
            }
        };
        if r.page_token.is_empty() {
            return Ok(Self { after: None, size });
        }
        let bad = || {
            crate::QueenError::InvalidArgument(
                "page_token is not one this queen gave out (pass next_page_token as is)".into(),
            )
        };
        let hex = r.page_token.strip_prefix(Self::TOKEN_PREFIX).ok_or_else(bad)?;
        if hex.len() % 2 != 0 || hex.len() > 2 * crate::fleet::address::MAX_ADDRESS_BYTES {
            return Err(bad());
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad())?;
        let after = String::from_utf8(bytes).map_err(|_| bad())?;
        Ok(Self { after: Some(after), size })
    }
}

/// The views of `hives` (with their devices' `figures`), in order, until the next one would take the encoded total
/// past `budget` bytes (never fewer than one while there are any): one `ListHives`
/// page, or one part of a `WatchFleet` snapshot.
pub fn views_within<'a>(
    hives: impl IntoIterator<Item = &'a std::sync::Arc<HiveSnapshot>>,
    budget: usize,
    figures: &dyn Fn(&HiveSnapshot) -> Vec<DeviceFigures>,
) -> Vec<pb::HiveView> {
    let mut views = Vec::new();
    let mut bytes = 0;
    for hive in hives {
        let view = hive_view(hive, &figures(hive));
        // With the repeated field's tag and length prefix.
        let len = prost::Message::encoded_len(&view) + 8;
        if !views.is_empty() && bytes + len > budget {
            break;
        }
        bytes += len;
        views.push(view);
    }
    views
}

/// A wire health as the domain's; `None` for `UNSPECIFIED` or an unknown value. The
/// CLI names a health by this and [`Health::as_str`], so there is one name per state.
pub fn health_from_wire(h: i32) -> Option<Health> {
    match pb::Health::try_from(h).ok()? {
        pb::Health::Healthy => Some(Health::Healthy),
        pb::Health::Degraded => Some(Health::Degraded),
        pb::Health::Unhealthy => Some(Health::Unhealthy),
        pb::Health::Pending => Some(Health::Pending),
        pb::Health::Unspecified => None,
    }
}

/// A wire hive state as the domain's; `None` for `UNSPECIFIED` or an unknown value (the
/// CLI names a state by this and [`ConnState::as_str`]).
pub fn conn_state_from_wire(s: i32) -> Option<ConnState> {
    match pb::HiveState::try_from(s).ok()? {
        pb::HiveState::Pending => Some(ConnState::Pending),
        pb::HiveState::Connecting => Some(ConnState::Connecting),
        pb::HiveState::Online => Some(ConnState::Online),
        pb::HiveState::Stale => Some(ConnState::Stale),
        pb::HiveState::Lost => Some(ConnState::Lost),
        pb::HiveState::Removed => Some(ConnState::Removed),
        pb::HiveState::Unspecified => None,
    }
}

#[cfg(test)]
mod hive_page_tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_forged_ones_are_refused() {
        let token = HivePage::token("http://10.0.0.1:7835");
        let page = HivePage::try_from(&pb::ListHivesRequest { page_size: 5, page_token: token }).unwrap();
        assert_eq!(page, HivePage { after: Some("http://10.0.0.1:7835".into()), size: 5 });
        for forged in ["x", "h1.zz", "h1.f", "h1.ff"] {
            let r = pb::ListHivesRequest { page_size: 0, page_token: forged.into() };
            assert!(HivePage::try_from(&r).is_err(), "{forged}");
        }
        let r = pb::ListHivesRequest { page_size: 1001, page_token: String::new() };
        assert!(HivePage::try_from(&r).unwrap_err().to_string().contains("page_size"));
    }

    #[test]
    fn pages_end_before_they_pass_the_answer_budget() {
        use rbee_shared::{ModelEntry, ModelFile, ModelState, VersionedCapabilities};
        use std::sync::Arc;
        // Five hives of ~1 MB each (a catalog at its byte budget): 5 MB in all.
        let entry = ModelEntry {
            id: "big".into(),
            state: ModelState::Ready,
            files: (0..6000)
                .map(|i| ModelFile { path: format!("{i:0>80}"), size_bytes: 1, sha256: Some("a".repeat(64)) })
                .collect(),
            size_bytes: 6000,
            error: None,
            resident_bytes: None,
            warm: false,
        };
        let mut caps = VersionedCapabilities { version: 1, caps: Default::default() };
        caps.caps.models.insert(entry.id.clone(), entry);
        let caps = Arc::new(caps);
        let hives: Vec<Arc<HiveSnapshot>> = (0..5)
            .map(|i| {
                let mut h =
                    HiveSnapshot::pending(format!("http://10.0.0.{i}:1"), Origin::Static, Default::default());
                h.caps = Some(caps.clone());
                Arc::new(h)
            })
            .collect();
        let mut after: Option<String> = None;
        let mut seen = 0;
        loop {
            let rest: Vec<_> =
                hives.iter().filter(|h| after.as_ref().is_none_or(|a| h.address > *a)).cloned().collect();
            let page = HivePage { after: after.clone(), size: HivePage::DEFAULT_SIZE }
                .response(&rest, &|_| Vec::new());
            let bytes = prost::Message::encoded_len(&page);
            assert!(bytes <= rbee_shared::view_budget::MAX_ANSWER_BYTES, "{bytes} bytes");
            assert!(!page.hives.is_empty());
            seen += page.hives.len();
            if page.next_page_token.is_empty() {
                break;
            }
            let token = pb::ListHivesRequest { page_size: 0, page_token: page.next_page_token };
            after = HivePage::try_from(&token).unwrap().after;
        }
        assert_eq!(seen, 5);
    }
    /// A saved view of a hive degraded by its CPU alone (`queen hives --json`, read back
    /// by `queen policy check --fleet`) stays placeable for GPU work, as it was live;
    /// one with another problem too does not.
    #[test]
    fn a_saved_cpu_busy_hive_stays_placeable_for_gpu_work() {
        let view = |reasons: &[&str]| pb::HiveView {
            address: "http://10.0.0.1:7835".into(),
            state: pb::HiveState::Online as i32,
            health: pb::Health::Degraded as i32,
            health_reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
            ..Default::default()
        };
        let busy = HiveSnapshot::try_from(&view(&["cpu 97% (10 s mean) >= 95%"])).unwrap();
        assert_eq!((busy.health.health, busy.health.placement), (Health::Degraded, Health::Healthy));
        assert_eq!(busy.health.cpu_busy.as_ref().map(|b| b.limit_percent), Some(95.0));
        let both = HiveSnapshot::try_from(&view(&["cpu 97% (10 s mean) >= 95%", "ram 92% >= 90%"])).unwrap();
        assert_eq!(both.health.placement, Health::Degraded);
    }
}
