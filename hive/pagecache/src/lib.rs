//! How much of a file is in the Linux page cache, and dropping it.
//!
//! - [`resident_bytes`] counts a file's cached bytes with `cachestat(2)` (Linux 6.5 and
//!   later: one system call, no mapping), and falls back to `mincore(2)` over a
//!   read-only mapping of the file where the kernel lacks it (`ENOSYS`) or a seccomp
//!   filter forbids it (`EPERM`).
//! - [`evict`] drops a file's clean cached pages with `posix_fadvise(DONTNEED)`.
//!
//! No well-kept crate wraps `cachestat` or `mincore` safely (rustix 1.1 has neither;
//! nix has neither), so [`sys`] makes those two calls itself. It is the only unsafe
//! code in rbee; every block says why it is sound.

mod sys;

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

/// How residency was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `cachestat(2)`.
    Cachestat,
    /// `mincore(2)` over a mapping of the file.
    Mincore,
}

impl Method {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cachestat => "cachestat",
            Self::Mincore => "mincore",
        }
    }
}

/// Whether `cachestat` works here: 0 not tried, 1 yes, 2 no.
static CACHESTAT: AtomicU8 = AtomicU8::new(0);

/// The method [`resident_bytes`] uses on this kernel (tries `cachestat` once on `file`).
pub fn method(file: &File) -> Method {
    let _ = resident_bytes(file);
    if CACHESTAT.load(Ordering::Relaxed) == 2 { Method::Mincore } else { Method::Cachestat }
}

/// Bytes of `file` now in the page cache (whole pages, capped at the file's length),
/// with the method used: `cachestat`, or `mincore` where the kernel lacks it.
pub fn resident_bytes(file: &File) -> io::Result<(u64, Method)> {
    if CACHESTAT.load(Ordering::Relaxed) != 2 {
        match sys::cachestat_pages(file) {
            Ok(pages) => {
                CACHESTAT.store(1, Ordering::Relaxed);
                return Ok((cap(file, pages)?, Method::Cachestat));
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                CACHESTAT.store(2, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    Ok((resident_bytes_mincore(file)?, Method::Mincore))
}

/// Bytes of `file` in the page cache, always by `mincore` (for comparison and benches).
pub fn resident_bytes_mincore(file: &File) -> io::Result<u64> {
    let pages = sys::mincore_pages(file)?;
    cap(file, pages)
}

/// Bytes of `file` in the page cache, always by `cachestat`; `ENOSYS` where the kernel
/// lacks it.
pub fn resident_bytes_cachestat(file: &File) -> io::Result<u64> {
    let pages = sys::cachestat_pages(file)?;
    cap(file, pages)
}

/// Drops `file`'s clean pages from the page cache (`posix_fadvise(DONTNEED)`). Dirty
/// pages stay until written back; model files are read-only, so none are dirty.
pub fn evict(file: &File) -> io::Result<()> {
    rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed).map_err(io::Error::from)
}

/// The page size.
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

fn cap(file: &File, pages: u64) -> io::Result<u64> {
    let len = file.metadata()?.len();
    Ok(pages.saturating_mul(page_size()).min(len))
}
