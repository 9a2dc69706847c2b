//! Topology shapes for simulated GPUs (`--simulate`, `--demo`, `hive swarm`): the same
//! boxes the fake NVML library ships (`hive/nvml-fake/scenarios/`), for any GPU count.
//!
//! GPUs are placed by position (0..n): the first half on NUMA node 0, the rest on
//! node 1 (`n = 1`: node 0; positions past `n` join node 1).
//! - `dgx8`: every pair over the NVSwitch fabric (18 links); NODE within a socket,
//!   SYS across.
//! - `pcie2x4`: NVLink bridges in pairs (0-1, 2-3, ..., 4 links) that share a PCIe
//!   switch (PIX); otherwise PXB on socket 0, NODE on socket 1, SYS across.
//! - `none`: nothing reported (the default).

use rbee_shared::{GpuLink, GpuTopology, PcieLevel};

/// A simulated box's topology shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// No topology reported.
    #[default]
    None,
    /// Every pair over NVSwitch, two NUMA nodes.
    Dgx8,
    /// Two NUMA nodes, NVLink in pairs, PCIe levels between.
    Pcie2x4,
}

/// One GPU to place: its position in the box, id, and whether its NVLink links are up.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Its position in the box (0..total).
    pub pos: usize,
    /// Its id.
    pub id: String,
    /// Whether its NVLink links are up (a link-down fault takes them down).
    pub nvlink_up: bool,
}

/// CPUs per simulated socket.
const CPUS_PER_SOCKET: usize = 32;

impl Shape {
    /// The topology of each of `slots` in a box of `total` GPUs, in `slots` order.
    /// Links name only the other `slots`, ordered by peer id.
    pub fn place(self, total: usize, slots: &[Slot]) -> Vec<GpuTopology> {
        if self == Self::None {
            return vec![GpuTopology::default(); slots.len()];
        }
        let half = total.div_ceil(2).max(1);
        // A position past `total` (a spare GPU to hot-plug) joins the last socket.
        let socket = |pos: usize| (pos / half).min(1);
        slots
            .iter()
            .map(|me| {
                let s = socket(me.pos);
                let first = s * CPUS_PER_SOCKET;
                let mut links: Vec<GpuLink> = slots
                    .iter()
                    .filter(|p| p.pos != me.pos)
                    .map(|p| {
                        let same_socket = socket(p.pos) == s;
                        let (pcie, links) = match self {
                            Self::Dgx8 => (if same_socket { PcieLevel::Node } else { PcieLevel::System }, 18),
                            _ if me.pos / 2 == p.pos / 2 => (PcieLevel::Single, 4),
                            _ if !same_socket => (PcieLevel::System, 0),
                            _ if s == 0 => (PcieLevel::Multiple, 0),
                            _ => (PcieLevel::Node, 0),
                        };
                        let up = me.nvlink_up && p.nvlink_up;
                        GpuLink {
                            peer: p.id.clone(),
                            pcie: Some(pcie),
                            nvlinks: Some(if up { links } else { 0 }),
                        }
                    })
                    .collect();
                links.sort_by(|a, b| a.peer.cmp(&b.peer));
                GpuTopology {
                    numa_node: Some(s as u32),
                    cpu_affinity: Some(format!("{first}-{}", first + CPUS_PER_SOCKET - 1)),
                    mig_parent: None,
                    links,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(n: usize) -> Vec<Slot> {
        (0..n).map(|pos| Slot { pos, id: format!("g{pos}"), nvlink_up: true }).collect()
    }

    fn cell(t: &[GpuTopology], a: usize, b: usize) -> (Option<PcieLevel>, Option<u32>) {
        let l = t[a].link(&format!("g{b}")).unwrap();
        (l.pcie, l.nvlinks)
    }

    #[test]
    fn the_pcie_box_pairs_nvlink_and_splits_sockets() {
        let t = Shape::Pcie2x4.place(8, &slots(8));
        assert_eq!(cell(&t, 0, 1), (Some(PcieLevel::Single), Some(4)));
        assert_eq!(cell(&t, 1, 2), (Some(PcieLevel::Multiple), Some(0)));
        assert_eq!(cell(&t, 5, 6), (Some(PcieLevel::Node), Some(0)));
        assert_eq!(cell(&t, 3, 4), (Some(PcieLevel::System), Some(0)));
        assert_eq!((t[0].numa_node, t[7].numa_node), (Some(0), Some(1)));
        assert_eq!(t[7].cpu_affinity.as_deref(), Some("32-63"));
        assert_eq!(t[0].links.len(), 7);
    }

    #[test]
    fn the_dgx_box_links_every_pair_and_a_link_down_zeroes_its_pairs() {
        let mut s = slots(8);
        s[2].nvlink_up = false;
        let t = Shape::Dgx8.place(8, &s);
        assert_eq!(cell(&t, 0, 7), (Some(PcieLevel::System), Some(18)));
        assert_eq!(cell(&t, 0, 3), (Some(PcieLevel::Node), Some(18)));
        assert_eq!((cell(&t, 0, 2).1, cell(&t, 2, 0).1), (Some(0), Some(0)));
    }

    #[test]
    fn none_reports_nothing_and_a_partial_box_links_only_present_gpus() {
        assert!(Shape::None.place(3, &slots(3)).iter().all(|t| *t == GpuTopology::default()));
        let t = Shape::Pcie2x4.place(3, &slots(2));
        assert_eq!(t[0].links.len(), 1);
        assert_eq!(cell(&t, 0, 1), (Some(PcieLevel::Single), Some(4)));
    }
}
