//! Hive addresses: the one normal form the fleet is keyed by.
//!
//! Two spellings of one endpoint must be one key, or one hive becomes several. The
//! normal form is `scheme://host:port` where
//! - the scheme is `http` (also for a bare `host:port`) or `https`, lowercase;
//! - an IPv4 host is dotted decimal, whatever form it was written in: the shorthand
//!   `127.1`, one integer `2130706433`, hex `0x7f.1` or octal `0177.0.0.1` parts (the
//!   forms `inet_aton` and so every resolver accept);
//! - an IPv6 host is bracketed in its compressed lowercase form, and an IPv4-mapped one
//!   (`[::ffff:127.0.0.1]`) is its IPv4 address;
//! - a name is lowercase, without the trailing root dot (`Hive-1.` is `hive-1`);
//! - the port is always written, as a plain number (`07835` is `7835`); there is no
//!   default port, so `http://x` is refused rather than guessed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::QueenError;

/// Longest address accepted.
pub const MAX_ADDRESS_BYTES: usize = 256;

/// Normalises a hive address to `scheme://host:port` (see the module docs). A bare
/// `host:port` means http.
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
    let scheme = uri.scheme_str().ok_or_else(|| bad("has no scheme"))?.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad("must use http:// or https://"));
    }
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not carry credentials"));
    }
    let port = match authority.port_u16() {
        None => return Err(bad("has no port (e.g. http://10.0.0.5:7835)")),
        Some(0) => return Err(bad("has port 0")),
        Some(p) => p,
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("must not have a path or query"));
    }
    let host = normalize_host(authority.host()).map_err(|why| bad(&why.to_string()))?;
    Ok(format!("{scheme}://{host}:{port}"))
}

/// Why a host cannot be normalised (completes "address ... ").
#[derive(Debug, thiserror::Error)]
enum HostError {
    /// Brackets around something that is not an IPv6 address.
    #[error("has a bad IPv6 address [{0}]")]
    BadIpv6(String),
    /// A name with an empty label (`a..b`, `.a`).
    #[error("has an empty host name label")]
    EmptyLabel,
    /// A name whose last label is numeric, but which is no IPv4 address.
    #[error("has host {0:?}, which is not a valid IPv4 address")]
    BadIpv4(String),
}

/// The normal form of a host: an IP in its canonical spelling (IPv6 bracketed), or a
/// lowercase name without the trailing dot.
fn normalize_host(host: &str) -> Result<String, HostError> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let v6: Ipv6Addr = inner.parse().map_err(|_| HostError::BadIpv6(inner.to_owned()))?;
        return Ok(match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("[{v6}]"),
        });
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if name.is_empty() || name.starts_with('.') || name.contains("..") {
        return Err(HostError::EmptyLabel);
    }
    // As in the WHATWG URL rules: a name whose last label is a number is an IPv4
    // address in one of inet_aton's forms, or invalid; it is never looked up by name.
    let last = name.rsplit('.').next().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) || ipv4_part(last).is_some() {
        return ipv4_number_form(&name)
            .map(|ip| ip.to_string())
            .ok_or_else(|| HostError::BadIpv4(host.to_owned()));
    }
    Ok(name)
}

/// One part of an inet_aton address: decimal, `0x` hex, or octal with a leading 0.
fn ipv4_part(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if digits.is_empty() {
        // "0x" alone is zero for inet_aton.
        return (radix == 16).then_some(0);
    }
    if digits.len() > 12 || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// An IPv4 address written as inet_aton accepts it: `a`, `a.b`, `a.b.c` or `a.b.c.d`,
/// where the last part fills the remaining bytes.
fn ipv4_number_form(s: &str) -> Option<Ipv4Addr> {
    let parts = s.split('.').map(ipv4_part).collect::<Option<Vec<u64>>>()?;
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 || leading.iter().any(|p| *p > 255) {
        return None;
    }
    let room = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << room {
        return None;
    }
    let high = leading.iter().enumerate().fold(0u64, |acc, (i, p)| acc | (p << (24 - 8 * i)));
    u32::try_from(high | last).ok().map(Ipv4Addr::from)
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
    use proptest::prelude::*;

    #[test]
    fn addresses_are_normalised() {
        assert_eq!(normalize_address("127.0.0.1:7835").unwrap(), "http://127.0.0.1:7835");
        assert_eq!(normalize_address(" http://Hive-1:7835/ ").unwrap(), "http://hive-1:7835");
        assert_eq!(normalize_address("https://[::1]:7835").unwrap(), "https://[::1]:7835");
    }

    #[test]
    fn loopback_aliases_are_one_address() {
        for alias in [
            "127.0.0.1:7835",
            "127.1:7835",
            "2130706433:7835",
            "[::ffff:127.0.0.1]:7835",
            "http://[::FFFF:7f00:1]:7835",
            "0x7f.1:7835",
            "0177.0.0.1:7835",
            "127.0.1:7835",
            "127.0.0.1.:7835",
            "HTTP://127.0.0.1:07835/",
        ] {
            assert_eq!(normalize_address(alias).unwrap(), "http://127.0.0.1:7835", "{alias}");
        }
    }

    #[test]
    fn names_and_ipv6_have_one_spelling() {
        assert_eq!(normalize_address("Hive-1.Example.COM.:7835").unwrap(), "http://hive-1.example.com:7835");
        assert_eq!(
            normalize_address("https://[2001:DB8:0:0::1]:7835").unwrap(),
            "https://[2001:db8::1]:7835"
        );
        assert_eq!(normalize_address("[0:0:0:0:0:0:0:1]:1").unwrap(), "http://[::1]:1");
        // A name with digits is still a name; only a numeric last label means IPv4.
        assert_eq!(normalize_address("gpu7.rack2:1").unwrap(), "http://gpu7.rack2:1");
        assert_eq!(normalize_address("0xhive:1").unwrap(), "http://0xhive:1");
    }

    #[test]
    fn bad_addresses_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("ftp://x:1", "http"),
            ("http://x", "no port"),
            ("http://x:0", "port 0"),
            ("http://x:1/path", "path"),
            ("http://u:p@x:1", "credentials"),
            ("256.0.0.1:1", "not a valid IPv4"),
            ("1.2.3.4.5:1", "not a valid IPv4"),
            ("4294967296:1", "not a valid IPv4"),
            ("hive.09:1", "not a valid IPv4"),
            ("a..b:1", "empty host name label"),
        ] {
            let err = normalize_address(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    proptest! {
        #[test]
        fn every_spelling_of_an_ipv4_address_is_one_key(ip in any::<u32>(), port in 1u16..) {
            let v4 = Ipv4Addr::from(ip);
            let [a, b, c, d] = v4.octets();
            let want = format!("http://{v4}:{port}");
            let spellings = [
                format!("{v4}:{port}"),
                format!("{ip}:{port}"),
                format!("{ip:#x}:{port}"),
                format!("{a}.{}:{port}", ip & 0x00ff_ffff),
                format!("{a}.{b}.{}:{port}", u32::from(c) << 8 | u32::from(d)),
                format!("0{a:o}.{b}.{c}.{d}:{port}"),
                format!("[::ffff:{v4}]:{port}"),
                format!("HTTP://{v4}.:{port:05}/"),
            ];
            for s in spellings {
                prop_assert_eq!(normalize_address(&s).unwrap(), want.clone(), "{}", s);
            }
        }

        #[test]
        fn the_normal_form_is_a_fixed_point(raw in "[a-zA-Z0-9.:\\[\\]/-]{1,40}") {
            if let Ok(once) = normalize_address(&raw) {
                prop_assert_eq!(normalize_address(&once).unwrap(), once);
            }
        }
    }
}
