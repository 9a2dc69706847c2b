//! `hf://org/repo[@revision]`: the file list of a Hugging Face Hub repository, through
//! the Hub HTTP API (`GET {HF_ENDPOINT}/api/models/{repo}/revision/{revision}?blobs=true`),
//! pinned to the commit it answers with, and downloaded from
//! `{HF_ENDPOINT}/{repo}/resolve/{commit}/{file}`. `HF_TOKEN` is sent as a bearer token
//! to the endpoint only.

use rbee_shared::FileSource;
use rbee_shared::model::{check_commit, check_model_path, check_revision};
use serde::Deserialize;

use super::download::DownloadError;

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where the Hub is and how to authenticate (from `HF_ENDPOINT` and `HF_TOKEN`).
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL without a trailing slash.
    pub endpoint: String,
    /// Bearer token, if any.
    pub token: Option<String>,
}

impl HubConfig {
    /// Reads `HF_ENDPOINT` and `HF_TOKEN`.
    pub fn from_env() -> Self {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let token = std::env::var("HF_TOKEN").ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        Self { endpoint: endpoint.trim_end_matches('/').to_owned(), token }
    }

    /// Adds the token to a request for a URL on the endpoint.
    pub fn authorize(&self, url: &str, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) if url.starts_with(&self.endpoint) => request.bearer_auth(token),
            _ => request,
        }
    }
}

#[derive(Debug, Deserialize)]
struct RepoInfo {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<Sibling>,
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

/// Lists the repository's files at `revision`.
pub async fn resolve(
    client: &reqwest::Client,
    hub: &HubConfig,
    repo: &str,
    revision: &str,
) -> Result<Vec<FileSource>, DownloadError> {
    check_revision(revision).map_err(|e| DownloadError::Resolve(e.0))?;
    let url = format!("{}/api/models/{repo}/revision/{revision}?blobs=true", hub.endpoint);
    let response =
        hub.authorize(&url, client.get(&url)).send().await.map_err(DownloadError::network(&url))?;
    let status = response.status();
    if !status.is_success() {
        return Err(DownloadError::Status { url, status: status.as_u16() });
    }
    let body = response.bytes().await.map_err(DownloadError::network(&url))?;
    let info: RepoInfo = serde_json::from_slice(&body)
        .map_err(|e| DownloadError::Resolve(format!("{url}: not a Hub repository listing: {e}")))?;
    let commit = match info.sha {
        Some(sha) => {
            check_commit(&sha)
                .map_err(|e| DownloadError::Resolve(format!("{url}: the Hub answered {}", e.0)))?;
            sha
        }
        None => revision.to_owned(),
    };
    if info.siblings.is_empty() {
        return Err(DownloadError::Resolve(format!("{url}: the repository has no files")));
    }
    let files = info
        .siblings
        .into_iter()
        // Hidden files (`.gitattributes`, `.github/...`) are repository metadata, not
        // model files; the hive keeps hidden names for its own records.
        .filter(|s| !s.rfilename.split('/').any(|seg| seg.starts_with('.')))
        .map(|s| {
            check_model_path(&s.rfilename)
                .map_err(|e| DownloadError::Resolve(format!("file {:?}: {}", s.rfilename, e.0)))?;
            let (size, sha256) = match s.lfs {
                Some(lfs) => (lfs.size.or(s.size), lfs.sha256.map(|h| h.to_ascii_lowercase())),
                None => (s.size, None),
            };
            Ok(FileSource {
                url: format!("{}/{repo}/resolve/{commit}/{}", hub.endpoint, s.rfilename),
                path: s.rfilename,
                size_bytes: size,
                sha256,
            })
        })
        .collect::<Result<Vec<_>, DownloadError>>()?;
    if files.iter().filter_map(|f| f.size_bytes).try_fold(0u64, u64::checked_add).is_none() {
        return Err(DownloadError::Resolve(format!("{url}: the file sizes add up past 2^64 bytes")));
    }
    Ok(files)
}
