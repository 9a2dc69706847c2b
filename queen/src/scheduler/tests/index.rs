//! The placement index held to a full scan: on random fleets that change (new samples,
//! states, health, labels, capabilities; hives joining and leaving; reservations made
//! and released), every query through the index sees exactly the devices a walk of
//! every hive sees, ranks them identically in exact mode, and in bounded mode answers
//! only devices that fit, as many as asked (or every one that fits).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use proptest::prelude::*;

use super::summary::rough;
use crate::fleet::{ConnState, HiveSnapshot};
use crate::scheduler::book::{Book, Claim};
use crate::scheduler::gang::{self, Gang};
use crate::scheduler::index::{Bound, SharedIndex};
use crate::scheduler::request::{GangTopology, PlaceRequest};
use crate::scheduler::synthetic::hive;
use crate::scheduler::view::{self, DeviceRef, FleetView};

const GIB: u64 = 1 << 30;

/// One change of the fleet or the book.
#[derive(Debug, Clone)]
enum Op {
    /// Hive `id` publishes a new view (it joins when it was not in the fleet).
    Publish { id: usize, gpus: usize, used: u64, seed: u64, refresh: bool },
    /// Hive `id` leaves.
    Leave { id: usize },
    /// A reservation on hive `id`'s GPU `gpu`.
    Reserve { id: usize, gpu: usize, gib: u64 },
    /// The `nth` reservation (modulo their count) is released.
    Release { nth: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0usize..24, 0usize..5, 0u64..40, any::<u64>(), any::<bool>())
            .prop_map(|(id, gpus, used, seed, refresh)| Op::Publish { id, gpus, used, seed, refresh }),
        1 => (0usize..24).prop_map(|id| Op::Leave { id }),
        3 => (0usize..24, 0usize..4, 1u64..30).prop_map(|(id, gpu, gib)| Op::Reserve { id, gpu, gib }),
        1 => any::<usize>().prop_map(|nth| Op::Release { nth }),
    ]
}

/// A query: VRAM per GPU, GPUs (gangs), a label, a topology, how many to rank.
type Query = (u64, u32, bool, usize, usize);

fn query() -> impl Strategy<Value = Query> {
    (0u64..40, 1u32..5, any::<bool>(), 0usize..3, 0usize..10)
}

/// The fleet as `Fleet::list` gives it: one snapshot per hive, by address.
#[derive(Default)]
struct World {
    hives: std::collections::BTreeMap<usize, Arc<HiveSnapshot>>,
    book: Book,
    held: Vec<String>,
}

impl World {
    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Publish { id, gpus, used, seed, refresh } => {
                self.hives.insert(id, rough(id, gpus, used, seed, refresh));
            }
            Op::Leave { id } => {
                self.hives.remove(&id);
            }
            Op::Reserve { id, gpu, gib } => {
                let Some(h) = self.hives.get(&id) else { return };
                let Some(g) = h.caps.as_ref().and_then(|c| c.caps.gpus.values().nth(gpu)) else { return };
                let claim = Claim {
                    hive_id: h.hive_id(),
                    model: "m",
                    bytes: gib * GIB,
                    total: g.vram_total_bytes,
                    observed: 0,
                    processes: None,
                    ttl: Duration::from_secs(600),
                    now_ms: rbee_shared::time::now_unix_ms(),
                };
                if let Ok(r) = self.book.reserve(&h.address, &g.id, &claim) {
                    self.held.push(r.id);
                }
            }
            Op::Release { nth } => {
                if !self.held.is_empty() {
                    let id = self.held.remove(nth % self.held.len());
                    self.book.release(&id);
                }
            }
        }
    }
}

fn devices(d: Vec<DeviceRef>) -> Vec<(String, String, u64)> {
    d.into_iter().map(|d| (d.hive.address.clone(), d.id, d.free)).collect()
}

fn gangs(g: Vec<Gang>) -> Vec<(String, Vec<String>)> {
    g.into_iter().map(|g| (g.hive.address.clone(), g.devices)).collect()
}

/// Every query through `index` against the full scan of the same hives and book.
fn check(
    hives: &Arc<Vec<Arc<HiveSnapshot>>>,
    book: &Arc<RwLock<Book>>,
    index: &Arc<SharedIndex>,
    exact: bool,
    (vram_gib, gpus, labelled, topology, n): Query,
) -> Result<(), TestCaseError> {
    let full = FleetView { hives: hives.clone(), book: book.clone(), index: None };
    let indexed = FleetView { index: Some(index.clone()), ..full.clone() };
    let topology = [GangTopology::Any, GangTopology::SameNuma, GangTopology::Nvlink][topology];
    // A gang request ranked device by device too (as a policy may).
    let mut req = PlaceRequest { gpus, topology, ..PlaceRequest::gpu(vram_gib * GIB) };
    if labelled {
        req.labels.insert("zone".into(), "eu".into());
    }
    // The feasible set: the same devices, in the same order, with the same figures.
    let fits = devices(view::assess(&full, &req, false).0);
    prop_assert_eq!(&devices(view::assess(&indexed, &req, false).0), &fits);
    for order in [view::Order::LeastLoaded, view::Order::BinPack, view::Order::NearestWeights] {
        let got = devices(view::rank(&indexed, &req, order, n));
        if exact || n == 0 {
            prop_assert_eq!(got, devices(view::rank(&full, &req, order, n)), "{:?}", order);
        } else {
            prop_assert_eq!(got.len(), n.min(fits.len()), "{:?}", order);
            for d in &got {
                prop_assert!(fits.contains(d), "{:?} ranked {:?}, which does not fit", order, d);
            }
            let mut unique = got.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(unique.len(), got.len());
        }
    }
    // Gangs of `gpus` on one hive.
    let all = gangs(gang::best(&full, &req, 0));
    prop_assert_eq!(&gangs(gang::best(&indexed, &req, 0)), &all);
    let m = n.max(1);
    let got = gangs(gang::best(&indexed, &req, m));
    if exact {
        prop_assert_eq!(got, gangs(gang::best(&full, &req, m)));
    } else {
        prop_assert_eq!(got.len(), m.min(all.len()));
        for g in &got {
            prop_assert!(all.contains(g), "gang {:?} is not one of the fleet's", g);
        }
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    /// One index follows a fleet through a run of changes; after each, queries through
    /// it answer as the full scan does (identically in exact mode; in bounded mode
    /// devices that fit, as many as asked).
    #[test]
    fn the_index_answers_as_a_full_scan(
        ops in proptest::collection::vec(op(), 1..40),
        queries in proptest::collection::vec(query(), 1..4),
    ) {
        let exact = Arc::new(SharedIndex::new(usize::MAX));
        // Bounded from the first hive on, scoring as few as 2 hives.
        let bounded = Arc::new(SharedIndex::with_min_scored(0, 2));
        let mut world = World::default();
        for op in &ops {
            world.apply(op);
            let hives = Arc::new(world.hives.values().cloned().collect::<Vec<_>>());
            let book = Arc::new(RwLock::new(std::mem::take(&mut world.book)));
            for &q in &queries {
                check(&hives, &book, &exact, true, q)?;
                check(&hives, &book, &bounded, false, q)?;
            }
            world.book = std::mem::take(&mut *book.write().unwrap());
        }
    }
}

/// The index names only the hives that can fit: online, healthy, with the labels, and
/// with enough GPUs of enough free memory; a bounded query takes the most free first.
#[test]
fn the_index_names_only_hives_that_fit() {
    let on = ConnState::Online;
    let hives = Arc::new(vec![
        hive("a", 2, 80, 70, 1.0, on, &[("zone", "eu")]),
        hive("b", 2, 80, 10, 1.0, on, &[("zone", "eu")]),
        hive("c", 2, 80, 10, 1.0, ConnState::Lost, &[("zone", "eu")]),
        hive("d", 4, 80, 40, 1.0, on, &[("zone", "us")]),
        hive("e", 1, 80, 0, 1.0, on, &[("zone", "eu")]),
    ]);
    let none = std::collections::BTreeMap::new();
    let eu: std::collections::BTreeMap<String, String> = [("zone".into(), "eu".into())].into();
    let index = SharedIndex::new(usize::MAX);
    assert_eq!(index.candidates(&hives, &none, 1, 20 * GIB, Bound::Exact), (vec![1, 3, 4], false));
    assert_eq!(index.candidates(&hives, &eu, 1, 20 * GIB, Bound::Exact), (vec![1, 4], false));
    assert_eq!(index.candidates(&hives, &none, 2, 20 * GIB, Bound::Exact), (vec![1, 3], false));
    assert_eq!(index.candidates(&hives, &none, 3, 40 * GIB, Bound::Exact), (vec![3], false));
    assert_eq!(index.candidates(&hives, &none, 5, 1, Bound::Exact), (vec![], false));
    let bounded = SharedIndex::with_min_scored(0, 2);
    assert_eq!(bounded.candidates(&hives, &none, 1, 20 * GIB, Bound::MostFree), (vec![4, 1], true));
    assert_eq!(bounded.candidates(&hives, &none, 1, 20 * GIB, Bound::LeastFree), (vec![3, 1], true));
}

/// Above `place_exact_up_to` hives the default policy scores the hives with the most
/// free memory first and may miss the least loaded device elsewhere; with the knob
/// above the fleet's size it ranks exactly again. Both answers fit.
#[test]
fn bounded_ranking_may_miss_the_global_best_and_the_knob_makes_it_exact() {
    let on = ConnState::Online;
    // 150 hives of one 80 GiB GPU, all free and 50% busy; one idle GPU with 10 GiB free.
    let mut fleet: Vec<Arc<HiveSnapshot>> =
        (0..150).map(|i| hive(&format!("busy-{i:03}"), 1, 80, 0, 50.0, on, &[])).collect();
    fleet.push(hive("idle", 1, 80, 70, 0.0, on, &[]));
    let req = PlaceRequest { dry_run: true, ..PlaceRequest::gpu(4 * GIB) };
    let place = |exact_up_to: usize| {
        let settings =
            crate::scheduler::SchedulerSettings { place_exact_up_to: exact_up_to, ..super::calm() };
        super::placed(super::scheduler(fleet.clone(), settings).place_blocking(&req).unwrap()).hive_id
    };
    assert_eq!(place(usize::MAX), "idle", "exact: the least loaded device");
    assert_eq!(place(151), "idle", "exact up to the fleet's size");
    let bounded = place(150);
    assert!(bounded.starts_with("busy-"), "bounded: the 100 most-free hives are scored, got {bounded}");
}

/// The senders of a test fleet's hives, by address (what the links hold in the queen).
#[derive(Default, Clone)]
struct Publishers(Arc<std::sync::Mutex<std::collections::HashMap<String, Sender>>>);

type Sender = tokio::sync::watch::Sender<Arc<HiveSnapshot>>;

impl crate::fleet::Watcher for Publishers {
    fn start(&self, hive: crate::fleet::NewHive) {
        let address = hive.publish.borrow().address.clone();
        self.0.lock().unwrap().insert(address, hive.publish);
    }
}

/// A fleet whose hives tests publish to by hand.
fn live_fleet() -> (Arc<crate::fleet::Fleet>, Publishers) {
    let publishers = Publishers::default();
    let settings = crate::fleet::FleetSettings::default();
    let fleet = crate::fleet::Fleet::new(settings, Default::default(), publishers.clone());
    (fleet, publishers)
}

/// Publishes hive `id`'s new view as a link does (publish, then note the change);
/// the hive joins first when it is not in the fleet.
fn publish(fleet: &Arc<crate::fleet::Fleet>, publishers: &Publishers, view: Arc<HiveSnapshot>) {
    let (joined, _) = fleet.add(&view.address, crate::fleet::Origin::Static).unwrap();
    let view = Arc::new(HiveSnapshot { address: joined.address.clone(), ..HiveSnapshot::clone(&view) });
    publishers.0.lock().unwrap()[&joined.address].send_replace(view);
    fleet.changed(&joined.address);
}

proptest::proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    /// The index kept from the fleet's change feed (only the hives that published since
    /// the last view are swapped in and re-keyed) never misses a change: after every
    /// change its list is the fleet's list, snapshot for snapshot, and every query
    /// answers as the full scan. A second reader of the same feed (taking some reads),
    /// and views that concurrent Places still hold, change nothing of that.
    #[test]
    fn the_index_fed_by_the_change_feed_misses_no_change(
        ops in proptest::collection::vec((op(), 0usize..8, any::<bool>()), 1..60),
        queries in proptest::collection::vec(query(), 1..3),
    ) {
        let (fleet, publishers) = live_fleet();
        let source: &dyn crate::scheduler::HiveSource = fleet.as_ref();
        let exact = Arc::new(SharedIndex::new(usize::MAX));
        let other = Arc::new(SharedIndex::with_min_scored(0, 2));
        let mut world = World::default();
        let mut held: Option<Arc<Vec<Arc<HiveSnapshot>>>> = None;
        for (op, second, keep) in &ops {
            // Few hives, so that most publishes are of hives already in the fleet.
            let op = &narrow(op.clone());
            world.apply(op);
            match *op {
                Op::Publish { id, .. } => publish(&fleet, &publishers, world.hives[&id].clone()),
                Op::Leave { id } => {
                    let _ = fleet.remove(&world_address(id));
                }
                _ => {}
            }
            let book = Arc::new(RwLock::new(std::mem::take(&mut world.book)));
            if *second == 0 {
                let hives = other.refresh(source);
                same_list(&hives, &fleet.list())?;
                for &q in &queries {
                    check(&hives, &book, &other, false, q)?;
                }
            }
            let hives = exact.refresh(source);
            same_list(&hives, &fleet.list())?;
            // A view an earlier Place still holds is answered (same positions) without
            // re-syncing the index to it.
            if let Some(old) = &held {
                let _ = exact.candidates(old, &Default::default(), 1, 1, Bound::Exact);
            }
            for &q in &queries {
                check(&hives, &book, &exact, true, q)?;
            }
            if *keep {
                held = Some(hives);
            }
            world.book = std::mem::take(&mut *book.write().unwrap());
        }
    }
}

/// `op` on one of 6 hives.
fn narrow(op: Op) -> Op {
    match op {
        Op::Publish { id, gpus, used, seed, refresh } => {
            Op::Publish { id: id % 6, gpus, used, seed, refresh }
        }
        Op::Leave { id } => Op::Leave { id: id % 6 },
        Op::Reserve { id, gpu, gib } => Op::Reserve { id: id % 6, gpu, gib },
        release => release,
    }
}

/// The address `rough(id, ..)` gives hive `id` (the fleet normalises it).
fn world_address(id: usize) -> String {
    rough(id, 0, 0, 0, true).address.clone()
}

fn same_list(got: &[Arc<HiveSnapshot>], want: &[Arc<HiveSnapshot>]) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        prop_assert!(Arc::ptr_eq(g, w), "{} is not the fleet's newest view", g.address);
    }
    Ok(())
}

/// The change feed names only the hives that published since its reader last looked
/// (each once, however often it published), and every hive after one joined or left,
/// on a reader's first read, and when another reader took the feed in between.
#[test]
fn the_change_feed_names_only_the_hives_that_published() {
    use crate::fleet::{Changes, Seen};
    let (fleet, publishers) = live_fleet();
    for id in 0..3 {
        publish(&fleet, &publishers, rough(id, 2, 1, 0, true));
    }
    let (mut seen, mut other) = (Seen::default(), Seen::default());
    assert!(matches!(fleet.changes(&mut seen), Changes::All(all) if all.len() == 3));
    assert!(matches!(fleet.changes(&mut seen), Changes::Some(c) if c.is_empty()));
    publish(&fleet, &publishers, rough(2, 2, 5, 1, true));
    publish(&fleet, &publishers, rough(2, 2, 6, 2, true));
    let Changes::Some(changed) = fleet.changes(&mut seen) else { panic!("a full list for one publish") };
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].0, 2);
    assert!(Arc::ptr_eq(&changed[0].1, &fleet.list()[2]));
    // Another reader takes the feed: each then reads every hive once.
    publish(&fleet, &publishers, rough(0, 2, 7, 3, true));
    assert!(matches!(fleet.changes(&mut other), Changes::All(_)));
    assert!(matches!(fleet.changes(&mut seen), Changes::All(_)));
    assert!(matches!(fleet.changes(&mut seen), Changes::Some(c) if c.is_empty()));
    // A hive leaves: positions moved, every hive again.
    fleet.remove(&world_address(1)).unwrap();
    assert!(matches!(fleet.changes(&mut seen), Changes::All(all) if all.len() == 2));
    publish(&fleet, &publishers, rough(2, 2, 8, 4, true));
    let Changes::Some(changed) = fleet.changes(&mut seen) else { panic!("a full list for one publish") };
    assert_eq!(changed.iter().map(|c| c.0).collect::<Vec<_>>(), [1], "hive 2 moved to position 1");
}
