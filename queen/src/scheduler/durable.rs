//! The books kept durably: a reservation is written to the state store before `Place`
//! answers OK, settlements and removals follow, and a restart puts them all back with
//! their absolute expiry. Records are converted here, at the boundary: the store knows
//! nothing of the scheduler.
//!
//! Ordering: a reservation is made in the book (under its lock), then written (outside
//! it, so that a slow disk never stalls the policies' views), then answered. A crash in
//! between loses only a reservation nobody was told about. Every failure to write errs
//! on the side of counting more: a release whose removal was not written comes back
//! after a restart, never the other way round.
//!
//! A keyed reservation (placed with a request id) keeps its key, its request and its
//! worker tag in its record, so that a retry after a restart or on a new leader answers
//! the same reservation and token. When it ends, its end is written (`ended`) before
//! its record is forgotten, and forgotten after [`super::book::ENDED_GRACE`].

use std::sync::Arc;

use super::book::{Ended, EndedHow, Keyed, PlacedFor};
use super::book::{Reservation, ReservationState};
use super::policy::DEFAULT_POLICY;
use super::{HiveSource, Scheduler, SchedulerSettings, view};
use crate::QueenError;
use crate::store::{EndedRecord, GangDeviceRecord, KeyedRecord, PolicyRecord, ReservationRecord, Store};
use rbee_shared::gpu_process::ReservationToken;

/// A reservation as the store keeps it; `starts` is where it begins on each of its
/// devices (see [`super::book::Book::starts_of`]; the first for `baseline_bytes`).
pub(super) fn to_record(r: &Reservation, starts: &[u64]) -> ReservationRecord {
    let start = starts.first().copied().unwrap_or(0);
    ReservationRecord {
        id: r.id.clone(),
        hive_id: r.hive_id.clone(),
        address: r.address.clone(),
        device_id: r.device_id.clone(),
        model: r.model.clone(),
        bytes: r.bytes,
        settled: r.state == ReservationState::Settled,
        created_at_unix_ms: r.created_at_unix_ms,
        expires_at_unix_ms: r.expires_at_unix_ms,
        baseline_bytes: start,
        keyed: r.keyed.as_ref().map(|k| KeyedRecord {
            request_id: k.request_id.clone(),
            token: k.token.secret().to_owned(),
            vram_bytes: k.placed_for.vram_bytes,
            ram_bytes: k.placed_for.ram_bytes,
            kind: k.placed_for.kind.clone(),
            labels: k.placed_for.labels.clone(),
            gpus: k.placed_for.gpus,
            topology: k.placed_for.topology.clone(),
        }),
        gang: r
            .gang
            .iter()
            .enumerate()
            .map(|(i, d)| GangDeviceRecord {
                device_id: d.clone(),
                baseline_bytes: starts.get(i).copied().unwrap_or(start),
            })
            .collect(),
    }
}

/// An ended keyed reservation as the store keeps it (`None` for one without a key).
pub(super) fn to_ended_record(e: &Ended) -> Option<EndedRecord> {
    Some(EndedRecord {
        id: e.id.clone(),
        request_id: e.request_id.clone()?,
        how: e.how.as_str().to_owned(),
        ended_at_unix_ms: e.at_unix_ms,
    })
}

/// An ended keyed reservation kept across a restart (an unknown `how` reads as
/// released: the key stays taken either way).
pub(super) fn from_ended_record(e: EndedRecord) -> Ended {
    Ended {
        id: e.id,
        request_id: Some(e.request_id),
        how: EndedHow::parse(&e.how).unwrap_or(EndedHow::Released),
        at_unix_ms: e.ended_at_unix_ms,
    }
}

/// A kept reservation and its start on each device, for
/// [`super::book::Book::restore_gangs`].
pub(super) fn from_record(r: ReservationRecord) -> (Reservation, Vec<u64>) {
    let state = if r.settled { ReservationState::Settled } else { ReservationState::Active };
    let start = if r.gang.is_empty() {
        vec![r.baseline_bytes]
    } else {
        r.gang.iter().map(|g| g.baseline_bytes).collect()
    };
    let gang = r.gang.into_iter().map(|g| g.device_id).collect();
    (
        Reservation {
            id: r.id,
            hive_id: r.hive_id,
            address: r.address,
            device_id: r.device_id,
            model: r.model,
            bytes: r.bytes,
            state,
            created_at_unix_ms: r.created_at_unix_ms,
            expires_at_unix_ms: r.expires_at_unix_ms,
            keyed: r.keyed.map(|k| Keyed {
                request_id: k.request_id,
                token: ReservationToken::from_secret(k.token),
                placed_for: PlacedFor {
                    vram_bytes: k.vram_bytes,
                    ram_bytes: k.ram_bytes,
                    kind: k.kind,
                    labels: k.labels,
                    gpus: k.gpus,
                    topology: k.topology,
                },
            }),
            gang,
        },
        start,
    )
}

/// Why a kept reservation cannot be sound (the queen writes only sound ones: such a
/// record was corrupted on disk or in etcd), or `None`.
pub(super) fn unsound(r: &ReservationRecord) -> Option<String> {
    let printable =
        |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic());
    if !printable(&r.id, 64) {
        return Some(format!("id {:?} is not 1 to 64 printable bytes", r.id));
    }
    if crate::fleet::address::normalize_address(&r.address).ok().as_deref() != Some(r.address.as_str()) {
        return Some(format!("address {:?} is not a hive address as the queen writes them", r.address));
    }
    if !printable(&r.device_id, 256) {
        return Some(format!("device {:?} is not 1 to 256 printable bytes", r.device_id));
    }
    if let Some(g) = r.gang.iter().find(|g| !printable(&g.device_id, 256)) {
        return Some(format!("gang device {:?} is not 1 to 256 printable bytes", g.device_id));
    }
    if !r.gang.is_empty() && (r.gang.len() > 64 || r.gang[0].device_id != r.device_id) {
        return Some("its gang is longer than 64 GPUs, or does not start with its device".into());
    }
    if r.bytes == 0 {
        return Some("it reserves 0 bytes".into());
    }
    if r.expires_at_unix_ms < r.created_at_unix_ms {
        return Some("it expires before it was made".into());
    }
    if let Some(k) = &r.keyed {
        if let Err(why) = super::request::check_request_id(&k.request_id) {
            return Some(why.to_string());
        }
        if rbee_shared::gpu_process::reservation_id_of_token(k.token.as_bytes()) != r.id {
            return Some("its worker tag does not stand for its id".into());
        }
    }
    None
}

/// The SHA-256 of a policy text, hex.
fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Scheduler {
    /// A scheduler whose books are kept in `store`, starting from the reservations it
    /// kept. Expired ones are dropped, with an event, at the first upkeep.
    pub fn durable(
        fleet: Arc<dyn HiveSource>,
        settings: SchedulerSettings,
        store: Arc<dyn Store>,
        kept: Vec<ReservationRecord>,
    ) -> Result<Arc<Self>, QueenError> {
        let restored = kept.len();
        // A record that is not sound is never dropped quietly: the start stops, naming it.
        if let Some((r, why)) = kept.iter().find_map(|r| unsound(r).map(|why| (r, why))) {
            return Err(QueenError::UnsoundRecord {
                store: store.describe(),
                key: r.id.clone(),
                reason: why,
            });
        }
        let scheduler = Self::build(fleet, settings, Some(store))?;
        view::write(&scheduler.book).restore_gangs(kept.into_iter().map(from_record).collect());
        if restored > 0 {
            tracing::info!(reservations = restored, "reservations restored from the state store");
        }
        scheduler.record_policy();
        Ok(scheduler)
    }

    /// Replaces the whole book with the reservations a shared store holds (a follower
    /// mirroring the leader, or a queen that was just elected).
    pub fn replace_reservations(&self, kept: Vec<ReservationRecord>) -> Result<(), QueenError> {
        // Books with a record that is not sound are not taken: nothing replaces the
        // ones held, and the caller (a queen about to lead, or mirroring) says so.
        if let Some((r, why)) = kept.iter().find_map(|r| unsound(r).map(|why| (r, why))) {
            let store = self.store.as_ref().map_or_else(|| "in memory".to_owned(), |s| s.describe());
            return Err(QueenError::UnsoundRecord { store, key: r.id.clone(), reason: why });
        }
        let mut book = view::write(&self.book);
        *book = super::book::Book::new(self.settings.reservations);
        book.restore_gangs(kept.into_iter().map(from_record).collect());
        Ok(())
    }

    /// True when this queen may change the books (always, unless a shared store has
    /// another queen leading).
    pub fn writable(&self) -> bool {
        self.store.as_ref().is_none_or(|s| s.writable())
    }

    /// Writes a new reservation durably (`total`: the device's capacity, which a shared
    /// store re-checks); on failure takes it back out of the book, so that nothing
    /// unanswered stays promised.
    pub(super) fn persist_placed(
        &self,
        r: &Reservation,
        starts: &[u64],
        total: u64,
    ) -> Result<(), QueenError> {
        let Some(store) = &self.store else { return Ok(()) };
        if let Err(e) = store.commit_placed(&to_record(r, starts), total) {
            view::write(&self.book).release(&r.id);
            tracing::error!(error = %e, reservation = %r.id, "a reservation could not be made durable; not placed");
            return Err(e.into());
        }
        Ok(())
    }

    /// Releases a reservation on a blocking thread (the removal is fsync'd before it is
    /// answered).
    pub async fn release_durably(self: &Arc<Self>, id: String) -> Result<Reservation, QueenError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.release(&id))
            .await
            .map_err(|e| QueenError::Internal(format!("the release thread failed: {e}")))?
    }

    /// Puts back the keyed reservations that ended within the grace (at start-up, and
    /// on a queen that mirrors or takes over a shared store).
    pub fn restore_ended(&self, kept: Vec<EndedRecord>) {
        view::write(&self.book).restore_ended(kept.into_iter().map(from_ended_record).collect());
    }

    /// Writes settlements and removals (upkeep, release); `ended`: the ends of keyed
    /// reservations among the removed, written first.
    pub(super) fn persist_changes(
        &self,
        settled: &[Reservation],
        removed: &[&str],
        ended: &[Ended],
    ) -> Result<(), QueenError> {
        let Some(store) = &self.store else { return Ok(()) };
        let ended: Vec<EndedRecord> = ended.iter().filter_map(to_ended_record).collect();
        if !ended.is_empty() {
            store.keep_ended(&ended)?;
        }
        if !settled.is_empty() {
            let records: Vec<ReservationRecord> = settled.iter().map(|r| to_record(r, &[])).collect();
            store.update_reservations(&records)?;
        }
        if !removed.is_empty() {
            store.forget_reservations(removed)?;
        }
        Ok(())
    }

    /// Keeps the fact of the policy in use (a fact, not a promise: a failure is logged).
    /// Only a queen that may write keeps it. Blocks: call from a blocking thread.
    pub fn record_policy(&self) {
        let Some(store) = self.store.as_ref().filter(|s| s.writable()) else { return };
        let loaded = self.current.read().unwrap_or_else(|p| p.into_inner());
        let record = PolicyRecord {
            source: loaded.policy.source.clone(),
            accepted_at_unix_ms: loaded.at_ms,
            sha256: sha256_hex(loaded.text.as_deref().unwrap_or(DEFAULT_POLICY)),
        };
        drop(loaded);
        if let Err(e) = store.keep_policy(&record) {
            tracing::warn!(error = %e, "cannot keep the fact of the accepted policy");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips() {
        let r = Reservation {
            id: "r".into(),
            hive_id: "h".into(),
            address: "http://a".into(),
            device_id: "GPU-0".into(),
            model: "m".into(),
            bytes: 5,
            state: ReservationState::Settled,
            created_at_unix_ms: 1,
            expires_at_unix_ms: 2,
            keyed: None,
            gang: Vec::new(),
        };
        assert_eq!(from_record(to_record(&r, &[7])), (r.clone(), vec![7]));
        let token = ReservationToken::generate();
        let keyed = Reservation {
            id: token.reservation_id(),
            address: "http://127.0.0.1:7835".into(),
            keyed: Some(Keyed {
                request_id: "job-1".into(),
                token,
                placed_for: PlacedFor {
                    vram_bytes: 5,
                    ram_bytes: Some(3),
                    kind: "cuda".into(),
                    labels: [("zone".to_owned(), "eu".to_owned())].into(),
                    gpus: 1,
                    topology: "any".into(),
                },
            }),
            ..r.clone()
        };
        let record = to_record(&keyed, &[7]);
        assert_eq!(unsound(&record), None);
        assert_eq!(from_record(record), (keyed.clone(), vec![7]));
        let keyed_gang = Reservation { gang: vec!["GPU-0".into(), "GPU-1".into()], ..keyed };
        the_reservation_its_record_and_its_wire_message_hold_the_same_fields(&keyed_gang);
        let gang = Reservation { gang: vec!["GPU-0".into(), "GPU-1".into()], ..r };
        let mut record = to_record(&gang, &[7, 9]);
        assert_eq!(record.devices(), ["GPU-0", "GPU-1"]);
        let sound = ReservationRecord {
            address: crate::fleet::address::normalize_address("http://a:7835").unwrap(),
            ..record.clone()
        };
        assert_eq!(unsound(&sound), None);
        let mut bad = sound.clone();
        bad.gang[1].device_id = " ".into();
        assert!(unsound(&bad).unwrap().contains("gang device"));
        bad.gang[1].device_id = "GPU-1".into();
        bad.gang[0].device_id = "GPU-9".into();
        assert!(unsound(&bad).unwrap().contains("does not start with its device"));
        record.bytes = 5;
        assert_eq!(from_record(record), (gang, vec![7, 9]));
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    /// One reservation type: the domain reservation, its record and its wire message
    /// hold the same fields, so that one added to the domain type and not carried by the
    /// conversions at the edges fails here. The record says `settled` for the state and
    /// keeps where the reservation starts (`baseline_bytes`) for settlement; the wire
    /// leaves out the key (with the same request it answers the token: the client's to
    /// keep, like the token).
    fn the_reservation_its_record_and_its_wire_message_hold_the_same_fields(r: &Reservation) {
        use std::collections::BTreeSet;
        let keys = |v: serde_json::Value| -> BTreeSet<String> {
            let snake = |k: &str| {
                k.chars()
                    .flat_map(|c| {
                        if c.is_ascii_uppercase() { vec!['_', c.to_ascii_lowercase()] } else { vec![c] }
                    })
                    .collect::<String>()
            };
            v.as_object().expect("an object").keys().map(|k| snake(k)).collect()
        };
        let set = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<BTreeSet<String>>();
        let domain = keys(serde_json::to_value(r).unwrap());
        let record = keys(serde_json::to_value(to_record(r, &[7])).unwrap());
        let wire = keys(crate::api::convert::reservation_wire_json(r));
        let record_as_domain: BTreeSet<String> =
            record.difference(&set(&["settled", "baseline_bytes"])).cloned().chain(set(&["state"])).collect();
        assert_eq!(record_as_domain, domain, "the record's fields");
        let wire_as_domain: BTreeSet<String> = wire
            .iter()
            .map(|k| if k == "gang_device_ids" { "gang".to_owned() } else { k.clone() })
            .chain(set(&["keyed"]))
            .collect();
        assert_eq!(wire_as_domain, domain, "the wire message's fields");
    }
}
