//! What the kernel says about memory: `MemAvailable` and `MemTotal` from
//! `/proc/meminfo`, and memory pressure (PSI) from `/proc/pressure/memory`.
//!
//! The `/proc` root is configurable so that tests can present a small machine or one
//! under pressure; the hive reads the real `/proc`.

use std::io;
use std::path::Path;

/// Memory figures, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable`: what new work can use without swapping.
    pub available: u64,
}

/// Reads `MemTotal` and `MemAvailable` from `<proc_root>/meminfo`.
pub fn meminfo(proc_root: &Path) -> io::Result<MemInfo> {
    let text = std::fs::read_to_string(proc_root.join("meminfo"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or_else(|| io::Error::other(format!("{name} missing from {}/meminfo", proc_root.display())))
    };
    Ok(MemInfo { total: field("MemTotal")?, available: field("MemAvailable")? })
}

/// Memory pressure: the share of the last 10 s in which some task stalled on memory
/// (`some avg10`, percent). `None` where the kernel has no PSI (no file, or PSI off).
pub fn pressure_some_avg10(proc_root: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(proc_root.join("pressure/memory")).ok()?;
    let some = text.lines().find(|l| l.starts_with("some "))?;
    some.split_whitespace().find_map(|kv| kv.strip_prefix("avg10=")?.parse::<f64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_formats() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("meminfo"),
            "MemTotal:       16384000 kB\nMemFree:  1 kB\nMemAvailable:    8192000 kB\n",
        )
        .unwrap();
        assert_eq!(
            meminfo(dir.path()).unwrap(),
            MemInfo { total: 16384000 * 1024, available: 8192000 * 1024 }
        );
        assert_eq!(pressure_some_avg10(dir.path()), None);
        std::fs::create_dir(dir.path().join("pressure")).unwrap();
        std::fs::write(
            dir.path().join("pressure/memory"),
            "some avg10=12.50 avg60=1.00 avg300=0.00 total=5\nfull avg10=3.00 avg60=0.00 avg300=0.00 total=1\n",
        )
        .unwrap();
        assert_eq!(pressure_some_avg10(dir.path()), Some(12.5));
    }

    #[test]
    fn the_real_proc_reads() {
        let m = meminfo(Path::new("/proc")).unwrap();
        assert!(m.available > 0 && m.available <= m.total);
    }
}
