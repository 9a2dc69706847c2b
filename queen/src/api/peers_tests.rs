//! The peer selection: unit cases and properties over random fleets.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rbee_shared::{
    Capabilities, DeviceSourceKind, DownloadPhase, DownloadProgress, FileSource, HiveIdentity, ModelEntry,
    ModelFile, ModelState, Sample, VersionedCapabilities,
};

use super::*;
use crate::fleet::{ConnState, Health, HiveSnapshot, Origin};

pub(crate) const MODEL: &str = "m";

pub(crate) fn file(path: &str, size: u64, sha: char) -> ModelFile {
    ModelFile { path: path.into(), size_bytes: size, sha256: Some(sha.to_string().repeat(64)) }
}

/// A hive `id` at `id:1` with `labels`, holding MODEL in `state` with `files`.
pub(crate) fn hive(
    id: &str,
    labels: &[(&str, &str)],
    state: Option<ModelState>,
    files: Vec<ModelFile>,
) -> HiveSnapshot {
    let mut h = HiveSnapshot::pending(format!("{id}:1"), Origin::Static, Duration::from_secs(1));
    h.state = ConnState::Online;
    h.health = Arc::new(crate::fleet::HealthReport { health: Health::Healthy, ..(*h.health).clone() });
    h.identity = Some(Arc::new(HiveIdentity {
        hive_id: id.into(),
        epoch: "e".into(),
        hostname: id.into(),
        advertised_address: String::new(),
        version: String::new(),
        protocol_version: 1,
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        gpu_source: DeviceSourceKind::Simulated,
        started_at_unix_ms: 0,
    }));
    let mut caps = Capabilities::default();
    if let Some(state) = state {
        let size_bytes = files.iter().map(|f| f.size_bytes).sum();
        caps.models.insert(
            MODEL.into(),
            ModelEntry {
                id: MODEL.into(),
                state,
                files,
                size_bytes,
                error: None,
                resident_bytes: None,
                warm: false,
            },
        );
    }
    h.caps = Some(Arc::new(VersionedCapabilities { version: 1, caps }));
    h.latest = Some(Arc::new(Sample::default()));
    h
}

pub(crate) fn ready(id: &str, labels: &[(&str, &str)]) -> HiveSnapshot {
    hive(id, labels, Some(ModelState::Ready), vec![file("w.bin", 10, 'a')])
}

fn ids(choice: &PeerChoice) -> Vec<&str> {
    choice.peers.iter().map(|p| p.hive_id.as_str()).collect()
}

pub(crate) fn fleet(hives: Vec<HiveSnapshot>) -> Vec<Arc<HiveSnapshot>> {
    hives.into_iter().map(Arc::new).collect()
}

#[test]
fn a_ready_holder_is_offered_with_its_files_and_never_the_target_itself() {
    let target = ready("t", &[]);
    let all = fleet(vec![target.clone(), ready("a", &[])]);
    let mut choice = select(&all, &target, MODEL, None);
    assert_eq!(ids(&choice), ["a"]);
    assert!(!choice.peers[0].partial);
    assert_eq!(choice.peers[0].address, "a:1");
    assert_eq!(choice.files, vec![file("w.bin", 10, 'a')]);
    let mut req = pb::FetchModelRequest::default();
    choice.apply(&mut req);
    assert_eq!(req.peers.len(), 1);
    assert_eq!(req.peer_files[0].sha256.as_deref(), Some("a".repeat(64).as_str()));
}

#[test]
fn lost_unhealthy_failed_and_other_hash_holders_are_never_offered() {
    let target = hive("t", &[], None, vec![]);
    let mut lost = ready("lost", &[]);
    lost.state = ConnState::Lost;
    let mut sick = ready("sick", &[]);
    sick.health =
        Arc::new(crate::fleet::HealthReport { health: Health::Unhealthy, ..(*sick.health).clone() });
    let failed = hive("failed", &[], Some(ModelState::Failed), vec![file("w.bin", 10, 'a')]);
    let unverified = hive("unverified", &[], Some(ModelState::Unverified), vec![file("w.bin", 10, 'a')]);
    let other = hive("other", &[], Some(ModelState::Ready), vec![file("w.bin", 10, 'b')]);
    let all = fleet(vec![target.clone(), lost, sick, failed, unverified, other.clone(), ready("good", &[])]);
    let declared = [FileSource {
        url: "http://x/w.bin".into(),
        path: "w.bin".into(),
        size_bytes: None,
        sha256: Some("a".repeat(64)),
    }];
    assert_eq!(ids(&select(&all, &target, MODEL, Some(&declared))), ["good"]);
    // Without a declared hash, holders that disagree: nobody is offered, and the note
    // says why (a wrong copy must not spread).
    let choice = select(&all, &target, MODEL, None);
    assert!(choice.peers.is_empty(), "{choice:?}");
    assert!(choice.note.as_deref().is_some_and(|n| n.contains("2 different contents")), "{choice:?}");
    // A declared size that differs rules a holder out.
    let wrong_size = [FileSource {
        url: "http://x/w.bin".into(),
        path: "w.bin".into(),
        size_bytes: Some(11),
        sha256: None,
    }];
    assert!(select(&all, &target, MODEL, Some(&wrong_size)).peers.is_empty());
    // Another path set: no peers.
    let other_path =
        [FileSource { url: "http://x/v.bin".into(), path: "v.bin".into(), size_bytes: None, sha256: None }];
    assert!(select(&all, &target, MODEL, Some(&other_path)).peers.is_empty());
}

#[test]
fn holders_that_disagree_without_a_declared_hash_are_never_offered_and_never_mixed() {
    // The tester's case: E holds a corrupted copy, F and G the right one; no sha256
    // declared. Old code offered E (the best-ranked) or mixed groups.
    let target = hive("t", &[], None, vec![]);
    let e = hive("e", &[("zone", "eu")], Some(ModelState::Ready), vec![file("w.bin", 10, 'b')]);
    let all = fleet(vec![target.clone(), e, ready("f", &[]), ready("g", &[])]);
    let t = hive("t", &[("zone", "eu")], None, vec![]);
    for target in [&target, &t] {
        let choice = select(&all, target, MODEL, None);
        assert!(choice.peers.is_empty(), "{choice:?}");
        assert!(choice.files.is_empty());
        let note = choice.note.expect("a note says why");
        assert!(
            note.contains("3 hives hold m with 2 different contents (hives per content: 2, 1)"),
            "{note}"
        );
    }
    assert_eq!(contents(&all, MODEL, None).iter().map(|(_, n)| *n).collect::<Vec<_>>(), [2, 1]);
    // A URL source declaring paths only: the same.
    let paths =
        [FileSource { url: "http://x/w.bin".into(), path: "w.bin".into(), size_bytes: None, sha256: None }];
    assert!(select(&all, &target, MODEL, Some(&paths)).peers.is_empty());
    // The declared hash picks its group only.
    let declared = [FileSource {
        url: "http://x/w.bin".into(),
        path: "w.bin".into(),
        size_bytes: Some(10),
        sha256: Some("a".repeat(64)),
    }];
    let choice = select(&all, &t, MODEL, Some(&declared));
    assert_eq!(ids(&choice), ["f", "g"]);
    assert_eq!(choice.note, None);
    // All holders agree: offered as before.
    let agree = fleet(vec![target.clone(), ready("f", &[]), ready("g", &[])]);
    assert_eq!(ids(&select(&agree, &target, MODEL, None)), ["f", "g"]);
}

#[test]
fn the_same_zone_then_rack_then_more_labels_then_the_least_busy_come_first() {
    let target = hive("t", &[("zone", "eu"), ("rack", "r1"), ("gpu", "h100")], None, vec![]);
    let mut busy = ready("busy", &[("zone", "eu"), ("rack", "r1")]);
    busy.latest = Some(Arc::new(Sample {
        downloads: vec![DownloadProgress {
            model_id: "other".into(),
            phase: DownloadPhase::Downloading,
            bytes_done: 1,
            bytes_total: None,
            speed_bytes_per_s: 0.0,
            eta_ms: None,
            error: None,
            attempt: 1,
            updated_at_unix_ms: 0,
            sources: vec![],
        }],
        ..Default::default()
    }));
    let all = fleet(vec![
        ready("far", &[("gpu", "h100")]),
        ready("zone-only", &[("zone", "eu"), ("rack", "r9")]),
        busy,
        ready("idle", &[("zone", "eu"), ("rack", "r1")]),
        ready("other-zone", &[("zone", "us"), ("rack", "r1"), ("gpu", "h100")]),
        target.clone(),
    ]);
    let choice = select(&all, &target, MODEL, None);
    assert_eq!(ids(&choice), ["idle", "busy", "zone-only", "other-zone"], "at most {MAX_PEERS}");
}

#[test]
fn a_downloading_hive_is_a_partial_peer_only_with_every_hash_known_and_after_ready_ones() {
    let target = hive("t", &[], None, vec![]);
    let growing =
        hive("growing", &[("zone", "eu")], Some(ModelState::Downloading), vec![file("w.bin", 10, 'a')]);
    let unknown = hive(
        "unknown",
        &[],
        Some(ModelState::Downloading),
        vec![ModelFile { path: "w.bin".into(), size_bytes: 10, sha256: None }],
    );
    let all = fleet(vec![target.clone(), growing.clone(), unknown, ready("done", &[])]);
    let choice = select(&all, &target, MODEL, None);
    assert_eq!(ids(&choice), ["done", "growing"]);
    assert_eq!(choice.peers.iter().map(|p| p.partial).collect::<Vec<_>>(), [false, true]);
    // A declared size of zero (unknown) in a download is not enough.
    let zero = hive("zero", &[], Some(ModelState::Downloading), vec![file("w.bin", 0, 'a')]);
    assert!(select(&fleet(vec![zero]), &target, MODEL, None).peers.is_empty());
}

#[test]
fn fully_declared_files_need_every_size_and_hash() {
    let f = |size, sha: Option<&str>| FileSource {
        url: "http://x/a".into(),
        path: "a".into(),
        size_bytes: size,
        sha256: sha.map(str::to_owned),
    };
    let h = "c".repeat(64);
    assert_eq!(fully_declared(Some(&[f(Some(3), Some(&h))])), Some(vec![file("a", 3, 'c')]));
    assert_eq!(fully_declared(Some(&[f(None, Some(&h))])), None);
    assert_eq!(fully_declared(Some(&[f(Some(3), None)])), None);
    assert_eq!(fully_declared(None), None);
}

fn arb_hive(i: usize) -> impl Strategy<Value = HiveSnapshot> {
    (
        prop::sample::select(vec!["eu", "us"]),
        prop::sample::select(vec!["r1", "r2"]),
        prop::option::of(prop::sample::select(vec![
            ModelState::Ready,
            ModelState::Downloading,
            ModelState::Failed,
            ModelState::Unverified,
        ])),
        prop::sample::select(vec!['a', 'b']),
        any::<bool>(),
        any::<bool>(),
        0u8..100,
    )
        .prop_map(move |(zone, rack, state, sha, online, healthy, cpu)| {
            let mut h = hive(
                &format!("h{i}"),
                &[("zone", zone), ("rack", rack)],
                state,
                vec![file("w.bin", 10, sha)],
            );
            if !online {
                h.state = ConnState::Lost;
            }
            if !healthy {
                h.health =
                    Arc::new(crate::fleet::HealthReport { health: Health::Unhealthy, ..(*h.health).clone() });
            }
            h.latest = Some(Arc::new(Sample { cpu_percent: Some(f32::from(cpu)), ..Default::default() }));
            h
        })
}

fn arb_fleet() -> impl Strategy<Value = Vec<HiveSnapshot>> {
    (1usize..12).prop_flat_map(|n| (0..n).map(arb_hive).collect::<Vec<_>>())
}

proptest! {
    /// Whatever the fleet: never the target, never a lost or unhealthy hive, never a
    /// hive whose files differ from the ones handed, at most MAX_PEERS, ready ones
    /// first, and with a declared hash only hives holding that hash.
    #[test]
    fn the_choice_is_always_safe(hives in arb_fleet(), target_at in any::<prop::sample::Index>(), declare in any::<bool>()) {
        let target = hives[target_at.index(hives.len())].clone();
        let all = fleet(hives);
        let declared = [FileSource { url: "http://x/w.bin".into(), path: "w.bin".into(), size_bytes: Some(10), sha256: Some("a".repeat(64)) }];
        let declared = declare.then_some(&declared[..]);
        let choice = select(&all, &target, MODEL, declared);
        prop_assert!(choice.peers.len() <= MAX_PEERS);
        let mut seen_partial = false;
        for p in &choice.peers {
            prop_assert_ne!(&p.hive_id, target.hive_id());
            let h = all.iter().find(|h| h.hive_id() == p.hive_id).unwrap();
            prop_assert_eq!(h.state, ConnState::Online);
            prop_assert_ne!(h.health.health, Health::Unhealthy);
            let entry = h.caps.as_ref().unwrap().caps.models.get(MODEL).unwrap();
            prop_assert_eq!(&entry.files, &choice.files);
            prop_assert_eq!(p.partial, entry.state == ModelState::Downloading);
            prop_assert!(matches!(entry.state, ModelState::Ready | ModelState::Downloading));
            prop_assert!(!seen_partial || p.partial, "ready before partial");
            seen_partial |= p.partial;
            if declared.is_some() {
                let want = "a".repeat(64);
                prop_assert_eq!(entry.files[0].sha256.as_deref(), Some(want.as_str()));
            }
        }
        // Peers come from one content, and without a declared hash only when every
        // holder agrees on it.
        if declared.is_none() && !choice.peers.is_empty() {
            prop_assert_eq!(contents(&all, MODEL, None).len(), 1);
        }
        // Nobody eligible is left out while there is room.
        if choice.peers.len() < MAX_PEERS {
            let eligible = all.iter().filter(|h| {
                h.hive_id() != target.hive_id() && h.state == ConnState::Online && h.health.health != Health::Unhealthy
                    && h.caps.as_ref().unwrap().caps.models.get(MODEL).is_some_and(|e| {
                        matches!(e.state, ModelState::Ready | ModelState::Downloading) && e.files == choice.files
                    })
            }).count();
            prop_assert!(choice.files.is_empty() || eligible == choice.peers.len());
        }
    }
}
