//! Preloading end to end: a real hive on `127.0.0.1:0` with a models directory on the
//! real disk (under the target directory, not a tmpfs), the generated tonic client, and
//! util-linux `fincore` as the kernel's independent view of the page cache. The
//! hostile files (a FIFO, a symlink to `/dev/zero`) are tried on the built `hive` binary,
//! which must still stop on SIGTERM.

use std::path::Path;
use std::time::Duration;

use rbee_hive::HiveConfig;
use rbee_hive::test_support::model_files::{RESIDENCY_DEADLINE, fake_proc, fincore_bytes, ready_model};
use rbee_hive::test_support::{TestHive, TestStream, as_sample, external_tool, models_config, subscribe};
use rbee_proto::v1 as pb;
use tonic::transport::Channel;

type Client = pb::hive_client::HiveClient<Channel>;

/// The big test model, bytes (the issue asks for 100-500 MB).
const BIG: usize = 100 << 20;
/// The small models of the budget test, bytes.
const SMALL: usize = 16 << 20;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn config(dir: &Path) -> HiveConfig {
    let mut c = models_config("preload-hive", dir, None);
    c.preload.residency_interval = Duration::from_millis(200);
    c
}

fn preload(id: &str, wait: bool) -> pb::PreloadModelRequest {
    pb::PreloadModelRequest { model_id: id.into(), wait }
}

fn evict(id: &str) -> pb::EvictModelRequest {
    pb::EvictModelRequest { model_id: id.into() }
}

/// The model as Discover reports it, once `pick` accepts it (deadline
/// [`RESIDENCY_DEADLINE`]).
async fn model_until(client: &mut Client, id: &str, pick: impl Fn(&pb::Model) -> bool) -> pb::Model {
    let deadline = tokio::time::Instant::now() + RESIDENCY_DEADLINE;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        let caps = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
        if let Some(m) = caps.models.into_iter().find(|m| m.id == id) {
            if pick(&m) {
                return m;
            }
            last = Some(m);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("model {id} never reached the expected state; last {last:?}");
}

fn share(m: &pb::Model) -> f64 {
    m.resident_bytes.unwrap_or(0) as f64 / m.size_bytes as f64
}

#[tokio::test]
async fn preload_makes_a_model_resident_evict_drops_it_and_fincore_agrees() {
    let fincore = external_tool("fincore", "apt-get install util-linux");
    let dir = tmp();
    let model_dir = ready_model(dir.path(), "big", &[("weights.bin", BIG)]);
    let hive = TestHive::start_with(config(dir.path())).await;
    let mut client = hive.client().await;
    let cold = model_until(&mut client, "big", |m| m.resident_bytes.is_some()).await;
    assert!(share(&cold) <= 0.05, "starts cold: {cold:?}");
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;

    let r = client.preload_model(preload("big", true)).await.unwrap().into_inner();
    assert_eq!(r.size_bytes, BIG as u64);
    assert!(r.resident_bytes as f64 >= 0.95 * BIG as f64, "after preload: {r:?}");
    let warm = model_until(&mut client, "big", |m| share(m) >= 0.95).await;
    assert!(warm.warm, "a preloaded model is kept warm: {warm:?}");
    let done = stream
        .until(|m| {
            as_sample(m)?
                .preloads
                .into_iter()
                .find(|p| p.model_id == "big" && p.phase == pb::DownloadPhase::Done as i32)
        })
        .await;
    assert_eq!(done.bytes_total, Some(BIG as u64));
    let bw = stream.until(|m| as_sample(m)?.read_bandwidth).await;
    assert!(bw.disk_bytes_per_s.unwrap_or(0.0) > 0.0, "a cold preload measures the disk: {bw:?}");
    if let Some(fincore) = &fincore {
        // The preload is done: the kernel's figure holds still now. `warm` was read as
        // soon as 95% was resident, possibly mid-preload, so the hive's figure is read
        // again (its next measurement) before the two are compared.
        let kernel = fincore_bytes(fincore, &model_dir.join("weights.bin"));
        let now = model_until(&mut client, "big", |m| {
            m.resident_bytes.is_some_and(|b| b.abs_diff(kernel) <= 1 << 20)
        })
        .await;
        let ours = now.resident_bytes.unwrap();
        assert!(kernel.abs_diff(ours) <= 1 << 20, "fincore says {kernel}, the hive {ours}");
    }

    let r = client.evict_model(evict("big")).await.unwrap().into_inner();
    assert!(r.resident_bytes as f64 <= 0.05 * BIG as f64, "after evict: {r:?}");
    let gone = model_until(&mut client, "big", |m| share(m) <= 0.05).await;
    assert!(!gone.warm);
    if let Some(fincore) = &fincore {
        let kernel = fincore_bytes(fincore, &model_dir.join("weights.bin"));
        assert!(kernel.abs_diff(gone.resident_bytes.unwrap()) <= 1 << 20, "fincore says {kernel}: {gone:?}");
    }
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn the_budget_evicts_the_least_recently_used_model() {
    let dir = tmp();
    for id in ["a", "b", "c"] {
        ready_model(dir.path(), id, &[("w.bin", SMALL)]);
    }
    let mut c = config(dir.path());
    c.preload.budget = Some(2 * SMALL as u64 + (SMALL as u64) / 2);
    let hive = TestHive::start_with(c).await;
    let mut client = hive.client().await;
    model_until(&mut client, "c", |m| m.resident_bytes.is_some()).await;

    for id in ["a", "b", "a"] {
        let r = client.preload_model(preload(id, true)).await.unwrap().into_inner();
        assert!(r.evicted.is_empty(), "{id}: {r:?}");
    }
    // a was used after b: b is the least recently used.
    let r = client.preload_model(preload("c", true)).await.unwrap().into_inner();
    assert_eq!(r.evicted, vec!["b".to_owned()]);
    let b = model_until(&mut client, "b", |m| share(m) <= 0.05).await;
    assert!(!b.warm);
    for id in ["a", "c"] {
        let m = model_until(&mut client, id, |m| share(m) >= 0.95).await;
        assert!(m.warm, "{m:?}");
    }

    let over = pb::PreloadModelRequest { model_id: "nope".into(), wait: true };
    assert_eq!(client.preload_model(over).await.unwrap_err().code(), tonic::Code::NotFound);
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn a_model_larger_than_the_budget_or_memavailable_or_under_pressure_is_refused() {
    let dir = tmp();
    ready_model(dir.path(), "big", &[("weights.bin", SMALL)]);
    let proc_dir = tmp();
    // 1 GiB of RAM, of which 8 MiB available: the 16 MiB model cannot fit.
    fake_proc(proc_dir.path(), 1 << 30, 8 << 20, None);
    let mut c = config(dir.path());
    c.preload.proc_root = proc_dir.path().to_owned();
    let hive = TestHive::start_with(c).await;
    let mut client = hive.client().await;
    model_until(&mut client, "big", |m| m.resident_bytes.is_some()).await;

    let e = client.preload_model(preload("big", true)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("not enough memory to preload big") && e.message().contains("MemAvailable"),
        "{e:?}"
    );
    let m = model_until(&mut client, "big", |m| m.resident_bytes.is_some()).await;
    assert!(!m.warm && share(&m) <= 0.05, "nothing read: {m:?}");

    // Plenty of memory, but the machine is under pressure.
    fake_proc(proc_dir.path(), 64 << 30, 32 << 30, Some(42.0));
    let e = client.preload_model(preload("big", true)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("memory pressure: some avg10 = 42.0%"), "{e:?}");

    // Pressure gone: it works, and the hive served on throughout.
    fake_proc(proc_dir.path(), 64 << 30, 32 << 30, Some(0.0));
    let r = client.preload_model(preload("big", true)).await.unwrap().into_inner();
    assert!(r.resident_bytes as f64 >= 0.95 * SMALL as f64, "{r:?}");
    hive.stop().await.unwrap();

    let mut c = config(dir.path());
    c.preload.budget = Some(SMALL as u64 / 2);
    let hive = TestHive::start_with(c).await;
    let mut client = hive.client().await;
    model_until(&mut client, "big", |m| m.resident_bytes.is_some()).await;
    let e = client.preload_model(preload("big", false)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("more than the whole --ram-cache-budget"), "{e:?}");
    hive.stop().await.unwrap();
}

/// Bytes of the concurrent budget test's models (three at once under 2.5 of them).
const MID: usize = 48 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_preloads_count_in_flight_against_the_budget() {
    let dir = tmp();
    let ids = ["p", "q", "r"];
    for id in ids {
        ready_model(dir.path(), id, &[("w.bin", MID)]);
    }
    let budget = 2 * MID as u64 + MID as u64 / 2;
    let mut c = config(dir.path());
    c.preload.budget = Some(budget);
    let hive = TestHive::start_with(c).await;
    let mut client = hive.client().await;
    for id in ids {
        model_until(&mut client, id, |m| m.resident_bytes.is_some()).await;
    }
    // All three at once: one whose read is in flight is never evicted for another, so
    // one of them waits its turn (UNAVAILABLE) instead of pushing the total over.
    let calls = ids.map(|id| {
        let mut client = client.clone();
        async move { client.preload_model(preload(id, true)).await }
    });
    let [a, b, c] = calls;
    let results = tokio::join!(a, b, c);
    let mut refused = 0;
    for r in [results.0, results.1, results.2] {
        match r {
            Ok(r) => assert!(r.into_inner().resident_bytes as f64 >= 0.95 * MID as f64),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                assert!(e.message().contains("preloads in flight"), "{e:?}");
                refused += 1;
            }
        }
    }
    assert!(refused <= 1, "at most one had to wait");
    // What stays resident fits the budget (1 MiB of slack per model for the deadband).
    let deadline = tokio::time::Instant::now() + RESIDENCY_DEADLINE;
    let mut total = 0;
    while tokio::time::Instant::now() < deadline {
        let caps = client.discover(pb::DiscoverRequest {}).await.unwrap().into_inner().capabilities.unwrap();
        total = caps.models.iter().filter_map(|m| m.resident_bytes).sum::<u64>();
        if total <= budget + (3 << 20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(total <= budget + (3 << 20), "{total} bytes resident over a budget of {budget}");
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn a_model_file_that_grew_is_read_only_up_to_its_catalog_size() {
    let dir = tmp();
    let model_dir = ready_model(dir.path(), "grown", &[("w.bin", SMALL)]);
    let hive = TestHive::start_with(config(dir.path())).await;
    let mut client = hive.client().await;
    model_until(&mut client, "grown", |m| m.resident_bytes.is_some()).await;
    // 1 GiB more of it (sparse): what is past the catalog's size is never read.
    let file = std::fs::OpenOptions::new().write(true).open(model_dir.join("w.bin")).unwrap();
    file.set_len(SMALL as u64 + (1 << 30)).unwrap();
    let r = client.preload_model(preload("grown", true)).await.unwrap().into_inner();
    assert_eq!(r.size_bytes, SMALL as u64);
    // Kernel readahead may bring a little past it, never the gigabyte.
    assert!(r.resident_bytes <= SMALL as u64 + (64 << 20), "read past the catalog's size: {r:?}");
    assert!(r.resident_bytes as f64 >= 0.95 * SMALL as f64, "{r:?}");
    hive.stop().await.unwrap();
}

/// Hostile round 3, F3: a warm model that changes is no longer kept warm, so the
/// residency loop never reads it back in past `--ram-cache-budget`: (a) a hand-placed
/// model that grows, (b) one deleted by DeleteModel and placed again, bigger. The old
/// loop kept both warm at their old size and re-read them whole. A model that was only
/// reclaimed by the kernel is still read again.
#[tokio::test]
async fn a_warm_model_that_is_deleted_or_grows_is_never_rewarmed_past_the_budget() {
    let dir = tmp();
    let budget = SMALL as u64 + SMALL as u64 / 2;
    // (a) hand-placed: files without a manifest, verified by the hive.
    let gr = dir.path().join("gr");
    std::fs::create_dir_all(&gr).unwrap();
    std::fs::write(gr.join("w.bin"), vec![7u8; 1 << 20]).unwrap();
    ready_model(dir.path(), "dm", &[("w.bin", SMALL)]);
    ready_model(dir.path(), "keep", &[("w.bin", 1 << 20)]);
    let mut c = config(dir.path());
    c.preload.budget = Some(budget);
    let hive = TestHive::start_with(c).await;
    let mut client = hive.client().await;
    for id in ["gr", "dm", "keep"] {
        model_until(&mut client, id, |m| {
            m.state == pb::ModelState::Ready as i32 && m.resident_bytes.is_some()
        })
        .await;
        let r = client.preload_model(preload(id, true)).await.unwrap().into_inner();
        assert!(r.resident_bytes as f64 >= 0.95 * r.size_bytes as f64, "{id}: {r:?}");
        model_until(&mut client, id, |m| m.warm && share(m) >= 0.95).await;
    }

    // (b) DeleteModel, then the same id again at twice the budget's size.
    client.delete_model(pb::DeleteModelRequest { model_id: "dm".into() }).await.unwrap();
    let dm = ready_model(dir.path(), "dm", &[("w.bin", 2 * SMALL)]);
    // (a) the hand-placed model grows past the budget; its pages are dropped.
    let mut f = std::fs::OpenOptions::new().append(true).open(gr.join("w.bin")).unwrap();
    std::io::Write::write_all(&mut f, &vec![9u8; 2 * SMALL]).unwrap();
    f.sync_all().unwrap();
    rbee_pagecache::evict(&f).unwrap();
    drop(f);
    let sizes =
        [("dm", dm.join("w.bin"), 2 * SMALL as u64), ("gr", gr.join("w.bin"), 2 * SMALL as u64 + (1 << 20))];
    for (id, _, size) in &sizes {
        let m = model_until(&mut client, id, |m| {
            m.state == pb::ModelState::Ready as i32 && m.size_bytes == *size && m.resident_bytes.is_some()
        })
        .await;
        assert!(!m.warm, "{id} changed: no longer warm: {m:?}");
    }
    // Their pages go (hashing the new files read them); once the hive has measured
    // them cold, the kernel reclaims the unchanged model too: the residency loop reads
    // that one again, and only that one.
    let drop_pages = |path: &Path| rbee_pagecache::evict(&std::fs::File::open(path).unwrap()).unwrap();
    for (_, file, _) in &sizes {
        drop_pages(file);
    }
    for (id, _, _) in &sizes {
        model_until(&mut client, id, |m| m.resident_bytes.is_some_and(|r| r <= 1 << 20)).await;
    }
    let keep = std::fs::File::open(dir.path().join("keep/w.bin")).unwrap();
    rbee_pagecache::evict(&keep).unwrap();
    let deadline = tokio::time::Instant::now() + RESIDENCY_DEADLINE;
    while rbee_pagecache::resident_bytes(&keep).unwrap().0 < 1 << 20 {
        assert!(tokio::time::Instant::now() < deadline, "the reclaimed warm model was never read again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (id, file, _) in &sizes {
        let m = model_until(&mut client, id, |m| m.resident_bytes.is_some()).await;
        assert!(!m.warm && m.resident_bytes.unwrap() <= 1 << 20, "{id} re-warmed: {m:?}");
        let (resident, _) = rbee_pagecache::resident_bytes(&std::fs::File::open(file).unwrap()).unwrap();
        assert!(resident <= budget, "{id}: {resident} bytes resident over a budget of {budget}");
        // Preloading it again is admitted at its size now: over the whole budget.
        let e = client.preload_model(preload(id, true)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{id}: {e:?}");
        assert!(e.message().contains("more than the whole --ram-cache-budget"), "{e:?}");
    }
    hive.stop().await.unwrap();
}

/// Hostile round 3, F7: a model's subdirectory swapped for a symlink to a directory
/// outside the model: the preload fails naming the file, and the outside file is never
/// read (O_NOFOLLOW on the last component alone let the old preload read it).
#[tokio::test]
async fn a_preload_never_follows_a_symlinked_directory_out_of_the_model() {
    let dir = tmp();
    std::fs::create_dir_all(dir.path().join("sym/sub")).unwrap();
    let model = ready_model(dir.path(), "sym", &[("sub/w.bin", SMALL)]);
    let outside = tmp();
    std::fs::create_dir_all(outside.path().join("sub")).unwrap();
    let secret = outside.path().join("sub/w.bin");
    std::fs::write(&secret, vec![1u8; SMALL]).unwrap();
    let f = std::fs::File::open(&secret).unwrap();
    f.sync_all().unwrap();
    rbee_pagecache::evict(&f).unwrap();
    let hive = TestHive::start_with(config(dir.path())).await;
    let mut client = hive.client().await;
    model_until(&mut client, "sym", |m| m.resident_bytes.is_some()).await;
    std::fs::remove_dir_all(model.join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("sub"), model.join("sub")).unwrap();

    let e = client.preload_model(preload("sym", true)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
    assert!(e.message().contains("symbolic link") && e.message().contains("w.bin"), "{e:?}");
    let (resident, _) = rbee_pagecache::resident_bytes(&f).unwrap();
    assert!(resident <= 1 << 20, "the outside file was read: {resident} bytes resident");
    hive.stop().await.unwrap();
}

/// The built `hive` binary on `models`; killed when dropped.
struct HiveBinary {
    child: std::process::Child,
    addr: String,
}

impl Drop for HiveBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HiveBinary {
    fn start(models: &Path) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hive"))
            .args(["serve", "--listen", "127.0.0.1:0", "--hive-id", "preload-bin", "--demo"])
            .arg("--models-dir")
            .arg(models)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the hive binary");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listen=").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(20)).expect("the hive logs its listen address");
        Self { child, addr }
    }

    /// Sends SIGTERM and waits for the exit, up to `deadline`; `None` if it runs on.
    async fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let until = tokio::time::Instant::now() + deadline;
        while tokio::time::Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

#[tokio::test]
async fn a_model_file_swapped_for_a_fifo_or_dev_zero_fails_its_preload_and_sigterm_still_stops_the_hive() {
    let dir = tmp();
    let fifo_dir = ready_model(dir.path(), "fifo", &[("w.bin", SMALL)]);
    let zero_dir = ready_model(dir.path(), "zero", &[("w.bin", SMALL)]);
    let mut hive = HiveBinary::start(dir.path());
    let mut client = Client::connect(format!("http://{}", hive.addr)).await.unwrap();
    for id in ["fifo", "zero"] {
        model_until(&mut client, id, |m| m.resident_bytes.is_some()).await;
    }
    std::fs::remove_file(fifo_dir.join("w.bin")).unwrap();
    let made = std::process::Command::new("mkfifo").arg(fifo_dir.join("w.bin")).status().unwrap();
    assert!(made.success(), "mkfifo");
    std::fs::remove_file(zero_dir.join("w.bin")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", zero_dir.join("w.bin")).unwrap();

    for (id, what) in
        [("fifo", "a FIFO, not a regular file"), ("zero", "a symbolic link, not a regular file")]
    {
        for wait in [true, false] {
            let call = client.preload_model(preload(id, wait));
            let e = tokio::time::timeout(RESIDENCY_DEADLINE, call)
                .await
                .unwrap_or_else(|_| panic!("the preload of {id} must fail, not hang"))
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::Aborted, "{id}: {e:?}");
            assert!(e.message().starts_with("preload failed: "), "{id}: {e:?}");
            assert!(e.message().contains(what) && e.message().contains("w.bin"), "{id}: {e:?}");
        }
    }
    let status = hive.terminate(Duration::from_secs(30)).await.expect("SIGTERM stops the hive");
    assert!(status.success(), "{status:?}");
}
