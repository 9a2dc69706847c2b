//! `hf://org/repo[@revision]`: the file list of a Hugging Face Hub repository, through
//! the Hub HTTP API (`GET {HF_ENDPOINT}/api/models/{repo}/revision/{revision}?blobs=true`),
//! pinned to the commit it answers with, and downloaded from
//! `{HF_ENDPOINT}/{repo}/resolve/{commit}/{file}`. `HF_TOKEN` is sent as a bearer token
//! only to the endpoint's origin (same scheme, host and port), never to a redirect
//! elsewhere (the Hub's CDN). The listing is read up to [`MAX_LISTING_BYTES`] and may
//! name at most [`MAX_MODEL_FILES`] files, the cap `FetchModel` applies to URL lists.

use rbee_shared::FileSource;
use rbee_shared::model::{MAX_MODEL_FILES, check_commit, check_model_path, check_revision};
use serde::Deserialize;

use super::download::DownloadError;
use super::http::Fetcher;

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The most bytes of a repository listing the hive reads (16 MiB: a listing of
/// [`MAX_MODEL_FILES`] files is far smaller).
pub const MAX_LISTING_BYTES: u64 = 16 << 20;

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

    /// Adds the token to a request for `url` when `url` is on the endpoint's origin.
    pub fn authorize(&self, url: &reqwest::Url, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) if self.is_origin_of(url) => request.bearer_auth(token),
            _ => request,
        }
    }

    /// Whether `url` has the endpoint's scheme, host and port (default ports filled in),
    /// compared as parsed URLs, never as text prefixes.
    pub fn is_origin_of(&self, url: &reqwest::Url) -> bool {
        let Ok(endpoint) = reqwest::Url::parse(&self.endpoint) else { return false };
        endpoint.host().is_some()
            && endpoint.scheme() == url.scheme()
            && endpoint.host() == url.host()
            && endpoint.port_or_known_default() == url.port_or_known_default()
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
    let url = format!("{}/api/models/{repo}/revision/{revision}?blobs=true", hub.endpoint);
    let response = client.get(&url, &reqwest::header::HeaderMap::new(), hub).await?;
    let status = response.status();
    if !status.is_success() {
        return Err(DownloadError::Status { url, status: status.as_u16() });
    }
    let body = read_capped(response, &url, MAX_LISTING_BYTES).await?;
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
    if files.is_empty() {
        return Err(DownloadError::Resolve(format!("{url}: the repository has no model files")));
    }
    if files.len() > MAX_MODEL_FILES {
        return Err(DownloadError::Resolve(format!(
            "{url}: the repository has {} files, more than the {MAX_MODEL_FILES} a model may have",
            files.len()
        )));
    }
    if files.iter().filter_map(|f| f.size_bytes).try_fold(0u64, u64::checked_add).is_none() {
        return Err(DownloadError::Resolve(format!("{url}: the file sizes add up past 2^64 bytes")));
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
