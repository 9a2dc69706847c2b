//! Hive addresses: the one normal form the fleet is keyed by.

use std::net::IpAddr;

use crate::QueenError;

/// Longest address accepted.
pub const MAX_ADDRESS_BYTES: usize = 256;

/// Normalises a hive address to `scheme://host:port`. A bare `host:port` means http.
pub fn normalize_address(raw: &str) -> Result<String, QueenError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(QueenError::InvalidArgument("address is empty".into()));
    }
    if s.len() > MAX_ADDRESS_BYTES {
        return Err(QueenError::InvalidArgument(format!(
            "address is {} bytes > {MAX_ADDRESS_BYTES}",
            s.len()
        )));
    }
    let full = if s.contains("://") { s.to_owned() } else { format!("http://{s}") };
    let bad = |why: &str| QueenError::InvalidArgument(format!("address {raw:?} {why}"));
    let uri: http::Uri = full.parse().map_err(|e| bad(&format!("is not a URL: {e}")))?;
    let scheme = uri.scheme_str().ok_or_else(|| bad("has no scheme"))?;
    if scheme != "http" && scheme != "https" {
        return Err(bad("must use http:// or https://"));
    }
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.port_u16().is_none() {
        return Err(bad("has no port (e.g. http://10.0.0.5:7835)"));
    }
    if authority.as_str().contains('@') {
        return Err(bad("must not carry credentials"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("must not have a path or query"));
    }
    Ok(format!("{scheme}://{}", authority.as_str().to_ascii_lowercase()))
}

/// True when a normalised address names a loopback IP or `localhost`.
pub fn is_loopback_address(address: &str) -> bool {
    let Ok(uri) = address.parse::<http::Uri>() else { return false };
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised() {
        assert_eq!(normalize_address("127.0.0.1:7835").unwrap(), "http://127.0.0.1:7835");
        assert_eq!(normalize_address(" http://Hive-1:7835/ ").unwrap(), "http://hive-1:7835");
        assert_eq!(normalize_address("https://[::1]:7835").unwrap(), "https://[::1]:7835");
    }

    #[test]
    fn bad_addresses_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("ftp://x:1", "http"),
            ("http://x", "no port"),
            ("http://x:1/path", "path"),
            ("http://u:p@x:1", "credentials"),
        ] {
            let err = normalize_address(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
