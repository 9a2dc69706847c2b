//! What the queen knows about one hive at one moment.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ConnState, Counters, Health, HealthReport, Origin, PlacementSummary, WindowStats};
use rbee_shared::{HiveIdentity, Sample, VersionedCapabilities};

/// One hive, as published by its connection manager: a new one on every sample, so
/// every part that is not a few bytes is shared (`Arc`), and a copy is cheap.
#[derive(Debug, Clone)]
pub struct HiveSnapshot {
    /// The address the queen dials.
    pub address: String,
    /// How the queen learned about it.
    pub origin: Origin,
    /// Connection state.
    pub state: ConnState,
    /// When it entered `state`, ms since the Unix epoch.
    pub state_since_unix_ms: u64,
    /// Since when the queen has had no stream from it (neither online nor stale), ms
    /// since the Unix epoch; `None` while it streams. Redials (lost, connecting, lost)
    /// do not restart it: it says how long the hive has been gone.
    pub unreachable_since_unix_ms: Option<u64>,
    /// Identity, once discovered.
    pub identity: Option<Arc<HiveIdentity>>,
    /// Capabilities, once discovered.
    pub caps: Option<Arc<VersionedCapabilities>>,
    /// The newest applied sample.
    pub latest: Option<Arc<Sample>>,
    /// When the queen received it (its age is judged on the queen's clock alone).
    pub latest_received: Option<Instant>,
    /// Samples applied since the queen started managing this hive (watchers use it to
    /// send each sample once, whatever the hive's clock says).
    pub samples_applied: u64,
    /// The hive's clock minus the queen's when its newest message arrived, in ms
    /// (includes the network delay).
    pub clock_skew_ms: Option<i64>,
    /// Health and reasons.
    pub health: Arc<HealthReport>,
    /// Windowed statistics.
    pub stats: Arc<WindowStats>,
    /// Why the last connection ended or failed (shared: a snapshot is published on
    /// every sample, and this outlives the failure).
    pub last_error: Option<Arc<str>>,
    /// Connection counters.
    pub counters: Counters,
    /// The sample interval asked of the hive.
    pub sample_interval: Duration,
    /// What placement reads of `caps`, `latest`, `health` and `stats`, in one compact
    /// block ([`HiveSnapshot::refresh_placement`] after changing them; a stale one is
    /// noticed and recomputed by [`HiveSnapshot::placement`]).
    pub placement: Arc<PlacementSummary>,
}

impl HiveSnapshot {
    /// A hive that is known but not yet dialed.
    pub fn pending(address: String, origin: Origin, sample_interval: Duration) -> Self {
        let mut pending = Self {
            address,
            origin,
            state: ConnState::Pending,
            state_since_unix_ms: rbee_shared::time::now_unix_ms(),
            unreachable_since_unix_ms: Some(rbee_shared::time::now_unix_ms()),
            identity: None,
            caps: None,
            latest: None,
            latest_received: None,
            samples_applied: 0,
            clock_skew_ms: None,
            health: Arc::new(HealthReport {
                health: Health::Unhealthy,
                placement: Health::Unhealthy,
                cpu_busy: None,
                reasons: vec!["not connected yet".into()],
                devices: vec![],
            }),
            stats: Arc::default(),
            last_error: None,
            counters: Counters::default(),
            sample_interval,
            placement: Arc::default(),
        };
        pending.refresh_placement();
        pending
    }

    /// Makes `target` a copy of this snapshot, reusing its address string: a link
    /// refills the snapshot it published before last instead of allocating one per
    /// sample. Every field is named, so a new one cannot be forgotten here.
    pub fn copy_into(&self, target: &mut HiveSnapshot) {
        let HiveSnapshot {
            address,
            origin,
            state,
            state_since_unix_ms,
            unreachable_since_unix_ms,
            identity,
            caps,
            latest,
            latest_received,
            samples_applied,
            clock_skew_ms,
            health,
            stats,
            last_error,
            counters,
            sample_interval,
            placement,
        } = self;
        target.address.clone_from(address);
        target.origin = *origin;
        target.state = *state;
        target.state_since_unix_ms = *state_since_unix_ms;
        target.unreachable_since_unix_ms = *unreachable_since_unix_ms;
        target.identity.clone_from(identity);
        target.caps.clone_from(caps);
        target.latest.clone_from(latest);
        target.latest_received = *latest_received;
        target.samples_applied = *samples_applied;
        target.clock_skew_ms = *clock_skew_ms;
        target.health.clone_from(health);
        target.stats.clone_from(stats);
        target.last_error.clone_from(last_error);
        target.counters = *counters;
        target.sample_interval = *sample_interval;
        target.placement.clone_from(placement);
    }

    /// Recomputes [`HiveSnapshot::placement`] from the capabilities, newest sample,
    /// health and statistics (the link does this on every publish).
    pub fn refresh_placement(&mut self) {
        self.placement = Arc::new(self.fresh_placement());
    }

    /// Refreshed, for a snapshot built or changed in one go.
    pub fn with_placement(mut self) -> Self {
        self.refresh_placement();
        self
    }

    /// The parts of this view a GPU's join ([`super::GpuParts`]) resolves against.
    pub fn view_parts(&self) -> super::ViewParts<'_> {
        super::ViewParts { latest: self.latest.as_deref(), health: &self.health, stats: &self.stats }
    }

    /// What placement reads of this hive: the published summary, or a fresh one when
    /// the snapshot was changed without refreshing it.
    pub fn placement(&self) -> Cow<'_, PlacementSummary> {
        if self.placement.is_of(&self.caps, &self.latest, &self.health, &self.stats) {
            Cow::Borrowed(&self.placement)
        } else {
            Cow::Owned(self.fresh_placement())
        }
    }

    /// The summary computed from this snapshot's parts now.
    fn fresh_placement(&self) -> PlacementSummary {
        PlacementSummary::of(self.caps.clone(), self.latest.clone(), self.health.clone(), self.stats.clone())
    }

    /// The hive id, empty before discovery.
    pub fn hive_id(&self) -> &str {
        self.identity.as_ref().map_or("", |i| i.hive_id.as_str())
    }

    /// How old the newest sample is now.
    pub fn sample_age(&self) -> Option<Duration> {
        self.latest_received.map(|t| t.elapsed())
    }

    /// True when `key` is this hive's id or address.
    pub fn matches(&self, key: &str) -> bool {
        self.address == key || (!key.is_empty() && self.hive_id() == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_into_makes_an_equal_snapshot_over_any_other() {
        let mut source =
            HiveSnapshot::pending("http://10.0.0.1:7070".into(), Origin::Api, Duration::from_secs(1));
        source.state = ConnState::Online;
        source.samples_applied = 7;
        source.clock_skew_ms = Some(-3);
        source.last_error = Some(Arc::from("stream broke"));
        source.counters.gaps = 2;
        source.latest = Some(Arc::new(Sample { taken_at_unix_ms: 5, ..Default::default() }));
        source.refresh_placement();
        let mut target =
            HiveSnapshot::pending("http://a-much-longer-host-name:1".into(), Origin::Static, Duration::ZERO);
        source.copy_into(&mut target);
        assert_eq!(format!("{target:?}"), format!("{source:?}"));
        assert!(Arc::ptr_eq(&target.placement, &source.placement), "the shared parts are shared, not copied");
    }
}
