//! What the store keeps, as plain records (JSON in the file: readable with any redb
//! tool, and tolerant of added fields).

use serde::{Deserialize, Serialize};

/// One reservation, with what settlement needs to resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRecord {
    /// Unique id.
    pub id: String,
    /// The hive's id.
    pub hive_id: String,
    /// The hive's address.
    pub address: String,
    /// The GPU id, or "cpu".
    pub device_id: String,
    /// The model.
    pub model: String,
    /// Bytes reserved.
    pub bytes: u64,
    /// True once the hive's observed usage showed the model loaded.
    pub settled: bool,
    /// Created, ms since the Unix epoch.
    pub created_at_unix_ms: u64,
    /// An active reservation expires then, ms since the Unix epoch (absolute, so TTLs
    /// continue across restarts).
    pub expires_at_unix_ms: u64,
    /// The device's observed usage when the reservation was made.
    #[serde(default)]
    pub baseline_bytes: u64,
}

/// A hive added or removed at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HiveRecord {
    /// The normalised address.
    pub address: String,
    /// How it came: `api` or `announced`.
    pub origin: String,
    /// Removed by an operator: not managed again after a restart, even when configured.
    #[serde(default)]
    pub removed: bool,
}

/// The last policy the queen accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// Its file, or the built-in name.
    pub source: String,
    /// When it was accepted, ms since the Unix epoch.
    pub accepted_at_unix_ms: u64,
    /// The SHA-256 of its text, hex.
    pub sha256: String,
}

/// Everything the store held at start-up.
#[derive(Debug, Default)]
pub struct Restored {
    /// Reservations, by id order.
    pub reservations: Vec<ReservationRecord>,
    /// Hives added or removed at run time, by address order.
    pub hives: Vec<HiveRecord>,
    /// The last accepted policy.
    pub policy: Option<PolicyRecord>,
}

/// A record as stored.
pub(super) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Records are plain structs of strings and integers: serialising cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}
