//! Serving this hive's model files to peer hives (`ReadModelFile`), so that a fleet
//! downloads a model from the origin about once and spreads it hive to hive.
//!
//! What is served, and the rules (docs/models.md, "Weights from peers"):
//! - Only a file listed in a `ready` model's catalog entry, by that exact path; with
//!   `allow_partial`, also a file of a model being downloaded, as it grows
//!   ([`upload`]). Anything else is NOT_FOUND: a model that is not ready or
//!   not in the catalog, a path that is not one of the model's files (so every
//!   traversal form: `..`, absolute, `//`, `%2e`, NUL), and a file that is not a
//!   regular file beneath the model's directory when opened (a symlink swapped in).
//!   A model id of bad syntax is INVALID_ARGUMENT.
//! - A file whose size or mtime no longer matches its verification is not served, and
//!   the model is verified again; a read from offset 0 is hashed as it is sent, and a
//!   hash other than the manifest's ends the stream with DATA_LOSS (and re-verifies).
//!   From a later offset the reader's whole-file sha256 is the guard.
//! - Callers: a client certificate the hive trusts (`--client-ca`), or loopback.
//! - At most `--max-peer-uploads` at once (RESOURCE_EXHAUSTED beyond), all throttled
//!   together by `--peer-upload-limit` ([`super::serve_throttle`]).
//!
//! Files are read on the blocking pool, one thread per upload, into a bounded channel:
//! the async threads that send telemetry only forward chunks.

use std::fs::File;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use futures::Stream;
use rbee_shared::{ModelFile, ModelState};
use tokio::sync::{Semaphore, mpsc};

use self::upload::{Growth, Upload};
use super::serve_throttle::TokenBucket;
use super::{Inner, Models, catalog, layout};
use crate::HiveError;
use crate::preload::read::open_beneath;

/// One upload: the blocking reader behind a `ReadModelFile` stream (a child of this
/// module, so that it may use the request's types without an import cycle).
#[path = "serve_upload.rs"]
pub mod upload;

/// SHA-256 of no bytes: a file declared with it is known to be empty.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Uploads to peers at once by default (`--max-peer-uploads`).
pub const DEFAULT_MAX_PEER_UPLOADS: usize = 4;
/// The most `--max-peer-uploads` may be.
pub const MAX_PEER_UPLOADS: usize = 64;
/// Bytes per chunk sent (and per read).
pub const CHUNK_BYTES: usize = 512 << 10;
/// Chunks read ahead of the network, per upload.
pub const CHUNKS_QUEUED: usize = 4;
/// The longest path a request may name (longer is INVALID_ARGUMENT).
pub const MAX_PATH_BYTES: usize = 4096;

/// How this hive serves its models to peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Serve at all (`--serve-models`).
    pub enabled: bool,
    /// Bytes per second all uploads send together (`--peer-upload-limit`); `None`:
    /// unlimited.
    pub upload_limit: Option<u64>,
    /// Uploads at once (`--max-peer-uploads`).
    pub max_uploads: usize,
    /// Networks whose plaintext callers may read (`--peer-allow`: the same networks this
    /// hive dials plaintext peers on, for a fleet without TLS).
    pub plaintext_readers: Vec<crate::models::egress::Net>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            upload_limit: None,
            max_uploads: DEFAULT_MAX_PEER_UPLOADS,
            plaintext_readers: Vec::new(),
        }
    }
}

/// A peer's request for one model file (validated at the edge, `crate::convert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRequest {
    /// The model (a valid id).
    pub model_id: String,
    /// The file, as the model's catalog entry names it (any text up to
    /// [`MAX_PATH_BYTES`]; only an exact match is served).
    pub path: String,
    /// The first byte to send.
    pub offset: u64,
    /// Also serve a file of a model being downloaded.
    pub allow_partial: bool,
}

/// A piece of a served file, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChunk {
    /// Offset of `data` in the file.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// The file's full size: on the first chunk.
    pub size_bytes: Option<u64>,
    /// The file's verified sha256: on the first chunk of a ready file.
    pub sha256: Option<String>,
}

/// The chunks of one upload; an error item ends it.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<FileChunk, HiveError>> + Send>>;

/// What the uploads to peers did since the hive started (for `/metrics`).
#[derive(Debug, Default)]
pub struct UploadStats {
    /// Bytes of file data sent.
    pub bytes: AtomicU64,
    /// Calls refused for want of a slot (`--max-peer-uploads`).
    pub refused: AtomicU64,
}

/// The uploads to peers now, as `/metrics` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadCounts {
    /// Uploads running now.
    pub running: u64,
    /// Bytes of file data sent since the hive started.
    pub bytes: u64,
    /// Calls refused for want of a slot since the hive started.
    pub refused: u64,
}

/// Serves the files of a [`Models`] directory to peers; clones share the upload slots,
/// the throttle and the counts.
#[derive(Clone)]
pub struct PeerServer {
    /// The models.
    models: Models,
    /// The configuration.
    config: ServeConfig,
    /// Upload slots.
    slots: Arc<Semaphore>,
    /// The shared throttle, when limited.
    bucket: Option<Arc<TokenBucket>>,
    /// What the uploads did.
    stats: Arc<UploadStats>,
}

/// Whether a caller may read model files: one that presented a client certificate
/// (the TLS listener has checked it against `--client-ca`), one on loopback, or a
/// plaintext caller on a `--peer-allow` network (`plaintext`).
pub fn may_read(
    remote: Option<SocketAddr>,
    has_client_cert: bool,
    plaintext: &[crate::models::egress::Net],
) -> Result<(), HiveError> {
    let ip = remote.map(|a| a.ip().to_canonical());
    if has_client_cert || ip.is_some_and(|ip| ip.is_loopback() || plaintext.iter().any(|n| n.contains(ip))) {
        Ok(())
    } else {
        Err(HiveError::PeerUnauthenticated)
    }
}

impl PeerServer {
    /// Whether this caller may read ([`may_read`] with this hive's `--peer-allow`).
    pub fn may_read(&self, remote: Option<SocketAddr>, has_client_cert: bool) -> Result<(), HiveError> {
        may_read(remote, has_client_cert, &self.config.plaintext_readers)
    }

    /// Serves `models` by its configuration's `serve`.
    pub fn new(models: Models) -> Self {
        let config = models.inner.config.serve.clone();
        let bucket = config
            .upload_limit
            .map(|rate| Arc::new(TokenBucket::new(rate, CHUNK_BYTES as u64, Instant::now())));
        let slots = Arc::new(Semaphore::new(config.max_uploads.max(1)));
        Self { models, config, slots, bucket, stats: Arc::default() }
    }

    /// The uploads now.
    pub fn counts(&self) -> UploadCounts {
        let free = self.slots.available_permits();
        UploadCounts {
            running: self.config.max_uploads.max(1).saturating_sub(free) as u64,
            bytes: self.stats.bytes.load(Ordering::Relaxed),
            refused: self.stats.refused.load(Ordering::Relaxed),
        }
    }

    /// Starts streaming the file `req` names, from its offset. Errors before the first
    /// byte are the call's status; later ones end the stream.
    pub async fn read(&self, req: FileRequest) -> Result<ChunkStream, HiveError> {
        if !self.config.enabled {
            return Err(HiveError::ServingDisabled);
        }
        let inner = self.models.inner.clone();
        let entry = inner.catalog.get(&req.model_id);
        let not_served = |why: &str| {
            HiveError::ModelNotFound(format!(
                "model {} file {} is not served by this hive: {why}",
                req.model_id,
                layout::shown_name(&req.path)
            ))
        };
        let Some(entry) = entry else { return Err(not_served("the model is not in its catalog")) };
        let Some(file) = entry.files.iter().find(|f| f.path == req.path).cloned() else {
            return Err(not_served("no such file in the model"));
        };
        let partial = match entry.state {
            ModelState::Ready => false,
            ModelState::Downloading if req.allow_partial => {
                // A declared size, or the hash of the empty file; a hash alone does
                // not say where the file ends.
                if file.size_bytes == 0 && file.sha256.as_deref() != Some(EMPTY_SHA256) {
                    return Err(not_served("its size is not known yet"));
                }
                true
            }
            ModelState::Downloading => {
                return Err(not_served("the model is downloading (allow_partial reads its prefix)"));
            }
            state => return Err(not_served(&format!("the model is {}, not ready", state.as_str()))),
        };
        if req.offset > file.size_bytes {
            return Err(HiveError::OffsetPastEnd {
                path: req.path,
                offset: req.offset,
                size: file.size_bytes,
            });
        }
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            HiveError::TooManyUploads { limit: self.config.max_uploads }
        })?;
        let id = req.model_id.clone();
        let (source, growth) = if partial {
            (None, Some(Growth::new(inner.clone(), id.clone(), file.path.clone())))
        } else {
            let opened_inner = inner.clone();
            let opened_file = file.clone();
            let opened =
                tokio::task::spawn_blocking(move || open_ready(&opened_inner, &id, &opened_file)).await??;
            (Some(opened), None)
        };
        let (tx, rx) = mpsc::channel(CHUNKS_QUEUED);
        let upload = Upload {
            inner: inner.clone(),
            model_id: req.model_id,
            file,
            offset: req.offset,
            source,
            growth,
            tx,
            bucket: self.bucket.clone(),
            stats: self.stats.clone(),
            cancel: inner.shutdown.clone(),
            _permit: permit,
        };
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || upload.run(&runtime));
        Ok(forward(rx, inner.shutdown.clone()))
    }
}

/// A ready file opened for serving, with when its model was verified.
pub struct Opened {
    /// The file.
    pub file: File,
    /// The manifest's mtime: the file may not have changed after it.
    pub verified_at: Option<SystemTime>,
}

/// Opens a ready model's file beneath its directory, if it is still the file that was
/// verified (its size, and not modified after the manifest). A changed one is not
/// served and the model is verified again.
fn open_ready(inner: &Inner, id: &str, file: &ModelFile) -> Result<Opened, HiveError> {
    let dir = layout::model_dir(&inner.config.dir, id);
    let not_served = |why: String| {
        HiveError::ModelNotFound(format!(
            "model {id} file {} is not served by this hive: {why}",
            layout::shown_name(&file.path)
        ))
    };
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput => not_served(e.to_string()),
        _ => HiveError::ModelIo { path: dir.join(&file.path), source: e },
    };
    let opened = open_beneath(&dir, &file.path).map_err(io)?;
    let meta = opened.metadata().map_err(io)?;
    let verified_at =
        open_beneath(&dir, layout::MANIFEST).and_then(|m| m.metadata()?.modified()).map_err(io)?;
    if meta.len() != file.size_bytes || meta.modified().map_err(io)? > verified_at {
        reverify(inner, id);
        return Err(not_served(
            "it changed on disk since it was verified; the model is being verified again".into(),
        ));
    }
    Ok(Opened { file: opened, verified_at: Some(verified_at) })
}

/// Makes ready model `id` unverified (its manifest set aside, see
/// [`super::verify::set_aside`]), so that the directory scan verifies it again, as for a
/// file changed by hand: a downloaded model only against its download's hashes. Blocking.
pub fn reverify(inner: &Inner, id: &str) {
    let dir = layout::model_dir(&inner.config.dir, id);
    if inner.catalog.get(id).map(|m| m.state) != Some(ModelState::Ready) {
        return;
    }
    tracing::warn!(model = %id, "a served file is not the verified one; verifying the model again");
    super::verify::set_aside(&dir);
    let files = layout::list_files(&dir).unwrap_or_default();
    inner.catalog.update(id, |m| {
        if m.state != ModelState::Ready {
            return false;
        }
        *m = catalog::unverified_entry(id, &files);
        true
    });
}

/// The upload's chunks as a stream that ends with UNAVAILABLE when the hive shuts down
/// (so that shutdown never waits for an upload to finish).
fn forward(
    rx: mpsc::Receiver<Result<FileChunk, HiveError>>,
    shutdown: tokio_util::sync::CancellationToken,
) -> ChunkStream {
    Box::pin(futures::stream::unfold((rx, shutdown, false), |(mut rx, shutdown, done)| async move {
        if done {
            return None;
        }
        tokio::select! {
            biased;
            item = rx.recv() => match item {
                Some(item) => Some((item, (rx, shutdown, false))),
                // The upload stopped because the hive is shutting down (it drops its
                // sender at once): a reader cut off must see an error, never the end.
                None if shutdown.is_cancelled() => Some((Err(HiveError::ShuttingDown), (rx, shutdown, true))),
                None => None,
            },
            () = shutdown.cancelled() => Some((Err(HiveError::ShuttingDown), (rx, shutdown, true))),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_certified_or_loopback_callers_read() {
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let lo6: SocketAddr = "[::1]:5000".parse().unwrap();
        let lan: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        assert!(may_read(Some(lo), false, &[]).is_ok());
        assert!(may_read(Some(lo6), false, &[]).is_ok());
        assert!(may_read(Some(lan), true, &[]).is_ok());
        let refused = may_read(Some(lan), false, &[]).unwrap_err();
        assert_eq!(tonic::Status::from(refused).code(), tonic::Code::Unauthenticated);
        assert!(may_read(None, false, &[]).is_err(), "an unknown address is not loopback");
        // --peer-allow opens plaintext reads to its networks (as it opens dialing them).
        let net = |s: &str| match crate::models::egress::parse_allow(s).unwrap() {
            crate::models::egress::Allow::Net(n) => n,
            crate::models::egress::Allow::Host(_) => unreachable!(),
        };
        let allow = [net("10.0.0.0/8")];
        assert!(may_read(Some(lan), false, &allow).is_ok());
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:5000".parse().unwrap();
        assert!(may_read(Some(mapped), false, &allow).is_ok());
        let other: SocketAddr = "192.168.1.1:5000".parse().unwrap();
        assert!(may_read(Some(other), false, &allow).is_err());
    }
}
