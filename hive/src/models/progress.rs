//! One download's progress: bytes, a smoothed speed, the ETA and the phase, updated by
//! the download task and read (as a [`DownloadProgress`] record) by every sample.
//!
//! The record is truthful: while the total is known and the phase is not `Done`,
//! `bytes_done` stays below the total, so no reader ever sees 100% before the model is
//! ready.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_shared::model::MAX_DOWNLOAD_SOURCES;
use rbee_shared::{DownloadPhase, DownloadProgress, SourceBytes};
use tokio::sync::watch;

/// How often the speed estimate takes a new measurement.
const SPEED_TICK: Duration = Duration::from_millis(250);
/// Weight of the newest measurement in the smoothed speed.
const SPEED_ALPHA: f64 = 0.3;

/// The live state of one download.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The model.
    model_id: String,
    /// Its phase.
    phase: DownloadPhase,
    /// Bytes on disk over all files.
    done: u64,
    /// The total, when known.
    total: Option<u64>,
    /// Smoothed bytes per second.
    speed: f64,
    /// When and at how many bytes the speed was last measured.
    tick: Option<(Instant, u64)>,
    /// Why it failed.
    error: Option<String>,
    /// Attempts for the current file.
    attempt: u32,
    /// When the record last changed.
    updated_at_unix_ms: u64,
    /// Bytes kept per source, in first-use order (at most [`MAX_DOWNLOAD_SOURCES`]).
    sources: Vec<SourceBytes>,
    /// Bytes done, sent on every change: wakes the peer uploads that serve this
    /// download's files as they grow (`serve_upload.rs`).
    wake: Arc<watch::Sender<u64>>,
}

impl Progress {
    /// A download of `model_id` that is resolving.
    pub fn new(model_id: &str) -> Self {
        Self {
            model_id: model_id.to_owned(),
            phase: DownloadPhase::Resolving,
            done: 0,
            total: None,
            speed: 0.0,
            tick: None,
            error: None,
            attempt: 0,
            updated_at_unix_ms: rbee_shared::time::now_unix_ms(),
            sources: Vec::new(),
            wake: Arc::new(watch::channel(0).0),
        }
    }

    fn touch(&mut self) {
        self.updated_at_unix_ms = rbee_shared::time::now_unix_ms();
        self.wake.send_replace(self.done);
    }

    /// Wakes on every change of this download (bytes, phase).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Moves to `phase`.
    pub fn set_phase(&mut self, phase: DownloadPhase) {
        self.phase = phase;
        if phase.is_final() {
            self.speed = 0.0;
        }
        self.touch();
    }

    /// The current phase.
    pub fn phase(&self) -> DownloadPhase {
        self.phase
    }

    /// Sets the total (known once resolved).
    pub fn set_total(&mut self, total: Option<u64>) {
        self.total = total;
        self.touch();
    }

    /// Takes `total` as the total when none is known yet: the sum the server's
    /// Content-Length (or Content-Range) gives once every file's size is known. A
    /// declared total stays (a server answering another size fails the download).
    pub fn learn_total(&mut self, total: u64) {
        if self.total.is_none() {
            self.set_total(Some(total));
        }
    }

    /// Sets the bytes on disk (after a resume or a restart from zero).
    pub fn set_done(&mut self, done: u64) {
        self.done = done;
        self.tick = None;
        self.touch();
    }

    /// Counts `n` more bytes and updates the speed at most every 250 ms.
    pub fn add(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        self.wake.send_replace(self.done);
        let now = Instant::now();
        match self.tick {
            None => self.tick = Some((now, self.done)),
            Some((at, bytes)) => {
                let dt = now.duration_since(at);
                if dt >= SPEED_TICK {
                    let instant = self.done.saturating_sub(bytes) as f64 / dt.as_secs_f64();
                    self.speed = if self.speed == 0.0 {
                        instant
                    } else {
                        SPEED_ALPHA * instant + (1.0 - SPEED_ALPHA) * self.speed
                    };
                    self.tick = Some((now, self.done));
                    self.touch();
                }
            }
        }
    }

    /// Counts `n` more bytes that came from `source` ("origin" or a peer's hive id). A
    /// source beyond [`MAX_DOWNLOAD_SOURCES`] is not named (a fetch names fewer).
    pub fn add_from(&mut self, source: &str, n: u64) {
        self.add(n);
        let room = self.sources.len() < MAX_DOWNLOAD_SOURCES;
        match self.sources.iter_mut().find(|s| s.source == source) {
            Some(s) => s.bytes = s.bytes.saturating_add(n),
            None if room => self.sources.push(SourceBytes { source: source.to_owned(), bytes: n }),
            None => {}
        }
    }

    /// Takes `n` bytes of `source` back: they were discarded (a file that failed its
    /// sha256 is started over), so they are neither done nor kept from that source.
    pub fn discard(&mut self, source: &str, n: u64) {
        self.done = self.done.saturating_sub(n);
        if let Some(s) = self.sources.iter_mut().find(|s| s.source == source) {
            s.bytes = s.bytes.saturating_sub(n);
        }
        self.sources.retain(|s| s.bytes > 0);
        self.tick = None;
        self.touch();
    }

    /// Counts a new connection attempt.
    pub fn set_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
        self.touch();
    }

    /// Ends in failure.
    pub fn fail(&mut self, error: String) {
        self.error = Some(error);
        self.set_phase(DownloadPhase::Failed);
    }

    /// The record a sample carries.
    pub fn record(&self) -> DownloadProgress {
        let done = match (self.total, self.phase) {
            (Some(total), phase) if phase != DownloadPhase::Done => self.done.min(total.saturating_sub(1)),
            (Some(total), _) => total,
            (None, _) => self.done,
        };
        let eta_ms = match (self.total, self.phase) {
            (Some(total), DownloadPhase::Downloading) if self.speed > 0.0 => {
                Some((total.saturating_sub(self.done) as f64 / self.speed * 1000.0) as u64)
            }
            _ => None,
        };
        DownloadProgress {
            model_id: self.model_id.clone(),
            phase: self.phase,
            bytes_done: done,
            bytes_total: self.total,
            speed_bytes_per_s: self.speed,
            eta_ms,
            error: self.error.clone(),
            attempt: self.attempt,
            updated_at_unix_ms: self.updated_at_unix_ms,
            sources: self.sources.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_the_total_before_done() {
        let mut p = Progress::new("m");
        p.set_total(Some(100));
        p.set_phase(DownloadPhase::Downloading);
        p.add(100);
        assert_eq!(p.record().bytes_done, 99);
        p.set_phase(DownloadPhase::Verifying);
        assert_eq!(p.record().bytes_done, 99);
        p.set_phase(DownloadPhase::Done);
        assert_eq!(p.record().bytes_done, 100);
    }

    #[test]
    fn a_learned_total_gives_a_percentage_and_an_eta_but_never_overrides_a_declared_one() {
        let mut p = Progress::new("m");
        p.set_phase(DownloadPhase::Downloading);
        p.add(1);
        std::thread::sleep(SPEED_TICK);
        p.add(1_000);
        assert_eq!(p.record().bytes_total, None);
        assert_eq!(p.record().eta_ms, None);
        p.learn_total(10_000_000);
        let r = p.record();
        assert_eq!(r.bytes_total, Some(10_000_000));
        assert!(r.eta_ms.is_some(), "{r:?}");
        p.learn_total(5);
        assert_eq!(p.record().bytes_total, Some(10_000_000));
    }

    #[test]
    fn bytes_are_counted_per_source_and_discarded_bytes_are_not_kept() {
        let mut p = Progress::new("m");
        p.add_from("hive-a", 10);
        p.add_from(rbee_shared::model::ORIGIN_SOURCE, 5);
        p.add_from("hive-a", 1);
        let shown =
            |p: &Progress| p.record().sources.iter().map(|s| (s.source.clone(), s.bytes)).collect::<Vec<_>>();
        assert_eq!(shown(&p), [("hive-a".to_owned(), 11), ("origin".to_owned(), 5)]);
        p.discard("hive-a", 11);
        assert_eq!(shown(&p), [("origin".to_owned(), 5)]);
        assert_eq!(p.record().bytes_done, 5);
        for i in 0..40 {
            p.add_from(&format!("h{i}"), 1);
        }
        assert_eq!(p.record().sources.len(), MAX_DOWNLOAD_SOURCES);
    }

    #[test]
    fn speed_and_eta_follow_the_bytes() {
        let mut p = Progress::new("m");
        p.set_total(Some(10_000_000));
        p.set_phase(DownloadPhase::Downloading);
        p.add(1);
        std::thread::sleep(SPEED_TICK);
        p.add(1_000_000);
        let r = p.record();
        assert!(r.speed_bytes_per_s > 0.0, "{r:?}");
        assert!(r.eta_ms.is_some(), "{r:?}");
    }
}
