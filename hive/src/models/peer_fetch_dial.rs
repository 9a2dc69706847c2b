//! Dialing a peer hive for its model files, and where a hive may dial one.
//!
//! Peer addresses come from the FetchModel caller (the queen), so they are held to a
//! rule of their own (docs/security.md, "Weights from peers"):
//! - link-local addresses (every cloud metadata address among them), unspecified,
//!   multicast and reserved addresses are never dialed, whatever the address's spelling
//!   or what a name resolves to;
//! - plaintext (`http://`) only to loopback (tests, one machine);
//! - `https://` only with `--peer-ca`, and then to any other address, private networks
//!   included: the peer's certificate must chain to `--peer-ca`, name the dialed host and
//!   carry the peer's hive id ([`CertNames`]), or the call fails before any request is
//!   sent. The client certificate (`--peer-tls-cert`) is sent only inside a handshake
//!   whose server certificate verified (rustls sends it after checking the server's).
//!
//! A name is resolved once, each address is checked, and the connection goes to the
//! checked addresses (no second lookup a rebinding DNS could answer differently).

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rbee_shared::cert_names::CertNames;
use rbee_shared::tls::read_pem_file;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tonic::transport::{Channel, Endpoint, Uri};

use super::egress::{Net, denied_class};
use super::peer_fetch::PeerSource;
use crate::HiveError;

/// A connection attempt to a peer longer than this fails (the next source is tried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 receive window for a peer's stream and connection (bytes in flight).
const PEER_WINDOW_BYTES: u32 = 8 << 20;

/// Longest peer address accepted, bytes.
const MAX_ADDRESS_BYTES: usize = rbee_shared::model::MAX_PEER_ADDRESS_BYTES;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A peer's address, parsed: `http(s)://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddress {
    /// `https://`.
    pub tls: bool,
    /// The host: an IP in canonical form (IPv6 without brackets) or a lowercase name.
    pub host: String,
    /// The port.
    pub port: u16,
}

/// Why a peer address is refused or a peer cannot be dialed (its text is what a log or
/// an `INVALID_ARGUMENT` shows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PeerError(pub String);

impl From<String> for PeerError {
    fn from(why: String) -> Self {
        Self(why)
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => write!(f, "{scheme}://[{v6}]:{}", self.port),
            _ => write!(f, "{scheme}://{}:{}", self.host, self.port),
        }
    }
}

impl PeerAddress {
    /// Parses an address as the queen writes hive addresses: `http://` or `https://`
    /// (a bare `host:port` is http), a port, no credentials, path or query. IPv4 hosts
    /// in the shorthand forms resolvers accept (`127.1`, `2130706433`) are read as the
    /// address they name.
    pub fn parse(raw: &str) -> Result<Self, PeerError> {
        let s = raw.trim();
        if s.is_empty() || s.len() > MAX_ADDRESS_BYTES {
            return Err(PeerError::from(format!("must be 1..={MAX_ADDRESS_BYTES} bytes")));
        }
        let full = if s.contains("://") { s.to_owned() } else { format!("http://{s}") };
        let uri: Uri = full.parse().map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(PeerError::from(format!("{raw:?} must use http:// or https://"))),
        };
        let authority = uri.authority().ok_or_else(|| format!("{raw:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(PeerError::from(format!("{raw:?} must not carry credentials")));
        }
        // The parser reads no port past 65535: tell that from a missing one by the text.
        let port_text = authority.as_str().rsplit_once(':').map(|(_, p)| p).filter(|p| !p.contains(']'));
        let port = match (port_text.filter(|p| !p.is_empty()), authority.port_u16()) {
            (None, _) => {
                return Err(PeerError::from(format!("{raw:?} needs a port (e.g. https://gpu-2:7834)")));
            }
            (Some(_), None | Some(0)) => {
                return Err(PeerError::from(format!("{raw:?} has a port out of range (1..=65535)")));
            }
            (Some(_), Some(p)) => p,
        };
        // The URI parser drops a fragment: look for it in the text.
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() || s.contains('#') {
            return Err(PeerError::from(format!("{raw:?} must not have a path, query or fragment")));
        }
        let host = authority.host();
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => {
                let ip: std::net::Ipv6Addr =
                    v6.parse().map_err(|_| format!("{raw:?} has a bad IPv6 address"))?;
                ip.to_ipv4_mapped().map_or_else(|| ip.to_string(), |v4| v4.to_string())
            }
            None => {
                let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
                match ipv4_number_form(&name) {
                    Some(ip) => ip.to_string(),
                    None if name.is_empty() || name.contains("..") || name.starts_with('.') => {
                        return Err(PeerError::from(format!("{raw:?} has an empty host name label")));
                    }
                    None if name
                        .rsplit('.')
                        .next()
                        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) =>
                    {
                        return Err(PeerError::from(format!(
                            "{raw:?} has a host that is not a valid IPv4 address"
                        )));
                    }
                    None => name,
                }
            }
        };
        Ok(Self { tls, host, port })
    }

    /// The host as an IP, when it is one.
    fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// An IPv4 address in one of the forms `inet_aton` accepts (decimal, `0x` hex, octal
/// parts; 1 to 4 of them).
fn ipv4_number_form(s: &str) -> Option<std::net::Ipv4Addr> {
    let part = |p: &str| -> Option<u64> {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (p, 10)
        };
        if digits.is_empty() {
            return (radix == 16).then_some(0);
        }
        if digits.len() > 12 {
            return None;
        }
        u64::from_str_radix(digits, radix).ok()
    };
    let parts = s.split('.').map(part).collect::<Option<Vec<u64>>>()?;
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 || leading.iter().any(|p| *p > 255) {
        return None;
    }
    let room = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << room {
        return None;
    }
    let high = leading.iter().enumerate().fold(0u64, |acc, (i, p)| acc | (p << (24 - 8 * i)));
    u32::try_from(high | last).ok().map(std::net::Ipv4Addr::from)
}

/// Why `ip` is never dialed as a peer, or `None`. `tls`: over verified mutual TLS.
pub fn peer_refusal(ip: IpAddr, tls: bool) -> Option<String> {
    peer_refusal_with(ip, tls, &[])
}

/// [`peer_refusal`] where plaintext may also reach the networks `plaintext`
/// (`--peer-allow`); link-local and the other never-dialed classes stay refused.
fn peer_refusal_with(ip: IpAddr, tls: bool, plaintext: &[Net]) -> Option<String> {
    if let Some(why) = never_a_peer(ip) {
        return Some(why);
    }
    let loopback = denied_class(ip).is_some_and(|c| c == "loopback");
    if !tls && !loopback && !plaintext.iter().any(|n| n.contains(ip)) {
        return Some(format!(
            "{ip}: plaintext (http://) only to loopback peers and --peer-allow networks; use https:// and --peer-ca"
        ));
    }
    None
}

/// Why `ip` is never a peer, whatever the configuration: link-local (cloud metadata),
/// unspecified, multicast and reserved addresses.
fn never_a_peer(ip: IpAddr) -> Option<String> {
    let class = denied_class(ip)?;
    ["link-local", "unspecified", "multicast", "reserved", "discard", "IPv4-compatible"]
        .iter()
        .any(|c| class.starts_with(c))
        .then(|| format!("{ip} is {class}: never a peer"))
}

/// Mutual TLS for dialing peers: `--peer-ca` (signs the hives' server certificates) and
/// the identity presented to them (`--peer-tls-cert`, `--peer-tls-key`: a client
/// certificate from the CA the other hives trust as `--client-ca`).
#[derive(Clone)]
pub struct PeerTls {
    /// rustls, ALPN h2.
    config: Arc<ClientConfig>,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Trust `ca` for peers' certificates; present `identity` (certificate, key) when
    /// given. Errors name the file.
    pub fn from_pem_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, HiveError> {
        let bad = |what: &str, path: &Path, e: &dyn fmt::Display| {
            HiveError::Config(format!("{what} {}: {e}", path.display()))
        };
        let ca_pem = read_pem_file(ca, "CA").map_err(|e| bad("--peer-ca", ca, &e))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|e| bad("--peer-ca", ca, &e))?;
            roots.add(cert).map_err(|e| bad("--peer-ca", ca, &e))?;
        }
        if roots.is_empty() {
            return Err(bad("--peer-ca", ca, &"holds no certificate"));
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("--peer-ca", ca, &e))?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => {
                let cert_pem =
                    read_pem_file(cert, "certificate").map_err(|e| bad("--peer-tls-cert", cert, &e))?;
                let chain = CertificateDer::pem_slice_iter(&cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("--peer-tls-cert", cert, &e))?;
                let key_pem =
                    read_pem_file(key, "private key").map_err(|e| bad("--peer-tls-key", key, &e))?;
                let key_der =
                    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad("--peer-tls-key", key, &e))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| bad("--peer-tls-cert", cert, &e))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self { config: Arc::new(config) })
    }
}

/// Dials peers under the rule in the module docs.
#[derive(Debug, Clone, Default)]
pub struct PeerDialer {
    /// Mutual TLS for `https://` peers (`--peer-ca`); without it only loopback
    /// plaintext peers are dialed.
    tls: Option<PeerTls>,
    /// Networks plaintext (`http://`) peers may be on besides loopback (`--peer-allow`).
    plaintext: Vec<Net>,
}

impl PeerDialer {
    /// A dialer with `tls` for https peers.
    pub fn new(tls: Option<PeerTls>) -> Self {
        Self { tls, plaintext: Vec::new() }
    }

    /// A dialer of loopback plaintext peers only.
    pub fn plaintext_only() -> Self {
        Self::default()
    }

    /// Also dials plaintext peers on `networks` (`--peer-allow`: a fleet without TLS on
    /// a private network; the sha256 still checks every byte, but nothing authenticates
    /// the peer).
    pub fn with_plaintext_networks(mut self, networks: Vec<Net>) -> Self {
        self.plaintext = networks;
        self
    }

    /// Why `address` may never be a peer, whatever this hive's configuration (an IP
    /// literal of a class no peer has; a name's addresses are checked at the dial). A
    /// FetchModel naming one is refused; one [`PeerDialer::admits`] refuses for this
    /// hive's configuration alone is skipped instead.
    pub fn forbidden(&self, address: &PeerAddress) -> Option<PeerError> {
        address.ip().and_then(never_a_peer).map(PeerError)
    }

    /// Whether this hive may dial `address` at all (an IP literal is checked now; a
    /// name's addresses at the dial).
    pub fn admits(&self, address: &PeerAddress) -> Result<(), PeerError> {
        if address.tls && self.tls.is_none() {
            return Err(PeerError::from(format!(
                "{address}: https:// peers need this hive's --peer-ca (and --peer-tls-cert/--peer-tls-key)"
            )));
        }
        if let Some(ip) = address.ip()
            && let Some(why) = peer_refusal_with(ip, address.tls, &self.plaintext)
        {
            return Err(PeerError::from(why));
        }
        if !address.tls && address.ip().is_none() && address.host != "localhost" && self.plaintext.is_empty()
        {
            return Err(PeerError::from(format!(
                "{address}: plaintext (http://) only to loopback peers and --peer-allow networks; use https:// and --peer-ca"
            )));
        }
        Ok(())
    }

    /// A channel to `peer`: its address resolved and checked, TLS verified and its
    /// certificate holding its hive id.
    pub async fn dial(&self, peer: &PeerSource) -> Result<Channel, PeerError> {
        let address = PeerAddress::parse(&peer.address)?;
        self.admits(&address)?;
        let resolved: Vec<SocketAddr> = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::lookup_host((address.host.as_str(), address.port)),
        )
        .await
        .map_err(|_| format!("{}: resolving timed out", address.host))?
        .map_err(|_| format!("{}: does not resolve", address.host))?
        .collect();
        let mut refused = None;
        let targets: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|a| match peer_refusal_with(a.ip(), address.tls, &self.plaintext) {
                Some(why) => {
                    tracing::debug!(peer = %peer.hive_id, reason = %why, "peer address refused");
                    refused = Some(why);
                    false
                }
                None => true,
            })
            .collect();
        if targets.is_empty() {
            return Err(PeerError::from(
                refused.unwrap_or_else(|| format!("{}: does not resolve", address.host)),
            ));
        }
        let connector = Connector {
            targets: Arc::new(targets),
            tls: self.tls.as_ref().filter(|_| address.tls).map(|t| {
                (
                    tokio_rustls::TlsConnector::from(t.config.clone()),
                    address.host.clone(),
                    peer.hive_id.clone(),
                )
            }),
        };
        let plain = format!("http://{}:{}", bracketed(&address.host), address.port);
        let mut endpoint = Endpoint::from_shared(plain)
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // The receiver's HTTP/2 windows bound a peer's bytes in flight: h2's 64 KiB
            // default would stall a fast link every round trip.
            .initial_stream_window_size(PEER_WINDOW_BYTES)
            .initial_connection_window_size(PEER_WINDOW_BYTES);
        if address.tls {
            let origin: Uri = address.to_string().parse().map_err(|e: http_uri::InvalidUri| e.to_string())?;
            endpoint = endpoint.origin(origin);
        }
        tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect_with_connector(connector))
            .await
            .map_err(|_| format!("{address}: connecting timed out"))?
            .map_err(|e| PeerError(reason(&e)))
    }
}

use tonic::codegen::http::uri as http_uri;

/// An IPv6 host in brackets.
fn bracketed(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

/// A transport error with its causes, one line.
fn reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    rbee_shared::view_budget::bounded(&parts.join(": "), 300)
}

/// TCP to the checked addresses, then (https) a rustls handshake whose certificate must
/// carry the peer's hive id.
#[derive(Clone)]
struct Connector {
    /// The checked addresses, tried in order.
    targets: Arc<Vec<SocketAddr>>,
    /// The handshake, the name to verify and the hive id the certificate must carry.
    tls: Option<(tokio_rustls::TlsConnector, String, String)>,
}

/// A connection to a peer: plain TCP or TLS.
type PeerIo = TokioIo<tokio_util::either::Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>>;

impl tower::Service<Uri> for Connector {
    type Response = PeerIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<PeerIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(this.targets.as_slice()).await?;
            tcp.set_nodelay(true)?;
            let Some((tls, host, hive_id)) = this.tls else {
                return Ok(TokioIo::new(tokio_util::either::Either::Left(tcp)));
            };
            let name = ServerName::try_from(host)?;
            let stream = tls.connect(name, tcp).await?;
            let leaf =
                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or("no certificate")?;
            CertNames::from_der(leaf)?.check(&hive_id)?;
            Ok(TokioIo::new(tokio_util::either::Either::Right(stream)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_into_one_form() {
        let p = |s: &str| PeerAddress::parse(s).map(|a| a.to_string());
        assert_eq!(p("127.1:7834").unwrap(), "http://127.0.0.1:7834");
        assert_eq!(p("HTTPS://Gpu-2.:7834/").unwrap(), "https://gpu-2:7834");
        assert_eq!(p("http://[::ffff:169.254.169.254]:80").unwrap(), "http://169.254.169.254:80");
        assert_eq!(p("http://2852039166:80").unwrap(), "http://169.254.169.254:80");
        assert_eq!(p("https://[::1]:1").unwrap(), "https://[::1]:1");
        assert!(p("http://1.2.3.999:1").is_err());
    }

    #[test]
    fn metadata_is_never_a_peer_and_plaintext_only_reaches_loopback() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for tls in [false, true] {
            assert!(peer_refusal(ip("169.254.169.254"), tls).is_some());
            assert!(peer_refusal(ip("fe80::1"), tls).is_some());
            assert!(peer_refusal(ip("0.0.0.0"), tls).is_some());
            assert!(peer_refusal(ip("224.0.0.1"), tls).is_some());
        }
        assert!(peer_refusal(ip("127.0.0.1"), false).is_none());
        assert!(peer_refusal(ip("10.0.0.5"), false).is_some());
        assert!(peer_refusal(ip("10.0.0.5"), true).is_none());
        assert!(peer_refusal(ip("8.8.8.8"), false).is_some());
    }

    #[test]
    fn peer_allow_opens_plaintext_to_its_networks_but_never_link_local() {
        let net = |s: &str| match super::super::egress::parse_allow(s).unwrap() {
            super::super::egress::Allow::Net(n) => n,
            other => panic!("{other}"),
        };
        let dialer = PeerDialer::plaintext_only()
            .with_plaintext_networks(vec![net("10.0.0.0/8"), net("169.254.0.0/16")]);
        let admits = |s: &str| dialer.admits(&PeerAddress::parse(s).unwrap());
        assert_eq!(admits("http://10.1.2.3:7834"), Ok(()));
        assert!(admits("http://192.168.1.1:7834").unwrap_err().0.contains("--peer-allow"));
        assert!(admits("http://169.254.169.254:80").unwrap_err().0.contains("link-local"));
        assert!(admits("http://gpu-2.lan:7834").is_ok(), "a name's addresses are checked at the dial");
        assert!(
            PeerDialer::plaintext_only()
                .admits(&PeerAddress::parse("http://gpu-2.lan:7834").unwrap())
                .is_err()
        );
    }
}
