//! Where a download's bytes go to disk: a writer thread, fed chunks over a bounded
//! channel, that hashes (SHA-256) and writes each chunk in order, so that the network
//! task only receives; and a flusher thread that fsyncs the file while the transfer
//! runs, so that the fsync before the model is ready finds little left to write.
//!
//! Without the flusher, every byte of a large file still sits in the page cache when the
//! transfer ends (the kernel starts writing back only past its dirty threshold), and the
//! final fsync writes the whole file while nothing else happens. With it, the disk
//! writes run alongside the network, and the download takes about the longer of the
//! two, not their sum. Durability is unchanged: the caller still fsyncs the whole file
//! ([`Sink::finish`]) before it is verified and renamed into place.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// Chunks in flight between the network and the writer (back-pressure beyond it).
const CHUNKS_IN_FLIGHT: usize = 64;
/// Written bytes after which the flusher is asked for another fsync.
const SYNC_EVERY: u64 = 32 << 20;

/// A file being written by a writer thread.
pub struct Sink<B> {
    /// The writer's queue (dropped to tell it that no more chunks come).
    chunks: Option<mpsc::Sender<B>>,
    /// The writer; returns the file and the hash of everything written once everything
    /// queued is written.
    writer: Option<tokio::task::JoinHandle<std::io::Result<(File, Sha256)>>>,
    /// The fsyncs the flusher has finished.
    syncs: Arc<AtomicU64>,
}

impl<B: AsRef<[u8]> + Send + 'static> Sink<B> {
    /// Starts writing to `file` (at its current position) on a blocking thread;
    /// `hasher` has hashed what the file holds before that position.
    pub fn start(file: File, hasher: Sha256) -> Self {
        let (chunks, queue) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let syncs = Arc::new(AtomicU64::new(0));
        let counted = syncs.clone();
        let writer = tokio::task::spawn_blocking(move || write_all(file, hasher, queue, counted));
        Self { chunks: Some(chunks), writer: Some(writer), syncs }
    }

    /// The fsyncs made so far while the file was being written.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Queues `chunk`; waits while the writer is [`CHUNKS_IN_FLIGHT`] chunks behind. An
    /// error is the writer's: it stopped.
    pub async fn write(&mut self, chunk: B) -> std::io::Result<()> {
        let sent = match &self.chunks {
            Some(chunks) => chunks.send(chunk).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer hung up: it failed, and its error says why.
        self.chunks = None;
        match self.join().await {
            Ok(_) => Err(std::io::Error::other("the download's writer stopped")),
            Err(e) => Err(e),
        }
    }

    /// Writes everything queued and stops; with `sync`, then fsyncs the whole file.
    /// Returns the hash of the whole file (what it held before, and every chunk).
    pub async fn finish(mut self, sync: bool) -> std::io::Result<Sha256> {
        self.chunks = None;
        let (file, hasher) = self.join().await?;
        if sync {
            tokio::task::spawn_blocking(move || file.sync_all()).await.map_err(std::io::Error::other)??;
        }
        Ok(hasher)
    }

    async fn join(&mut self) -> std::io::Result<(File, Sha256)> {
        let writer = self.writer.take().ok_or_else(|| std::io::Error::other("the writer is gone"))?;
        writer.await.map_err(std::io::Error::other)?
    }
}

/// The writer thread: hashes and writes each chunk in order, and asks the flusher for an
/// fsync every [`SYNC_EVERY`] bytes.
fn write_all<B: AsRef<[u8]>>(
    mut file: File,
    mut hasher: Sha256,
    mut queue: mpsc::Receiver<B>,
    syncs: Arc<AtomicU64>,
) -> std::io::Result<(File, Sha256)> {
    let flusher = Flusher::start(file.try_clone()?, syncs)?;
    let mut unsynced = 0u64;
    let mut result = Ok(());
    while let Some(chunk) = queue.blocking_recv() {
        let chunk = chunk.as_ref();
        hasher.update(chunk);
        if let Err(e) = file.write_all(chunk) {
            result = Err(e);
            break;
        }
        unsynced += chunk.len() as u64;
        if unsynced >= SYNC_EVERY {
            flusher.nudge();
            unsynced = 0;
        }
    }
    // An fsync error is reported once: the flusher keeps it, and it fails the download.
    let flushed = flusher.stop();
    result?;
    flushed?;
    Ok((file, hasher))
}

/// A thread that fsyncs a file whenever nudged (nudges while it is busy coalesce).
struct Flusher {
    /// Nudges (dropped to stop it).
    nudges: Option<SyncSender<()>>,
    /// The thread; returns the first fsync error.
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Flusher {
    fn start(file: File, syncs: Arc<AtomicU64>) -> std::io::Result<Self> {
        let (nudges, wake) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("rbee-download-sync".into())
            .spawn(move || flush_loop(&file, &wake, &syncs))?;
        Ok(Self { nudges: Some(nudges), thread: Some(thread) })
    }

    /// Asks for an fsync; one already asked for and not started covers this one too.
    fn nudge(&self) {
        if let Some(nudges) = &self.nudges {
            match nudges.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
            }
        }
    }

    /// Waits for the fsync under way, if any, and returns the first error.
    fn stop(mut self) -> std::io::Result<()> {
        self.nudges = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the download's fsync thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.nudges = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn flush_loop(file: &File, wake: &Receiver<()>, syncs: &AtomicU64) -> std::io::Result<()> {
    while wake.recv().is_ok() {
        file.sync_data()?;
        syncs.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn chunk(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 31 + j) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_in_order_and_fsyncs_while_the_transfer_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.part");
        let mut sink = Sink::start(File::create(&path).unwrap(), Sha256::new());
        let len = 1 << 20;
        let chunks = (SYNC_EVERY as usize / len) + 2;
        let mut expected = Vec::new();
        for i in 0..chunks {
            let c = chunk(i, len);
            expected.extend_from_slice(&c);
            sink.write(c).await.unwrap();
        }
        // The transfer has not ended (no finish yet): the flusher already made the
        // first SYNC_EVERY bytes durable, so the last fsync has only the rest to write.
        let deadline = Instant::now() + Duration::from_secs(30);
        while sink.syncs() == 0 {
            assert!(Instant::now() < deadline, "no fsync while the file was being written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let hash = sink.finish(true).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(hash.finalize(), Sha256::digest(&expected));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_error_reaches_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.part");
        std::fs::write(&path, b"x").unwrap();
        // Opened for reading only: every write fails.
        let mut sink = Sink::start(File::open(&path).unwrap(), Sha256::new());
        let mut failed = None;
        for i in 0..(CHUNKS_IN_FLIGHT * 4) {
            if let Err(e) = sink.write(chunk(i, 4096)).await {
                failed = Some(e);
                break;
            }
        }
        let error = match failed {
            Some(e) => e,
            None => sink.finish(true).await.unwrap_err(),
        };
        // The OS's own error (EBADF: the file is read-only), not a generic one.
        assert_eq!(error.raw_os_error(), Some(rustix::io::Errno::BADF.raw_os_error()), "{error}");
    }
}
