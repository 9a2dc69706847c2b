//! Which NVLink pairs of one hive went down: the most links each GPU pair has
//! reported, against the capabilities now. A pair with fewer links than its most is
//! a degraded reason for [`super::health`] until the links come back; a pair whose
//! links are not reported (absent) is not down.

use std::collections::{BTreeSet, HashMap};

use rbee_shared::VersionedCapabilities;

/// The most NVLink links each GPU pair of one hive has reported, to tell a link that
/// went down from a pair that never had one. Updated once per capability version.
#[derive(Debug, Default)]
pub struct NvlinkBaseline {
    /// The most links seen from a GPU to a peer, by (GPU id, peer id).
    most: HashMap<(String, String), u32>,
    /// The capability version last looked at (and its hive epoch's first, 0: none).
    seen: Option<u64>,
    /// The reasons for the capabilities last looked at.
    down: Vec<String>,
}

impl NvlinkBaseline {
    /// Looks at `caps` (once per version) and returns the pairs whose links are down,
    /// one reason per pair, in GPU id order.
    pub fn update(&mut self, caps: Option<&VersionedCapabilities>) -> &[String] {
        let Some(caps) = caps else { return &self.down };
        if self.seen == Some(caps.version) {
            return &self.down;
        }
        self.seen = Some(caps.version);
        self.down.clear();
        let mut reported = BTreeSet::new();
        for gpu in caps.caps.gpus.values() {
            for link in &gpu.topology.links {
                let Some(now) = link.nvlinks else { continue };
                let most = self.most.entry((gpu.id.clone(), link.peer.clone())).or_insert(now);
                *most = (*most).max(now);
                let pair = if gpu.id < link.peer { (&gpu.id, &link.peer) } else { (&link.peer, &gpu.id) };
                if now < *most && reported.insert(pair) {
                    self.down
                        .push(format!("{}: NVLink to {} down ({} -> {now} links)", gpu.id, link.peer, *most));
                }
            }
        }
        &self.down
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_shared::{Capabilities, GpuDevice, GpuLink, MigMode};

    fn linked(version: u64, links: &[(&str, &str, Option<u32>)]) -> VersionedCapabilities {
        let mut caps = Capabilities::default();
        for (id, peer, n) in links {
            let gpu = caps.gpus.entry((*id).to_owned()).or_insert_with(|| GpuDevice {
                id: (*id).to_owned(),
                index: 0,
                name: String::new(),
                pci_bus_id: String::new(),
                compute_capability: None,
                vram_total_bytes: 1,
                driver_version: None,
                cuda_version: None,
                power_limit_mw: None,
                mig_mode: MigMode::NotReported,
                topology: Default::default(),
            });
            gpu.topology.links.push(GpuLink { peer: (*peer).to_owned(), pcie: None, nvlinks: *n });
        }
        VersionedCapabilities { version, caps }
    }

    #[test]
    fn a_pair_with_fewer_links_than_it_had_is_down_until_they_come_back() {
        let mut b = NvlinkBaseline::default();
        let up = linked(
            1,
            &[("GPU-x", "GPU-y", Some(12)), ("GPU-y", "GPU-x", Some(12)), ("GPU-x", "GPU-z", Some(0))],
        );
        assert!(b.update(Some(&up)).is_empty(), "links as first seen are no problem");
        let down = linked(
            2,
            &[("GPU-x", "GPU-y", Some(0)), ("GPU-y", "GPU-x", Some(0)), ("GPU-x", "GPU-z", Some(0))],
        );
        assert_eq!(
            b.update(Some(&down)),
            ["GPU-x: NVLink to GPU-y down (12 -> 0 links)"],
            "one reason per pair"
        );
        assert_eq!(b.update(Some(&down)).len(), 1, "the same version is not looked at twice");
        let unknown = linked(3, &[("GPU-x", "GPU-y", None)]);
        assert!(b.update(Some(&unknown)).is_empty(), "not reported is not down");
        let back = linked(4, &[("GPU-x", "GPU-y", Some(12))]);
        assert!(b.update(Some(&back)).is_empty());
        let partial = linked(5, &[("GPU-y", "GPU-x", Some(8))]);
        assert_eq!(b.update(Some(&partial)), ["GPU-y: NVLink to GPU-x down (12 -> 8 links)"]);
        assert_eq!(b.update(None).len(), 1, "no capabilities: the last answer stands");
    }
}
