//! What the store keeps, as plain records (JSON in the file: readable with any redb
//! tool, and tolerant of added fields), each with a checksum of its fields, so that a
//! damaged record is refused rather than read as another one.

use serde::de::DeserializeOwned;
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
    /// The request id it was placed with, what for, and its worker tag (absent when
    /// placed without one; records written before request ids have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyed: Option<KeyedRecord>,
    /// A gang's GPUs (`device_id` first), each holding `bytes`, with where it starts on
    /// each; absent for one device (records written before gangs load as one device).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gang: Vec<GangDeviceRecord>,
}

/// A keyed reservation's idempotency key, request and worker tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedRecord {
    /// The client's request id.
    pub request_id: String,
    /// The worker tag (secret: the store is as secret as the write token, see
    /// docs/security.md).
    pub token: String,
    /// VRAM asked for, bytes.
    pub vram_bytes: u64,
    /// RAM asked for, bytes.
    #[serde(default)]
    pub ram_bytes: Option<u64>,
    /// The device kind (`any`, `cuda`, `cpu`).
    pub kind: String,
    /// The labels that had to match.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// GPUs of the gang (records written before gangs: 1).
    #[serde(default = "one_gpu")]
    pub gpus: u32,
    /// How a gang's GPUs had to be connected (records written before gangs: `any`).
    #[serde(default = "any_topology")]
    pub topology: String,
}

fn one_gpu() -> u32 {
    1
}

fn any_topology() -> String {
    "any".to_owned()
}

/// A keyed reservation that ended: its request id stays taken for the grace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedRecord {
    /// The reservation's id.
    pub id: String,
    /// The request id it was placed with.
    pub request_id: String,
    /// `released`, `expired` or `dropped`.
    pub how: String,
    /// When it ended, ms since the Unix epoch.
    pub ended_at_unix_ms: u64,
}

/// One GPU of a gang reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GangDeviceRecord {
    /// The GPU id.
    pub device_id: String,
    /// Where the reservation starts on it (see `baseline_bytes`).
    pub baseline_bytes: u64,
}

impl ReservationRecord {
    /// Every device the reservation holds `bytes` on (`device_id` first).
    pub fn devices(&self) -> Vec<&str> {
        if self.gang.is_empty() {
            vec![self.device_id.as_str()]
        } else {
            self.gang.iter().map(|g| g.device_id.as_str()).collect()
        }
    }
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
    /// Keyed reservations that ended within the grace, by id order.
    pub ended: Vec<EndedRecord>,
}

/// The field that carries a record's checksum.
const SUM: &str = "sum";

/// The checksum of a record's JSON object without its `sum` field: the first 16 bytes
/// of its SHA-256, hex. It covers every field, those this queen knows and any a newer
/// one added, so one flipped bit anywhere in the record is noticed.
fn checksum(fields: &serde_json::Map<String, serde_json::Value>) -> String {
    let body = serde_json::to_vec(fields).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &body);
    digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A record as stored: its JSON object with a `sum` field (see [`checksum`]).
pub(super) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Records are plain structs of strings and integers: serialising cannot fail.
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::to_value(record) else {
        return serde_json::to_vec(record).unwrap_or_default();
    };
    let sum = checksum(&fields);
    fields.insert(SUM.into(), serde_json::Value::String(sum));
    serde_json::to_vec(&fields).unwrap_or_default()
}

/// A stored record, checked: its checksum must match; a record written before records
/// carried one is accepted only when every field it holds is one this queen knows (a
/// flipped bit in the name `sum` would otherwise pass for such a record). Returns why not.
pub(super) fn decode<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, DamagedRecord> {
    let value: serde_json::Value = serde_json::from_slice(bytes)?;
    let serde_json::Value::Object(mut fields) = value else { return Err(DamagedRecord::NotAnObject) };
    let sum = fields.remove(SUM);
    let checked = match &sum {
        Some(serde_json::Value::String(sum)) if *sum == checksum(&fields) => true,
        Some(_) => return Err(DamagedRecord::Checksum),
        None => false,
    };
    let keys: Vec<String> = fields.keys().cloned().collect();
    let record: T = serde_json::from_value(serde_json::Value::Object(fields))?;
    if !checked
        && let Ok(serde_json::Value::Object(known)) = serde_json::to_value(&record)
        && let Some(unknown) = keys.iter().find(|k| !known.contains_key(*k))
    {
        return Err(DamagedRecord::UnknownField(unknown.clone()));
    }
    Ok(record)
}

/// Why a stored record is not read.
#[derive(Debug, thiserror::Error)]
pub enum DamagedRecord {
    /// Not JSON, or not the record's shape.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not an object.
    #[error("it is not a JSON object")]
    NotAnObject,
    /// The checksum does not match its fields.
    #[error("its checksum does not match: the record was damaged")]
    Checksum,
    /// A record without a checksum holds a field the queen does not know.
    #[error("it has no checksum and an unknown field {0:?}: the record was damaged")]
    UnknownField(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ReservationRecord {
        ReservationRecord {
            id: "r".into(),
            hive_id: "h".into(),
            address: "http://127.0.0.1:7835".into(),
            device_id: "GPU-0".into(),
            model: "m".into(),
            bytes: 64 << 30,
            settled: false,
            created_at_unix_ms: 1,
            expires_at_unix_ms: 2,
            baseline_bytes: 3,
            keyed: None,
            gang: Vec::new(),
        }
    }

    /// Every single flipped bit of a stored record is noticed (or leaves a record equal
    /// to the one written, which cannot happen for a bit inside the JSON).
    #[test]
    fn every_flipped_bit_of_a_record_is_noticed() {
        let stored = encode(&record());
        assert_eq!(decode::<ReservationRecord>(&stored).unwrap(), record());
        for at in 0..stored.len() {
            for bit in 0..8 {
                let mut flipped = stored.clone();
                flipped[at] ^= 1 << bit;
                if let Ok(r) = decode::<ReservationRecord>(&flipped) {
                    panic!("byte {at} bit {bit}: {:?} read as {r:?}", String::from_utf8_lossy(&flipped));
                }
            }
        }
    }

    /// Records written before checksums are read, unless they hold a field this queen
    /// does not know.
    #[test]
    fn records_without_a_checksum_are_read_when_every_field_is_known() {
        let old = serde_json::to_vec(&record()).unwrap();
        assert_eq!(decode::<ReservationRecord>(&old).unwrap(), record());
        let renamed = String::from_utf8(old).unwrap().replace("\"baseline_bytes\"", "\"baseline_bytez\"");
        let err = decode::<ReservationRecord>(renamed.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("baseline_bytez"), "{err}");
    }
}
