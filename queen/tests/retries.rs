//! Placement a client can retry and keep alive, end to end with the real `queen` binary
//! on a state directory and a simulated hive:
//!
//! - 50 concurrent `Place` calls sharing 5 request ids make exactly 5 reservations, and
//!   every caller gets its id's one; after `kill -9` and a restart, the same retries
//!   answer the same reservations and tokens, and reserve nothing more.
//! - `Renew` keeps a 3 s reservation alive past 5 s; once it expired it cannot be renewed
//!   (NOT_FOUND, saying so); `queen renew ID --ttl 10m` and `queen place --request-id`.
//! - `Release` answers RELEASED; bad request ids and renew TTLs are INVALID_ARGUMENT, a
//!   reused id for another request is FAILED_PRECONDITION, and none changes anything.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cli::{args, queen_cli};
use common::process::QueenProcess;
use common::scheduling::*;
use common::*;
use rbee_proto::v1 as pb;
use rbee_proto::v1::scheduler_client::SchedulerClient;
use tonic::transport::Channel;

const QUEEN: &str = env!("CARGO_BIN_EXE_queen");

/// `queen serve` on a loopback port with `state` as its state directory, managing `hive`.
fn queen(state: &Path, hive: &str) -> QueenProcess {
    let config = state.join("calm.toml");
    std::fs::write(&config, "[health]\ncpu_degraded_percent = 101.0\n").unwrap();
    let mut cmd = Command::new(QUEEN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--sample-interval", "200ms", "--lost-timeout", "2s"])
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .args(["--hive", hive])
        .env("RUST_LOG", "info")
        .env_remove("QUEEN_CONFIG")
        .env_remove("QUEEN_STATE_DIR")
        .env_remove("QUEEN_RESET_STATE")
        .stdout(Stdio::null());
    QueenProcess::start(cmd)
}

async fn online_queen(state: &Path, hive: &str) -> (QueenProcess, SchedulerClient<Channel>) {
    let q = queen(state, hive);
    let mut fleet = q.fleet().await;
    wait_for(&mut fleet, "the hive online with a sample", |hs| {
        hs.len() == 1 && hs.iter().all(|h| online(h) && h.latest_sample.is_some())
    })
    .await;
    let client = q.scheduler().await;
    (q, client)
}

fn keyed(id: &str, vram: u64) -> pb::PlaceRequest {
    pb::PlaceRequest { request_id: Some(id.into()), ttl_ms: Some(3_600_000), ..gpu_request(vram) }
}

/// 50 concurrent keyed Places, 5 ids: each id's (reservation id, token) as its callers
/// were told (every caller of one id must have been told the same).
async fn fifty_places(client: &SchedulerClient<Channel>) -> BTreeMap<String, (String, String)> {
    let mut callers = Vec::new();
    for i in 0..50 {
        let mut client = client.clone();
        callers.push(tokio::spawn(async move {
            let key = format!("job-{}", i % 5);
            let p = placement(client.place(keyed(&key, GIB)).await.unwrap().into_inner());
            (key, p.reservation_id, p.reservation_token)
        }));
    }
    let mut told: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for c in callers {
        let (key, id, token) = c.await.unwrap();
        told.entry(key).or_default().insert((id, token));
    }
    assert_eq!(told.len(), 5);
    told.into_iter()
        .map(|(key, answers)| {
            assert_eq!(answers.len(), 1, "{key}: callers were told different reservations: {answers:?}");
            (key, answers.into_iter().next().unwrap())
        })
        .collect()
}

fn ids(all: &[pb::Reservation]) -> BTreeSet<String> {
    all.iter().map(|r| r.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_make_one_reservation_per_request_id_across_kill_9() {
    let hive = TestHive::start_named("hive-a", TWO_GPUS).await;
    let state = tempfile::tempdir().unwrap();
    let (mut q, client) = online_queen(state.path(), &hive.url()).await;
    let told = fifty_places(&client).await;
    let held = ids(&all_reservations(&mut client.clone(), 0).await);
    let answered: BTreeSet<String> = told.values().map(|(id, _)| id.clone()).collect();
    assert_eq!(held, answered, "exactly 5 reservations, the ones answered");
    for (key, (id, token)) in &told {
        assert_eq!(
            &rbee_shared::gpu_process::reservation_id_of_token(token.as_bytes()),
            id,
            "{key}: a usable token"
        );
    }

    q.kill_9();
    let (_q, client) = online_queen(state.path(), &hive.url()).await;
    let again = fifty_places(&client).await;
    assert_eq!(again, told, "the same reservations and tokens after kill -9");
    assert_eq!(all_reservations(&mut client.clone(), 0).await.len(), 5, "nothing more reserved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_keeps_a_reservation_alive_and_an_expired_one_cannot_be_renewed() {
    let hive = TestHive::start_named("hive-a", TWO_GPUS).await;
    let state = tempfile::tempdir().unwrap();
    let (q, mut client) = online_queen(state.path(), &hive.url()).await;
    let short = pb::PlaceRequest { ttl_ms: Some(3_000), ..gpu_request(GIB) };
    let p = placement(client.place(short).await.unwrap().into_inner());
    let started = tokio::time::Instant::now();
    // A keep-alive, as a client loading a large model would run it: renew for 3 s every
    // second, until the reservation has lived past 5 s.
    while started.elapsed() < Duration::from_millis(5_500) {
        let renewed = client
            .renew(pb::RenewRequest { reservation_id: p.reservation_id.clone(), ttl_ms: 3_000 })
            .await
            .unwrap()
            .into_inner()
            .reservation
            .unwrap();
        assert_eq!(renewed.state(), pb::ReservationState::Active);
        assert!(
            renewed.expires_at_unix_ms > p.expires_at_unix_ms || started.elapsed() < Duration::from_secs(1)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let held = all_reservations(&mut client, 0).await;
    assert_eq!(
        held.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [p.reservation_id.as_str()],
        "alive past 5 s"
    );

    // The CLI renews too.
    let (ok, out, err) =
        queen_cli(args(&["renew", &p.reservation_id, "--ttl", "1s", "--queen", &q.url])).await;
    assert!(ok && out.contains("renewed"), "{out}{err}");
    // Left alone, it expires; then renewing says so.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !all_reservations(&mut client, 0).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the reservation did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = client
        .renew(pb::RenewRequest { reservation_id: p.reservation_id.clone(), ttl_ms: 3_000 })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    assert!(refused.message().contains("expired"), "{}", refused.message());
    let unknown = client.renew(pb::RenewRequest { reservation_id: "nope".into(), ttl_ms: 3_000 }).await;
    assert!(unknown.unwrap_err().message().contains("never made"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_answers_released_and_bad_inputs_change_nothing() {
    let hive = TestHive::start_named("hive-a", TWO_GPUS).await;
    let state = tempfile::tempdir().unwrap();
    let (q, mut client) = online_queen(state.path(), &hive.url()).await;

    // `queen place --request-id`: a retry of the command answers the same reservation.
    let place = || {
        queen_cli(args(&[
            "place",
            "--kind",
            "cuda",
            "--vram",
            "2GiB",
            "--request-id",
            "cli-1",
            "--json",
            "--queen",
            &q.url,
        ]))
    };
    let (ok, first, err) = place().await;
    assert!(ok, "{first}{err}");
    let (ok, again, err) = place().await;
    assert!(ok, "{again}{err}");
    let id_of = |json: &str| {
        serde_json::from_str::<serde_json::Value>(json).unwrap()["placement"]["reservation_id"].clone()
    };
    assert_eq!(id_of(&first), id_of(&again));
    let before = all_reservations(&mut client, 0).await;
    assert_eq!(before.len(), 1);
    let held = &before[0];

    for bad in ["", "a b", "a/b", &"k".repeat(129)] {
        let refused = client.place(keyed(bad, GIB)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{bad:?}: {refused:?}");
        assert!(refused.message().contains("request_id"), "{}", refused.message());
    }
    let other = client.place(keyed("cli-1", 3 * GIB)).await.unwrap_err();
    assert_eq!(other.code(), tonic::Code::FailedPrecondition, "{other:?}");
    assert!(other.message().contains("vram_bytes"), "{}", other.message());
    for ttl_ms in [0, 3_600_001] {
        let refused =
            client.renew(pb::RenewRequest { reservation_id: held.id.clone(), ttl_ms }).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{ttl_ms}: {refused:?}");
    }
    assert_eq!(all_reservations(&mut client, 0).await, before, "bad inputs changed nothing");

    let released =
        client.release(pb::ReleaseRequest { reservation_id: held.id.clone() }).await.unwrap().into_inner();
    assert_eq!(released.reservation.unwrap().state(), pb::ReservationState::Released);
    let renew = client.renew(pb::RenewRequest { reservation_id: held.id.clone(), ttl_ms: 1_000 }).await;
    let refused = renew.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    assert!(refused.message().contains("released"), "{}", refused.message());
    // The key stays taken after its reservation ended.
    let (ok, out, err) = place().await;
    assert!(!ok && err.contains("released"), "{out}{err}");
    assert!(all_reservations(&mut client, 0).await.is_empty());
}
