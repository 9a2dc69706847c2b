//! The fan-out plan: a chain on prefixes once the files are known.

use rbee_shared::{DownloadPhase, FileSource, ModelState};

use super::*;
use crate::api::peers::tests::{MODEL, file, fleet, hive, ready};

fn ids(c: &PeerChoice) -> Vec<(&str, bool)> {
    c.peers.iter().map(|p| (p.hive_id.as_str(), p.partial)).collect()
}

fn declared(sha: Option<String>) -> [FileSource; 1] {
    [FileSource { url: "http://o/w.bin".into(), path: "w.bin".into(), size_bytes: Some(10), sha256: sha }]
}

#[test]
fn with_every_hash_declared_each_hive_chains_on_the_ones_before_it() {
    let targets = fleet((0..6).map(|i| hive(&format!("t{i}"), &[], None, vec![])).collect());
    let d = declared(Some("a".repeat(64)));
    let plan = plan(&targets, &targets, MODEL, Some(&d), false, false).expect("known");
    assert!(plan[0].peers.is_empty(), "the first reads from the origin");
    assert_eq!(ids(&plan[1]), [("t0", true)]);
    assert_eq!(ids(&plan[2]), [("t1", true), ("t0", true)]);
    assert_eq!(
        ids(&plan[5]),
        [("t4", true), ("t3", true), ("t2", true), ("t1", true)],
        "at most {MAX_PEERS}"
    );
    assert_eq!(plan[5].files, vec![file("w.bin", 10, 'a')]);
}

#[test]
fn without_hashes_the_others_wait_until_the_first_shows_them_or_a_holder_is_ready() {
    let targets = fleet((0..3).map(|i| hive(&format!("t{i}"), &[], None, vec![])).collect());
    let d = declared(None);
    assert_eq!(plan(&targets, &targets, MODEL, Some(&d), false, false), None);
    assert_eq!(plan(&targets, &targets, MODEL, None, false, false), None);
    // no_peers: everyone starts from the origin.
    assert!(plan(&targets, &targets, MODEL, None, true, false).unwrap().iter().all(|c| c.peers.is_empty()));
    // Once the first hive's catalog lists the files with their hashes, the chain starts.
    let mut now = targets.clone();
    now[0] =
        std::sync::Arc::new(hive("t0", &[], Some(ModelState::Downloading), vec![file("w.bin", 10, 'a')]));
    let p = plan(&now, &now, MODEL, Some(&d), false, false).expect("known now");
    assert_eq!(ids(&p[1]), [("t0", true)]);
    assert_eq!(ids(&p[2]), [("t1", true), ("t0", true)]);
}

#[test]
fn ready_holders_outside_the_targets_come_before_the_chain() {
    let targets = fleet((0..2).map(|i| hive(&format!("t{i}"), &[], None, vec![])).collect());
    let mut all = targets.clone();
    all.extend(fleet(vec![ready("holder", &[])]));
    let p = plan(&all, &targets, MODEL, None, false, false).expect("known from the holder");
    assert_eq!(ids(&p[0]), [("holder", false)]);
    assert_eq!(ids(&p[1]), [("holder", false), ("t0", true)]);
}

#[test]
fn holders_that_disagree_give_no_hive_peers_unless_the_first_fetched_for_this_fan_out() {
    let targets = fleet((0..3).map(|i| hive(&format!("t{i}"), &[], None, vec![])).collect());
    let corrupt = hive("e", &[], Some(ModelState::Ready), vec![file("w.bin", 10, 'b')]);
    let mut all = targets.clone();
    all.extend(fleet(vec![corrupt, ready("f", &[]), ready("g", &[])]));
    let p = plan(&all, &targets, MODEL, None, false, false).expect("all start");
    for c in &p {
        assert!(c.peers.is_empty(), "{c:?}");
        assert!(c.note.as_deref().is_some_and(|n| n.contains("2 different contents")), "{c:?}");
    }
    // A declared hash picks its group; the corrupted holder is never handed.
    let d = declared(Some("a".repeat(64)));
    let p = plan(&all, &targets, MODEL, Some(&d), false, false).expect("known");
    assert_eq!(ids(&p[1]), [("f", false), ("g", false), ("t0", true)]);
    // The first target fetched from the origin for this fan-out: its files are the
    // ones the others read, from it and from ready holders of the same content only.
    let mut now = all.clone();
    now[0] = std::sync::Arc::new(ready("t0", &[]));
    let p = plan(&now, &targets, MODEL, None, false, true).expect("the first shows them");
    assert_eq!(ids(&p[1]), [("f", false), ("g", false), ("t0", false)]);
    assert!(p.iter().all(|c| c.peers.iter().all(|x| x.hive_id != "e")));
}

#[test]
fn a_waiting_fan_out_gives_up_only_on_the_first_hives_failure_of_this_fetch() {
    use rbee_shared::{DownloadProgress, Sample};
    let record = |phase, at| DownloadProgress {
        model_id: MODEL.into(),
        phase,
        bytes_done: 1,
        bytes_total: None,
        speed_bytes_per_s: 0.0,
        eta_ms: None,
        error: None,
        attempt: 1,
        updated_at_unix_ms: at,
        sources: vec![],
    };
    let with = |records: Vec<DownloadProgress>, state| {
        let mut h = hive("t0", &[], state, vec![file("w.bin", 10, 'a')]);
        h.latest = Some(std::sync::Arc::new(Sample { downloads: records, ..Default::default() }));
        h
    };
    assert!(first_failed(&with(vec![record(DownloadPhase::Failed, 10)], None), MODEL, 10));
    assert!(first_failed(&with(vec![record(DownloadPhase::Cancelled, 11)], None), MODEL, 10));
    // An older download's failure is not this one's.
    assert!(!first_failed(&with(vec![record(DownloadPhase::Failed, 9)], None), MODEL, 10));
    assert!(!first_failed(&with(vec![record(DownloadPhase::Downloading, 12)], None), MODEL, 10));
    // No record yet, the catalog says failed.
    assert!(first_failed(&with(vec![], Some(ModelState::Failed)), MODEL, 10));
    assert!(!first_failed(&with(vec![], Some(ModelState::Downloading)), MODEL, 10));
}
