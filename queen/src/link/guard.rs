//! The allow-list for dialing hives that came from the network (`AddHive`, `Announce`):
//! which IPs may be dialed, checked on the addresses a name resolves to at each dial.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::error::GuardError;

/// Which IPs the queen may dial for a hive that came from the network (the allow-list).
#[derive(Clone)]
pub struct DialGuard {
    /// True for an IP that may be dialed.
    allows: Arc<dyn Fn(IpAddr) -> bool + Send + Sync>,
    /// What is allowed, for refusals ("[10.0.0.0/8]").
    allowed: Arc<str>,
}

impl std::fmt::Debug for DialGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialGuard").field("allowed", &self.allowed).finish_non_exhaustive()
    }
}

impl DialGuard {
    /// A guard that allows the IPs `allows` accepts, described as `allowed`.
    pub fn new(allowed: impl Into<String>, allows: impl Fn(IpAddr) -> bool + Send + Sync + 'static) -> Self {
        Self { allows: Arc::new(allows), allowed: Arc::from(allowed.into()) }
    }

    /// Resolves `host:port` and returns its addresses if every one is allowed.
    pub(super) async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, GuardError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| GuardError::Unresolvable { host: host.to_owned() })?
            .collect();
        if addrs.is_empty() {
            return Err(GuardError::NoAddress { host: host.to_owned() });
        }
        if let Some(outside) = addrs.iter().find(|a| !(self.allows)(a.ip())) {
            return Err(GuardError::Outside {
                host: host.to_owned(),
                ip: outside.ip(),
                allowed: self.allowed.to_string(),
            });
        }
        Ok(addrs)
    }
}
