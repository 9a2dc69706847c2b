//! Placement a client can retry and keep alive: idempotent `Place` (request ids, kept
//! with the reservation and for a grace after it ended), `Renew`, and `RELEASED`.

use std::sync::Arc;
use std::time::Duration;

use super::{GIB, calm, placed, rejected};
use crate::QueenError;
use crate::fleet::{ConnState, HiveSnapshot};
use crate::scheduler::book::{ENDED_GRACE, ReservationState};
use crate::scheduler::request::{PlaceRequest, RenewRequest};
use crate::scheduler::synthetic::hive;
use crate::scheduler::{Scheduler, StaticHives};

fn fleet() -> Vec<Arc<HiveSnapshot>> {
    vec![
        hive("hive-a", 2, 80, 0, 5.0, ConnState::Online, &[]),
        hive("hive-b", 2, 80, 0, 5.0, ConnState::Online, &[]),
    ]
}

fn keyed(id: &str, gib: u64) -> PlaceRequest {
    PlaceRequest { request_id: Some(id.into()), ..PlaceRequest::gpu(gib * GIB) }
}

/// A scheduler kept in `dir`, restored as `run` restores it (reservations and ends).
fn durable(dir: &std::path::Path) -> Arc<Scheduler> {
    let store = Arc::new(crate::store::StateStore::open(dir).unwrap());
    let kept = store.load().unwrap();
    let s = Scheduler::durable(Arc::new(StaticHives(fleet())), calm(), store, kept.reservations).unwrap();
    s.restore_ended(kept.ended);
    s
}

fn failed_precondition(e: QueenError) -> String {
    let status = tonic::Status::from(e);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{}", status.message());
    status.message().to_owned()
}

fn not_found(e: QueenError) -> String {
    let status = tonic::Status::from(e);
    assert_eq!(status.code(), tonic::Code::NotFound, "{}", status.message());
    status.message().to_owned()
}

#[test]
fn a_retried_place_answers_the_same_reservation_and_token() {
    let s = super::scheduler(fleet(), calm());
    let first = placed(s.place_blocking(&keyed("job-1", 10)).unwrap());
    let again = placed(s.place_blocking(&keyed("job-1", 10)).unwrap());
    assert_eq!(s.reservations().len(), 1, "the retry reserved nothing");
    assert_eq!(again.reservation, first.reservation);
    assert_eq!((&again.hive_id, &again.device_id), (&first.hive_id, &first.device_id));
    let token = again.token.expect("a retry answers a usable token");
    assert_eq!(Some(&token), first.token.as_ref());
    assert_eq!(token.reservation_id(), first.reservation.unwrap().id);
    // Without a key, every Place reserves.
    placed(s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap());
    placed(s.place_blocking(&PlaceRequest::gpu(GIB)).unwrap());
    assert_eq!(s.reservations().len(), 3);
}

#[test]
fn the_same_key_for_another_request_is_refused_naming_the_difference() {
    let s = super::scheduler(fleet(), calm());
    placed(s.place_blocking(&keyed("job-1", 10)).unwrap());
    let before = s.reservations();
    let bigger = failed_precondition(s.place_blocking(&keyed("job-1", 11)).unwrap_err());
    assert!(bigger.contains("vram_bytes: held 10737418240, asked 11811160064"), "{bigger}");
    let mut labelled = keyed("job-1", 10);
    labelled.labels.insert("zone".into(), "eu".into());
    labelled.model = "llama".into();
    let both = failed_precondition(s.place_blocking(&labelled).unwrap_err());
    assert!(both.contains("model: held \"\", asked \"llama\"") && both.contains("labels:"), "{both}");
    assert_eq!(s.reservations(), before, "nothing changed");
}

/// 50 concurrent Places sharing 5 request ids: exactly 5 reservations, and each caller
/// gets its id's one.
#[test]
fn fifty_concurrent_places_with_five_keys_make_five_reservations() {
    let s = super::scheduler(fleet(), calm());
    let answers: Vec<(usize, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let s = s.clone();
                scope.spawn(move || {
                    let p = placed(s.place_blocking(&keyed(&format!("job-{}", i % 5), 3)).unwrap());
                    (i % 5, p.reservation.unwrap().id)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(s.reservations().len(), 5);
    for key in 0..5 {
        let ids: std::collections::BTreeSet<&String> =
            answers.iter().filter(|(k, _)| *k == key).map(|(_, id)| id).collect();
        assert_eq!(ids.len(), 1, "key {key}: {ids:?}");
        let r = s.reservations().into_iter().find(|r| ids.contains(&r.id)).expect("held");
        assert_eq!(r.keyed.unwrap().request_id, format!("job-{key}"));
    }
}

#[test]
fn a_key_stays_taken_for_the_grace_after_its_reservation_ended() {
    let s = super::scheduler(fleet(), calm());
    let r = placed(s.place_blocking(&keyed("job-1", 10)).unwrap()).reservation.unwrap();
    let released = s.release(&r.id).unwrap();
    assert_eq!(released.state, ReservationState::Released);
    let late = failed_precondition(s.place_blocking(&keyed("job-1", 10)).unwrap_err());
    assert!(late.contains(&r.id) && late.contains("released") && late.contains("new one"), "{late}");
    assert!(s.reservations().is_empty());
    // A dry run with the key reserves nothing and is not refused.
    placed(s.place_blocking(&PlaceRequest { dry_run: true, ..keyed("job-1", 10) }).unwrap());
    // Past the grace, the key is free again.
    let later = rbee_shared::time::now_unix_ms() + ENDED_GRACE.as_millis() as u64 + 1;
    crate::scheduler::view::write(&s.book).prune_ended(later);
    placed(s.place_blocking(&keyed("job-1", 10)).unwrap());
}

#[test]
fn keys_tokens_and_ends_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (first, ended) = {
        let s = durable(dir.path());
        let first = placed(s.place_blocking(&keyed("job-1", 10)).unwrap());
        let ended = placed(s.place_blocking(&keyed("job-2", 10)).unwrap()).reservation.unwrap();
        s.release(&ended.id).unwrap();
        (first, ended)
    };
    let s = durable(dir.path());
    let again = placed(s.place_blocking(&keyed("job-1", 10)).unwrap());
    assert_eq!(again.reservation, first.reservation);
    assert_eq!(again.token, first.token, "the same usable token after a restart");
    assert_eq!(s.reservations().len(), 1);
    let late = failed_precondition(s.place_blocking(&keyed("job-2", 10)).unwrap_err());
    assert!(late.contains(&ended.id), "{late}");
    let why =
        not_found(s.renew(&RenewRequest { id: ended.id.clone(), ttl: Duration::from_secs(5) }).unwrap_err());
    assert!(why.contains("released"), "{why}");
}

#[test]
fn renew_extends_an_active_reservation_durably() {
    let dir = tempfile::tempdir().unwrap();
    let r = {
        let s = durable(dir.path());
        let short = PlaceRequest { ttl: Duration::from_secs(3), ..PlaceRequest::gpu(GIB) };
        let r = placed(s.place_blocking(&short).unwrap()).reservation.unwrap();
        let renewed = s.renew(&RenewRequest { id: r.id.clone(), ttl: Duration::from_secs(600) }).unwrap();
        assert!(renewed.expires_at_unix_ms >= r.created_at_unix_ms + 600_000);
        assert_eq!(s.reservations()[0].expires_at_unix_ms, renewed.expires_at_unix_ms);
        renewed
    };
    let s = durable(dir.path());
    assert_eq!(s.reservations(), [r], "the new expiry was kept");
}

#[test]
fn renew_says_why_it_cannot() {
    let s = super::scheduler(fleet(), calm());
    let renew = |id: &str| s.renew(&RenewRequest { id: id.into(), ttl: Duration::from_secs(5) });
    let unknown = not_found(renew("nope").unwrap_err());
    assert!(unknown.contains("never made"), "{unknown}");
    let short = PlaceRequest { ttl: Duration::from_millis(1), ..PlaceRequest::gpu(GIB) };
    let r = placed(s.place_blocking(&short).unwrap()).reservation.unwrap();
    while rbee_shared::time::now_unix_ms() <= r.expires_at_unix_ms {
        std::thread::yield_now();
    }
    // Past its expiry but not dropped yet, and then dropped: expired both times.
    assert!(not_found(renew(&r.id).unwrap_err()).contains("expired"));
    s.upkeep_once();
    assert!(s.reservations().is_empty());
    assert!(not_found(renew(&r.id).unwrap_err()).contains("expired"));
}

#[test]
fn a_rejected_keyed_place_leaves_the_key_free() {
    let s = super::scheduler(fleet(), calm());
    rejected(s.place_blocking(&keyed("job-1", 81)).unwrap());
    placed(s.place_blocking(&keyed("job-1", 10)).unwrap());
}

/// A keyed placement committed after the caller's deadline is taken back as never made:
/// the caller was told it failed, so its retry with the same request id places.
#[test]
fn a_keyed_place_that_missed_its_deadline_leaves_the_key_free_for_the_retry() {
    let deadline = std::time::Instant::now() + Duration::from_millis(300);
    let disk = super::HungDisk::thawing_at(deadline + Duration::from_millis(100));
    let s = Scheduler::durable(Arc::new(StaticHives(fleet())), calm(), disk.clone(), vec![]).unwrap();
    let late = PlaceRequest { deadline: Some(deadline), ..keyed("job-1", 10) };
    assert!(matches!(s.place_blocking(&late).unwrap_err(), QueenError::DeadlineExceeded(_)));
    assert!(s.reservations().is_empty() && disk.kept().is_empty());
    let retried = placed(s.place_blocking(&keyed("job-1", 10)).unwrap());
    assert_eq!(disk.kept(), [retried.reservation.unwrap().id]);
}

/// `topology` is ignored for one GPU, so a retry of a one-GPU request that names another
/// topology is the same request; for a gang it is a different one.
#[test]
fn topology_counts_in_a_keys_request_only_for_a_gang() {
    use crate::scheduler::request::GangTopology;
    let s = super::scheduler(fleet(), calm());
    let first = placed(s.place_blocking(&keyed("one", 10)).unwrap());
    let other_topology = PlaceRequest { topology: GangTopology::Nvlink, ..keyed("one", 10) };
    let again = placed(s.place_blocking(&other_topology).unwrap());
    assert_eq!(again.reservation, first.reservation);
    assert_eq!(s.reservations().len(), 1);

    let gang = |topology| PlaceRequest { gpus: 2, topology, ..keyed("two", 10) };
    placed(s.place_blocking(&gang(GangTopology::Any)).unwrap());
    let why = failed_precondition(s.place_blocking(&gang(GangTopology::SameNuma)).unwrap_err());
    assert!(why.contains("topology: held any, asked numa"), "{why}");
}
