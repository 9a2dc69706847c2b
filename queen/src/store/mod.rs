//! The queen's hard state, kept durably: reservations (with their absolute expiry),
//! hives added at run time (`AddHive`, `Announce`) and removed, and the fact of the
//! last accepted policy. Telemetry is soft state that the hives' streams rebuild in
//! seconds; none of it is stored.
//!
//! The embedded store is one [redb](https://www.redb.org) file under the state
//! directory. Every write is one transaction committed with immediate durability
//! (fsync'd before the call returns), so a `Place` that answered OK survives `kill -9`.
//! Several queens can instead share their state in etcd ([`EtcdStore`], `--store
//! etcd://...`), where only the elected leader writes. The scheduler and the API see
//! either through one interface, [`Store`].
//! This layer imports nothing of the queen's but its error type.

mod backend;
mod etcd;
mod etcd_api;
mod group;
mod records;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

#[cfg(test)]
pub(crate) use backend::TestStore;
pub use backend::{Leader, Store};
pub use etcd::{Campaign, EtcdSettings, EtcdStore, Renewal, Role};
pub use etcd_api::EtcdTls;
pub use group::GroupCommit;
pub use records::{
    EndedRecord, GangDeviceRecord, HiveRecord, KeyedRecord, PolicyRecord, ReservationRecord, Restored,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

/// Reservations by id (JSON records).
const RESERVATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("reservations");
/// Hives added or removed at run time, by address (JSON records).
const HIVES: TableDefinition<&str, &[u8]> = TableDefinition::new("hives");
/// Keyed reservations that ended, by id (JSON records), kept for the grace.
const ENDED: TableDefinition<&str, &[u8]> = TableDefinition::new("ended");
/// Facts about the queen: the last accepted policy.
const FACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("facts");
/// The key of the last accepted policy in [`FACTS`].
const POLICY: &str = "policy";

/// The file inside the state directory.
pub const STATE_FILE: &str = "queen.redb";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or read, or it is not a sound redb file.
    #[error(
        "the state store {path} cannot be opened: {reason}. The queen will not start without its \
         reservations; restore a backup, or start with --reset-state to move the broken file aside \
         and start empty"
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another queen has the file open.
    #[error(
        "the state store {path} is in use by another queen process (one queen per state directory); \
         stop it, or give this queen its own --state-dir"
    )]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// A read or write failed.
    #[error("the state store {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A record could not be decoded.
    #[error(
        "the state store {path} holds an unreadable {table} record {key:?}: {reason}. The queen will \
         not start with it (a reservation's memory would go uncounted); restore a backup, or start \
         with --reset-state to move the file aside and start empty (see docs/security.md, Books)"
    )]
    Record {
        /// The file.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// etcd answered, and the operation is refused (it would merge into promises made
    /// elsewhere, or a record it holds is unreadable).
    #[error("{0}")]
    Refused(String),
    /// etcd cannot be reached, or failed a request.
    #[error(
        "the state store (etcd at {endpoints}) is unavailable: {reason}; nothing was changed \
         (there is no local fallback); try again when etcd is back"
    )]
    Etcd {
        /// The endpoints.
        endpoints: String,
        /// Why.
        reason: String,
    },
    /// Only the leader writes, and this queen does not lead.
    #[error("{}", not_leader(.0))]
    NotLeader(Leader),
    /// The device is full counting every reservation the shared store holds on it
    /// (another queen committed in between).
    #[error(
        "{device}: {reserved} bytes are reserved there in the shared store; {bytes} more do not fit \
         in {total}; try again"
    )]
    OverCommit {
        /// Address and device.
        device: String,
        /// Reserved there now.
        reserved: u64,
        /// Asked for.
        bytes: u64,
        /// The device's capacity.
        total: u64,
    },
}

fn not_leader(leader: &Leader) -> String {
    match leader {
        Leader::Me => "this queen leads".into(),
        Leader::Other(at) => format!("this queen is a follower; writes go to the leader at {at}"),
        Leader::Unknown(why) => format!("no queen leads now ({why}); try again shortly"),
    }
}

/// The embedded store.
pub struct StateStore {
    /// The open database; `None` after a write failed, until the next call reopens it
    /// (redb refuses every call after an I/O error until the file is opened again, so a
    /// disk that was full for a moment would otherwise stop the books for good).
    db: Mutex<Option<Database>>,
    /// Its file, for messages.
    path: PathBuf,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens (or creates) the store in `dir`. A file that is not a sound store is an
    /// error that names it; nothing is ever silently started afresh.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(STATE_FILE);
        let fail = |reason: String| StoreError::Open { path: path.clone(), reason };
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        // redb makes a new store of an empty file; a store that was truncated to nothing
        // held promises, so it is an error (a first start creates the file itself).
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            return Err(fail(
                "the file is empty (0 bytes): it was truncated, or never finished its first write".into(),
            ));
        }
        let db = open_database(&path)?;
        let store = Self { db: Mutex::new(Some(db)), path: path.clone() };
        // Create the tables: a file whose tables cannot be opened stops start-up too.
        store
            .write(|txn| {
                txn.open_table(RESERVATIONS)?;
                txn.open_table(HIVES)?;
                txn.open_table(FACTS)?;
                txn.open_table(ENDED)?;
                Ok(())
            })
            .map_err(|e| match e {
                StoreError::Io { reason, .. } => fail(reason),
                other => other,
            })?;
        Ok(store)
    }

    /// Opens the store in `dir`, and when it is broken (cannot be opened or read) moves
    /// it aside (to `queen.redb.broken-UNIXMS`) and opens a new, empty one. Returns the
    /// store and where a broken file went. A sound store is kept (so that a reset left
    /// on by mistake never drops promises), and one in use by another queen is an error.
    pub fn reset(dir: &Path) -> Result<(Self, Option<PathBuf>), StoreError> {
        let path = dir.join(STATE_FILE);
        let broken = match Self::open(dir).and_then(|s| s.load().map(|_| s)) {
            Ok(store) => return Ok((store, None)),
            Err(e @ StoreError::InUse { .. }) => return Err(e),
            Err(e) => e,
        };
        let to = dir.join(format!("{STATE_FILE}.broken-{}", rbee_shared::time::now_unix_ms()));
        std::fs::rename(&path, &to).map_err(|e| StoreError::Open {
            path: path.clone(),
            reason: format!("{broken}; and it cannot be moved aside to {}: {e}", to.display()),
        })?;
        Ok((Self::open(dir)?, Some(to)))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io { path: self.path.clone(), reason: e.to_string() }
    }

    /// The open database, reopened first when the last write failed.
    fn database(&self) -> Result<MutexGuard<'_, Option<Database>>, StoreError> {
        let mut db = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        if db.is_none() {
            *db = Some(open_database(&self.path)?);
            tracing::info!(path = %self.path.display(), "state store reopened after a failed write");
        }
        Ok(db)
    }

    /// Runs `f` in one write transaction and commits it durably. A failure (or a panic
    /// of redb on a corrupt page) is an error, and the next call reopens the file.
    pub(super) fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let mut guard = self.database()?;
        let Some(db) = guard.as_ref() else { return Err(self.io("the state store is not open")) };
        let written = unpanic(&self.path, || {
            let mut txn = db.begin_write().map_err(|e| self.io(e))?;
            txn.set_durability(Durability::Immediate).map_err(|e| self.io(e))?;
            f(&txn).map_err(|e| self.io(e))?;
            txn.commit().map_err(|e| self.io(e))
        });
        if written.is_err()
            && let Some(db) = guard.take()
        {
            close(&self.path, db);
        }
        written
    }

    /// Everything kept, read in one transaction (a panic of redb on a corrupt page is
    /// an error naming the file).
    pub fn load(&self) -> Result<Restored, StoreError> {
        let guard = self.database()?;
        let Some(db) = guard.as_ref() else { return Err(self.io("the state store is not open")) };
        unpanic(&self.path, || self.load_from(db))
    }

    fn load_from(&self, db: &Database) -> Result<Restored, StoreError> {
        let txn = db.begin_read().map_err(|e| self.io(e))?;
        let mut restored = Restored::default();
        let reservations = txn.open_table(RESERVATIONS).map_err(|e| self.io(e))?;
        for row in reservations.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let r: ReservationRecord = self.decode("reservations", k.value(), v.value())?;
            if r.id != k.value() {
                return Err(StoreError::Record {
                    path: self.path.clone(),
                    table: "reservations",
                    key: k.value().to_owned(),
                    reason: format!("the record's id {:?} is not its key", r.id),
                });
            }
            restored.reservations.push(r);
        }
        let hives = txn.open_table(HIVES).map_err(|e| self.io(e))?;
        for row in hives.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            restored.hives.push(self.decode("hives", k.value(), v.value())?);
        }
        let facts = txn.open_table(FACTS).map_err(|e| self.io(e))?;
        if let Some(v) = facts.get(POLICY).map_err(|e| self.io(e))? {
            restored.policy = Some(self.decode("facts", POLICY, v.value())?);
        }
        // A file written before request ids has no such table: nothing ended.
        match txn.open_table(ENDED) {
            Ok(ended) => {
                for row in ended.iter().map_err(|e| self.io(e))? {
                    let (k, v) = row.map_err(|e| self.io(e))?;
                    restored.ended.push(self.decode("ended", k.value(), v.value())?);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.io(e)),
        }
        Ok(restored)
    }

    fn decode<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        key: &str,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        records::decode(bytes).map_err(|reason| StoreError::Record {
            path: self.path.clone(),
            table,
            key: key.to_owned(),
            reason: reason.to_string(),
        })
    }

    /// Keeps (or updates) reservations, durably, in one transaction.
    pub fn put_reservations(&self, records: &[ReservationRecord]) -> Result<(), StoreError> {
        self.write(|txn| self.put_reservations_in(txn, records))
    }

    /// Forgets reservations, durably, in one transaction.
    pub fn remove_reservations<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Result<(), StoreError> {
        let ids: Vec<&str> = ids.into_iter().collect();
        if ids.is_empty() {
            return Ok(());
        }
        self.write(|txn| self.remove_reservations_in(txn, ids.iter().copied()))
    }

    /// Keeps ended keyed reservations, durably, in one transaction.
    pub fn put_ended(&self, records: &[EndedRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            let mut table = txn.open_table(ENDED)?;
            for r in records {
                table.insert(r.id.as_str(), records::encode(r).as_slice())?;
            }
            Ok(())
        })
    }

    /// Forgets ended keyed reservations, durably, in one transaction.
    pub fn remove_ended(&self, ids: &[&str]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            let mut table = txn.open_table(ENDED)?;
            for id in ids {
                table.remove(*id)?;
            }
            Ok(())
        })
    }

    /// Keeps a hive added or removed at run time.
    pub fn put_hive(&self, record: &HiveRecord) -> Result<(), StoreError> {
        self.write(|txn| self.put_hive_in(txn, record))
    }

    /// Keeps the fact of the last accepted policy.
    pub fn put_policy(&self, record: &PolicyRecord) -> Result<(), StoreError> {
        self.write(|txn| self.put_policy_in(txn, record))
    }

    /// [`Self::put_reservations`] inside a transaction.
    pub(super) fn put_reservations_in(
        &self,
        txn: &redb::WriteTransaction,
        records: &[ReservationRecord],
    ) -> Result<(), redb::Error> {
        let mut table = txn.open_table(RESERVATIONS)?;
        for r in records {
            table.insert(r.id.as_str(), records::encode(r).as_slice())?;
        }
        Ok(())
    }

    /// [`Self::remove_reservations`] inside a transaction.
    pub(super) fn remove_reservations_in<'a>(
        &self,
        txn: &redb::WriteTransaction,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), redb::Error> {
        let mut table = txn.open_table(RESERVATIONS)?;
        for id in ids {
            table.remove(id)?;
        }
        Ok(())
    }

    /// [`Self::put_hive`] inside a transaction.
    pub(super) fn put_hive_in(
        &self,
        txn: &redb::WriteTransaction,
        record: &HiveRecord,
    ) -> Result<(), redb::Error> {
        txn.open_table(HIVES)?.insert(record.address.as_str(), records::encode(record).as_slice())?;
        Ok(())
    }

    /// [`Self::put_policy`] inside a transaction.
    pub(super) fn put_policy_in(
        &self,
        txn: &redb::WriteTransaction,
        record: &PolicyRecord,
    ) -> Result<(), redb::Error> {
        txn.open_table(FACTS)?.insert(POLICY, records::encode(record).as_slice())?;
        Ok(())
    }
}

impl Drop for StateStore {
    fn drop(&mut self) {
        if let Some(db) = self.db.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            close(&self.path, db);
        }
    }
}

/// The environment variable that makes the `queen` binary check a state directory and
/// exit (see [`check_in_child`]).
pub const CHECK_STATE_ENV: &str = "RBEE_QUEEN_CHECK_STATE";

/// Opens and reads the store in `dir`, then closes it: what a child process started by
/// [`check_in_child`] runs.
pub fn check(dir: &Path) -> Result<(), StoreError> {
    StateStore::open(dir)?.load().map(drop)
}

/// Checks the store in `dir` in a child process (`exe` with [`CHECK_STATE_ENV`] set),
/// before this process opens it. Some damage makes redb panic again while it unwinds
/// (a panicking destructor), which aborts the whole process whatever catches panics:
/// such a crash of the child is an error naming the file here, not a crash of the
/// queen. An error the child reports is left to the open in this process, which says
/// it the same way. With `reset`, a file that crashes the child is moved aside, as
/// `--reset-state` does with any broken file.
pub fn check_in_child(dir: &Path, exe: &Path, reset: bool) -> Result<(), StoreError> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        return Ok(());
    }
    let status = std::process::Command::new(exe)
        .env(CHECK_STATE_ENV, dir)
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| StoreError::Open { path: path.clone(), reason: format!("cannot check it: {e}") })?;
    if status.code().is_some_and(|c| c == 0 || c == 1) {
        return Ok(());
    }
    let reason = format!("the file is corrupt (redb crashed reading it: {status})");
    if !reset {
        return Err(StoreError::Open { path, reason });
    }
    let to = dir.join(format!("{STATE_FILE}.broken-{}", rbee_shared::time::now_unix_ms()));
    std::fs::rename(&path, &to).map_err(|e| StoreError::Open {
        path: path.clone(),
        reason: format!("{reason}; and it cannot be moved aside to {}: {e}", to.display()),
    })?;
    tracing::warn!(path = %path.display(), moved_to = %to.display(), %reason,
        "--reset-state: the old state store was moved aside; starting with an empty one");
    Ok(())
}

/// Closes a database. redb flushes and trims the file when a database is dropped, and
/// on a corrupt file (or after a panic poisoned its state) that can panic too: here it
/// is logged, never a crash (a corrupt file is reported by the call that found it).
fn close(path: &Path, db: Database) {
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(move || drop(db))) {
        tracing::error!(path = %path.display(), panic = %panic_text(&*panic),
            "the state store could not be closed cleanly (the file is corrupt)");
    }
}

/// Opens (or creates) the redb file; a panic of redb on a corrupt file is an error.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    let opened = unpanic(path, || Ok(Database::create(path)))?;
    opened.map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.to_owned() },
        e => StoreError::Open { path: path.to_owned(), reason: e.to_string() },
    })
}

/// Runs `f`; redb checks its invariants with assertions, so a corrupt file can make it
/// panic, which must be an error naming the file, never a crash.
fn unpanic<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic_text(&*panic);
        Err(StoreError::Open { path: path.to_owned(), reason: format!("the file is corrupt ({what})") })
    })
}

/// A panic's message.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(id: &str) -> ReservationRecord {
        ReservationRecord {
            id: id.into(),
            hive_id: "h1".into(),
            address: "http://127.0.0.1:7835".into(),
            device_id: "GPU-0".into(),
            model: "m".into(),
            bytes: 60 << 30,
            settled: false,
            created_at_unix_ms: 1,
            expires_at_unix_ms: 2,
            baseline_bytes: 3,
            keyed: None,
            gang: Vec::new(),
        }
    }

    #[test]
    fn what_is_kept_comes_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path()).unwrap();
            store.put_reservations(&[reservation("a"), reservation("b"), reservation("c")]).unwrap();
            store.remove_reservations(["b"]).unwrap();
            store
                .put_hive(&HiveRecord {
                    address: "http://10.0.0.1:7835".into(),
                    origin: "api".into(),
                    removed: false,
                })
                .unwrap();
            store
                .put_policy(&PolicyRecord {
                    source: "p.rhai".into(),
                    accepted_at_unix_ms: 9,
                    sha256: "x".into(),
                })
                .unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        let restored = store.load().unwrap();
        let ids: Vec<&str> = restored.reservations.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(restored.reservations[0], reservation("a"));
        assert_eq!(restored.hives.len(), 1);
        assert_eq!(restored.policy.unwrap().source, "p.rhai");
    }

    #[test]
    fn a_garbage_or_truncated_file_is_an_error_that_names_it_and_reset_moves_it_aside() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path()).unwrap();
            store.put_reservations(&[reservation("a")]).unwrap();
        }
        let path = dir.path().join(STATE_FILE);
        let full = std::fs::read(&path).unwrap();
        for broken in [b"this is not a database".repeat(100), full[..full.len() / 3].to_vec()] {
            std::fs::write(&path, &broken).unwrap();
            let err = StateStore::open(dir.path()).and_then(|s| s.load()).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains("--reset-state"), "{err}");
        }
        let (store, aside) = StateStore::reset(dir.path()).unwrap();
        assert!(aside.unwrap().exists(), "the broken file is kept for inspection");
        assert!(store.load().unwrap().reservations.is_empty());
        store.put_reservations(&[reservation("b")]).unwrap();
        drop(store);
        let (store, aside) = StateStore::reset(dir.path()).unwrap();
        assert_eq!(aside, None, "a sound store is never moved aside");
        assert_eq!(store.load().unwrap().reservations.len(), 1);
    }

    /// A store truncated to nothing held promises: it is an error, not a new store.
    #[test]
    fn an_empty_file_is_an_error_not_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        drop(StateStore::open(dir.path()).unwrap());
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, b"").unwrap();
        let err = StateStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("empty") && err.contains(&path.display().to_string()), "{err}");
        let (store, aside) = StateStore::reset(dir.path()).unwrap();
        assert!(aside.is_some(), "--reset-state moves the empty file aside");
        store.put_reservations(&[reservation("a")]).unwrap();
    }

    /// Corrupt pages make redb assert (panic) in some places: opening, reading and
    /// resetting such a file is an error or a fresh store, never a crash.
    #[test]
    fn corrupt_pages_are_errors_never_crashes_and_reset_recovers() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path()).unwrap();
            let many: Vec<ReservationRecord> = (0..200).map(|i| reservation(&format!("r{i}"))).collect();
            store.put_reservations(&many).unwrap();
        }
        let path = dir.path().join(STATE_FILE);
        let sound = std::fs::read(&path).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut refused, mut read) = (0, 0);
        for at in (4096..sound.len().min(64 << 10)).step_by(700) {
            let mut broken = sound.clone();
            let len = if at % 3 == 0 { 512 } else { 16 };
            for b in broken.iter_mut().skip(at).take(len) {
                *b = next() as u8;
            }
            std::fs::write(&path, &broken).unwrap();
            match StateStore::open(dir.path()).and_then(|s| s.load()) {
                Ok(_) => read += 1,
                Err(e) => {
                    refused += 1;
                    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
                }
            }
            let (store, _) = StateStore::reset(dir.path()).expect("--reset-state recovers any broken file");
            drop(store);
        }
        eprintln!("{refused} corruptions refused, {read} read (the damage missed live pages)");
        assert!(refused > 0, "some corruption must be noticed");
    }

    /// A disk that was full for a moment: the write that failed says why, and once
    /// there is room again the store writes again (redb refuses every call after an
    /// I/O error until the file is reopened). Needs a small tmpfs: run as root.
    #[test]
    fn after_a_full_disk_the_store_writes_again() {
        let dir = tempfile::tempdir().unwrap();
        let mount = |args: &[&str]| std::process::Command::new(args[0]).args(&args[1..]).status();
        let at = dir.path().display().to_string();
        if !mount(&["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", &at]).is_ok_and(|s| s.success()) {
            eprintln!(
                "SKIPPED: cannot mount a small tmpfs here (needs root): the full-disk case is not tested"
            );
            return;
        }
        let result = std::panic::catch_unwind(|| {
            let store = StateStore::open(&dir.path().join("st")).unwrap();
            store.put_reservations(&[reservation("kept")]).unwrap();
            let fill = dir.path().join("fill");
            let _ = std::fs::write(&fill, vec![0u8; 4 << 20]);
            let mut failed = None;
            for i in 0..64 {
                let many: Vec<ReservationRecord> =
                    (0..64).map(|j| reservation(&format!("r{i}-{j}-{}", "x".repeat(200)))).collect();
                if let Err(e) = store.put_reservations(&many) {
                    failed = Some(e.to_string());
                    break;
                }
            }
            let failed = failed.expect("a write fails on a full disk");
            assert!(failed.to_lowercase().contains("space"), "the error says why: {failed}");
            std::fs::remove_file(&fill).unwrap();
            store.put_reservations(&[reservation("after")]).expect("writes resume once there is room");
            let ids: Vec<String> = store.load().unwrap().reservations.into_iter().map(|r| r.id).collect();
            assert!(ids.contains(&"kept".to_owned()) && ids.contains(&"after".to_owned()), "{ids:?}");
        });
        let _ = mount(&["umount", &at]);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
