//! The NVML path without a GPU: the real `hive` binary loads the fake driver library
//! (`rbee-nvml-fake`, a cdylib of this workspace) through `--nvml-lib`, nvml-wrapper's
//! normal loading path, and a scenario file says what the "driver" answers.
//!
//! The libraries are dev-dependencies of this crate, so any `cargo test` that builds
//! these tests builds them too (`test_support::fake_nvml_lib` finds them).

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use rbee_hive::test_support::{sleeper, write_pid_file};
use rbee_proto::v1 as pb;
use rbee_proto::v1::hive_client::HiveClient;

fn fake() -> PathBuf {
    fake_nvml_lib(false)
}

fn old_driver() -> PathBuf {
    fake_nvml_lib(true)
}

/// A scenario file.
fn scenario(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// One GPU with every reading scripted.
const FULL: &str = r#"
driver_version = "550.54.15"
cuda_version = "12.4"
[[gpu]]
uuid = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
name = "NVIDIA H100 80GB HBM3"
pci_bus_id = "00000000:17:00.0"
memory_total = "80GiB"
memory_used = ["5GiB"]
memory_reserved = "512MiB"
compute_capability = "9.0"
power_limit_w = 700
mig_mode = "disabled"
util_percent = [37]
mem_util_percent = [12]
temperature_c = [55]
power_draw_w = [310]
sm_clock_mhz = [1980]
mem_clock_mhz = [2619]
ecc_corrected = [4]
ecc_uncorrected = [0]
"#;

/// `hive probe --json` against `lib`.
fn probe(lib: &Path, scenario: &Path) -> (serde_json::Value, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["probe", "--json", "--nvml-lib"])
        .arg(lib)
        .env("RBEE_FAKE_NVML_SCENARIO", scenario)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    (serde_json::from_slice(&out.stdout).unwrap(), err)
}

/// A 64-bit count from proto3 JSON (a string) or a smaller one (a number).
fn n(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// The GPU `id` among a probe's capabilities.
fn cap_gpu<'a>(v: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    v["capabilities"]["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id)
        .unwrap_or_else(|| panic!("{v}"))
}

/// The real hive binary against `lib` and `scenario`, rescanning every 100 ms.
struct Hive {
    process: HiveProcess,
    _state: tempfile::TempDir,
}

impl Hive {
    fn start(lib: &Path, scenario: &Path) -> Self {
        let state = tempfile::tempdir().unwrap();
        let process = HiveProcess::on_fake_driver(
            env!("CARGO_BIN_EXE_hive").as_ref(),
            lib,
            scenario,
            "fake-nvml",
            state.path(),
        );
        Self { process, _state: state }
    }

    async fn stream(&self) -> TestStream {
        let mut client = HiveClient::connect(self.process.url()).await.unwrap();
        TestStream::open(&mut client, subscribe(100)).await
    }
}

fn gpu<'a>(s: &'a pb::Sample, id: &str) -> Option<&'a pb::GpuSample> {
    s.gpus.iter().find(|g| g.id == id)
}

#[tokio::test]
async fn every_field_arrives_through_the_real_loading_path() {
    let file = scenario(FULL);
    let hive = Hive::start(&fake(), file.path());
    let mut stream = hive.stream().await;
    let snap = stream.until(as_snapshot).await;
    assert_eq!(snap.identity.unwrap().gpu_source(), pb::DeviceSourceKind::Nvml);
    let caps = snap.capabilities.unwrap();
    let g = &caps.gpus[0];
    assert_eq!(g.id, "GPU-aaaaaaaa-0000-0000-0000-000000000000");
    assert_eq!((g.index, g.name.as_str()), (0, "NVIDIA H100 80GB HBM3"));
    assert_eq!(g.pci_bus_id, "00000000:17:00.0");
    assert_eq!(g.vram_total_bytes, 80 << 30);
    let cc = g.compute_capability.unwrap();
    assert_eq!((cc.major, cc.minor), (9, 0));
    assert_eq!(g.driver_version.as_deref(), Some("550.54.15"));
    assert_eq!(g.cuda_version.as_deref(), Some("12.4"));
    assert_eq!(g.power_limit_mw, Some(700_000));
    assert_eq!(g.mig_mode(), pb::MigMode::Disabled);
    assert!(caps.backends.contains(&(pb::Backend::Cuda as i32)));

    let s = stream.until(as_sample).await;
    let g = &s.gpus[0];
    assert_eq!(g.vram_used_bytes, Some(5 << 30));
    assert_eq!(g.vram_reserved_bytes, Some(512 << 20));
    assert_eq!(g.vram_free_bytes, Some((75 << 30) - (512 << 20)), "total = used + reserved + free");
    assert_eq!((g.gpu_util_percent, g.mem_util_percent), (Some(37.0), Some(12.0)));
    assert_eq!((g.temperature_c, g.power_draw_mw), (Some(55.0), Some(310_000)));
    assert_eq!((g.sm_clock_mhz, g.mem_clock_mhz), (Some(1980), Some(2619)));
    assert_eq!((g.ecc_corrected_volatile, g.ecc_uncorrected_volatile), (Some(4), Some(0)));
    assert_eq!((g.xid_events, g.last_xid), (Some(0), None), "registered for XID events, none yet");
    assert!(s.lost_gpus.is_empty());
}

#[tokio::test]
async fn an_unsupported_field_is_absent_not_zero_and_mig_mode_is_reported() {
    let text = format!(
        "{FULL}\n[[gpu]]\nuuid = \"GPU-b\"\nmemory_total = \"24GiB\"\nmemory_used = [0]\nmig_mode = \"enabled\"\n\
         util_percent = [1]\npower_draw_w = [100]\nnot_supported = [\"nvmlDeviceGetPowerUsage\", \"nvmlDeviceGetTemperature\"]\n"
    );
    let file = scenario(&text);
    let (v, _) = probe(&fake(), file.path());
    assert_eq!(v["gpuSource"], "DEVICE_SOURCE_KIND_NVML");
    let b = cap_gpu(&v, "GPU-b");
    assert_eq!(b["migMode"], "MIG_MODE_ENABLED", "{v}");
    let sample = v["sample"]["gpus"].as_array().unwrap().iter().find(|g| g["id"] == "GPU-b").unwrap();
    assert!(sample.get("powerDrawMw").is_none() && sample.get("temperatureC").is_none(), "{sample}");
    assert_eq!(sample["gpuUtilPercent"], 1.0, "the other fields still arrive");
    assert_eq!(sample["vramUsedBytes"], "0", "a real 0 stays 0");
}

#[tokio::test]
async fn a_lost_gpu_is_removed_with_its_reason_until_it_answers_again() {
    let text = format!(
        "{FULL}\n[[gpu]]\nuuid = \"GPU-b\"\nmemory_total = \"24GiB\"\nmemory_used = [0]\nlost_at_s = 2.0\nback_at_s = 4.0\n"
    );
    let file = scenario(&text);
    let hive = Hive::start(&fake(), file.path());
    let mut stream = hive.stream().await;
    let caps = stream.until(as_snapshot).await.capabilities.unwrap();
    assert_eq!(caps.gpus.len(), 2);
    let removed = stream.until(as_diff).await;
    assert_eq!(removed.gpus_removed, ["GPU-b"]);
    let s = stream.until(as_sample).await;
    assert!(gpu(&s, "GPU-aaaaaaaa-0000-0000-0000-000000000000").is_some(), "the other GPU keeps serving");
    assert!(gpu(&s, "GPU-b").is_none());
    let lost = &s.lost_gpus[0];
    assert_eq!((lost.index, lost.id.as_str()), (1, "GPU-b"));
    assert!(lost.reason.contains("GPU_IS_LOST"), "{}", lost.reason);
    assert!(lost.since_unix_ms > 0);
    let added = stream.until(as_diff).await;
    assert_eq!(added.gpus_added.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), ["GPU-b"]);
    let s = stream.until(as_sample).await;
    assert!(s.lost_gpus.is_empty() && gpu(&s, "GPU-b").is_some(), "{s:?}");
}

#[tokio::test]
async fn xid_79_and_uncorrected_ecc_errors_reach_the_sample() {
    let text =
        FULL.replace("ecc_uncorrected = [0]", "ecc_uncorrected = [3]\nxid = [{ at_s = 0.5, code = 79 }]");
    let file = scenario(&text);
    let hive = Hive::start(&fake(), file.path());
    let mut stream = hive.stream().await;
    let g = stream
        .until(|m| as_sample(m).and_then(|s| s.gpus.into_iter().find(|g| g.xid_events == Some(1))))
        .await;
    assert_eq!(g.last_xid, Some(79));
    assert_eq!(g.ecc_uncorrected_volatile, Some(3));
}

#[tokio::test]
async fn a_gpu_that_appears_later_gives_an_add_diff() {
    let text = format!("{FULL}\n[[gpu]]\nuuid = \"GPU-late\"\nmemory_total = \"24GiB\"\nappear_at_s = 2.0\n");
    let file = scenario(&text);
    let hive = Hive::start(&fake(), file.path());
    let mut stream = hive.stream().await;
    assert_eq!(stream.until(as_snapshot).await.capabilities.unwrap().gpus.len(), 1);
    let added = stream.until(as_diff).await;
    assert_eq!(
        added.gpus_added.iter().map(|g| (g.id.as_str(), g.index)).collect::<Vec<_>>(),
        [("GPU-late", 1)]
    );
    let s = stream.until(as_sample).await;
    assert_eq!(gpu(&s, "GPU-late").and_then(|g| g.vram_used_bytes), Some(0));
}

#[test]
fn a_failing_init_leaves_the_hive_cpu_only_with_one_clear_log_line() {
    let file = scenario(&format!("init_error = \"DRIVER_NOT_LOADED\"\n{FULL}"));
    let (v, err) = probe(&fake(), file.path());
    assert_eq!(v["gpuSource"], "DEVICE_SOURCE_KIND_NONE", "{v}");
    assert!(v["capabilities"]["gpus"].as_array().unwrap().is_empty());
    assert!(n(&v["sample"]["ramTotalBytes"]).unwrap() > 0, "CPU and RAM still reported");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("NVML")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("no NVIDIA GPUs") && lines[0].contains("running CPU only"), "{err}");
    assert!(lines[0].contains("driver is not loaded") && lines[0].contains("rbee_nvml_fake"), "{err}");
}

#[test]
fn a_missing_optional_symbol_costs_only_that_field() {
    let file = scenario(FULL);
    // The old-driver library really lacks nvmlDeviceGetMigMode (dlsym finds nothing).
    let (v, _) = probe(&old_driver(), file.path());
    assert_eq!(v["gpuSource"], "DEVICE_SOURCE_KIND_NVML");
    let g = cap_gpu(&v, "GPU-aaaaaaaa-0000-0000-0000-000000000000");
    assert_eq!(g["migMode"], "MIG_MODE_UNSPECIFIED", "not reported: {g}");
    assert_eq!(g["powerLimitMw"], 700_000);
    let s = &v["sample"]["gpus"][0];
    assert_eq!((n(&s["vramUsedBytes"]), n(&s["powerDrawMw"])), (Some(5 << 30), Some(310_000)));

    // A symbol that answers FUNCTION_NOT_FOUND costs only its field too.
    let file = scenario(&format!("missing = [\"nvmlDeviceGetPowerUsage\"]\n{FULL}"));
    let (v, _) = probe(&fake(), file.path());
    let s = &v["sample"]["gpus"][0];
    assert!(s.get("powerDrawMw").is_none(), "{s}");
    assert_eq!(s["temperatureC"], 55.0);
}

/// GPU-a lists the process whose pid is in `pid_file` (8 GiB) and GPU-b answers
/// NO_PERMISSION on its process list.
fn processes_scenario(pid_file: &Path) -> String {
    format!(
        "[[gpu]]\nuuid = \"GPU-a\"\nmemory_total = \"80GiB\"\nmemory_reserved = \"512MiB\"\n\
         process = [{{ pid_file = {pid_file:?}, used_memory = \"8GiB\" }}]\n\
         [[gpu]]\nuuid = \"GPU-b\"\nmemory_total = \"24GiB\"\nmemory_used = [\"1GiB\"]\n\
         process = [{{ pid = 1, used_memory = \"1GiB\" }}]\nprocesses_error = \"NO_PERMISSION\"\n"
    )
}

#[tokio::test]
async fn a_process_the_test_starts_arrives_attributed_and_no_permission_leaves_the_list_absent() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("worker.pid");
    let file = scenario(&processes_scenario(&pid_file));
    let hive = Hive::start(&fake(), file.path());
    let mut stream = hive.stream().await;
    let first = stream.until(as_sample).await;
    let (a, b) = (gpu(&first, "GPU-a").unwrap(), gpu(&first, "GPU-b").unwrap());
    assert_eq!(a.processes.as_ref().map(|p| p.listed.len()), Some(0), "listed, and empty: {a:?}");
    assert_eq!((a.vram_used_bytes, a.unattributed_vram_bytes), (Some(0), Some(0)));
    assert_eq!((b.processes.as_ref(), b.unattributed_vram_bytes), (None, None), "NO_PERMISSION: absent");

    let worker = sleeper(Some("tok-nvml"));
    let pid = worker.pid();
    write_pid_file(&pid_file, pid);
    let (g, p) = stream
        .until(|m| {
            let g = as_sample(m)?.gpus.into_iter().find(|g| g.id == "GPU-a")?;
            let p = g.processes.as_ref()?.listed.iter().find(|p| p.pid == pid).cloned()?;
            Some((g, p))
        })
        .await;
    assert_eq!(p.used_vram_bytes, Some(8 << 30));
    assert_eq!(p.name.as_deref(), Some("sleep"));
    assert!(p.rss_bytes.is_some_and(|r| r > 0), "{p:?}");
    assert!(p.cgroup.is_some(), "every Linux process has a cgroup: {p:?}");
    assert_eq!(p.reservation_id, Some(rbee_shared::gpu_process::reservation_id_of_token(b"tok-nvml")));
    assert_eq!((g.vram_used_bytes, g.unattributed_vram_bytes), (Some(8 << 30), Some(0)));

    // The worker leaves the GPU: the list is empty again, not absent.
    std::fs::remove_file(&pid_file).unwrap();
    stream
        .until(|m| {
            let g = as_sample(m)?.gpus.into_iter().find(|g| g.id == "GPU-a")?;
            g.processes.filter(|p| p.listed.is_empty())
        })
        .await;
    drop(worker);
}

#[test]
fn probe_json_shows_the_processes_and_the_old_driver_leaves_them_absent() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("worker.pid");
    let worker = sleeper(None);
    write_pid_file(&pid_file, worker.pid());
    let file = scenario(&processes_scenario(&pid_file));
    let (v, _) = probe(&fake(), file.path());
    let gpus = v["sample"]["gpus"].as_array().unwrap();
    let a = gpus.iter().find(|g| g["id"] == "GPU-a").unwrap();
    let listed = a["processes"]["listed"].as_array().unwrap_or_else(|| panic!("{a}"));
    assert_eq!(listed.len(), 1, "{a}");
    assert_eq!(listed[0]["pid"], worker.pid());
    assert_eq!(listed[0]["name"], "sleep");
    assert_eq!(n(&listed[0]["usedVramBytes"]), Some(8u64 << 30));
    let b = gpus.iter().find(|g| g["id"] == "GPU-b").unwrap();
    assert!(b.get("processes").is_none(), "NO_PERMISSION: absent: {b}");

    // No nvmlDeviceGetComputeRunningProcesses_v3 in the library at all: absent too,
    // and every other field still arrives.
    let (v, _) = probe(&old_driver(), file.path());
    let a = v["sample"]["gpus"].as_array().unwrap().iter().find(|g| g["id"] == "GPU-a").unwrap().clone();
    assert!(a.get("processes").is_none() && a.get("unattributedVramBytes").is_none(), "{a}");
    assert_eq!(n(&a["vramUsedBytes"]), Some(8u64 << 30), "{a}");
    drop(worker);
}
