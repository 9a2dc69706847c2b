//! The preload itself: reads a model's files front to back so that the kernel keeps
//! them in the page cache, counting progress, stopping on cancel or memory pressure,
//! and timing reads to learn the hive's disk and RAM read speeds. Blocking; run it on
//! a blocking thread.

use std::fs::File;
use std::io::{self, Read};
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
        let mut file = File::open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let before = rbee_pagecache::resident_bytes(&file).map_err(io)?.0;
        let started = Instant::now();
        let mut read = 0u64;
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
