//! What the kernel says about memory: `MemAvailable` and `MemTotal` from
//! `/proc/meminfo` (parsed by the sampler's `source::procfs`, the one parser), and
//! memory pressure (PSI) from `/proc/pressure/memory`.
//!
//! The `/proc` root is configurable so that tests can present a small machine or one
//! under pressure; the hive reads the real `/proc`.

use std::io;
use std::path::Path;

/// Memory figures, bytes: the one `/proc/meminfo` reading of the hive (the sampler's).
pub use crate::source::procfs::MemInfo;

/// Reads `<proc_root>/meminfo` with the sampler's parser
/// ([`crate::source::procfs::parse_meminfo`]): on a kernel without `MemAvailable`
/// (before 3.14) `available` is the same estimate the hive reports in its samples.
/// Errors when the file cannot be read or has no `MemTotal`.
pub fn meminfo(proc_root: &Path) -> io::Result<MemInfo> {
    let path = proc_root.join("meminfo");
    let text = std::fs::read_to_string(&path)?;
    if !text.lines().any(|l| l.starts_with("MemTotal:")) {
        return Err(io::Error::other(format!("MemTotal missing from {}", path.display())));
    }
    Ok(crate::source::procfs::parse_meminfo(&text))
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
        let m = meminfo(dir.path()).unwrap();
        assert_eq!((m.total, m.available), (16384000 * 1024, 8192000 * 1024));
        assert_eq!(pressure_some_avg10(dir.path()), None);
        std::fs::create_dir(dir.path().join("pressure")).unwrap();
        std::fs::write(
            dir.path().join("pressure/memory"),
            "some avg10=12.50 avg60=1.00 avg300=0.00 total=5\nfull avg10=3.00 avg60=0.00 avg300=0.00 total=1\n",
        )
        .unwrap();
        assert_eq!(pressure_some_avg10(dir.path()), Some(12.5));
    }

    /// One rule for `/proc/meminfo`: admission reads what the sampler reports, also on
    /// an old kernel without `MemAvailable` (the estimate, not an error).
    #[test]
    fn an_old_kernel_gets_the_samplers_estimate_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let text = "MemTotal:       1000 kB\nMemFree:         100 kB\nBuffers:          10 kB\n\
                    Cached:          200 kB\nShmem: 5 kB\nSReclaimable: 20 kB\n";
        std::fs::write(dir.path().join("meminfo"), text).unwrap();
        let m = meminfo(dir.path()).unwrap();
        assert_eq!(m, crate::source::procfs::parse_meminfo(text));
        assert_eq!((m.total, m.available), (1000 << 10, (100 + 10 + 200 + 20 - 5) << 10));
        std::fs::write(dir.path().join("meminfo"), "MemFree: 100 kB\n").unwrap();
        assert!(meminfo(dir.path()).unwrap_err().to_string().contains("MemTotal"));
    }

    #[test]
    fn the_real_proc_reads() {
        let m = meminfo(Path::new("/proc")).unwrap();
        assert!(m.available > 0 && m.available <= m.total);
    }
}
