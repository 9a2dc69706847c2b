//! Who holds each GPU's memory: the attribution of raw process lists against fixture
//! `/proc` and cgroup trees (cgroup v2 and a v1 hybrid), against the real `/proc` with
//! processes the test starts, and through the real hive's MetricsStream.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use rbee_hive::procs::{ProcessAttributor, raw};
use rbee_hive::source::{RawGpuProcess, RawProcesses};
use rbee_hive::test_support::sleeper;
use rbee_shared::gpu_process::reservation_id_of_token;
use rbee_shared::{GpuProcess, GpuSample};

const GIB: u64 = 1 << 30;
const DOCKER_ID: &str = "4f1c0a7e2b9d8c6e5a3f1b0d9e8c7a6b5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c";

fn fixture(case: &str) -> ProcessAttributor {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/procs").join(case);
    ProcessAttributor::with_roots(3, root.join("proc"), root.join("cgroup"))
}

fn gpu(used: u64) -> Vec<GpuSample> {
    vec![GpuSample { id: "GPU-a".into(), vram_used_bytes: Some(used), ..GpuSample::default() }]
}

fn listed(gpus: &[GpuSample]) -> &[GpuProcess] {
    &gpus[0].processes.as_ref().expect("a process list").listed
}

#[test]
fn cgroup_v2_fixture_names_containers_units_and_group_totals() {
    let mut a = fixture("v2");
    let mut gpus = gpu(20 * GIB);
    let list =
        vec![raw(102, GIB), raw(100, 8 * GIB), raw(103, GIB / 2), raw(101, 4 * GIB), raw(999, GIB / 4)];
    a.attribute(&mut gpus, vec![("GPU-a".into(), RawProcesses::Listed(list))]);
    let p = listed(&gpus);
    assert_eq!(p.iter().map(|p| p.pid).collect::<Vec<_>>(), [100, 101, 102], "top 3 by VRAM, most first");
    let all = gpus[0].processes.as_ref().unwrap();
    assert_eq!((all.unlisted, all.unlisted_vram_bytes), (2, GIB / 2 + GIB / 4));
    assert_eq!(gpus[0].unattributed_vram_bytes, Some(20 * GIB - 13 * GIB), "used minus the listed");

    let vllm = &p[0];
    assert_eq!(vllm.name.as_deref(), Some("vllm"));
    assert_eq!(vllm.used_vram_bytes, Some(8 * GIB));
    assert_eq!(vllm.rss_bytes, Some(2 * GIB));
    assert_eq!(vllm.container_runtime.as_deref(), Some("docker"));
    assert_eq!(vllm.container_id.as_deref(), Some(DOCKER_ID));
    assert_eq!(vllm.cgroup_memory_bytes, Some(3 * GIB));
    assert_eq!(vllm.cgroup_cpu_usage_usec, Some(7_000_000));
    assert_eq!(vllm.reservation_id, Some(reservation_id_of_token(b"tok-1")), "the id its token stands for");
    assert_eq!(vllm.cpu_percent, None, "CPU% needs two readings");

    let ollama = &p[1];
    assert_eq!(
        (ollama.systemd_unit.as_deref(), ollama.container_id.as_deref()),
        (Some("ollama.service"), None)
    );
    assert_eq!(ollama.cgroup_memory_bytes, Some(1536 << 20));
    assert_eq!(ollama.reservation_id, None);
    assert_eq!(p[2].systemd_unit.as_deref(), Some("session-3.scope"));
    assert_eq!(p[2].cgroup_memory_bytes, None, "a group without the files has no totals");

    let mut all = ProcessAttributor::with_roots(8, a_root("v2", "proc"), a_root("v2", "cgroup"));
    let mut gpus = gpu(20 * GIB);
    all.attribute(
        &mut gpus,
        vec![("GPU-a".into(), RawProcesses::Listed(vec![raw(103, GIB), raw(999, GIB)]))],
    );
    let kube = &listed(&gpus)[0];
    assert_eq!(kube.container_runtime.as_deref(), Some("containerd"));
    assert!(kube.cgroup.as_deref().unwrap().starts_with("/kubepods.slice/"));
    let gone = &listed(&gpus)[1];
    assert_eq!(
        (gone.pid, gone.name.as_ref(), gone.used_vram_bytes),
        (999, None, Some(GIB)),
        "a pid without /proc is still listed"
    );
}

fn a_root(case: &str, sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/procs").join(case).join(sub)
}

#[test]
fn hybrid_v1_fixture_uses_the_v1_path_and_has_no_group_totals() {
    let mut a = fixture("hybrid");
    let mut gpus = gpu(4 * GIB);
    a.attribute(
        &mut gpus,
        vec![("GPU-a".into(), RawProcesses::Listed(vec![raw(200, 2 * GIB), raw(201, GIB)]))],
    );
    let p = listed(&gpus);
    assert_eq!(p[0].cgroup.as_deref(), Some(format!("/docker/{DOCKER_ID}").as_str()));
    assert_eq!(p[0].container_runtime.as_deref(), Some("docker"));
    assert_eq!(p[0].container_id.as_deref(), Some(DOCKER_ID));
    assert_eq!(
        (p[0].cgroup_memory_bytes, p[0].cgroup_cpu_usage_usec),
        (None, None),
        "v1 has no memory.current"
    );
    assert_eq!(p[1].systemd_unit.as_deref(), Some("display-manager.service"));
    assert_eq!(p[1].rss_bytes, None, "no VmRSS line, no RSS");
}

#[test]
fn refused_or_unsupported_lists_stay_absent_and_empty_lists_are_empty() {
    let mut a = ProcessAttributor::new(32);
    let mut gpus = gpu(GIB);
    gpus.push(GpuSample { id: "GPU-b".into(), vram_used_bytes: Some(GIB), ..GpuSample::default() });
    gpus.push(GpuSample { id: "GPU-c".into(), vram_used_bytes: Some(GIB), ..GpuSample::default() });
    let raw = vec![
        ("GPU-a".into(), RawProcesses::NoPermission),
        ("GPU-b".into(), RawProcesses::NotSupported),
        ("GPU-c".into(), RawProcesses::Listed(vec![])),
    ];
    a.attribute(&mut gpus, raw);
    assert_eq!((gpus[0].processes.as_ref(), gpus[0].unattributed_vram_bytes), (None, None));
    assert_eq!((gpus[1].processes.as_ref(), gpus[1].unattributed_vram_bytes), (None, None));
    assert_eq!(gpus[2].processes.as_ref().map(|p| p.listed.len()), Some(0));
    assert_eq!(gpus[2].unattributed_vram_bytes, Some(GIB), "nothing listed: all of it unattributed");
}

#[test]
fn real_processes_get_name_rss_cgroup_reservation_and_cpu() {
    let worker = sleeper(Some("tok-real"));
    let other = sleeper(None);
    let me = std::process::id();
    let mut a = ProcessAttributor::new(32);
    let list = |used| {
        RawProcesses::Listed(vec![
            RawGpuProcess { pid: worker.pid(), used_bytes: Some(used) },
            RawGpuProcess { pid: other.pid(), used_bytes: None },
            RawGpuProcess { pid: me, used_bytes: Some(1) },
        ])
    };
    let mut gpus = gpu(8 * GIB);
    a.attribute(&mut gpus, vec![("GPU-a".into(), list(2 * GIB))]);
    let p = listed(&gpus);
    assert_eq!(p[0].pid, worker.pid());
    assert_eq!(p[0].name.as_deref(), Some("sleep"));
    assert!(p[0].rss_bytes.is_some_and(|r| r > 0), "{:?}", p[0]);
    assert!(p[0].cgroup.is_some(), "every Linux process has a cgroup: {:?}", p[0]);
    assert_eq!(p[0].reservation_id, Some(reservation_id_of_token(b"tok-real")));
    assert_eq!(p[2].reservation_id, None, "the other sleeper carries none");
    assert_eq!(gpus[0].unattributed_vram_bytes, Some(6 * GIB - 1));

    // Burn 200 ms of CPU on this thread (counted by the kernel, so a loaded machine
    // only makes it take longer); the second reading sees at least that share.
    let since = Instant::now();
    // utime + stime of this thread, in clock ticks (100 a second).
    let on_cpu = || {
        let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split(' ').collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let (start, mut x) = (on_cpu(), 0u64);
    while on_cpu() - start < 20 {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(since.elapsed() < Duration::from_secs(20), "never got 200 ms of CPU");
    }
    let mut gpus = gpu(8 * GIB);
    a.attribute(&mut gpus, vec![("GPU-a".into(), list(2 * GIB))]);
    let floor = 0.2 / since.elapsed().as_secs_f32() * 100.0 * 0.8;
    let mine = listed(&gpus).iter().find(|p| p.pid == me).unwrap();
    assert!(mine.cpu_percent.is_some_and(|c| c >= floor), "{mine:?} < {floor}%");
    assert_eq!(a.tracked_pids(), 3);

    // Pids that leave the list leave the CPU map.
    let mut gpus = gpu(8 * GIB);
    a.attribute(&mut gpus, vec![("GPU-a".into(), RawProcesses::Listed(vec![raw(me, 1)]))]);
    assert_eq!(a.tracked_pids(), 1);
}

#[tokio::test]
async fn the_hive_streams_the_processes_of_a_child_the_test_starts() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("worker.pid");
    let scenario = format!(
        "step_s = 0.1\n[[gpu]]\nid = \"GPU-sim-0\"\nvram_total = \"80GiB\"\n\
         [[gpu.process]]\npid_file = {pid_file:?}\nused = [\"6GiB\"]\n\
         [[gpu]]\nid = \"GPU-sim-1\"\nvram_total = \"80GiB\"\nvram_used = [\"1GiB\"]\nprocess_list = \"no_permission\"\n"
    );
    let hive = TestHive::start(&scenario).await;
    let mut stream = TestStream::open(&mut hive.client().await, subscribe(100)).await;
    // Before the child exists the list is there, and empty.
    let first = stream.until(as_sample).await;
    assert_eq!(first.gpus[0].processes.as_ref().map(|p| p.listed.len()), Some(0));
    assert_eq!(first.gpus[1].processes, None, "no permission: absent, not empty");

    let worker = sleeper(Some("tok-e2e"));
    std::fs::write(&pid_file, worker.pid().to_string()).unwrap();
    let pid = worker.pid();
    let p = stream
        .until(|m| {
            let s = as_sample(m)?;
            s.gpus[0].processes.as_ref()?.listed.iter().find(|p| p.pid == pid).cloned()
        })
        .await;
    assert_eq!(p.name.as_deref(), Some("sleep"));
    assert_eq!(p.used_vram_bytes, Some(6 * GIB));
    assert!(p.rss_bytes.is_some_and(|r| r > 0));
    assert!(p.cgroup.is_some());
    assert_eq!(p.reservation_id, Some(reservation_id_of_token(b"tok-e2e")));
    drop(worker);
    hive.stop().await.unwrap();
}
