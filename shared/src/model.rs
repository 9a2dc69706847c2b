//! Models on a hive: the catalog's entries, where a model is fetched from, and how a
//! download is going. The hive owns these; the queen reads them off the stream.

use std::fmt;

/// Longest model id, bytes.
pub const MAX_MODEL_ID_BYTES: usize = 128;
/// Longest file path inside a model, bytes.
pub const MAX_MODEL_PATH_BYTES: usize = 256;
/// Most files one model may have.
pub const MAX_MODEL_FILES: usize = 512;
/// Most models one hive may report.
pub const MAX_MODELS: usize = 4096;
/// Longest URL or error text, bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// A model's state in a hive's catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// Being downloaded; not usable yet.
    Downloading,
    /// Every file present and verified.
    Ready,
    /// The last download failed; none of its files is left.
    Failed,
    /// Copied in by hand, or its files changed on disk; hashes are being computed, or
    /// (a downloaded model with other bytes than its download's) it is refused: see
    /// the entry's error.
    Unverified,
}

impl ModelState {
    /// The lowercase name users read.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Downloading => "downloading",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::Unverified => "unverified",
        }
    }
}

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelFile {
    /// Path inside the model's directory.
    pub path: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// SHA-256, lowercase hex, when known.
    pub sha256: Option<String>,
}

/// One model in a hive's catalog.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelEntry {
    /// The model id (`llama-3.1-8b-q4`, `org/repo`).
    pub id: String,
    /// Its state.
    pub state: ModelState,
    /// Its files (the declared ones while downloading).
    pub files: Vec<ModelFile>,
    /// Sum of the file sizes (declared total while downloading, when known).
    pub size_bytes: u64,
    /// Why the last download failed.
    pub error: Option<String>,
    /// Bytes of its files in the page cache, when measured (see `hive::preload`).
    pub resident_bytes: Option<u64>,
    /// Preloaded and kept warm within the hive's RAM cache budget.
    pub warm: bool,
}

/// A download's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownloadPhase {
    /// Resolving the source (e.g. listing a Hugging Face repository).
    Resolving,
    /// Bytes are coming in.
    Downloading,
    /// Every byte is in; hashes are checked and files moved into place.
    Verifying,
    /// Final: the model is ready.
    Done,
    /// Final: failed (see the error); nothing left behind.
    Failed,
    /// Final: cancelled; nothing left behind.
    Cancelled,
    /// A preload: reading the files into the page cache.
    Preloading,
}

impl DownloadPhase {
    /// True for the phases a download ends in.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }

    /// The lowercase name users read.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resolving => "resolving",
            Self::Downloading => "downloading",
            Self::Verifying => "verifying",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Preloading => "preloading",
        }
    }
}

/// How one download is going.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DownloadProgress {
    /// The model being downloaded.
    pub model_id: String,
    /// Its phase.
    pub phase: DownloadPhase,
    /// Bytes on disk so far; below `bytes_total` until the phase is `Done`.
    pub bytes_done: u64,
    /// The total, when known.
    pub bytes_total: Option<u64>,
    /// Smoothed speed, bytes per second.
    pub speed_bytes_per_s: f64,
    /// Estimated time left, ms.
    pub eta_ms: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Connection attempts for the current file (1 = no retry yet).
    pub attempt: u32,
    /// When the record last changed, ms since the Unix epoch.
    pub updated_at_unix_ms: u64,
    /// Where the bytes came from, in first-use order (at most [`MAX_DOWNLOAD_SOURCES`]).
    pub sources: Vec<SourceBytes>,
}

/// The most sources one download record names.
pub const MAX_DOWNLOAD_SOURCES: usize = 16;

/// Longest peer address a fetch may name, bytes.
pub const MAX_PEER_ADDRESS_BYTES: usize = 256;

/// Bytes of a varint encoding `n`.
const fn varint_len(mut n: usize) -> usize {
    let mut k = 1;
    while n >= 0x80 {
        n >>= 7;
        k += 1;
    }
    k
}

/// Bytes of a length-delimited field (tag, length, `len` bytes) with a one-byte tag.
const fn field(len: usize) -> usize {
    1 + varint_len(len) + len
}

/// A `uint64` field at its longest.
const U64_FIELD: usize = 1 + 10;
/// A sha256 field (64 hex digits).
const SHA_FIELD: usize = field(64);

/// The longest encoding of a valid `FetchModelRequest`: the model id, [`MAX_MODEL_FILES`]
/// URL files (URL, path, size, sha256 at their limits), as many `peer_files`, and
/// [`MAX_DOWNLOAD_SOURCES`] peers (one more than a fetch may name). The hive's gRPC
/// decode limit covers it, so that every request the checks accept can be sent.
pub const MAX_FETCH_REQUEST_BYTES: usize = {
    let url_file = field(MAX_URL_BYTES) + field(MAX_MODEL_PATH_BYTES) + U64_FIELD + SHA_FIELD;
    let model_file = field(MAX_MODEL_PATH_BYTES) + U64_FIELD + SHA_FIELD;
    let peer = field(MAX_PEER_ADDRESS_BYTES) + field(crate::identity::MAX_HIVE_ID_LEN) + 2;
    field(MAX_MODEL_ID_BYTES)
        + field(MAX_MODEL_FILES * field(url_file))
        + MAX_MODEL_FILES * field(model_file)
        + MAX_DOWNLOAD_SOURCES * field(peer)
};

/// The longest encoding of a valid `ScheduleFetchRequest` (the queen's Scheduler): a
/// [`MAX_FETCH_REQUEST_BYTES`] fetch, a hive id, [`crate::labels::MAX_LABELS`] labels at
/// their limits and the flags.
pub const MAX_SCHEDULE_FETCH_REQUEST_BYTES: usize = {
    let label = field(crate::labels::MAX_LABEL_KEY_BYTES) + field(crate::labels::MAX_LABEL_VALUE_BYTES);
    field(MAX_FETCH_REQUEST_BYTES)
        + field(crate::identity::MAX_HIVE_ID_LEN)
        + crate::labels::MAX_LABELS * field(label)
        + 2 * 2
};

/// The source name of bytes fetched from the origin (a URL or the Hub).
pub const ORIGIN_SOURCE: &str = "origin";

/// Bytes of one download that came from one source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceBytes {
    /// [`ORIGIN_SOURCE`], or the peer's hive id.
    pub source: String,
    /// Bytes kept from it.
    pub bytes: u64,
}

/// Space on the filesystem holding a directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiskSpace {
    /// The directory.
    pub path: String,
    /// Filesystem size, bytes.
    pub total_bytes: u64,
    /// Space an unprivileged writer may still use, bytes.
    pub free_bytes: u64,
}

/// One file to download over http(s).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileSource {
    /// The URL.
    pub url: String,
    /// Path inside the model's directory.
    pub path: String,
    /// Declared size, when known.
    pub size_bytes: Option<u64>,
    /// Expected SHA-256, lowercase hex, when known.
    pub sha256: Option<String>,
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    /// Plain http(s) files.
    Urls(Vec<FileSource>),
    /// A Hugging Face Hub repository at a revision (default `main`).
    HuggingFace {
        /// `org/repo`.
        repo: String,
        /// Branch, tag or commit.
        revision: String,
    },
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Urls(files) if files.len() == 1 => write!(f, "{}", files[0].url),
            Self::Urls(files) => write!(f, "{} urls", files.len()),
            Self::HuggingFace { repo, revision } => write!(f, "hf://{repo}@{revision}"),
        }
    }
}

/// Why a model id, path or source is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ModelNameError(pub String);

/// Checks a model id: 1..=128 bytes of `[A-Za-z0-9._-]` and `/`, no empty segment, no
/// segment starting with `.` (the hive's own directories, such as `.partial` and
/// `.trash`, are hidden names), no `--` (the directory name uses it for `/`).
pub fn check_model_id(id: &str) -> Result<(), ModelNameError> {
    if id.is_empty() || id.len() > MAX_MODEL_ID_BYTES {
        return Err(ModelNameError(format!("model id must be 1..={MAX_MODEL_ID_BYTES} bytes")));
    }
    if id.contains("--") {
        return Err(ModelNameError(format!("model id {id:?} must not contain \"--\"")));
    }
    check_relative_path(id).map_err(|e| ModelNameError(format!("model id {id:?}: {}", e.0)))
}

/// Checks a relative path: segments of `[A-Za-z0-9._-]`, none empty and none starting
/// with `.` (so no `.`, `..` or hidden name), at most 256 bytes.
pub fn check_relative_path(path: &str) -> Result<(), ModelNameError> {
    if path.is_empty() || path.len() > MAX_MODEL_PATH_BYTES {
        return Err(ModelNameError(format!("must be 1..={MAX_MODEL_PATH_BYTES} bytes")));
    }
    for segment in path.split('/') {
        if segment.is_empty() {
            return Err(ModelNameError("has an empty segment".into()));
        }
        if segment.starts_with('.') {
            return Err(ModelNameError(format!(
                "has the segment {segment:?}: names starting with \".\" are reserved for the hive"
            )));
        }
        if let Some(c) = segment.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
            return Err(ModelNameError(format!("has {c:?}; allowed are A-Z a-z 0-9 . _ - and /")));
        }
    }
    Ok(())
}

/// Suffixes a file of a model may not end with: the hive keeps a download's partial
/// data and resume sidecar under these names.
pub const RESERVED_SUFFIXES: [&str; 2] = [".part", ".part.json"];
/// Names a model's top directory may not hold: the hive's fetch record.
pub const RESERVED_NAMES: [&str; 1] = ["fetch.json"];

/// Checks a file path inside a model: [`check_relative_path`], and none of the hive's
/// own names (a segment ending with `.part` or `.part.json`, a top-level `fetch.json`;
/// hidden names are refused by [`check_relative_path`]).
pub fn check_model_path(path: &str) -> Result<(), ModelNameError> {
    check_relative_path(path)?;
    if let Some(suffix) = path.split('/').find_map(|s| RESERVED_SUFFIXES.iter().find(|x| s.ends_with(**x))) {
        return Err(ModelNameError(format!(
            "ends with {suffix:?}, which the hive keeps for partial downloads"
        )));
    }
    if RESERVED_NAMES.contains(&path) {
        return Err(ModelNameError(format!("{path:?} is a name the hive keeps for its own records")));
    }
    Ok(())
}

/// Checks a Hub commit or revision: 1..=256 bytes of `[A-Za-z0-9._-]` and `/`, no
/// empty segment, none starting with `.` (it becomes part of a URL path).
pub fn check_revision(revision: &str) -> Result<(), ModelNameError> {
    check_relative_path(revision).map_err(|e| ModelNameError(format!("revision {revision:?}: {}", e.0)))
}

/// Checks a Hub commit id: 7..=64 hex digits.
pub fn check_commit(sha: &str) -> Result<(), ModelNameError> {
    if !(7..=64).contains(&sha.len()) || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ModelNameError(format!("commit {sha:?} is not 7..=64 hex digits")));
    }
    Ok(())
}

/// Checks a SHA-256 in hex and returns it in lowercase.
pub fn check_sha256(hex: &str) -> Result<String, ModelNameError> {
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ModelNameError(format!("sha256 {hex:?} is not 64 hex digits")));
    }
    Ok(hex.to_ascii_lowercase())
}

/// Parses `hf://org/repo[@revision]`.
pub fn parse_hf(uri: &str) -> Result<ModelSource, ModelNameError> {
    let rest = uri
        .strip_prefix("hf://")
        .ok_or_else(|| ModelNameError(format!("{uri:?} does not start with hf://")))?;
    let (repo, revision) = match rest.split_once('@') {
        Some((repo, rev)) => (repo, rev),
        None => (rest, "main"),
    };
    if repo.split('/').count() != 2 {
        return Err(ModelNameError(format!("{uri:?}: the repository must be org/repo")));
    }
    check_relative_path(repo).map_err(|e| ModelNameError(format!("{uri:?}: {}", e.0)))?;
    check_revision(revision).map_err(|e| ModelNameError(format!("{uri:?}: {}", e.0)))?;
    Ok(ModelSource::HuggingFace { repo: repo.to_owned(), revision: revision.to_owned() })
}

/// The default path of a URL's file: its last path segment.
pub fn path_from_url(url: &str) -> Option<String> {
    let no_query = url.split(['?', '#']).next()?;
    let last = no_query.rsplit('/').next()?;
    check_model_path(last).ok().map(|()| last.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest valid FetchModelRequest (and ScheduleFetchRequest around it), every
    /// field at its limit: the bounds cover it, and are not loose.
    #[test]
    fn the_request_bounds_cover_the_largest_valid_requests() {
        use prost::Message;
        use rbee_proto::v1 as pb;
        let sha = "a".repeat(64);
        let path = |i: usize| format!("{i:03}{}", "p".repeat(MAX_MODEL_PATH_BYTES - 3));
        let fetch = pb::FetchModelRequest {
            model_id: "m".repeat(MAX_MODEL_ID_BYTES),
            source: Some(pb::fetch_model_request::Source::Urls(pb::UrlSource {
                files: (0..MAX_MODEL_FILES)
                    .map(|i| pb::FileSource {
                        url: format!("https://{}", "u".repeat(MAX_URL_BYTES - 8)),
                        path: Some(path(i)),
                        size_bytes: Some(u64::MAX),
                        sha256: Some(sha.clone()),
                    })
                    .collect(),
            })),
            peers: (0..MAX_DOWNLOAD_SOURCES)
                .map(|_| pb::PeerSource {
                    address: "a".repeat(MAX_PEER_ADDRESS_BYTES),
                    hive_id: "h".repeat(crate::identity::MAX_HIVE_ID_LEN),
                    partial: true,
                })
                .collect(),
            peer_files: (0..MAX_MODEL_FILES)
                .map(|i| pb::ModelFile { path: path(i), size_bytes: u64::MAX, sha256: Some(sha.clone()) })
                .collect(),
        };
        let len = fetch.encoded_len();
        assert!(len <= MAX_FETCH_REQUEST_BYTES, "{len} > {MAX_FETCH_REQUEST_BYTES}");
        assert!(len + 64 >= MAX_FETCH_REQUEST_BYTES, "{len}: the bound {MAX_FETCH_REQUEST_BYTES} is loose");
        const { assert!(MAX_FETCH_REQUEST_BYTES > crate::grpc_server::MAX_DECODING_MESSAGE_BYTES) };
        let schedule = pb::ScheduleFetchRequest {
            fetch: Some(fetch),
            hive: "h".repeat(crate::identity::MAX_HIVE_ID_LEN),
            labels: (0..crate::labels::MAX_LABELS)
                .map(|i| {
                    let key = format!("{i:02}{}", "k".repeat(crate::labels::MAX_LABEL_KEY_BYTES - 2));
                    (key, "v".repeat(crate::labels::MAX_LABEL_VALUE_BYTES))
                })
                .collect(),
            all: true,
            no_peers: true,
        };
        let len = schedule.encoded_len();
        assert!(len <= MAX_SCHEDULE_FETCH_REQUEST_BYTES, "{len} > {MAX_SCHEDULE_FETCH_REQUEST_BYTES}");
    }

    #[test]
    fn ids_and_paths_are_checked() {
        assert!(check_model_id("llama-3.1-8b-q4").is_ok());
        assert!(check_model_id("org/repo").is_ok());
        for bad in
            ["", "../x", "a//b", "a/./b", "a b", "a--b", "/abs", ".partial", ".trash", "org/.hidden", "a/.."]
        {
            assert!(check_model_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_model_path("sub/model.safetensors").is_ok());
        for bad in
            ["x.part", "d/x.part", "x.part.json", "fetch.json", ".rbee-model.json", ".gitattributes", "d/.x"]
        {
            assert!(check_model_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_model_path("d/fetch.json").is_ok(), "only the top-level fetch.json is the hive's");
        assert!(check_commit(&"a".repeat(40)).is_ok());
        for bad in ["../../x", "", "abc", "zzzzzzzz"] {
            assert!(check_commit(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_sha256(&"A".repeat(64)), Ok("a".repeat(64)));
        assert!(check_sha256("abc").is_err());
    }

    #[test]
    fn hf_uris_parse() {
        assert_eq!(
            parse_hf("hf://org/repo@v1"),
            Ok(ModelSource::HuggingFace { repo: "org/repo".into(), revision: "v1".into() })
        );
        assert_eq!(
            parse_hf("hf://org/repo"),
            Ok(ModelSource::HuggingFace { repo: "org/repo".into(), revision: "main".into() })
        );
        assert!(parse_hf("hf://repo").is_err());
        assert!(parse_hf("http://x/y").is_err());
        assert!(parse_hf("hf://org/../x").is_err());
        assert!(parse_hf("hf://org/repo@../../x").is_err());
        assert!(parse_hf("hf://org/repo@refs/pr/1").is_ok());
    }

    #[test]
    fn url_paths() {
        assert_eq!(path_from_url("http://h/a/model.bin?x=1").as_deref(), Some("model.bin"));
        assert_eq!(path_from_url("http://h/"), None);
    }
}

/// How fast a hive reads model files, measured from its own preloads.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct ReadBandwidth {
    /// From pages that were not cached (the disk), bytes per second.
    pub disk_bytes_per_s: Option<f64>,
    /// From pages that were cached (RAM), bytes per second.
    pub ram_bytes_per_s: Option<f64>,
}
