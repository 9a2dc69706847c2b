//! Which hives a fetching hive reads a model from before the origin: the online,
//! not-unhealthy hives whose catalog holds the model `ready` with the same files (paths,
//! sizes and sha256) as the request declares and as each other, then those still
//! downloading it whose files' sizes and hashes are all known (read as growing
//! prefixes). Preferred: ready before partial, then the target's own `zone`, then its
//! `rack`, then more shared labels, then the least busy (fewest running downloads, then
//! the lowest CPU use), then the lowest id. A plain function over the fleet view, so
//! `Scheduler.FetchModel` and `Place`'s prefetch share it.

use std::cmp::Reverse;
use std::sync::Arc;

use rbee_proto::v1 as pb;
use rbee_shared::{FileSource, ModelEntry, ModelFile, ModelState};

use crate::fleet::{ConnState, Health, HiveSnapshot};

/// Most peers handed to one fetching hive.
pub const MAX_PEERS: usize = 4;

/// One hive offered as a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its hive id.
    pub hive_id: String,
    /// The address the queen dials it at.
    pub address: String,
    /// Still downloading: read its files' prefixes as they grow.
    pub partial: bool,
}

impl Peer {
    /// The wire form.
    pub fn to_wire(&self) -> pb::PeerSource {
        pb::PeerSource { address: self.address.clone(), hive_id: self.hive_id.clone(), partial: self.partial }
    }
}

/// The peers chosen for one fetch, and the files as they hold them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerChoice {
    /// Most preferred first, at most [`MAX_PEERS`].
    pub peers: Vec<Peer>,
    /// The model's files, sorted by path, every size and sha256 known (empty when no
    /// peer was chosen).
    pub files: Vec<ModelFile>,
}

impl PeerChoice {
    /// Hands the choice to a hive's fetch request (no peers: the request unchanged).
    pub fn apply(&self, fetch: &mut pb::FetchModelRequest) {
        if self.peers.is_empty() {
            return;
        }
        fetch.peers = self.peers.iter().map(Peer::to_wire).collect();
        fetch.peer_files = self
            .files
            .iter()
            .map(|f| pb::ModelFile {
                path: f.path.clone(),
                size_bytes: f.size_bytes,
                sha256: f.sha256.clone(),
            })
            .collect();
    }

    /// The chosen peers' hive ids, in order.
    pub fn ids(&self) -> Vec<String> {
        self.peers.iter().map(|p| p.hive_id.clone()).collect()
    }
}

/// The files a request declares, when every one has its size and sha256: then the
/// files are known before any hive has fetched them.
pub fn fully_declared(declared: Option<&[FileSource]>) -> Option<Vec<ModelFile>> {
    let mut files = declared?
        .iter()
        .map(|f| {
            Some(ModelFile {
                path: f.path.clone(),
                size_bytes: f.size_bytes?,
                sha256: Some(f.sha256.clone()?),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Some(files)
}

/// The entry's files sorted by path, when every one has a sha256 (and, `partial`,
/// a non-zero size: a download's declared size may be unknown).
fn known_files(entry: &ModelEntry, partial: bool) -> Option<Vec<ModelFile>> {
    if entry.files.is_empty()
        || entry.files.iter().any(|f| f.sha256.is_none() || (partial && f.size_bytes == 0))
    {
        return None;
    }
    let mut files = entry.files.clone();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Some(files)
}

/// True when `files` are the declared ones: the same paths, and the size and sha256
/// wherever the request declares them.
fn fits(declared: Option<&[FileSource]>, files: &[ModelFile]) -> bool {
    let Some(declared) = declared else { return true };
    declared.len() == files.len()
        && declared.iter().all(|d| {
            files.iter().any(|f| {
                f.path == d.path
                    && d.size_bytes.is_none_or(|s| s == f.size_bytes)
                    && d.sha256.as_ref().is_none_or(|h| f.sha256.as_ref() == Some(h))
            })
        })
}

/// The hive's files of `model` when it may serve them to `target`: online, not
/// unhealthy, not the target, the model ready (or downloading: `partial`) with every
/// hash known and fitting the declared files.
fn offer(
    hive: &HiveSnapshot,
    target: &HiveSnapshot,
    model: &str,
    declared: Option<&[FileSource]>,
) -> Option<(bool, Vec<ModelFile>)> {
    if hive.state != ConnState::Online
        || hive.health.health == Health::Unhealthy
        || hive.hive_id().is_empty()
        || hive.hive_id() == target.hive_id()
        || hive.address == target.address
    {
        return None;
    }
    let entry = hive.caps.as_ref()?.caps.models.get(model)?;
    let partial = match entry.state {
        ModelState::Ready => false,
        ModelState::Downloading => true,
        ModelState::Failed | ModelState::Unverified => return None,
    };
    let files = known_files(entry, partial)?;
    fits(declared, &files).then_some((partial, files))
}

/// How `hive` ranks as a source for `target`: smaller is better.
fn rank(hive: &HiveSnapshot, target: &HiveSnapshot, partial: bool) -> impl Ord + use<> {
    let labels = |h: &HiveSnapshot| h.identity.as_ref().map(|i| i.labels.clone()).unwrap_or_default();
    let (mine, theirs) = (labels(target), labels(hive));
    let same = |key: &str| mine.get(key).is_some_and(|v| theirs.get(key) == Some(v));
    let shared = mine.iter().filter(|(k, v)| theirs.get(*k) == Some(*v)).count();
    let running =
        hive.latest.as_ref().map_or(0, |s| s.downloads.iter().filter(|d| !d.phase.is_final()).count());
    // CPU in tenths of a percent, so that it orders (unknown: as busy as can be).
    let cpu =
        hive.latest.as_ref().and_then(|s| s.cpu_percent).map_or(u32::MAX, |c| (c.max(0.0) * 10.0) as u32);
    (
        partial,
        Reverse(same("zone")),
        Reverse(same("rack")),
        Reverse(shared),
        running,
        cpu,
        hive.hive_id().to_owned(),
    )
}

/// The peers for `target`'s fetch of `model` among `hives`, with the files they hold.
/// `declared` is the request's URL files (none for a Hub source). All peers hold the
/// same files: those declared in full, else those of the best-ranked ready holder.
pub fn select(
    hives: &[Arc<HiveSnapshot>],
    target: &HiveSnapshot,
    model: &str,
    declared: Option<&[FileSource]>,
) -> PeerChoice {
    let mut offers: Vec<_> = hives
        .iter()
        .filter_map(|h| {
            offer(h, target, model, declared)
                .map(|(partial, files)| (rank(h, target, partial), h, partial, files))
        })
        .collect();
    offers.sort_by(|a, b| a.0.cmp(&b.0));
    let reference = fully_declared(declared)
        .or_else(|| offers.iter().find(|o| !o.2).map(|o| o.3.clone()))
        .or_else(|| offers.first().map(|o| o.3.clone()));
    let Some(files) = reference else { return PeerChoice::default() };
    let peers: Vec<Peer> = offers
        .iter()
        .filter(|o| o.3 == files)
        .take(MAX_PEERS)
        .map(|(_, h, partial, _)| Peer {
            hive_id: h.hive_id().to_owned(),
            address: h.address.clone(),
            partial: *partial,
        })
        .collect();
    if peers.is_empty() {
        return PeerChoice::default();
    }
    PeerChoice { peers, files }
}

#[cfg(test)]
#[path = "peers_tests.rs"]
pub(super) mod tests;
