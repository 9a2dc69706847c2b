//! The host's CPU times, memory, load and uptime from `/proc`, through files kept open.
//!
//! Each sample re-reads `/proc/stat`, `/proc/meminfo`, `/proc/loadavg` and
//! `/proc/uptime` from offset 0 (`pread`, as `top` does) into buffers that are reused,
//! instead of opening, stat-ing and closing four files every second: one `pread` each,
//! as the kernel generates each whole on every read. CPU usage is
//! computed exactly as sysinfo computes it (busy share of the ticks in the window).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// One `/proc` file, kept open and re-read whole on demand.
#[derive(Debug)]
pub struct ProcFile {
    /// The open file.
    file: File,
    /// The last contents (the allocation is reused).
    buf: Vec<u8>,
    /// The kernel generates the file as one record (see [`ProcFile::open_one_record`]),
    /// and it is on procfs: a read that does not fill the buffer returned all of it.
    one_record: bool,
    /// `pread`s made so far.
    reads: u64,
}

/// `PROC_SUPER_MAGIC`, procfs's `f_type`.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

impl ProcFile {
    /// Opens `path`; each [`ProcFile::read`] reads until a read returns nothing.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self { file: File::open(path)?, buf: Vec::new(), one_record: false, reads: 0 })
    }

    /// Opens `path`, a file the kernel generates whole as one record on every read
    /// (`seq_file`'s `single_open`: `/proc/stat`, `/proc/meminfo`, `/proc/loadavg`,
    /// `/proc/uptime`): a read at offset 0 returns all of it, or as much as the buffer
    /// holds. Where it is on procfs, a read that leaves room in the buffer is the whole
    /// file, and [`ProcFile::read`] makes one `pread` instead of two (the second only to
    /// see the end). Elsewhere (a test's fixture files) it reads until a read returns
    /// nothing, as [`ProcFile::open`].
    pub fn open_one_record(path: &Path) -> io::Result<Self> {
        let mut f = Self::open(path)?;
        // `f_type`'s integer type differs between targets (i64 on x86_64 glibc).
        #[allow(clippy::useless_conversion)]
        let on_procfs = rustix::fs::fstatfs(&f.file).is_ok_and(|s| i64::from(s.f_type) == PROC_SUPER_MAGIC);
        f.one_record = on_procfs;
        Ok(f)
    }

    /// `pread`s made so far.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Reads the whole file as it is now.
    pub fn read(&mut self) -> io::Result<&str> {
        let mut len = 0;
        loop {
            if len == self.buf.len() {
                self.buf.resize((self.buf.len() * 2).max(4096), 0);
            }
            let n = self.file.read_at(&mut self.buf[len..], len as u64)?;
            self.reads += 1;
            if n == 0 {
                break;
            }
            len += n;
            if self.one_record && len < self.buf.len() {
                break;
            }
        }
        std::str::from_utf8(&self.buf[..len]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// One `cpu` line of `/proc/stat`: user, nice, system, idle, iowait, irq, softirq,
/// steal, guest, guest_nice (ticks; missing trailing fields are 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes([u64; 10]);

impl CpuTimes {
    fn busy_parts(&self) -> (u64, u64, u64, u64) {
        let [user, nice, system, _idle, _iowait, irq, softirq, steal, guest, guest_nice] = self.0;
        (
            user.saturating_add(nice),
            system.saturating_add(irq).saturating_add(softirq),
            steal,
            guest.saturating_add(guest_nice),
        )
    }

    fn total(&self) -> u64 {
        let [_, _, _, idle, iowait, ..] = self.0;
        let (work, system, steal, virt) = self.busy_parts();
        work.saturating_add(system)
            .saturating_add(idle.saturating_add(iowait))
            .saturating_add(virt)
            .saturating_add(steal)
    }

    /// Busy percent between `before` and `self` (sysinfo's formula; 0..=100).
    pub fn usage_since(&self, before: &CpuTimes) -> f32 {
        let (now_total, then_total) = (self.total(), before.total());
        let total = if now_total > then_total { (now_total - then_total) as f32 } else { 1.0 };
        let (w1, s1, st1, v1) = self.busy_parts();
        let (w0, s0, st0, v0) = before.busy_parts();
        let busy =
            w1.saturating_sub(w0) + s1.saturating_sub(s0) + st1.saturating_sub(st0) + v1.saturating_sub(v0);
        (busy as f32 / total * 100.0).min(100.0)
    }
}

/// The `cpu` lines of `/proc/stat`: the aggregate first, then one per logical CPU.
pub fn parse_stat(text: &str, aggregate: &mut CpuTimes, cores: &mut Vec<CpuTimes>) {
    cores.clear();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            // The cpu lines come first; nothing after them is needed.
            if !cores.is_empty() {
                break;
            }
            continue;
        };
        let mut fields = rest.split_ascii_whitespace();
        let is_aggregate = rest.starts_with(' ');
        if !is_aggregate {
            fields.next();
        }
        let mut times = CpuTimes::default();
        for (slot, field) in times.0.iter_mut().zip(fields) {
            *slot = field.parse().unwrap_or(0);
        }
        if is_aggregate {
            *aggregate = times;
        } else {
            cores.push(times);
        }
    }
}

/// What a sample needs from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable` (estimated as sysinfo does on kernels without it).
    pub available: u64,
    /// `SwapTotal`.
    pub swap_total: u64,
    /// `SwapFree`.
    pub swap_free: u64,
}

/// Parses `/proc/meminfo` (values in KiB, written "kB").
pub fn parse_meminfo(text: &str) -> MemInfo {
    let (mut free, mut buffers, mut cached, mut shmem, mut reclaimable) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut info = MemInfo::default();
    let mut available = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let bytes = || {
            value
                .split_ascii_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                .saturating_mul(1024)
        };
        match key {
            "MemTotal" => info.total = bytes(),
            "MemFree" => free = bytes(),
            "MemAvailable" => available = Some(bytes()),
            "Buffers" => buffers = bytes(),
            "Cached" => cached = bytes(),
            "Shmem" => shmem = bytes(),
            "SReclaimable" => reclaimable = bytes(),
            "SwapTotal" => info.swap_total = bytes(),
            "SwapFree" => info.swap_free = bytes(),
            _ => {}
        }
    }
    // Linux before 3.14 has no MemAvailable: the classic estimate.
    info.available = available.unwrap_or_else(|| {
        free.saturating_add(buffers).saturating_add(cached).saturating_add(reclaimable).saturating_sub(shmem)
    });
    info
}

/// The three load averages of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut fields = text.split_ascii_whitespace().map(str::parse::<f64>);
    Some([fields.next()?.ok()?, fields.next()?.ok()?, fields.next()?.ok()?])
}

/// Whole seconds since boot, from `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<u64> {
    text.split(['.', ' ']).next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 60 0 30 400 10 0 0 0 0 0\n\
                        cpu1 40 0 20 400 40 0 0 0 0 0\nintr 12345 1 2\nctxt 999\n";
    const STAT_LATER: &str = "cpu  200 0 100 850 50 0 0 0 0 0\ncpu0 160 0 80 410 10 0 0 0 0 0\n\
                              cpu1 40 0 20 440 40 0 0 0 0 0\nintr 12346 1 2\n";

    #[test]
    fn a_one_record_proc_file_takes_one_pread_per_read() {
        for name in ["stat", "meminfo", "loadavg", "uptime"] {
            let path = Path::new("/proc").join(name);
            let mut f = ProcFile::open_one_record(&path).unwrap();
            for i in 1..=3 {
                let text = f.read().unwrap().to_owned();
                assert!(text.ends_with('\n') && text.len() > 10, "{name}: {text:?}");
                assert_eq!(f.reads(), i, "{name}: one pread per read, not a second to see the end");
            }
            // Without the one-record rule it takes a second read to see the end.
            let mut plain = ProcFile::open(&path).unwrap();
            plain.read().unwrap();
            assert_eq!(plain.reads(), 2, "{name}");
        }
    }

    #[test]
    fn a_one_record_file_off_procfs_is_read_to_its_end() {
        // A fixture file (not procfs) longer than the first buffer: read whole, to the end.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stat");
        let text: String = (0..1000).map(|i| format!("cpu{i} 1 2 3\n")).collect();
        assert!(text.len() > 8192);
        std::fs::write(&path, &text).unwrap();
        let mut f = ProcFile::open_one_record(&path).unwrap();
        assert_eq!(f.read().unwrap(), text);
        assert_eq!(f.read().unwrap(), text);
    }

    #[test]
    fn cpu_usage_is_the_busy_share_of_the_window() {
        let (mut agg0, mut cores0, mut agg1, mut cores1) = Default::default();
        parse_stat(STAT, &mut agg0, &mut cores0);
        parse_stat(STAT_LATER, &mut agg1, &mut cores1);
        assert_eq!(cores0.len(), 2);
        // Aggregate: 150 busy of 200 ticks.
        assert_eq!(agg1.usage_since(&agg0), 75.0);
        // cpu0: 150 busy of 160; cpu1: idle for 40 ticks.
        assert!((cores1[0].usage_since(&cores0[0]) - 93.75).abs() < 1e-4);
        assert_eq!(cores1[1].usage_since(&cores0[1]), 0.0);
        // No ticks in the window (or counters going back) is 0, not NaN.
        assert_eq!(agg0.usage_since(&agg1), 0.0);
        assert_eq!(agg0.usage_since(&agg0), 0.0);
    }

    #[test]
    fn meminfo_fields_are_kib_and_available_is_estimated_on_old_kernels() {
        let text = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    600 kB\n\
                    Buffers:          10 kB\nCached:          200 kB\nShmem: 5 kB\nSReclaimable: 20 kB\n\
                    SwapTotal:       300 kB\nSwapFree:        250 kB\n";
        let m = parse_meminfo(text);
        assert_eq!(
            m,
            MemInfo { total: 1000 << 10, available: 600 << 10, swap_total: 300 << 10, swap_free: 250 << 10 }
        );
        let old = text.replace("MemAvailable:    600 kB\n", "");
        assert_eq!(parse_meminfo(&old).available, (100 + 10 + 200 + 20 - 5) << 10);
    }

    #[test]
    fn load_and_uptime_parse() {
        assert_eq!(parse_loadavg("1.25 1.79 2.81 3/101 25560\n"), Some([1.25, 1.79, 2.81]));
        assert_eq!(parse_loadavg("1.25\n"), None);
        assert_eq!(parse_uptime("34942.72 8784.05\n"), Some(34942));
        assert_eq!(parse_uptime("x"), None);
    }

    #[test]
    fn a_kept_open_file_reads_what_it_holds_now() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "first").unwrap();
        let mut f = ProcFile::open(&path).unwrap();
        assert_eq!(f.read().unwrap(), "first");
        // Rewritten in place (same inode), longer than the first read's buffer.
        let long = "x".repeat(10_000);
        std::fs::write(&path, &long).unwrap();
        assert_eq!(f.read().unwrap(), long);
        std::fs::write(&path, "2nd").unwrap();
        assert_eq!(f.read().unwrap(), "2nd");
    }

    #[test]
    fn the_real_proc_files_parse() {
        let mut stat = ProcFile::open(Path::new("/proc/stat")).unwrap();
        let (mut agg, mut cores) = (CpuTimes::default(), Vec::new());
        parse_stat(stat.read().unwrap(), &mut agg, &mut cores);
        assert!(!cores.is_empty() && agg.total() > 0, "{agg:?} {cores:?}");
        let mut again = CpuTimes::default();
        parse_stat(stat.read().unwrap(), &mut again, &mut cores);
        assert!(again.total() >= agg.total(), "re-reading from offset 0 gives fresh counters");
        let mem = parse_meminfo(ProcFile::open(Path::new("/proc/meminfo")).unwrap().read().unwrap());
        assert!(mem.total > 0 && mem.available <= mem.total, "{mem:?}");
        assert!(parse_loadavg(ProcFile::open(Path::new("/proc/loadavg")).unwrap().read().unwrap()).is_some());
        assert!(parse_uptime(ProcFile::open(Path::new("/proc/uptime")).unwrap().read().unwrap()).is_some());
    }
}
