//! Gang search and gang placement: the search against a brute-force solver, the
//! shapes of real boxes (NVSwitch, NVLink pairs, MIG), and all-or-nothing reservations
//! through the scheduler.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::scheduler::book::ReservationState;
use crate::scheduler::request::GangTopology;
use crate::scheduler::synthetic::{Shape, shaped};
use crate::scheduler::{Outcome, Placement, Scheduler, SchedulerSettings, StaticHives};

const GIB: u64 = 1 << 30;

fn calm() -> SchedulerSettings {
    let mut s = SchedulerSettings::default();
    s.limits.budget = Duration::from_secs(5);
    s
}

fn scheduler(hives: Vec<Arc<HiveSnapshot>>) -> Arc<Scheduler> {
    Scheduler::new(Arc::new(StaticHives(hives)), calm()).unwrap()
}

fn gang(gpus: u32, vram_gib: u64, topology: GangTopology) -> PlaceRequest {
    PlaceRequest { gpus, topology, ..PlaceRequest::gpu(vram_gib * GIB) }
}

fn placed(o: Outcome) -> Placement {
    match o {
        Outcome::Placed(p) => *p,
        Outcome::Rejected { reason, hive_reasons } => panic!("rejected: {reason}: {hive_reasons:?}"),
    }
}

fn rejected(o: Outcome) -> (String, Vec<String>) {
    match o {
        Outcome::Placed(p) => panic!("placed: {p:?}"),
        Outcome::Rejected { reason, hive_reasons } => (reason, hive_reasons),
    }
}

fn ids(p: &Placement) -> Vec<String> {
    p.devices.iter().map(|d| d.device_id.clone()).collect()
}

#[test]
fn the_shapes_read_as_their_links() {
    let dgx = Links::of(&shaped("d", &Shape::dgx())).unwrap();
    assert_eq!(dgx.level(0xff), Level::Nvlink);
    let pairs = Links::of(&shaped("p", &Shape::two_socket_pairs())).unwrap();
    assert_eq!(pairs.level(0b11), Level::Nvlink);
    assert_eq!(pairs.level(0b110), Level::SameNuma);
    assert_eq!(pairs.level(0b1_1000), Level::Any);
    let mig = Links::of(&shaped("m", &Shape::mig(3))).unwrap();
    assert_eq!(mig.mig, 0b111);
}

#[test]
fn place_picks_the_nvlink_pair_over_gpus_with_more_free_memory_but_no_link() {
    // GPUs 0-1 share NVLink and have 40 GiB used; 2 and 3 are empty but unlinked.
    let shape = Shape {
        vram_gib: 80,
        used_gib: vec![40, 40, 0, 0],
        numa: vec![Some(0); 4],
        mig_parent: vec![None; 4],
        nvlink: vec![(0, 1)],
        switch: vec![],
    };
    let s = scheduler(vec![shaped("box", &shape)]);
    let p = placed(s.place_blocking(&gang(2, 30, GangTopology::Any)).unwrap());
    assert_eq!(ids(&p), ["GPU-box-0", "GPU-box-1"]);
    assert_eq!(p.level, Some(Level::Nvlink));
    let r = p.reservation.unwrap();
    assert_eq!(r.gang, ["GPU-box-0", "GPU-box-1"]);
    assert_eq!(r.device_id, "GPU-box-0");
    let active = s.book.read().unwrap().active_bytes();
    assert_eq!(active.len(), 2, "30 GiB on each GPU of the gang: {active:?}");
    assert!(active.values().all(|b| *b == 30 * GIB));
}

#[test]
fn three_way_nvlink_on_a_pairs_box_is_refused_and_says_why() {
    let s = scheduler(vec![shaped("pairs", &Shape::two_socket_pairs())]);
    let (reason, hives) = rejected(s.place_blocking(&gang(3, 10, GangTopology::Nvlink)).unwrap());
    assert!(reason.contains("NVLink") || reason.contains("nvlink"), "{reason}");
    assert!(
        hives.iter().any(|h| h.contains("pairs: 8 GPUs have 10.0 GiB free but only 2 share NVLink")),
        "{hives:?}"
    );
    assert!(s.book.read().unwrap().is_empty(), "nothing reserved");
    // Two on NVLink fit; three on one NUMA node fit too.
    assert_eq!(
        placed(s.place_blocking(&gang(2, 10, GangTopology::Nvlink)).unwrap()).level,
        Some(Level::Nvlink)
    );
    let numa = placed(s.place_blocking(&gang(3, 10, GangTopology::SameNuma)).unwrap());
    assert_eq!(numa.devices.len(), 3);
}

#[test]
fn a_gang_larger_than_any_hive_is_a_clear_rejection() {
    let s = scheduler(vec![shaped("dgx", &Shape::dgx())]);
    let (_, hives) = rejected(s.place_blocking(&gang(16, 10, GangTopology::Any)).unwrap());
    assert!(hives.iter().any(|h| h.contains("no hive has 16 GPUs (the largest has 8)")), "{hives:?}");
}

#[test]
fn a_reserved_gang_keeps_its_devices_and_is_released_as_one() {
    let s = scheduler(vec![shaped("dgx", &Shape::dgx())]);
    let first = placed(s.place_blocking(&gang(4, 60, GangTopology::Nvlink)).unwrap());
    let second = placed(s.place_blocking(&gang(4, 60, GangTopology::Nvlink)).unwrap());
    let (a, b) = (ids(&first), ids(&second));
    assert!(a.iter().all(|d| !b.contains(d)), "{a:?} {b:?}");
    // No third gang of 4 x 60 GiB: every GPU holds 60 of 80 GiB.
    let (_, why) = rejected(s.place_blocking(&gang(2, 60, GangTopology::Any)).unwrap());
    assert!(!why.is_empty());
    assert_eq!(s.book.read().unwrap().len(), 2, "one reservation per gang");
    let r = s.release(&first.reservation.unwrap().id).unwrap();
    assert_eq!(r.gang.len(), 4);
    let active = s.book.read().unwrap().active_bytes();
    assert_eq!(active.len(), 4, "only the second gang counts: {active:?}");
    let again = placed(s.place_blocking(&gang(4, 60, GangTopology::Nvlink)).unwrap());
    let mut got = ids(&again);
    got.sort();
    let mut freed = a.clone();
    freed.sort();
    assert_eq!(got, freed, "the released gang's GPUs are free again, all of them");
}

#[test]
fn mig_instances_place_independently_and_are_never_ganged() {
    let s = scheduler(vec![shaped("mig", &Shape::mig(3))]);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let p = placed(s.place_blocking(&PlaceRequest::gpu(20 * GIB)).unwrap());
        assert!(p.level.is_none());
        seen.push(p.device_id);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3, "each instance took one placement");
    let s = scheduler(vec![shaped("mig", &Shape::mig(3))]);
    let (_, why) = rejected(s.place_blocking(&gang(2, 5, GangTopology::Any)).unwrap());
    assert!(why.iter().any(|w| w.contains("MIG instances, never ganged")), "{why:?}");
}

#[test]
fn a_gang_settles_when_every_device_shows_it_and_only_then() {
    let s = scheduler(vec![shaped("dgx", &Shape::dgx())]);
    let p = placed(s.place_blocking(&gang(2, 30, GangTopology::Nvlink)).unwrap());
    let r = p.reservation.unwrap();
    let mut book = s.book.write().unwrap();
    let settled = book.settle(&p.address, &r.gang[0], 30 * GIB, None);
    assert!(settled.is_empty(), "one GPU of two: {settled:?}");
    assert_eq!(book.get(&r.id).unwrap().state, ReservationState::Active);
    assert_eq!(book.active_bytes().len(), 1, "the settled GPU no longer counts");
    let settled = book.settle(&p.address, &r.gang[1], 30 * GIB, None);
    assert_eq!(settled, std::slice::from_ref(&r.id));
    assert_eq!(book.get(&r.id).unwrap().state, ReservationState::Settled);
    assert!(book.active_bytes().is_empty());
}

#[test]
fn old_requests_place_exactly_as_before() {
    // gpus = 1 never takes the gang path: no gang list, no level.
    let s = scheduler(vec![shaped("dgx", &Shape::dgx())]);
    let p = placed(s.place_blocking(&PlaceRequest::gpu(10 * GIB)).unwrap());
    assert_eq!(p.devices.len(), 1);
    assert_eq!(p.devices[0].device_id, p.device_id);
    assert!(p.level.is_none());
    assert!(p.reservation.unwrap().gang.is_empty());
}

#[test]
fn a_policy_that_answers_one_device_for_a_gang_is_refused_not_half_placed() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, b"fn place(request, fleet) { fleet.least_loaded(request, 4) }")
        .unwrap();
    let settings = SchedulerSettings { policy_file: Some(file.path().to_owned()), ..calm() };
    let s = Scheduler::new(Arc::new(StaticHives(vec![shaped("dgx", &Shape::dgx())])), settings).unwrap();
    let (_, why) = rejected(s.place_blocking(&gang(2, 10, GangTopology::Any)).unwrap());
    assert!(why.iter().any(|w| w.contains("chose one device for a gang of 2 GPUs")), "{why:?}");
    assert!(s.book.read().unwrap().is_empty());
}

#[test]
fn policies_see_topology_and_can_pick_among_a_hives_gangs() {
    let text = r#"
        fn place(request, fleet) {
            let h = fleet.hive("pairs");
            let d = h.devices[0];
            if d.numa != 0 || d.nvlink_peers.len() != 1 || d.mig_parent != () { return reject("topology"); }
            let gangs = h.gangs(request);
            if gangs.is_empty() || gangs[0].level != "nvlink" { return reject("gangs"); }
            gangs[gangs.len() - 1]
        }
    "#;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    let settings = SchedulerSettings { policy_file: Some(file.path().to_owned()), ..calm() };
    // The second GPU of each pair is busier: the most free GPUs of a NUMA node are not
    // linked, so the hive lists looser gangs after its NVLink pairs.
    let mut shape = Shape::two_socket_pairs();
    shape.used_gib = vec![0, 30, 0, 30, 0, 30, 0, 30];
    let s = Scheduler::new(Arc::new(StaticHives(vec![shaped("pairs", &shape)])), settings).unwrap();
    let p = placed(s.place_blocking(&gang(2, 10, GangTopology::Any)).unwrap());
    assert_eq!(p.devices.len(), 2);
    assert_ne!(p.level, Some(Level::Nvlink), "the policy took the loosest gang listed");
}

/// A random small hive: links, NUMA nodes, MIG instances and free memory.
#[derive(Debug, Clone)]
struct Small {
    links: Links,
    members: Vec<Member>,
}

fn small() -> impl Strategy<Value = Small> {
    (2usize..=7)
        .prop_flat_map(|n| {
            let pairs = n * (n - 1) / 2;
            (
                Just(n),
                proptest::collection::vec(any::<bool>(), pairs),
                proptest::collection::vec(any::<bool>(), pairs),
                proptest::collection::vec(proptest::option::weighted(0.9, 0u32..2), n),
                proptest::collection::vec(0u8..10, n),
                proptest::collection::vec(proptest::option::of(0u64..80), n),
            )
        })
        .prop_map(|(n, nv, sw, numa, mig, free)| {
            let mut links = Links { nvlink: vec![0; n], switch: vec![0; n], numa, mig: 0 };
            let mut e = 0;
            for i in 0..n {
                for j in i + 1..n {
                    if nv[e] {
                        links.nvlink[i] |= 1 << j;
                        links.nvlink[j] |= 1 << i;
                    }
                    if sw[e] {
                        links.switch[i] |= 1 << j;
                        links.switch[j] |= 1 << i;
                    }
                    e += 1;
                }
            }
            for (i, m) in mig.iter().enumerate() {
                if *m == 0 {
                    links.mig |= 1 << i;
                }
            }
            let members = free
                .iter()
                .enumerate()
                .filter_map(|(pos, f)| f.map(|f| Member { pos, free: f * GIB, total: 80 * GIB, util: 0.0 }))
                .collect();
            Small { links, members }
        })
}

/// Every `k`-set of the members that meets `need`, with its level and load.
fn brute(s: &Small, k: usize, need: GangTopology) -> Vec<(u64, Level, f32)> {
    let mut allowed: u64 = s.members.iter().fold(0, |a, m| a | (1 << m.pos));
    if k > 1 {
        allowed &= !s.links.mig;
    }
    let mut out = Vec::new();
    for set in 1u64..(1 << 7) {
        if set & !allowed != 0 || set.count_ones() as usize != k || !s.links.meets(set, need) {
            continue;
        }
        out.push((set, s.links.level(set), load(&s.members, set, GIB).0));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    /// The search finds a gang exactly when one exists, at the tightest level that
    /// exists, and at least as lightly loaded as any gang of that level; every gang it
    /// lists meets the request.
    #[test]
    fn the_search_matches_a_brute_force_solver(s in small(), k in 1usize..=5, need in 0u8..3) {
        let need = [GangTopology::Any, GangTopology::SameNuma, GangTopology::Nvlink][need as usize];
        let found = search(&s.links, &s.members, k, need, GIB);
        let all = brute(&s, k, need);
        prop_assert_eq!(found.is_empty(), all.is_empty(), "found {:?}, brute force {:?}", found, all);
        if let Some(best) = found.first() {
            let tightest = all.iter().map(|a| a.1).min().unwrap();
            prop_assert_eq!(best.level, tightest);
            let lightest = all.iter().filter(|a| a.1 == tightest).map(|a| a.2).fold(f32::MAX, f32::min);
            prop_assert!(best.load.0 <= lightest + 1e-6, "{:?} vs {}", best, lightest);
        }
        for g in &found {
            prop_assert!(all.iter().any(|a| a.0 == g.set), "{:?} is not a feasible gang", g);
            prop_assert_eq!(g.level, s.links.level(g.set));
        }
    }
}

/// A fleet of two small boxes: a pairs box and a 4-GPU NVSwitch box, with some used.
fn small_fleet() -> Vec<Arc<HiveSnapshot>> {
    let mut pairs = Shape::two_socket_pairs();
    pairs.used_gib = vec![10, 0, 30, 0, 0, 50, 20, 0];
    let mut nvs = Shape::dgx();
    nvs.used_gib = vec![0, 40, 0, 60, 0, 0, 10, 0];
    vec![shaped("p", &pairs), shaped("n", &nvs)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// 200 concurrent gang placements of mixed sizes (and releases) never promise a
    /// GPU more than it has, and never leave part of a gang reserved.
    #[test]
    fn concurrent_gangs_never_over_commit(
        asks in proptest::collection::vec((1u32..=4, 5u64..=40, 0u8..3, any::<bool>()), 200)
    ) {
        let fleet = small_fleet();
        let s = scheduler(fleet.clone());
        let totals: std::collections::BTreeMap<(String, String), u64> = fleet
            .iter()
            .flat_map(|h| {
                let used: Vec<(String, u64, u64)> = h.latest.as_ref().unwrap().gpus.iter()
                    .map(|g| (g.id.clone(), g.vram_used_bytes.unwrap(), 80 * GIB)).collect();
                used.into_iter().map(move |(id, used, total)| ((h.address.clone(), id), total - used))
            })
            .collect();
        let asks = Arc::new(asks);
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (s, asks) = (s.clone(), asks.clone());
                scope.spawn(move || {
                    for (i, (gpus, vram, need, release)) in asks.iter().enumerate() {
                        if i % 4 != t { continue; }
                        let need = [GangTopology::Any, GangTopology::SameNuma, GangTopology::Nvlink][*need as usize];
                        if let Ok(Outcome::Placed(p)) = s.place_blocking(&gang(*gpus, *vram, need)) {
                            let r = p.reservation.unwrap();
                            assert_eq!(r.devices().count(), *gpus as usize);
                            if *release { s.release(&r.id).unwrap(); }
                        }
                    }
                });
            }
        });
        let book = s.book.read().unwrap();
        for ((address, device), bytes) in book.active_bytes() {
            let free = totals[&(address.clone(), device.clone())];
            prop_assert!(bytes <= free, "{}/{}: {} reserved > {} free", address, device, bytes, free);
        }
        for r in book.list() {
            let n = r.devices().count();
            prop_assert!(n == 1 || n == r.gang.len());
            let queued = book.active_bytes().keys().filter(|(a, d)| *a == r.address && r.devices().any(|x| x == d)).count();
            prop_assert_eq!(queued, n, "the whole gang counts");
        }
    }
}

fn procs(list: &[(u32, u64, Option<&str>)]) -> rbee_shared::GpuProcesses {
    rbee_shared::GpuProcesses {
        listed: list
            .iter()
            .map(|(pid, used, tag)| rbee_shared::gpu_process::GpuProcess {
                pid: *pid,
                used_vram_bytes: Some(*used),
                reservation_id: tag.map(str::to_owned),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn tagged_workers_settle_the_gang_on_their_own_gpus_and_only_there() {
    let s = scheduler(vec![shaped("dgx", &Shape::dgx())]);
    let p = placed(s.place_blocking(&gang(2, 30, GangTopology::Nvlink)).unwrap());
    let r = p.reservation.unwrap();
    let (g0, g1) = (r.gang[0].clone(), r.gang[1].clone());
    let other = (0..8).map(|i| format!("GPU-dgx-{i}")).find(|d| !r.gang.contains(d)).unwrap();
    let mut book = s.book.write().unwrap();
    let empty = procs(&[]);
    for d in [&g0, &g1, &other] {
        book.settle(&p.address, d, 0, Some(&empty));
    }
    // A worker with the gang's tag on a GPU outside the gang settles nothing.
    assert!(
        book.settle(&p.address, &other, 30 * GIB, Some(&procs(&[(7, 30 * GIB, Some(&r.id))]))).is_empty()
    );
    assert!(book.counts_on(&r, &g0) && book.counts_on(&r, &g1));
    // The worker on the first GPU settles the gang there only.
    assert!(book.settle(&p.address, &g0, 30 * GIB, Some(&procs(&[(8, 30 * GIB, Some(&r.id))]))).is_empty());
    let now = book.get(&r.id).unwrap().clone();
    assert_eq!(now.state, ReservationState::Active);
    assert!(!book.counts_on(&now, &g0) && book.counts_on(&now, &g1));
    // The second worker settles the whole gang.
    assert_eq!(
        book.settle(&p.address, &g1, 30 * GIB, Some(&procs(&[(9, 30 * GIB, Some(&r.id))]))),
        std::slice::from_ref(&r.id)
    );
    assert_eq!(book.get(&r.id).unwrap().state, ReservationState::Settled);
    // A worker that exits before the release makes its GPU count the gang again.
    book.settle(&p.address, &g0, 0, Some(&empty));
    let back = book.get(&r.id).unwrap().clone();
    assert_eq!(back.state, ReservationState::Active);
    assert!(book.counts_on(&back, &g0) && !book.counts_on(&back, &g1));
    drop(book);
    s.release(&r.id).unwrap();
    assert!(s.book.read().unwrap().active_bytes().is_empty(), "released as one");
}

/// A retried keyed gang answers the same reservation with what the first answer said:
/// every GPU with its index, and the level the gang got.
#[test]
fn a_retried_keyed_gang_answers_its_gpus_and_level_again() {
    let s = scheduler(vec![shaped("dgx", &Shape::dgx())]);
    let req = PlaceRequest { request_id: Some("tp-1".into()), ..gang(2, 10, GangTopology::Nvlink) };
    let first = placed(s.place_blocking(&req).unwrap());
    let again = placed(s.place_blocking(&req).unwrap());
    assert_eq!(s.reservations().len(), 1, "the retry reserved nothing");
    assert_eq!(again.reservation.as_ref().map(|r| &r.id), first.reservation.as_ref().map(|r| &r.id));
    assert_eq!(ids(&again), ids(&first));
    let index = |p: &Placement| p.devices.iter().map(|d| d.index).collect::<Vec<_>>();
    assert_eq!(index(&again), index(&first));
    assert!(index(&again).iter().all(Option::is_some), "{:?}", again.devices);
    assert_eq!(again.level, first.level);
    assert!(again.level.is_some());
}
