//! Request ids and renewal: what a keyed reservation keeps ([`Keyed`]), the
//! reservations that ended (released, expired, dropped) remembered for a while, and
//! `Renew`. A request id stays taken for [`ENDED_GRACE`] after its reservation ended,
//! so that a late retry of a `Place` is refused rather than placed twice, and `Renew`
//! can say whether a reservation it does not hold was released or expired.
//!
//! The memory is bounded ([`EndedBook::new`]'s capacity): past it the oldest entry is
//! forgotten early, with a WARN. Entries of keyed reservations are also kept in the
//! state store (the queen writes them before it forgets the reservation), so the
//! grace holds across restarts and failovers; the others live in memory only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use super::{Book, Reservation, ReservationState};

/// What a keyed `Place` asked for besides its model: a retry with the same request id
/// must ask the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlacedFor {
    /// VRAM on one GPU, bytes.
    pub vram_bytes: u64,
    /// RAM on the hive, bytes.
    pub ram_bytes: Option<u64>,
    /// The device kind, as policies name it (`any`, `cuda`, `cpu`).
    pub kind: String,
    /// The hive labels that had to match.
    pub labels: BTreeMap<String, String>,
    /// GPUs of the gang (1 for one device).
    pub gpus: u32,
    /// How a gang's GPUs had to be connected (`any`, `numa`, `nvlink`).
    pub topology: String,
}

/// The idempotency key a reservation was placed with, what it was placed for, and its
/// worker tag (kept so that a retried `Place` answers a usable token too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Keyed {
    /// The client's request id.
    pub request_id: String,
    /// What the request asked for.
    pub placed_for: PlacedFor,
    /// The reservation's secret worker tag (never serialised; `Debug` is redacted).
    #[serde(skip)]
    pub token: rbee_shared::gpu_process::ReservationToken,
}

/// Why a reservation cannot be renewed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotRenewed {
    /// The book never held it, or forgot it long ago.
    #[error("no reservation {0:?}: it was never made, or ended long ago")]
    Unknown(String),
    /// It ended.
    #[error("reservation {id:?} was {how} at {at_unix_ms} ms since the epoch; it cannot be renewed")]
    Ended {
        /// Its id.
        id: String,
        /// How it ended.
        how: EndedHow,
        /// When.
        at_unix_ms: u64,
    },
    /// It is settled: it no longer expires.
    #[error("reservation {0:?} is settled: it no longer expires, so there is nothing to renew")]
    Settled(String),
}

/// How long a request id stays taken after its reservation ended.
pub const ENDED_GRACE: Duration = Duration::from_secs(600);

/// How a reservation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedHow {
    /// `Release`.
    Released,
    /// Its TTL passed before it settled.
    Expired,
    /// Its hive was lost or removed.
    Dropped,
}

impl EndedHow {
    /// The word used in messages and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Dropped => "dropped",
        }
    }

    /// The word back, as [`EndedHow::as_str`] writes it.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Released, Self::Expired, Self::Dropped].into_iter().find(|h| h.as_str() == s)
    }
}

impl std::fmt::Display for EndedHow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ended reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// Its id.
    pub id: String,
    /// The request id it was placed with, if any.
    pub request_id: Option<String>,
    /// How it ended.
    pub how: EndedHow,
    /// When, ms since the Unix epoch.
    pub at_unix_ms: u64,
}

/// The ended reservations, oldest end first.
#[derive(Debug, Default, Clone)]
pub struct EndedBook {
    /// Ids in the order they ended.
    order: VecDeque<String>,
    /// By id.
    by_id: HashMap<String, Ended>,
    /// Ids by request id.
    by_request: HashMap<String, String>,
    /// The most entries kept.
    capacity: usize,
}

impl EndedBook {
    /// Empty, keeping at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), ..Self::default() }
    }

    fn insert(&mut self, e: Ended) {
        if self.by_id.contains_key(&e.id) {
            return;
        }
        while self.order.len() >= self.capacity {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(gone) = self.by_id.remove(&old)
                && let Some(k) = gone.request_id
            {
                tracing::warn!(reservation = %old, request_id = %k,
                    "too many reservations ended recently: a request id is forgotten before its grace ended");
                self.by_request.remove(&k);
            }
        }
        if let Some(k) = &e.request_id {
            self.by_request.insert(k.clone(), e.id.clone());
        }
        self.order.push_back(e.id.clone());
        self.by_id.insert(e.id.clone(), e);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// What a request id stands for in the book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState<'a> {
    /// Nothing: the id is free.
    Free,
    /// A live reservation holds it.
    Live(&'a Reservation),
    /// Its reservation ended less than [`ENDED_GRACE`] ago.
    Ended(&'a Ended),
}

impl Book {
    /// Remembers that `r` ended; answers the entry when `r` was keyed (for the store).
    pub fn remember_ended(&mut self, r: &Reservation, how: EndedHow, at_unix_ms: u64) -> Option<Ended> {
        let e = Ended {
            id: r.id.clone(),
            request_id: r.keyed.as_ref().map(|k| k.request_id.clone()),
            how,
            at_unix_ms,
        };
        self.ended.insert(e.clone());
        e.request_id.is_some().then_some(e)
    }

    /// Puts back ended entries kept across a restart (a live reservation with the same id
    /// wins: it was written before its end was, so its end was never made).
    pub fn restore_ended(&mut self, mut kept: Vec<Ended>) {
        kept.sort_by(|a, b| (a.at_unix_ms, &a.id).cmp(&(b.at_unix_ms, &b.id)));
        for e in kept {
            if !self.reservations.contains_key(&e.id) {
                self.ended.insert(e);
            }
        }
    }

    /// Forgets ended entries older than [`ENDED_GRACE`]; answers the ids of the keyed
    /// ones (to forget in the store).
    pub fn prune_ended(&mut self, now_ms: u64) -> Vec<String> {
        let grace = ENDED_GRACE.as_millis() as u64;
        let mut keyed = Vec::new();
        while let Some(id) = self.ended.order.front() {
            let Some(e) = self.ended.by_id.get(id) else {
                self.ended.order.pop_front();
                continue;
            };
            if now_ms.saturating_sub(e.at_unix_ms) < grace {
                break;
            }
            let id = self.ended.order.pop_front().unwrap_or_default();
            if let Some(e) = self.ended.by_id.remove(&id)
                && let Some(k) = e.request_id
            {
                self.ended.by_request.remove(&k);
                keyed.push(id);
            }
        }
        keyed
    }

    /// How a reservation the book does not hold ended, if it remembers.
    pub fn ended(&self, id: &str) -> Option<&Ended> {
        self.ended.by_id.get(id)
    }

    /// Every ended entry remembered, oldest end first.
    pub fn ended_entries(&self) -> impl Iterator<Item = &Ended> {
        self.ended.order.iter().filter_map(|id| self.ended.by_id.get(id))
    }

    /// What `request_id` stands for.
    pub fn key_state(&self, request_id: &str) -> KeyState<'_> {
        if let Some(r) = self.by_request.get(request_id).and_then(|id| self.reservations.get(id)) {
            return KeyState::Live(r);
        }
        match self.ended.by_request.get(request_id).and_then(|id| self.ended.by_id.get(id)) {
            Some(e) => KeyState::Ended(e),
            None => KeyState::Free,
        }
    }

    /// The reservation id that holds `request_id`, live or recently ended.
    pub(super) fn key_holder(&self, request_id: &str) -> Option<&str> {
        match self.key_state(request_id) {
            KeyState::Free => None,
            KeyState::Live(r) => Some(&r.id),
            KeyState::Ended(e) => Some(&e.id),
        }
    }

    /// Checks that `id` is an active reservation that may be renewed at `now_ms`; answers
    /// it. One past its expiry that upkeep has not dropped yet is expired.
    pub fn renewable(&self, id: &str, now_ms: u64) -> Result<&Reservation, NotRenewed> {
        let Some(r) = self.reservations.get(id) else {
            return Err(match self.ended(id) {
                Some(e) => NotRenewed::Ended { id: id.to_owned(), how: e.how, at_unix_ms: e.at_unix_ms },
                None => NotRenewed::Unknown(id.to_owned()),
            });
        };
        match r.state {
            ReservationState::Active if r.expires_at_unix_ms <= now_ms => Err(NotRenewed::Ended {
                id: id.to_owned(),
                how: EndedHow::Expired,
                at_unix_ms: r.expires_at_unix_ms,
            }),
            ReservationState::Active => Ok(r),
            _ => Err(NotRenewed::Settled(id.to_owned())),
        }
    }

    /// Sets an active reservation's expiry ([`Book::renewable`] first); answers it.
    pub fn renew(
        &mut self,
        id: &str,
        expires_at_unix_ms: u64,
        now_ms: u64,
    ) -> Result<Reservation, NotRenewed> {
        self.renewable(id, now_ms)?;
        let r = self.reservations.get_mut(id).ok_or_else(|| NotRenewed::Unknown(id.to_owned()))?;
        r.expires_at_unix_ms = expires_at_unix_ms;
        Ok(r.clone())
    }
}
