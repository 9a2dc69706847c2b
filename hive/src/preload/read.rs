//! The preload itself: reads a model's files front to back so that the kernel keeps
//! them in the page cache, counting progress, stopping on cancel or memory pressure,
//! and timing reads to learn the hive's disk and RAM read speeds. Blocking; run it on
//! a blocking thread.
//!
//! Only regular files are read ([`open_regular`]), and never more than the catalog's
//! size for each: a model file swapped for a FIFO, a device (`/dev/zero`) or a symlink
//! fails the preload at once instead of blocking a thread or reading forever.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbee_shared::ModelFile;
use rbee_shared::lock::MutexExt;
use tokio_util::sync::CancellationToken;

use super::bandwidth::Bandwidth;
use crate::models::progress::Progress;

/// Read size.
const CHUNK: usize = 8 << 20;
/// Memory pressure is checked after this many bytes.
const PRESSURE_EVERY: u64 = 64 << 20;
/// How long a preload waits for pressure to ease before it gives up.
const PRESSURE_PATIENCE: Duration = Duration::from_secs(5);
/// A file at most this cached before the read times the disk; at least `1 - x`, RAM.
const TIER_SHARE: f64 = 0.05;

/// Why a preload stopped early.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    /// EvictModel or shutdown.
    #[error("cancelled")]
    Cancelled,
    /// Memory pressure stayed over the limit.
    #[error("memory pressure: some avg10 = {avg10:.1}% stayed over the limit of {limit:.1}% for {} s; preload stopped and its pages dropped", PRESSURE_PATIENCE.as_secs())]
    Pressure {
        /// The last reading.
        avg10: f64,
        /// The limit.
        limit: f64,
    },
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// What one preload needs.
pub struct ReadJob<'a> {
    /// The model's directory.
    pub dir: &'a Path,
    /// Its files.
    pub files: &'a [ModelFile],
    /// Where progress goes.
    pub progress: &'a Arc<Mutex<Progress>>,
    /// Cancelled by EvictModel or shutdown.
    pub cancel: &'a CancellationToken,
    /// Where measured speeds go.
    pub bandwidth: &'a Bandwidth,
    /// `/proc`, for pressure.
    pub proc_root: &'a Path,
    /// The pressure limit (`some avg10`, percent).
    pub pressure_limit: f64,
}

/// Reads every file of the job.
pub fn read_all(job: &ReadJob<'_>) -> Result<(), Stopped> {
    let mut buf = vec![0u8; CHUNK];
    let mut since_check = 0u64;
    for f in job.files {
        let path = job.dir.join(&f.path);
        let io = |source| Stopped::Io { path: path.clone(), source };
        let file = open_regular(&path).map_err(io)?;
        // Never more than the catalog says, even if the file grew since.
        let len = file.metadata().map_err(io)?.len().min(f.size_bytes);
        let before = rbee_pagecache::resident_bytes(&file).map_err(io)?.0;
        let started = Instant::now();
        let mut read = 0u64;
        let mut file = file.take(f.size_bytes);
        loop {
            if job.cancel.is_cancelled() {
                return Err(Stopped::Cancelled);
            }
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            read += n as u64;
            since_check += n as u64;
            job.progress.lock_unpoisoned().add(n as u64);
            if since_check >= PRESSURE_EVERY {
                since_check = 0;
                wait_for_pressure(job)?;
            }
        }
        if len > 0 && read > 0 {
            let share = before as f64 / len as f64;
            let secs = started.elapsed().as_secs_f64().max(1e-6);
            if share <= TIER_SHARE {
                job.bandwidth.record_disk(read as f64 / secs);
            } else if share >= 1.0 - TIER_SHARE {
                job.bandwidth.record_ram(read as f64 / secs);
            }
        }
    }
    Ok(())
}

/// Opens `path` for reading only if it is a regular file: without following a
/// symlink and without blocking (a FIFO with no writer), then checked with `fstat`.
/// Anything else is an error that names what the path is.
pub fn open_regular(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| {
        if e == rustix::io::Errno::LOOP { not_regular("a symbolic link") } else { io::Error::from(e) }
    })?;
    let file = File::from(fd);
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    };
    Err(not_regular(what))
}

fn not_regular(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}, not a regular file; only regular files are preloaded"),
    )
}

/// Returns at once while pressure is under the limit (or unknown); else waits for it
/// to ease, up to [`PRESSURE_PATIENCE`].
fn wait_for_pressure(job: &ReadJob<'_>) -> Result<(), Stopped> {
    let deadline = Instant::now() + PRESSURE_PATIENCE;
    loop {
        match super::memory::pressure_some_avg10(job.proc_root) {
            Some(avg10) if avg10 > job.pressure_limit => {
                if Instant::now() >= deadline {
                    return Err(Stopped::Pressure { avg10, limit: job.pressure_limit });
                }
                tracing::info!(avg10, limit = job.pressure_limit, "memory pressure; preload backs off");
                if job.cancel.is_cancelled() {
                    return Err(Stopped::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open_and_nothing_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let regular = dir.path().join("w.bin");
        std::fs::write(&regular, b"weights").unwrap();
        assert!(open_regular(&regular).is_ok());
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        // A plain open would block here for want of a writer.
        let e = open_regular(&fifo).unwrap_err();
        assert!(e.to_string().contains("a FIFO, not a regular file"), "{e}");
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = open_regular(&link).unwrap_err();
        assert!(e.to_string().contains("a symbolic link, not a regular file"), "{e}");
        let e = open_regular(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("a character device"), "{e}");
        let e = open_regular(dir.path()).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        assert_eq!(open_regular(&dir.path().join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
