//! The preload itself: reads a model's files front to back so that the kernel keeps
//! them in the page cache, counting progress, stopping on cancel or memory pressure,
//! and timing reads to learn the hive's disk and RAM read speeds. Blocking; run it on
//! a blocking thread.
//!
//! Only regular files beneath the model directory are read ([`open_beneath`]), and never more than the catalog's
//! size for each: a model file swapped for a FIFO, a device (`/dev/zero`), a symlink or a
//! path through a symlinked directory fails the preload at once instead of blocking a thread or reading forever.

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
        let file = open_beneath(job.dir, &f.path).map_err(io)?;
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

/// Opens the model file `rel` beneath the model directory `dir` for reading, only if it
/// is a regular file: no component of `rel` may be a symbolic link (a symlinked
/// subdirectory would lead outside the model), `..` may not climb out of `dir`, and the
/// open never blocks (a FIFO with no writer); the result is then checked with `fstat`.
/// Anything else is an error that names what the path is. `dir` itself is opened as
/// given up to its last component (the operator chose the models directory), which
/// must not be a symlink.
///
/// Uses `openat2(2)` with `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`; on kernels without it
/// (`ENOSYS`, before 5.6) walks `rel` one component at a time with `O_NOFOLLOW`.
pub fn open_beneath(dir: &Path, rel: impl AsRef<Path>) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let rel = rel.as_ref();
    // The model directory itself is never a symlink either (the catalog lists none).
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dirfd = rustix::fs::open(dir, dir_flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => io::Error::new(
            io::ErrorKind::InvalidInput,
            "the model directory is a symbolic link or not a directory; only files beneath a real one are preloaded",
        ),
        e => io::Error::from(e),
    })?;
    let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH;
    let fd = match rustix::fs::openat2(&dirfd, rel, file_flags(), Mode::empty(), resolve) {
        Err(rustix::io::Errno::NOSYS) => open_walking(&dirfd, rel)?,
        other => other.map_err(resolve_error)?,
    };
    check_regular(File::from(fd))
}

/// The flags every model file is opened with.
fn file_flags() -> rustix::fs::OFlags {
    use rustix::fs::OFlags;
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
}

/// The fallback of [`open_beneath`]: each directory component opened with
/// `O_NOFOLLOW | O_DIRECTORY`, the file with `O_NOFOLLOW`; `..`, `/` and `.` are refused.
fn open_walking(dirfd: &rustix::fd::OwnedFd, rel: &Path) -> io::Result<rustix::fd::OwnedFd> {
    use std::path::Component;

    use rustix::fs::{Mode, OFlags};
    let parts: Vec<_> = rel
        .components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path leaves the model directory, only plain names are allowed",
            )),
        })
        .collect::<io::Result<_>>()?;
    let Some((last, dirs)) = parts.split_last() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty path"));
    };
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut at: Option<rustix::fd::OwnedFd> = None;
    for name in dirs {
        let next = rustix::fs::openat(at.as_ref().unwrap_or(dirfd), *name, dir_flags, Mode::empty())
            .map_err(|e| match e {
                // O_NOFOLLOW | O_DIRECTORY on a symlink gives ELOOP or ENOTDIR.
                rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
                    not_regular("a path through a symbolic link or non-directory")
                }
                e => io::Error::from(e),
            })?;
        at = Some(next);
    }
    rustix::fs::openat(at.as_ref().unwrap_or(dirfd), *last, file_flags(), Mode::empty())
        .map_err(resolve_error)
}

/// An `openat2`/`openat` error with the symlink and escape cases named.
fn resolve_error(e: rustix::io::Errno) -> io::Error {
    match e {
        rustix::io::Errno::LOOP => not_regular("a symbolic link"),
        rustix::io::Errno::XDEV => not_regular("a path that leaves the model directory"),
        e => io::Error::from(e),
    }
}

/// `file` if it is a regular file, else an error naming what it is.
fn check_regular(file: File) -> io::Result<File> {
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
        let d = dir.path();
        std::fs::write(d.join("w.bin"), b"weights").unwrap();
        assert!(open_beneath(d, "w.bin").is_ok());
        let made = std::process::Command::new("mkfifo").arg(d.join("fifo")).status().unwrap();
        assert!(made.success());
        // A plain open would block here for want of a writer.
        let e = open_beneath(d, "fifo").unwrap_err();
        assert!(e.to_string().contains("a FIFO, not a regular file"), "{e}");
        std::os::unix::fs::symlink("/dev/zero", d.join("zero")).unwrap();
        let e = open_beneath(d, "zero").unwrap_err();
        assert!(e.to_string().contains("a symbolic link"), "{e}");
        std::fs::create_dir(d.join("sub")).unwrap();
        let e = open_beneath(d, "sub").unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        assert_eq!(open_beneath(d, "missing").unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    /// A model whose subdirectory was swapped for a symlink to a directory outside it
    /// (hostile round 3, F7), and a `..` path: neither reaches the outside file, by
    /// `openat2` and by the component walk alike.
    #[test]
    fn a_symlinked_directory_or_dotdot_never_leads_outside_the_model() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("w.bin"), b"secret").unwrap();
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join("m");
        std::fs::create_dir_all(model.join("real")).unwrap();
        std::fs::write(model.join("real/w.bin"), b"weights").unwrap();
        std::os::unix::fs::symlink(outside.path(), model.join("sub")).unwrap();
        std::fs::write(root.path().join("w.bin"), b"secret").unwrap();

        assert!(open_beneath(&model, "real/w.bin").is_ok());
        let e = open_beneath(&model, "sub/w.bin").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(open_beneath(&model, "../w.bin").is_err());
        assert!(open_beneath(&model, "real/../../w.bin").is_err());

        use rustix::fs::{Mode, OFlags};
        let dirfd = rustix::fs::open(&model, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        assert!(open_walking(&dirfd, Path::new("real/w.bin")).is_ok());
        let e = open_walking(&dirfd, Path::new("sub/w.bin")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(open_walking(&dirfd, Path::new("../w.bin")).is_err());
        assert!(open_walking(&dirfd, Path::new("/etc/passwd")).is_err());
        std::os::unix::fs::symlink(outside.path().join("w.bin"), model.join("real/link")).unwrap();
        // A model directory swapped for a symlink is refused as well.
        let linked = root.path().join("linked");
        std::os::unix::fs::symlink(&model, &linked).unwrap();
        let e = open_beneath(&linked, "real/w.bin").unwrap_err();
        assert!(e.to_string().contains("the model directory is a symbolic link"), "{e}");
        assert!(open_walking(&dirfd, Path::new("real/link")).is_err());
    }
}
