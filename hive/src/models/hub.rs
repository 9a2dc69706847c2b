//! Where the Hugging Face Hub is (`HF_ENDPOINT`) and its credential (`HF_TOKEN`): read
//! once, checked at start, and sent only to the endpoint's origin. Below both the Hub
//! listing (`hf`) and the downloader, which both send requests to the Hub.

use super::redact::redact_url;

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

    /// Checks the endpoint at start: an `http(s)` URL with a host and without userinfo.
    /// Credentials in `HF_ENDPOINT` (`https://user:pw@mirror/`) are refused rather than
    /// sent: reqwest would send them as Basic auth with every Hub request, and the URL
    /// would reach errors and logs; `HF_TOKEN` is the Hub's credential.
    pub fn check(&self) -> Result<(), EndpointError> {
        let shown = || redact_url(&self.endpoint);
        let url = reqwest::Url::parse(&self.endpoint)
            .map_err(|e| EndpointError::NotUrl { shown: shown(), reason: e.to_string() })?;
        if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
            return Err(EndpointError::NotHttp(shown()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EndpointError::Credentials(shown()));
        }
        Ok(())
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

/// Why `HF_ENDPOINT` cannot be used (the endpoint shown redacted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL.
    #[error("HF_ENDPOINT {shown:?} is not a URL: {reason}")]
    NotUrl {
        /// The endpoint, redacted.
        shown: String,
        /// Why.
        reason: String,
    },
    /// Not http(s), or without a host.
    #[error("HF_ENDPOINT {0:?} must be an http(s) URL with a host")]
    NotHttp(String),
    /// It holds userinfo.
    #[error("HF_ENDPOINT {0:?} holds credentials (user:password@): they are not sent; use HF_TOKEN")]
    Credentials(String),
}
