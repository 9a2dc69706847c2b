//! The scheduler under a hostile policy and a greedy client, end to end: a real queen,
//! real hives (simulated GPUs), the generated client, and the real `queen` binary for
//! shutdown. A policy cannot outrun its budget, stall the books or shutdown, or flood a
//! status with text; the books hold a bounded number of reservations and list them in
//! pages.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::scheduling::*;
use common::*;
use rbee_proto::v1 as pb;
use rbee_proto::v1::scheduler_client::SchedulerClient;
use rbee_queen::scheduler::SchedulerSettings;
use rbee_queen::scheduler::book::BookLimits;
use tokio::time::Instant;

/// The report's runaway: an array of 190,000 elements and `contains` in a loop. Every
/// call walks the whole array inside one native; it used to run for minutes.
const CONTAINS_LOOP: &str = "fn place(request, fleet) {
    let a = [];
    a.pad(190000, 0);
    for x in a {
        if a.contains(x + 1) { return (); }
    }
    ()
}
";

/// A policy that places on the least-loaded device.
const GOOD: &str = "fn place(request, fleet) { fleet.least_loaded(request, 8) }\n";

fn settings() -> SchedulerSettings {
    SchedulerSettings { maintain_every: Duration::from_millis(100), ..Default::default() }
}

/// Settings with a policy file holding `text` (the file lives as long as the dir).
fn with_policy(text: &str) -> (SchedulerSettings, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.rhai");
    std::fs::write(&file, text).unwrap();
    let s = SchedulerSettings { policy_file: Some(file.clone()), ..settings() };
    (s, dir, file)
}

#[tokio::test]
async fn a_policy_walking_a_190_000_element_array_is_stopped_at_its_budget() {
    let hive = TestHive::start_named("budget", TWO_GPUS).await;
    let (s, _dir, _file) = with_policy(CONTAINS_LOOP);
    let (_queen, mut client) = queen_with(vec![hive.url()], s).await;
    let t = Instant::now();
    let err = client.place(gpu_request(GIB)).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("50 ms wall-time budget"), "{}", err.message());
    assert!(took < Duration::from_secs(1), "answered after {took:?} (budget 50 ms)");
    // The script position reaches the client, in the message and as metadata (where the
    // script was when the deadline struck: most likely inside `contains`, line 5).
    // (A thread starved past the grace is abandoned instead, without a position.)
    match err.metadata().get("rbee-policy-line").map(|v| v.to_str().unwrap().to_owned()) {
        Some(line) => {
            assert!(["3", "4", "5"].contains(&line.as_str()), "line {line}");
            assert!(err.message().contains(&format!("(line {line}, column")), "{}", err.message());
        }
        None => assert!(err.message().contains("did not stop"), "{}", err.message()),
    }
    let status = client.get_policy(pb::GetPolicyRequest {}).await.unwrap().into_inner();
    assert_eq!(status.failures, 1);
}

#[tokio::test]
async fn reservations_expire_on_time_while_a_runaway_policy_edit_is_test_run() {
    let hive = TestHive::start_named("upkeep", TWO_GPUS).await;
    let (mut s, _dir, file) = with_policy(GOOD);
    s.limits.budget = Duration::from_secs(2); // a loaded test machine must not fail GOOD
    let (queen, mut client) = queen_with(vec![hive.url()], s).await;
    let mut fleet = queen.client().await;
    let mut watch = Watch::open(&mut fleet).await;
    let p = placement(
        client.place(pb::PlaceRequest { ttl_ms: Some(1000), ..gpu_request(GIB) }).await.unwrap().into_inner(),
    );
    // The edit is test-run by the reload task; it used to hold up upkeep for minutes.
    std::fs::write(&file, CONTAINS_LOOP).unwrap();
    let (dropped, _) = watch
        .until(|e| match e {
            pb::fleet_event::Event::ReservationDropped(d) => Some(d.clone()),
            _ => None,
        })
        .await;
    assert_eq!(dropped.reservation_id, p.reservation_id);
    assert!(dropped.reason.contains("expired"), "{}", dropped.reason);
    let late = rbee_shared::time::now_unix_ms().saturating_sub(p.expires_at_unix_ms);
    assert!(late < 2000, "expired {late} ms after its TTL");

    // The refused edit shows in `policy status`, with why.
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        let st = client.get_policy(pb::GetPolicyRequest {}).await.unwrap().into_inner();
        if st.reload_failures > 0 {
            break st;
        }
        assert!(Instant::now() < deadline, "the runaway edit was never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let why = status.last_error.unwrap_or_default();
    // (With a 2 s budget, the metered `contains` reaches the operation limit first.)
    assert!(why.contains("refused") && (why.contains("budget") || why.contains("operations")), "{why}");
    // A good file again is picked up.
    std::fs::write(&file, format!("{GOOD}// restored\n")).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while client.get_policy(pb::GetPolicyRequest {}).await.unwrap().into_inner().loaded_at_unix_ms
        == status.loaded_at_unix_ms
    {
        assert!(Instant::now() < deadline, "the restored policy was never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    placement(client.place(gpu_request(GIB)).await.unwrap().into_inner());
}

#[tokio::test]
async fn a_62_kb_reason_or_error_from_a_policy_reaches_the_client_cut_to_1_kib() {
    let hive = TestHive::start_named("text", TWO_GPUS).await;
    let long = "fn place(request, fleet) {
  let s = \"x\";
  s.pad(62000, \"y\");
  if request.model == \"throw\" { throw s; }
  reject(s)
}
";
    let (mut s, _dir, _file) = with_policy(long);
    s.limits.budget = Duration::from_secs(5); // a debug build pads slowly
    let (_queen, mut client) = queen_with(vec![hive.url()], s).await;
    let rejection = match client.place(gpu_request(GIB)).await.unwrap().into_inner().result.unwrap() {
        pb::place_response::Result::Rejection(r) => r,
        pb::place_response::Result::Placement(p) => panic!("placed: {p:?}"),
    };
    assert!(rejection.reason.len() <= 1100, "{} bytes", rejection.reason.len());
    assert!(rejection.reason.ends_with("… (cut, 60.5 KiB in all)"), "{}", rejection.reason);

    // The same text thrown: it goes into the gRPC status, which must still arrive.
    let err = client.place(pb::PlaceRequest { model: "throw".into(), ..gpu_request(GIB) }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().len() <= 1400, "{} bytes", err.message().len());
    assert!(err.message().contains("(cut, "), "{}", err.message());
    assert!(err.message().ends_with("(line 4, column 33)"), "{}", err.message());
}

#[tokio::test]
async fn reservations_are_bounded_per_hive_and_listed_in_pages() {
    let hive = TestHive::start_named("greedy", TWO_GPUS).await;
    let limits = BookLimits::default();
    let mut s = settings();
    s.limits.budget = Duration::from_secs(2); // 1,025 placements on a loaded machine
    let (_queen, mut client) = queen_with(vec![hive.url()], s).await;
    for _ in 0..limits.per_hive {
        placement(client.place(gpu_request(1)).await.unwrap().into_inner());
    }
    let err = client.place(gpu_request(1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("1024 reservations, the most per hive"), "{}", err.message());
    // A dry run reserves nothing and is still answered.
    let dry = pb::PlaceRequest { dry_run: true, ..gpu_request(1) };
    placement(client.place(dry).await.unwrap().into_inner());

    // Page through them: every one once, oldest first.
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut page_token = String::new();
    loop {
        let page = client
            .list_reservations(pb::ListReservationsRequest { page_size: 300, page_token })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.reservations.len() <= 300);
        seen.extend(page.reservations);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!((pages, seen.len()), (4, limits.per_hive));
    let mut ids: Vec<&str> = seen.iter().map(|r| r.id.as_str()).collect();
    assert!(seen.windows(2).all(|w| w[0].created_at_unix_ms <= w[1].created_at_unix_ms));
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), limits.per_hive, "no reservation listed twice");
    // The default page, and a token this queen never gave out.
    let first = client.list_reservations(pb::ListReservationsRequest::default()).await.unwrap().into_inner();
    assert_eq!(first.reservations.len(), 500);
    let forged = pb::ListReservationsRequest { page_size: 0, page_token: "nonsense".into() };
    let err = client.list_reservations(forged).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Releasing one makes room for one.
    client.release(pb::ReleaseRequest { reservation_id: seen[0].id.clone() }).await.unwrap();
    placement(client.place(gpu_request(1)).await.unwrap().into_inner());
}

#[tokio::test]
async fn releasing_an_unknown_reservation_says_no_reservation() {
    let hive = TestHive::start_named("release", TWO_GPUS).await;
    let (_queen, mut client) = queen_with(vec![hive.url()], settings()).await;
    let err = client.release(pb::ReleaseRequest { reservation_id: "r-404".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().starts_with("no reservation \"r-404\""), "{}", err.message());
    assert!(!err.message().contains("hive"), "{}", err.message());
}

/// A child process killed when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `queen` binary, serving with a runaway policy and no hives. (Two workers: the
/// test blocks one on the child's stderr and exit while the other keeps placing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_queen_whose_policy_runs_away() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.rhai");
    std::fs::write(&policy, CONTAINS_LOOP.replacen("{\n", "{\n    print(\"policy started\");\n", 1)).unwrap();
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_queen"))
            .args(["serve", "--listen", "127.0.0.1:0", "--policy"])
            .arg(&policy)
            .arg("--state-dir")
            .arg(dir.path())
            .env("RUST_LOG", "info")
            .env_remove("QUEEN_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the queen binary"),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("queen serving")
                && let Some(rest) = line.split("listen=").nth(1)
            {
                let _ = tx.send(format!("http://{}", rest.split_whitespace().next().unwrap_or_default()));
            } else if line.contains("policy started") {
                let _ = tx.send("started".into());
            }
        }
    });
    let url = rx.recv_timeout(DEADLINE).expect("the queen logs its listen address");
    let mut client = SchedulerClient::connect(url).await.unwrap();
    let placing = tokio::spawn(async move {
        loop {
            if let Err(e) = client.place(gpu_request(GIB)).await
                && e.code() != tonic::Code::FailedPrecondition
            {
                return;
            }
        }
    });
    assert_eq!(rx.recv_timeout(DEADLINE).expect("the policy runs"), "started");
    let sent = std::time::Instant::now();
    let kill = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let exited = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break Some(status);
        }
        if sent.elapsed() > Duration::from_secs(5) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    placing.abort();
    let status = exited.expect("the queen did not stop within 5 s of SIGTERM");
    assert!(status.success(), "{status:?}");
}
