//! `hf://org/repo[@revision]`: the file list of a Hugging Face Hub repository, through
//! the Hub HTTP API (`GET {HF_ENDPOINT}/api/models/{repo}/revision/{revision}?blobs=true`),
//! pinned to the commit it answers with, and downloaded from
//! `{HF_ENDPOINT}/{repo}/resolve/{commit}/{file}`. `HF_TOKEN` is sent as a bearer token
//! only to the endpoint's origin (same scheme, host and port), never to a redirect
//! elsewhere (the Hub's CDN). The listing is read up to [`MAX_LISTING_BYTES`] and may
//! name at most [`MAX_MODEL_FILES`] files, the cap `FetchModel` applies to URL lists.

use rbee_shared::FileSource;
use rbee_shared::model::{MAX_MODEL_FILES, check_commit, check_model_path, check_revision, check_sha256};
use serde::Deserialize;

use super::download_error::DownloadError;
use super::http::Fetcher;
use super::redact::redact_url;
// The endpoint and its credential live in `hub`, below both this file and the
// downloader that also sends to the Hub.
pub use super::hub::{DEFAULT_ENDPOINT, EndpointError, HubConfig};

/// The most bytes of a repository listing the hive reads (16 MiB: a listing of
/// [`MAX_MODEL_FILES`] files is far smaller).
pub const MAX_LISTING_BYTES: u64 = 16 << 20;

/// Why a Hub listing entry is refused (the file's name quoted and cut).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Its path breaks the model path rules.
    #[error("file {name}: {reason}")]
    Path {
        /// The file.
        name: String,
        /// Which rule.
        reason: String,
    },
    /// Its `lfs.sha256` is not a SHA-256.
    #[error("file {0}: lfs.sha256 is not 64 hex digits")]
    Sha256(String),
    /// The files cannot all be written.
    #[error(transparent)]
    Set(#[from] super::layout::FileSetError),
}

#[derive(Debug, Deserialize)]
struct RepoInfo {
    sha: Option<String>,
    #[serde(default)]
    siblings: Siblings,
}

/// The listing's model files (hidden names dropped while parsing), refused while
/// parsing at the first file past [`MAX_MODEL_FILES`]: a long listing costs no more
/// memory than a model may have files.
#[derive(Debug, Default)]
struct Siblings(Vec<Sibling>);

/// The parse error a listing past [`MAX_MODEL_FILES`] ends with.
fn too_many_files() -> String {
    format!(
        "the repository lists at least {} files, more than the {MAX_MODEL_FILES} a model may have",
        MAX_MODEL_FILES + 1
    )
}

impl<'de> Deserialize<'de> for Siblings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Siblings;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of files")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Siblings, A::Error> {
                let mut files = Vec::new();
                while let Some(s) = seq.next_element::<Sibling>()? {
                    // Hidden files (`.gitattributes`, `.github/...`) are repository
                    // metadata, not model files; the hive keeps hidden names for its
                    // own records.
                    if s.rfilename.split('/').any(|seg| seg.starts_with('.')) {
                        continue;
                    }
                    if files.len() == MAX_MODEL_FILES {
                        return Err(serde::de::Error::custom(too_many_files()));
                    }
                    files.push(s);
                }
                Ok(Siblings(files))
            }
        }
        deserializer.deserialize_seq(Visitor)
    }
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    lfs: Option<Lfs>,
}

#[derive(Debug, Deserialize)]
struct Lfs {
    sha256: Option<String>,
    size: Option<u64>,
}

use super::layout::shown_name;

/// One listing entry as a file to fetch, its path and hash checked.
fn file_source(s: Sibling, base: &str) -> Result<FileSource, EntryError> {
    let name = || shown_name(&s.rfilename);
    check_model_path(&s.rfilename).map_err(|e| EntryError::Path { name: name(), reason: e.0 })?;
    let (size, sha256) = match s.lfs {
        Some(lfs) => {
            let sha256 =
                lfs.sha256.map(|h| check_sha256(&h).map_err(|_| EntryError::Sha256(name()))).transpose()?;
            (lfs.size.or(s.size), sha256)
        }
        None => (s.size, None),
    };
    Ok(FileSource { url: format!("{base}/{}", s.rfilename), path: s.rfilename, size_bytes: size, sha256 })
}

/// Reads a response body of at most `limit` bytes, chunk by chunk: a longer one (by
/// its Content-Length or by what arrives) fails before more than `limit` bytes are kept.
async fn read_capped(
    mut response: reqwest::Response,
    url: &str,
    limit: u64,
) -> Result<Vec<u8>, DownloadError> {
    let too_big = || DownloadError::Resolve(format!("{url}: the Hub listing is larger than {limit} bytes"));
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(DownloadError::network(url))? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Lists the repository's files at `revision`.
pub async fn resolve(
    client: &Fetcher,
    hub: &HubConfig,
    repo: &str,
    revision: &str,
) -> Result<Vec<FileSource>, DownloadError> {
    check_revision(revision).map_err(|e| DownloadError::Resolve(e.0))?;
    // `hive serve` refuses such an endpoint at start; a hive embedded elsewhere (the
    // queen's local hive) meets the same rule here, before any request.
    hub.check().map_err(|e| DownloadError::Resolve(e.to_string()))?;
    let url = format!("{}/api/models/{repo}/revision/{revision}?blobs=true", hub.endpoint);
    let shown = redact_url(&url);
    let response = client.get(&url, &reqwest::header::HeaderMap::new(), hub).await?;
    let status = response.status();
    if !status.is_success() {
        return Err(DownloadError::Status { url, status: status.as_u16() });
    }
    let body = read_capped(response, &shown, MAX_LISTING_BYTES).await?;
    let info: RepoInfo = serde_json::from_slice(&body).map_err(|e| {
        let too_many = too_many_files();
        match e.to_string().contains(&too_many) {
            true => DownloadError::Resolve(format!("{shown}: {too_many}")),
            false => DownloadError::Resolve(format!("{shown}: not a Hub repository listing: {e}")),
        }
    })?;
    drop(body);
    let commit = match info.sha {
        Some(sha) => {
            check_commit(&sha).map_err(|_| {
                DownloadError::Resolve(format!(
                    "{shown}: the Hub answered the commit {}, not 7..=64 hex digits",
                    shown_name(&sha)
                ))
            })?;
            sha
        }
        None => revision.to_owned(),
    };
    if info.siblings.0.is_empty() {
        return Err(DownloadError::Resolve(format!("{shown}: the repository has no model files")));
    }
    let base = format!("{}/{repo}/resolve/{commit}", hub.endpoint);
    let files = info
        .siblings
        .0
        .into_iter()
        .map(|s| file_source(s, &base))
        .collect::<Result<Vec<_>, EntryError>>()
        .and_then(|files| {
            super::layout::check_file_set(files.iter().map(|f| f.path.as_str()))?;
            Ok(files)
        })
        .map_err(|e| DownloadError::Resolve(format!("{shown}: {e}")))?;
    if files.iter().filter_map(|f| f.size_bytes).try_fold(0u64, u64::checked_add).is_none() {
        return Err(DownloadError::Resolve(format!("{shown}: the file sizes add up past 2^64 bytes")));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(endpoint: &str) -> HubConfig {
        HubConfig { endpoint: endpoint.into(), token: Some("hf_secret".into()) }
    }

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn an_endpoint_with_credentials_is_refused_without_showing_them() {
        assert_eq!(hub("https://huggingface.co").check(), Ok(()));
        assert_eq!(hub("http://127.0.0.1:8080/hub").check(), Ok(()));
        for bad in ["http://user:PW@mirror.example", "https://PW@mirror.example/", "ftp://mirror", "mirror"] {
            let e = hub(bad).check().expect_err(bad).to_string();
            assert!(e.contains("HF_ENDPOINT") && !e.contains("PW"), "{bad}: {e}");
        }
    }

    #[test]
    fn listing_entries_are_checked_like_url_sources() {
        let entry = |name: &str, sha: &str| Sibling {
            rfilename: name.into(),
            size: Some(1),
            lfs: Some(Lfs { sha256: Some(sha.into()), size: Some(1) }),
        };
        let ok = "A".repeat(64);
        let f = file_source(entry("w.bin", &ok), "http://h/r").unwrap();
        assert_eq!(f.sha256.as_deref(), Some("a".repeat(64).as_str()));
        assert_eq!(f.url, "http://h/r/w.bin");
        let huge = "Z".repeat(1 << 20);
        for (name, sha, want) in [
            ("w.bin", huge.as_str(), "lfs.sha256 is not 64 hex digits"),
            ("w.bin", "abc", "lfs.sha256"),
            ("w.bin", &"g".repeat(64), "lfs.sha256"),
            (&"n".repeat(1 << 20), ok.as_str(), "must be 1..="),
        ] {
            let e = file_source(entry(name, sha), "http://h/r").unwrap_err().to_string();
            assert!(e.contains(want) && e.len() < 400, "{want}: {} bytes: {:.200}", e.len(), e);
        }
        let files = |paths: &[&str]| -> Vec<FileSource> {
            paths.iter().map(|p| file_source(entry(p, &ok), "http://h").unwrap()).collect()
        };
        let check_files =
            |f: &[FileSource]| super::super::layout::check_file_set(f.iter().map(|f| f.path.as_str()));
        assert_eq!(check_files(&files(&["a", "b/c", "b/d"])), Ok(()));
        let e = check_files(&files(&["w", "v", "w"])).unwrap_err().to_string();
        assert!(e.contains("\"w\" appears twice"), "{e}");
        let e = check_files(&files(&["x/y/z", "x"])).unwrap_err().to_string();
        assert!(e.contains("\"x\" is also the directory of file \"x/y/z\""), "{e}");
        let e = check_files(&files(&["x/y", "x/y/z"])).unwrap_err().to_string();
        assert!(e.contains("\"x/y\" is also the directory"), "{e}");
    }

    #[test]
    fn a_listing_is_refused_while_parsing_at_the_first_file_past_the_cap() {
        let entry = |i: usize| format!(r#"{{"rfilename":"f{i}"}}"#);
        let listing = |n: usize, hidden: usize| {
            let mut all: Vec<String> = (0..hidden).map(|i| format!(r#"{{"rfilename":".h{i}"}}"#)).collect();
            all.extend((0..n).map(entry));
            format!(r#"{{"sha":"0123abcd","siblings":[{}]}}"#, all.join(","))
        };
        let info: RepoInfo = serde_json::from_str(&listing(MAX_MODEL_FILES, 3)).unwrap();
        assert_eq!(info.siblings.0.len(), MAX_MODEL_FILES, "hidden files do not count");
        // The error comes at the entry past the cap, not at the end of the list: the
        // rest (here a syntax error) is never read.
        let mut long = listing(MAX_MODEL_FILES + 1, 0);
        long.truncate(long.len() - 2);
        long.push_str(",this is not json");
        let e = serde_json::from_str::<RepoInfo>(&long).unwrap_err().to_string();
        assert!(e.contains(&too_many_files()), "{e}");
        let info: RepoInfo = serde_json::from_str(r#"{"sha":"0123abcd"}"#).unwrap();
        assert!(info.siblings.0.is_empty());
    }

    #[test]
    fn the_token_goes_only_to_the_endpoints_exact_origin() {
        let h = hub("https://huggingface.co");
        assert!(h.is_origin_of(&url("https://huggingface.co/api/models/x")));
        assert!(h.is_origin_of(&url("https://HuggingFace.co:443/org/repo/resolve/abc/f")));
        for other in [
            "https://huggingface.co.evil.example/api/models/x",
            "https://huggingface.co@evil.example/x",
            "https://evil.example/huggingface.co",
            "http://huggingface.co/api/models/x",
            "https://huggingface.co:8443/x",
            "https://cdn-lfs.huggingface.co/x",
        ] {
            assert!(!h.is_origin_of(&url(other)), "{other} is another origin");
        }
        // A port whose decimal starts with the endpoint's is another port.
        let h = hub("http://127.0.0.1:2880");
        assert!(h.is_origin_of(&url("http://127.0.0.1:2880/api")));
        assert!(!h.is_origin_of(&url("http://127.0.0.1:28801/api")));
        assert!(!hub("not a url").is_origin_of(&url("http://127.0.0.1/")));
    }
}
