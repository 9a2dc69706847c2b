//! The HTTP client downloads use (reqwest over rustls with ring: no OpenSSL), and the
//! headers of a ranged response.

use std::time::Duration;

use reqwest::header::{self, HeaderMap};

/// A connection attempt longer than this fails (and is retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that delivers no byte for this long fails (and is retried from where it
/// stopped).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The client every download shares (one connection pool).
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(concat!("rbee-hive/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
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
    fn content_ranges_parse() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, "bytes 100-199/1000".parse().unwrap());
        assert_eq!(content_range(&h), Some((100, Some(1000))));
        h.insert(header::CONTENT_RANGE, "bytes 5-9/*".parse().unwrap());
        assert_eq!(content_range(&h), Some((5, None)));
    }
}
