//! One upload of a model file to a peer, run on a blocking thread: it reads chunks
//! (positional reads), paces them by the shared throttle, and hands them to the RPC's
//! bounded channel, so that the async threads only forward.
//!
//! A ready file is sent from its offset to its verified size; from offset 0 it is
//! hashed on the way, and at the end its hash, size and mtime must still be the
//! verified ones, else the stream ends with DATA_LOSS and the model is verified again.
//!
//! A partial file (`allow_partial`, a model being downloaded) is sent as its `.part`
//! file grows: the upload wakes on the download's progress (and polls, since progress
//! counts bytes as they are queued for the disk, a moment before they are written),
//! keeps its open file across the renames that make the model ready, and ends at the
//! file's full size. It ends with ABORTED when the download fails or is cancelled, or
//! starts the file over (the file shrank, or another file took its path).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rbee_shared::lock::MutexExt;
use rbee_shared::{ModelFile, ModelState};
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{CHUNK_BYTES, FileChunk, Opened, UploadStats, reverify};
use crate::HiveError;
use crate::models::download::hex;
use crate::models::serve_throttle::TokenBucket;
use crate::models::{Inner, layout};
use crate::preload::read::open_beneath;

/// Longest wait for a partial file to grow before looking again.
const POLL: Duration = Duration::from_millis(100);
/// Longest sleep of the throttle before checking that the reader is still there.
const PACE_SLICE: Duration = Duration::from_millis(50);

/// Why an upload stopped before its end.
enum Stop {
    /// The reader went away or the hive is shutting down: nothing to say.
    Closed,
    /// The stream ends with this error.
    Error(HiveError),
}

impl From<HiveError> for Stop {
    fn from(e: HiveError) -> Self {
        Self::Error(e)
    }
}

/// One upload.
pub struct Upload {
    /// The models' shared state.
    pub inner: Arc<Inner>,
    /// The model.
    pub model_id: String,
    /// The file as the catalog lists it (path, full size, sha256).
    pub file: ModelFile,
    /// The next byte to send.
    pub offset: u64,
    /// A ready file, opened and checked.
    pub source: Option<Opened>,
    /// A partial file's download, to follow.
    pub growth: Option<Growth>,
    /// The RPC's channel.
    pub tx: mpsc::Sender<Result<FileChunk, HiveError>>,
    /// The shared throttle.
    pub bucket: Option<Arc<TokenBucket>>,
    /// The shared counts.
    pub stats: Arc<UploadStats>,
    /// The hive's shutdown.
    pub cancel: CancellationToken,
    /// The upload slot, held until the upload ends.
    pub _permit: OwnedSemaphorePermit,
}

impl Upload {
    /// Runs the upload to its end (blocking).
    pub fn run(mut self, runtime: &Handle) {
        let result = match (self.source.take(), self.growth.take()) {
            (Some(opened), _) => self.serve_ready(opened),
            (None, Some(growth)) => self.serve_partial(&growth, runtime),
            (None, None) => Ok(()),
        };
        if let Err(Stop::Error(e)) = result {
            tracing::info!(model = %self.model_id, path = %self.file.path, error = %e, "upload to a peer ended early");
            let _ = self.tx.blocking_send(Err(e));
        }
    }

    fn changed(&self, why: &str) -> Stop {
        reverify(&self.inner, &self.model_id);
        Stop::Error(HiveError::ServedFileChanged(format!(
            "model {} file {} {why} since it was verified: the stream ends here, and the model is being verified again",
            self.model_id,
            layout::shown_name(&self.file.path)
        )))
    }

    fn aborted(&self, why: &str) -> Stop {
        Stop::Error(HiveError::PartialAborted(format!(
            "model {} file {}: {why}",
            self.model_id,
            layout::shown_name(&self.file.path)
        )))
    }

    fn serve_ready(&mut self, opened: Opened) -> Result<(), Stop> {
        let size = self.file.size_bytes;
        let mut hasher = (self.offset == 0).then(Sha256::new);
        let mut first = true;
        while self.offset < size || first {
            let want = (size - self.offset).min(CHUNK_BYTES as u64) as usize;
            let data = read_at(&opened.file, self.offset, want).map_err(|e| self.io(e))?;
            if data.len() < want {
                return Err(self.changed("shrank"));
            }
            if let Some(h) = &mut hasher {
                h.update(&data);
            }
            let header = first.then(|| (size, self.file.sha256.clone()));
            self.send(data, header)?;
            first = false;
        }
        let meta = opened.file.metadata().map_err(|e| self.io(e))?;
        let modified = meta.modified().map_err(|e| self.io(e))?;
        if meta.len() != size || opened.verified_at.is_some_and(|at| modified > at) {
            return Err(self.changed("changed on disk"));
        }
        if let (Some(h), Some(expected)) = (hasher, &self.file.sha256)
            && hex(&h.finalize()) != *expected
        {
            return Err(self.changed("has another sha256"));
        }
        Ok(())
    }

    fn serve_partial(&mut self, growth: &Growth, runtime: &Handle) -> Result<(), Stop> {
        let file = loop {
            if let Some(f) = growth.open().map_err(|e| self.io(e))? {
                break f;
            }
            match growth.state() {
                Download::Running(rx) => self.wait(runtime, rx)?,
                // Ready since the last look: open it where it is now.
                Download::Ready => {}
                Download::Gone => return Err(self.aborted("its download failed or was cancelled")),
            }
        };
        let ours = file.metadata().map(|m| (m.dev(), m.ino())).map_err(|e| self.io(e))?;
        let size = self.file.size_bytes;
        let mut first = true;
        // The longest the file was seen: a file that shrinks was started over.
        let mut seen = 0;
        loop {
            let len = file.metadata().map_err(|e| self.io(e))?.len();
            if len < seen {
                return Err(self.aborted("its download started the file over"));
            }
            seen = len;
            let available = len.min(size);
            if available > self.offset || (first && available == size && self.offset == size) {
                let want = (available - self.offset).min(CHUNK_BYTES as u64) as usize;
                let data = read_at(&file, self.offset, want).map_err(|e| self.io(e))?;
                if data.len() < want {
                    return Err(self.aborted("its download started the file over"));
                }
                // Not verified here yet: the reader checks the whole file's sha256.
                self.send(data, first.then_some((size, None)))?;
                first = false;
                continue;
            }
            if self.offset >= size {
                return Ok(());
            }
            match growth.state() {
                Download::Running(rx) => {
                    if growth.replaced(ours) {
                        return Err(self.aborted("its download started the file over"));
                    }
                    self.wait(runtime, rx)?;
                }
                Download::Ready if file.metadata().map_err(|e| self.io(e))?.len() > self.offset => {}
                Download::Ready => return Err(self.aborted("the file became ready shorter than declared")),
                Download::Gone => return Err(self.aborted("its download failed or was cancelled")),
            }
        }
    }

    fn io(&self, e: std::io::Error) -> Stop {
        Stop::Error(HiveError::ModelIo { path: PathBuf::from(&self.file.path), source: e })
    }

    /// Paces and sends one chunk at the current offset, with the file's size and
    /// sha256 on the first one (`header`); moves the offset past it.
    fn send(&mut self, data: Vec<u8>, header: Option<(u64, Option<String>)>) -> Result<(), Stop> {
        let n = data.len() as u64;
        self.pace(n)?;
        let (size_bytes, sha256) = match header {
            Some((size, sha256)) => (Some(size), sha256),
            None => (None, None),
        };
        let chunk = FileChunk { offset: self.offset, data, size_bytes, sha256 };
        if self.cancel.is_cancelled() || self.tx.blocking_send(Ok(chunk)).is_err() {
            return Err(Stop::Closed);
        }
        self.offset += n;
        self.stats.bytes.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Waits until the throttle lets `n` bytes go; stops early when the reader leaves.
    fn pace(&self, n: u64) -> Result<(), Stop> {
        let Some(bucket) = &self.bucket else { return Ok(()) };
        let until = Instant::now() + bucket.reserve(n, Instant::now());
        loop {
            if self.cancel.is_cancelled() || self.tx.is_closed() {
                return Err(Stop::Closed);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep((until - now).min(PACE_SLICE));
        }
    }

    /// Waits for the download's next progress (or [`POLL`]), unless the reader leaves
    /// or the hive shuts down.
    fn wait(&self, runtime: &Handle, mut rx: watch::Receiver<u64>) -> Result<(), Stop> {
        let tx = self.tx.clone();
        let cancel = self.cancel.clone();
        runtime.block_on(async move {
            tokio::select! {
                _ = tokio::time::timeout(POLL, rx.changed()) => Ok(()),
                () = cancel.cancelled() => Err(Stop::Closed),
                () = tx.closed() => Err(Stop::Closed),
            }
        })
    }
}

/// Reads up to `len` bytes at `offset` (fewer only at the end of the file).
fn read_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut data = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut data[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    data.truncate(got);
    Ok(data)
}

/// Where a partial file's download stands.
pub enum Download {
    /// Running; the receiver wakes on its progress.
    Running(watch::Receiver<u64>),
    /// Finished: the model is ready.
    Ready,
    /// Failed, cancelled or deleted.
    Gone,
}

/// A file of a model being downloaded, followed as it grows.
pub struct Growth {
    /// The models' shared state.
    inner: Arc<Inner>,
    /// The model.
    model_id: String,
    /// The file's path in the model.
    path: String,
}

impl Growth {
    /// Follows `path` of model `model_id`'s download.
    pub fn new(inner: Arc<Inner>, model_id: String, path: String) -> Self {
        Self { inner, model_id, path }
    }

    /// The download's state now.
    pub fn state(&self) -> Download {
        if let Some(job) = self.inner.jobs.lock_unpoisoned().get(&self.model_id) {
            return Download::Running(job.progress.lock_unpoisoned().subscribe());
        }
        match self.inner.catalog.get(&self.model_id).map(|m| m.state) {
            Some(ModelState::Ready) => Download::Ready,
            _ => Download::Gone,
        }
    }

    fn partial_dir(&self) -> PathBuf {
        layout::partial_dir(&self.inner.config.dir, &self.model_id)
    }

    /// Opens the `.part` file beneath the partial directory, or, once the model is
    /// ready, the file beneath the model's directory; `None` while neither exists.
    pub fn open(&self) -> std::io::Result<Option<File>> {
        match open_beneath(&self.partial_dir(), format!("{}.part", self.path)) {
            Ok(f) => return Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if matches!(self.state(), Download::Ready) {
            let dir = layout::model_dir(&self.inner.config.dir, &self.model_id);
            return open_beneath(&dir, &self.path).map(Some);
        }
        Ok(None)
    }

    /// True when the `.part` path holds another file than `ours` (device, inode): the
    /// download started the file over in a new file.
    pub fn replaced(&self, ours: (u64, u64)) -> bool {
        let part = layout::part_file(&self.partial_dir(), &self.path);
        std::fs::symlink_metadata(part).is_ok_and(|m| (m.dev(), m.ino()) != ours)
    }
}
