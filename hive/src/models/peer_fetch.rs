//! Weights from peers, the fetching side: a FetchModel may name hives that hold the
//! model (`peers`, most preferred first) with the files' sizes and sha256 (`peer_files`).
//! Each file is then read from the peers in order, and from the origin (URL or `hf://`)
//! last, all into the same `.part` file, hasher and writer as an origin download.
//!
//! - A peer that fails, ends early or stalls (the minimum-progress window) is dropped for
//!   this fetch; the next source continues at the same offset (the bytes on disk).
//! - A file whose sha256 is wrong at its end is started over from byte 0: prefix hashes
//!   are not known, so no part of it can be trusted. Every peer that sent bytes of it is
//!   marked bad for the whole fetch, and its bytes are taken out of the progress'
//!   per-source counts (which count bytes kept).
//! - Validation here ([`check_peers`]); dialing in [`super::peer_fetch_dial`]; one read
//!   from one peer in [`peer_fetch_read`].

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rbee_proto::v1 as pb;
use rbee_shared::lock::MutexExt;
use rbee_shared::model::{
    MAX_DOWNLOAD_SOURCES, MAX_MODEL_FILES, ORIGIN_SOURCE, check_model_path, check_sha256,
};
use rbee_shared::{ConvertError, FileSource, ModelFile, ModelSource};
use tonic::transport::Channel;

use self::peer_fetch_read::PeerFailure;
use super::download::{self, DownloadError, FileDone, FileJob};
use super::peer_fetch_dial::{PeerAddress, PeerDialer, PeerError};
use super::{layout, manifest};

/// One read from one peer (a child of this module: it uses the peer list's types).
#[path = "peer_fetch_read.rs"]
pub mod peer_fetch_read;

/// The most peers one fetch may name: with the origin, every source fits the progress
/// record's [`MAX_DOWNLOAD_SOURCES`].
pub const MAX_PEERS: usize = MAX_DOWNLOAD_SOURCES - 1;

pub use super::manifest::PeerSource;

/// This hive, which a peer list may not name: its own bytes are not a source (a fetch
/// would wait on itself), and its id would make its bytes look like another hive's.
#[derive(Debug, Clone, Default)]
pub struct Myself {
    /// Its hive id.
    pub hive_id: String,
    /// The address its gRPC listener is bound to.
    pub listen: Option<SocketAddr>,
    /// The address it advertises to the queen.
    pub advertised: Option<String>,
}

impl Myself {
    /// True when `address` reaches this hive's own listener: its advertised address, or
    /// the listener's port on its IP (any local IP for a wildcard listener: loopback,
    /// `localhost`, the unspecified address).
    fn is_me(&self, address: &PeerAddress) -> bool {
        let advertised = self.advertised.as_deref().and_then(|a| PeerAddress::parse(a).ok());
        if advertised.is_some_and(|a| a.host == address.host && a.port == address.port) {
            return true;
        }
        let Some(listen) = self.listen else { return false };
        if address.port != listen.port() {
            return false;
        }
        let local = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified();
        match address.host.parse::<IpAddr>() {
            Ok(ip) => {
                ip == listen.ip() || (local(ip) && (listen.ip().is_unspecified() || local(listen.ip())))
            }
            Err(_) => address.host == "localhost" && local(listen.ip()),
        }
    }
}

/// The peers of a FetchModel request and the files they hold, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPlan {
    /// The peers, most preferred first.
    pub peers: Vec<PeerSource>,
    /// The model's files as the peers hold them (size and sha256 always set).
    pub files: Vec<ModelFile>,
}

/// Validates `peers` and `peer_files` of a FetchModel against its origin (`None` when
/// the request names none): at most [`MAX_PEERS`] peers with valid, distinct hive ids and
/// addresses ([`PeerAddress::parse`]; never link-local, metadata, multicast or reserved),
/// none of them the origin's source name or this hive ([`Myself`]: its id or its
/// listener); every peer file with a path, size and sha256, and the same files as a URL
/// origin declares. A peer this hive's configuration cannot dial (https without
/// `--peer-ca`, plaintext outside loopback and `--peer-allow`) is skipped with a warning,
/// so a fleet whose hives cannot dial each other fetches from the origin as before; with
/// no origin and no peer left the request is refused. A request with neither an origin
/// nor peers is refused, as is a partial list.
pub fn check_peers(
    peers: &[pb::PeerSource],
    files: &[pb::ModelFile],
    origin: Option<&ModelSource>,
    dialer: &PeerDialer,
    me: &Myself,
) -> Result<PeerPlan, ConvertError> {
    if peers.is_empty() {
        if origin.is_none() {
            return Err(ConvertError::new("source", "is required: urls or hf, or peers with peer_files"));
        }
        if !files.is_empty() {
            return Err(ConvertError::new("peer_files", "are given without peers"));
        }
        return Ok(PeerPlan::default());
    }
    if peers.len() > MAX_PEERS {
        return Err(ConvertError::new("peers", format!("{} peers > {MAX_PEERS}", peers.len())));
    }
    let mut ids = BTreeSet::new();
    let mut skipped = Vec::new();
    let peers = peers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let field = format!("peers[{i}]");
            match checked_peer(&field, p, dialer, me, &mut ids) {
                Err(e) => Some(Err(e)),
                Ok(Ok(peer)) => Some(Ok(peer)),
                Ok(Err(why)) => {
                    tracing::warn!(peer = %p.hive_id, reason = %why, "peer skipped: this hive cannot dial it");
                    skipped.push(format!("{}: {why}", p.hive_id));
                    None
                }
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if peers.is_empty() && origin.is_none() {
        return Err(ConvertError::new(
            "peers",
            format!(
                "none of them can be dialed by this hive and the fetch names no origin ({})",
                rbee_shared::view_budget::bounded(&skipped.join("; "), 320)
            ),
        ));
    }
    if files.is_empty() || files.len() > MAX_MODEL_FILES {
        return Err(ConvertError::new(
            "peer_files",
            format!("must hold 1..={MAX_MODEL_FILES} files (with size and sha256) when peers are given"),
        ));
    }
    let mut paths = BTreeSet::new();
    let files = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let field = format!("peer_files[{i}]");
            check_model_path(&f.path).map_err(|e| ConvertError::new(format!("{field}.path"), e.0))?;
            if !paths.insert(f.path.clone()) {
                return Err(ConvertError::new(
                    format!("{field}.path"),
                    format!("{:?} appears twice", f.path),
                ));
            }
            let sha = f.sha256.as_deref().ok_or_else(|| {
                ConvertError::new(format!("{field}.sha256"), "is required: every peer byte is verified")
            })?;
            let sha = check_sha256(sha).map_err(|e| ConvertError::new(format!("{field}.sha256"), e.0))?;
            Ok(ModelFile { path: f.path.clone(), size_bytes: f.size_bytes, sha256: Some(sha) })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if files.iter().map(|f| f.size_bytes).try_fold(0u64, u64::checked_add).is_none() {
        return Err(ConvertError::new("peer_files", "the sizes add up past 2^64 bytes"));
    }
    if let Some(ModelSource::Urls(origin)) = origin
        && let Some(why) = origin_disagreement(origin, &files)
    {
        return Err(ConvertError::new("peer_files", why));
    }
    Ok(PeerPlan { peers, files })
}

/// One peer of a FetchModel: `Err` when it is refused (bad syntax, an id it may not
/// have, an address no peer has), `Ok(Err)` when only this hive's configuration cannot
/// dial it (https without `--peer-ca`, plaintext outside loopback and `--peer-allow`):
/// such a peer is skipped, so a fleet whose hives cannot dial each other still fetches
/// from the origin.
fn checked_peer(
    field: &str,
    p: &pb::PeerSource,
    dialer: &PeerDialer,
    me: &Myself,
    ids: &mut BTreeSet<String>,
) -> Result<Result<PeerSource, PeerError>, ConvertError> {
    rbee_shared::identity::check_hive_id(&p.hive_id)
        .map_err(|e| ConvertError::new(format!("{field}.hive_id"), e.to_string()))?;
    if p.hive_id == ORIGIN_SOURCE {
        return Err(ConvertError::new(
            format!("{field}.hive_id"),
            format!("{ORIGIN_SOURCE:?} names the origin in progress records; it is not a hive id"),
        ));
    }
    if p.hive_id == me.hive_id {
        return Err(ConvertError::new(
            format!("{field}.hive_id"),
            format!("{:?} is this hive: it cannot fetch from itself", p.hive_id),
        ));
    }
    if !ids.insert(p.hive_id.clone()) {
        return Err(ConvertError::new(format!("{field}.hive_id"), format!("{:?} appears twice", p.hive_id)));
    }
    let address =
        PeerAddress::parse(&p.address).map_err(|why| ConvertError::new(format!("{field}.address"), why.0))?;
    if let Some(why) = dialer.forbidden(&address) {
        return Err(ConvertError::new(format!("{field}.address"), why.0));
    }
    if me.is_me(&address) {
        return Err(ConvertError::new(
            format!("{field}.address"),
            format!("{address} (peer {:?}) is this hive's own listener", p.hive_id),
        ));
    }
    if let Err(why) = dialer.admits(&address) {
        return Ok(Err(why));
    }
    Ok(Ok(PeerSource { address: address.to_string(), hive_id: p.hive_id.clone(), partial: p.partial }))
}

/// How a URL origin's files differ from the peers' (other paths, or a declared size or
/// sha256 that differs).
fn origin_disagreement(origin: &[FileSource], peers: &[ModelFile]) -> Option<String> {
    if origin.len() != peers.len() {
        return Some(format!("{} files, the origin declares {}", peers.len(), origin.len()));
    }
    origin.iter().find_map(|o| {
        let Some(p) = peers.iter().find(|p| p.path == o.path) else {
            return Some(format!("no file {} of the origin", o.path));
        };
        match (o.size_bytes, &o.sha256) {
            (Some(size), _) if size != p.size_bytes => {
                Some(format!("{}: {} bytes, the origin declares {size}", o.path, p.size_bytes))
            }
            (_, Some(sha)) if Some(sha) != p.sha256.as_ref() => {
                Some(format!("{}: another sha256 than the origin declares", o.path))
            }
            _ => None,
        }
    })
}

/// The files to fetch: the origin's (resolved) files with the peers' size and sha256
/// filled in where the origin declares none; the peers' files alone without an origin.
/// `None` when a resolved origin (`hf://`) lists other files than the peers hold: then
/// the peers are not used.
pub fn merge_files(origin: Option<&[FileSource]>, peers: &[ModelFile]) -> Option<Vec<FileSource>> {
    let Some(origin) = origin else {
        return Some(
            peers
                .iter()
                .map(|f| FileSource {
                    url: String::new(),
                    path: f.path.clone(),
                    size_bytes: Some(f.size_bytes),
                    sha256: f.sha256.clone(),
                })
                .collect(),
        );
    };
    if peers.is_empty() {
        return Some(origin.to_vec());
    }
    if origin_disagreement(origin, peers).is_some() {
        return None;
    }
    Some(
        origin
            .iter()
            .map(|o| {
                let p = peers.iter().find(|p| p.path == o.path);
                FileSource {
                    url: o.url.clone(),
                    path: o.path.clone(),
                    size_bytes: o.size_bytes.or(p.map(|p| p.size_bytes)),
                    sha256: o.sha256.clone().or(p.and_then(|p| p.sha256.clone())),
                }
            })
            .collect(),
    )
}

/// One peer during one fetch.
struct Peer {
    /// Who and where.
    source: PeerSource,
    /// Why it is no longer used (failed, stalled or served wrong bytes), if so.
    dropped: Option<String>,
    /// Its channel, once dialed.
    channel: Option<Channel>,
}

/// The most time one fetch spends on peers that are then dropped having written less
/// than [`USEFUL_PEER_BYTES`] (silent, trickling, failing at once): past it every peer
/// left is dropped and the origin takes over, so that such peers cannot hold a download
/// slot for long (15 peers x the stall window).
pub const PEER_BUDGET: Duration = Duration::from_secs(30);

/// A dropped peer that wrote fewer bytes than this was charged to the [`PEER_BUDGET`].
const USEFUL_PEER_BYTES: u64 = 1 << 20;

/// Longest part of a dropped peer's reason quoted in a download's error, bytes.
const QUOTED_REASON_BYTES: usize = 160;

/// The peers of one fetch, in preference order, and which are still usable.
pub struct PeerSet {
    /// The peers.
    peers: Vec<Peer>,
    /// Dials them.
    dialer: PeerDialer,
    /// Time spent on peers that were then dropped.
    lost: Duration,
    /// The last peer dropped and why.
    last: Option<(String, String)>,
}

impl PeerSet {
    /// Over `peers`, dialed by `dialer`.
    pub fn new(peers: &[PeerSource], dialer: PeerDialer) -> Self {
        let peers = peers.iter().map(|p| Peer { source: p.clone(), dropped: None, channel: None }).collect();
        Self { peers, dialer, lost: Duration::ZERO, last: None }
    }

    /// Charges `spent` on a peer that was dropped to the fetch's [`PEER_BUDGET`]; once it
    /// is spent, every peer left is dropped.
    pub fn charge(&mut self, spent: Duration) {
        self.lost += spent;
        if self.lost < PEER_BUDGET {
            return;
        }
        let why = format!(
            "the fetch spent {} s on peers that failed (the budget is {} s); the origin goes on",
            self.lost.as_secs(),
            PEER_BUDGET.as_secs()
        );
        for i in 0..self.peers.len() {
            if self.peers[i].dropped.is_none() {
                self.drop_peer(i, why.clone());
            }
        }
    }

    /// The last dropped peer and why, as a download's error quotes it: its hive id and at
    /// most [`QUOTED_REASON_BYTES`] of the reason.
    pub fn last_reason(&self) -> Option<String> {
        let (id, why) = self.last.as_ref()?;
        let mut end = why.len().min(QUOTED_REASON_BYTES);
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        let cut = if end < why.len() { "..." } else { "" };
        Some(format!("{id}: {}{cut}", &why[..end]))
    }

    /// No peer at all (an origin-only fetch).
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    fn drop_peer(&mut self, i: usize, why: String) {
        tracing::warn!(peer = %self.peers[i].source.hive_id, reason = %why, "peer dropped for this fetch");
        self.last = Some((self.peers[i].source.hive_id.clone(), why.clone()));
        self.peers[i].dropped = Some(why);
        self.peers[i].channel = None;
    }

    fn drop_by_id(&mut self, hive_id: &str, why: &str) {
        if let Some(i) = self.peers.iter().position(|p| p.source.hive_id == hive_id && p.dropped.is_none()) {
            self.drop_peer(i, why.to_owned());
        }
    }

    /// The first usable peer and its channel (dialing it if needed); a peer that cannot be
    /// dialed is dropped and the next one tried.
    async fn next(&mut self) -> Option<(usize, Channel)> {
        loop {
            let i = self.peers.iter().position(|p| p.dropped.is_none())?;
            if let Some(channel) = &self.peers[i].channel {
                return Some((i, channel.clone()));
            }
            match self.dialer.dial(&self.peers[i].source).await {
                Ok(channel) => {
                    self.peers[i].channel = Some(channel.clone());
                    return Some((i, channel));
                }
                Err(why) => self.drop_peer(i, format!("cannot dial it: {why}")),
            }
        }
    }
}

/// Downloads `file` (its size and sha256 known when there are peers) from the usable
/// peers in order, then from the origin; see the module docs for what each failure does.
pub async fn fetch_file(
    job: &FileJob<'_>,
    model_id: &str,
    file: &FileSource,
    peers: &mut PeerSet,
) -> Result<FileDone, DownloadError> {
    // Sources that sent bytes of this file in this run, with how many (kept so far).
    let mut sent: Vec<(String, u64)> = Vec::new();
    let result = fetch_file_from(job, model_id, file, peers, &mut sent).await;
    if result.is_err() {
        // The file is not kept (a failed download leaves nothing): peers' bytes of it
        // were never verified, so they are not counted as kept from them.
        let mut p = job.progress.lock_unpoisoned();
        for (source, n) in sent.iter().filter(|(s, _)| s != ORIGIN_SOURCE) {
            p.discard(source, *n);
        }
    }
    result
}

async fn fetch_file_from(
    job: &FileJob<'_>,
    model_id: &str,
    file: &FileSource,
    peers: &mut PeerSet,
    sent: &mut Vec<(String, u64)>,
) -> Result<FileDone, DownloadError> {
    loop {
        let attempt = if let Some((i, channel)) = peers.next().await {
            let peer = peers.peers[i].source.clone();
            let started = tokio::time::Instant::now();
            match peer_fetch_read::read(job, model_id, file, &peer, channel).await {
                Ok((done, n)) => {
                    tally(sent, &peer.hive_id, n);
                    Ok(done)
                }
                Err(PeerFailure::Fatal(e)) => return Err(e),
                Err(PeerFailure::Dropped { why, kept }) => {
                    tally(sent, &peer.hive_id, kept);
                    peers.drop_peer(i, why);
                    // Only a peer that gave next to nothing wastes the budget: one that
                    // served a long prefix (a chain's partial peer) and then failed did not.
                    if kept < USEFUL_PEER_BYTES {
                        peers.charge(started.elapsed());
                    }
                    continue;
                }
                Err(PeerFailure::Corrupt { error, kept }) => {
                    tally(sent, &peer.hive_id, kept);
                    Err(error)
                }
            }
        } else if file.url.is_empty() {
            let last = peers.last_reason().map(|r| format!(" (last: {r})")).unwrap_or_default();
            return Err(DownloadError::Resolve(format!(
                "{}: every peer failed and the fetch names no origin{last}",
                file.path
            )));
        } else {
            let before = download::bytes_on_disk(job.partial, file);
            let result = download::fetch_file(job, file).await;
            let after = match &result {
                Ok(done) => done.size,
                Err(_) => download::bytes_on_disk(job.partial, file),
            };
            tally(sent, ORIGIN_SOURCE, after.saturating_sub(before));
            result
        };
        match attempt {
            Ok(done) => return Ok(done),
            Err(DownloadError::Sha256Mismatch { path, expected, actual })
                if sent.iter().any(|(s, _)| s != ORIGIN_SOURCE) =>
            {
                // Prefix hashes are unknown: nothing of the file can be trusted. Start
                // it over without the peers that sent any of it.
                tracing::warn!(%path, %expected, %actual, "a file with bytes from peers failed its sha256; starting it over");
                {
                    let mut p = job.progress.lock_unpoisoned();
                    for (source, n) in sent.iter() {
                        p.discard(source, *n);
                    }
                }
                for (source, _) in sent.drain(..) {
                    if source != ORIGIN_SOURCE {
                        peers.drop_by_id(&source, "it served bytes that failed the sha256");
                    }
                }
                restart(job.partial, file);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Adds `n` bytes of `source` to a file's tally.
fn tally(sent: &mut Vec<(String, u64)>, source: &str, n: u64) {
    if n == 0 {
        return;
    }
    match sent.iter_mut().find(|(s, _)| s == source) {
        Some((_, total)) => *total += n,
        None => sent.push((source.to_owned(), n)),
    }
}

/// Removes a file's `.part` and sidecar: the next source starts it at byte 0.
fn restart(partial: &std::path::Path, file: &FileSource) {
    let _ = std::fs::remove_file(layout::part_file(partial, &file.path));
    let _ = std::fs::remove_file(layout::part_sidecar(partial, &file.path));
}

/// Writes the resume sidecar of a file a peer starts: keyed by the origin's URL (empty
/// without one), so that the origin may continue it, and with no validator: the
/// file's sha256 is known and checked at its end.
pub fn start_sidecar(partial: &std::path::Path, file: &FileSource) -> std::io::Result<()> {
    let record = manifest::PartSidecar {
        url: file.url.clone(),
        etag: None,
        last_modified: None,
        total: file.size_bytes,
    };
    manifest::write_private(&layout::part_sidecar(partial, &file.path), &record)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn peer(address: &str, id: &str) -> pb::PeerSource {
        pb::PeerSource { address: address.into(), hive_id: id.into(), partial: false }
    }

    fn file(path: &str, size: u64, sha: Option<&str>) -> pb::ModelFile {
        pb::ModelFile { path: path.into(), size_bytes: size, sha256: sha.map(str::to_owned) }
    }

    fn origin(size: Option<u64>, sha: Option<&str>) -> ModelSource {
        ModelSource::Urls(vec![FileSource {
            url: "http://o/w.bin".into(),
            path: "w.bin".into(),
            size_bytes: size,
            sha256: sha.map(str::to_owned),
        }])
    }

    fn field_of(r: Result<PeerPlan, ConvertError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn peers_are_checked_and_normalised() {
        let d = PeerDialer::plaintext_only();
        let plan = check_peers(
            &[peer("127.1:7834", "hive-a"), peer("http://LOCALHOST:1", "hive-b")],
            &[file("w.bin", 5, Some(SHA))],
            None,
            &d,
            &Myself::default(),
        )
        .unwrap();
        assert_eq!(plan.peers[0].address, "http://127.0.0.1:7834");
        assert_eq!(plan.peers[1].address, "http://localhost:1");
        assert_eq!(plan.files[0].sha256.as_deref(), Some(SHA));
        let files = [file("w.bin", 5, Some(SHA))];
        let e = |peers: &[pb::PeerSource]| field_of(check_peers(peers, &files, None, &d, &Myself::default()));
        assert!(e(&[peer("http://169.254.169.254:80", "h")]).contains("peers[0].address"));
        assert!(e(&[peer("http://[fe80::1]:80", "h")]).contains("link-local"));
        assert!(e(&[peer("http://10.0.0.5:7834", "h")]).contains("plaintext"));
        assert!(e(&[peer("https://10.0.0.5:7834", "h")]).contains("--peer-ca"));
        assert!(e(&[peer("http://127.0.0.1:7834/x", "h")]).contains("path"));
        assert!(e(&[peer("http://u:p@127.0.0.1:7834", "h")]).contains("credentials"));
        assert!(e(&[peer("ftp://127.0.0.1:7834", "h")]).contains("http"));
        assert!(e(&[peer("http://127.0.0.1", "h")]).contains("needs a port"));
        let why = e(&[peer("http://127.0.0.1:99999", "h")]);
        assert!(why.contains("port out of range"), "{why}");
        assert!(e(&[peer("http://127.0.0.1:0", "h")]).contains("port out of range"));
        assert!(e(&[peer("http://127.0.0.1:7834#x", "h")]).contains("fragment"));
        assert!(e(&[peer("http://127.0.0.1:7834/#x", "h")]).contains("fragment"));
        assert!(e(&[peer("http://127.0.0.1:7834?q", "h")]).contains("query"));
        assert!(e(&[peer("127.0.0.1:1", "bad id!")]).contains("peers[0].hive_id"));
        assert!(e(&[peer("127.0.0.1:1", "a"), peer("127.0.0.1:2", "a")]).contains("twice"));
        let many: Vec<_> = (0..=MAX_PEERS).map(|i| peer("127.0.0.1:1", &format!("h{i}"))).collect();
        assert!(e(&many).contains("peers"));
    }

    #[test]
    fn peers_that_fail_spend_a_bounded_budget_and_the_last_reason_is_quoted_bounded() {
        let sources: Vec<PeerSource> = (0..3)
            .map(|i| PeerSource {
                address: format!("http://127.0.0.1:{}", i + 1),
                hive_id: format!("p{i}"),
                partial: false,
            })
            .collect();
        let mut set = PeerSet::new(&sources, PeerDialer::plaintext_only());
        assert_eq!(set.last_reason(), None);
        set.drop_peer(0, format!("Internal: {}", "é".repeat(500)));
        let quoted = set.last_reason().unwrap();
        assert!(quoted.starts_with("p0: Internal: "), "{quoted}");
        assert!(quoted.len() <= "p0: ".len() + QUOTED_REASON_BYTES + 3, "{} bytes", quoted.len());
        set.charge(PEER_BUDGET / 2);
        assert!(set.peers[1].dropped.is_none(), "within the budget the others stay");
        set.charge(PEER_BUDGET / 2);
        assert!(set.peers.iter().all(|p| p.dropped.is_some()), "past it every peer is dropped");
        assert!(set.last_reason().unwrap().contains("budget"));
        // A peer's stall window is short whatever the download's is.
        let slow = download::MinProgress { bytes: 1, window: Duration::from_secs(60) };
        assert_eq!(peer_fetch_read::peer_rule(slow).window, peer_fetch_read::PEER_WINDOW);
        let quick = download::MinProgress { bytes: 1, window: Duration::from_millis(500) };
        assert_eq!(peer_fetch_read::peer_rule(quick).window, quick.window);
    }

    #[test]
    fn a_peer_named_origin_or_this_hive_is_refused() {
        let d = PeerDialer::plaintext_only();
        let files = [file("w.bin", 5, Some(SHA))];
        let wildcard = Myself {
            hive_id: "me".into(),
            listen: Some("0.0.0.0:7834".parse().unwrap()),
            advertised: Some("http://gpu-1.example:7834".into()),
        };
        let e = |peers: &[pb::PeerSource], me: &Myself| field_of(check_peers(peers, &files, None, &d, me));
        assert!(e(&[peer("127.0.0.1:1", "origin")], &wildcard).contains("peers[0].hive_id"));
        assert!(e(&[peer("127.0.0.1:1", "me")], &wildcard).contains("this hive"));
        for address in ["127.0.0.1:7834", "http://localhost:7834", "127.1:7834", "http://[::1]:7834"] {
            let why = e(&[peer(address, "other")], &wildcard);
            assert!(why.contains("peers[0].address") && why.contains("own listener"), "{address}: {why}");
        }
        let loopback = Myself { listen: Some("127.0.0.1:7834".parse().unwrap()), ..wildcard.clone() };
        assert!(e(&[peer("http://127.0.0.2:7834", "other")], &loopback).contains("own listener"));
        // Another port, or another hive on the same machine, is a peer.
        for me in [&wildcard, &loopback] {
            assert!(check_peers(&[peer("127.0.0.1:7835", "other")], &files, None, &d, me).is_ok());
        }
        let on_lan = Myself { listen: Some("10.0.0.5:7834".parse().unwrap()), ..wildcard };
        assert!(check_peers(&[peer("127.0.0.1:7834", "other")], &files, None, &d, &on_lan).is_ok());
    }

    #[test]
    fn peer_files_need_sizes_and_hashes_and_must_match_the_origin() {
        let d = PeerDialer::plaintext_only();
        let p = [peer("127.0.0.1:1", "a")];
        let none = Myself::default();
        let check = |files: &[pb::ModelFile], o: Option<&ModelSource>| {
            field_of(check_peers(&p, files, o, &d, &Myself::default()))
        };
        assert!(check(&[], None).contains("peer_files"));
        assert!(check(&[file("w.bin", 5, None)], None).contains("peer_files[0].sha256"));
        assert!(check(&[file("../w.bin", 5, Some(SHA))], None).contains("peer_files[0].path"));
        assert!(check(&[file("w.bin", 5, Some(SHA)), file("w.bin", 5, Some(SHA))], None).contains("twice"));
        assert!(check(&[file("w.bin", 5, Some(SHA))], Some(&origin(Some(6), None))).contains("6"));
        let other = "b".repeat(64);
        assert!(check(&[file("w.bin", 5, Some(SHA))], Some(&origin(None, Some(&other)))).contains("sha256"));
        assert!(check(&[file("x.bin", 5, Some(SHA))], Some(&origin(None, None))).contains("no file w.bin"));
        assert!(
            check_peers(&p, &[file("w.bin", 5, Some(SHA))], Some(&origin(Some(5), Some(SHA))), &d, &none)
                .is_ok()
        );
        // Neither an origin nor peers; peer files without peers.
        assert!(field_of(check_peers(&[], &[], None, &d, &none)).contains("source"));
        assert!(
            field_of(check_peers(&[], &[file("w.bin", 5, Some(SHA))], Some(&origin(None, None)), &d, &none))
                .contains("peer_files")
        );
    }

    #[test]
    fn merged_files_take_the_peers_hashes_and_a_disagreeing_listing_drops_the_peers() {
        let peers = [ModelFile { path: "w.bin".into(), size_bytes: 5, sha256: Some(SHA.into()) }];
        let ModelSource::Urls(o) = origin(None, None) else { unreachable!() };
        let merged = merge_files(Some(&o), &peers).unwrap();
        assert_eq!(merged[0].url, "http://o/w.bin");
        assert_eq!((merged[0].size_bytes, merged[0].sha256.as_deref()), (Some(5), Some(SHA)));
        assert_eq!(merge_files(None, &peers).unwrap()[0].url, "");
        let ModelSource::Urls(o) = origin(Some(6), None) else { unreachable!() };
        assert_eq!(merge_files(Some(&o), &peers), None);
    }

    #[test]
    fn a_fetch_record_of_an_older_hive_still_resumes_and_a_new_one_keeps_its_peers() {
        let old =
            r#"{"id":"m","source":{"hugging_face":{"repo":"org/r","revision":"main"}},"resolved":null}"#;
        let record: manifest::FetchRecord = serde_json::from_str(old).unwrap();
        assert!(matches!(record.source, Some(ModelSource::HuggingFace { .. })));
        assert!(record.peers.is_empty() && record.peer_files.is_empty());
        let record = manifest::FetchRecord {
            peers: vec![PeerSource {
                address: "http://127.0.0.1:1".into(),
                hive_id: "a".into(),
                partial: true,
            }],
            peer_files: vec![ModelFile { path: "w.bin".into(), size_bytes: 5, sha256: Some(SHA.into()) }],
            source: None,
            ..record
        };
        let again: manifest::FetchRecord =
            serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
        assert_eq!(again, record);
    }
}
