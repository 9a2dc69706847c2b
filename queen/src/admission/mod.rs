//! Which hive addresses the queen will dial. Every address that comes from the network
//! — `AddHive` (a write-token holder) and `Announce` (a hive) — passes through
//! [`admit_address`]: the one place where the allow-list is enforced. Only the queen's own
//! configuration (`--hive`, the config file's `[[hive]]`, the local hive) is dialed
//! without it: whoever writes that file already decides what the queen dials.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use rbee_shared::lock::MutexExt;

use crate::QueenError;
use crate::fleet::address::normalize_address;
use crate::link::DialGuard;

/// Default bound on open `WatchFleet` streams. A reader that never reads pins at most
/// about 400 KiB of unsent events in the HTTP/2 layer, so this bounds that memory to
/// about 50 MiB.
pub const DEFAULT_MAX_WATCHERS: usize = 128;

/// Which hives the API may add or may announce themselves, and how often.
#[derive(Debug, Clone)]
pub struct AdmissionSettings {
    /// Networks that hives added over the API or announced may be in.
    pub allow: AllowList,
    /// Most Announce calls per second (burst of twice that).
    pub announce_rate: u32,
    /// Most `WatchFleet` streams open at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_watchers: usize,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self { allow: AllowList::default(), announce_rate: 20, max_watchers: DEFAULT_MAX_WATCHERS }
    }
}

/// Networks that hives added over the API or announced may be in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    /// The allowed networks.
    nets: Vec<IpNet>,
}

impl Default for AllowList {
    /// Loopback only.
    fn default() -> Self {
        Self::new(vec!["127.0.0.0/8".parse().expect("valid"), "::1/128".parse().expect("valid")])
    }
}

impl AllowList {
    /// An allow-list of these networks.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self { nets }
    }

    /// The guard the link checks at every dial of a hive from the network.
    pub fn dial_guard(&self) -> DialGuard {
        let list = self.clone();
        DialGuard::new(self.describe(), move |ip| list.allows(ip))
    }

    /// The networks, as `[a, b]`.
    fn describe(&self) -> String {
        let nets: Vec<String> = self.nets.iter().map(ToString::to_string).collect();
        format!("[{}]", nets.join(", "))
    }

    fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Checks a normalised address: every IP it resolves to must be allowed.
    pub async fn check(&self, address: &str) -> Result<(), QueenError> {
        let uri: http::Uri =
            address.parse().map_err(|e| QueenError::InvalidArgument(format!("address {address:?}: {e}")))?;
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(0);
        let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let lookup =
                    tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host((host, port))).await;
                match lookup {
                    Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
                    _ => {
                        return Err(QueenError::PermissionDenied(format!(
                            "address {address} does not resolve, so it cannot be checked against the allow-list"
                        )));
                    }
                }
            }
        };
        if ips.is_empty() {
            return Err(QueenError::PermissionDenied(format!("address {address} resolves to nothing")));
        }
        if let Some(ip) = ips.iter().find(|ip| !self.allows(**ip)) {
            return Err(QueenError::PermissionDenied(format!(
                "address {address} ({ip}) is outside the allow-list {} (--allow); the queen will not dial it",
                self.describe()
            )));
        }
        Ok(())
    }
}

/// A token bucket: at most `per_second` on average, bursts of twice that.
#[derive(Debug)]
pub struct RateLimit {
    /// Refill rate.
    per_second: f64,
    /// Bucket size.
    burst: f64,
    /// Tokens left and when they were counted.
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl RateLimit {
    /// A bucket refilling `per_second`.
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            burst: per_second * 2.0,
            state: std::sync::Mutex::new((per_second * 2.0, std::time::Instant::now())),
        }
    }

    /// Takes one token if there is one.
    pub fn try_acquire(&self) -> bool {
        let mut s = self.state.lock_unpoisoned();
        let now = std::time::Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.per_second).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Admits an address from the network (`AddHive` or `Announce`): normalises it and
/// checks the allow-list. Returns the address to dial.
pub async fn admit_address(allow: &AllowList, address: &str) -> Result<String, QueenError> {
    let address = normalize_address(address)?;
    allow.check(&address).await?;
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_default_allows_loopback_only() {
        let allow = AllowList::default();
        assert!(admit_address(&allow, "127.0.0.1:7835").await.is_ok());
        assert!(admit_address(&allow, "[::1]:7835").await.is_ok());
        assert!(admit_address(&allow, "localhost:7835").await.is_ok());
        let err = admit_address(&allow, "10.1.2.3:7835").await.unwrap_err();
        assert!(matches!(err, QueenError::PermissionDenied(_)));
        assert!(err.to_string().contains("allow-list"), "{err}");
        assert!(admit_address(&allow, "[::ffff:10.1.2.3]:7835").await.is_err());
    }

    #[tokio::test]
    async fn a_configured_network_is_allowed() {
        let allow = AllowList::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(admit_address(&allow, "10.1.2.3:7835").await.is_ok());
        assert!(admit_address(&allow, "127.0.0.1:7835").await.is_err());
    }

    #[tokio::test]
    async fn aliases_are_checked_as_the_address_they_name() {
        let allow = AllowList::new(vec!["10.0.0.0/8".parse().unwrap()]);
        for alias in ["127.1:1", "2130706433:1", "[::ffff:127.0.0.1]:1", "0x7f.1:1", "169.254.169.254:80"] {
            let err = admit_address(&allow, alias).await.unwrap_err();
            assert!(err.to_string().contains("outside the allow-list"), "{alias}: {err}");
        }
        assert_eq!(admit_address(&allow, "167772161:1").await.unwrap(), "http://10.0.0.1:1");
    }
}
