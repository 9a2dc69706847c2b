//! Retried placement through a failover, on a real etcd with two queens: a `Place`
//! whose answer was lost when the leader died is answered again, the same reservation,
//! by the new leader; and a foreign client (Python grpcio, written from `proto/` alone)
//! retries through a failover and never double-reserves.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use rbee_proto::v1::scheduler_client::SchedulerClient;

use super::*;

/// A TCP proxy in front of `target` whose replies (server to client) can be dropped
/// while requests still go through: a Place reaches the queen and commits, and its
/// answer is lost.
struct LossyProxy {
    addr: std::net::SocketAddr,
    mute: watch::Sender<bool>,
}

impl LossyProxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mute, rx) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else { continue };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let rx = rx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            // Muted: read and drop, so the socket stays open and silent.
                            Ok(_) if *rx.borrow() => {}
                            Ok(n) => {
                                if cw.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Self { addr, mute }
    }
}

fn keyed(id: &str) -> pb::PlaceRequest {
    pb::PlaceRequest { request_id: Some(id.into()), ..request(GIB) }
}

/// Places `req` on `client` until a queen answers (UNAVAILABLE while a new leader is
/// elected: tried again).
async fn place_until_led(client: &mut SchedulerClient<Channel>, req: pb::PlaceRequest) -> pb::Placement {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match client.place(req.clone()).await {
            Ok(r) => return placement(r.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("the retry failed: {s:?}"),
        }
    }
}

/// Every reservation's id.
async fn held(client: &mut SchedulerClient<Channel>) -> std::collections::BTreeSet<String> {
    all_reservations(client, 0).await.into_iter().map(|r| r.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_place_whose_answer_was_lost_in_a_failover_is_answered_again_by_the_new_leader() {
    let Some(etcd) = Etcd::start().await else { return };
    let (_hives, urls) = three_hives().await;
    let Pair { mut leader, follower, _state } = leader_and_follower(&etcd, &urls, 3).await;

    // The client reaches the leader through a proxy that will lose the answer.
    let proxy = LossyProxy::start(leader.url.trim_start_matches("http://").parse().unwrap()).await;
    let mut via_proxy = SchedulerClient::connect(format!("http://{}", proxy.addr)).await.unwrap();
    via_proxy.get_policy(pb::GetPolicyRequest {}).await.expect("the connection is up");
    proxy.mute.send_replace(true);
    let lost = tokio::spawn(async move {
        let mut call = tonic::Request::new(keyed("lost-1"));
        call.set_timeout(Duration::from_secs(3));
        via_proxy.place(call).await
    });
    // The leader committed (the follower mirrors it from etcd); then it dies unanswered.
    let mut on_follower = follower.scheduler().await;
    let deadline = Instant::now() + DEADLINE;
    let committed = loop {
        // Nothing else is placed: the one reservation is the lost Place's.
        if let Some(id) = held(&mut on_follower).await.pop_first() {
            break id;
        }
        assert!(Instant::now() < deadline, "the leader did not commit the Place");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    leader.kill_9();
    let killed = Instant::now();
    assert!(lost.await.unwrap().is_err(), "the first answer was lost");

    // The client retries on the standby until it leads: the committed reservation.
    let again = place_until_led(&mut on_follower, keyed("lost-1")).await;
    eprintln!(
        "the retry was answered by the new leader {} ms after the leader was killed",
        killed.elapsed().as_millis()
    );
    assert_eq!(again.reservation_id, committed);
    assert_eq!(
        rbee_shared::gpu_process::reservation_id_of_token(again.reservation_token.as_bytes()),
        committed,
        "the new leader answers a usable token"
    );
    assert_eq!(held(&mut on_follower).await, [committed.clone()].into(), "reserved once");

    // 50 concurrent retries sharing 5 ids on the new leader: 5 reservations.
    let mut callers = Vec::new();
    for i in 0..50 {
        let mut client = on_follower.clone();
        callers.push(tokio::spawn(async move {
            let key = format!("job-{}", i % 5);
            (key.clone(), placement(client.place(keyed(&key)).await.unwrap().into_inner()).reservation_id)
        }));
    }
    let mut told: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for c in callers {
        let (key, id) = c.await.unwrap();
        told.entry(key).or_default().insert(id);
    }
    let mut answered: std::collections::BTreeSet<String> = [committed].into();
    for (key, ids) in &told {
        assert_eq!(ids.len(), 1, "{key}: {ids:?}");
        answered.extend(ids.iter().cloned());
    }
    assert_eq!(held(&mut on_follower).await, answered, "exactly 5 more reservations, the ones answered");
}

/// `python3` with grpcio and grpcio-tools, or `None` (skipped loudly; a failure where
/// `RBEE_REQUIRE_TOOLS=1`).
fn python_with_grpc() -> Option<PathBuf> {
    let python = external_tool("python3", "apt-get install python3")?;
    let ok = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let required = std::env::var_os("RBEE_REQUIRE_TOOLS").is_some_and(|v| v == "1");
        assert!(
            !required,
            "python3 with grpcio is required here (RBEE_REQUIRE_TOOLS=1): pip install grpcio==1.68.1 grpcio-tools==1.68.1"
        );
        eprintln!(
            "SKIPPED: python3 cannot import grpc and grpc_tools (pip install grpcio==1.68.1 grpcio-tools==1.68.1); this test did not run"
        );
        return None;
    }
    Some(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_python_client_retries_place_through_a_failover_without_double_reserving() {
    let Some(python) = python_with_grpc() else { return };
    let Some(etcd) = Etcd::start().await else { return };
    let (_hives, urls) = three_hives().await;
    let Pair { mut leader, follower, _state } = leader_and_follower(&etcd, &urls, 3).await;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The follower first: the client must follow the leader it names.
    let mut client = Command::new(python)
        .arg(root.join("tests/py/foreign_client.py"))
        .arg(root.join("../proto"))
        .args(["py-1", &follower.url, &leader.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Python client");
    let mut stdin = client.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = client.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = |what: &str| -> Vec<String> {
        let line =
            rx.recv_timeout(DEADLINE * 2).unwrap_or_else(|_| panic!("the Python client did not say {what}"));
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        assert_eq!(words.first().map(String::as_str), Some(what), "{line}");
        words
    };
    let first = tokio::task::block_in_place(|| next("first"));
    leader.kill_9();
    std::io::Write::write_all(&mut stdin, b"go\n").unwrap();
    let second = tokio::task::block_in_place(|| next("second"));
    let listed = tokio::task::block_in_place(|| next("held"));
    let status = tokio::task::block_in_place(|| client.wait_with_output()).unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert_eq!(second, ["second", &first[1], &first[2]], "the same reservation and token after the failover");
    assert_eq!(listed, ["held", "1"], "reserved once");
    let mut on_follower = follower.scheduler().await;
    assert_eq!(held(&mut on_follower).await, [first[1].clone()].into());
}
