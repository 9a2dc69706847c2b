//! Releasing the pages of this process's own executable that only its start needed.
//!
//! A process's code is mapped from the page cache: every page it has executed (and, by
//! the kernel's fault-around, the rest of each 64 KiB block around it) stays mapped and
//! counts in its RSS for as long as it runs, though start-up code (argument parsing, TLS
//! and descriptor set-up, the first scans) never runs again. [`release_own_code`] drops
//! those mappings once start-up is done; the pages stay in the page cache, and the code
//! that keeps running maps them back on its next minor fault (no disk read while the
//! file stays cached). Only mappings whose contents equal the file's are released: not
//! writable, no private (copy-on-write) page, of the running executable itself.

use std::io;
use std::os::unix::fs::MetadataExt;

/// What [`release_own_code`] released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Mappings of the executable released.
    pub mappings: usize,
    /// Their resident bytes just before (the RSS released, less what is mapped back).
    pub resident_bytes: u64,
}

/// One mapping of `/proc/self/smaps` that [`release_own_code`] may release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapping {
    /// Start address.
    pub start: usize,
    /// End address (exclusive).
    pub end: usize,
    /// Resident bytes (`Rss`).
    pub rss: u64,
}

/// The mappings of the file `(major, minor, inode)` in `smaps` text that hold only the
/// file's contents: not writable, and no anonymous (copy-on-write) page. Relocated
/// read-only data (RELRO) has anonymous pages and is never listed.
pub(crate) fn clean_mappings_of(smaps: &str, major: u32, minor: u32, inode: u64) -> Vec<Mapping> {
    let mut out = Vec::new();
    let mut current: Option<(Mapping, bool)> = None; // (mapping, still a candidate)
    let mut anonymous_seen = false;
    for line in smaps.lines() {
        if let Some((start, end, rest)) = header(line) {
            finish(current.take(), anonymous_seen, &mut out);
            anonymous_seen = false;
            let mut fields = rest.split_ascii_whitespace();
            let perms = fields.next().unwrap_or("");
            let _offset = fields.next();
            let dev = fields.next().unwrap_or("");
            let ino = fields.next().and_then(|s| s.parse::<u64>().ok());
            let same_file = ino == Some(inode) && parse_dev(dev) == Some((major, minor));
            let read_only = perms.as_bytes().get(1) == Some(&b'-');
            current = Some((Mapping { start, end, rss: 0 }, same_file && read_only));
        } else if let Some((m, candidate)) = current.as_mut() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let kb = value.trim().strip_suffix(" kB").and_then(|v| v.trim().parse::<u64>().ok());
            match (key, kb) {
                ("Rss", Some(kb)) => m.rss = kb * 1024,
                // `Anonymous` is what the kernel counts as private, written pages; it
                // must be present and zero.
                ("Anonymous", Some(0)) => anonymous_seen = true,
                ("Anonymous", _) => *candidate = false,
                _ => {}
            }
        }
    }
    finish(current.take(), anonymous_seen, &mut out);
    out
}

/// Keeps `m` if it is still a candidate and its `Anonymous` line said zero.
fn finish(m: Option<(Mapping, bool)>, anonymous_seen: bool, out: &mut Vec<Mapping>) {
    if let Some((m, true)) = m
        && anonymous_seen
    {
        out.push(m);
    }
}

/// `start-end rest` of a mapping's header line, or `None` for a field line.
fn header(line: &str) -> Option<(usize, usize, &str)> {
    let (range, rest) = line.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    (end > start).then_some((start, end, rest))
}

/// `major:minor` in hexadecimal, as smaps writes a device.
fn parse_dev(dev: &str) -> Option<(u32, u32)> {
    let (major, minor) = dev.split_once(':')?;
    Some((u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?))
}

/// Drops this process's mappings of its own executable's clean pages (code, read-only
/// data, unwind tables) with `madvise(MADV_DONTNEED)`, so that what start-up alone ran
/// no longer counts in its RSS; what runs again maps its pages back. Returns how much
/// was released. Linux only (`/proc/self/smaps`).
pub fn release_own_code() -> io::Result<Released> {
    let meta = std::fs::metadata("/proc/self/exe")?;
    let dev = meta.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released::default();
    for m in clean_mappings_of(&smaps, major, minor, meta.ino()) {
        if m.rss == 0 {
            continue;
        }
        crate::sys::dontneed_clean_file_mapping(m.start, m.end - m.start)?;
        released.mappings += 1;
        released.resident_bytes += m.rss;
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55a0-55b0 r--p 00000000 fd:01 42 /usr/bin/hive
Size:                 64 kB
Rss:                  60 kB
Anonymous:             0 kB
55b0-55d0 r-xp 00010000 fd:01 42 /usr/bin/hive
Rss:                 128 kB
Anonymous:             0 kB
55d0-55e0 r--p 00030000 fd:01 42 /usr/bin/hive
Rss:                  64 kB
Anonymous:            64 kB
55e0-55f0 rw-p 00040000 fd:01 42 /usr/bin/hive
Rss:                   8 kB
Anonymous:             0 kB
7f00-7f10 r-xp 00000000 fd:01 43 /usr/lib/libc.so.6
Rss:                  64 kB
Anonymous:             0 kB
7f10-7f20 r-xp 00000000 fd:02 42 /other/fs/same-inode
Rss:                  64 kB
Anonymous:             0 kB
7f20-7f30 r-xp 00000000 fd:01 42 /usr/bin/hive (deleted)
Rss:                  64 kB
";

    #[test]
    fn only_clean_read_only_mappings_of_the_executable_qualify() {
        let got = clean_mappings_of(SMAPS, 0xfd, 1, 42);
        assert_eq!(
            got,
            vec![
                Mapping { start: 0x55a0, end: 0x55b0, rss: 60 * 1024 },
                Mapping { start: 0x55b0, end: 0x55d0, rss: 128 * 1024 },
            ],
            "the relocated read-only data (anonymous pages), the writable data, other files and a \
             mapping whose Anonymous line is missing are never released"
        );
    }

    #[test]
    fn nothing_qualifies_for_another_file() {
        assert!(clean_mappings_of(SMAPS, 0xfd, 1, 7).is_empty());
        assert!(clean_mappings_of("", 0xfd, 1, 42).is_empty());
        assert!(clean_mappings_of("garbage\nRss: 4 kB\n", 0xfd, 1, 42).is_empty());
    }
}
