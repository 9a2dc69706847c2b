//! High availability on etcd: the election that makes one queen of several the leader,
//! and what each role does.
//!
//! Shaped after etcd's `concurrency` election and client-go's `leaderelection`:
//!
//! - **Campaign**: grant a lease of `--leader-ttl` and put the leader key with it, only
//!   if no queen holds the key (one transaction).
//! - **Lead**: load the reservations and hives from etcd into the books first, then
//!   serve writes; renew the lease every TTL/4. A leader that has not renewed for 3/4
//!   of the TTL steps down on its own, before etcd lets the lease lapse, and stops
//!   writing (every write is also guarded by the lease in etcd). On shutdown it revokes
//!   the lease, so that a follower takes over at once.
//! - **Follow**: keep the own streams from every hive (the fleet does that anyway),
//!   mirror the reservations and the managed hives from etcd (watched, applied at most
//!   every poll), and poll
//!   the leader key; when it is gone (the leader's lease lapsed), campaign.
//!
//! When etcd is unreachable nobody leads: writes answer UNAVAILABLE, telemetry keeps
//! flowing, and the election resumes when etcd is back. The failover bound is the TTL
//! (the dead leader's lease lapsing) plus one poll, plus loading the books.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fleet::{Fleet, Origin};
use crate::scheduler::Scheduler;
use crate::store::{Campaign, EtcdStore, HiveRecord, Leader, Renewal, Role, StoreError};

/// How one turn as leader or follower ended.
enum Ended {
    /// The queen is shutting down.
    Cancelled,
    /// Leading: the lease could not be renewed (the reason). Following: the leader key
    /// is gone.
    Over(String),
}

/// The election and the role's duties.
pub struct Ha {
    /// The state in etcd.
    store: Arc<EtcdStore>,
    /// Whose books are loaded and mirrored.
    scheduler: Arc<Scheduler>,
    /// Where hives kept in etcd are managed.
    fleet: Arc<Fleet>,
}

impl Ha {
    /// The election over `store`, feeding `scheduler` and `fleet`.
    pub fn new(store: Arc<EtcdStore>, scheduler: Arc<Scheduler>, fleet: Arc<Fleet>) -> Self {
        Self { store, scheduler, fleet }
    }

    fn ttl(&self) -> Duration {
        self.store.settings().lease_ttl
    }

    /// How often a follower polls the leader key and applies the mirrored books.
    fn poll(&self) -> Duration {
        (self.ttl() / 10).clamp(Duration::from_millis(50), Duration::from_millis(250))
    }

    /// Runs the election until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut stale: Option<i64> = None;
        while !cancel.is_cancelled() {
            // A lease held when etcd went away: give it up now that etcd answers, so
            // that the election does not wait for it to lapse.
            if let Some(lease) = stale
                && self.store.revoke(lease).await.is_ok()
            {
                stale = None;
            }
            let ended = match self.store.campaign().await {
                Err(e) => {
                    self.unreachable(&e);
                    self.pause(&cancel).await
                }
                Ok(Campaign::Won(lease)) => match self.lead(lease, &cancel).await {
                    Ended::Over(why) => {
                        tracing::warn!(reason = %why, "this queen stepped down");
                        self.store.set_role(Role::Follower(Leader::Unknown(why)));
                        stale = Some(lease);
                        Ended::Over(String::new())
                    }
                    cancelled => cancelled,
                },
                Ok(Campaign::Lost(leader)) => self.follow(leader, &cancel).await,
            };
            if let Ended::Cancelled = ended {
                break;
            }
        }
    }

    fn unreachable(&self, e: &StoreError) {
        if !matches!(self.store.role(), Role::Follower(Leader::Unknown(_))) {
            tracing::warn!(error = %e, "etcd unreachable: no leader known");
        }
        self.store.set_role(Role::Follower(Leader::Unknown(e.to_string())));
    }

    async fn pause(&self, cancel: &CancellationToken) -> Ended {
        tokio::select! {
            () = cancel.cancelled() => Ended::Cancelled,
            () = tokio::time::sleep(self.poll() * 2) => Ended::Over(String::new()),
        }
    }

    /// Loads the books and the hives from etcd.
    async fn load(&self) -> Result<(), StoreError> {
        let kept = self.store.load().await?;
        // The hives first: reservations on hives added at the leader are not taken for
        // reservations on hives missing from the configuration.
        self.manage(&kept.hives);
        self.scheduler
            .replace_reservations(kept.reservations)
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        self.scheduler.restore_ended(kept.ended);
        Ok(())
    }

    /// Makes the hives this queen manages agree with those kept in etcd: manages the
    /// ones added or announced at the leader, and stops managing the ones an operator
    /// removed there (a follower keeps its own streams, so a removal made at the leader
    /// must reach it, or it would manage the hive again once it leads).
    fn manage(&self, hives: &[HiveRecord]) {
        let known: std::collections::HashSet<String> =
            self.fleet.list().iter().map(|h| h.address.clone()).collect();
        for hive in hives {
            let managed = known.contains(&hive.address);
            if hive.removed && managed {
                match self.fleet.remove(&hive.address) {
                    Ok(_) => {
                        tracing::info!(address = %hive.address, "hive removed at the leader: no longer managed")
                    }
                    Err(e) => {
                        tracing::warn!(address = %hive.address, error = %e, "cannot drop a hive removed in etcd")
                    }
                }
            } else if !hive.removed && !managed {
                let origin = if hive.origin == "announced" { Origin::Announced } else { Origin::Api };
                if let Err(e) = self.fleet.add(&hive.address, origin) {
                    tracing::warn!(address = %hive.address, error = %e, "cannot manage a hive kept in etcd");
                }
            }
        }
    }

    /// Leads with `lease` until it cannot be renewed, or until `cancel`.
    async fn lead(&self, lease: i64, cancel: &CancellationToken) -> Ended {
        let granted = Instant::now();
        if let Err(e) = self.load().await {
            let _ = self.store.revoke(lease).await;
            return Ended::Over(format!("cannot load the books from etcd: {e}"));
        }
        self.store.set_role(Role::Leader { lease });
        tracing::info!(advertise = %self.store.settings().advertise, lease, "this queen leads");
        let scheduler = self.scheduler.clone();
        let _ = tokio::task::spawn_blocking(move || scheduler.record_policy()).await;

        let every = self.ttl() / 4;
        let deadline = self.ttl() * 3 / 4;
        let mut renewed = granted;
        let mut renewal: Option<Renewal> = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    self.store.set_role(Role::Follower(Leader::Unknown("the leader is shutting down".into())));
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.store.revoke(lease)).await;
                    return Ended::Cancelled;
                }
                _ = tick.tick() => {}
            }
            let sent = Instant::now();
            match tokio::time::timeout(every, self.renew(lease, &mut renewal)).await {
                Ok(Ok(ttl)) if ttl > 0 => renewed = sent,
                Ok(Ok(_)) => return Ended::Over("the leader lease expired".into()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot renew the leader lease");
                    renewal = None;
                }
                Err(_) => {
                    tracing::warn!(
                        waited_ms = every.as_millis(),
                        "the leader lease renewal got no answer in time"
                    );
                    renewal = None;
                }
            }
            if renewed.elapsed() >= deadline {
                return Ended::Over(format!(
                    "the leader lease was not renewed for {} ms (etcd unreachable?)",
                    renewed.elapsed().as_millis()
                ));
            }
        }
    }

    /// One renewal of `lease`; the TTL etcd answered with (0: the lease is gone).
    async fn renew(&self, lease: i64, renewal: &mut Option<Renewal>) -> Result<i64, StoreError> {
        if renewal.is_none() {
            *renewal = Some(self.store.renewal(lease).await?);
        }
        let Some(keep_alive) = renewal.as_mut() else { return Ok(0) };
        keep_alive.renew().await.map_err(|e| StoreError::Etcd {
            endpoints: self.store.settings().endpoints.join(","),
            reason: format!("the lease renewal failed: {}", e.message()),
        })
    }

    /// Follows `leader` until the leader key is gone, or until `cancel`.
    async fn follow(&self, leader: String, cancel: &CancellationToken) -> Ended {
        tracing::info!(%leader, "this queen follows");
        self.store.set_role(Role::Follower(Leader::Other(leader)));
        let mut watch = None;
        let mut dirty = true;
        let mut tick = tokio::time::interval(self.poll());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ended::Cancelled,
                _ = tick.tick() => {}
            }
            match self.store.current_leader().await {
                Ok(None) => return Ended::Over(String::new()),
                Ok(Some((at, _))) => {
                    if self.store.role() != Role::Follower(Leader::Other(at.clone())) {
                        tracing::info!(leader = %at, "this queen follows");
                        self.store.set_role(Role::Follower(Leader::Other(at)));
                    }
                }
                Err(e) => {
                    self.unreachable(&e);
                    watch = None;
                    continue;
                }
            }
            if watch.is_none() {
                watch = self.store.watch_all().await.ok();
                dirty = true;
            }
            // Drain what the watch has seen since the last poll.
            while let Some(stream) = watch.as_mut() {
                match stream.message().now_or_never() {
                    None => break,
                    Some(Ok(Some(_))) => dirty = true,
                    Some(_) => watch = None,
                }
            }
            if dirty {
                match self.load().await {
                    Ok(()) => dirty = false,
                    // A record the books cannot trust: the mirror keeps what it had, loudly
                    // (once per change, not at every poll).
                    Err(e @ StoreError::Refused(_)) => {
                        tracing::error!(error = %e, "cannot mirror the leader's books; keeping the last good copy");
                        dirty = false;
                    }
                    Err(_) => {}
                }
            }
        }
    }
}
