//! A standby queen on etcd, end to end: a real `etcd` (Debian's etcd-server) on free
//! loopback ports, two real `queen` processes and three simulated hives.
//!
//! - The leader is killed with SIGKILL during a burst of `Place` calls: the follower
//!   leads within the lease TTL + 1 s, every acknowledged reservation is there, and no
//!   device is promised past its capacity. A write to a follower gets UNAVAILABLE that
//!   names the leader (message and `rbee-leader` metadata); reads are served.
//! - etcd itself is stopped for 10 s: `Place` answers UNAVAILABLE saying so, telemetry
//!   keeps flowing, and placing works again once etcd is back.
//! - Two queens that both believe they lead cannot over-promise a device: the device's
//!   total in etcd is re-checked in every commit.
//! - Retried placement through a failover (`etcd_failover/`): a Place whose answer was
//!   lost is answered again by the new leader, and a foreign Python client never
//!   double-reserves.

mod common;
#[path = "etcd_failover/mod.rs"]
mod failover;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::process::QueenProcess;
use common::scheduling::*;
use common::*;
use rbee_hive::test_support::external_tool;
use rbee_proto::etcd::RangeRequest;
use rbee_proto::etcd::kv_client::KvClient;
use rbee_proto::v1 as pb;
use rbee_queen::store::{EtcdSettings, EtcdStore, ReservationRecord, Role, Store, StoreError};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const QUEEN: &str = env!("CARGO_BIN_EXE_queen");
/// The leader lease's TTL in these tests.
const TTL: Duration = Duration::from_secs(2);
const MIB: u64 = 1 << 20;
const GPU_TOTAL: u64 = 24 * GIB;
const GPU_USED: u64 = 4 * GIB;

/// A real etcd on loopback ports with its own data directory; killed when dropped.
struct Etcd {
    /// The binary.
    bin: PathBuf,
    /// The data directory (kept across a restart).
    dir: tempfile::TempDir,
    /// Client port.
    client: u16,
    /// Peer port.
    peer: u16,
    /// The process, while it runs.
    child: Option<Child>,
    /// Where its certificates are (`rbee_shared::certs::generate`), when it serves TLS
    /// and asks clients for certificates.
    tls: Option<PathBuf>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two distinct free loopback ports (both held while they are picked).
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

impl Etcd {
    /// Starts etcd, or `None` (skipped loudly) where it is not installed.
    async fn start() -> Option<Self> {
        Self::start_with(None).await
    }

    /// Starts etcd serving TLS with the certificates in `certs`: its server certificate
    /// `hive-127.0.0.1.pem` (hive CA), client certificates from the queen CA required.
    async fn start_with(tls: Option<PathBuf>) -> Option<Self> {
        let bin = external_tool("etcd", "apt-get install etcd-server")?;
        // A port picked free may be taken by another test before etcd binds it: then
        // etcd exits, and it is started again on other ports.
        for _ in 0..3 {
            let (client, peer) = free_ports();
            let dir = tempfile::tempdir().unwrap();
            let mut etcd = Self { bin: bin.clone(), dir, client, peer, child: None, tls: tls.clone() };
            if etcd.run().await {
                return Some(etcd);
            }
        }
        panic!("etcd did not start on three pairs of free ports");
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    /// Runs etcd on its ports and data directory, and waits until it answers; false
    /// when it exited (its ports were taken).
    async fn run(&mut self) -> bool {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let mut cmd = Command::new(&self.bin);
        if let Some(certs) = &self.tls {
            cmd.arg("--cert-file")
                .arg(certs.join("hive-127.0.0.1.pem"))
                .arg("--key-file")
                .arg(certs.join("hive-127.0.0.1.key"))
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(certs.join("queen-ca.pem"));
        }
        let child = cmd
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}"), "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(channel) = self.channel(&client).await
                && KvClient::new(channel)
                    .range(RangeRequest { key: b"probe".to_vec(), ..Default::default() })
                    .await
                    .is_ok()
            {
                return true;
            }
            if let Some(child) = self.child.as_mut()
                && child.try_wait().unwrap().is_some()
            {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "etcd did not answer on {client}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connection to `url`, with the queen's client certificate when etcd serves TLS.
    async fn channel(&self, url: &str) -> Result<Channel, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(url.to_owned())?;
        let endpoint = match &self.tls {
            Some(certs) => {
                let pem = |name: &str| std::fs::read(certs.join(name)).unwrap();
                endpoint.tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(pem("hive-ca.pem")))
                        .identity(Identity::from_pem(pem("queen.pem"), pem("queen.key"))),
                )?
            }
            None => endpoint,
        };
        endpoint.connect().await
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `queen serve` on etcd with a 2 s lease, managing `hives`.
/// Two queens on one etcd: the first leads, the second follows, and both see `hives`
/// hives online (each with its own state dir, kept alive with it).
struct Pair {
    leader: QueenProcess,
    follower: QueenProcess,
    _state: (tempfile::TempDir, tempfile::TempDir),
}

async fn leader_and_follower(etcd: &Etcd, urls: &[String], hives: usize) -> Pair {
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = queen(etcd, state_a.path(), urls);
    leader.wait_logged("this queen leads").await;
    let follower = queen(etcd, state_b.path(), urls);
    follower.wait_logged("this queen follows").await;
    hives_online(&leader, hives).await;
    hives_online(&follower, hives).await;
    Pair { leader, follower, _state: (state_a, state_b) }
}

fn queen(etcd: &Etcd, state: &Path, hives: &[String]) -> QueenProcess {
    queen_with(etcd, state, hives, &[])
}

/// `queen serve` on etcd with a 2 s lease, managing `hives`, with more arguments.
fn queen_with(etcd: &Etcd, state: &Path, hives: &[String], more: &[&str]) -> QueenProcess {
    let config = state.join("calm.toml");
    std::fs::write(&config, "[health]\ncpu_degraded_percent = 101.0\n").unwrap();
    let mut cmd = Command::new(QUEEN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--sample-interval", "200ms", "--lost-timeout", "2s"])
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .args(["--store", &format!("etcd://{}", etcd.endpoint()), "--leader-ttl", "2s"])
        .args(hives.iter().flat_map(|h| ["--hive", h.as_str()]))
        .args(more)
        .env("RUST_LOG", "info")
        .env_remove("QUEEN_CONFIG")
        .env_remove("QUEEN_STATE_DIR")
        .env_remove("QUEEN_STORE")
        .env_remove("QUEEN_ADVERTISE")
        .stdout(Stdio::null());
    QueenProcess::start(cmd)
}

async fn hives_online(queen: &QueenProcess, count: usize) {
    let mut fleet = queen.fleet().await;
    wait_for(&mut fleet, "hives online with samples", |hs| {
        hs.len() == count && hs.iter().all(|h| online(h) && h.latest_sample.is_some())
    })
    .await;
}

fn request(vram: u64) -> pb::PlaceRequest {
    pb::PlaceRequest { ttl_ms: Some(3_600_000), ..gpu_request(vram) }
}

/// No device promised past its capacity, counting every reservation on it.
fn assert_within_capacity(all: &[pb::Reservation]) {
    let mut per_device: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for r in all {
        *per_device.entry((&r.address, &r.device_id)).or_default() += r.bytes;
    }
    for ((hive, device), bytes) in per_device {
        assert!(GPU_USED + bytes <= GPU_TOTAL, "{hive}/{device}: {bytes} bytes promised on 20 GiB free");
    }
}

/// `queen place --queen URL,URL ...`: its output (it must succeed).
fn cli_place(queens: &[&str]) -> String {
    let out = Command::new(QUEEN)
        .args(["place", "--kind", "cuda", "--vram", "256MiB", "--ttl", "1h", "--queen", &queens.join(",")])
        .env_remove("QUEEN_URL")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "queen place --queen {}: {text}", queens.join(","));
    text
}

async fn three_hives() -> (Vec<TestHive>, Vec<String>) {
    let hives = vec![
        TestHive::start_named("hive-a", TWO_GPUS).await,
        TestHive::start_named("hive-b", TWO_GPUS).await,
        TestHive::start_named("hive-c", TWO_GPUS).await,
    ];
    let urls = hives.iter().map(TestHive::url).collect();
    (hives, urls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_follower_takes_over_a_killed_leader_with_every_acknowledged_reservation() {
    let Some(etcd) = Etcd::start().await else { return };
    let (_hives, urls) = three_hives().await;
    let Pair { mut leader, follower, _state } = leader_and_follower(&etcd, &urls, 3).await;

    // A write to the follower: UNAVAILABLE, naming the leader. Reads are served.
    let mut on_follower = follower.scheduler().await;
    let refused = on_follower.place(request(GIB)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains(&leader.url), "{}", refused.message());
    assert_eq!(
        refused.metadata().get("rbee-leader").and_then(|v| v.to_str().ok()),
        Some(leader.url.as_str())
    );
    let refused = follower.fleet().await.add_hive(pb::AddHiveRequest { address: urls[0].clone() }).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unavailable);

    // The CLI given the follower first follows the leader it names.
    let placed = cli_place(&[&follower.url, &leader.url]);
    assert!(placed.contains("placed on"), "{placed}");

    // The follower mirrors the leader's books.
    let first = placement(leader.scheduler().await.place(request(GIB)).await.unwrap().into_inner());
    let deadline = Instant::now() + DEADLINE;
    while !all_reservations(&mut on_follower, 0).await.iter().any(|r| r.id == first.reservation_id) {
        assert!(Instant::now() < deadline, "the follower did not mirror the leader's reservation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A burst of Place calls; the leader is killed after 60 OKs.
    let client = leader.scheduler().await;
    let oks = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    for _ in 0..40 {
        let mut client = client.clone();
        let oks = oks.clone();
        let failed = failed.clone();
        callers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for _ in 0..5 {
                match client.place(request(256 * MIB)).await {
                    Ok(r) => {
                        if let Some(pb::place_response::Result::Placement(p)) = r.into_inner().result {
                            oks.fetch_add(1, Ordering::SeqCst);
                            acked.push(p.reservation_id);
                        }
                    }
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {}
                    Err(s) => {
                        failed.lock().unwrap().push(s);
                        break;
                    }
                }
            }
            acked
        }));
    }
    let deadline = Instant::now() + DEADLINE;
    while oks.load(Ordering::SeqCst) < 60 {
        assert!(
            Instant::now() < deadline,
            "60 placements were not answered in time: {:?}",
            failed.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    leader.kill_9();
    let killed = Instant::now();
    let mut acked = vec![first.reservation_id];
    for caller in callers {
        acked.extend(caller.await.unwrap());
    }

    // The follower leads within the bound, with every acknowledged reservation.
    follower.wait_logged_within("this queen leads", TTL + Duration::from_secs(1)).await;
    let took = killed.elapsed();
    eprintln!("failover: the follower led {} ms after the leader was killed", took.as_millis());
    let placed = on_follower.place(request(256 * MIB)).await.expect("the new leader places");
    placement(placed.into_inner());
    let after = all_reservations(&mut on_follower, 50).await;
    for id in &acked {
        assert!(after.iter().any(|r| &r.id == id), "reservation {id} was answered OK and is gone");
    }

    // The CLI given the dead leader first goes on to the new one.
    let placed = cli_place(&[&leader.url, &follower.url]);
    assert!(placed.contains("placed on"), "{placed}");

    // Filling the GPUs up on the new leader never goes past their capacity.
    let mut more = 0;
    while let Ok(r) = on_follower.place(request(GIB)).await {
        match r.into_inner().result {
            Some(pb::place_response::Result::Placement(_)) => more += 1,
            _ => break,
        }
        assert!(more <= 120, "placed past the GPUs' capacity");
    }
    assert_within_capacity(&all_reservations(&mut on_follower, 50).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_etcd_down_place_is_unavailable_telemetry_flows_and_service_resumes() {
    let Some(mut etcd) = Etcd::start().await else { return };
    let (_hives, urls) = three_hives().await;
    let state = tempfile::tempdir().unwrap();
    let queen = queen(&etcd, state.path(), &urls);
    queen.wait_logged("this queen leads").await;
    hives_online(&queen, 3).await;
    let mut scheduler = queen.scheduler().await;
    let kept = placement(scheduler.place(request(GIB)).await.unwrap().into_inner());

    etcd.kill();
    let down = Instant::now();
    let mut fleet = queen.fleet().await;
    let newest = |hives: &[pb::HiveView]| {
        hives.iter().filter_map(|h| h.latest_sample.as_ref()).map(|s| s.taken_at_unix_ms).min().unwrap_or(0)
    };
    let mut seen =
        newest(&fleet.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives);
    let mut fresh_samples = 0;
    while down.elapsed() < Duration::from_secs(10) {
        let refused = scheduler.place(request(GIB)).await.expect_err("no placement without etcd");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("etcd"), "the message says why: {}", refused.message());
        let hives = fleet.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives;
        assert!(hives.iter().all(online), "the hives stay online without etcd: {hives:?}");
        let now = newest(&hives);
        if now > seen {
            fresh_samples += 1;
            seen = now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(fresh_samples >= 5, "telemetry kept flowing: {fresh_samples} fresher samples in 10 s");

    assert!(etcd.run().await, "etcd restarts on its ports");
    let back = Instant::now();
    let deadline = back + DEADLINE;
    loop {
        match scheduler.place(request(GIB)).await {
            Ok(r) => {
                placement(r.into_inner());
                break;
            }
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                assert!(Instant::now() < deadline, "placing did not resume after etcd came back: {s:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!("placing resumed {} ms after etcd came back", back.elapsed().as_millis());
    let all = all_reservations(&mut scheduler, 0).await;
    assert!(
        all.iter().any(|r| r.id == kept.reservation_id),
        "the reservation made before the outage is kept"
    );
}

/// Two stores that both believe they lead (the same lease passes the fence): the
/// device's total in etcd still holds them to its capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_leaders_at_once_cannot_over_promise_a_device() {
    let Some(etcd) = Etcd::start().await else { return };
    let settings = |advertise: &str| EtcdSettings {
        endpoints: vec![format!("http://{}", etcd.endpoint())],
        prefix: "/split-brain/".into(),
        advertise: advertise.into(),
        lease_ttl: Duration::from_secs(10),
        tls: None,
    };
    let a = Arc::new(EtcdStore::connect(settings("http://a")).await.unwrap());
    let b = Arc::new(EtcdStore::connect(settings("http://b")).await.unwrap());
    let rbee_queen::store::Campaign::Won(lease) = a.campaign().await.unwrap() else { panic!("a leads") };
    a.set_role(Role::Leader { lease });
    b.set_role(Role::Leader { lease });

    let total = 10 * GIB;
    let mut commits = Vec::new();
    for i in 0..24 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        commits.push(tokio::task::spawn_blocking(move || {
            let r = ReservationRecord {
                id: format!("r{i}"),
                hive_id: "h".into(),
                address: "http://h:1".into(),
                device_id: "GPU-0".into(),
                model: "m".into(),
                bytes: GIB,
                settled: false,
                created_at_unix_ms: 1,
                expires_at_unix_ms: u64::MAX,
                baseline_bytes: 0,
                keyed: None,
                gang: Vec::new(),
            };
            store.commit_placed(&r, total)
        }));
    }
    let mut ok = 0;
    for commit in commits {
        match commit.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::OverCommit { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 10, "exactly the 10 GiB of the device were promised");
    assert_eq!(a.load().await.unwrap().reservations.len(), 10);

    // A queen whose lease no longer holds the leader key writes nothing.
    a.revoke(lease).await.unwrap();
    let kept = a.load().await.unwrap().reservations;
    let late = ReservationRecord { id: "late".into(), device_id: "GPU-1".into(), ..kept[0].clone() };
    let b2 = b.clone();
    let (forget, commit) = tokio::task::spawn_blocking(move || {
        (b2.forget_reservations(&[kept[0].id.as_str()]), b2.commit_placed(&late, total))
    })
    .await
    .unwrap();
    for err in [forget.unwrap_err(), commit.unwrap_err()] {
        assert!(matches!(err, StoreError::NotLeader(_)), "{err}");
    }
    assert_eq!(a.load().await.unwrap().reservations.len(), 10, "nothing changed");
}

/// `queen migrate` copies a stopped queen's state directory into etcd; a queen on etcd
/// then holds its reservations. A second copy is refused rather than merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_the_embedded_state_into_etcd() {
    let Some(etcd) = Etcd::start().await else { return };
    let state = tempfile::tempdir().unwrap();
    let record = |id: &str| ReservationRecord {
        id: id.into(),
        hive_id: "h".into(),
        address: "http://127.0.0.1:9".into(),
        device_id: "GPU-0".into(),
        model: "m".into(),
        bytes: GIB,
        settled: false,
        created_at_unix_ms: 1,
        expires_at_unix_ms: u64::MAX / 2,
        baseline_bytes: 0,
        keyed: None,
        gang: Vec::new(),
    };
    {
        let kept = rbee_queen::store::StateStore::open(state.path()).unwrap();
        kept.put_reservations(&[record("r1"), record("r2")]).unwrap();
        kept.put_hive(&rbee_queen::store::HiveRecord {
            address: "http://127.0.0.1:9".into(),
            origin: "api".into(),
            removed: false,
        })
        .unwrap();
    }
    let migrate = || {
        Command::new(QUEEN)
            .args(["migrate", "--store", &format!("etcd://{}", etcd.endpoint()), "--state-dir"])
            .arg(state.path())
            .env_remove("QUEEN_ETCD_PREFIX")
            .output()
            .unwrap()
    };
    let out = migrate();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("copied 2 reservations, 1 hives"));
    let again = migrate();
    assert!(!again.status.success());
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("refusing to merge") && !said.contains("unavailable"), "{said}");

    // A state directory that is not there is an error, and is not created.
    let nowhere = state.path().join("nowhere");
    let out = Command::new(QUEEN)
        .args(["migrate", "--store", &format!("etcd://{}", etcd.endpoint()), "--state-dir"])
        .arg(&nowhere)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no state store"), "{out:?}");
    assert!(!nowhere.exists(), "migrate created the directory it was to copy from");

    let other = tempfile::tempdir().unwrap();
    let queen = queen(&etcd, other.path(), &[]);
    queen.wait_logged("this queen leads").await;
    let hives = queen.fleet().await.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner();
    assert_eq!(hives.hives.len(), 1, "the run-time hive came along: {hives:?}");
    let ids: Vec<String> =
        all_reservations(&mut queen.scheduler().await, 0).await.into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["r1", "r2"]);
}

/// Hives added and removed at run time on the leader reach the follower, which keeps
/// its own streams: it manages what the leader manages, so that it does not lead a
/// different fleet after a failover (a removed hive must not come back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hives_added_and_removed_at_the_leader_reach_the_follower() {
    let Some(etcd) = Etcd::start().await else { return };
    let (_hives, urls) = three_hives().await;
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = queen(&etcd, state_a.path(), &urls[..2]);
    leader.wait_logged("this queen leads").await;
    let follower = queen(&etcd, state_b.path(), &urls[..2]);
    follower.wait_logged("this queen follows").await;

    let added = leader.fleet().await.add_hive(pb::AddHiveRequest { address: urls[2].clone() }).await.unwrap();
    let third = added.into_inner().hive.unwrap().address;
    let removed = leader.fleet().await.remove_hive(pb::RemoveHiveRequest { hive: urls[0].clone() }).await;
    let first = removed.unwrap().into_inner().address;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let on_follower = managed(&follower).await;
        if on_follower.contains(&third) && !on_follower.contains(&first) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower manages {on_follower:?}; the leader added {third} and removed {first}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(managed(&leader).await.len(), 2);
}

/// The addresses `queen` manages.
async fn managed(queen: &QueenProcess) -> Vec<String> {
    let mut fleet = queen.fleet().await;
    let hives = fleet.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives;
    hives.into_iter().map(|h| h.address).collect()
}

/// etcd serving TLS and asking for client certificates: a queen given the CA and its
/// certificate leads and places; one without its certificate cannot write, and says
/// etcd is unreachable rather than placing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queen_reaches_etcd_over_tls_with_its_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    rbee_shared::certs::generate(certs.path(), &["127.0.0.1".into()], &["127.0.0.1".into()]).unwrap();
    let Some(etcd) = Etcd::start_with(Some(certs.path().to_owned())).await else { return };
    let (_hives, urls) = three_hives().await;
    let file = |name: &str| certs.path().join(name).display().to_string();
    let (ca, cert, key) = (file("hive-ca.pem"), file("queen.pem"), file("queen.key"));

    let state = tempfile::tempdir().unwrap();
    let tls = ["--etcd-ca", &ca, "--etcd-cert", &cert, "--etcd-key", &key];
    let leader = queen_with(&etcd, state.path(), &urls[..1], &tls);
    leader.wait_logged("this queen leads").await;
    hives_online(&leader, 1).await;
    placement(leader.scheduler().await.place(request(GIB)).await.unwrap().into_inner());

    // Without its client certificate, etcd refuses the queen's connections.
    let other = tempfile::tempdir().unwrap();
    let anonymous = queen_with(&etcd, other.path(), &urls[..1], &["--etcd-ca", &ca]);
    hives_online(&anonymous, 1).await;
    let refused = anonymous.scheduler().await.place(request(GIB)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    eprintln!("without a client certificate: {}", refused.message());
    assert!(refused.message().contains("etcd"), "{}", refused.message());
    assert!(!refused.message().contains(&leader.url), "it cannot know the leader: {}", refused.message());
}

/// With etcd healthy, the leader keeps its lease: it renews it every TTL/4, and never
/// steps down (a renewal that never reached etcd made leadership change every 1.5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_keeps_its_lease_while_etcd_is_healthy() {
    let Some(etcd) = Etcd::start().await else { return };
    let (_hives, urls) = three_hives().await;
    let state = tempfile::tempdir().unwrap();
    let leader = queen(&etcd, state.path(), &urls[..1]);
    leader.wait_logged("this queen leads").await;
    let channel = etcd.channel(&format!("http://{}", etcd.endpoint())).await.unwrap();
    let leader_lease = || {
        let mut kv = KvClient::new(channel.clone());
        async move {
            let key = b"/rbee/queen/leader".to_vec();
            let got = kv.range(RangeRequest { key, ..Default::default() }).await.unwrap().into_inner();
            got.kvs.first().map(|kv| kv.lease)
        }
    };
    let lease = leader_lease().await.expect("the leader key is set");
    // Three TTLs: an unrenewed lease lapses after one.
    let until = Instant::now() + TTL * 3;
    while Instant::now() < until {
        assert_eq!(leader_lease().await, Some(lease), "the leader lease changed while etcd was healthy");
        assert!(!leader.logged("stepped down"), "the leader stepped down while etcd was healthy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    placement(leader.scheduler().await.place(request(GIB)).await.unwrap().into_inner());
}

/// A reservation record in etcd that does not decode, or decodes to one the queen never
/// wrote (a flipped bit: "127,0.0.1"), is refused with its key, never taken for etcd
/// being down, nor dropped: a queen does not lead on such books.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reservation_record_in_etcd_is_refused_with_its_key() {
    let Some(etcd) = Etcd::start().await else { return };
    let put = |key: &str, value: &[u8]| rbee_proto::etcd::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        ..Default::default()
    };
    let mut kv = KvClient::new(etcd.channel(&format!("http://{}", etcd.endpoint())).await.unwrap());
    let store = |prefix: &str| {
        EtcdStore::connect(EtcdSettings {
            endpoints: vec![format!("http://{}", etcd.endpoint())],
            prefix: prefix.into(),
            advertise: "http://a".into(),
            lease_ttl: Duration::from_secs(10),
            tls: None,
        })
    };
    // Unreadable JSON: refused, naming the key (it was "etcd is unavailable").
    kv.put(put("/garbled/reservations/r1", b"{\"id\":\"r1\",\"hive_id\"#")).await.unwrap();
    let err = store("/garbled/").await.unwrap().load().await.unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("/garbled/reservations/r1"), "{err}");

    // A record that decodes, with one flipped bit in its hive's address.
    let record = ReservationRecord {
        id: "r1".into(),
        hive_id: "h".into(),
        address: "http://127,0.0.1:9".into(),
        device_id: "GPU-0".into(),
        model: "m".into(),
        bytes: GIB,
        settled: false,
        created_at_unix_ms: 1,
        expires_at_unix_ms: u64::MAX,
        baseline_bytes: 0,
        keyed: None,
        gang: Vec::new(),
    };
    kv.put(put("/flipped/reservations/r1", &serde_json::to_vec(&record).unwrap())).await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let queen = queen_with(&etcd, state.path(), &[], &["--etcd-prefix", "/flipped/"]);
    queen.wait_logged("cannot load the books from etcd").await;
    assert!(queen.logged("\"r1\"") && queen.logged("127,0.0.1"), "the record is named");
    assert!(!queen.logged("this queen leads"), "no queen leads on books it cannot trust");
    let kept = kv
        .range(RangeRequest { key: b"/flipped/reservations/r1".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.kvs.len(), 1, "the record is kept for the operator");
}

/// A gang (one reservation over two NVLink GPUs) survives a failover: the new leader
/// lists it with both GPUs, counts it on both, and releases it as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gang_survives_a_failover() {
    use common::topology::{gang, topology_hive};
    let Some(etcd) = Etcd::start().await else { return };
    let hive = topology_hive("topo").await;
    let urls = vec![hive.url.clone()];
    let Pair { mut leader, follower, _state } = leader_and_follower(&etcd, &urls, 1).await;

    let p = placement(
        leader
            .scheduler()
            .await
            .place(gang(2, 30 * GIB, pb::GangTopology::Nvlink))
            .await
            .unwrap()
            .into_inner(),
    );
    let ids: Vec<&str> = p.devices.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(ids, ["GPU-0", "GPU-1"]);
    leader.kill_9();
    follower.wait_logged_within("this queen leads", TTL + Duration::from_secs(1)).await;
    hives_online(&follower, 1).await;

    let mut client = follower.scheduler().await;
    let kept = all_reservations(&mut client, 0).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].gang_device_ids, ["GPU-0", "GPU-1"]);
    let no = client.place(gang(2, 30 * GIB, pb::GangTopology::Nvlink)).await.unwrap().into_inner();
    let Some(pb::place_response::Result::Rejection(no)) = no.result else { panic!("placed: {no:?}") };
    assert!(no.hive_reasons.iter().any(|r| r.contains("only 1 share NVLink")), "{no:?}");

    client.release(pb::ReleaseRequest { reservation_id: p.reservation_id }).await.unwrap();
    let again =
        placement(client.place(gang(2, 30 * GIB, pb::GangTopology::Nvlink)).await.unwrap().into_inner());
    assert_eq!(again.devices.len(), 2, "released as one: the pair is free again, in etcd too");
}
