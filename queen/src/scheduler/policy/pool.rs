//! The threads that run policy calls: a fixed set of workers (one per core by default)
//! fed by a bounded queue, so that a call neither starts a thread nor competes with
//! more neighbours than there are cores.
//!
//! The caller waits for its call to start (at most [`MAX_START_WAIT`]) and then to end
//! (at most its patience), and gives up on either without blocking on the worker. A
//! call given up before it starts is skipped; one given up while running finishes on
//! its worker, whose result is dropped. No worker holds a lock of the scheduler or a
//! Tokio thread.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rbee_shared::lock::MutexExt;

/// Longest a call waits for a free worker before it is refused.
pub const MAX_START_WAIT: Duration = Duration::from_secs(2);

/// Calls that may wait for a worker, per worker.
const QUEUE_PER_WORKER: usize = 256;

/// Stack of a worker (scripts may nest calls 32 deep).
const STACK_BYTES: usize = 4 << 20;

/// Queued, not started.
const QUEUED: u8 = 0;
/// Running on a worker.
const RUNNING: u8 = 1;
/// Ended.
const FINISHED: u8 = 2;
/// The caller gave up while it ran.
const ABANDONED: u8 = 3;
/// The caller gave up before it started.
const CANCELLED: u8 = 4;

/// A job for a worker.
type Job = Box<dyn FnOnce() + Send>;

/// What a worker tells the caller.
enum Progress<T> {
    /// The call started now.
    Started,
    /// The call ended with this.
    Done(T),
}

/// Why a call has no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// No worker was free for [`MAX_START_WAIT`] (or the queue was full).
    NotStarted {
        /// How long the caller waited.
        waited: Duration,
    },
    /// It ran past the caller's patience; it finishes on its worker.
    Abandoned {
        /// How long it had run.
        ran: Duration,
    },
    /// Its worker died (a panic).
    Died,
}

/// The workers.
pub struct Pool {
    /// The queue (closed when the pool is dropped: the workers then end).
    jobs: mpsc::SyncSender<Job>,
    /// Workers in all.
    workers: usize,
}

impl Pool {
    /// `workers` threads named `name`.
    pub fn new(workers: usize, name: &str) -> Self {
        let (jobs, queue) = mpsc::sync_channel::<Job>(workers * QUEUE_PER_WORKER);
        let queue = Arc::new(Mutex::new(queue));
        let mut started = 0;
        for _ in 0..workers {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(name.to_owned())
                .stack_size(STACK_BYTES)
                .spawn(move || work(&queue));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::error!(error = %e, "cannot start a policy worker"),
            }
        }
        Self { jobs, workers: started }
    }

    /// Workers in all.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Runs `f` on a worker: waits for it to start, then at most `patience` for it to
    /// end.
    pub fn run<T: Send + 'static>(
        &self,
        patience: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Missed> {
        let queued = Instant::now();
        let (tx, rx) = mpsc::sync_channel(2);
        let state = Arc::new(AtomicU8::new(QUEUED));
        let job_state = state.clone();
        let job: Job = Box::new(move || {
            if job_state.compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_err() {
                return; // cancelled while queued
            }
            let _ = tx.send(Progress::Started);
            let result = f();
            if job_state.swap(FINISHED, Ordering::AcqRel) == ABANDONED {
                tracing::info!("an abandoned policy call ended");
            }
            let _ = tx.send(Progress::Done(result));
        });
        if self.jobs.try_send(job).is_err() {
            return Err(Missed::NotStarted { waited: queued.elapsed() });
        }
        let started = match rx.recv_timeout(MAX_START_WAIT) {
            Ok(Progress::Started) => Instant::now(),
            Ok(Progress::Done(result)) => return Ok(result),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Missed::Died),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if state.compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    return Err(Missed::NotStarted { waited: queued.elapsed() });
                }
                Instant::now() // it started just now
            }
        };
        loop {
            match rx.recv_timeout(patience.saturating_sub(started.elapsed())) {
                Ok(Progress::Done(result)) => return Ok(result),
                Ok(Progress::Started) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Missed::Died),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if state.compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok()
                    {
                        return Err(Missed::Abandoned { ran: started.elapsed() });
                    }
                    // It ended just now.
                    return match rx.recv() {
                        Ok(Progress::Done(result)) => Ok(result),
                        _ => Err(Missed::Died),
                    };
                }
            }
        }
    }
}

/// A worker: runs jobs until the pool is dropped. A job that panics kills only itself.
fn work(queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = queue.lock_unpoisoned().recv();
        match job {
            Ok(job) => {
                if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
                    tracing::error!("a policy call panicked");
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_runs_calls_and_a_caller_gives_up_on_a_slow_one() {
        let pool = Pool::new(1, "test");
        assert_eq!(pool.run(Duration::from_secs(5), || 7), Ok(7));
        let t = Instant::now();
        let slow = pool.run(Duration::from_millis(50), || std::thread::sleep(Duration::from_millis(2500)));
        assert!(matches!(slow, Err(Missed::Abandoned { .. })), "{slow:?}");
        assert!(t.elapsed() < Duration::from_millis(1000));
        // The only worker is still busy: the next call is not started in time.
        assert!(matches!(pool.run(Duration::from_secs(5), || 1), Err(Missed::NotStarted { .. })));
        // A panicking call kills neither the worker nor the pool.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.run(Duration::from_secs(5), || 2) != Ok(2) {
            assert!(Instant::now() < deadline, "the worker never came back");
        }
        assert_eq!(pool.run(Duration::from_secs(5), || -> u8 { panic!("boom") }), Err(Missed::Died));
        assert_eq!(pool.run(Duration::from_secs(5), || 3), Ok(3));
    }
}
