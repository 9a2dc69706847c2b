//! One message of a hive's `MetricsStream`, as domain types.
//!
//! A sample is always a whole [`Sample`] here. Compact samples ([`crate::compact`]) exist
//! only on the wire: the hive's outbound edge encodes them and the receiver's edge
//! decodes them straight back into a [`Sample`].

use crate::{CapabilityDiff, HiveIdentity, Sample, VersionedCapabilities};

/// Why a hive sent a full snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotReason {
    /// The caller held no view.
    Initial,
    /// The caller's view was of another epoch or version.
    Outdated,
    /// The caller asked for it.
    Resync,
    /// Not reported.
    Unspecified,
}

/// What a stream message carries.
#[derive(Debug, Clone, PartialEq)]
pub enum HivePayload {
    /// The hive's identity and full capabilities.
    Snapshot {
        /// Why it was sent.
        reason: SnapshotReason,
        /// Who the hive is.
        identity: HiveIdentity,
        /// Everything it has.
        capabilities: VersionedCapabilities,
    },
    /// A live measurement.
    Sample(Sample),
    /// A capability change.
    Diff(CapabilityDiff),
}

/// One stream message.
#[derive(Debug, Clone, PartialEq)]
pub struct HiveStreamMessage {
    /// Per-stream sequence number (1, 2, 3, ...).
    pub seq: u64,
    /// The hive's clock when sent, ms since the Unix epoch.
    pub hive_time_unix_ms: u64,
    /// The content.
    pub payload: HivePayload,
}

/// The capability view a caller already holds (sent when it subscribes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownView {
    /// The hive epoch the view belongs to.
    pub epoch: String,
    /// The capability version the view holds.
    pub capability_version: u64,
}

/// Longest epoch a caller may name, bytes.
pub const MAX_EPOCH_BYTES: usize = 64;

/// One message from the queen (or any caller) on `MetricsStream`, as domain types. The
/// first one subscribes; later ones may change the interval or ask for a resync.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueenStreamMessage {
    /// A new sample interval; `None` keeps the current one (the hive's default at first).
    pub sample_interval: Option<crate::SampleInterval>,
    /// First message only: the view the caller holds. When it matches the hive's epoch
    /// and version, no snapshot is sent.
    pub known: Option<KnownView>,
    /// Send a full snapshot now.
    pub resync: bool,
    /// First message only: send samples in compact form.
    pub compact: bool,
}
