//! `Scheduler.FetchModel`: choose the hive (named, or the best online hive whose labels
//! match), then call its `rbee.v1.Hive/FetchModel` the way the link dials it.
//!
//! Failing fetches are limited per caller (the peer of the call): each started download
//! is charged to its caller up front, and given back once the fleet view shows it done
//! or cancelled (or still progressing when the queen stops watching it); a failed one
//! (or a refused call) stays charged. A download that fails after a few bytes is a
//! failure like any other: the hive counts it against the queen. A caller has
//! [`CALLER_BURST`] such charges, refilled one every [`CALLER_REFILL`], so that one
//! caller's failing downloads cannot use up what a hive allows the queen as a whole.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbee_proto::v1 as pb;
use rbee_shared::convert::models::{model_id_from_wire, source_from_wire};
use rbee_shared::failure_limit::FailureLimit;
use rbee_shared::lock::MutexExt;
use rbee_shared::{DownloadPhase, ModelSource, ModelState};
use tokio::sync::Semaphore;

use super::fanout::{FanOut, MAX_FAN_OUT, MAX_WAITING_FAN_OUTS};
use super::fetch_call::ask;
use super::peers::{self, PeerChoice};
use crate::QueenError;
use crate::fleet::{ConnState, Fleet, HiveSnapshot};
use crate::link::LinkSettings;

/// Downloads a caller may have unfinished or failed at once.
pub const CALLER_BURST: u32 = 8;
/// One more every this long.
pub const CALLER_REFILL: Duration = Duration::from_secs(4);
/// Started downloads whose outcome is watched, at most (the oldest are forgotten).
const MAX_OPEN: usize = 4096;
/// How long a started download's outcome is watched for.
const WATCH_FOR: Duration = Duration::from_secs(120);

/// A download started for a caller, whose outcome is not known yet.
#[derive(Debug, Clone)]
struct OpenFetch {
    /// Who asked.
    caller: Option<IpAddr>,
    /// The hive's address.
    address: String,
    /// The model.
    model: String,
    /// When the hive accepted it (its clock, ms since the Unix epoch).
    accepted_at_unix_ms: u64,
    /// When the queen forwarded it.
    at: Instant,
}

/// Asks hives to fetch models.
pub struct ModelFetcher {
    /// The fleet to choose from.
    fleet: Arc<Fleet>,
    /// How to dial hives.
    link: LinkSettings,
    /// Failed and unfinished downloads per caller.
    limit: Mutex<FailureLimit<Option<IpAddr>>>,
    /// Started downloads whose outcome is watched.
    open: Mutex<VecDeque<OpenFetch>>,
    /// Permits of fan-outs waiting for their first hive (background tasks).
    waiting: Arc<Semaphore>,
}

/// What the fleet view says of a started download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Done or cancelled (or the model ready): it was no failing call.
    Fine,
    /// It failed.
    Failed,
    /// Still moving bytes: not known yet, but no failing call so far.
    Progressing,
    /// Not known yet.
    Open,
}

impl ModelFetcher {
    /// Over `fleet`, dialing with `link`.
    pub fn new(fleet: Arc<Fleet>, link: LinkSettings) -> Self {
        Self {
            fleet,
            link,
            limit: Mutex::new(FailureLimit::new(CALLER_BURST, CALLER_REFILL)),
            open: Mutex::new(VecDeque::new()),
            waiting: Arc::new(Semaphore::new(MAX_WAITING_FAN_OUTS)),
        }
    }

    /// What the fleet view says of `f` now.
    fn seen(&self, f: &OpenFetch) -> Seen {
        let Some(hive) = self.fleet.get(&f.address) else { return Seen::Fine };
        let record = hive.latest.as_ref().and_then(|s| {
            s.downloads
                .iter()
                .find(|d| d.model_id == f.model && d.updated_at_unix_ms >= f.accepted_at_unix_ms)
                .cloned()
        });
        match record.map(|d| (d.phase, d.bytes_done)) {
            Some((DownloadPhase::Failed, _)) => Seen::Failed,
            Some((DownloadPhase::Done | DownloadPhase::Cancelled, _)) => Seen::Fine,
            Some((DownloadPhase::Downloading | DownloadPhase::Verifying, done)) if done > 0 => {
                Seen::Progressing
            }
            _ => match hive.caps.as_ref().and_then(|c| c.caps.models.get(&f.model)).map(|m| m.state) {
                Some(ModelState::Ready) => Seen::Fine,
                _ => Seen::Open,
            },
        }
    }

    /// Settles the started downloads whose outcome the fleet view shows: a fine one
    /// gives its caller's charge back, a failed one keeps it.
    fn settle(&self) {
        let open = std::mem::take(&mut *self.open.lock_unpoisoned());
        let mut still = VecDeque::with_capacity(open.len());
        let mut refunds = Vec::new();
        for f in open {
            match self.seen(&f) {
                Seen::Fine => refunds.push(f.caller),
                Seen::Failed => {}
                // A long download, still moving when the queen stops watching it.
                Seen::Progressing if f.at.elapsed() >= WATCH_FOR => refunds.push(f.caller),
                Seen::Open if f.at.elapsed() >= WATCH_FOR => {}
                Seen::Open | Seen::Progressing => still.push_back(f),
            }
        }
        let now = Instant::now();
        {
            let mut limit = self.limit.lock_unpoisoned();
            for caller in refunds {
                limit.refund(caller, now);
            }
        }
        let mut open = self.open.lock_unpoisoned();
        // Fetches started meanwhile stay after the ones settled here.
        still.append(&mut open);
        *open = still;
    }

    /// Charges `caller` for one fetch, or refuses it while the caller has too many
    /// failed or unfinished downloads.
    pub(crate) fn admit(&self, caller: Option<IpAddr>) -> Result<(), QueenError> {
        self.settle();
        let now = Instant::now();
        let mut limit = self.limit.lock_unpoisoned();
        if let Err(wait) = limit.check(caller, now) {
            return Err(QueenError::ResourceExhausted(format!(
                "too many failed or unfinished downloads from this caller; retry in {} s",
                wait.as_secs().max(1)
            )));
        }
        limit.charge(caller, now);
        Ok(())
    }

    /// Watches a started download, or gives the charge back for a call that started
    /// none (joined, or already ready).
    pub(crate) fn started(
        &self,
        caller: Option<IpAddr>,
        address: &str,
        model: &str,
        result: &pb::FetchModelResponse,
    ) {
        if result.joined || result.already_ready {
            self.limit.lock_unpoisoned().refund(caller, Instant::now());
            return;
        }
        let mut open = self.open.lock_unpoisoned();
        if open.len() >= MAX_OPEN {
            open.pop_front();
        }
        open.push_back(OpenFetch {
            caller,
            address: address.to_owned(),
            model: model.to_owned(),
            accepted_at_unix_ms: result.accepted_at_unix_ms,
            at: Instant::now(),
        });
    }

    /// Validates the request, chooses the hive and forwards the fetch, for `caller`
    /// (the peer of the call), within the caller's limit of failing fetches.
    pub async fn fetch_for(
        &self,
        r: &pb::ScheduleFetchRequest,
        caller: Option<IpAddr>,
    ) -> Result<pb::ScheduleFetchResponse, QueenError> {
        let model = r.fetch.as_ref().map(|f| f.model_id.clone()).unwrap_or_default();
        self.admit(caller)?;
        let answer = self.fetch(r).await?;
        if answer.results.is_empty() {
            if let Some(result) = &answer.result {
                self.started(caller, &answer.address, &model, result);
            }
        } else {
            // A fan-out: one charge per hive it started (the first was charged above),
            // each given back as its download ends well.
            for (i, x) in answer.results.iter().enumerate() {
                let Some(result) = &x.result else { continue };
                if i > 0 {
                    self.limit.lock_unpoisoned().charge(caller, Instant::now());
                }
                self.started(caller, &x.address, &model, result);
            }
        }
        Ok(answer)
    }

    /// Validates the request, chooses the hive (or, with `all`, the hives) and forwards
    /// the fetch with the peers that hold the model.
    pub async fn fetch(&self, r: &pb::ScheduleFetchRequest) -> Result<pb::ScheduleFetchResponse, QueenError> {
        // The field under `fetch`: "invalid fetch.model_id: ...", not "fetch.invalid model_id".
        let bad = |e: rbee_shared::ConvertError| {
            QueenError::InvalidArgument(
                rbee_shared::ConvertError::new(format!("fetch.{}", e.field), e.reason).to_string(),
            )
        };
        let fetch = r.fetch.clone().ok_or_else(|| QueenError::InvalidArgument("fetch is required".into()))?;
        let model = model_id_from_wire("model_id", &fetch.model_id).map_err(bad)?;
        let source = source_from_wire(fetch.source.as_ref()).map_err(bad)?;
        if !fetch.peers.is_empty() || !fetch.peer_files.is_empty() {
            return Err(QueenError::InvalidArgument(
                "fetch.peers and fetch.peer_files are the queen's to fill: leave them empty (no_peers turns them off)"
                    .into(),
            ));
        }
        peers::check_hive_size(&fetch)?;
        let declared = match source {
            ModelSource::Urls(files) => Some(files),
            ModelSource::HuggingFace { .. } => None,
        };
        if r.all {
            return self.fan_out(r, fetch, &model, declared).await;
        }
        let hive = match (r.hive.trim(), r.labels.is_empty()) {
            ("", true) => return Err(QueenError::InvalidArgument("give hive or labels".into())),
            (key, true) => self
                .fleet
                .get(key)
                .ok_or_else(|| QueenError::Missing(format!("no hive {key:?} in the fleet")))?,
            ("", false) => choose(&self.fleet.list(), &r.labels.clone().into_iter().collect(), &model)
                .ok_or_else(|| {
                    QueenError::Missing(format!("no online hive matches the labels {:?}", r.labels))
                })?,
            (_, false) => return Err(QueenError::InvalidArgument("give hive or labels, not both".into())),
        };
        let mut choice = if r.no_peers {
            PeerChoice::default()
        } else {
            peers::select(&self.fleet.list(), &hive, &model, declared.as_deref())
        };
        let mut fetch = fetch;
        choice.apply(&mut fetch);
        let result = ask(&self.link, &hive, fetch).await?;
        Ok(pb::ScheduleFetchResponse {
            hive_id: hive.hive_id().to_owned(),
            address: hive.address.clone(),
            result: Some(result),
            peers: choice.ids(),
            peers_note: choice.note,
            ..Default::default()
        })
    }

    /// `all`: every online hive whose labels match (at most [`MAX_FAN_OUT`]), the one
    /// [`choose`] picks first.
    async fn fan_out(
        &self,
        r: &pb::ScheduleFetchRequest,
        fetch: pb::FetchModelRequest,
        model: &str,
        declared: Option<Vec<rbee_shared::FileSource>>,
    ) -> Result<pb::ScheduleFetchResponse, QueenError> {
        if r.labels.is_empty() || !r.hive.trim().is_empty() {
            return Err(QueenError::InvalidArgument("all needs labels (and no hive)".into()));
        }
        rbee_shared::labels::validate_labels(r.labels.iter())
            .map_err(|e| QueenError::InvalidArgument(format!("labels: {e}")))?;
        let labels: BTreeMap<String, String> = r.labels.clone().into_iter().collect();
        let fleet = self.fleet.list();
        let mut targets: Vec<Arc<HiveSnapshot>> =
            fleet.iter().filter(|h| matches(h, &labels)).cloned().collect();
        if targets.is_empty() {
            return Err(QueenError::Missing(format!("no online hive matches the labels {:?}", r.labels)));
        }
        if targets.len() > MAX_FAN_OUT {
            return Err(QueenError::InvalidArgument(format!(
                "{} online hives match the labels, more than {MAX_FAN_OUT} in one fetch: narrow the labels",
                targets.len()
            )));
        }
        // The hive `choose` picks goes first; the rest by id.
        targets.sort_by(|a, b| a.hive_id().cmp(b.hive_id()));
        if let Some(first) = choose(&targets, &labels, model)
            && let Some(at) = targets.iter().position(|h| h.address == first.address)
        {
            let first = targets.remove(at);
            targets.insert(0, first);
        }
        let run = FanOut {
            fleet: Arc::clone(&self.fleet),
            link: self.link.clone(),
            fetch,
            declared,
            targets,
            no_peers: r.no_peers,
        };
        let (results, peers_note) = run.start(&self.waiting).await?;
        let first = results[0].clone();
        if let (Some(e), true) = (&first.error, results.iter().all(|x| x.result.is_none() && !x.deferred)) {
            tracing::warn!(model, error = %e, "fan-out: no hive started");
        }
        Ok(pb::ScheduleFetchResponse {
            hive_id: first.hive_id,
            address: first.address,
            result: first.result,
            peers: first.peers,
            results,
            peers_note,
        })
    }
}

/// Online, discovered, and every label matches.
fn matches(h: &HiveSnapshot, labels: &BTreeMap<String, String>) -> bool {
    h.state == ConnState::Online
        && h.identity.as_ref().is_some_and(|i| labels.iter().all(|(k, v)| i.labels.get(k) == Some(v)))
}

/// Among online hives whose labels all match: one holding `model` ready, else one
/// downloading it, else the one with the most free models disk (ties: lowest id).
fn choose(
    hives: &[Arc<HiveSnapshot>],
    labels: &BTreeMap<String, String>,
    model: &str,
) -> Option<Arc<HiveSnapshot>> {
    let candidates = hives.iter().filter(|h| matches(h, labels));
    let score = |h: &HiveSnapshot| {
        let state = h.caps.as_ref().and_then(|c| c.caps.models.get(model)).map(|m| m.state);
        let ready = state == Some(ModelState::Ready);
        // Already downloading it (a fetch re-run after the queen was lost joins it).
        let downloading = state == Some(ModelState::Downloading);
        let free = h.latest.as_ref().and_then(|s| s.models_disk.as_ref()).map_or(0, |d| d.free_bytes);
        (ready, downloading, free)
    };
    candidates.max_by(|a, b| score(a).cmp(&score(b)).then_with(|| b.hive_id().cmp(a.hive_id()))).cloned()
}
