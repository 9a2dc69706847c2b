//! Group commit for the embedded store: concurrent writers share one redb write
//! transaction and one fsync.
//!
//! Every write becomes a job on a bounded queue, served in order by one committer
//! thread. The committer takes the first job and every job queued behind it (up to
//! [`MAX_BATCH`]), applies them all in one transaction and commits it with immediate
//! durability; then it answers each writer. A writer still returns only once its own
//! write is durable, but sixteen concurrent `Place` calls now cost one fsync, not
//! sixteen in series. When a batch fails, its jobs are committed again one by one, so
//! that one bad write fails only its own caller.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::backend::{Leader, Store};
use super::{EndedRecord, HiveRecord, PolicyRecord, ReservationRecord, StateStore, StoreError};

/// Most jobs in one transaction.
pub const MAX_BATCH: usize = 256;
/// Jobs that may wait for the committer (writers block beyond it: back-pressure).
pub const QUEUE: usize = 1024;

/// One write and where its answer goes.
struct Job {
    /// The write.
    write: Write,
    /// The writer, waiting.
    reply: SyncSender<Result<(), StoreError>>,
}

/// A write to the store.
enum Write {
    /// Keep or update reservations.
    Reservations(Vec<ReservationRecord>),
    /// Forget reservations.
    Forget(Vec<String>),
    /// Keep a run-time hive.
    Hive(HiveRecord),
    /// Keep the policy fact.
    Policy(PolicyRecord),
}

/// The embedded store behind a committer thread.
pub struct GroupCommit {
    /// The store (reads and the committer's writes).
    store: Arc<StateStore>,
    /// The committer's queue (taken on drop, which ends the committer).
    jobs: Option<SyncSender<Job>>,
    /// The committer, joined on drop so that the file is closed when this is gone.
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("store", &self.store).finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts the committer thread over `store`; it ends when this is dropped.
    pub fn new(store: Arc<StateStore>) -> Result<Self, StoreError> {
        let (jobs, queue) = sync_channel(QUEUE);
        let committer = store.clone();
        let committer = std::thread::Builder::new()
            .name("rbee-store-commit".into())
            .spawn(move || commit_loop(&committer, &queue))
            .map_err(|e| StoreError::Io {
                path: store.path().to_owned(),
                reason: format!("committer thread: {e}"),
            })?;
        Ok(Self { store, jobs: Some(jobs), committer: Some(committer) })
    }

    /// The store underneath.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Queues `write` and waits until it is durable.
    fn submit(&self, write: Write) -> Result<(), StoreError> {
        let (reply, answer) = sync_channel(1);
        let gone =
            || StoreError::Io { path: self.store.path().to_owned(), reason: "the committer stopped".into() };
        let jobs = self.jobs.as_ref().ok_or_else(gone)?;
        jobs.send(Job { write, reply }).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

/// Applies one write inside a transaction.
fn apply(store: &StateStore, txn: &redb::WriteTransaction, write: &Write) -> Result<(), redb::Error> {
    match write {
        Write::Reservations(records) => store.put_reservations_in(txn, records),
        Write::Forget(ids) => store.remove_reservations_in(txn, ids.iter().map(String::as_str)),
        Write::Hive(record) => store.put_hive_in(txn, record),
        Write::Policy(record) => store.put_policy_in(txn, record),
    }
}

fn commit_loop(store: &StateStore, queue: &Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let together = store.write(|txn| batch.iter().try_for_each(|job| apply(store, txn, &job.write)));
        match together {
            Ok(()) => {
                for job in batch {
                    let _ = job.reply.send(Ok(()));
                }
            }
            // One write spoiled the batch (or the disk failed): each on its own, so that
            // every writer gets its own answer.
            Err(_) => {
                for job in batch {
                    let alone = store.write(|txn| apply(store, txn, &job.write));
                    let _ = job.reply.send(alone);
                }
            }
        }
    }
}

impl Store for GroupCommit {
    fn describe(&self) -> String {
        self.store.describe()
    }

    fn commit_placed(&self, record: &ReservationRecord, _device_total: u64) -> Result<(), StoreError> {
        self.submit(Write::Reservations(vec![record.clone()]))
    }

    fn update_reservations(&self, records: &[ReservationRecord]) -> Result<(), StoreError> {
        self.submit(Write::Reservations(records.to_vec()))
    }

    fn forget_reservations(&self, ids: &[&str]) -> Result<(), StoreError> {
        self.submit(Write::Forget(ids.iter().map(|s| (*s).to_owned()).collect()))
    }

    fn keep_ended(&self, records: &[EndedRecord]) -> Result<(), StoreError> {
        // Rare (a keyed reservation ended): its own transaction, done before it answers,
        // so it is durable before the reservation is forgotten.
        self.store.put_ended(records)
    }

    fn forget_ended(&self, ids: &[&str]) -> Result<(), StoreError> {
        self.store.remove_ended(ids)
    }

    fn keep_hive(&self, record: &HiveRecord) -> Result<(), StoreError> {
        self.submit(Write::Hive(record.clone()))
    }

    fn keep_policy(&self, record: &PolicyRecord) -> Result<(), StoreError> {
        self.submit(Write::Policy(record.clone()))
    }

    fn leader(&self) -> Leader {
        Leader::Me
    }
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
            bytes: 1,
            settled: false,
            created_at_unix_ms: 1,
            expires_at_unix_ms: 2,
            baseline_bytes: 0,
            keyed: None,
            gang: Vec::new(),
        }
    }

    #[test]
    fn concurrent_writers_each_return_once_durable_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Arc::new(GroupCommit::new(Arc::new(StateStore::open(dir.path()).unwrap())).unwrap());
            std::thread::scope(|s| {
                for t in 0..16 {
                    let store = store.clone();
                    s.spawn(move || {
                        for i in 0..20 {
                            let id = format!("t{t}-{i}");
                            store.commit_placed(&reservation(&id), 0).unwrap();
                            if i % 2 == 0 {
                                store.forget_reservations(&[id.as_str()]).unwrap();
                            }
                        }
                    });
                }
            });
        }
        // Reopened after the committer stopped: what each writer was told is on disk.
        let kept = StateStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(kept.reservations.len(), 16 * 10);
        assert!(
            kept.reservations
                .iter()
                .all(|r| r.id.rsplit('-').next().unwrap().parse::<u32>().unwrap() % 2 == 1)
        );
    }
}
