//! The hive's own memory: the code only its start ran leaves its RSS (issue 24).
//!
//! A process's code stays mapped, and counted in its RSS, once run; the kernel maps
//! whole 64 KiB blocks around each page it runs (fault-around), and start-up code
//! (argument parsing, TLS and descriptor set-up, the first scan, a client's first
//! connection and reflection) is scattered over most of the binary. `hive serve`
//! releases those mappings twice (`rbee_pagecache::release_own_code`): once it is
//! serving, and once the first stream has sent [`SETTLED_AFTER_MESSAGES`] messages (the
//! connection, the reflection a client such as grpcurl asks for, the first snapshot
//! are done). What runs after maps its pages back from the page cache (minor faults).

use std::sync::atomic::{AtomicBool, Ordering};

/// Messages the first stream sends (snapshot and samples) before the second release.
pub const SETTLED_AFTER_MESSAGES: u64 = 4;

/// Whether the second release is still to come (set by [`release_startup_code`]).
static AFTER_FIRST_STREAM: AtomicBool = AtomicBool::new(false);

/// Releases the code start-up ran, and arms the release after the first stream.
pub fn release_startup_code() {
    release("serving");
    AFTER_FIRST_STREAM.store(true, Ordering::Relaxed);
}

/// A stream has sent its `seq`-th message: the first stream to reach
/// [`SETTLED_AFTER_MESSAGES`] releases again, once per process (only where
/// [`release_startup_code`] ran).
pub fn stream_sent(seq: u64) {
    if seq == SETTLED_AFTER_MESSAGES && AFTER_FIRST_STREAM.swap(false, Ordering::Relaxed) {
        release("first stream settled");
    }
}

fn release(when: &'static str) {
    match rbee_pagecache::release_own_code() {
        Ok(r) => {
            tracing::debug!(when, mappings = r.mappings, bytes = r.resident_bytes, "released start-up code")
        }
        Err(e) => tracing::debug!(when, error = %e, "cannot release start-up code; RSS keeps it"),
    }
}
