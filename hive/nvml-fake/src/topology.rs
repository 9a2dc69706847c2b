//! Topology in a scenario: where each GPU sits (NUMA node, CPUs, PCIe place), its
//! NVLink links (and when they go down), and its MIG instances. Every part is additive:
//! a scenario that sets none of it answers NOT_SUPPORTED for the topology calls.
//!
//! ```toml
//! [[gpu]]
//! numa_node = 0                      # unset: nvmlDeviceGetNumaNodeId NOT_SUPPORTED
//! cpu_affinity = "0-15,32-47"        # unset: nvmlDeviceGetCpuAffinity NOT_SUPPORTED
//! # The PCIe level two GPUs share is the first of these they have in common:
//! # board (BRD), pcie_switch (PIX), pcie_root (PXB), host_bridge (PHB), numa_node
//! # (NODE); else SYS. A pair where either GPU lacks numa_node: NOT_SUPPORTED.
//! pcie_switch = "sw0"
//! # NVLink links, in link-index order: to another GPU (its position in this file) or
//! # to the NVSwitch fabric. A link may go down at a time and come up again.
//! nvlink = [{ peer = 1, links = 4 }, { nvswitch = true, links = 18, down_at_s = 5.0 }]
//! # MIG instances (listed when mig_mode = "enabled"); memory as for a GPU.
//! mig = [{ uuid = "MIG-...", name = "1g.10gb", memory_total = "10GiB", memory_used = ["1GiB"] }]
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::scenario::{ByteSize, Gpu, seconds};

/// The PCI bus id every NVSwitch link reports as its remote end.
pub const NVSWITCH_BUS_ID: &str = "00000000:C1:00.0";

/// How many NVLink links a GPU may have (`NVML_NVLINK_MAX_LINKS`).
pub const MAX_LINKS: usize = nvml_wrapper_sys::bindings::NVML_NVLINK_MAX_LINKS as usize;

/// One `nvlink` entry of a scenario GPU.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NvLinkFile {
    peer: Option<usize>,
    #[serde(default)]
    nvswitch: bool,
    #[serde(default = "one")]
    links: u32,
    down_at_s: Option<f64>,
    up_at_s: Option<f64>,
}

fn one() -> u32 {
    1
}

/// One `mig` entry of a scenario GPU.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MigFile {
    #[serde(rename = "id", alias = "uuid")]
    uuid: String,
    name: Option<String>,
    #[serde(rename = "vram_total", alias = "memory_total")]
    memory_total: ByteSize,
    #[serde(default, rename = "vram_used", alias = "memory_used")]
    memory_used: Vec<ByteSize>,
}

/// The topology fields of a scenario GPU (flattened into it).
#[derive(Debug, Default)]
pub(crate) struct TopologyFile {
    pub(crate) numa_node: Option<u32>,
    pub(crate) cpu_affinity: Option<String>,
    pub(crate) board: Option<String>,
    pub(crate) pcie_switch: Option<String>,
    pub(crate) pcie_root: Option<String>,
    pub(crate) host_bridge: Option<String>,
    pub(crate) nvlink: Vec<NvLinkFile>,
    pub(crate) mig: Vec<MigFile>,
}

/// What the far end of an NVLink link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remote {
    /// The GPU at this position in the scenario.
    Gpu(usize),
    /// The NVSwitch fabric.
    Switch,
}

/// One NVLink link.
#[derive(Debug, Clone)]
pub struct NvLink {
    /// Its far end.
    pub remote: Remote,
    /// From when it is down.
    pub down_at: Option<Duration>,
    /// From when it is up again.
    pub up_at: Option<Duration>,
}

impl NvLink {
    /// Whether it is active at `t`.
    pub fn active(&self, t: Duration) -> bool {
        !(self.down_at.is_some_and(|d| t >= d) && self.up_at.is_none_or(|u| t < u))
    }
}

/// Where a GPU sits and how it links.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// Its NUMA node; `None` answers NOT_SUPPORTED.
    pub numa_node: Option<u32>,
    /// Its CPU affinity as 64-bit mask words; `None` answers NOT_SUPPORTED.
    pub cpu_mask: Option<Vec<u64>>,
    /// PCIe places, tightest first: board, switch, root, host bridge.
    pub pcie: [Option<String>; 4],
    /// NVLink links by link index.
    pub nvlinks: Vec<NvLink>,
    /// MIG instances (devices of their own; listed while MIG mode is enabled).
    pub mig: Vec<Gpu>,
}

/// The mask words of a Linux cpulist ("0-15,32-47").
pub fn cpu_mask(field: &str, list: &str) -> Result<Vec<u64>, String> {
    let bad = || format!("{field}: {list:?} is not a cpulist like \"0-15,32-47\"");
    let mut words = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if a > b || b >= 4096 {
            return Err(bad());
        }
        for cpu in a..=b {
            if words.len() <= cpu / 64 {
                words.resize(cpu / 64 + 1, 0u64);
            }
            words[cpu / 64] |= 1 << (cpu % 64);
        }
    }
    Ok(words)
}

impl TopologyFile {
    /// Checks the fields of the GPU at position `i` of `count`; `at` names a field.
    pub(crate) fn parse(
        self,
        i: usize,
        count: usize,
        at: &dyn Fn(&str) -> String,
        template: &Gpu,
    ) -> Result<Topology, String> {
        let mut nvlinks = Vec::new();
        for l in &self.nvlink {
            let remote = match (l.peer, l.nvswitch) {
                (Some(p), false) if p < count && p != i => Remote::Gpu(p),
                (None, true) => Remote::Switch,
                _ => {
                    return Err(format!(
                        "{}: give exactly one of peer (another GPU's position, < {count}) and nvswitch = true",
                        at("nvlink")
                    ));
                }
            };
            let down_at = l.down_at_s.map(|s| seconds(&at("nvlink.down_at_s"), s)).transpose()?;
            let up_at = l.up_at_s.map(|s| seconds(&at("nvlink.up_at_s"), s)).transpose()?;
            nvlinks.extend((0..l.links).map(|_| NvLink { remote, down_at, up_at }));
        }
        if nvlinks.len() > MAX_LINKS {
            return Err(format!("{}: {} links > {MAX_LINKS}", at("nvlink"), nvlinks.len()));
        }
        let mut mig = Vec::new();
        for m in self.mig {
            let memory_total = m.memory_total.bytes(&at("mig.memory_total"))?;
            let memory_used = m
                .memory_used
                .iter()
                .map(|b| b.bytes(&at("mig.memory_used")))
                .collect::<Result<Vec<_>, _>>()?;
            if memory_used.iter().any(|u| *u > memory_total) {
                return Err(format!("{}: used exceeds memory_total", at("mig.memory_used")));
            }
            let mut g = template.clone();
            g.uuid = m.uuid;
            g.name = m.name.unwrap_or_else(|| format!("{} MIG", template.name));
            g.memory_total = memory_total;
            g.memory_used = memory_used;
            g.memory_reserved = 0;
            g.mig_enabled = None;
            g.util_percent.clear();
            g.mem_util_percent.clear();
            g.power_draw_mw.clear();
            g.temperature_c.clear();
            g.xids.clear();
            g.processes.clear();
            g.topology = Topology::default();
            mig.push(g);
        }
        Ok(Topology {
            numa_node: self.numa_node,
            cpu_mask: self.cpu_affinity.map(|c| cpu_mask(&at("cpu_affinity"), &c)).transpose()?,
            pcie: [self.board, self.pcie_switch, self.pcie_root, self.host_bridge],
            nvlinks,
            mig,
        })
    }
}

/// The common ancestor of two GPUs (an `nvmlGpuTopologyLevel_t`); `None` when either
/// lacks a NUMA node.
pub fn common_ancestor(a: &Topology, b: &Topology) -> Option<u32> {
    let (na, nb) = (a.numa_node?, b.numa_node?);
    // INTERNAL, SINGLE, MULTIPLE, HOSTBRIDGE, NODE, SYSTEM are 0, 10, .. 50.
    let shared = a.pcie.iter().zip(&b.pcie).position(|(x, y)| x.is_some() && x == y);
    Some(match shared {
        Some(level) => level as u32 * 10,
        None if na == nb => 40,
        None => 50,
    })
}

/// Whether GPUs `a` and `b` (positions) talk P2P over NVLink at `t`: a direct active
/// link, or both with an active link into the NVSwitch fabric.
pub fn p2p_nvlink(gpus: &[Gpu], a: usize, b: usize, t: Duration) -> bool {
    let active = |g: usize, r: Remote| gpus[g].topology.nvlinks.iter().any(|l| l.remote == r && l.active(t));
    active(a, Remote::Gpu(b))
        || active(b, Remote::Gpu(a))
        || (active(a, Remote::Switch) && active(b, Remote::Switch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn shipped(name: &str) -> Scenario {
        let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        Scenario::parse(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn cpulists_become_mask_words_and_bad_ones_are_named() {
        assert_eq!(cpu_mask("c", "0-3,8").unwrap(), [0b1_0000_1111]);
        assert_eq!(cpu_mask("c", "64").unwrap(), [0, 1]);
        assert!(cpu_mask("c", "3-1").unwrap_err().starts_with("c:"));
        assert!(cpu_mask("c", "x").is_err());
    }

    #[test]
    fn the_shipped_shapes_have_the_topology_they_describe() {
        let t = Duration::ZERO;
        let dgx = shipped("dgx8");
        assert_eq!(dgx.gpus.len(), 8);
        let ancestor =
            |s: &Scenario, a: usize, b: usize| common_ancestor(&s.gpus[a].topology, &s.gpus[b].topology);
        assert!((0..8).all(|a| (0..8).all(|b| a == b || p2p_nvlink(&dgx.gpus, a, b, t))));
        assert_eq!((ancestor(&dgx, 0, 3), ancestor(&dgx, 0, 4)), (Some(40), Some(50)));

        let pcie = shipped("pcie2x4");
        assert!(p2p_nvlink(&pcie.gpus, 0, 1, t) && p2p_nvlink(&pcie.gpus, 6, 7, t));
        assert!(!p2p_nvlink(&pcie.gpus, 1, 2, t) && !p2p_nvlink(&pcie.gpus, 0, 4, t));
        let levels =
            [ancestor(&pcie, 0, 1), ancestor(&pcie, 0, 2), ancestor(&pcie, 4, 6), ancestor(&pcie, 0, 7)];
        assert_eq!(levels, [Some(10), Some(20), Some(40), Some(50)], "PIX, PXB, NODE, SYS");

        let mig = shipped("mig");
        assert_eq!(mig.gpus[0].topology.mig.len(), 3);
        assert_eq!(mig.gpus[0].topology.mig[2].memory_total, 10 << 30);
    }

    #[test]
    fn a_link_goes_down_and_up_and_bad_links_are_refused() {
        let s = Scenario::parse(
            "[[gpu]]\nuuid = \"a\"\nmemory_total = 1\nnvlink = [{ peer = 1, links = 2, down_at_s = 1, up_at_s = 2 }]\n\
             [[gpu]]\nuuid = \"b\"\nmemory_total = 1\n",
        )
        .unwrap();
        let at = Duration::from_millis;
        assert_eq!(s.gpus[0].topology.nvlinks.len(), 2);
        assert!(p2p_nvlink(&s.gpus, 1, 0, at(500)) && !p2p_nvlink(&s.gpus, 1, 0, at(1500)));
        assert!(p2p_nvlink(&s.gpus, 0, 1, at(2500)));
        let bad = |l: &str| {
            Scenario::parse(&format!("[[gpu]]\nuuid = \"a\"\nmemory_total = 1\nnvlink = [{l}]")).unwrap_err()
        };
        assert!(bad("{ peer = 0 }").contains("nvlink"));
        assert!(bad("{ peer = 3 }").contains("exactly one of peer"));
        assert!(bad("{ nvswitch = true, links = 19 }").contains("19 links"));
    }
}
