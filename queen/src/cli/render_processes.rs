//! `queen hive ID`: who holds each GPU's memory, under the GPU's line.

use std::fmt::Write as _;

use rbee_proto::v1 as pb;
use rbee_shared::bytesize::format_bytes;

/// A string from a hive, with control characters (terminal escapes) made visible.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Where a process belongs: its container (`runtime:id12`), else its systemd unit.
fn owner(p: &pb::GpuProcess) -> String {
    match (&p.container_runtime, &p.container_id, &p.systemd_unit) {
        (rt, Some(id), _) => {
            format!("{}:{}", clean(rt.as_deref().unwrap_or("container")), clean(id.get(..12).unwrap_or(id)))
        }
        (_, None, Some(unit)) => clean(unit),
        _ => "-".into(),
    }
}

/// The process lines of one GPU (nothing when the hive does not list them).
pub fn render_gpu_processes(out: &mut String, live: Option<&pb::GpuSample>) {
    let Some(live) = live else { return };
    let Some(p) = &live.processes else {
        let _ = writeln!(
            out,
            "         processes: not listed by the hive (no permission, not supported, or an older hive)"
        );
        return;
    };
    let _ = writeln!(
        out,
        "         processes: {} listed, {} more ({}); unattributed {}",
        p.listed.len(),
        p.unlisted,
        format_bytes(p.unlisted_vram_bytes),
        live.unattributed_vram_bytes.map_or("-".into(), format_bytes),
    );
    for proc in &p.listed {
        let _ = writeln!(
            out,
            "         {:>8} {:<16} vram {:>10} rss {:>10} cpu {:>6} {}{}",
            proc.pid,
            clean(proc.name.as_deref().unwrap_or("?")),
            proc.used_vram_bytes.map_or("-".into(), format_bytes),
            proc.rss_bytes.map_or("-".into(), format_bytes),
            proc.cpu_percent.map_or("-".into(), |c| format!("{c:.0}%")),
            owner(proc),
            proc.reservation_id.as_deref().map_or(String::new(), |r| format!(" reservation {}", clean(r))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_show_name_pid_rss_owner_and_absent_lists_say_so() {
        let gpu = pb::GpuSample {
            vram_used_bytes: Some(10 << 30),
            unattributed_vram_bytes: Some(1 << 30),
            processes: Some(pb::GpuProcesses {
                listed: vec![pb::GpuProcess {
                    pid: 4242,
                    used_vram_bytes: Some(9 << 30),
                    name: Some("vllm\x1b[2J".into()),
                    rss_bytes: Some(2 << 30),
                    systemd_unit: Some("vllm.service".into()),
                    reservation_id: Some("r-1".into()),
                    ..Default::default()
                }],
                unlisted: 3,
                unlisted_vram_bytes: 0,
            }),
            ..Default::default()
        };
        let mut out = String::new();
        render_gpu_processes(&mut out, Some(&gpu));
        assert!(out.contains("4242") && out.contains("vllm?[2J") && out.contains("vllm.service"), "{out}");
        assert!(out.contains("3 more") && out.contains("reservation r-1"), "{out}");
        assert!(!out.contains('\x1b'));
        let mut out = String::new();
        render_gpu_processes(&mut out, Some(&pb::GpuSample::default()));
        assert!(out.contains("not listed"), "{out}");
    }
}
