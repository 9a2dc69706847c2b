//! Scheduler tests over synthetic fleets: the shipped policies, the sandbox, the
//! decisions a script can return, and admission control.

use std::sync::Arc;
use std::time::Duration;

use super::policy::{Limits, PolicyError, PolicyRuntime};
use super::request::PlaceRequest;
use super::synthetic::hive;
use super::*;
use crate::fleet::ConnState;

const GIB: u64 = 1 << 30;

/// Settings for tests that are not about the budget: a wall-time budget that a loaded
/// test machine does not break (the sandbox tests set their own).
fn calm() -> SchedulerSettings {
    let mut s = SchedulerSettings::default();
    s.limits.budget = Duration::from_secs(2);
    s
}

fn scheduler(hives: Vec<Arc<HiveSnapshot>>, settings: SchedulerSettings) -> Arc<Scheduler> {
    Scheduler::new(Arc::new(StaticHives(hives)), settings).unwrap()
}

fn with_policy(text: &str) -> (Arc<Scheduler>, tempfile::NamedTempFile) {
    with_policy_settings(text, calm())
}

fn with_policy_settings(
    text: &str,
    settings: SchedulerSettings,
) -> (Arc<Scheduler>, tempfile::NamedTempFile) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    let settings = SchedulerSettings { policy_file: Some(file.path().to_owned()), ..settings };
    (scheduler(small_fleet(), settings), file)
}

/// hive-a: 2 x 24 GiB, 20 GiB used, busy. hive-b: 2 x 24 GiB, 4 GiB used, idle (zone us).
/// hive-c: 1 x 80 GiB, 10 GiB used, stale.
fn small_fleet() -> Vec<Arc<HiveSnapshot>> {
    vec![
        hive("hive-a", 2, 24, 20, 90.0, ConnState::Online, &[("zone", "eu")]),
        hive("hive-b", 2, 24, 4, 5.0, ConnState::Online, &[("zone", "us")]),
        hive("hive-c", 1, 80, 10, 0.0, ConnState::Stale, &[("zone", "eu")]),
    ]
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

fn policy_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/policies/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_default_policy_picks_the_least_loaded_healthy_online_device() {
    let s = scheduler(small_fleet(), calm());
    let p = placed(s.place_blocking(&PlaceRequest::gpu(2 * GIB)).unwrap());
    assert_eq!(p.hive_id, "hive-b");
    assert_eq!(p.device_id, "GPU-hive-b-0", "utilisation 5% beats 6%");
    assert_eq!(p.policy, "built-in:least-loaded");
    let r = p.reservation.unwrap();
    assert_eq!((r.bytes, r.state), (2 * GIB, book::ReservationState::Active));
    assert_eq!(p.free_after, 24 * GIB - 4 * GIB - 2 * GIB);
}

#[test]
fn the_bin_pack_policy_fills_the_fullest_device_that_fits() {
    let (s, _f) = with_policy(&policy_file("bin-pack.rhai"));
    let p = placed(s.place_blocking(&PlaceRequest::gpu(2 * GIB)).unwrap());
    assert_eq!(p.hive_id, "hive-a", "hive-a has 4 GiB free: the tightest fit");
    // Nothing in the fleet has 21 GiB free on one healthy online GPU.
    let (reason, per_hive) = rejected(s.place_blocking(&PlaceRequest::gpu(21 * GIB)).unwrap());
    assert!(reason.contains("21.0 GiB"), "{reason}");
    assert!(per_hive.contains(&"hive-b/GPU-hive-b-0: 20.0 GiB free < 21.0 GiB".to_string()), "{per_hive:?}");
    assert!(per_hive.iter().any(|r| r.starts_with("hive-c: stale")), "{per_hive:?}");
}

#[test]
fn the_zone_policy_prefers_the_zone_and_falls_back() {
    let (s, _f) = with_policy(&policy_file("zone-affinity.rhai"));
    let mut req = PlaceRequest::gpu(2 * GIB);
    req.labels.insert("prefer_zone".into(), "eu".into());
    assert_eq!(placed(s.place_blocking(&req).unwrap()).hive_id, "hive-a", "eu first");
    req.vram_bytes = 10 * GIB;
    assert_eq!(placed(s.place_blocking(&req).unwrap()).hive_id, "hive-b", "eu is full: fall back to us");
}

#[test]
fn a_label_constraint_filters_hives_and_says_why() {
    let s = scheduler(small_fleet(), calm());
    let mut req = PlaceRequest::gpu(GIB);
    req.labels.insert("zone".into(), "eu".into());
    assert_eq!(placed(s.place_blocking(&req).unwrap()).hive_id, "hive-a");
    req.labels.insert("zone".into(), "ap".into());
    let (_, reasons) = rejected(s.place_blocking(&req).unwrap());
    assert!(reasons.contains(&"hive-a: label zone=eu, wanted zone=ap".to_string()), "{reasons:?}");
}

#[test]
fn reservations_are_counted_and_dry_runs_reserve_nothing() {
    let s = scheduler(vec![hive("solo", 1, 24, 4, 0.0, ConnState::Online, &[])], calm());
    let dry = PlaceRequest { dry_run: true, ..PlaceRequest::gpu(20 * GIB) };
    let p = placed(s.place_blocking(&dry).unwrap());
    assert!(p.reservation.is_none());
    assert_eq!(p.free_after, 0);
    assert!(s.reservations().is_empty());
    let first = placed(s.place_blocking(&PlaceRequest::gpu(12 * GIB)).unwrap());
    let (_, reasons) = rejected(s.place_blocking(&PlaceRequest::gpu(12 * GIB)).unwrap());
    assert_eq!(reasons, ["solo/GPU-solo-0: 8.0 GiB free < 12.0 GiB"]);
    s.release(&first.reservation.unwrap().id).unwrap();
    placed(s.place_blocking(&PlaceRequest::gpu(12 * GIB)).unwrap());
    let unknown = s.release("nope").unwrap_err();
    assert!(matches!(unknown, QueenError::NoReservation(_)));
    assert!(unknown.to_string().starts_with("no reservation \"nope\""), "{unknown}");
}

#[test]
fn a_policy_may_return_a_map_or_reject_with_its_own_reason() {
    let (s, _f) = with_policy(r#"fn place(request, fleet) { #{ hive: "hive-a", device: "GPU-hive-a-1" } }"#);
    let p = placed(s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap());
    assert_eq!((p.hive_id.as_str(), p.device_id.as_str()), ("hive-a", "GPU-hive-a-1"));
    let (s, _f) = with_policy(r#"fn place(request, fleet) { reject("maintenance window") }"#);
    let (reason, per_hive) = rejected(s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap());
    assert_eq!(reason, "maintenance window");
    assert!(!per_hive.is_empty());
    let (s, _f) = with_policy(r#"fn place(request, fleet) { #{ hive: "hive-c", device: "GPU-hive-c-0" } }"#);
    let (_, per_hive) = rejected(s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap());
    assert!(per_hive[0].contains("stale"), "a policy cannot place on a stale hive: {per_hive:?}");
}

#[test]
fn scripts_can_walk_the_fleet() {
    let (s, _f) = with_policy(
        r#"
        fn place(request, fleet) {
            let best = ();
            for h in fleet.hives {
                if !h.online || !h.healthy { continue; }
                for d in h.devices {
                    if d.kind == "cuda" && d.vram_free >= request.vram && (best == () || d.vram_free > best.vram_free) {
                        best = d;
                    }
                }
            }
            best
        }"#,
    );
    let p = placed(s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap());
    assert_eq!(p.hive_id, "hive-b", "most free VRAM");
}

#[test]
fn a_runaway_script_gets_a_clear_error_with_its_position_and_is_counted() {
    let runaway = "fn place(request, fleet) {\n    let x = 0;\n    loop { x += 1; }\n}\n";
    let (s, _f) = with_policy_settings(runaway, SchedulerSettings::default());
    let err = s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap_err().to_string();
    assert!(err.contains("wall-time budget") || err.contains("operations"), "{err}");
    assert!(err.contains("(line 3, column"), "the position inside the loop: {err}");
    assert_eq!(s.status().failures, 1);
    // A failing script: the message and position come through.
    let (s, _f) = with_policy("fn place(request, fleet) {\n  fleet.hives[0].nope()\n}");
    let err = s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("line 2"), "{err}");
}

#[test]
fn the_budget_and_operation_limits_both_stop_a_script() {
    let rt = PolicyRuntime::new(Limits { budget: Duration::from_millis(5), ..Limits::default() });
    let p = rt.compile("t", "fn place(r, f) { let x = 0; loop { x += 1; } }").unwrap();
    let view = view::FleetView { hives: Arc::new(small_fleet()), book: Default::default(), index: None };
    let e = rt.run(&p, &PlaceRequest::gpu(1), &view).unwrap_err();
    assert!(e.to_string().contains("5 ms wall-time budget"), "{e}");
    let rt = PolicyRuntime::new(Limits {
        max_operations: 1000,
        budget: Duration::from_secs(10),
        ..Limits::default()
    });
    let p = rt.compile("t", "fn place(r, f) { let x = 0; loop { x += 1; } }").unwrap();
    let e = rt.run(&p, &PlaceRequest::gpu(1), &view).unwrap_err();
    assert!(e.to_string().contains("1000 operations"), "{e}");
    let p = rt.compile("t", "fn place(r, f) { let s = \"x\"; loop { s += s; } }").unwrap();
    assert!(rt.run(&p, &PlaceRequest::gpu(1), &view).is_err(), "string size is limited");
}

#[test]
fn a_failing_policy_can_fall_back_to_the_default() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, b"fn place(request, fleet) { throw \"boom\"; }").unwrap();
    let settings =
        SchedulerSettings { policy_file: Some(file.path().to_owned()), fallback_to_default: true, ..calm() };
    let s = scheduler(small_fleet(), settings);
    let p = placed(s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap());
    assert!(p.fallback);
    assert_eq!(p.policy, "built-in:least-loaded");
    let st = s.status();
    assert_eq!((st.failures, st.fallbacks), (1, 1));
    assert!(st.last_error.unwrap().contains("boom"));
}

#[test]
fn syntax_errors_and_missing_place_are_refused_with_positions() {
    let rt = PolicyRuntime::new(Limits::default());
    let e = rt.compile("t", "fn place(request, fleet) {\n  let x = ;\n}").unwrap_err();
    assert_eq!(e.position().line, Some(2));
    assert!(e.to_string().contains("line 2, column"), "{e}");
    let e = rt.compile("t", "fn choose(a, b) { () }").unwrap_err();
    assert_eq!(e, PolicyError::NoPlaceFn);
}

#[test]
fn a_broken_edit_keeps_the_old_policy_and_a_good_one_replaces_it() {
    let (s, file) = with_policy(&policy_file("least-loaded.rhai"));
    std::fs::write(file.path(), "fn place(request, fleet) { let = }").unwrap();
    s.reload_once();
    assert_eq!(s.status().reload_failures, 1);
    assert_eq!(
        placed(s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap()).hive_id,
        "hive-b",
        "old policy still in use"
    );
    // Compiles but fails when test-run on the fleet: refused too.
    std::fs::write(file.path(), "fn place(request, fleet) { fleet.nope }").unwrap();
    s.reload_once();
    assert_eq!(s.status().reload_failures, 2);
    std::fs::write(file.path(), policy_file("bin-pack.rhai")).unwrap();
    s.reload_once();
    assert_eq!(placed(s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap()).hive_id, "hive-a", "bin-pack now");
}

#[test]
fn cpu_placements_reserve_ram() {
    let s = scheduler(vec![hive("cpu-only", 0, 0, 0, 10.0, ConnState::Online, &[])], calm());
    let req = PlaceRequest {
        kind: request::DeviceKind::Cpu,
        vram_bytes: 0,
        ram_bytes: Some(100 * GIB),
        ..PlaceRequest::gpu(0)
    };
    let p = placed(s.place_blocking(&req).unwrap());
    assert_eq!(p.device_id, "cpu");
    assert_eq!(p.bytes, 100 * GIB);
}

#[test]
fn reservations_on_a_hive_lost_past_the_grace_are_dropped() {
    let lost_long_ago = {
        let mut h = HiveSnapshot::clone(&hive("gone", 1, 24, 0, 0.0, ConnState::Online, &[]));
        h.state = ConnState::Lost;
        h.state_since_unix_ms = rbee_shared::time::now_unix_ms() - 120_000;
        Arc::new(h)
    };
    let online = hive("gone", 1, 24, 0, 0.0, ConnState::Online, &[]);
    let source = Arc::new(Swap(std::sync::Mutex::new(vec![online])));
    let s = Scheduler::new(source.clone(), calm()).unwrap();
    placed(s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap());
    s.upkeep_once();
    assert_eq!(s.reservations().len(), 1, "kept while online");
    *source.0.lock().unwrap() = vec![lost_long_ago];
    s.upkeep_once();
    assert!(s.reservations().is_empty(), "dropped: lost for 120 s > 60 s grace");
}

/// A restart whose fleet leaves out a hive that holds reservations keeps them, counted,
/// through the lost grace (and says so), where a hive removed at run time takes its
/// reservations at once.
#[test]
fn reservations_on_a_hive_missing_from_the_fleet_are_kept_through_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let both = || {
        vec![
            hive("kept", 1, 24, 0, 0.0, ConnState::Online, &[]),
            hive("left-out", 1, 24, 0, 0.0, ConnState::Online, &[]),
        ]
    };
    {
        let s = durable_scheduler(dir.path(), both());
        for _ in 0..4 {
            placed(s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap());
        }
        assert_eq!(s.reservations().len(), 4);
    }
    // Restarted with "left-out" no longer configured.
    let source =
        Arc::new(Swap(std::sync::Mutex::new(vec![hive("kept", 1, 24, 0, 0.0, ConnState::Online, &[])])));
    let store = Arc::new(crate::store::StateStore::open(dir.path()).unwrap());
    let kept = store.load().unwrap();
    let s = Scheduler::durable(source.clone(), calm(), store, kept.reservations).unwrap();
    let on_left_out = s.reservations().iter().filter(|r| r.hive_id == "left-out").count();
    assert!(on_left_out > 0, "the bin-pack or spread put some on left-out: {:?}", s.reservations());
    for _ in 0..3 {
        s.upkeep_once();
    }
    assert_eq!(s.reservations().len(), 4, "none dropped within the 60 s grace");
    assert_eq!(s.status().kept_on_missing_hives, on_left_out as u64);
    // A hive that was in the fleet during this run and is removed takes its own at once.
    *source.0.lock().unwrap() = vec![];
    s.upkeep_once();
    assert_eq!(
        s.reservations().len(),
        on_left_out,
        "the removed hive's went; the never-seen hive's stay: {:?}",
        s.reservations()
    );
}

/// A record corrupted into nonsense (a flipped bit in its address) stops the start.
#[test]
fn an_unsound_kept_record_stops_the_start_naming_it() {
    let record = crate::store::ReservationRecord {
        id: "r-1".into(),
        hive_id: "h".into(),
        address: "http://127,0.0.1:7835".into(),
        device_id: "GPU-0".into(),
        model: "m".into(),
        bytes: GIB,
        settled: false,
        created_at_unix_ms: 1,
        expires_at_unix_ms: 2,
        baseline_bytes: 0,
        keyed: None,
        gang: Vec::new(),
    };
    let store = Arc::new(crate::store::TestStore { leader: crate::store::Leader::Me, refused: &[] });
    let Err(err) = Scheduler::durable(Arc::new(StaticHives(small_fleet())), calm(), store, vec![record])
    else {
        panic!("started with an unsound record")
    };
    let text = err.to_string();
    assert!(text.contains("\"r-1\"") && text.contains("127,0.0.1"), "{text}");
}

/// A hive source whose hives a test can swap.
struct Swap(std::sync::Mutex<Vec<Arc<HiveSnapshot>>>);

impl HiveSource for Swap {
    fn hives(&self) -> Vec<Arc<HiveSnapshot>> {
        self.0.lock().unwrap().clone()
    }
}

/// A scheduler kept in `dir`, restored from what the store holds (as `run` does).
fn durable_scheduler(dir: &std::path::Path, hives: Vec<Arc<HiveSnapshot>>) -> Arc<Scheduler> {
    let store = Arc::new(crate::store::StateStore::open(dir).unwrap());
    let kept = store.load().unwrap();
    Scheduler::durable(Arc::new(StaticHives(hives)), calm(), store, kept.reservations).unwrap()
}

#[test]
fn a_durable_scheduler_keeps_what_it_promised_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = || vec![hive("hive-b", 1, 24, 4, 5.0, ConnState::Online, &[])];
    let (kept, released) = {
        let s = durable_scheduler(dir.path(), fleet());
        let short = PlaceRequest { ttl: Duration::from_millis(1), ..PlaceRequest::gpu(2 * GIB) };
        placed(s.place_blocking(&short).unwrap());
        let kept = placed(s.place_blocking(&PlaceRequest::gpu(8 * GIB)).unwrap()).reservation.unwrap();
        let released = placed(s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap()).reservation.unwrap();
        s.release(&released.id).unwrap();
        (kept, released)
    };
    let s = durable_scheduler(dir.path(), fleet());
    let ids: Vec<String> = s.reservations().into_iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 2, "the expired one is still there until the first upkeep");
    assert!(ids.contains(&kept.id) && !ids.contains(&released.id));
    let mut events = s.subscribe();
    s.upkeep_once();
    assert!(matches!(events.try_recv(), Ok(SchedulerEvent::ReservationDropped { .. })));
    assert_eq!(s.reservations(), [kept]);
    // 24 GiB - 4 used - 8 kept: 12 GiB free, and no more.
    rejected(s.place_blocking(&PlaceRequest::gpu(13 * GIB)).unwrap());
    placed(s.place_blocking(&PlaceRequest::gpu(12 * GIB)).unwrap());
    drop(s);
    let store = crate::store::StateStore::open(dir.path()).unwrap();
    let policy = store.load().unwrap().policy.unwrap();
    assert_eq!(policy.source, "built-in:least-loaded");
    assert_eq!(policy.sha256.len(), 64);
}

/// A release whose removal cannot be kept changes nothing: the reservation stays in the
/// books and its memory stays counted, so it is not promised again while the store
/// (and the queen after a restart) still holds it.
#[test]
fn a_release_that_cannot_be_kept_keeps_the_memory_counted() {
    let fleet = Arc::new(StaticHives(vec![hive("solo", 1, 24, 4, 0.0, ConnState::Online, &[])]));
    // A disk that filled up between the placement and the release.
    let cannot_forget =
        crate::store::TestStore { leader: crate::store::Leader::Me, refused: &["forget_reservations"] };
    let s = Scheduler::durable(fleet, calm(), Arc::new(cannot_forget), Vec::new()).unwrap();
    let first = placed(s.place_blocking(&PlaceRequest::gpu(12 * GIB)).unwrap()).reservation.unwrap();
    let refused = s.release(&first.id).unwrap_err();
    assert!(refused.to_string().contains("No space left"), "{refused}");
    assert_eq!(s.reservations().len(), 1, "the reservation is still held");
    let (_, reasons) = rejected(s.place_blocking(&PlaceRequest::gpu(12 * GIB)).unwrap());
    assert_eq!(reasons, ["solo/GPU-solo-0: 8.0 GiB free < 12.0 GiB"]);
}

proptest::proptest! {
    /// Keeping only the best `n` while walking the fleet ranks exactly as sorting every
    /// device would, ties included.
    #[test]
    fn ranking_the_best_n_equals_the_head_of_the_full_ranking(
        hives in proptest::collection::vec((1usize..4, 0u64..80, 0usize..3), 1..30),
        n in 1usize..12,
        vram_gib in 1u64..40,
    ) {
        let fleet: Vec<Arc<HiveSnapshot>> = hives
            .iter()
            .enumerate()
            .map(|(i, &(gpus, used, load))| {
                hive(&format!("h{i:02}"), gpus, 80, used, [0.0, 10.0, 50.0][load], ConnState::Online, &[])
            })
            .collect();
        let view = view::FleetView { hives: Arc::new(fleet), book: Default::default(), index: None };
        let req = PlaceRequest::gpu(vram_gib * GIB);
        for order in [view::Order::LeastLoaded, view::Order::BinPack, view::Order::NearestWeights] {
            let ids = |d: Vec<view::DeviceRef>| -> Vec<(String, String)> {
                d.into_iter().map(|d| (d.hive.address.clone(), d.id)).collect()
            };
            let all = ids(view::rank(&view, &req, order, 0));
            let head = ids(view::rank(&view, &req, order, n));
            proptest::prop_assert_eq!(&head[..], &all[..n.min(all.len())], "{:?}", order);
        }
    }
}

mod index;
mod keyed;
mod summary;

/// A state disk that hangs: every commit returns only once `thaw_at` has passed. It
/// keeps the ids it holds, as a real store would.
#[derive(Debug)]
struct HungDisk {
    thaw_at: std::time::Instant,
    commits: std::sync::atomic::AtomicUsize,
    kept: std::sync::Mutex<Vec<String>>,
}

impl HungDisk {
    fn thawing_at(thaw_at: std::time::Instant) -> Arc<Self> {
        Arc::new(Self { thaw_at, commits: 0.into(), kept: std::sync::Mutex::default() })
    }
    fn kept(&self) -> Vec<String> {
        self.kept.lock().unwrap().clone()
    }
}

impl crate::store::Store for HungDisk {
    fn describe(&self) -> String {
        "a hung disk".into()
    }
    fn commit_placed(
        &self,
        r: &crate::store::ReservationRecord,
        _: u64,
    ) -> Result<(), crate::store::StoreError> {
        while let Some(left) = self.thaw_at.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(left);
        }
        self.commits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.kept.lock().unwrap().push(r.id.clone());
        Ok(())
    }
    fn update_reservations(
        &self,
        _: &[crate::store::ReservationRecord],
    ) -> Result<(), crate::store::StoreError> {
        Ok(())
    }
    fn forget_reservations(&self, ids: &[&str]) -> Result<(), crate::store::StoreError> {
        self.kept.lock().unwrap().retain(|k| !ids.contains(&k.as_str()));
        Ok(())
    }
    fn keep_hive(&self, _: &crate::store::HiveRecord) -> Result<(), crate::store::StoreError> {
        Ok(())
    }
    fn keep_ended(&self, _: &[crate::store::EndedRecord]) -> Result<(), crate::store::StoreError> {
        Ok(())
    }
    fn forget_ended(&self, _: &[&str]) -> Result<(), crate::store::StoreError> {
        Ok(())
    }
    fn keep_policy(&self, _: &crate::store::PolicyRecord) -> Result<(), crate::store::StoreError> {
        Ok(())
    }
    fn leader(&self) -> crate::store::Leader {
        crate::store::Leader::Me
    }
}

#[test]
fn a_place_committed_after_the_callers_deadline_is_released_and_says_so() {
    let now = std::time::Instant::now();
    let deadline = now + Duration::from_secs(1);
    // The disk thaws after the caller has given up.
    let disk = HungDisk::thawing_at(deadline + Duration::from_millis(100));
    let s = Scheduler::durable(Arc::new(StaticHives(small_fleet())), calm(), disk.clone(), vec![]).unwrap();
    let req = PlaceRequest { deadline: Some(deadline), ..PlaceRequest::gpu(GIB) };
    let err = s.place_blocking(&req).expect_err("a placement answered after the caller's deadline");
    assert!(matches!(err, QueenError::DeadlineExceeded(_)), "{err}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::DeadlineExceeded);
    assert_eq!(disk.commits.load(std::sync::atomic::Ordering::SeqCst), 1, "it reached the disk");
    assert!(disk.kept().is_empty(), "the late commit is released in the store: {:?}", disk.kept());
    assert!(s.reservations().is_empty(), "nothing stays promised: {:?}", s.reservations());
    // Without a deadline the same placement is kept.
    let kept = placed(s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap());
    assert_eq!(disk.kept(), vec![kept.reservation.unwrap().id]);
}

#[test]
fn a_place_whose_deadline_passed_before_the_commit_never_reaches_the_disk() {
    let disk = HungDisk::thawing_at(std::time::Instant::now());
    let s = Scheduler::durable(Arc::new(StaticHives(small_fleet())), calm(), disk.clone(), vec![]).unwrap();
    let req = PlaceRequest { deadline: Some(std::time::Instant::now()), ..PlaceRequest::gpu(GIB) };
    let err = s.place_blocking(&req).expect_err("a placement after the caller's deadline");
    assert!(matches!(err, QueenError::DeadlineExceeded(_)), "{err}");
    assert_eq!(disk.commits.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing was written");
    assert!(s.reservations().is_empty());
}
mod cpu;
mod figures;
