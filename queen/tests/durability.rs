//! The state store end to end, with the real `queen` binary: a queen killed with
//! SIGKILL in the middle of a burst of `Place` calls comes back with every reservation
//! it answered OK for, promises no device past its capacity, and keeps the TTLs; a
//! broken store stops it with a clear error; hives added at run time come back and
//! removed ones stay removed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::process::QueenProcess;
use common::scheduling::*;
use common::*;
use rbee_proto::v1 as pb;

const QUEEN: &str = env!("CARGO_BIN_EXE_queen");
const MIB: u64 = 1 << 20;

const GPU_TOTAL: u64 = 24 * GIB;
const GPU_USED: u64 = 4 * GIB;

/// The `queen` binary on a state directory (see [`QueenProcess`]).
struct Queen;

impl Queen {
    /// Starts `queen serve` on `state` managing `hives`, and waits until it serves.
    fn start(state: &Path, hives: &[String], extra: &[&str]) -> QueenProcess {
        QueenProcess::start(serve(state, hives, extra))
    }
}

/// `queen serve` on a loopback port with fast timings and `state` as its state dir. The
/// host CPU rule is off: the test machine's own load must not make hives degraded.
fn serve(state: &Path, hives: &[String], extra: &[&str]) -> Command {
    let config = state.join("calm.toml");
    std::fs::write(&config, "[health]\ncpu_degraded_percent = 101.0\n").unwrap();
    let mut cmd = Command::new(QUEEN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--sample-interval", "200ms", "--lost-timeout", "2s"])
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .args(hives.iter().flat_map(|h| ["--hive", h.as_str()]))
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("QUEEN_CONFIG")
        .env_remove("QUEEN_STATE_DIR")
        .env_remove("QUEEN_RESET_STATE")
        .stdout(Stdio::null());
    cmd
}

/// Waits until every hive the queen manages is online with a sample.
async fn hives_online(queen: &QueenProcess, count: usize) {
    let mut fleet = queen.fleet().await;
    wait_for(&mut fleet, "hives online with samples", |hs| {
        hs.len() == count && hs.iter().all(|h| online(h) && h.latest_sample.is_some())
    })
    .await;
}

fn request(vram: u64, ttl_ms: u32) -> pb::PlaceRequest {
    pb::PlaceRequest {
        model: "m".into(),
        vram_bytes: vram,
        device_kind: pb::DeviceKind::Cuda as i32,
        ttl_ms: Some(ttl_ms),
        ..Default::default()
    }
}

/// No device promised past its capacity: its observed use plus every reservation on it.
fn assert_within_capacity(all: &[pb::Reservation]) {
    let mut per_device: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for r in all {
        assert_eq!(r.state(), pb::ReservationState::Active, "nothing settles on these hives: {r:?}");
        *per_device.entry((&r.address, &r.device_id)).or_default() += r.bytes;
    }
    for ((hive, device), bytes) in per_device {
        assert!(GPU_USED + bytes <= GPU_TOTAL, "{hive}/{device}: {bytes} bytes promised on 20 GiB free");
    }
}

/// What a client was told: the reservation's id and expiry.
type Acked = BTreeMap<String, u64>;

/// 200 concurrent callers place 256 MiB each, again and again; the queen is killed with
/// SIGKILL once 100 placements were answered OK. Returns the acknowledged ones: long
/// (1 h) and short (8 s) TTLs.
async fn burst_and_kill(queen: &mut QueenProcess) -> (Acked, Acked) {
    let client = queen.scheduler().await;
    let oks = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for i in 0..200u32 {
        let mut client = client.clone();
        let oks = oks.clone();
        let ttl_ms = if i % 4 == 0 { 8_000 } else { 3_600_000 };
        callers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for _ in 0..5 {
                match client.place(request(256 * MIB, ttl_ms)).await {
                    Ok(r) => {
                        if let Some(pb::place_response::Result::Placement(p)) = r.into_inner().result {
                            oks.fetch_add(1, Ordering::SeqCst);
                            acked.push((p.reservation_id, p.expires_at_unix_ms, ttl_ms));
                        }
                    }
                    // Every policy worker busy: load, try again.
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {}
                    // The queen is gone: nothing more will be answered.
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while oks.load(Ordering::SeqCst) < 100 {
        assert!(tokio::time::Instant::now() < deadline, "100 placements were not answered in time");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    queen.kill_9();
    let (mut long, mut short) = (Acked::new(), Acked::new());
    for caller in callers {
        for (id, expires, ttl_ms) in caller.await.unwrap() {
            if ttl_ms == 8_000 { &mut short } else { &mut long }.insert(id, expires);
        }
    }
    (long, short)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queen_killed_mid_burst_keeps_every_acknowledged_reservation() {
    let state = tempfile::tempdir().unwrap();
    let hives =
        [TestHive::start_named("hive-a", TWO_GPUS).await, TestHive::start_named("hive-b", TWO_GPUS).await];
    let urls: Vec<String> = hives.iter().map(TestHive::url).collect();

    let mut queen = Queen::start(state.path(), &urls, &[]);
    hives_online(&queen, 2).await;
    let (long, short) = burst_and_kill(&mut queen).await;
    assert!(long.len() + short.len() >= 100, "the kill came after 100 OKs");
    assert!(long.len() + short.len() < 320, "the kill came before the GPUs were full");
    drop(queen);

    let queen = Queen::start(state.path(), &urls, &[]);
    assert!(queen.logged("reservations restored from the state store"));
    let mut client = queen.scheduler().await;
    let listed_at = rbee_shared::time::now_unix_ms();
    let after: BTreeMap<String, u64> =
        all_reservations(&mut client, 50).await.into_iter().map(|r| (r.id, r.expires_at_unix_ms)).collect();
    for (id, expires) in &long {
        assert_eq!(after.get(id), Some(expires), "reservation {id} was answered OK and is gone (or changed)");
    }
    let mut short_kept = 0;
    for (id, expires) in &short {
        match after.get(id) {
            Some(kept) => {
                assert_eq!(kept, expires, "a TTL continues from its absolute expiry");
                short_kept += 1;
            }
            None => assert!(*expires <= listed_at + 1_000, "reservation {id} is gone before its expiry"),
        }
    }

    // The restored books still count: filling the GPUs up never goes past their capacity.
    hives_online(&queen, 2).await;
    let mut more = 0;
    while let Ok(r) = client.place(request(256 * MIB, 3_600_000)).await {
        match r.into_inner().result {
            Some(pb::place_response::Result::Placement(_)) => more += 1,
            _ => break,
        }
        assert!(more <= 320, "placed past the GPUs' capacity");
    }
    let all = all_reservations(&mut client, 50).await;
    assert_within_capacity(&all);
    assert!(all.len() <= 320, "{} reservations of 256 MiB on 80 GiB free", all.len());

    // The short TTLs set before the kill still fire after the restart, with an event.
    let last_short = short.values().copied().max().unwrap_or(0);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let ids: BTreeSet<String> =
            all_reservations(&mut client, 50).await.into_iter().map(|r| r.id).collect();
        if short.keys().all(|id| !ids.contains(id)) {
            assert!(long.keys().all(|id| ids.contains(id)), "a 1 h reservation expired");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "short TTLs did not expire after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rbee_shared::time::now_unix_ms() >= last_short, "nothing expired early");
    if short_kept > 0 {
        queen.wait_logged("expired before the model showed up").await;
    }
}

/// Writes a store holding one reservation in `dir`, then breaks it with `broken`.
fn broken_store(dir: &Path, broken: impl FnOnce(&[u8]) -> Vec<u8>) -> std::path::PathBuf {
    {
        let store = rbee_queen::store::StateStore::open(dir).unwrap();
        store
            .put_reservations(&[rbee_queen::store::ReservationRecord {
                id: "r".into(),
                hive_id: "h".into(),
                address: "http://127.0.0.1:9".into(),
                device_id: "GPU-0".into(),
                model: "m".into(),
                bytes: GIB,
                settled: false,
                created_at_unix_ms: 1,
                expires_at_unix_ms: 2,
                baseline_bytes: 0,
                keyed: None,
                gang: Vec::new(),
            }])
            .unwrap();
    }
    let path = dir.join(rbee_queen::store::STATE_FILE);
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, broken(&full)).unwrap();
    path
}

/// Runs `queen serve` to its exit (it must exit on its own, quickly).
fn serve_to_exit(state: &Path) -> (std::process::ExitStatus, String) {
    serve_to_exit_with(state, &[])
}

fn serve_to_exit_with(state: &Path, extra: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = serve(state, &[], extra).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the queen started on a broken store instead of stopping");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

#[test]
fn a_truncated_or_garbage_store_stops_the_queen_and_reset_state_starts_it() {
    type Breaker = fn(&[u8]) -> Vec<u8>;
    let breakers: [(&str, Breaker); 2] = [
        ("truncated", |full| full[..full.len() / 3].to_vec()),
        ("garbage", |_| b"this is not a database".repeat(100)),
    ];
    for (how, breaker) in breakers {
        let state = tempfile::tempdir().unwrap();
        let path = broken_store(state.path(), breaker);
        let (status, err) = serve_to_exit(state.path());
        assert!(!status.success(), "{how}: {status:?}");
        assert!(err.contains(&path.display().to_string()), "{how}: the error names the file: {err}");
        assert!(err.contains("--reset-state"), "{how}: the error says the way out: {err}");
        assert!(!err.contains("panicked"), "{how}: {err}");

        let queen = Queen::start(state.path(), &[], &["--reset-state"]);
        assert!(queen.logged("moved aside"), "{how}: where the old file went is logged");
        let kept: Vec<_> = std::fs::read_dir(state.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("queen.redb.broken-"))
            .collect();
        assert_eq!(kept.len(), 1, "{how}: the broken file is kept for inspection");
    }
}

/// One flipped bit in a kept reservation ("127.0.0.1" becomes "127,0.0.1"): the record
/// still parses, but its checksum does not match. The queen refuses to start, naming
/// the record and why, instead of dropping the reservation (and its memory) as one on a
/// removed hive. (A record written before checksums is validated instead: see the etcd
/// test of the same damage.)
#[test]
fn a_reservation_record_with_a_flipped_bit_stops_the_start_naming_it() {
    let state = tempfile::tempdir().unwrap();
    let path = broken_store(state.path(), |full| {
        let at = full.windows(9).position(|w| w == b"127.0.0.1").expect("the record's address in the file");
        let mut flipped = full.to_vec();
        flipped[at + 3] ^= 0x02; // '.' (0x2e) -> ',' (0x2c)
        flipped
    });
    let (status, err) = serve_to_exit(state.path());
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(&path.display().to_string()), "the error names the file: {err}");
    assert!(err.contains("record \"r\""), "the error names the record: {err}");
    assert!(err.contains("damaged"), "the error says why: {err}");
    assert!(err.contains("backup") && err.contains("--reset-state"), "the error says the way out: {err}");
}

/// A state file whose damage makes redb panic (inside a commit, again when the broken
/// database is dropped, or again while unwinding, which aborts): the queen stops with an
/// error naming the file and the way out, never with a panic's exit 101 or SIGABRT, and
/// `--reset-state` moves the file aside. (The damage found by flipping single bits of
/// a store of 200 reservations written in 20 transactions; before the fix, each of these
/// exited 101 from `Drop for Database`.)
#[test]
fn a_state_file_that_makes_redb_panic_is_an_error_exit_not_a_crash() {
    // The first two abort the process when redb opens them (a panic while unwinding);
    // the others panic once, then again when the database is dropped.
    for (at, bit) in [(8194, 3), (8195, 0), (8227, 0), (8228, 0), (8229, 3), (8236, 6)] {
        let state = tempfile::tempdir().unwrap();
        {
            let store = rbee_queen::store::StateStore::open(state.path()).unwrap();
            for i in 0..20 {
                let many: Vec<_> = (0..10)
                    .map(|j| rbee_queen::store::ReservationRecord {
                        id: format!("r{i}-{j}"),
                        hive_id: "h".into(),
                        address: "http://127.0.0.1:7835".into(),
                        device_id: "GPU-0".into(),
                        model: "m".into(),
                        bytes: 5,
                        settled: false,
                        created_at_unix_ms: 1,
                        expires_at_unix_ms: 2,
                        baseline_bytes: 3,
                        keyed: None,
                        gang: Vec::new(),
                    })
                    .collect();
                store.put_reservations(&many).unwrap();
            }
        }
        let path = state.path().join(rbee_queen::store::STATE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at] ^= 1 << bit;
        std::fs::write(&path, &bytes).unwrap();
        let (status, err) = serve_to_exit(state.path());
        assert_eq!(status.code(), Some(1), "byte {at} bit {bit}: a clear error exit, not a crash: {err}");
        assert!(err.contains(&path.display().to_string()), "byte {at}: the error names the file: {err}");
        assert!(err.contains("the file is corrupt (") && err.contains("--reset-state"), "byte {at}: {err}");
        let queen = Queen::start(state.path(), &[], &["--reset-state"]);
        assert!(queen.logged("moved aside"), "byte {at}: --reset-state recovers: {:?}", queen.log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hives_added_at_run_time_come_back_and_removed_ones_do_not() {
    let state = tempfile::tempdir().unwrap();
    let configured = TestHive::start_named("configured", ONE_GPU).await;
    let added = TestHive::start_named("added", ONE_GPU).await;
    let removed = TestHive::start_named("removed", ONE_GPU).await;
    let configured_url = [configured.url()];

    let mut queen = Queen::start(state.path(), &configured_url, &[]);
    let mut fleet = queen.fleet().await;
    for hive in [&added, &removed] {
        let r = fleet.add_hive(pb::AddHiveRequest { address: hive.url() }).await.unwrap().into_inner();
        assert!(r.added);
    }
    for hive in [&removed, &configured] {
        fleet.remove_hive(pb::RemoveHiveRequest { hive: hive.url() }).await.unwrap();
    }
    queen.kill_9();
    drop(queen);

    let queen = Queen::start(state.path(), &configured_url, &[]);
    let mut fleet = queen.fleet().await;
    let hives = fleet.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives;
    let addresses: Vec<&str> = hives.iter().map(|h| h.address.as_str()).collect();
    assert_eq!(addresses, [added.url()], "only the added hive is managed after the restart");
    hives_online(&queen, 1).await;

    // Adding the removed configured hive again brings it back for good.
    fleet.add_hive(pb::AddHiveRequest { address: configured.url() }).await.unwrap();
    drop(queen);
    let queen = Queen::start(state.path(), &configured_url, &[]);
    let hives =
        queen.fleet().await.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives;
    assert_eq!(hives.len(), 2, "{hives:?}");
}

#[test]
fn a_second_queen_on_the_same_state_dir_refuses_to_start() {
    let state = tempfile::tempdir().unwrap();
    let _first = Queen::start(state.path(), &[], &[]);
    for extra in [&[][..], &["--reset-state"][..]] {
        let (status, err) = serve_to_exit_with(state.path(), extra);
        assert!(!status.success(), "{status:?}");
        assert!(err.contains("in use by another queen"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_on_the_local_hive_follow_it_to_its_new_port() {
    let state = tempfile::tempdir().unwrap();
    let local = ["--local-hive", "--local-hive-demo"];
    let mut queen = Queen::start(state.path(), &[], &local);
    hives_online(&queen, 1).await;
    let placed = queen.scheduler().await.place(request(GIB, 3_600_000)).await.unwrap().into_inner();
    let Some(pb::place_response::Result::Placement(p)) = placed.result else {
        panic!("rejected: {placed:?}")
    };
    queen.kill_9();
    drop(queen);

    let queen = Queen::start(state.path(), &[], &local);
    queen.wait_logged("kept reservations follow the local hive").await;
    hives_online(&queen, 1).await;
    let hive =
        queen.fleet().await.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives;
    assert_ne!(hive[0].address, p.address, "the local hive listens on a new port");
    // Several upkeeps (every second) later, the reservation is still held, on the new address.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let all = all_reservations(&mut queen.scheduler().await, 50).await;
    let kept: Vec<_> = all.iter().filter(|r| r.id == p.reservation_id).collect();
    assert_eq!(kept.len(), 1, "{all:?}");
    assert_eq!(kept[0].address, hive[0].address);
}
