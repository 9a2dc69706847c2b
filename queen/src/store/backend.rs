//! The one interface the scheduler and the API see, whichever store keeps the state:
//! the embedded redb file ([`super::StateStore`]) or etcd ([`super::EtcdStore`]).
//! Every method blocks until its write is durable; call it from a blocking thread.

use super::{EndedRecord, HiveRecord, PolicyRecord, ReservationRecord, StoreError};

/// Who may write the state now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leader {
    /// This queen (always so with the embedded store).
    Me,
    /// Another queen, at this advertised address.
    Other(String),
    /// Nobody known: the reason (e.g. etcd unreachable, an election under way).
    Unknown(String),
}

/// A durable home for the queen's hard state.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// What the store is, for messages (a file, or etcd endpoints).
    fn describe(&self) -> String;

    /// Keeps a new reservation. `device_total` is the device's capacity: a store shared
    /// by several queens re-checks there that the reservations it holds on the device,
    /// with this one, fit (so that even two leaders at once cannot over-promise).
    fn commit_placed(&self, record: &ReservationRecord, device_total: u64) -> Result<(), StoreError>;

    /// Updates reservations kept before (settlement).
    fn update_reservations(&self, records: &[ReservationRecord]) -> Result<(), StoreError>;

    /// Forgets reservations.
    fn forget_reservations(&self, ids: &[&str]) -> Result<(), StoreError>;

    /// Keeps keyed reservations that ended (written before the reservations are
    /// forgotten, so that a crash in between leaves both, never neither).
    fn keep_ended(&self, records: &[EndedRecord]) -> Result<(), StoreError>;

    /// Forgets ended reservations past their grace.
    fn forget_ended(&self, ids: &[&str]) -> Result<(), StoreError>;

    /// Keeps a hive added, announced or removed at run time.
    fn keep_hive(&self, record: &HiveRecord) -> Result<(), StoreError>;

    /// Keeps the fact of the last accepted policy.
    fn keep_policy(&self, record: &PolicyRecord) -> Result<(), StoreError>;

    /// Who may write now.
    fn leader(&self) -> Leader;

    /// True when this queen may write now.
    fn writable(&self) -> bool {
        self.leader() == Leader::Me
    }
}

impl Store for super::StateStore {
    fn describe(&self) -> String {
        self.path().display().to_string()
    }

    fn commit_placed(&self, record: &ReservationRecord, _device_total: u64) -> Result<(), StoreError> {
        // One queen per file: its book, checked under its lock, is the only one.
        self.put_reservations(std::slice::from_ref(record))
    }

    fn update_reservations(&self, records: &[ReservationRecord]) -> Result<(), StoreError> {
        self.put_reservations(records)
    }

    fn forget_reservations(&self, ids: &[&str]) -> Result<(), StoreError> {
        self.remove_reservations(ids.iter().copied())
    }

    fn keep_ended(&self, records: &[EndedRecord]) -> Result<(), StoreError> {
        self.put_ended(records)
    }

    fn forget_ended(&self, ids: &[&str]) -> Result<(), StoreError> {
        self.remove_ended(ids)
    }

    fn keep_hive(&self, record: &HiveRecord) -> Result<(), StoreError> {
        self.put_hive(record)
    }

    fn keep_policy(&self, record: &PolicyRecord) -> Result<(), StoreError> {
        self.put_policy(record)
    }

    fn leader(&self) -> Leader {
        Leader::Me
    }
}

/// A store for unit tests: it keeps nothing, reports `leader`, and fails the writes
/// named in `refused` (the [`Store`] method names) as a full disk would.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct TestStore {
    /// Who may write.
    pub leader: Leader,
    /// The methods that fail.
    pub refused: &'static [&'static str],
}

#[cfg(test)]
impl TestStore {
    /// Every write fails.
    pub const ALL: &'static [&'static str] = &[
        "commit_placed",
        "update_reservations",
        "forget_reservations",
        "keep_hive",
        "keep_policy",
        "keep_ended",
    ];

    fn write(&self, method: &str) -> Result<(), StoreError> {
        if self.refused.contains(&method) {
            return Err(StoreError::Io {
                path: "/state/queen.redb".into(),
                reason: "No space left on device".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
impl Store for TestStore {
    fn describe(&self) -> String {
        "a test store".into()
    }
    fn commit_placed(&self, _: &ReservationRecord, _: u64) -> Result<(), StoreError> {
        self.write("commit_placed")
    }
    fn update_reservations(&self, _: &[ReservationRecord]) -> Result<(), StoreError> {
        self.write("update_reservations")
    }
    fn forget_reservations(&self, _: &[&str]) -> Result<(), StoreError> {
        self.write("forget_reservations")
    }
    fn keep_ended(&self, _: &[EndedRecord]) -> Result<(), StoreError> {
        self.write("keep_ended")
    }
    fn forget_ended(&self, _: &[&str]) -> Result<(), StoreError> {
        self.write("forget_ended")
    }
    fn keep_hive(&self, _: &HiveRecord) -> Result<(), StoreError> {
        self.write("keep_hive")
    }
    fn keep_policy(&self, _: &PolicyRecord) -> Result<(), StoreError> {
        self.write("keep_policy")
    }
    fn leader(&self) -> Leader {
        self.leader.clone()
    }
}
