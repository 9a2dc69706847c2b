//! Where a GPU sits in its machine: NUMA node, CPU affinity, MIG parent and its links to
//! the hive's other GPUs (NVLink and the PCIe level they share).
//!
//! Topology is part of the capabilities: it is read at discovery and on rescans, never
//! per sample, and changes travel as capability diffs. Every part is optional, because a
//! driver may not support the call that reads it: an absent part means "not reported",
//! never "no".

/// The closest PCIe level two GPUs share, as `nvidia-smi topo -m` prints it, from the
/// tightest to the loosest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PcieLevel {
    /// The same board (e.g. two GPUs of one card).
    Internal,
    /// One PCIe switch (`PIX`).
    Single,
    /// Several PCIe switches, no host bridge (`PXB`).
    Multiple,
    /// A PCIe host bridge (`PHB`).
    HostBridge,
    /// Host bridges of one NUMA node (`NODE`).
    Node,
    /// Across NUMA nodes, over the inter-socket link (`SYS`).
    System,
}

impl PcieLevel {
    /// The short name `nvidia-smi topo -m` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Internal => "BRD",
            Self::Single => "PIX",
            Self::Multiple => "PXB",
            Self::HostBridge => "PHB",
            Self::Node => "NODE",
            Self::System => "SYS",
        }
    }
}

/// How one GPU connects to one other GPU of the same hive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GpuLink {
    /// The other GPU's id (its NVML UUID).
    pub peer: String,
    /// The closest PCIe level both share, when reported.
    pub pcie: Option<PcieLevel>,
    /// Active NVLink links to the peer (`Some(0)`: none), when reported. A pair behind
    /// an NVSwitch counts the links that reach the switch.
    pub nvlinks: Option<u32>,
}

impl GpuLink {
    /// Whether the pair is known to talk over NVLink.
    pub fn is_nvlink(&self) -> bool {
        self.nvlinks.is_some_and(|n| n > 0)
    }
}

/// Where a GPU sits. The default is "nothing reported".
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct GpuTopology {
    /// The NUMA node the GPU is attached to, when reported.
    pub numa_node: Option<u32>,
    /// The CPUs close to the GPU, as a Linux cpulist ("0-15,32-47"), when reported.
    pub cpu_affinity: Option<String>,
    /// For a MIG instance: the id (UUID) of the physical GPU it is part of.
    pub mig_parent: Option<String>,
    /// Links to the hive's other GPUs, ordered by peer id; a peer not listed is not
    /// reported.
    pub links: Vec<GpuLink>,
}

impl GpuTopology {
    /// The link to `peer`, when reported.
    pub fn link(&self, peer: &str) -> Option<&GpuLink> {
        self.links.iter().find(|l| l.peer == peer)
    }

    /// The ids of the peers reached over NVLink.
    pub fn nvlink_peers(&self) -> impl Iterator<Item = &str> {
        self.links.iter().filter(|l| l.is_nvlink()).map(|l| l.peer.as_str())
    }
}
