//! The two system calls no safe wrapper offers: `cachestat(2)` and `mincore(2)` (over
//! an `mmap(2)` of the file). Each unsafe block states why it is sound.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `cachestat`'s number: the same on every architecture that has the unified table
/// (x86_64, aarch64, riscv64 ...); libc 0.2 does not name it yet.
const SYS_CACHESTAT: libc::c_long = 451;

/// Bytes mapped at a time by the `mincore` fallback, so that its vector stays small.
const MINCORE_WINDOW: u64 = 1 << 30;

/// `struct cachestat_range` of `<linux/mman.h>`.
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// `struct cachestat` of `<linux/mman.h>`.
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Pages of `file` in the page cache, by `cachestat` over the whole file.
#[allow(unsafe_code)]
pub fn cachestat_pages(file: &File) -> io::Result<u64> {
    // len 0 means "to the end of the file".
    let range = CachestatRange { off: 0, len: 0 };
    let mut out = Cachestat::default();
    // SAFETY: the fd is open for the call's duration (borrowed `file`); `range` and `out`
    // are live, properly aligned `repr(C)` structs of the kernel's layout; flags are 0.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut out as *mut Cachestat,
            0 as libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let _ = (out.nr_dirty, out.nr_writeback, out.nr_evicted, out.nr_recently_evicted);
    Ok(out.nr_cache)
}

/// Pages of `file` in the page cache, by `mincore` over read-only mappings of
/// [`MINCORE_WINDOW`] bytes at a time.
#[allow(unsafe_code)]
pub fn mincore_pages(file: &File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let page = rustix::param::page_size() as u64;
    let mut resident = 0u64;
    let mut vec = Vec::new();
    let mut off = 0u64;
    while off < len {
        let window = (len - off).min(MINCORE_WINDOW);
        let window_usize = usize::try_from(window).map_err(|_| io::Error::other("window too large"))?;
        let offset = libc::off_t::try_from(off).map_err(|_| io::Error::other("offset too large"))?;
        // SAFETY: a fresh read-only shared mapping chosen by the kernel (addr NULL), of a
        // file we hold open; no Rust reference into it is ever made (only its address
        // is passed to mincore), so a concurrent truncation cannot break Rust's rules.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                window_usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let pages = window.div_ceil(page) as usize;
        vec.clear();
        vec.resize(pages, 0u8);
        // SAFETY: `addr..addr+window` is the mapping just made; `vec` holds one byte per
        // page of it, as mincore requires.
        let rc = unsafe { libc::mincore(addr, window_usize, vec.as_mut_ptr()) };
        let err = (rc != 0).then(io::Error::last_os_error);
        // SAFETY: unmaps exactly the mapping made above, which nothing refers to.
        unsafe { libc::munmap(addr, window_usize) };
        if let Some(e) = err {
            return Err(e);
        }
        resident += vec.iter().filter(|b| *b & 1 == 1).count() as u64;
        off += window;
    }
    Ok(resident)
}
