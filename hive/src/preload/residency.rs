//! A model's bytes in the page cache: the sum over its files, by `cachestat(2)` where
//! the kernel has it, else `mincore(2)` (see [`rbee_pagecache`]). Blocking; run it on a
//! blocking thread.
//!
//! Publishing follows a deadband: a new figure reaches the catalog (and so the stream,
//! as a capability diff) only when it moved by more than [`deadband`] bytes, or right
//! after a preload or evict.

use std::io;
use std::path::Path;

use rbee_shared::ModelFile;

use super::read::open_beneath;

/// Smallest change worth a capability diff: 1% of the model's size, at least 1 MiB.
pub fn deadband(size_bytes: u64) -> u64 {
    (size_bytes / 100).max(1 << 20)
}

/// Bytes of the model in `dir` (its `files`) now in the page cache. A missing file
/// counts as nothing resident; one that is no longer a regular file (a FIFO, a device,
/// a symlink or a path through one) is an error, never opened in a way that could block.
pub fn measure(dir: &Path, files: &[ModelFile]) -> io::Result<u64> {
    let mut total = 0u64;
    for f in files {
        let path = dir.join(&f.path);
        let file = match open_beneath(dir, &f.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(naming(&path, e)),
        };
        total = total.saturating_add(rbee_pagecache::resident_bytes(&file)?.0);
    }
    Ok(total)
}

/// Drops the model's files from the page cache. A missing file is skipped.
pub fn evict(dir: &Path, files: &[ModelFile]) -> io::Result<()> {
    for f in files {
        let path = dir.join(&f.path);
        match open_beneath(dir, &f.path) {
            Ok(file) => rbee_pagecache::evict(&file)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(naming(&path, e)),
        }
    }
    Ok(())
}

/// `e` with the file it is about in front.
fn naming(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Whether a published figure `old` should be replaced by `new`.
pub fn moved(old: Option<u64>, new: Option<u64>, size_bytes: u64) -> bool {
    match (old, new) {
        (Some(a), Some(b)) => a.abs_diff(b) > deadband(size_bytes),
        (a, b) => a != b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadband_is_one_percent_and_at_least_a_mebibyte() {
        assert_eq!(deadband(10 << 30), (10 << 30) / 100);
        assert_eq!(deadband(1000), 1 << 20);
        assert!(!moved(Some(0), Some(1 << 20), 10 << 20));
        assert!(moved(Some(0), Some((1 << 20) + 1), 10 << 20));
        assert!(moved(None, Some(0), 10));
        assert!(!moved(None, None, 10));
    }
}
