//! `Place` with the state store off and on, in-process and over gRPC, on a synthetic
//! fleet (1,000 hives x 8 GPUs by default) with the built-in least-loaded policy. Run:
//!
//!     cargo bench -p rbee-queen --bench place_durable [-- HIVES GPUS PLACEMENTS]
//!
//! With the store on, every placement is committed and fsync'd before it is answered,
//! one commit per write, then with group commit (concurrent writes share one commit),
//! in a state directory under `$RBEE_BENCH_STATE_DIR` (default: the system temp dir;
//! put it on the disk the queen would use: a tmpfs makes fsync free).
//!
//! - in-process: `Scheduler::place_blocking`, one thread; each reservation released
//!   outside the timed section so the fleet stays comparable.
//! - gRPC, 1 caller: the real `rbee.v1.Scheduler` service on loopback (TCP_NODELAY), the
//!   generated client, one call at a time; released outside the timed section.
//! - gRPC, 16 callers: 16 concurrent callers on one connection; reservations are kept.
//!
//! First it measures the floor the store stands on: a bare 4 KiB write and fdatasync
//! in the state directory, 500 times (what one durable commit cannot beat).
//!
//! With the word `etcd` among the arguments it measures the etcd store instead (what
//! `queen serve --state etcd://...` uses): a local etcd started on free loopback ports
//! with its data directory under `$RBEE_BENCH_STATE_DIR` (the `etcd` binary on `PATH`),
//! this process its leader:
//!
//!     cargo bench -p rbee-queen --bench place_durable -- 10000 8 2000 etcd

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_proto::v1 as pb;
use rbee_proto::v1::scheduler_client::SchedulerClient;
use rbee_proto::v1::scheduler_server::SchedulerServer;
use rbee_queen::api::SchedulerService;
use rbee_queen::scheduler::request::PlaceRequest;
use rbee_queen::scheduler::{Outcome, Scheduler, SchedulerSettings, StaticHives, synthetic};
use rbee_queen::store::{Campaign, EtcdSettings, EtcdStore, GroupCommit, Role, StateStore, Store};
use tonic::transport::server::TcpIncoming;

const CALLERS: usize = 16;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, mut lat: Vec<Duration>) {
    lat.sort();
    let n = lat.len();
    println!(
        "  {what:<24} p50 {:>9.3?}  p99 {:>9.3?}  max {:>9.3?}  ({n} calls)",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat[n - 1]
    );
}

/// How placements are kept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// In memory only.
    Off,
    /// One transaction and fsync per write.
    OneByOne,
    /// Concurrent writes share a transaction and an fsync (what `queen serve` uses).
    Grouped,
}

/// A local etcd on free loopback ports (killed when dropped), this process its leader.
struct Etcd {
    /// The process.
    child: std::process::Child,
    /// Its client URL.
    url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Etcd {
    /// Starts etcd with its data in `dir`.
    fn start(dir: &std::path::Path) -> Self {
        let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, b) = (port(), port());
        let client = format!("http://127.0.0.1:{}", a.local_addr().unwrap().port());
        let peer = format!("http://127.0.0.1:{}", b.local_addr().unwrap().port());
        drop((a, b));
        let child = std::process::Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("bench={peer}"), "--log-level", "error"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start etcd (is it on PATH?)");
        Self { child, url: client }
    }

    /// A store on this etcd that leads (campaigns until etcd answers).
    async fn leader(&self) -> Arc<EtcdStore> {
        let store = EtcdStore::connect(EtcdSettings {
            endpoints: vec![self.url.clone()],
            prefix: "/bench/".into(),
            advertise: "http://127.0.0.1:1".into(),
            lease_ttl: Duration::from_secs(3600),
            tls: None,
        })
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match store.campaign().await {
                Ok(Campaign::Won(lease)) => {
                    store.set_role(Role::Leader { lease });
                    return Arc::new(store);
                }
                Ok(_) => panic!("another queen leads this fresh etcd"),
                Err(e) => assert!(Instant::now() < deadline, "etcd did not answer: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn etcd_scheduler(hives: usize, gpus: usize, store: Arc<EtcdStore>) -> Arc<Scheduler> {
    let fleet = Arc::new(StaticHives(synthetic::fleet(hives, gpus)));
    let mut settings = SchedulerSettings::default();
    settings.limits.budget = Duration::from_secs(2);
    Scheduler::durable(fleet, settings, store, Vec::new()).unwrap()
}

/// The etcd store: in-process, one gRPC caller and 16, each on a fresh etcd.
fn etcd_modes(
    runtime: &tokio::runtime::Runtime,
    base: &std::path::Path,
    hives: usize,
    gpus: usize,
    n: usize,
) {
    let fresh = || {
        let dir = tempfile::tempdir_in(base).unwrap();
        let etcd = Etcd::start(dir.path());
        let store = runtime.block_on(etcd.leader());
        (dir, etcd, etcd_scheduler(hives, gpus, store))
    };
    println!("store on, etcd (a local etcd, its data in {}):", base.display());
    {
        let (_dir, _etcd, scheduler) = fresh();
        report("in-process, 1 thread", in_process(&scheduler, n));
    }
    let (_dir, _etcd, scheduler) = fresh();
    let (one, many, rate) = runtime.block_on(over_grpc(scheduler, n));
    report("gRPC, 1 caller", one);
    report(&format!("gRPC, {CALLERS} callers"), many);
    println!("  gRPC, {CALLERS} callers: {rate:.0} placements/s");
    println!("  load average: {}", loadavg());
}

fn scheduler(hives: usize, gpus: usize, mode: Mode, dir: &std::path::Path) -> Arc<Scheduler> {
    let fleet = Arc::new(StaticHives(synthetic::fleet(hives, gpus)));
    // A budget a loaded machine does not break: this measures latency, not the budget.
    let mut settings = SchedulerSettings::default();
    settings.limits.budget = Duration::from_secs(2);
    let store: Arc<dyn Store> = match mode {
        Mode::Off => return Scheduler::new(fleet, settings).unwrap(),
        Mode::OneByOne => Arc::new(StateStore::open(dir).unwrap()),
        Mode::Grouped => Arc::new(GroupCommit::new(Arc::new(StateStore::open(dir).unwrap())).unwrap()),
    };
    Scheduler::durable(fleet, settings, store, Vec::new()).unwrap()
}

fn in_process(scheduler: &Scheduler, n: usize) -> Vec<Duration> {
    let req = PlaceRequest::gpu(4 << 30);
    let mut lat = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t = Instant::now();
        let outcome = scheduler.place_blocking(&req).unwrap();
        if i >= 200 {
            lat.push(t.elapsed());
        }
        match outcome {
            Outcome::Placed(p) => {
                scheduler.release(&p.reservation.unwrap().id).unwrap();
            }
            Outcome::Rejected { reason, .. } => panic!("rejected: {reason}"),
        }
    }
    lat
}

fn request() -> pb::PlaceRequest {
    pb::PlaceRequest {
        model: "m".into(),
        vram_bytes: 4 << 30,
        device_kind: pb::DeviceKind::Cuda as i32,
        ..Default::default()
    }
}

async fn over_grpc(scheduler: Arc<Scheduler>, n: usize) -> (Vec<Duration>, Vec<Duration>, f64) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SchedulerServer::new(SchedulerService::new(scheduler.clone())))
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    let channel =
        tonic::transport::Endpoint::from_shared(url).unwrap().tcp_nodelay(true).connect().await.unwrap();
    let mut client = SchedulerClient::new(channel);

    let mut one = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t = Instant::now();
        let placed = client.place(request()).await.unwrap().into_inner();
        if i >= 200 {
            one.push(t.elapsed());
        }
        let Some(pb::place_response::Result::Placement(p)) = placed.result else {
            panic!("rejected: {placed:?}")
        };
        let release = scheduler.clone();
        tokio::task::spawn_blocking(move || release.release(&p.reservation_id).unwrap()).await.unwrap();
    }

    let start = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let mut client = client.clone();
        callers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for _ in 0..n / CALLERS {
                let t = Instant::now();
                let placed = client.place(request()).await.unwrap().into_inner();
                lat.push(t.elapsed());
                assert!(matches!(placed.result, Some(pb::place_response::Result::Placement(_))));
            }
            lat
        }));
    }
    let mut many = Vec::new();
    for c in callers {
        many.extend(c.await.unwrap());
    }
    let rate = many.len() as f64 / start.elapsed().as_secs_f64();
    server.abort();
    (one, many, rate)
}

/// A bare 4 KiB write + fdatasync in `dir`, `n` times (the floor of a durable commit).
fn fsync_floor(dir: &std::path::Path, n: usize) -> Vec<Duration> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("fsync-floor");
    let mut file = std::fs::File::create(&path).unwrap();
    let page = [0x5au8; 4096];
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        file.seek(SeekFrom::Start((i % 64) as u64 * 4096)).unwrap();
        file.write_all(&page).unwrap();
        file.sync_data().unwrap();
        lat.push(t.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path).unwrap();
    lat
}

/// The 1-, 5- and 15-minute load averages.
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let hives = args.first().copied().unwrap_or(1000);
    let gpus = args.get(1).copied().unwrap_or(8);
    let n = args.get(2).copied().unwrap_or(2000);
    let base = std::env::var_os("RBEE_BENCH_STATE_DIR").map_or_else(std::env::temp_dir, Into::into);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("fleet: {hives} hives x {gpus} GPUs ({} devices), policy built-in:least-loaded", hives * gpus);
    println!("load average: {}", loadavg());
    {
        let dir = tempfile::tempdir_in(&base).unwrap();
        report("bare write+fdatasync", fsync_floor(dir.path(), 500));
    }
    if std::env::args().any(|a| a == "etcd") {
        return etcd_modes(&runtime, &base, hives, gpus, n);
    }
    for mode in [Mode::Off, Mode::OneByOne, Mode::Grouped] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        match mode {
            Mode::Off => println!("store off:"),
            Mode::OneByOne => println!("store on, one commit per write ({}):", dir.path().display()),
            Mode::Grouped => println!("store on, group commit ({}):", dir.path().display()),
        }
        // (Each scheduler is dropped, and its file closed, before the next opens it.)
        let sub = |name: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        report("in-process, 1 thread", in_process(&scheduler(hives, gpus, mode, &sub("a")), n));
        let (one, many, rate) = runtime.block_on(over_grpc(scheduler(hives, gpus, mode, &sub("b")), n));
        report("gRPC, 1 caller", one);
        report(&format!("gRPC, {CALLERS} callers"), many);
        println!("  gRPC, {CALLERS} callers: {rate:.0} placements/s");
        println!("  load average: {}", loadavg());
    }
}
