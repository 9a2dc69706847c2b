//! What policies see of the weights: `hive.models`, `hive.has_model`,
//! `hive.resident_fraction`, `hive.weights` and `fleet.nearest_weights`, on synthetic
//! hives whose catalogs say where a model is.

use std::sync::Arc;

use rbee_shared::{ModelEntry, ModelState};

use super::{Decision, Limits, PolicyRuntime};
use crate::fleet::{ConnState, HiveSnapshot};
use crate::scheduler::request::PlaceRequest;
use crate::scheduler::synthetic::hive;
use crate::scheduler::view::FleetView;

fn with_model(
    h: Arc<HiveSnapshot>,
    state: ModelState,
    size: u64,
    resident: Option<u64>,
) -> Arc<HiveSnapshot> {
    let mut h = (*h).clone();
    let mut caps = (**h.caps.as_ref().unwrap()).clone();
    caps.caps.models.insert(
        "m".into(),
        ModelEntry {
            id: "m".into(),
            state,
            files: vec![],
            size_bytes: size,
            error: None,
            resident_bytes: resident,
            warm: resident.is_some(),
        },
    );
    h.caps = Some(Arc::new(caps));
    Arc::new(h)
}

fn reason(view: &FleetView, script: &str) -> String {
    let rt = PolicyRuntime::new(Limits::default());
    let p = rt.compile("t", script).unwrap();
    let mut req = PlaceRequest::gpu(1 << 30);
    req.model = "m".into();
    match rt.run(&p, &req, view).unwrap() {
        Decision::Reject(r) => r,
        Decision::Ranked(_) => panic!("expected a reject"),
    }
}

#[test]
fn policies_see_each_hives_models_and_the_ranking_by_weights() {
    // Loads: "ram" is the busiest, "fetching" the idlest.
    let view = FleetView {
        hives: Arc::new(vec![
            hive("absent", 1, 24, 4, 1.0, ConnState::Online, &[]),
            with_model(
                hive("disk", 1, 24, 4, 50.0, ConnState::Online, &[]),
                ModelState::Ready,
                1000,
                Some(100),
            ),
            with_model(
                hive("ram", 1, 24, 4, 90.0, ConnState::Online, &[]),
                ModelState::Ready,
                1000,
                Some(950),
            ),
            with_model(
                hive("fetching", 1, 24, 4, 0.5, ConnState::Online, &[]),
                ModelState::Downloading,
                1000,
                None,
            ),
        ]),
        book: Default::default(),
        index: None,
    };
    let got = reason(
        &view,
        r#"fn place(r, f) {
            let d = f.hive("disk");
            let m = d.models["m"];
            reject(`${d.has_model("m")} ${d.resident_fraction("m")} ${m.state} ${m.bytes} ${m.resident_bytes} ${d.weights("m")} ${f.hive("ram").weights("m")} ${f.hive("fetching").has_model("m")} ${f.hive("absent").has_model("m")} ${f.hive("absent").models.len()}`)
        }"#,
    );
    assert_eq!(got, "true 0.1 ready 1000 100 disk ram false false 0");
    let got = reason(
        &view,
        r#"fn place(r, f) {
            let ids = [];
            for d in f.nearest_weights(r, 8) { ids.push(d.hive.id); }
            reject(ids.reduce(|s, x| s + " " + x, ""))
        }"#,
    );
    assert_eq!(got.trim(), "ram disk fetching absent", "RAM, then disk, then by load");
}
