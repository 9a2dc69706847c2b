//! Applying a hive's stream to the queen's view of it: snapshots replace, diffs apply
//! only on their exact base, samples pass through unless they were measured against
//! capabilities newer than the ones held (then a diff was lost). Pure and synchronous,
//! so every rule is testable without a network.
//!
//! The queen holds every hive to the view budgets ([`rbee_shared::view_budget`]) itself,
//! whatever the hive did: the capabilities it publishes are cut to them (diffs still
//! apply to the whole capabilities held), and so are the samples, which then say what
//! was cut.

use std::sync::Arc;

use std::collections::HashMap;

use rbee_shared::view_budget::{self, push_cut};
use rbee_shared::{HiveIdentity, HivePayload, HiveStreamMessage, Sample, VersionedCapabilities};

use super::error::IngestError;

/// What one message did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A snapshot replaced the capabilities (`restarted`: a new epoch).
    Snapshot {
        /// The hive process restarted.
        restarted: bool,
    },
    /// A diff applied cleanly.
    Diff,
    /// A sample, in the `Arc` the snapshot then holds it in (one allocation, where a
    /// box and then an `Arc` made two and a copy of the whole sample between them).
    Sample(Arc<Sample>),
    /// The view can no longer be trusted: ask the hive for a snapshot. Later diffs are
    /// dropped until it arrives.
    NeedResync(String),
    /// A diff dropped while waiting for the snapshot.
    Dropped,
    /// The hive's identity changed under the same address: refuse the connection.
    Refused(IngestError),
}

/// The queen's view of one hive's identity and capabilities.
#[derive(Debug, Clone, Default)]
pub struct IngestState {
    /// Identity, once known.
    pub identity: Option<Arc<HiveIdentity>>,
    /// Capabilities, once known, whole as the hive sent them (diffs apply to these).
    pub caps: Option<Arc<VersionedCapabilities>>,
    /// The capabilities as the queen publishes them: `caps` cut to the view budgets
    /// (the same `Arc` when nothing was cut).
    published: Option<Arc<VersionedCapabilities>>,
    /// What was cut from `caps` for `published`.
    caps_cuts: Vec<String>,
    /// A resync was asked for; diffs are dropped until the snapshot arrives.
    pub awaiting_resync: bool,
    /// Per GPU id, the capability version it arrived with (0: known from the start).
    /// A sample measured against an older version cannot name it yet.
    added_in: HashMap<String, u64>,
    /// The last sequence number seen on the current stream.
    last_seq: u64,
}

impl IngestState {
    /// Takes a full identity and capability set (from `Discover` or a snapshot).
    /// Returns whether it is a new epoch, or `Err` if the hive id changed.
    pub fn replace(
        &mut self,
        identity: HiveIdentity,
        caps: VersionedCapabilities,
    ) -> Result<bool, IngestError> {
        let restarted = match &self.identity {
            Some(old) if old.hive_id != identity.hive_id => {
                return Err(IngestError::IdChanged { from: old.hive_id.clone(), to: identity.hive_id });
            }
            Some(old) => old.epoch != identity.epoch,
            None => false,
        };
        if !restarted
            && let Some(held) = &self.caps
            && caps.version < held.version
        {
            return Err(IngestError::VersionBackwards {
                from: held.version,
                to: caps.version,
                epoch: identity.epoch,
            });
        }
        // GPUs new to the queen within an epoch are as new as this snapshot; the rest
        // keep the version they arrived with. A new epoch starts from scratch.
        let fresh = if restarted || self.caps.is_none() { 0 } else { caps.version };
        let mut added_in = HashMap::with_capacity(caps.caps.gpus.len());
        for id in caps.caps.gpus.keys() {
            let since = if restarted { None } else { self.added_in.get(id).copied() };
            added_in.insert(id.clone(), since.unwrap_or(fresh));
        }
        self.added_in = added_in;
        self.identity = Some(Arc::new(identity));
        self.set_caps(Arc::new(caps));
        self.awaiting_resync = false;
        Ok(restarted)
    }

    /// Holds `caps`, and cuts the published copy to the view budgets.
    fn set_caps(&mut self, caps: Arc<VersionedCapabilities>) {
        let models = &caps.caps.models;
        let within = models.len() <= view_budget::MAX_CATALOG_ENTRIES
            && models.values().filter(|m| m.state == rbee_shared::ModelState::Failed).count()
                <= view_budget::MAX_FAILED_ENTRIES
            && models
                .values()
                .all(|m| m.error.as_ref().is_none_or(|e| e.len() <= view_budget::MAX_ERROR_BYTES))
            && models.values().map(view_budget::entry_bytes).sum::<usize>() <= view_budget::MAX_CATALOG_BYTES;
        if within {
            self.published = Some(caps.clone());
            self.caps_cuts = Vec::new();
        } else {
            let mut cut = VersionedCapabilities::clone(&caps);
            self.caps_cuts = view_budget::cut_catalog(&mut cut.caps.models);
            self.published = Some(Arc::new(cut));
        }
        self.caps = Some(caps);
    }

    /// The capabilities to publish: those held, cut to the view budgets.
    pub fn published_caps(&self) -> Option<Arc<VersionedCapabilities>> {
        self.published.clone()
    }

    /// Holds `sample` to the view budgets, and adds what the queen cut to its cut lines.
    fn cut_sample(&self, sample: &mut Sample) {
        sample.cuts = view_budget::cuts_from_wire(&sample.cuts);
        // The hive's own lines never push the queen's out.
        view_budget::room_for_own_cuts(
            &mut sample.cuts,
            self.caps_cuts.len() + view_budget::SAMPLE_CUT_LINES,
        );
        for cut in &self.caps_cuts {
            push_cut(&mut sample.cuts, cut.clone());
        }
        view_budget::cut_sample(sample);
    }

    /// The capability version a GPU arrived with, if the queen holds it.
    pub fn added_in(&self, id: &str) -> Option<u64> {
        self.added_in.get(id).copied()
    }

    /// The capability version held, 0 before any.
    pub fn version(&self) -> u64 {
        self.caps.as_ref().map_or(0, |c| c.version)
    }

    /// A new stream starts: sequence numbers start again.
    pub fn start_stream(&mut self) {
        self.last_seq = 0;
    }

    /// Applies one message.
    pub fn apply(&mut self, msg: HiveStreamMessage) -> Outcome {
        let expected = self.last_seq + 1;
        self.last_seq = self.last_seq.max(msg.seq);
        let gap =
            (msg.seq != expected).then(|| format!("sequence jumped from {} to {}", expected - 1, msg.seq));
        match msg.payload {
            HivePayload::Snapshot { identity, capabilities, .. } => {
                match self.replace(identity, capabilities) {
                    Ok(restarted) => Outcome::Snapshot { restarted },
                    Err(why) => Outcome::Refused(why),
                }
            }
            _ if self.awaiting_resync => Outcome::Dropped,
            _ if gap.is_some() => {
                self.awaiting_resync = true;
                Outcome::NeedResync(gap.unwrap_or_default())
            }
            HivePayload::Sample(s) => match s.capability_version {
                // The hive moved on to capabilities the queen never received.
                Some(stamped) if stamped > self.version() => {
                    self.awaiting_resync = true;
                    Outcome::NeedResync(format!(
                        "a sample was measured against capability version {stamped}, newer than the {} held",
                        self.version()
                    ))
                }
                _ => {
                    let mut s = s;
                    self.cut_sample(&mut s);
                    Outcome::Sample(Arc::new(s))
                }
            },
            HivePayload::Diff(diff) => {
                let Some(held) = &self.caps else {
                    self.awaiting_resync = true;
                    return Outcome::NeedResync("a diff arrived before any snapshot".into());
                };
                let mut next = VersionedCapabilities::clone(held);
                match diff.apply_to(&mut next) {
                    Ok(()) => {
                        for id in &diff.gpus_removed {
                            self.added_in.remove(id);
                        }
                        for gpu in &diff.gpus_added {
                            self.added_in.insert(gpu.id.clone(), diff.new_version);
                        }
                        self.set_caps(Arc::new(next));
                        Outcome::Diff
                    }
                    Err(e) => {
                        self.awaiting_resync = true;
                        Outcome::NeedResync(e.to_string())
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rbee_proto::v1 as pb;
    use rbee_shared::{CapabilityDiff, DeviceSourceKind, GpuDevice, MigMode, SnapshotReason};

    fn identity(epoch: &str) -> HiveIdentity {
        HiveIdentity {
            hive_id: "h".into(),
            epoch: epoch.into(),
            hostname: String::new(),
            advertised_address: String::new(),
            version: String::new(),
            protocol_version: 1,
            labels: Default::default(),
            gpu_source: DeviceSourceKind::Simulated,
            started_at_unix_ms: 0,
        }
    }

    fn gpu(id: &str) -> GpuDevice {
        GpuDevice {
            id: id.into(),
            index: 0,
            name: String::new(),
            pci_bus_id: String::new(),
            compute_capability: None,
            vram_total_bytes: 1,
            driver_version: None,
            cuda_version: None,
            power_limit_mw: None,
            mig_mode: MigMode::NotReported,
            topology: Default::default(),
        }
    }

    fn msg(seq: u64, payload: HivePayload) -> HiveStreamMessage {
        HiveStreamMessage { seq, hive_time_unix_ms: 0, payload }
    }

    fn add(base: u64, id: &str) -> HivePayload {
        HivePayload::Diff(CapabilityDiff {
            base_version: base,
            new_version: base + 1,
            gpus_added: vec![gpu(id)],
            ..Default::default()
        })
    }

    fn snapshot(epoch: &str, version: u64) -> HivePayload {
        HivePayload::Snapshot {
            reason: SnapshotReason::Initial,
            identity: identity(epoch),
            capabilities: VersionedCapabilities { version, caps: Default::default() },
        }
    }

    #[test]
    fn diffs_apply_in_order() {
        let mut s = IngestState::default();
        s.start_stream();
        assert_eq!(s.apply(msg(1, snapshot("e1", 1))), Outcome::Snapshot { restarted: false });
        assert_eq!(s.apply(msg(2, add(1, "a"))), Outcome::Diff);
        assert_eq!(s.apply(msg(3, add(2, "b"))), Outcome::Diff);
        assert_eq!(s.caps.as_ref().unwrap().version, 3);
        assert_eq!(s.caps.as_ref().unwrap().caps.gpus.len(), 2);
    }

    #[test]
    fn a_gapped_diff_is_never_applied_and_asks_for_a_resync() {
        let mut s = IngestState::default();
        s.start_stream();
        s.apply(msg(1, snapshot("e1", 1)));
        let before = s.caps.clone();
        assert!(matches!(s.apply(msg(2, add(5, "x"))), Outcome::NeedResync(_)));
        assert_eq!(s.caps, before, "the held view is untouched");
        // Even a diff that would fit is dropped until the snapshot comes.
        assert_eq!(s.apply(msg(3, add(1, "y"))), Outcome::Dropped);
        assert_eq!(s.caps, before);
        assert_eq!(s.apply(msg(4, snapshot("e1", 6))), Outcome::Snapshot { restarted: false });
        assert!(!s.awaiting_resync);
        assert_eq!(s.apply(msg(5, add(6, "z"))), Outcome::Diff);
    }

    fn sample(capability_version: Option<u64>) -> HivePayload {
        HivePayload::Sample(Sample { capability_version, ..Default::default() })
    }

    #[test]
    fn a_sample_measured_against_newer_capabilities_is_not_applied_and_asks_for_a_resync() {
        let mut s = IngestState::default();
        s.start_stream();
        s.apply(msg(1, snapshot("e1", 3)));
        // Stamped with the held version, an older one, or not at all: applied.
        for (seq, stamp) in [(2, Some(3)), (3, Some(2)), (4, None)] {
            assert!(matches!(s.apply(msg(seq, sample(stamp))), Outcome::Sample(_)), "{stamp:?}");
        }
        // Stamped newer than held: the diff to version 4 was lost.
        let outcome = s.apply(msg(5, sample(Some(4))));
        assert!(
            matches!(&outcome, Outcome::NeedResync(r) if r.contains("version 4, newer than the 3 held")),
            "{outcome:?}"
        );
        assert!(s.awaiting_resync);
        assert_eq!(s.apply(msg(6, sample(Some(4)))), Outcome::Dropped, "nothing applies until the snapshot");
        assert_eq!(s.apply(msg(7, snapshot("e1", 4))), Outcome::Snapshot { restarted: false });
        assert!(matches!(s.apply(msg(8, sample(Some(4)))), Outcome::Sample(_)));
    }

    #[test]
    fn a_sequence_jump_asks_for_a_resync() {
        let mut s = IngestState::default();
        s.start_stream();
        s.apply(msg(1, snapshot("e1", 1)));
        assert!(matches!(s.apply(msg(3, add(1, "a"))), Outcome::NeedResync(r) if r.contains("sequence")));
    }

    #[test]
    fn a_new_epoch_is_a_restart_and_a_new_id_is_refused() {
        let mut s = IngestState::default();
        s.start_stream();
        s.apply(msg(1, snapshot("e1", 4)));
        assert_eq!(s.apply(msg(2, snapshot("e2", 1))), Outcome::Snapshot { restarted: true });
        let mut other = identity("e3");
        other.hive_id = "someone-else".into();
        assert!(s.replace(other, VersionedCapabilities::default()).is_err());
        assert_eq!(s.identity.as_ref().unwrap().hive_id, "h");
    }

    #[test]
    fn a_snapshot_may_not_move_the_version_backwards_within_an_epoch() {
        let mut s = IngestState::default();
        s.start_stream();
        s.apply(msg(1, snapshot("e1", 5)));
        assert!(matches!(
            s.apply(msg(2, snapshot("e1", 3))),
            Outcome::Refused(IngestError::VersionBackwards { .. })
        ));
        assert_eq!(s.caps.as_ref().unwrap().version, 5);
        assert_eq!(
            s.apply(msg(3, snapshot("e2", 1))),
            Outcome::Snapshot { restarted: true },
            "a new epoch starts over"
        );
    }

    #[test]
    fn the_queen_cuts_a_hives_view_to_its_budgets_and_samples_say_what_was_cut() {
        use rbee_shared::{DownloadPhase, DownloadProgress, ModelEntry, ModelState};
        let failed = |i: usize| ModelEntry {
            id: format!("bad-{i:04}"),
            state: ModelState::Failed,
            files: Vec::new(),
            size_bytes: 0,
            error: Some("x".repeat(800)),
            resident_bytes: None,
            warm: false,
        };
        let mut caps = VersionedCapabilities { version: 1, caps: Default::default() };
        caps.caps.models = (0..100).map(|i| (failed(i).id, failed(i))).collect();
        let mut s = IngestState::default();
        s.start_stream();
        let payload = HivePayload::Snapshot {
            reason: SnapshotReason::Initial,
            identity: identity("e1"),
            capabilities: caps,
        };
        assert_eq!(s.apply(msg(1, payload)), Outcome::Snapshot { restarted: false });
        let published = s.published_caps().unwrap();
        assert_eq!(published.caps.models.len(), view_budget::MAX_FAILED_ENTRIES);
        assert!(
            published
                .caps
                .models
                .values()
                .all(|m| m.error.as_ref().unwrap().len() <= view_budget::MAX_ERROR_BYTES)
        );
        assert_eq!(s.caps.as_ref().unwrap().caps.models.len(), 100, "diffs apply to the whole view");
        // A diff removing a model the queen cut from what it publishes still applies.
        let diff = CapabilityDiff {
            base_version: 1,
            new_version: 2,
            models_removed: vec!["bad-0099".into()],
            ..Default::default()
        };
        assert_eq!(s.apply(msg(2, HivePayload::Diff(diff))), Outcome::Diff);
        let record = |i: usize| DownloadProgress {
            model_id: format!("m-{i:04}"),
            phase: DownloadPhase::Failed,
            bytes_done: 0,
            bytes_total: None,
            speed_bytes_per_s: 0.0,
            eta_ms: None,
            error: Some("e".repeat(800)),
            attempt: 1,
            updated_at_unix_ms: i as u64,
            sources: Vec::new(),
        };
        let sample = Sample { downloads: (0..4096).map(record).collect(), ..Default::default() };
        let Outcome::Sample(sample) = s.apply(msg(3, HivePayload::Sample(sample))) else {
            panic!("not applied")
        };
        assert_eq!(sample.downloads.len(), view_budget::MAX_RECORDS);
        assert_eq!(
            sample.cuts,
            ["catalog: kept 32 of 99 failed entries", "downloads: kept 64 of 4096 records"]
        );
        // A hive that fills every cut line itself cannot push the queen's lines out.
        let sample = Sample {
            downloads: (0..4096).map(record).collect(),
            cuts: (0..view_budget::MAX_CUTS).map(|i| format!("hive line {i}")).collect(),
            ..Default::default()
        };
        let Outcome::Sample(sample) = s.apply(msg(4, HivePayload::Sample(sample))) else {
            panic!("not applied")
        };
        assert!(sample.cuts.len() <= view_budget::MAX_CUTS, "{:?}", sample.cuts);
        for own in ["catalog: kept 32 of 99 failed entries", "downloads: kept 64 of 4096 records"] {
            assert!(sample.cuts.iter().any(|c| c == own), "{own:?} pushed out: {:?}", sample.cuts);
        }
    }

    fn wire_gpu() -> impl Strategy<Value = pb::GpuDevice> {
        (prop_oneof![Just(""), Just("g0"), Just("g1"), Just("g2")], 0u64..1 << 40).prop_map(|(id, total)| {
            pb::GpuDevice { id: id.into(), vram_total_bytes: total, ..Default::default() }
        })
    }

    fn wire_message() -> impl Strategy<Value = pb::HiveMessage> {
        let caps = (0u64..8, prop::collection::vec(wire_gpu(), 0..4), any::<bool>()).prop_map(
            |(version, gpus, cpu)| pb::Capabilities {
                version,
                gpus,
                cpu: cpu.then(pb::CpuInfo::default),
                ..Default::default()
            },
        );
        let snapshot = (prop_oneof![Just("e1"), Just("e2")], prop_oneof![Just("h"), Just("other")], caps)
            .prop_map(|(epoch, id, caps)| {
                pb::hive_message::Payload::Snapshot(pb::Snapshot {
                    reason: 1,
                    identity: Some(pb::HiveIdentity {
                        hive_id: id.into(),
                        epoch: epoch.into(),
                        ..Default::default()
                    }),
                    capabilities: Some(caps),
                })
            });
        let diff = (
            0u64..8,
            0u64..9,
            prop::collection::vec(wire_gpu(), 0..3),
            prop::collection::vec("g[0-3]", 0..3),
        )
            .prop_map(|(base, new, added, removed)| {
                pb::hive_message::Payload::Diff(pb::CapabilityDiff {
                    base_version: base,
                    new_version: new,
                    gpus_added: added,
                    gpus_removed: removed,
                    ..Default::default()
                })
            });
        let sample = (
            0u64..100,
            0u64..100,
            prop_oneof![Just(f32::NAN), -5.0f32..150.0],
            prop::collection::vec(wire_gpu(), 0..2),
        )
            .prop_map(|(total, used, cpu, _)| {
                pb::hive_message::Payload::Sample(pb::Sample {
                    ram_total_bytes: total,
                    ram_used_bytes: used,
                    ram_available_bytes: total.saturating_sub(used),
                    cpu_percent: Some(cpu),
                    ..Default::default()
                })
            });
        (0u64..12, prop::option::of(prop_oneof![snapshot, diff, sample]))
            .prop_map(|(seq, payload)| pb::HiveMessage { seq, hive_time_unix_ms: 0, payload })
    }

    proptest! {
        /// Random, often hostile, stream messages: nothing panics, invalid data never
        /// reaches the view, the hive id never changes, and within an epoch the
        /// capability version only moves forward.
        #[test]
        fn random_streams_keep_the_invariants(messages in prop::collection::vec(wire_message(), 1..60)) {
            let mut s = IngestState::default();
            s.start_stream();
            for m in &messages {
                let before = (s.identity.clone(), s.caps.as_ref().map(|c| c.version));
                let Ok(message) = HiveStreamMessage::try_from(m) else { continue };
                let outcome = s.apply(message);
                if let Outcome::Sample(sample) = &outcome {
                    prop_assert!(sample.ram_used_bytes <= sample.ram_total_bytes);
                    prop_assert!(sample.cpu_percent.is_none_or(|p| (0.0..=100.0).contains(&p)));
                }
                if let (Some(old), Some(new)) = (&before.0, &s.identity) {
                    prop_assert_eq!(&old.hive_id, &new.hive_id);
                    if old.epoch == new.epoch {
                        prop_assert!(s.caps.as_ref().map(|c| c.version) >= before.1, "version went backwards");
                    }
                }
                if matches!(outcome, Outcome::Refused(_)) {
                    prop_assert_eq!(before.1, s.caps.as_ref().map(|c| c.version), "a refusal changes nothing");
                }
            }
        }
    }
}
