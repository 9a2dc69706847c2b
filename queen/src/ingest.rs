//! Applying a hive's stream to the queen's view of it: snapshots replace, diffs apply
//! only on their exact base, samples pass through. Pure and synchronous, so every
//! rule is testable without a network.

use std::sync::Arc;

use rbee_shared::{HiveIdentity, HivePayload, HiveStreamMessage, Sample, VersionedCapabilities};

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
    /// A sample.
    Sample(Sample),
    /// The view can no longer be trusted: ask the hive for a snapshot. Later diffs are
    /// dropped until it arrives.
    NeedResync(String),
    /// A diff dropped while waiting for the snapshot.
    Dropped,
    /// The hive's identity changed under the same address: refuse the connection.
    Refused(String),
}

/// The queen's view of one hive's identity and capabilities.
#[derive(Debug, Clone, Default)]
pub struct IngestState {
    /// Identity, once known.
    pub identity: Option<Arc<HiveIdentity>>,
    /// Capabilities, once known.
    pub caps: Option<Arc<VersionedCapabilities>>,
    /// A resync was asked for; diffs are dropped until the snapshot arrives.
    pub awaiting_resync: bool,
    /// The last sequence number seen on the current stream.
    last_seq: u64,
}

impl IngestState {
    /// Takes a full identity and capability set (from `Discover` or a snapshot).
    /// Returns whether it is a new epoch, or `Err` if the hive id changed.
    pub fn replace(&mut self, identity: HiveIdentity, caps: VersionedCapabilities) -> Result<bool, String> {
        let restarted = match &self.identity {
            Some(old) if old.hive_id != identity.hive_id => {
                return Err(format!(
                    "the hive at this address changed its id from {:?} to {:?}",
                    old.hive_id, identity.hive_id
                ));
            }
            Some(old) => old.epoch != identity.epoch,
            None => false,
        };
        self.identity = Some(Arc::new(identity));
        self.caps = Some(Arc::new(caps));
        self.awaiting_resync = false;
        Ok(restarted)
    }

    /// A new stream starts: sequence numbers start again.
    pub fn start_stream(&mut self) {
        self.last_seq = 0;
    }

    /// The epoch and version to resume with, when known.
    pub fn resume_point(&self) -> Option<(String, u64)> {
        Some((self.identity.as_ref()?.epoch.clone(), self.caps.as_ref()?.version))
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
            HivePayload::Sample(s) => Outcome::Sample(s),
            HivePayload::Diff(diff) => {
                let Some(held) = &self.caps else {
                    self.awaiting_resync = true;
                    return Outcome::NeedResync("a diff arrived before any snapshot".into());
                };
                let mut next = VersionedCapabilities::clone(held);
                match diff.apply_to(&mut next) {
                    Ok(()) => {
                        self.caps = Some(Arc::new(next));
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
}
