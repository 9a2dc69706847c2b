//! The small JSON records the catalog keeps on disk: a ready model's manifest, a
//! download's fetch record (what to resume after a restart) and a file's resume sidecar.

use std::path::Path;

use rbee_shared::{FileSource, ModelFile, ModelSource};
use serde::{Deserialize, Serialize};

use super::layout;

/// A ready model's manifest (`DIR/<model>/.rbee-model.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The model id.
    pub id: String,
    /// Its files with sizes and hashes.
    pub files: Vec<ModelFile>,
    /// Where it came from (`hand-copied` for a model found on disk).
    pub source: String,
    /// When it became ready, ms since the Unix epoch.
    pub ready_at_unix_ms: u64,
}

/// A download in progress (`DIR/.partial/<model>/fetch.json`): enough to resume it
/// after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRecord {
    /// The model id.
    pub id: String,
    /// The requested origin; `None` for a fetch from peers only.
    pub source: Option<ModelSource>,
    /// The files once resolved (a Hugging Face revision pinned to its commit).
    pub resolved: Option<Vec<FileSource>>,
    /// Hives to read the files from before the origin, most preferred first.
    #[serde(default)]
    pub peers: Vec<PeerSource>,
    /// The files as the peers hold them (size and sha256 set).
    #[serde(default)]
    pub peer_files: Vec<ModelFile>,
}

/// What a partial file was downloaded from (`<path>.part.json`): a resume is only
/// valid against the same URL and the same content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSidecar {
    /// The URL the bytes came from.
    pub url: String,
    /// The server's ETag, if it sent one.
    pub etag: Option<String>,
    /// The server's Last-Modified, if it sent one.
    pub last_modified: Option<String>,
    /// The full size, when the server said.
    pub total: Option<u64>,
}

/// Reads a JSON record; `None` when the file is missing or unreadable (logged).
pub fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read record");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "corrupt record; ignored");
            None
        }
    }
}

/// Writes a JSON record atomically.
pub fn write<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    layout::write_atomic(path, &bytes)
}

/// Writes a JSON record atomically, readable by the hive's user only (0600): for
/// records that keep a download's whole URL (the fetch record, a part's sidecar).
pub fn write_private<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    layout::write_atomic_private(path, &bytes)
}

/// One hive offered as a source of a model's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSource {
    /// Its address, normalised (`http://127.0.0.1:7834`, `https://gpu-2:7834`).
    pub address: String,
    /// Its hive id (on TLS, its certificate must carry it).
    pub hive_id: String,
    /// It is still downloading the model: its files' prefixes are read as they grow.
    pub partial: bool,
}
