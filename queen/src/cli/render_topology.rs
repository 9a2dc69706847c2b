//! `queen hive ID`: the GPU topology matrix, as `nvidia-smi topo -m` draws it. Each
//! cell says how the row GPU reaches the column GPU: `NV#` (that many NVLink links),
//! else the closest PCIe level they share (`BRD`, `PIX`, `PXB`, `PHB`, `NODE`, `SYS`),
//! else `?` (not reported). Then each GPU's NUMA node and CPU affinity. A hive that
//! reports no topology gets no matrix.

use std::fmt::Write as _;

use rbee_proto::v1 as pb;

/// A string from a hive, with control characters (terminal escapes) made visible.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// The short name `nvidia-smi topo -m` uses for a PCIe level.
fn level(l: pb::PcieLevel) -> Option<&'static str> {
    Some(match l {
        pb::PcieLevel::Internal => "BRD",
        pb::PcieLevel::Single => "PIX",
        pb::PcieLevel::Multiple => "PXB",
        pb::PcieLevel::HostBridge => "PHB",
        pb::PcieLevel::Node => "NODE",
        pb::PcieLevel::System => "SYS",
        pb::PcieLevel::Unspecified => return None,
    })
}

/// How `from` reaches `to`.
fn cell(from: &pb::GpuDevice, to: &pb::GpuDevice) -> String {
    if from.id == to.id {
        return "X".into();
    }
    let link = from.topology.as_ref().and_then(|t| t.links.iter().find(|l| l.peer == to.id));
    match link {
        Some(l) if l.nvlinks.is_some_and(|n| n > 0) => format!("NV{}", l.nvlinks.unwrap_or(0)),
        Some(l) => level(l.pcie()).unwrap_or("?").into(),
        None => "?".into(),
    }
}

/// Column labels: `GPU<index>`, and `GPU<index>/MIG<k>` for the k-th MIG instance of
/// a GPU.
fn labels(gpus: &[&pb::GpuDevice]) -> Vec<String> {
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    gpus.iter()
        .map(|g| match g.topology.as_ref().and_then(|t| t.mig_parent.as_deref()) {
            Some(parent) => {
                let k = seen.entry(parent).or_default();
                *k += 1;
                format!("GPU{}/MIG{}", g.index, *k - 1)
            }
            None => format!("GPU{}", g.index),
        })
        .collect()
}

/// Appends the topology matrix of `gpus` to `out`, when any GPU reports topology.
pub fn render_topology(out: &mut String, gpus: &[pb::GpuDevice]) {
    let reported = |g: &&pb::GpuDevice| {
        g.topology.as_ref().is_some_and(|t| {
            t.numa_node.is_some() || t.cpu_affinity.is_some() || t.mig_parent.is_some() || !t.links.is_empty()
        })
    };
    if !gpus.iter().any(|g| reported(&g)) {
        return;
    }
    let mut sorted: Vec<&pb::GpuDevice> = gpus.iter().collect();
    sorted.sort_by(|a, b| (a.index, &a.id).cmp(&(b.index, &b.id)));
    let names = labels(&sorted);
    let width = names.iter().map(String::len).max().unwrap_or(4).max(5);
    let _ = write!(out, "topology  {:<width$}", "");
    for n in &names {
        let _ = write!(out, " {n:>width$}");
    }
    let _ = writeln!(out, "  {:>4}  CPU AFFINITY", "NUMA");
    for (g, name) in sorted.iter().zip(&names) {
        let _ = write!(out, "          {name:<width$}");
        for peer in &sorted {
            let _ = write!(out, " {:>width$}", cell(g, peer));
        }
        let t = g.topology.as_ref();
        let numa = t.and_then(|t| t.numa_node).map_or("?".into(), |n| n.to_string());
        let cpus = t.and_then(|t| t.cpu_affinity.as_deref()).map_or("?".into(), clean);
        let _ = writeln!(out, "  {numa:>4}  {cpus}");
    }
    let _ = writeln!(
        out,
        "          NV# = # NVLink links; BRD/PIX/PXB/PHB/NODE/SYS = closest PCIe level; ? = not reported"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, links: &[(&str, pb::PcieLevel, Option<u32>)], numa: Option<u32>) -> pb::GpuDevice {
        pb::GpuDevice {
            id: format!("GPU-{index}"),
            index,
            topology: Some(pb::GpuTopology {
                numa_node: numa,
                cpu_affinity: numa.map(|n| format!("{}-{}", n * 32, n * 32 + 31)),
                mig_parent: None,
                links: links
                    .iter()
                    .map(|(p, l, n)| pb::GpuLink { peer: (*p).into(), pcie: *l as i32, nvlinks: *n })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_matrix_reads_like_nvidia_smi_topo() {
        use pb::PcieLevel::*;
        let gpus = [
            gpu(1, &[("GPU-0", Single, Some(4)), ("GPU-2", System, Some(0))], Some(0)),
            gpu(0, &[("GPU-1", Single, Some(4)), ("GPU-2", System, Some(0))], Some(0)),
            gpu(2, &[("GPU-0", Unspecified, None)], None),
        ];
        let mut out = String::new();
        render_topology(&mut out, &gpus);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "topology         GPU0  GPU1  GPU2  NUMA  CPU AFFINITY");
        assert_eq!(lines[1], "          GPU0      X   NV4   SYS     0  0-31");
        assert_eq!(lines[2], "          GPU1    NV4     X   SYS     0  0-31");
        assert_eq!(lines[3], "          GPU2      ?     ?     X     ?  ?", "unknown is ?, never a level");
        assert!(lines[4].contains("? = not reported"));
    }

    #[test]
    fn no_topology_prints_nothing_and_mig_instances_are_named_by_their_gpu() {
        let mut out = String::new();
        render_topology(&mut out, &[pb::GpuDevice { id: "GPU-0".into(), ..Default::default() }]);
        assert_eq!(out, "");
        let mut a = gpu(0, &[], Some(0));
        a.id = "MIG-a".into();
        a.topology.as_mut().unwrap().mig_parent = Some("GPU-p".into());
        let mut b = a.clone();
        b.id = "MIG-b".into();
        b.topology.as_mut().unwrap().cpu_affinity = Some("0-3\u{1b}[2J".into());
        render_topology(&mut out, &[a, b]);
        assert!(out.starts_with("topology            GPU0/MIG0 GPU0/MIG1"), "{out}");
        assert!(out.contains("0-3?[2J"), "terminal escapes are made visible: {out}");
    }
}
