//! A fetch to many hives at once (`ScheduleFetchRequest.all`), arranged so that the
//! origin serves the model about once: a chain on prefixes. Hive 0 reads from the origin
//! (or from hives that hold the model ready); hive k reads from hive k-1, k-2, ... as
//! they download (partial peers), then the origin. Every hive downloads and uploads the
//! model about once, all at the same time, so the wall time is about one hive's fetch
//! plus a chunk's delay per hop. The chain needs every file's size and sha256 before the
//! bytes (a partial peer's bytes are verified by the reader only); while they are not
//! known (a URL without `--sha256`), the others wait for hive 0 to show them (its
//! catalog entry while downloading) or to be ready. See docs/models.md.

use std::sync::Arc;
use std::time::Duration;

use rbee_proto::v1 as pb;
use rbee_shared::{DownloadPhase, FileSource, ModelFile, ModelState};
use tokio::sync::Semaphore;

use super::fetch_call::ask;
use super::peers::{self, MAX_PEERS, Peer, PeerChoice};
use crate::QueenError;
use crate::fleet::{Fleet, HiveSnapshot};
use crate::link::LinkSettings;

/// Most hives one fan-out asks.
pub const MAX_FAN_OUT: usize = 256;
/// Most fan-outs waiting at once for their first hive (each one background task).
pub const MAX_WAITING_FAN_OUTS: usize = 16;
/// Longest a waiting fan-out waits for its first hive to show the files or be ready.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(3600);
/// How often the waiting task looks at the fleet view.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// One fan-out: what to fetch, and to which hives in which order.
pub struct FanOut {
    /// The fleet to read peers from.
    pub fleet: Arc<Fleet>,
    /// How to dial hives.
    pub link: LinkSettings,
    /// The fetch as the caller gave it (no peers).
    pub fetch: pb::FetchModelRequest,
    /// The URL files the request declares (none for a Hub source).
    pub declared: Option<Vec<FileSource>>,
    /// The hives, the first one first.
    pub targets: Vec<Arc<HiveSnapshot>>,
    /// Hand no peers.
    pub no_peers: bool,
}

impl FanOut {
    /// Starts the fan-out: every hive now when the files are known, else the first now
    /// and the others from a background task (one of `waiting`'s permits) once the
    /// first hive shows the files or is ready. One result per hive, in order, and why
    /// no hive got peers when holders disagree on the content.
    pub async fn start(
        self,
        waiting: &Arc<Semaphore>,
    ) -> Result<(Vec<pb::HiveFetchResult>, Option<String>), QueenError> {
        let model = self.fetch.model_id.clone();
        let planned =
            plan(&self.fleet.list(), &self.targets, &model, self.declared.as_deref(), self.no_peers, false);
        if let Some(plan) = planned {
            let note = plan.first().and_then(|c| c.note.clone());
            return Ok((self.in_order(plan, 0).await, note));
        }
        let permit = Arc::clone(waiting).try_acquire_owned().map_err(|_| {
            QueenError::ResourceExhausted(format!(
                "{MAX_WAITING_FAN_OUTS} fan-outs are waiting for their first hive; retry later or declare the files' sha256"
            ))
        })?;
        let first = self.one(&self.targets[0], &PeerChoice::default()).await;
        let mut out = vec![first.clone()];
        let deferred = |h: &HiveSnapshot, error: Option<String>| pb::HiveFetchResult {
            hive_id: h.hive_id().to_owned(),
            address: h.address.clone(),
            deferred: error.is_none(),
            error,
            ..Default::default()
        };
        let Some(accepted) = first.result.as_ref().map(|r| r.accepted_at_unix_ms) else {
            let why = "not started: the first hive refused the fetch".to_owned();
            out.extend(self.targets[1..].iter().map(|h| deferred(h, Some(why.clone()))));
            return Ok((out, None));
        };
        out.extend(self.targets[1..].iter().map(|h| deferred(h, None)));
        let shutdown = self.fleet.shutdown_token().clone();
        tokio::spawn(async move {
            let _permit = permit;
            let model = self.fetch.model_id.clone();
            tokio::select! {
                () = self.finish(accepted) => {}
                () = shutdown.cancelled() => {
                    tracing::warn!(model = %model, "fan-out abandoned: the queen is shutting down (re-run the fetch on the next leader)");
                }
            }
        });
        Ok((out, None))
    }

    /// The waiting part: once the first hive shows the files (or is ready), starts the
    /// others; gives up when its fetch failed, it left the fleet, or after
    /// [`WAIT_FOR_FIRST`].
    async fn finish(self, accepted_at_unix_ms: u64) {
        let model = self.fetch.model_id.clone();
        let first = self.targets[0].address.clone();
        let deadline = tokio::time::Instant::now() + WAIT_FOR_FIRST;
        loop {
            let fleet = self.fleet.list();
            let Some(lead) = fleet.iter().find(|h| h.address == first) else {
                tracing::warn!(model = %model, hive = %first, "fan-out abandoned: its first hive left the fleet");
                return;
            };
            if first_failed(lead, &model, accepted_at_unix_ms) {
                tracing::warn!(model = %model, hive = %lead.hive_id(), "fan-out abandoned: the first hive's fetch failed");
                return;
            }
            if let Some(plan) = plan(&fleet, &self.targets, &model, self.declared.as_deref(), false, true) {
                for r in self.in_order(plan, 1).await {
                    if let Some(e) = r.error {
                        tracing::warn!(model = %model, hive = %r.hive_id, error = %e, "fan-out: a hive refused");
                    }
                }
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(model = %model, "fan-out abandoned: the first hive showed no files in time");
                return;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Asks the targets from `from` on, one after another, so that hive k's partial
    /// peers have accepted their download before it reads them; a hive that refused is
    /// no later hive's peer.
    async fn in_order(&self, plan: Vec<PeerChoice>, from: usize) -> Vec<pb::HiveFetchResult> {
        let mut refused: Vec<String> = Vec::new();
        let mut out = Vec::with_capacity(self.targets.len());
        for (hive, mut choice) in self.targets.iter().zip(plan).skip(from) {
            choice.peers.retain(|p| !refused.contains(&p.hive_id));
            if choice.peers.is_empty() {
                choice.files.clear();
            }
            let r = self.one(hive, &choice).await;
            if r.error.is_some() {
                refused.push(r.hive_id.clone());
            }
            out.push(r);
        }
        out
    }

    /// Asks one hive, with `choice` as its peers.
    async fn one(&self, hive: &HiveSnapshot, choice: &PeerChoice) -> pb::HiveFetchResult {
        let mut fetch = self.fetch.clone();
        let mut choice = choice.clone();
        choice.apply(&mut fetch);
        let mut out = pb::HiveFetchResult {
            hive_id: hive.hive_id().to_owned(),
            address: hive.address.clone(),
            peers: choice.ids(),
            ..Default::default()
        };
        match ask(&self.link, hive, fetch).await {
            Ok(r) => out.result = Some(r),
            Err(e) => out.error = Some(e.to_string()),
        }
        out
    }
}

/// True when the fleet view shows `hive`'s fetch of `model` (accepted at the given
/// time, its clock) failed or cancelled.
fn first_failed(hive: &HiveSnapshot, model: &str, accepted_at_unix_ms: u64) -> bool {
    let record = hive.latest.as_ref().and_then(|s| {
        s.downloads
            .iter()
            .find(|d| d.model_id == model && d.updated_at_unix_ms >= accepted_at_unix_ms)
            .map(|d| d.phase)
    });
    if matches!(record, Some(DownloadPhase::Failed | DownloadPhase::Cancelled)) {
        return true;
    }
    record.is_none()
        && hive
            .caps
            .as_ref()
            .and_then(|c| c.caps.models.get(model))
            .is_some_and(|m| m.state == ModelState::Failed)
}

/// The peers for each of `targets` (in the order they are asked), or `None` while the
/// files are not known yet: then only the first may start (from the origin), and the
/// others wait. `no_peers`: nobody gets peers, all start. `first_started`: the first
/// target was asked (without peers, from the origin) for this fan-out, so its files,
/// once its catalog shows them, are the ones the others read. Holders that disagree on
/// the content with nothing declared to tell which is right: nobody gets peers, all
/// start, and every choice's note says why.
pub fn plan(
    fleet: &[Arc<HiveSnapshot>],
    targets: &[Arc<HiveSnapshot>],
    model: &str,
    declared: Option<&[FileSource]>,
    no_peers: bool,
    first_started: bool,
) -> Option<Vec<PeerChoice>> {
    if no_peers {
        return Some(vec![PeerChoice::default(); targets.len()]);
    }
    let first = if first_started && peers::fully_declared(declared).is_none() {
        fleet
            .iter()
            .find(|h| h.address == targets[0].address)
            .and_then(|h| peers::contents(std::slice::from_ref(h), model, declared).pop())
            .map(|(files, _)| files)
    } else {
        None
    };
    let files: Vec<ModelFile> = match first {
        Some(files) => files,
        None => match peers::reference(fleet, model, declared) {
            Ok(files) => files?,
            Err(note) => {
                return Some(vec![
                    PeerChoice { note: Some(note.to_string()), ..Default::default() };
                    targets.len()
                ]);
            }
        },
    };
    Some(
        targets
            .iter()
            .enumerate()
            .map(|(k, target)| {
                let found = peers::holding_these(fleet, target, model, declared, files.clone());
                let (ready, partial): (Vec<&Peer>, Vec<&Peer>) = found.peers.iter().partition(|p| !p.partial);
                let chain = targets[..k].iter().rev().map(|t| Peer {
                    hive_id: t.hive_id().to_owned(),
                    address: t.address.clone(),
                    partial: true,
                });
                let mut out: Vec<Peer> = Vec::with_capacity(MAX_PEERS);
                for p in ready.into_iter().cloned().chain(chain).chain(partial.into_iter().cloned()) {
                    if out.len() == MAX_PEERS {
                        break;
                    }
                    if !out.iter().any(|o| o.hive_id == p.hive_id) {
                        out.push(p);
                    }
                }
                let files = if out.is_empty() { Vec::new() } else { files.clone() };
                PeerChoice { peers: out, files, note: None }
            })
            .collect(),
    )
}

#[cfg(test)]
#[path = "fanout_tests.rs"]
mod tests;
