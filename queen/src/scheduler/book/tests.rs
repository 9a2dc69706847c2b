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
}
