//! New reservations reach etcd in batches: concurrent `Place` calls on the leader share
//! one transaction (one etcd round trip and one fsync of etcd's log), and never race
//! each other for a device's total.
//!
//! Flat combining, on the blocking threads `Place` runs on: a caller queues its
//! reservation, then takes the combiner lock; whoever holds it commits everything
//! queued (up to [`MAX_BATCH`]) and answers each caller, and a caller whose answer came
//! while it waited returns at once. The lock is only ever taken on blocking threads,
//! never by an async task, so holding it while the batch's requests run cannot stall
//! the runtime.
//!
//! One batch: read the totals of every device it touches, give each reservation room
//! in order (one that no longer fits is refused alone, `OverCommit`), then one
//! transaction guarded by the leader's lease and by each device total's revision. When
//! another writer changed a device in between, the batch is read and tried again.

use std::collections::BTreeMap;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use rbee_proto::etcd::response_op::Response;

use super::EtcdStore;
use crate::store::etcd_api as api;
use crate::store::records::encode;
use crate::store::{ReservationRecord, StoreError};

/// Most reservations in one transaction (etcd takes at most 128 operations in one; a
/// reservation needs at most two).
pub const MAX_BATCH: usize = 60;
/// Most operations one batch may need: a reservation needs one, plus one per device
/// (a gang's GPUs each), so a batch of gangs holds fewer reservations.
const MAX_OPS: usize = 120;
/// How often a batch whose devices changed under it is read and tried again.
const TRIES: usize = 16;

/// A reservation waiting to be committed.
pub(in crate::store) struct Pending {
    /// The record.
    record: ReservationRecord,
    /// Its device's capacity.
    total: u64,
    /// Where the answer goes.
    reply: SyncSender<Result<(), StoreError>>,
}

/// The queue and the combiner lock.
#[derive(Default)]
pub(in crate::store) struct Combiner {
    /// Reservations queued, not yet taken by a combiner.
    queue: Mutex<Vec<Pending>>,
    /// Held by the caller committing a batch.
    lock: Mutex<()>,
}

/// A device's total key, its reserved bytes and the revision they were read at.
type Totals = BTreeMap<String, (u64, i64)>;

impl EtcdStore {
    /// Commits `record` with whatever else is queued; returns once it is in etcd (or
    /// refused).
    pub(in crate::store) fn commit_combined(
        &self,
        record: &ReservationRecord,
        total: u64,
    ) -> Result<(), StoreError> {
        let (reply, answer) = sync_channel(1);
        let combiner = self.combiner();
        lock(&combiner.queue).push(Pending { record: record.clone(), total, reply });
        loop {
            if let Ok(result) = answer.try_recv() {
                return result;
            }
            let _held = lock(&combiner.lock);
            if let Ok(result) = answer.try_recv() {
                return result;
            }
            // Commit what is queued (this caller's reservation among it), batch by batch.
            loop {
                let batch: Vec<Pending> = {
                    let mut queue = lock(&combiner.queue);
                    let (mut n, mut ops) = (0, 0);
                    for p in queue.iter().take(MAX_BATCH) {
                        let need = 1 + p.record.devices().len();
                        if n > 0 && ops + need > MAX_OPS {
                            break;
                        }
                        n += 1;
                        ops += need;
                    }
                    queue.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                let records: Vec<(&ReservationRecord, u64)> =
                    batch.iter().map(|p| (&p.record, p.total)).collect();
                // Bounded: a batch that etcd does not answer in time fails as a whole (its
                // reservations may or may not be in etcd: an unanswered one only ever
                // counts more).
                let results = match self.block(async { Ok(self.commit_batch(&records).await) }) {
                    Ok(results) => results,
                    Err(e) => records.iter().map(|_| Err(e.duplicate())).collect(),
                };
                for (pending, result) in batch.into_iter().zip(results) {
                    let _ = pending.reply.send(result);
                }
            }
        }
    }

    /// Commits a batch; one answer per reservation, in order.
    async fn commit_batch(&self, batch: &[(&ReservationRecord, u64)]) -> Vec<Result<(), StoreError>> {
        let fail_all = |e: StoreError| batch.iter().map(|_| Err(e.duplicate())).collect();
        let lease = match self.my_lease() {
            Ok(lease) => lease,
            Err(e) => return fail_all(e),
        };
        for _ in 0..TRIES {
            // Per reservation, its devices' keys (a gang's GPUs each).
            let per: Vec<Vec<String>> = batch
                .iter()
                .map(|(r, _)| r.devices().into_iter().map(|d| self.device_key(&r.address, d)).collect())
                .collect();
            let keys: Vec<String> = per.iter().flatten().cloned().collect();
            let mut totals = match self.totals(&keys).await {
                Ok(t) => t,
                Err(e) => return fail_all(e),
            };
            let read = totals.clone();
            let mut answers = Vec::with_capacity(batch.len());
            let mut ops = Vec::new();
            for ((r, capacity), keys) in batch.iter().zip(&per) {
                // All or nothing: a gang is refused when any of its GPUs is full.
                let full = r.devices().into_iter().zip(keys).find_map(|(device, key)| {
                    let (reserved, _) = totals.get(key).expect("every key was read");
                    (reserved.saturating_add(r.bytes) > *capacity).then_some((device, *reserved))
                });
                if let Some((device, reserved)) = full {
                    answers.push(Err(StoreError::OverCommit {
                        device: format!("{}/{}", r.address, device),
                        reserved,
                        bytes: r.bytes,
                        total: *capacity,
                    }));
                    continue;
                }
                for key in keys {
                    totals.get_mut(key).expect("every key was read").0 += r.bytes;
                }
                ops.push(api::put(self.reservation_key(&r.id), encode(*r), 0));
                answers.push(Ok(()));
            }
            if ops.is_empty() {
                return answers;
            }
            let mut when = Vec::new();
            for (key, (reserved, revision)) in &totals {
                if read.get(key).map(|(r, _)| r) != Some(reserved) {
                    when.push(api::mod_revision_is(key.as_str(), *revision));
                    ops.push(api::put(key.as_str(), reserved.to_string(), 0));
                }
            }
            match self.guarded(lease, when, ops).await {
                Ok(true) => return answers,
                Ok(false) => continue,
                Err(e) => return fail_all(e),
            }
        }
        fail_all(self.store_error("the devices' reserved totals kept changing under concurrent commits"))
    }

    /// The reserved totals of `keys` (0 at revision 0 for a device with none), read in
    /// one transaction.
    async fn totals(&self, keys: &[String]) -> Result<Totals, StoreError> {
        let mut unique: Vec<&String> = keys.iter().collect();
        unique.sort();
        unique.dedup();
        let gets = unique.iter().map(|k| api::get(k.as_str())).collect();
        let done = self.client().txn(Vec::new(), gets, Vec::new()).await.map_err(|e| self.store_error(e))?;
        let mut totals: Totals = unique.iter().map(|k| ((*k).clone(), (0, 0))).collect();
        for op in done.responses {
            if let Some(Response::ResponseRange(got)) = op.response {
                for kv in got.kvs {
                    let key = String::from_utf8_lossy(&kv.key).into_owned();
                    totals.insert(key, (api::value_u64(&kv), kv.mod_revision));
                }
            }
        }
        Ok(totals)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StoreError {
    /// The same error again (one per caller of a failed batch).
    fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Etcd { endpoints, reason } => {
                StoreError::Etcd { endpoints: endpoints.clone(), reason: reason.clone() }
            }
            StoreError::NotLeader(l) => StoreError::NotLeader(l.clone()),
            other => StoreError::Etcd { endpoints: String::new(), reason: other.to_string() },
        }
    }
}

/// Shared by the store and its callers.
pub(in crate::store) type SharedCombiner = Arc<Combiner>;
