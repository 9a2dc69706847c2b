//! GPU topology through NVML: per GPU its NUMA node and CPU affinity, per pair the
//! closest PCIe level they share and their NVLink links. Read at discovery and on
//! rescans ([`super::nvml::NvmlSource`]'s `scan`), never per sample.
//!
//! A call the driver does not support (NOT_SUPPORTED, or a symbol an old driver lacks)
//! leaves that part absent, never "no": `nvlinks` is `Some(0)` only when the driver
//! said the pair cannot talk over NVLink.
//!
//! NVLink links are counted from each link's far end (`nvmlDeviceGetNvLinkRemotePciInfo_v2`):
//! a link whose far end is the peer's PCI bus counts for that peer; a link whose far
//! end is no GPU of the hive (an NVSwitch) counts for every peer that P2P over NVLink
//! reaches (`nvmlDeviceGetP2PStatus` with the NVLINK index).

use std::collections::BTreeMap;
use std::path::Path;

use nvml_wrapper::enum_wrappers::device::{P2pCapabilitiesIndex, P2pStatus, TopologyLevel};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use rbee_shared::{GpuLink, GpuTopology, PcieLevel};

/// How many CPUs the affinity mask covers (64 words of 64 bits).
const AFFINITY_WORDS: usize = 64;

/// How many NVLink links a GPU may have (`NVML_NVLINK_MAX_LINKS`).
const MAX_LINKS: u32 = 18;

/// One physical GPU whose topology is read: its index, id and PCI bus id.
#[derive(Debug, Clone)]
pub struct Physical {
    /// NVML index.
    pub index: u32,
    /// NVML UUID.
    pub id: String,
    /// PCI bus id as NVML reports it.
    pub bus_id: String,
}

/// The far ends of a GPU's active NVLink links, as normalised bus ids; `None` when the
/// driver reports no link at all (no NVLink, or the call is not supported).
fn nvlink_remotes(device: &Device<'_>) -> Option<Vec<String>> {
    let mut remotes = Vec::new();
    let mut answered = false;
    for link in 0..MAX_LINKS {
        let l = device.link_wrapper_for(link);
        match l.is_active() {
            Ok(true) => {
                answered = true;
                if let Ok(pci) = l.remote_pci_info() {
                    remotes.push(normalise_bus_id(&pci.bus_id));
                }
            }
            Ok(false) => answered = true,
            Err(_) => {}
        }
    }
    answered.then_some(remotes)
}

/// A PCI bus id in one spelling: lower case, the domain trimmed to 4 hex digits
/// ("00000000:1A:00.0" -> "0000:1a:00.0"), as sysfs names devices.
pub fn normalise_bus_id(bus_id: &str) -> String {
    let lower = bus_id.trim().to_ascii_lowercase();
    match lower.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => format!("{}:{rest}", &domain[domain.len() - 4..]),
        _ => lower,
    }
}

/// The NVLink links from one GPU to a peer: direct links to the peer's bus, plus the
/// links into a switch when P2P over NVLink reaches the peer (`p2p`). `None` when
/// neither the links nor P2P were reported.
pub fn count_nvlinks(
    p2p: Option<bool>,
    remotes: Option<&[String]>,
    peer_bus: &str,
    gpu_buses: &[String],
) -> Option<u32> {
    let Some(remotes) = remotes else {
        // No link reading: P2P alone says "none" (0), or "some" without a count (1).
        return p2p.map(u32::from);
    };
    let direct = remotes.iter().filter(|r| *r == peer_bus).count() as u32;
    let switched = remotes.iter().filter(|r| !gpu_buses.contains(r)).count() as u32;
    match p2p {
        Some(true) => Some(direct + switched).map(|n| n.max(1)),
        Some(false) => Some(direct),
        None if switched == 0 || direct > 0 => Some(direct),
        None => None,
    }
}

/// The PCIe level nvidia-smi would print for an NVML common ancestor.
pub fn pcie_level(level: TopologyLevel) -> PcieLevel {
    match level {
        TopologyLevel::Internal => PcieLevel::Internal,
        TopologyLevel::Single => PcieLevel::Single,
        TopologyLevel::Multiple => PcieLevel::Multiple,
        TopologyLevel::HostBridge => PcieLevel::HostBridge,
        TopologyLevel::Node => PcieLevel::Node,
        TopologyLevel::System => PcieLevel::System,
    }
}

/// A CPU mask (64-bit words, CPU `n` at bit `n % 64` of word `n / 64`) as a Linux
/// cpulist ("0-15,32-47"); `None` when no CPU is set.
pub fn cpulist(words: &[u64]) -> Option<String> {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for (w, word) in words.iter().enumerate() {
        for bit in 0..64 {
            if word & (1 << bit) == 0 {
                continue;
            }
            let cpu = w * 64 + bit;
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == cpu => *end = cpu,
                _ => ranges.push((cpu, cpu)),
            }
        }
    }
    if ranges.is_empty() {
        return None;
    }
    let parts: Vec<String> =
        ranges.into_iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    Some(parts.join(","))
}

/// The NUMA node of the PCI device `bus_id` from sysfs, when it is an NVIDIA device
/// that names one (`-1` means none).
fn sysfs_numa_node(bus_id: &str) -> Option<u32> {
    let dir = Path::new("/sys/bus/pci/devices").join(normalise_bus_id(bus_id));
    let vendor = std::fs::read_to_string(dir.join("vendor")).ok()?;
    if vendor.trim() != "0x10de" {
        return None;
    }
    std::fs::read_to_string(dir.join("numa_node"))
        .ok()?
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
}

/// Whether an error means "this driver cannot say" (absent), as opposed to a failure
/// worth a log line.
fn unsupported(e: &NvmlError) -> bool {
    matches!(e, NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound)
}

/// Where one GPU sits: its NUMA node (NVML, else sysfs) and CPU affinity (a cpulist).
pub fn place(device: &Device<'_>, bus_id: &str) -> (Option<u32>, Option<String>) {
    let numa_node = match device.numa_node_id() {
        Ok(n) => Some(n),
        Err(e) if unsupported(&e) => sysfs_numa_node(bus_id),
        Err(_) => None,
    };
    let cpu_affinity = device
        .cpu_affinity(AFFINITY_WORDS)
        .ok()
        // `c_ulong` is 64 bits on the 64-bit Linux targets the hive runs on.
        .and_then(|w| cpulist(&w));
    (numa_node, cpu_affinity)
}

/// Reads the topology of `gpus` (physical GPUs that answer), by GPU id. Links name
/// only GPUs of `gpus`, ordered by peer id; a pair the driver says nothing about is
/// left out.
pub fn read(nvml: &Nvml, gpus: &[Physical]) -> BTreeMap<String, GpuTopology> {
    let buses: Vec<String> = gpus.iter().map(|g| normalise_bus_id(&g.bus_id)).collect();
    let mut out = BTreeMap::new();
    for (i, gpu) in gpus.iter().enumerate() {
        let Ok(device) = nvml.device_by_index(gpu.index) else { continue };
        let (numa_node, cpu_affinity) = place(&device, &gpu.bus_id);
        let remotes = nvlink_remotes(&device);
        let mut links = Vec::with_capacity(gpus.len().saturating_sub(1));
        for (j, peer) in gpus.iter().enumerate() {
            if i == j {
                continue;
            }
            let Ok(other) = nvml.device_by_index(peer.index) else { continue };
            let p2p = match device.p2p_status(&other, P2pCapabilitiesIndex::NvLink) {
                Ok(s) => Some(s == P2pStatus::Ok),
                Err(_) => None,
            };
            let pcie = device.topology_common_ancestor(other).ok().map(pcie_level);
            let nvlinks = count_nvlinks(p2p, remotes.as_deref(), &buses[j], &buses);
            if pcie.is_some() || nvlinks.is_some() {
                links.push(GpuLink { peer: peer.id.clone(), pcie, nvlinks });
            }
        }
        links.sort_by(|a, b| a.peer.cmp(&b.peer));
        out.insert(gpu.id.clone(), GpuTopology { numa_node, cpu_affinity, mig_parent: None, links });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists_join_runs_and_skip_gaps() {
        assert_eq!(cpulist(&[]), None);
        assert_eq!(cpulist(&[0, 0]), None);
        assert_eq!(cpulist(&[0b1]).as_deref(), Some("0"));
        assert_eq!(cpulist(&[0xFFFF, 0xFFFF]).as_deref(), Some("0-15,64-79"));
        assert_eq!(cpulist(&[0b1011]).as_deref(), Some("0-1,3"));
        assert_eq!(cpulist(&[u64::MAX, 1]).as_deref(), Some("0-64"), "a run crosses words");
    }

    #[test]
    fn every_nvml_level_maps_to_the_nvidia_smi_name() {
        let names: Vec<&str> = [
            TopologyLevel::Internal,
            TopologyLevel::Single,
            TopologyLevel::Multiple,
            TopologyLevel::HostBridge,
            TopologyLevel::Node,
            TopologyLevel::System,
        ]
        .into_iter()
        .map(|l| pcie_level(l).as_str())
        .collect();
        assert_eq!(names, ["BRD", "PIX", "PXB", "PHB", "NODE", "SYS"]);
    }

    #[test]
    fn bus_ids_are_compared_in_sysfs_spelling() {
        assert_eq!(normalise_bus_id("00000000:1A:00.0"), "0000:1a:00.0");
        assert_eq!(normalise_bus_id("0000:1a:00.0"), "0000:1a:00.0");
    }

    #[test]
    fn nvlinks_count_direct_and_switched_links_and_unknown_stays_absent() {
        let buses = ["a".to_string(), "b".to_string(), "c".to_string()];
        let direct = ["b".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(count_nvlinks(Some(true), Some(&direct), "b", &buses), Some(2));
        assert_eq!(count_nvlinks(Some(false), Some(&direct), "b", &buses), Some(2));
        let switched = vec!["sw".to_string(); 4];
        assert_eq!(
            count_nvlinks(Some(true), Some(&switched), "b", &buses),
            Some(4),
            "every switch link counts"
        );
        assert_eq!(
            count_nvlinks(Some(false), Some(&switched), "b", &buses),
            Some(0),
            "the peer is off the fabric"
        );
        assert_eq!(count_nvlinks(None, Some(&switched), "b", &buses), None, "cannot tell");
        assert_eq!(count_nvlinks(None, Some(&[]), "b", &buses), Some(0), "links read, none go anywhere");
        assert_eq!(count_nvlinks(Some(false), None, "b", &buses), Some(0));
        assert_eq!(count_nvlinks(None, None, "b", &buses), None, "nothing supported: absent, not 0");
    }
}
