//! Wire <-> domain for GPU topology. Part of [`crate::convert`], the one wire boundary.

use rbee_proto::v1 as pb;

use super::{Checked, MAX_DEVICES, check_opt_str, check_str};
use crate::{ConvertError, GpuLink, GpuTopology, PcieLevel};

impl From<PcieLevel> for pb::PcieLevel {
    fn from(l: PcieLevel) -> Self {
        match l {
            PcieLevel::Internal => Self::Internal,
            PcieLevel::Single => Self::Single,
            PcieLevel::Multiple => Self::Multiple,
            PcieLevel::HostBridge => Self::HostBridge,
            PcieLevel::Node => Self::Node,
            PcieLevel::System => Self::System,
        }
    }
}

impl From<&GpuTopology> for pb::GpuTopology {
    fn from(t: &GpuTopology) -> Self {
        Self {
            numa_node: t.numa_node,
            cpu_affinity: t.cpu_affinity.clone(),
            mig_parent: t.mig_parent.clone(),
            links: t
                .links
                .iter()
                .map(|l| pb::GpuLink {
                    peer: l.peer.clone(),
                    pcie: l.pcie.map_or(pb::PcieLevel::Unspecified, pb::PcieLevel::from) as i32,
                    nvlinks: l.nvlinks,
                })
                .collect(),
        }
    }
}

fn level_from_wire(field: &str, v: i32) -> Checked<Option<PcieLevel>> {
    Ok(match pb::PcieLevel::try_from(v) {
        Ok(pb::PcieLevel::Unspecified) => None,
        Ok(pb::PcieLevel::Internal) => Some(PcieLevel::Internal),
        Ok(pb::PcieLevel::Single) => Some(PcieLevel::Single),
        Ok(pb::PcieLevel::Multiple) => Some(PcieLevel::Multiple),
        Ok(pb::PcieLevel::HostBridge) => Some(PcieLevel::HostBridge),
        Ok(pb::PcieLevel::Node) => Some(PcieLevel::Node),
        Ok(pb::PcieLevel::System) => Some(PcieLevel::System),
        Err(_) => return Err(ConvertError::new(field, format!("unknown value {v}"))),
    })
}

/// Checks a GPU's topology from the wire: bounded links, one per peer, never to itself.
pub(super) fn topology_from_wire(
    field: &str,
    gpu_id: &str,
    t: Option<&pb::GpuTopology>,
) -> Checked<GpuTopology> {
    let Some(t) = t else { return Ok(GpuTopology::default()) };
    if t.links.len() > MAX_DEVICES {
        return Err(ConvertError::new(
            format!("{field}.links"),
            format!("{} links > {MAX_DEVICES}", t.links.len()),
        ));
    }
    let mut links = Vec::with_capacity(t.links.len());
    for (i, l) in t.links.iter().enumerate() {
        let at = format!("{field}.links[{i}]");
        if l.peer.is_empty() || l.peer == gpu_id {
            return Err(ConvertError::new(format!("{at}.peer"), "must name another GPU of the hive"));
        }
        links.push(GpuLink {
            peer: check_str(format_args!("{at}.peer"), &l.peer)?,
            pcie: level_from_wire(&format!("{at}.pcie"), l.pcie)?,
            nvlinks: l.nvlinks,
        });
    }
    links.sort_by(|a, b| a.peer.cmp(&b.peer));
    if let Some(w) = links.windows(2).find(|w| w[0].peer == w[1].peer) {
        return Err(ConvertError::new(format!("{field}.links"), format!("duplicate peer {:?}", w[0].peer)));
    }
    Ok(GpuTopology {
        numa_node: t.numa_node,
        cpu_affinity: check_opt_str(format_args!("{field}.cpu_affinity"), &t.cpu_affinity)?,
        mig_parent: check_opt_str(format_args!("{field}.mig_parent"), &t.mig_parent)?,
        links,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> GpuTopology {
        GpuTopology {
            numa_node: Some(1),
            cpu_affinity: Some("0-15".into()),
            mig_parent: None,
            links: vec![
                GpuLink { peer: "GPU-a".into(), pcie: Some(PcieLevel::System), nvlinks: Some(0) },
                GpuLink { peer: "GPU-b".into(), pcie: None, nvlinks: Some(12) },
                GpuLink { peer: "GPU-c".into(), pcie: Some(PcieLevel::Single), nvlinks: None },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let t = topo();
        let wire = pb::GpuTopology::from(&t);
        assert_eq!(topology_from_wire("t", "GPU-self", Some(&wire)).unwrap(), t);
        assert_eq!(topology_from_wire("t", "GPU-self", None).unwrap(), GpuTopology::default());
    }

    #[test]
    fn refuses_bad_links() {
        let mut wire = pb::GpuTopology::from(&topo());
        wire.links[1].peer = "GPU-self".into();
        let e = topology_from_wire("t", "GPU-self", Some(&wire)).unwrap_err();
        assert!(e.to_string().contains("t.links[1].peer"), "{e}");

        let mut wire = pb::GpuTopology::from(&topo());
        wire.links[1].peer = "GPU-a".into();
        assert!(
            topology_from_wire("t", "GPU-self", Some(&wire)).unwrap_err().to_string().contains("duplicate")
        );

        let mut wire = pb::GpuTopology::from(&topo());
        wire.links[0].pcie = 99;
        assert!(
            topology_from_wire("t", "GPU-self", Some(&wire)).unwrap_err().to_string().contains("unknown")
        );

        let mut wire = pb::GpuTopology::from(&topo());
        wire.links = (0..=MAX_DEVICES)
            .map(|i| pb::GpuLink { peer: format!("GPU-{i}"), ..Default::default() })
            .collect();
        assert!(topology_from_wire("t", "GPU-self", Some(&wire)).is_err());
    }
}
