//! The placement index: which hives can take a request of `k` GPUs of `bytes` each,
//! without walking every GPU of the fleet.
//!
//! For every hive that could take GPU work at all (online, healthy, with capabilities
//! and a sample) the index keeps, per `k`, the `k`-th largest *unreserved* free VRAM
//! (usable less used, from the newest sample) among its healthy GPUs with a reading. A
//! hive has `k` GPUs with `bytes` free each exactly when that key is `>= bytes`, so an
//! ordered set per (label set, `k`) of `(key, hive)` answers "which hives" with one
//! range. The hives it names are then walked with the full eligibility rules (the
//! reservations, the request's RAM, the device health), so the natives see exactly the
//! devices a full scan sees: the index only skips hives that cannot fit.
//!
//! Reservations only lower what is free, so they are applied per candidate while it is
//! walked (under the book's read lock), never keyed: the index changes only when a
//! hive's published view changes.
//!
//! The index mirrors one list of hive snapshots (a view's `hives`), and keeps it:
//! [`SharedIndex::refresh`] asks the fleet which hives published since the last call
//! ([`HiveSource::changes`]), swaps their new snapshots into the list and re-keys only
//! them, so a Place costs no walk of every hive (at 10,000 hives at 1 Hz and 20 Places
//! a second: about 500 re-keyed hives per call instead of 10,000 visited). A hive that
//! joined or left makes the fleet answer every hive, and the list is indexed again
//! (positions moved). A list from elsewhere (tests, `queen policy check`) is synced by
//! [`PlaceIndex::sync`]: each position's `Arc` compared with the one indexed. A view
//! made a few refreshes ago (a concurrent Place) is answered from the newest keys (its
//! positions still hold): the index may then skip a hive that fitted in that older
//! view and no longer does, never one that fits now.
//!
//! Above [`SchedulerSettings::place_exact_up_to`](super::SchedulerSettings) hives, a
//! ranking native may stop early: it walks the hives with the most free memory first
//! and ranks the devices of at most [`scored_hives`] of them (the spirit of
//! Kubernetes' `percentageOfNodesToScore`), so it may answer less than the global best.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use rbee_shared::lock::MutexExt;

use super::HiveSource;
use crate::fleet::{Changes, ConnState, Health, HiveSnapshot, Seen};

/// How many lists made by [`SharedIndex::refresh`] since the last full one are still
/// answered (views that concurrent Places hold); an older one is synced again.
const RECENT_LISTS: usize = 32;

/// A list of hive snapshots, one per position.
type Hives = Arc<Vec<Arc<HiveSnapshot>>>;

/// Fewest hives a bounded ranking scores (when that many can fit).
pub const MIN_SCORED_HIVES: usize = 100;
/// The share of the fleet, in percent, a bounded ranking scores at least.
pub const SCORED_PERCENT: usize = 5;
/// Hives up to which ranking is exact by default.
pub const DEFAULT_EXACT_UP_TO: usize = 1000;

/// How many hives a bounded ranking over a fleet of `hives` scores at most:
/// `max(100, 5% of the fleet)`.
pub fn scored_hives(hives: usize) -> usize {
    scored(MIN_SCORED_HIVES, hives)
}

fn scored(min: usize, hives: usize) -> usize {
    min.max(hives * SCORED_PERCENT / 100)
}

/// The hives of one label set.
#[derive(Debug, Default)]
struct Bucket {
    /// The hives' labels.
    labels: BTreeMap<String, String>,
    /// Per `k - 1`: `(k-th largest unreserved free VRAM, position)`.
    by_k: Vec<BTreeSet<(u64, u32)>>,
}

/// What the index holds of one hive (one position of the list).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Row {
    /// Its bucket.
    bucket: usize,
    /// Unreserved free VRAM of its eligible GPUs, largest first (empty: the hive cannot
    /// take GPU work now).
    keys: Vec<u64>,
}

/// The index (see the module doc).
#[derive(Debug, Default)]
pub struct PlaceIndex {
    /// The list it mirrors (held, so that a pointer compare cannot be fooled by a freed
    /// and reused address: at most one older view per hive, until the next call).
    synced: Option<Arc<Vec<Arc<HiveSnapshot>>>>,
    /// One row per position of `synced`.
    rows: Vec<Row>,
    /// Buckets by label set.
    buckets: Vec<Bucket>,
    /// Which bucket holds a label set.
    bucket_of: HashMap<BTreeMap<String, String>, usize>,
    /// Rank exactly while the fleet has at most this many hives.
    exact_up_to: usize,
    /// Elements a walk of every hive visits: each hive, each GPU of its capabilities.
    elements: usize,
    /// Fewest hives a bounded ranking scores ([`MIN_SCORED_HIVES`]; tests lower it).
    min_scored: usize,
    /// What the index has read of its source's change feed.
    seen: Seen,
    /// Lists made by `refresh` since the last full list (same positions), newest last:
    /// weak, so that a list no view holds any more is updated in place.
    recent: VecDeque<Weak<Vec<Arc<HiveSnapshot>>>>,
}

/// How a native that ranks may narrow its walk on a large fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Every hive that fits (the exact answer).
    Exact,
    /// At most [`scored_hives`], those with the most free memory first.
    MostFree,
    /// At most [`scored_hives`], those with the least free memory (that still fits) first.
    LeastFree,
}

/// The index, shared by the views of one scheduler.
#[derive(Debug)]
pub struct SharedIndex(Mutex<PlaceIndex>);

impl SharedIndex {
    /// An empty index; ranking is exact up to `exact_up_to` hives.
    pub fn new(exact_up_to: usize) -> Self {
        Self::with_min_scored(exact_up_to, MIN_SCORED_HIVES)
    }

    /// [`SharedIndex::new`] whose bounded rankings score at least `min_scored` hives.
    pub fn with_min_scored(exact_up_to: usize, min_scored: usize) -> Self {
        Self(Mutex::new(PlaceIndex { exact_up_to, min_scored, ..PlaceIndex::default() }))
    }

    /// The fleet now: the list the index holds, with the hives that changed since the
    /// last call swapped in and re-keyed (see the module doc). Cheap: no walk of every
    /// hive unless one joined or left.
    pub fn refresh(&self, source: &dyn HiveSource) -> Hives {
        let mut index = self.0.lock_unpoisoned();
        index.refresh(source)
    }

    /// Elements a walk of every hive of `hives` visits (each hive, each GPU), what the
    /// fleet natives charge a policy; kept with the index instead of counted per call.
    pub fn elements(&self, hives: &Arc<Vec<Arc<HiveSnapshot>>>) -> usize {
        let mut index = self.0.lock_unpoisoned();
        index.sync(hives);
        index.elements
    }

    /// The hives of `hives` (by position) with `k` GPUs of `bytes` unreserved free VRAM
    /// each and the request's labels. With a `bound` other than exact and a fleet larger
    /// than the exact limit: at most [`scored_hives`] of them in the bound's order, and
    /// `true`; else all of them in list order, and `false`.
    pub fn candidates(
        &self,
        hives: &Arc<Vec<Arc<HiveSnapshot>>>,
        labels: &BTreeMap<String, String>,
        k: usize,
        bytes: u64,
        bound: Bound,
    ) -> (Vec<u32>, bool) {
        let mut index = self.0.lock_unpoisoned();
        index.sync(hives);
        let bound = if hives.len() > index.exact_up_to { bound } else { Bound::Exact };
        let found = index.query(labels, k, bytes, bound, scored(index.min_scored, hives.len()));
        (found, bound != Bound::Exact)
    }
}

/// The GPUs of a hive's capabilities.
fn gpus_of(h: &HiveSnapshot) -> usize {
    h.caps.as_ref().map_or(0, |c| c.caps.gpus.len())
}

/// The index key of a hive: its eligible GPUs' unreserved free VRAM, largest first,
/// and its labels.
fn keys_of(h: &HiveSnapshot) -> Vec<u64> {
    if h.state != ConnState::Online || h.caps.is_none() {
        return Vec::new();
    }
    let p = h.placement();
    if p.health != Health::Healthy || p.ram.is_none() {
        return Vec::new();
    }
    let mut keys: Vec<u64> = p
        .gpus
        .iter()
        .filter(|g| g.health == Health::Healthy)
        .filter_map(|g| g.vram().map(|(usable, used)| usable.saturating_sub(used)))
        .collect();
    keys.sort_unstable_by(|a, b| b.cmp(a));
    keys
}

impl PlaceIndex {
    /// The fleet now, from `source`'s change feed (see [`SharedIndex::refresh`]).
    fn refresh(&mut self, source: &dyn HiveSource) -> Hives {
        let list = match (source.changes(&mut self.seen), self.synced.take()) {
            (Changes::Some(changed), Some(mut list)) => {
                let mut moved = false;
                if !changed.is_empty() {
                    let hives = Arc::make_mut(&mut list);
                    for (at, now) in changed {
                        // A position off the list, or another hive there: not this
                        // list's fleet (never); indexed from scratch, the feed re-read.
                        let Some(slot) = hives.get_mut(at as usize) else {
                            moved = true;
                            continue;
                        };
                        let was = std::mem::replace(slot, now);
                        moved |= !self.rekey(at as usize, &was, &hives[at as usize]);
                    }
                }
                if moved {
                    self.seen.reset();
                    self.rebuild(&list);
                    self.recent.clear();
                } else {
                    self.synced = Some(list.clone());
                }
                list
            }
            (Changes::All(hives), synced) => {
                self.synced = synced;
                let list = Arc::new(hives);
                self.sync_to(&list);
                self.recent.clear();
                list
            }
            // A feed that answers changes to an index that holds no list (never: its
            // first answer is every hive): start again from every hive.
            (Changes::Some(_), None) => {
                self.seen.reset();
                let list = Arc::new(source.hives());
                self.sync_to(&list);
                self.recent.clear();
                list
            }
        };
        if self.recent.back().is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&list))) {
            return list;
        }
        if self.recent.len() == RECENT_LISTS {
            self.recent.pop_front();
        }
        self.recent.push_back(Arc::downgrade(&list));
        list
    }

    /// Brings the index to `hives`: nothing to do for the list it holds or one it made
    /// recently (same positions); else only positions whose snapshot changed are keyed
    /// again, and a list whose addresses differ is indexed from scratch. The change feed
    /// is then read from scratch on the next refresh.
    pub fn sync(&mut self, hives: &Hives) {
        let held = self.synced.as_ref().is_some_and(|s| Arc::ptr_eq(s, hives));
        if held || self.recent.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(hives))) {
            return;
        }
        self.sync_to(hives);
        self.recent.clear();
        self.seen.reset();
    }

    /// Brings the index to `hives` by comparing each position with the list it holds.
    fn sync_to(&mut self, hives: &Hives) {
        let old = match self.synced.take() {
            Some(old) if Arc::ptr_eq(&old, hives) => {
                self.synced = Some(old);
                return;
            }
            Some(old) if old.len() == hives.len() => old,
            _ => return self.rebuild(hives),
        };
        for (i, (was, now)) in old.iter().zip(hives.iter()).enumerate() {
            if !self.rekey(i, was, now) {
                return self.rebuild(hives);
            }
        }
        self.synced = Some(hives.clone());
    }

    /// Re-keys position `i`, whose snapshot was `was` and is `now`; `false` when it is
    /// another hive (the list must be indexed from scratch).
    fn rekey(&mut self, i: usize, was: &Arc<HiveSnapshot>, now: &Arc<HiveSnapshot>) -> bool {
        if Arc::ptr_eq(was, now) {
            return true;
        }
        if was.address != now.address {
            return false;
        }
        let same_caps = match (&was.caps, &now.caps) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let bucket = if same_caps {
            self.rows[i].bucket
        } else {
            self.elements = self.elements - gpus_of(was) + gpus_of(now);
            self.bucket(now)
        };
        self.set(i, Row { bucket, keys: keys_of(now) });
        true
    }

    /// Indexes `hives` from scratch.
    fn rebuild(&mut self, hives: &Hives) {
        self.rows.clear();
        self.buckets.clear();
        self.bucket_of.clear();
        let mut rows = Vec::with_capacity(hives.len());
        self.elements = hives.iter().map(|h| 1 + gpus_of(h)).sum();
        for h in hives.iter() {
            rows.push(Row { bucket: self.bucket(h), keys: keys_of(h) });
        }
        // Sorted per set, then built in bulk.
        let mut entries: Vec<Vec<Vec<(u64, u32)>>> = self.buckets.iter().map(|_| Vec::new()).collect();
        for (i, row) in rows.iter().enumerate() {
            let sets = &mut entries[row.bucket];
            if sets.len() < row.keys.len() {
                sets.resize_with(row.keys.len(), Vec::new);
            }
            for (k, key) in row.keys.iter().enumerate() {
                sets[k].push((*key, i as u32));
            }
        }
        for (bucket, sets) in self.buckets.iter_mut().zip(entries) {
            bucket.by_k = sets.into_iter().map(BTreeSet::from_iter).collect();
        }
        self.rows = rows;
        self.synced = Some(hives.clone());
    }

    /// The bucket of a hive's labels (made when new).
    fn bucket(&mut self, h: &HiveSnapshot) -> usize {
        let empty = BTreeMap::new();
        let labels = h.caps.as_ref().map_or(&empty, |c| &c.caps.labels);
        if let Some(&b) = self.bucket_of.get(labels) {
            return b;
        }
        self.buckets.push(Bucket { labels: labels.clone(), by_k: Vec::new() });
        self.bucket_of.insert(labels.clone(), self.buckets.len() - 1);
        self.buckets.len() - 1
    }

    /// Replaces position `i`'s row.
    fn set(&mut self, i: usize, row: Row) {
        let old = std::mem::take(&mut self.rows[i]);
        if old == row {
            self.rows[i] = old;
            return;
        }
        let at = i as u32;
        let bucket = &mut self.buckets[old.bucket];
        for (k, key) in old.keys.iter().enumerate() {
            bucket.by_k[k].remove(&(*key, at));
        }
        let bucket = &mut self.buckets[row.bucket];
        if bucket.by_k.len() < row.keys.len() {
            bucket.by_k.resize_with(row.keys.len(), BTreeSet::new);
        }
        for (k, key) in row.keys.iter().enumerate() {
            bucket.by_k[k].insert((*key, at));
        }
        self.rows[i] = row;
    }

    /// The positions of the hives with `k` GPUs of `bytes` each and `labels`: all of
    /// them in position order, or (bounded) the first `limit` in the bound's order.
    fn query(
        &self,
        labels: &BTreeMap<String, String>,
        k: usize,
        bytes: u64,
        bound: Bound,
        limit: usize,
    ) -> Vec<u32> {
        let Some(k) = k.checked_sub(1) else { return Vec::new() };
        let sets = self
            .buckets
            .iter()
            .filter(|b| labels.iter().all(|(key, v)| b.labels.get(key) == Some(v)))
            .filter_map(|b| b.by_k.get(k));
        let mut found: Vec<(u64, u32)> = match bound {
            Bound::Exact => {
                let mut found: Vec<u32> =
                    sets.flat_map(|s| s.range((bytes, 0)..).map(|&(_, at)| at)).collect();
                found.sort_unstable();
                return found;
            }
            Bound::MostFree => sets.flat_map(|s| s.range((bytes, 0)..).rev().take(limit).copied()).collect(),
            Bound::LeastFree => sets.flat_map(|s| s.range((bytes, 0)..).take(limit).copied()).collect(),
        };
        match bound {
            Bound::MostFree => found.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1))),
            _ => found.sort_unstable(),
        }
        found.truncate(limit);
        found.into_iter().map(|(_, at)| at).collect()
    }
}
