//! Where the hive may fetch from: the egress rule every download and Hub request obeys.
//!
//! By default a destination is refused when its *resolved* address is loopback,
//! link-local (every cloud metadata address among them), private (RFC 1918, ULA),
//! CGNAT, multicast, unspecified, broadcast or otherwise reserved, including the IPv6
//! forms that carry such an IPv4 address (IPv4-mapped, NAT64, 6to4), and when it is
//! one of the hive's own interface addresses (a public address of the host reaches the
//! host's own services). `--download-allow` opens networks (CIDR) or host names, e.g. an
//! internal mirror; a name never opens link-local (cloud metadata) addresses, and a
//! CIDR with bits set past its prefix is refused as the typo it is.
//!
//! A refusal names the host only: a refused name and a name that does not resolve read
//! the same (the cause is logged at DEBUG), so refusals tell a caller nothing about the
//! hive's network.
//!
//! The check runs on addresses, never on the URL's text: spellings such as
//! `2852039166`, `0xa9.0xfe.0xa9.0xfe` or `169.254.169.254.` are parsed into the
//! address they name first. Host names go through [`CheckedResolver`], which resolves
//! once, drops refused addresses and hands the checked ones to the connector (so DNS
//! rebinding cannot swap the address after the check). IP-literal hosts skip a resolver
//! in reqwest, so [`EgressRule::check_url`] checks them before each request and each
//! redirect hop.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// A refused destination. Says which host, and nothing about what answers there nor
/// what the name resolved to: a refused name and a name that does not resolve read the
/// same, so that refusals are no oracle for the hive's DNS view. Which rule refused it
/// ([`NotAllowed::why`]) goes to the hive's DEBUG log only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "destination not allowed: {host} (it does not resolve, or not to an address the hive fetches from; \
     --download-allow opens networks and names)"
)]
pub struct NotAllowed {
    /// The host as the URL names it.
    pub host: String,
    /// Which rule refused it (e.g. "link-local"), for the DEBUG log.
    pub why: String,
}

impl NotAllowed {
    /// A refusal of `host` for `why`, logged at DEBUG.
    fn new(host: &str, why: impl Into<String>) -> Self {
        let why = why.into();
        tracing::debug!(%host, %why, "download destination refused");
        Self { host: host.to_owned(), why }
    }
}

/// A network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    /// Its first address (host bits cleared).
    addr: IpAddr,
    /// Prefix length.
    prefix: u8,
}

impl Net {
    /// `addr/prefix`, with the host bits of `addr` cleared; `None` for a prefix longer
    /// than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then(|| Self { addr: mask(addr, prefix), prefix })
    }

    /// Whether `ip` is inside (an IPv4 network never holds an IPv6 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// One `--download-allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    /// A network (an address alone is a /32 or /128).
    Net(Net),
    /// A host name: every address it resolves to is allowed.
    Host(String),
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Net(n) => n.fmt(f),
            Self::Host(h) => h.fmt(f),
        }
    }
}

/// A host name as compared: lowercase, without a trailing dot.
fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Why a `--download-allow` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowError {
    /// `ADDR/PREFIX` whose address part is not an IP address.
    #[error("{entry:?}: {addr:?} is not an IP address")]
    Address {
        /// The whole entry.
        entry: String,
        /// Its address part.
        addr: String,
    },
    /// `ADDR/PREFIX` whose prefix is not a number, or longer than the address.
    #[error("{entry:?}: {prefix:?} is not a prefix length for that address")]
    Prefix {
        /// The whole entry.
        entry: String,
        /// Its prefix part.
        prefix: String,
    },
    /// `ADDR/PREFIX` whose address has bits set past the prefix: a typo that would
    /// open another network than meant (`169.254.169.254/0` is everything).
    #[error("{entry:?}: host bits set; did you mean {exact} or {network}?")]
    HostBits {
        /// The whole entry.
        entry: String,
        /// The address alone (`/32` or `/128`).
        exact: String,
        /// The network the prefix names.
        network: String,
    },
    /// An IPv4-mapped network that is every IPv4 address (`::ffff:0:0/96`): only
    /// `0.0.0.0/0`, written so, opens that.
    #[error("{0:?} opens every IPv4 address; write 0.0.0.0/0 if that is meant")]
    Everything(String),
    /// Neither a CIDR, an address nor a valid host name.
    #[error("{0:?} is neither a CIDR, an IP address nor a host name")]
    Unrecognised(String),
}

/// Parses one `--download-allow` entry: `CIDR`, an address, or a host name.
pub fn parse_allow(s: &str) -> Result<Allow, AllowError> {
    let s = s.trim();
    let unbracket =
        |a: &'_ str| a.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(a).to_owned();
    if let Some((addr, prefix)) = s.split_once('/') {
        let bad_prefix = || AllowError::Prefix { entry: s.to_owned(), prefix: prefix.to_owned() };
        let addr: IpAddr = unbracket(addr)
            .parse()
            .map_err(|_| AllowError::Address { entry: s.to_owned(), addr: addr.to_owned() })?;
        let prefix: u8 = prefix.parse().map_err(|_| bad_prefix())?;
        let net = Net::new(addr, prefix).ok_or_else(bad_prefix)?;
        // Bits past the prefix are a typo for the address alone or for the network:
        // refuse rather than guess (this also refuses any `/0` but `0.0.0.0/0`, `::/0`).
        if net.addr != addr {
            let exact = if addr.is_ipv4() { 32 } else { 128 };
            return Err(AllowError::HostBits {
                entry: s.to_owned(),
                exact: format!("{addr}/{exact}"),
                network: net.to_string(),
            });
        }
        let net = unmap(net);
        if net.prefix == 0 && net.addr.is_ipv4() != addr.is_ipv4() {
            return Err(AllowError::Everything(s.to_owned()));
        }
        return Ok(Allow::Net(net));
    }
    if let Ok(ip) = unbracket(s).parse::<IpAddr>() {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        return Ok(Allow::Net(unmap(Net { addr: ip, prefix })));
    }
    let host = normal_host(s);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
    };
    // A name made of digits only would be read by URL parsers as an IPv4 address.
    let numeric = host.split('.').all(|l| l.chars().all(|c| c.is_ascii_digit()));
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) || numeric {
        return Err(AllowError::Unrecognised(s.to_owned()));
    }
    Ok(Allow::Host(host))
}

/// An IPv4-mapped network (`::ffff:a.b.c.d/PREFIX`, prefix 96 or more) as the IPv4
/// network it is: [`EgressRule::check`] compares mapped addresses as IPv4.
fn unmap(net: Net) -> Net {
    match net.addr {
        IpAddr::V6(v6) if net.prefix >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => Net { addr: IpAddr::V4(v4), prefix: net.prefix - 96 },
            None => net,
        },
        _ => net,
    }
}

/// Logs at start (INFO) what `--download-allow` opens beyond public addresses.
pub fn log_allowed(allow: &[Allow]) {
    if allow.is_empty() {
        tracing::info!("downloads fetch from public addresses only (--download-allow opens more)");
        return;
    }
    let opened: Vec<String> = allow.iter().map(ToString::to_string).collect();
    tracing::info!(
        opened = %opened.join(","),
        "downloads may also fetch from these networks and names (--download-allow); \
         a name never opens link-local (cloud metadata) addresses"
    );
    for a in allow {
        if let Allow::Net(n) = a
            && n.prefix == 0
        {
            tracing::warn!(net = %n, "--download-allow opens every address of its family, cloud metadata included");
        }
    }
}

/// Parses a comma-separated list of `--download-allow` entries (as `HIVE_DOWNLOAD_ALLOW`
/// holds them); empty items are skipped.
pub fn parse_allow_list(s: &str) -> Result<Vec<Allow>, AllowError> {
    s.split(',').filter(|e| !e.trim().is_empty()).map(parse_allow).collect()
}

/// Why an address is refused by default, or `None` for a public one.
pub fn denied_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => denied_v4(v4),
        IpAddr::V6(v6) => denied_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    Net::new(IpAddr::V4(Ipv4Addr::from(net)), prefix).is_some_and(|n| n.contains(IpAddr::V4(ip)))
}

fn denied_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u8, &str)] = &[
        ([0, 0, 0, 0], 8, "unspecified (0.0.0.0/8)"),
        ([10, 0, 0, 0], 8, "private (RFC 1918)"),
        ([100, 64, 0, 0], 10, "carrier-grade NAT (100.64.0.0/10)"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local (cloud metadata)"),
        ([172, 16, 0, 0], 12, "private (RFC 1918)"),
        ([192, 0, 0, 0], 24, "IETF special-purpose (192.0.0.0/24)"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([192, 88, 99, 0], 24, "6to4 relay anycast"),
        ([192, 168, 0, 0], 16, "private (RFC 1918)"),
        ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved or broadcast (240.0.0.0/4)"),
    ];
    RANGES.iter().find(|(net, prefix, _)| in_v4(ip, *net, *prefix)).map(|(_, _, why)| *why)
}

/// The IPv4 address an IPv6 address carries where a packet to it reaches that IPv4
/// address: IPv4-mapped (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`)
/// and 6to4 (`2002:AABB:CCDD::/48`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let bits = u128::from(ip);
    let s = ip.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1] {
        return Some(Ipv4Addr::from(bits as u32));
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

fn denied_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(ip) {
        return denied_v4(v4);
    }
    const RANGES: &[(u128, u8, &str)] = &[
        (0, 128, "unspecified"),
        (1, 128, "loopback"),
        // `::a.b.c.d`: deprecated IPv4-compatible addresses, never a real destination.
        (0, 96, "IPv4-compatible (::/96)"),
        (0x0100 << 112, 64, "discard-only (100::/64)"),
        (0x2001_0000 << 96, 32, "Teredo (2001::/32)"),
        (0x2001_0db8 << 96, 32, "documentation"),
        (0xfc00 << 112, 7, "unique local (fc00::/7)"),
        (0xfe80 << 112, 10, "link-local"),
        (0xfec0 << 112, 10, "site-local (fec0::/10)"),
        (0xff00 << 112, 8, "multicast"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| {
            Net::new(IpAddr::V6(Ipv6Addr::from(*net)), *prefix).is_some_and(|n| n.contains(IpAddr::V6(ip)))
        })
        .map(|(_, _, why)| *why)
}

/// Whether `ip` is link-local or a cloud metadata address (`fd00:ec2::254`), in any
/// IPv6 form that reaches one.
fn is_metadata(ip: IpAddr) -> bool {
    const AWS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    ip == IpAddr::V6(AWS_V6) || denied_class(ip).is_some_and(|why| why.starts_with("link-local"))
}

/// The addresses of this host's interfaces, read now (getifaddrs); empty, and logged,
/// when they cannot be read.
pub fn own_addresses() -> Vec<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(found) => found
            .filter_map(|a| {
                let a = a.address?;
                a.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this host's addresses; downloads may reach them");
            Vec::new()
        }
    }
}

/// Whether `ip` (or the IPv4 address an IPv6 form of it carries) is one of this host's.
fn is_own_address(ip: IpAddr) -> bool {
    let v4 = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    own_addresses().into_iter().any(|own| {
        let own = match own {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(own, IpAddr::V4),
            v4 => v4,
        };
        own == ip || Some(own) == v4
    })
}

/// Which destinations the hive may fetch from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressRule {
    /// What `--download-allow` opens beyond public addresses.
    allow: Vec<Allow>,
}

impl EgressRule {
    /// Public addresses, plus `allow`.
    pub fn new(allow: Vec<Allow>) -> Self {
        Self { allow }
    }

    /// Public addresses plus loopback `127.0.0.1` (for tests with a loopback server).
    pub fn with_loopback() -> Self {
        Self::new(vec![parse_allow("127.0.0.1").expect("a valid address")])
    }

    /// What the rule opens beyond public addresses.
    pub fn allowed(&self) -> &[Allow] {
        &self.allow
    }

    /// Whether `host` is opened by name.
    fn host_allowed(&self, host: &str) -> bool {
        let host = normal_host(host);
        self.allow.iter().any(|a| matches!(a, Allow::Host(h) if *h == host))
    }

    /// Checks address `ip` reached for `host` (the name in the URL, or the literal).
    ///
    /// An allowed network opens every address inside. An allowed name opens the
    /// addresses it resolves to, except link-local and cloud metadata ones (a name
    /// answered by a hostile resolver must not open the metadata service). Otherwise
    /// an address is refused when it is special ([`denied_class`]) or one of this
    /// host's own interface addresses (read afresh for each check: they change).
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), NotAllowed> {
        // A mapped address reaches its IPv4 address: compare that one with the nets.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.allow.iter().any(|a| matches!(a, Allow::Net(n) if n.contains(ip))) {
            return Ok(());
        }
        if self.host_allowed(host) {
            return match is_metadata(ip) {
                true => Err(NotAllowed::new(
                    host,
                    format!("{ip}: link-local (cloud metadata), opened only by a CIDR"),
                )),
                false => Ok(()),
            };
        }
        if let Some(why) = denied_class(ip) {
            return Err(NotAllowed::new(host, format!("{ip}: {why}")));
        }
        if is_own_address(ip) {
            return Err(NotAllowed::new(host, format!("{ip}: an address of this host")));
        }
        Ok(())
    }

    /// Checks a URL before a request: its scheme is http or https, and an IP-literal host
    /// (which reqwest connects to without a resolver) is allowed. Names are checked by
    /// [`CheckedResolver`] when they are resolved.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), NotAllowed> {
        let refuse = |host: &str, why: &str| NotAllowed::new(&super::redact::redact_url(host), why);
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse(url.as_str(), "only http and https are fetched"));
        }
        // The URL parser has already turned every spelling of an IPv4 address
        // (`2852039166`, `0xa9.0xfe.0xa9.0xfe`, a trailing dot) into dotted form.
        let Some(host) = url.host_str() else { return Err(refuse(url.as_str(), "the URL has no host")) };
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        match literal.parse::<IpAddr>() {
            Ok(ip) => self.check(host, ip),
            Err(_) => Ok(()),
        }
    }

    /// A resolver for reqwest that applies this rule.
    pub fn resolver(self: &Arc<Self>) -> Arc<CheckedResolver> {
        Arc::new(CheckedResolver { rule: self.clone() })
    }
}

/// A reqwest resolver that resolves a name once, keeps only the addresses the rule
/// allows, and fails with [`NotAllowed`] when none is left. The connector connects to
/// the addresses it returns: the checked ones.
#[derive(Debug)]
pub struct CheckedResolver {
    /// The rule.
    rule: Arc<EgressRule>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let rule = self.rule.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // A name that does not resolve is refused with the same text as a refused
            // one (the cause goes to the DEBUG log): no DNS oracle.
            let found: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(found) => found.collect(),
                Err(e) => return Err(Box::new(NotAllowed::new(&host, format!("does not resolve: {e}"))) as _),
            };
            if found.is_empty() {
                return Err(Box::new(NotAllowed::new(&host, "resolves to no address")) as _);
            }
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match rule.check(&host, a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(e)) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The [`NotAllowed`] somewhere in an error's source chain (a refusal by the resolver
/// reaches the caller wrapped in reqwest's and hyper's errors).
pub fn refusal_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a NotAllowed> {
    let mut at = Some(e);
    while let Some(e) = at {
        if let Some(n) = e.downcast_ref::<NotAllowed>() {
            return Some(n);
        }
        at = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_and_special_addresses_are_refused_by_default() {
        for (addr, class) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("::1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("169.254.170.2", "link-local"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "unique local"),
            ("fc00::1", "unique local"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.100.100.200", "carrier-grade NAT"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("192.0.0.192", "special-purpose"),
            // IPv6 forms that reach an internal IPv4 address.
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::169.254.169.254", "IPv4-compatible"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("64:ff9b:1::a9fe:a9fe", "link-local"),
            ("2002:a9fe:a9fe::1", "link-local"),
            ("2002:0a00:0001::", "private"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ] {
            let why = denied_class(ip(addr)).unwrap_or_else(|| panic!("{addr} must be refused"));
            assert!(why.contains(class), "{addr}: {why}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
            "2002:0808:0808::",
        ] {
            assert_eq!(denied_class(ip(addr)), None, "{addr} is public");
        }
    }

    proptest::proptest! {
        /// Every IPv4 address is classified the same through each IPv6 form that
        /// reaches it.
        #[test]
        fn ipv6_forms_classify_as_their_ipv4_address(bits: u32) {
            let v4 = Ipv4Addr::from(bits);
            let want = denied_class(IpAddr::V4(v4));
            let [a, b, c, d] = v4.octets();
            let hi = u16::from_be_bytes([a, b]);
            let lo = u16::from_be_bytes([c, d]);
            for form in [
                IpAddr::V6(v4.to_ipv6_mapped()),
                IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo)),
                IpAddr::V6(Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1)),
            ] {
                proptest::prop_assert_eq!(denied_class(form), want, "{}", form);
            }
        }

        /// An address inside an allowed network is allowed, whatever its class.
        #[test]
        fn allowed_networks_open_every_address_inside(bits: u32, prefix in 0u8..=32) {
            let v4 = IpAddr::V4(Ipv4Addr::from(bits));
            let net = Net::new(v4, prefix).unwrap();
            let rule = EgressRule::new(vec![Allow::Net(net)]);
            proptest::prop_assert!(rule.check("h", v4).is_ok());
            proptest::prop_assert!(rule.check("h", IpAddr::V6(Ipv4Addr::from(bits).to_ipv6_mapped())).is_ok());
        }
    }

    #[test]
    fn allow_entries_parse() {
        assert_eq!(parse_allow("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_allow("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(parse_allow("[fd00::1]").unwrap().to_string(), "fd00::1/128");
        assert_eq!(parse_allow("Mirror.Internal.").unwrap(), Allow::Host("mirror.internal".into()));
        for bad in ["", "10.0.0.0/33", "x/8", "a b", "2852039166", "-x.y", "http://mirror"] {
            assert!(parse_allow(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn careless_cidrs_are_refused_and_mapped_entries_read_as_ipv4() {
        let e = parse_allow("10.20.30.40/1").unwrap_err().to_string();
        assert!(
            e.contains("host bits set") && e.contains("10.20.30.40/32") && e.contains("0.0.0.0/1"),
            "{e}"
        );
        for bad in ["169.254.169.254/0", "10.9.8.7/8", "1.2.3.4/0", "fd00::1/0", "::ffff:10.0.0.1/8"] {
            assert!(matches!(parse_allow(bad), Err(AllowError::HostBits { .. })), "{bad}");
        }
        // `/0` only as written for the whole family.
        assert_eq!(parse_allow("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(parse_allow("::/0").unwrap().to_string(), "::/0");
        assert_eq!(parse_allow("::ffff:0:0/96"), Err(AllowError::Everything("::ffff:0:0/96".into())));
        // Mapped entries are the IPv4 addresses they carry, and match them.
        assert_eq!(parse_allow("[::ffff:169.254.169.254]").unwrap().to_string(), "169.254.169.254/32");
        assert_eq!(parse_allow("::ffff:10.0.0.0/104").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_allow("[::ffff:10.0.0.0]/104").unwrap().to_string(), "10.0.0.0/8");
        let rule = EgressRule::new(vec![parse_allow("::ffff:169.254.169.254").unwrap()]);
        assert!(rule.check("169.254.169.254", ip("169.254.169.254")).is_ok());
        assert!(rule.check("x", ip("::ffff:169.254.169.254")).is_ok());
    }

    #[test]
    fn an_allowed_name_never_opens_link_local_or_metadata_addresses_a_cidr_does() {
        let rule = EgressRule::new(vec![parse_allow("mirror.lan").unwrap()]);
        assert!(rule.check("mirror.lan", ip("10.1.2.3")).is_ok());
        for meta in
            ["169.254.169.254", "::ffff:169.254.169.254", "fe80::1", "fd00:ec2::254", "64:ff9b::a9fe:a9fe"]
        {
            assert!(rule.check("mirror.lan", ip(meta)).is_err(), "{meta}");
        }
        let rule = EgressRule::new(vec![
            parse_allow("mirror.lan").unwrap(),
            parse_allow("169.254.169.254").unwrap(),
        ]);
        assert!(rule.check("mirror.lan", ip("169.254.169.254")).is_ok());
    }

    #[test]
    fn a_refusal_does_not_say_what_the_name_resolved_to() {
        let rule = EgressRule::default();
        let texts: Vec<String> = ["127.0.0.1", "169.254.169.254", "10.0.0.1", "fd00::1"]
            .into_iter()
            .map(|a| rule.check("name.test", ip(a)).unwrap_err().to_string())
            .collect();
        for t in &texts {
            assert_eq!(t, &texts[0], "every refusal of a name reads the same");
            for class in ["loopback", "link-local", "metadata", "private", "unique local", "127.", "169.254"]
            {
                assert!(!t.contains(class), "{t}");
            }
        }
        assert!(texts[0].starts_with("destination not allowed: name.test"), "{}", texts[0]);
        // The cause stays in the error for the DEBUG log.
        assert!(rule.check("name.test", ip("127.0.0.1")).unwrap_err().why.contains("loopback"));
    }

    #[test]
    fn the_rule_opens_networks_and_names() {
        let rule =
            EgressRule::new(vec![parse_allow("10.0.0.0/8").unwrap(), parse_allow("mirror.lan").unwrap()]);
        assert!(rule.check("10.2.3.4", ip("10.2.3.4")).is_ok());
        assert!(rule.check("x", ip("::ffff:10.2.3.4")).is_ok());
        assert!(rule.check("MIRROR.lan.", ip("192.168.7.7")).is_ok());
        let e = rule.check("other.lan", ip("192.168.7.7")).unwrap_err();
        assert!(e.to_string().starts_with("destination not allowed: other.lan"), "{e}");
        assert!(rule.check("metadata", ip("169.254.169.254")).is_err());
    }

    #[test]
    fn odd_spellings_of_the_metadata_address_are_literals_and_refused() {
        let rule = EgressRule::default();
        for url in [
            "http://169.254.169.254/latest",
            "http://[::ffff:169.254.169.254]/latest",
            "http://2852039166/latest",
            "http://0xa9.0xfe.0xa9.0xfe/latest",
            "http://169.254.169.254./latest",
            "http://0251.0376.0251.0376/latest",
            "http://[fd00:ec2::254]/latest",
        ] {
            let parsed = reqwest::Url::parse(url).unwrap();
            let e = rule.check_url(&parsed).expect_err(url);
            assert!(e.to_string().contains("destination not allowed"), "{url}: {e}");
        }
        assert!(rule.check_url(&reqwest::Url::parse("https://huggingface.co/x").unwrap()).is_ok());
        assert!(rule.check_url(&reqwest::Url::parse("file:///etc/passwd").unwrap()).is_err());
    }
}
