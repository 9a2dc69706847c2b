//! The book's arithmetic, its bounds and its pages; and a property test that nothing is
//! ever promised twice.

use super::*;
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

fn claim(bytes: u64, observed: u64) -> Claim<'static> {
    Claim {
        hive_id: "h",
        model: "m",
        bytes,
        total: 80 * GIB,
        observed,
        processes: None,
        ttl: Duration::from_secs(60),
        now_ms: 1000,
    }
}

#[test]
fn free_counts_reservations_and_other_processes() {
    let mut b = Book::default();
    b.reserve("a", "g", &claim(30 * GIB, 10 * GIB)).unwrap();
    // 80 - max(10, 10 + 30) = 40
    assert_eq!(b.free("a", "g", 80 * GIB, 10 * GIB), 40 * GIB);
    // Another process grabs VRAM: observed 60 > committed 40.
    assert_eq!(b.free("a", "g", 80 * GIB, 60 * GIB), 20 * GIB);
    assert_eq!(
        b.reserve("a", "g", &claim(41 * GIB, 10 * GIB)).unwrap_err(),
        Refused::NoRoom { free: 40 * GIB }
    );
}

#[test]
fn a_reservation_settles_when_the_model_shows_up() {
    let mut b = Book::default();
    let r = b.reserve("a", "g", &claim(30 * GIB, 10 * GIB)).unwrap();
    assert!(b.observe("a", "g", 25 * GIB).is_empty(), "half loaded: still active");
    assert_eq!(b.observe("a", "g", 41 * GIB).as_slice(), std::slice::from_ref(&r.id));
    assert_eq!(b.list()[0].state, ReservationState::Settled);
    assert_eq!(b.free("a", "g", 80 * GIB, 41 * GIB), 39 * GIB, "now the samples carry it");
    // A settled reservation is released without touching the arithmetic.
    assert!(b.release(&r.id).is_some());
    assert!(b.list().is_empty());
}

#[test]
fn active_reservations_expire_and_settled_ones_do_not() {
    let mut b = Book::default();
    let a = b.reserve("a", "g", &claim(GIB, 0)).unwrap();
    let s = b.reserve("a", "h", &claim(GIB, 0)).unwrap();
    b.observe("a", "h", GIB);
    let expired = b.expire(1000 + 60_000);
    assert_eq!(expired.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [a.id]);
    assert_eq!(b.list().iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [s.id]);
    assert_eq!(b.committed("a", "g"), None);
}

#[test]
fn the_book_holds_a_bounded_number_of_reservations() {
    let mut b = Book::new(BookLimits { per_hive: 2, total: 3 });
    b.reserve("a", "g", &claim(1, 0)).unwrap();
    b.reserve("a", "h", &claim(1, 0)).unwrap();
    assert_eq!(b.reserve("a", "g", &claim(1, 0)).unwrap_err(), Refused::HiveFull { limit: 2 });
    let r = b.reserve("b", "g", &claim(1, 0)).unwrap();
    assert_eq!(b.reserve("c", "g", &claim(1, 0)).unwrap_err(), Refused::BookFull { limit: 3 });
    b.release(&r.id).unwrap();
    b.reserve("c", "g", &claim(1, 0)).unwrap();
    assert_eq!(b.len(), 3);
}

#[test]
fn pages_walk_every_reservation_once_in_order() {
    let mut b = Book::default();
    let mut made = Vec::new();
    for i in 0..25u64 {
        let c = Claim { now_ms: 1000 + i / 3, ..claim(1, 0) };
        made.push(b.reserve(&format!("h{}", i % 4), "g", &c).unwrap().id);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = b.page(after.as_ref(), 10);
        assert!(page.reservations.len() <= 10);
        seen.extend(page.reservations.iter().map(|r| r.id.clone()));
        // A reservation dropped between pages does not shift the rest.
        if seen.len() == 10 {
            b.release(&made[24]).unwrap();
        }
        match page.next {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, b.list().iter().map(|r| r.id.clone()).collect::<Vec<_>>());
    assert_eq!(seen.len(), 24);
    assert_eq!(b.page(None, 100).next, None);
}

#[derive(Debug, Clone)]
enum Op {
    Reserve { device: u8, gib: u64, observed: u64 },
    Release(usize),
    Observe { device: u8, observed: u64 },
    Expire(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 1u64..40, 0u64..90).prop_map(|(device, gib, observed)| Op::Reserve {
            device,
            gib,
            observed
        }),
        (0usize..50).prop_map(Op::Release),
        (0u8..3, 0u64..90).prop_map(|(device, observed)| Op::Observe { device, observed }),
        (0u64..120_000).prop_map(Op::Expire),
    ]
}

proptest! {
    /// Whatever happens, no device is ever committed beyond its capacity, and a
    /// successful reservation always fitted the free memory at that moment.
    #[test]
    fn nothing_is_promised_twice(ops in prop::collection::vec(op(), 1..120)) {
        let mut b = Book::default();
        let mut ids: Vec<String> = Vec::new();
        for op in ops {
            match op {
                Op::Reserve { device, gib, observed } => {
                    let observed = observed.min(80) * GIB;
                    let dev = device.to_string();
                    let free = b.free("a", &dev, 80 * GIB, observed);
                    match b.reserve("a", &dev, &claim(gib * GIB, observed)) {
                        Ok(r) => { prop_assert!(r.bytes <= free); ids.push(r.id) }
                        Err(Refused::NoRoom { free }) => prop_assert!(gib * GIB > free),
                        Err(other) => prop_assert!(false, "{other}"),
                    }
                }
                Op::Release(i) => { if let Some(id) = ids.get(i) { b.release(id); } }
                Op::Observe { device, observed } => { b.observe("a", &device.to_string(), observed.min(80) * GIB); }
                Op::Expire(t) => { b.expire(t); }
            }
            for d in 0..3u8 {
                let committed = b.committed("a", &d.to_string()).unwrap_or(0);
                prop_assert!(committed <= 80 * GIB, "device {d} committed {committed}");
            }
            let sums = b.active_bytes();
            for ((_, d), sum) in sums {
                let committed = b.committed("a", &d).unwrap();
                prop_assert!(sum <= committed);
            }
        }
    }
}

/// The book after a restart: every reservation with its start, as the store keeps them.
fn restarted(b: &Book) -> Book {
    let kept = b.list().into_iter().map(|r| (r.clone(), b.start_of(&r.id).unwrap_or(0))).collect();
    let mut again = Book::default();
    again.restore(kept);
    again
}

#[test]
fn a_restored_book_counts_and_settles_as_the_original() {
    let mut b = Book::default();
    let first = b.reserve("a", "g", &claim(10 * GIB, 5 * GIB)).unwrap();
    b.reserve("a", "g", &claim(20 * GIB, 5 * GIB)).unwrap();
    b.reserve("a", "h", &claim(GIB, 0)).unwrap();
    assert_eq!(b.start_of(&first.id), Some(5 * GIB));
    let mut again = restarted(&b);
    assert_eq!(again.list(), b.list());
    for (device, observed) in [("g", 5 * GIB), ("h", 0)] {
        assert_eq!(again.free("a", device, 80 * GIB, observed), b.free("a", device, 80 * GIB, observed));
    }
    assert_eq!(again.expire(1000 + 60_000).len(), 3, "expiry stays absolute");
    // Settlement resumes: the first settles once usage shows it, as it would have.
    let mut again = restarted(&b);
    assert_eq!(again.observe("a", "g", 15 * GIB), std::slice::from_ref(&first.id));
    assert_eq!(again.free("a", "g", 80 * GIB, 15 * GIB), 80 * GIB - 35 * GIB);
}

#[test]
fn a_restored_book_never_counts_less_after_a_release_ahead() {
    let mut b = Book::default();
    let first = b.reserve("a", "g", &claim(10 * GIB, 5 * GIB)).unwrap();
    let second = b.reserve("a", "g", &claim(20 * GIB, 5 * GIB)).unwrap();
    // The second's start was written as 15 GiB; then the first is released.
    let kept = vec![(second.clone(), b.start_of(&second.id).unwrap())];
    b.release(&first.id);
    let mut again = Book::default();
    again.restore(kept);
    assert!(again.free("a", "g", 80 * GIB, 5 * GIB) <= b.free("a", "g", 80 * GIB, 5 * GIB));
}

mod by_process {
    use rbee_shared::{GpuProcess, GpuProcesses};

    use super::*;

    fn procs(list: &[(u32, u64, Option<&str>)]) -> GpuProcesses {
        GpuProcesses {
            listed: list
                .iter()
                .map(|(pid, used, tag)| GpuProcess {
                    pid: *pid,
                    used_vram_bytes: Some(*used),
                    reservation_id: tag.map(str::to_owned),
                    ..GpuProcess::default()
                })
                .collect(),
            ..GpuProcesses::default()
        }
    }

    fn reserve(b: &mut Book, bytes: u64, observed: u64, p: &GpuProcesses) -> Reservation {
        b.reserve("a", "g", &Claim { processes: Some(p), ..claim(bytes, observed) }).unwrap()
    }

    fn state(b: &Book, r: &Reservation) -> ReservationState {
        b.get(&r.id).unwrap().state
    }

    #[test]
    fn another_process_growing_at_the_same_moment_settles_nothing() {
        let mut b = Book::default();
        let before = procs(&[(10, 10 * GIB, None)]);
        let r = reserve(&mut b, 20 * GIB, 10 * GIB, &before);
        // The known process grows by exactly the reserved amount.
        let grown = procs(&[(10, 30 * GIB, None)]);
        assert!(b.settle("a", "g", 30 * GIB, Some(&grown)).is_empty());
        assert_eq!(state(&b, &r), ReservationState::Active);
        // Its growth is not promised to anyone else: 80 - (30 + 20 still to load).
        assert_eq!(b.free("a", "g", 80 * GIB, 30 * GIB), 30 * GIB);
        // The whole-device rule would have settled it (the bug this replaces).
        let mut old = Book::default();
        old.reserve("a", "g", &claim(20 * GIB, 10 * GIB)).unwrap();
        assert_eq!(old.observe("a", "g", 30 * GIB).len(), 1);
        // The worker then shows up, new and big enough: now it settles.
        let loaded = procs(&[(10, 30 * GIB, None), (11, 20 * GIB, None)]);
        assert_eq!(b.settle("a", "g", 50 * GIB, Some(&loaded)).as_slice(), std::slice::from_ref(&r.id));
        assert_eq!(b.free("a", "g", 80 * GIB, 50 * GIB), 30 * GIB);
    }

    #[test]
    fn a_tagged_worker_settles_exactly_its_reservation() {
        let mut b = Book::default();
        let none = procs(&[]);
        let r1 = reserve(&mut b, 10 * GIB, 0, &none);
        let r2 = reserve(&mut b, 20 * GIB, 0, &none);
        // r2's worker, half loaded: nothing settles, and what it holds counts as loaded.
        let half = procs(&[(7, 10 * GIB, Some(&r2.id))]);
        assert!(b.settle("a", "g", 10 * GIB, Some(&half)).is_empty());
        assert_eq!(b.free("a", "g", 80 * GIB, 10 * GIB), 80 * GIB - 30 * GIB);
        // Fully loaded: exactly r2 settles, though r1 is older and would fit.
        let full = procs(&[(7, 20 * GIB, Some(&r2.id))]);
        assert_eq!(b.settle("a", "g", 20 * GIB, Some(&full)).as_slice(), std::slice::from_ref(&r2.id));
        assert_eq!((state(&b, &r1), state(&b, &r2)), (ReservationState::Active, ReservationState::Settled));
        // A worker tagged for another reservation never settles r1 by size.
        let other = procs(&[(7, 20 * GIB, Some(&r2.id)), (8, 40 * GIB, Some("someone-else"))]);
        assert!(b.settle("a", "g", 60 * GIB, Some(&other)).is_empty());
        assert_eq!(state(&b, &r1), ReservationState::Active);
    }

    #[test]
    fn one_new_process_settles_one_reservation() {
        let mut b = Book::default();
        let none = procs(&[]);
        let r1 = reserve(&mut b, 10 * GIB, 0, &none);
        let r2 = reserve(&mut b, 10 * GIB, 0, &none);
        let one = procs(&[(5, 12 * GIB, None)]);
        assert_eq!(b.settle("a", "g", 12 * GIB, Some(&one)).as_slice(), std::slice::from_ref(&r1.id));
        // The same process, seen again and grown, does not settle r2 too.
        let grown = procs(&[(5, 25 * GIB, None)]);
        assert!(b.settle("a", "g", 25 * GIB, Some(&grown)).is_empty());
        assert_eq!(state(&b, &r2), ReservationState::Active);
        let second = procs(&[(5, 25 * GIB, None), (6, 10 * GIB, None)]);
        assert_eq!(b.settle("a", "g", 35 * GIB, Some(&second)).as_slice(), std::slice::from_ref(&r2.id));
    }

    #[test]
    fn without_a_list_the_whole_device_rule_still_applies() {
        let mut b = Book::default();
        let r = b.reserve("a", "g", &claim(20 * GIB, 10 * GIB)).unwrap();
        assert_eq!(b.settle("a", "g", 30 * GIB, None), [r.id]);
    }

    /// The id of a new reservation (settlement by process, `processes.rs`).
    fn reserve_id(b: &mut Book, bytes: u64, observed: u64, p: &GpuProcesses) -> String {
        reserve(b, bytes, observed, p).id
    }

    #[test]
    fn the_workers_of_one_reservation_never_hide_memory_beyond_its_bytes() {
        let mut b = Book::default();
        let none = procs(&[]);
        let small = reserve_id(&mut b, 8 * GIB, 0, &none);
        let big = reserve_id(&mut b, 30 * GIB, 0, &none);
        // Two processes tagged with `small`, 6 GiB each: neither alone holds its 8 GiB.
        // Together they use 12: `small` counts max(8, 12) = 12, and `big` still
        // counts all of its 30. Observed 12: free = 80 - (12 + 30) = 38.
        let two = procs(&[(1, 6 * GIB, Some(&small)), (2, 6 * GIB, Some(&small))]);
        b.settle("a", "g", 12 * GIB, Some(&two));
        assert_eq!(b.free("a", "g", 80 * GIB, 12 * GIB), 38 * GIB, "memory hidden inside `big`");
        assert_eq!(b.get(&small).unwrap().state, ReservationState::Settled);
        assert_eq!(b.get(&big).unwrap().state, ReservationState::Active);
    }

    #[test]
    fn below_its_bytes_a_reservation_counts_its_bytes_and_a_foreign_id_counts_as_used() {
        let mut b = Book::default();
        let none = procs(&[]);
        let r = reserve_id(&mut b, 20 * GIB, 0, &none);
        // Its worker holds 5 of 20; an id naming nothing here holds 30 and counts as used
        // (and, carrying an id, settles nothing by size).
        let p = procs(&[(1, 5 * GIB, Some(&r)), (2, 30 * GIB, Some("forged"))]);
        assert!(b.settle("a", "g", 35 * GIB, Some(&p)).is_empty());
        // 80 - (35 observed + 15 still to load) = 30.
        assert_eq!(b.free("a", "g", 80 * GIB, 35 * GIB), 30 * GIB);
    }

    /// Hostile round 3, F4: the victim reserves 20 GiB of 80; an attacker's untagged
    /// 20 GiB process settles it by size and exits before the victim's worker loads. The
    /// reservation counts again: a 61 GiB reservation is refused (the old book admitted
    /// it: 81 GiB promised on 80).
    #[test]
    fn a_settlement_whose_processes_are_all_gone_counts_again() {
        let mut b = Book::default();
        let none = procs(&[]);
        let victim = reserve_id(&mut b, 20 * GIB, 0, &none);
        let attacker = procs(&[(66, 20 * GIB, None)]);
        assert_eq!(b.settle("a", "g", 20 * GIB, Some(&attacker)), vec![victim.clone()]);
        assert_eq!(b.get(&victim).unwrap().state, ReservationState::Settled);
        // While it is there, its memory is in the samples.
        assert!(b.settle("a", "g", 20 * GIB, Some(&attacker)).is_empty());
        assert_eq!(b.get(&victim).unwrap().state, ReservationState::Settled);
        assert_eq!(b.free("a", "g", 80 * GIB, 20 * GIB), 60 * GIB);
        assert!(b.active_devices().contains(&("a".to_owned(), "g".to_owned())));

        // The attacker exits.
        assert!(b.settle("a", "g", 0, Some(&none)).is_empty());
        assert_eq!(b.get(&victim).unwrap().state, ReservationState::Active);
        assert_eq!(b.free("a", "g", 80 * GIB, 0), 60 * GIB);
        let claim = Claim { processes: Some(&none), ..claim(61 * GIB, 0) };
        assert!(b.reserve("a", "g", &claim).is_err(), "61 GiB promised over a counted 20");
        // The attacker again: another process must hold the bytes to settle it again.
        let again = procs(&[(67, 20 * GIB, None)]);
        assert_eq!(b.settle("a", "g", 20 * GIB, Some(&again)), vec![victim.clone()]);
        // The attacker goes as the victim's own tagged worker loads: undone, and
        // settled again at once by the worker.
        let worker = procs(&[(7, 20 * GIB, Some(&victim))]);
        assert_eq!(b.settle("a", "g", 20 * GIB, Some(&worker)), vec![victim.clone()]);
        assert_eq!(b.get(&victim).unwrap().state, ReservationState::Settled);
        // Released: nothing is undone any more, and the device is no longer watched.
        b.release(&victim);
        assert!(b.settle("a", "g", 0, Some(&none)).is_empty());
        assert!(b.active_devices().is_empty());
    }

    #[test]
    fn a_tagged_worker_that_exits_unreleased_leaves_its_reservation_counting() {
        let mut b = Book::default();
        let none = procs(&[]);
        let r = reserve_id(&mut b, 8 * GIB, 0, &none);
        let w = procs(&[(1, 5 * GIB, Some(&r)), (2, 3 * GIB, Some(&r))]);
        assert_eq!(b.settle("a", "g", 8 * GIB, Some(&w)), vec![r.clone()]);
        // One of its two workers goes: still settled.
        let one = procs(&[(2, 3 * GIB, Some(&r))]);
        assert!(b.settle("a", "g", 3 * GIB, Some(&one)).is_empty());
        assert_eq!(b.get(&r).unwrap().state, ReservationState::Settled);
        // Both gone: it counts again, and expires at its TTL.
        b.settle("a", "g", 0, Some(&none));
        assert_eq!(b.get(&r).unwrap().state, ReservationState::Active);
        assert_eq!(b.free("a", "g", 80 * GIB, 0), 72 * GIB);
        assert_eq!(b.expire(u64::MAX).len(), 1);
        assert_eq!(b.free("a", "g", 80 * GIB, 0), 80 * GIB);
    }

    #[test]
    fn an_undone_settlement_counts_its_bytes_once() {
        let mut b = Book::default();
        let none = procs(&[]);
        let victim = reserve_id(&mut b, 20 * GIB, 0, &none);
        let other = reserve_id(&mut b, 10 * GIB, 0, &none);
        let attacker = procs(&[(66, 20 * GIB, None)]);
        assert_eq!(b.settle("a", "g", 20 * GIB, Some(&attacker)), vec![victim.clone()]);
        // 80 - (20 in the samples + 10 still to load).
        assert_eq!(b.free("a", "g", 80 * GIB, 20 * GIB), 50 * GIB);
        b.settle("a", "g", 0, Some(&none));
        assert_eq!(b.get(&victim).unwrap().state, ReservationState::Active);
        assert_eq!(b.get(&other).unwrap().state, ReservationState::Active);
        // Both count, each once: 80 - 30.
        assert_eq!(b.free("a", "g", 80 * GIB, 0), 50 * GIB);
    }
}

/// Without process lists, a reservation settles only on growth seen on its own device
/// after it was made: never on growth that happened before (here: a simulated load that
/// rose while an older reservation was still active, which was then released), and
/// never on growth on another device.
#[test]
fn growth_from_before_a_reservation_never_settles_it() {
    let mut b = Book::default();
    let old = b.reserve("a", "g", &claim(10 * GIB, 0)).unwrap();
    // A simulated load rises by 5 GiB (the old reservation's model never loads).
    assert!(b.observe("a", "g", 5 * GIB).is_empty());
    let mine = b.reserve("a", "g", &claim(10 * GIB, 5 * GIB)).unwrap();
    b.release(&old.id).unwrap();
    // The load rises by 5 GiB more: 5 GiB since `mine` was made, less than its 10.
    assert!(b.observe("a", "g", 10 * GIB).is_empty(), "settled by growth from before it was made");
    // A load on another GPU of the hive rises by 20 GiB: not `mine`'s device.
    assert!(b.observe("a", "g2", 20 * GIB).is_empty());
    assert_eq!(b.get(&mine.id).unwrap().state, ReservationState::Active);
    // Its own 10 GiB since it was made: settled.
    assert_eq!(b.observe("a", "g", 15 * GIB), std::slice::from_ref(&mine.id));
}

/// With process lists, a process that was there before the reservation grows by 20 GiB:
/// nothing settles.
#[test]
fn a_simulated_load_rising_by_20_gib_settles_nothing() {
    let listed = |vram: u64| rbee_shared::GpuProcesses {
        listed: vec![rbee_shared::GpuProcess { pid: 7, used_vram_bytes: Some(vram), ..Default::default() }],
        ..Default::default()
    };
    let mut b = Book::default();
    let before = listed(2 * GIB);
    let r = b.reserve("a", "g", &Claim { processes: Some(&before), ..claim(20 * GIB, 2 * GIB) }).unwrap();
    let grown = listed(22 * GIB);
    assert!(b.settle("a", "g", 22 * GIB, Some(&grown)).is_empty());
    assert_eq!(b.get(&r.id).unwrap().state, ReservationState::Active);
}

/// The same on a device that lists its processes now, for a reservation made while it
/// did not (the whole-device rule applies to it there too).
#[test]
fn growth_from_before_a_reservation_never_settles_it_once_processes_are_listed() {
    let mut b = Book::default();
    let old = b.reserve("a", "g", &claim(10 * GIB, 0)).unwrap();
    let mine = b.reserve("a", "g", &claim(10 * GIB, 5 * GIB)).unwrap();
    b.release(&old.id).unwrap();
    let none = rbee_shared::GpuProcesses::default();
    assert!(
        b.settle("a", "g", 10 * GIB, Some(&none)).is_empty(),
        "settled by growth from before it was made"
    );
    assert_eq!(b.settle("a", "g", 15 * GIB, Some(&none)), std::slice::from_ref(&mine.id));
}
