//! Admission of `MetricsStream`s: at most `--max-streams` at once, with a small reserve
//! that only the queen this hive announces to may use, and a live count of the
//! queen's streams (the announcer re-announces when it drops to zero).
//!
//! The queen is recognised by its network address: a stream whose peer IP is one of
//! the addresses the `--queen` URL resolves to. (On one machine every local client
//! shares that address and is treated as the queen.)

use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use rbee_shared::lock::{MutexExt, RwLockExt};
use tokio::sync::watch;

use crate::HiveError;

/// Default for `--max-streams`.
pub const DEFAULT_MAX_STREAMS: usize = 64;
/// Slots kept for the announced queen (when there is one).
pub const QUEEN_RESERVE: usize = 2;

/// Shared state.
#[derive(Debug)]
struct Inner {
    /// Most streams at once.
    max: usize,
    /// Of those, the slots only the queen may use (0 without a queen).
    reserve: usize,
    /// Open streams, all peers.
    open: Mutex<usize>,
    /// Open streams from the queen.
    queen_streams: watch::Sender<usize>,
    /// The addresses the queen's URL resolves to.
    queen_addrs: RwLock<Vec<IpAddr>>,
}

/// The hive's stream table (cheap to clone).
#[derive(Debug, Clone)]
pub struct Streams(Arc<Inner>);

/// Held by an admitted stream; frees the slot when dropped.
#[derive(Debug)]
pub struct StreamGuard {
    /// The table.
    inner: Arc<Inner>,
    /// Whether the stream is the queen's.
    queen: bool,
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl Streams {
    /// At most `max` streams; `reserve` of them only for the queen when `has_queen`.
    pub fn new(max: usize, has_queen: bool) -> Self {
        let max = max.max(1);
        let reserve = if has_queen { QUEEN_RESERVE.min(max - 1) } else { 0 };
        let (queen_streams, _) = watch::channel(0);
        Self(Arc::new(Inner {
            max,
            reserve,
            open: Mutex::new(0),
            queen_streams,
            queen_addrs: RwLock::new(Vec::new()),
        }))
    }

    /// Records the addresses the queen's URL resolves to.
    pub fn set_queen_addrs(&self, addrs: impl IntoIterator<Item = IpAddr>) {
        *self.0.queen_addrs.write_unpoisoned() = addrs.into_iter().map(canonical).collect();
    }

    /// Whether `peer` is the queen this hive announces to.
    pub fn is_queen(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|p| self.0.queen_addrs.read_unpoisoned().contains(&canonical(p)))
    }

    /// Admits a stream from `peer`, or says why not.
    pub fn admit(&self, peer: Option<IpAddr>) -> Result<StreamGuard, HiveError> {
        let queen = self.is_queen(peer);
        let mut open = self.0.open.lock_unpoisoned();
        let limit = if queen { self.0.max } else { self.0.max - self.0.reserve };
        if *open >= limit {
            return Err(HiveError::TooManyStreams { limit: self.0.max, reserved: self.0.reserve });
        }
        *open += 1;
        drop(open);
        if queen {
            self.0.queen_streams.send_modify(|n| *n += 1);
        }
        Ok(StreamGuard { inner: self.0.clone(), queen })
    }

    /// Open streams now.
    pub fn open(&self) -> usize {
        *self.0.open.lock_unpoisoned()
    }

    /// The number of the queen's open streams, as it changes.
    pub fn watch_queen_streams(&self) -> watch::Receiver<usize> {
        self.0.queen_streams.subscribe()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        *self.inner.open.lock_unpoisoned() -= 1;
        if self.queen {
            self.inner.queen_streams.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUEEN: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn the_reserve_is_for_the_queen_only() {
        let s = Streams::new(4, true);
        s.set_queen_addrs([QUEEN]);
        let others: Vec<_> = (0..2).map(|_| s.admit(Some(OTHER)).unwrap()).collect();
        assert!(matches!(s.admit(Some(OTHER)), Err(HiveError::TooManyStreams { limit: 4, reserved: 2 })));
        assert!(s.admit(None).is_err());
        let queen: Vec<_> = (0..2).map(|_| s.admit(Some(QUEEN)).unwrap()).collect();
        assert!(s.admit(Some(QUEEN)).is_err(), "the limit holds for the queen too");
        assert_eq!(*s.watch_queen_streams().borrow(), 2);
        drop(queen);
        assert_eq!(*s.watch_queen_streams().borrow(), 0);
        drop(others);
        assert_eq!(s.open(), 0);
    }

    #[test]
    fn without_a_queen_every_slot_is_open() {
        let s = Streams::new(3, false);
        let _g: Vec<_> = (0..3).map(|_| s.admit(Some(OTHER)).unwrap()).collect();
        assert!(s.admit(Some(OTHER)).is_err());
    }

    #[test]
    fn mapped_addresses_match() {
        let s = Streams::new(3, true);
        s.set_queen_addrs(["::ffff:10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert!(s.is_queen(Some(QUEEN)));
        assert!(!s.is_queen(Some(OTHER)));
    }
}
