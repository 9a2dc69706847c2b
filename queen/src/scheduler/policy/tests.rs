//! The sandbox under hostile scripts: natives that walk a collection are metered, the
//! budget holds on wall time whatever the script calls, and the collection natives that
//! were replaced by metered ones still answer as Rhai's do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Decision, Limits, PolicyError, PolicyRuntime};
use crate::fleet::ConnState;
use crate::scheduler::request::PlaceRequest;
use crate::scheduler::synthetic::hive;
use crate::scheduler::view::FleetView;

fn view() -> FleetView {
    FleetView {
        hives: Arc::new(vec![hive("h", 2, 24, 4, 5.0, ConnState::Online, &[])]),
        book: Default::default(),
        index: None,
    }
}

fn run(rt: &PolicyRuntime, script: &str) -> Result<Decision, PolicyError> {
    let p = rt.compile("t", script).unwrap();
    rt.run(&p, &PlaceRequest::gpu(1), &view())
}

/// The script from the report: 190,000 elements, `contains` in a loop. Each call walks
/// the whole array inside one native, so Rhai's own operation count hardly moves.
const CONTAINS_LOOP: &str = "fn place(request, fleet) {
    let a = [];
    a.pad(190000, 0);
    for x in a {
        if a.contains(x + 1) { return (); }
    }
    ()
}";

#[test]
fn a_contains_loop_over_190_000_elements_is_stopped_by_the_budget() {
    let rt = PolicyRuntime::new(Limits::default());
    let t = Instant::now();
    let e = run(&rt, CONTAINS_LOOP).unwrap_err();
    let took = t.elapsed();
    assert!(e.is_budget(), "{e}");
    assert!(e.to_string().contains("50 ms wall-time budget"), "{e}");
    // Before: minutes at 100% of a core. Now: the budget and a little.
    assert!(took < Duration::from_millis(500), "stopped after {took:?}");
}

#[test]
fn natives_that_walk_a_collection_count_against_the_operation_limit() {
    let rt = PolicyRuntime::new(Limits {
        max_operations: 100_000,
        budget: Duration::from_secs(30),
        ..Limits::default()
    });
    let e = run(&rt, CONTAINS_LOOP).unwrap_err();
    assert!(matches!(e, PolicyError::Operations { limit: 100_000, .. }), "{e}");
    let e = run(&rt, "fn place(r, f) { let a = []; a.pad(50000, 1); let b = a; loop { if a == b { } } }")
        .unwrap_err();
    assert!(matches!(e, PolicyError::Operations { .. }), "array == is metered: {e}");
    let e = run(&rt, "fn place(r, f) { let a = []; a.pad(50000, 1); loop { a.index_of(2); } }").unwrap_err();
    assert!(matches!(e, PolicyError::Operations { .. }), "index_of is metered: {e}");
    let e = run(&rt, "fn place(r, f) { let a = []; a.pad(50000, 1); loop { if 2 in a { } } }").unwrap_err();
    assert!(matches!(e, PolicyError::Operations { .. }), "`in` is metered: {e}");
}

#[test]
fn the_metered_natives_answer_as_rhai_does() {
    let rt = PolicyRuntime::new(Limits { budget: Duration::from_secs(5), ..Limits::default() });
    let checks = [
        "[1, 2, 3].contains(2)",
        "!([1, 2, 3].contains(4))",
        "2 in [1, 2, 3]",
        "\"b\" in [\"a\", \"b\"]",
        "!(\"1\" in [1, 2])",
        "[1, [2, 3]].contains([2, 3])",
        "[1, 2, 3, 2].index_of(2) == 1",
        "[1, 2, 3, 2].index_of(2, 2) == 3",
        "[1, 2, 3, 2].index_of(2, -1) == 3",
        "[1, 2].index_of(5) == -1",
        "[1, 2] == [1, 2]",
        "[1, 2] != [2, 1]",
        "[1, \"a\"] != [1, 2]",
        "#{a: 1, b: [1]} == #{b: [1], a: 1}",
        "#{a: 1} != #{a: 2}",
    ];
    for check in checks {
        let script =
            format!("fn place(r, f) {{ if {check} {{ reject(\"yes\") }} else {{ reject(\"no\") }} }}");
        match run(&rt, &script) {
            Ok(Decision::Reject(answer)) => assert_eq!(answer, "yes", "{check}"),
            other => panic!("{check}: {other:?}"),
        }
    }
}

#[test]
fn a_call_stuck_in_a_native_is_abandoned_at_the_deadline_and_keeps_its_worker_until_it_ends() {
    // A native that ignores the meter (none of the real ones does): the caller still
    // answers at the budget plus the grace.
    let limits = Limits { budget: Duration::from_millis(20), parallel: 1, ..Limits::default() };
    let rt = PolicyRuntime::with_natives(limits, |e| {
        e.register_fn("stall_ms", |ms: rhai::INT| std::thread::sleep(Duration::from_millis(ms as u64)));
    });
    let t = Instant::now();
    let e = run(&rt, "fn place(r, f) { stall_ms(3000); () }").unwrap_err();
    assert!(matches!(e, PolicyError::Abandoned { budget_ms: 20, .. }), "{e}");
    assert!(t.elapsed() < rt.patience() + Duration::from_millis(300), "{:?}", t.elapsed());
    // It still holds the only worker: the next call waits, then is refused.
    let e = run(&rt, "fn place(r, f) { () }").unwrap_err();
    assert!(matches!(e, PolicyError::Busy { workers: 1, .. }), "{e}");
    // Once it ends, calls run again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while run(&rt, "fn place(r, f) { reject(\"ok\") }").is_err() {
        assert!(Instant::now() < deadline, "the stuck call never gave its worker back");
    }
}

#[test]
fn a_script_error_message_is_bounded_and_keeps_its_position() {
    let rt = PolicyRuntime::new(Limits { budget: Duration::from_secs(5), ..Limits::default() });
    let e =
        run(&rt, "fn place(r, f) {\n  let s = \"x\";\n  s.pad(62000, \"y\");\n  throw s;\n}").unwrap_err();
    let text = e.to_string();
    assert!(text.len() < 1300, "{} bytes", text.len());
    assert!(text.contains("(cut, ") && text.ends_with("(line 4, column 3)"), "{text}");
}

#[test]
fn policies_see_who_holds_each_gpu_and_absent_lists_are_unit() {
    use rbee_shared::{GpuProcess, GpuProcesses};
    let mut h = (*hive("h", 2, 24, 4, 5.0, ConnState::Online, &[])).clone();
    let mut sample = (**h.latest.as_ref().unwrap()).clone();
    sample.gpus[0].processes = Some(GpuProcesses {
        listed: vec![GpuProcess {
            pid: 42,
            used_vram_bytes: Some(3 << 30),
            name: Some("vllm".into()),
            systemd_unit: Some("vllm.service".into()),
            reservation_id: Some("r-1".into()),
            ..GpuProcess::default()
        }],
        ..GpuProcesses::default()
    });
    sample.gpus[0].unattributed_vram_bytes = Some(1 << 30);
    h.latest = Some(Arc::new(sample));
    let view = FleetView { hives: Arc::new(vec![Arc::new(h)]), book: Default::default(), index: None };
    let rt = PolicyRuntime::new(Limits::default());
    let script = r#"fn place(r, f) {
        let d = f.hives[0].devices;
        let p = d[0].processes[0];
        reject(`${d[0].processes.len()} ${p.pid} ${p.name} ${p.unit} ${p.reservation} ${p.rss == ()} ${d[0].unattributed_vram} ${d[1].processes == ()} ${d[1].unattributed_vram == ()}`)
    }"#;
    let p = rt.compile("t", script).unwrap();
    let Decision::Reject(said) = rt.run(&p, &PlaceRequest::gpu(1), &view).unwrap() else {
        panic!("not a rejection")
    };
    assert_eq!(said, format!("1 42 vllm vllm.service r-1 true {} true true", 1u64 << 30));
}
