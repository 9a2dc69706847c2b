//! Which hives a fetching hive reads a model from before the origin: the online,
//! not-unhealthy hives whose catalog holds the model `ready` with the same files (paths,
//! sizes and sha256) as the request declares and as each other, then those still
//! downloading it whose files' sizes and hashes are all known (read as growing
//! prefixes). Holders are grouped by content (every file's size and sha256): without
//! declared hashes peers come only from the one content all holders agree on; when they
//! disagree none is offered (a wrong copy must not spread). Preferred: ready before partial, then the target's own `zone`, then its
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
    /// Why no peer was offered although hives hold the model (they disagree on its
    /// content and the request declares no hash to tell which is right).
    pub note: Option<String>,
}

/// The largest `FetchModelRequest` a hive accepts (its gRPC decode limit, the Hive
/// service's): the queen never sends a larger one.
pub const HIVE_FETCH_REQUEST_LIMIT_BYTES: usize = {
    let (fetch, any) =
        (rbee_shared::model::MAX_FETCH_REQUEST_BYTES, rbee_shared::grpc_server::MAX_DECODING_MESSAGE_BYTES);
    if fetch > any { fetch } else { any }
};

/// Refuses a fetch a hive would not accept for its size (`INVALID_ARGUMENT`, before
/// anything starts).
pub fn check_hive_size(fetch: &pb::FetchModelRequest) -> Result<(), crate::QueenError> {
    use prost::Message as _;
    let len = fetch.encoded_len();
    if len > HIVE_FETCH_REQUEST_LIMIT_BYTES {
        return Err(crate::QueenError::InvalidArgument(format!(
            "fetch is {len} bytes encoded, more than a hive accepts ({HIVE_FETCH_REQUEST_LIMIT_BYTES}): \
             fewer files or shorter URLs"
        )));
    }
    Ok(())
}

impl PeerChoice {
    /// Hands the choice to a hive's fetch request (no peers: the request unchanged).
    /// Where the peers' file list would make the request larger than a hive accepts,
    /// no peer is handed and the note says so (the request stays as it was).
    pub fn apply(&mut self, fetch: &mut pb::FetchModelRequest) {
        use prost::Message as _;
        if self.peers.is_empty() {
            return;
        }
        let before = fetch.encoded_len();
        self.fill(fetch);
        let len = fetch.encoded_len();
        if len > HIVE_FETCH_REQUEST_LIMIT_BYTES && before <= HIVE_FETCH_REQUEST_LIMIT_BYTES {
            fetch.peers.clear();
            fetch.peer_files.clear();
            self.peers.clear();
            self.files.clear();
            self.note = Some(format!(
                "no peers: with the peers' file list the hive's request would be {len} bytes, more than a \
                 hive accepts ({HIVE_FETCH_REQUEST_LIMIT_BYTES}); fetching from the origin"
            ));
        }
    }

    /// Writes the peers and their files into `fetch`.
    fn fill(&self, fetch: &mut pb::FetchModelRequest) {
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

/// The hive's files of `model` when it holds them as a source: online, not unhealthy,
/// the model ready (or downloading: `partial`) with every hash known and fitting the
/// declared files.
fn holding(
    hive: &HiveSnapshot,
    model: &str,
    declared: Option<&[FileSource]>,
) -> Option<(bool, Vec<ModelFile>)> {
    if hive.state != ConnState::Online || hive.health.health == Health::Unhealthy || hive.hive_id().is_empty()
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

/// The hive's files of `model` when it may serve them to `target`: [`holding`], and not
/// the target.
fn offer(
    hive: &HiveSnapshot,
    target: &HiveSnapshot,
    model: &str,
    declared: Option<&[FileSource]>,
) -> Option<(bool, Vec<ModelFile>)> {
    if hive.hive_id() == target.hive_id() || hive.address == target.address {
        return None;
    }
    holding(hive, model, declared)
}

/// The contents (files sorted by path, with sizes and hashes) hives hold `model` with,
/// fitting `declared`, each with how many hives hold it: the most held first.
pub fn contents(
    hives: &[Arc<HiveSnapshot>],
    model: &str,
    declared: Option<&[FileSource]>,
) -> Vec<(Vec<ModelFile>, usize)> {
    let mut out: Vec<(Vec<ModelFile>, usize)> = Vec::new();
    for (_, files) in hives.iter().filter_map(|h| holding(h, model, declared)) {
        match out.iter_mut().find(|(f, _)| *f == files) {
            Some((_, n)) => *n += 1,
            None => out.push((files, 1)),
        }
    }
    out.sort_by_key(|g| std::cmp::Reverse(g.1));
    out
}

/// The files every peer must hold: the request's when it declares every size and
/// sha256, else the one content all holders agree on (`None`: nobody holds it). When
/// the holders disagree and nothing declared tells which content is right, the error
/// says so: then no holder is offered, for a wrong copy must not spread.
pub fn reference(
    hives: &[Arc<HiveSnapshot>],
    model: &str,
    declared: Option<&[FileSource]>,
) -> Result<Option<Vec<ModelFile>>, Disagreement> {
    if let Some(files) = fully_declared(declared) {
        return Ok(Some(files));
    }
    let mut groups = contents(hives, model, declared);
    match groups.len() {
        0 => Ok(None),
        1 => Ok(groups.pop().map(|(files, _)| files)),
        _ => Err(Disagreement { model: model.to_owned(), counts: groups.iter().map(|(_, k)| *k).collect() }),
    }
}

/// Holders of a model that disagree on its content, with no declared hash to tell which
/// is right: no holder is offered. Its text is the note the caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// The model.
    pub model: String,
    /// Hives per content.
    pub counts: Vec<usize>,
}

impl std::error::Error for Disagreement {}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held: usize = self.counts.iter().sum();
        let counts: Vec<String> = self.counts.iter().map(usize::to_string).collect();
        write!(
            f,
            "no peers: {held} hives hold {} with {} different contents (hives per content: {}); \
             fetching from the origin. Declare the files' sha256 to read from the holders of that content, \
             and remove the wrong copies",
            self.model,
            self.counts.len(),
            counts.join(", ")
        )
    }
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
/// same files ([`reference`]): those declared in full, else the one content every holder
/// agrees on; holders that disagree get no peer offered, and the choice's note says why.
pub fn select(
    hives: &[Arc<HiveSnapshot>],
    target: &HiveSnapshot,
    model: &str,
    declared: Option<&[FileSource]>,
) -> PeerChoice {
    match reference(hives, model, declared) {
        Ok(Some(files)) => holding_these(hives, target, model, declared, files),
        Ok(None) => PeerChoice::default(),
        Err(note) => PeerChoice { note: Some(note.to_string()), ..Default::default() },
    }
}

/// The peers for `target` among `hives` that hold exactly `files`, best first.
pub fn holding_these(
    hives: &[Arc<HiveSnapshot>],
    target: &HiveSnapshot,
    model: &str,
    declared: Option<&[FileSource]>,
    files: Vec<ModelFile>,
) -> PeerChoice {
    let mut offers: Vec<_> = hives
        .iter()
        .filter_map(|h| {
            offer(h, target, model, declared)
                .filter(|(_, held)| *held == files)
                .map(|(partial, _)| (rank(h, target, partial), h, partial))
        })
        .collect();
    offers.sort_by(|a, b| a.0.cmp(&b.0));
    let peers: Vec<Peer> = offers
        .iter()
        .take(MAX_PEERS)
        .map(|(_, h, partial)| Peer {
            hive_id: h.hive_id().to_owned(),
            address: h.address.clone(),
            partial: *partial,
        })
        .collect();
    if peers.is_empty() {
        return PeerChoice::default();
    }
    PeerChoice { peers, files, note: None }
}

#[cfg(test)]
#[path = "peers_tests.rs"]
pub(super) mod tests;
