//! The HTTP client downloads use (reqwest over rustls with ring: no OpenSSL), and the
//! headers of a ranged response.
//!
//! Every request goes through [`Fetcher::get`]: it checks each URL against the egress
//! rule (IP literals here, names in the rule's resolver), follows redirects itself so
//! that every hop is checked the same way, and sends `HF_TOKEN` only to a hop on the
//! Hub's own origin.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{self, HeaderMap};

use super::download_error::DownloadError;
use super::egress::EgressRule;
use super::hub::HubConfig;
use super::redact::redact_url;

/// A connection attempt longer than this fails (and is retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that delivers no byte for this long fails (and is retried from where it
/// stopped).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Redirects followed per request, like reqwest's default.
pub const MAX_REDIRECTS: usize = 10;
/// Most bytes of a redirect target shown in an error (a `Location` is the server's
/// text, not validated like the caller's URL).
const SHOWN_URL_BYTES: usize = 512;

/// `text` cut to [`SHOWN_URL_BYTES`] on a character boundary, marked when cut.
fn shown(text: &str) -> String {
    if text.len() <= SHOWN_URL_BYTES {
        return text.to_owned();
    }
    let mut end = SHOWN_URL_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... (cut)", &text[..end])
}

/// The client every download shares (one connection pool), bound to the egress rule.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// reqwest, resolving through the rule and following no redirect by itself.
    client: reqwest::Client,
    /// Where requests may go.
    rule: Arc<EgressRule>,
}

impl Fetcher {
    /// A client that fetches only where `rule` allows. Environment proxies are not
    /// used: the hive connects to the address it checked, itself.
    pub fn new(rule: EgressRule) -> Result<Self, reqwest::Error> {
        let rule = Arc::new(rule);
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("rbee-hive/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .dns_resolver(rule.resolver())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(Self { client, rule })
    }

    /// GETs `url` with `headers`, following up to [`MAX_REDIRECTS`] redirects. Each hop
    /// is checked against the egress rule before it is requested, and carries the Hub
    /// token only when it is on the Hub's origin.
    pub async fn get(
        &self,
        url: &str,
        headers: &HeaderMap,
        hub: &HubConfig,
    ) -> Result<reqwest::Response, DownloadError> {
        let mut at = reqwest::Url::parse(url)
            .map_err(|e| DownloadError::Resolve(format!("{}: not a URL: {e}", redact_url(url))))?;
        for _ in 0..=MAX_REDIRECTS {
            let hop = shown(&redact_url(at.as_str()));
            self.rule
                .check_url(&at)
                .map_err(|source| DownloadError::NotAllowed { url: hop.clone(), source })?;
            let request = hub.authorize(&at, self.client.get(at.clone()).headers(headers.clone()));
            let response = request.send().await.map_err(DownloadError::network(&hop))?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let Some(location) = text(response.headers(), header::LOCATION) else { return Ok(response) };
            at = at.join(&location).map_err(|e| DownloadError::Network {
                url: hop.clone(),
                reason: format!("a redirect to {:?} that is not a URL: {e}", shown(&redact_url(&location))),
            })?;
            tracing::debug!(from = %hop, to = %redact_url(at.as_str()), "following a redirect");
        }
        Err(DownloadError::Network {
            url: url.to_owned(),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }
}

/// `Content-Range: bytes START-END/TOTAL` as (start, total); total `None` for `*`.
pub fn content_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// A header's value as text.
pub fn text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_redirect_targets_are_cut_in_errors() {
        assert_eq!(shown("http://a/b"), "http://a/b");
        let long = format!("http://a/{}", "é".repeat(400));
        let cut = shown(&long);
        assert!(cut.ends_with("... (cut)") && cut.len() <= SHOWN_URL_BYTES + 9, "{}", cut.len());
    }

    #[test]
    fn content_ranges_parse() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, "bytes 100-199/1000".parse().unwrap());
        assert_eq!(content_range(&h), Some((100, Some(1000))));
        h.insert(header::CONTENT_RANGE, "bytes 5-9/*".parse().unwrap());
        assert_eq!(content_range(&h), Some((5, None)));
    }
}
