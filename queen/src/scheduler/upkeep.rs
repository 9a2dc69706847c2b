//! Upkeep of the books: settle reservations the samples now show, expire unsettled ones
//! past their TTL, and drop those on hives removed or lost past the grace.
//!
//! Upkeep runs on its own task and takes only the book's lock, which no policy holds:
//! whatever a policy does (and however long a policy edit takes to test-run), TTLs and
//! settlement keep their time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rbee_shared::lock::MutexExt;
use tokio_util::sync::CancellationToken;

use super::Scheduler;
use super::SchedulerEvent;
use super::book::EndedHow;
use super::view;
use crate::fleet::ConnState;

/// Reservations whose hive is not in the fleet. A hive removed at run time (it was in the
/// fleet during this run) takes its reservations at once; one that never was (left out
/// of the configuration at a restart, or a record whose address matches no hive) keeps
/// them through the lost grace, counted, with a WARN when first seen and when dropped.
#[derive(Debug, Default)]
pub(super) struct Missing {
    /// Addresses seen in the fleet during this run.
    seen: HashSet<String>,
    /// Addresses never seen that hold reservations: since when (ms since the epoch).
    since: HashMap<String, u64>,
    /// Reservations kept on such hives at the last upkeep.
    pub(super) kept: u64,
}

impl Scheduler {
    /// Settles, expires and drops reservations once, and tells watchers what was dropped.
    /// A follower of a shared store does none: its books mirror the leader's.
    pub fn upkeep_once(&self) {
        if !self.writable() {
            return;
        }
        let now = rbee_shared::time::now_unix_ms();
        let hives = self.fleet.hives();
        let mut dropped = Vec::new();
        let mut settled = Vec::new();
        {
            let mut book = view::write(&self.book);
            for (address, device) in book.active_devices() {
                let Some(h) = hives.iter().find(|h| h.address == address) else { continue };
                let Some(s) = h.latest.as_ref() else { continue };
                let (observed, processes) = if device == view::CPU_DEVICE {
                    (Some(s.ram_used_bytes), None)
                } else {
                    let gpu = s.gpus.iter().find(|g| g.id == device);
                    (gpu.and_then(|g| g.vram_used_bytes), gpu.and_then(|g| g.processes.as_ref()))
                };
                if let Some(observed) = observed {
                    settled.extend(book.settle(&address, &device, observed, processes));
                }
            }
            dropped.extend(
                book.expire(now).into_iter().map(|r| (r, "expired before the model showed up".to_owned())),
            );
            let grace = self.settings.lost_grace.as_millis() as u64;
            let mut missing = self.missing.lock_unpoisoned();
            missing.seen.extend(hives.iter().map(|h| h.address.clone()));
            let mut newly_missing: HashMap<String, u64> = HashMap::new();
            for r in book.iter() {
                if !missing.seen.contains(&r.address) && !missing.since.contains_key(&r.address) {
                    *newly_missing.entry(r.address.clone()).or_default() += 1;
                }
            }
            for (address, count) in &newly_missing {
                tracing::warn!(%address, reservations = count, grace_s = self.settings.lost_grace.as_secs(),
                    "reservations on a hive that is not in the fleet (left out of the configuration?) are \
                     kept, and counted, until the grace ends");
                missing.since.insert(address.clone(), now);
            }
            let missing_past_grace =
                |address: &str| missing.since.get(address).is_some_and(|at| now.saturating_sub(*at) > grace);
            let gone = book.drop_where(|r| match hives.iter().find(|h| h.address == r.address) {
                // Removed at run time: its reservations go with it.
                None if missing.seen.contains(&r.address) => true,
                None => missing_past_grace(&r.address),
                // Gone since it last streamed (redials do not restart the count).
                Some(h) => {
                    h.state == ConnState::Lost
                        && now.saturating_sub(h.unreachable_since_unix_ms.unwrap_or(h.state_since_unix_ms))
                            > grace
                }
            });
            for r in gone {
                let why = if hives.iter().any(|h| h.address == r.address) {
                    format!("hive lost for more than {} s", self.settings.lost_grace.as_secs())
                } else if missing.seen.contains(&r.address) {
                    "hive removed".to_owned()
                } else {
                    tracing::warn!(reservation = %r.id, address = %r.address,
                        "reservation dropped: its hive was not in the fleet for the whole grace");
                    format!("hive not in the fleet for more than {} s", self.settings.lost_grace.as_secs())
                };
                dropped.push((r, why));
            }
            // Remember how each ended (a request id stays taken for the grace), and
            // forget the ends past it.
            let mut ended = Vec::new();
            for (r, why) in &dropped {
                let how = if why.starts_with("expired") { EndedHow::Expired } else { EndedHow::Dropped };
                ended.extend(book.remember_ended(r, how, now));
            }
            let past_grace = book.prune_ended(now);
            let held: HashSet<&str> = book.iter().map(|r| r.address.as_str()).collect();
            missing.since.retain(|address, _| held.contains(address.as_str()));
            missing.kept = book.iter().filter(|r| !missing.seen.contains(&r.address)).count() as u64;
            drop(missing);
            // (One settled and then dropped in this same pass is no longer in the book.)
            let settled: Vec<_> = settled.iter().filter_map(|id| book.get(id).cloned()).collect();
            drop(book);
            let removed: Vec<&str> = dropped.iter().map(|(r, _)| r.id.as_str()).collect();
            if let Err(e) = self.persist_changes(&settled, &removed, &ended) {
                // The records stay as they were: a restart counts them again, and
                // settles, expires or drops them again.
                tracing::error!(error = %e, "cannot keep the books' upkeep in the state store");
            }
            if let Some(store) = self.store.as_ref().filter(|_| !past_grace.is_empty()) {
                let ids: Vec<&str> = past_grace.iter().map(String::as_str).collect();
                if let Err(e) = store.forget_ended(&ids) {
                    // Kept longer: a restart forgets them at its first upkeep.
                    tracing::warn!(error = %e, "cannot forget ended reservations in the state store");
                }
            }
        }
        for (r, reason) in dropped {
            tracing::info!(reservation = %r.id, hive = %r.hive_id, device = %r.device_id, %reason, "reservation dropped");
            let _ = self.events.send(SchedulerEvent::ReservationDropped { reservation: r, reason });
        }
    }

    /// Runs the upkeep of the books and the policy-file watch, each on its own task,
    /// every `maintain_every` until cancelled.
    pub async fn maintain(self: Arc<Self>, cancel: CancellationToken) {
        let upkeep = tokio::spawn(self.clone().every_tick(cancel.clone(), Self::upkeep_once));
        let reload = tokio::spawn(self.every_tick(cancel, Self::reload_once));
        let _ = tokio::join!(upkeep, reload);
    }

    /// Runs `work` on a blocking thread every `maintain_every` until cancelled.
    async fn every_tick(self: Arc<Self>, cancel: CancellationToken, work: fn(&Self)) {
        let mut tick = tokio::time::interval(self.settings.maintain_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || work(&me)).await;
                }
            }
        }
    }
}
