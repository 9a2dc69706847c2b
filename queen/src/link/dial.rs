//! Dialing a hive, and what a failed dial or call shows.
//!
//! Plaintext goes through tonic's own connector. TLS goes through [`TlsConnector`]: TCP
//! (with `TCP_NODELAY`), then a rustls handshake that verifies the hive's certificate
//! against `--hive-ca` and the dialed host name and keeps the certificate, so the link
//! can hold the hive to the ids it carries ([`super::identity`]). Every connection of
//! one channel must present that same certificate.
//!
//! A hive that came from the network (`AddHive`, `Announce`) is dialed only at IPs its
//! [`DialGuard`] (the allow-list) allows, checked at every dial on the addresses the name
//! resolves to then, and connected to those very addresses: a name that resolved inside
//! the allow-list when it was added cannot later be rebound to an address outside it.
//!
//! The reasons shown to users (`last_error`, health reasons) are the queen's own words
//! and a gRPC status code, bounded: never a peer's free text before it has proven to be
//! a hive, so dialing something that is not a hive cannot relay its answer (an HTTP
//! error page, a metadata service's reply) to a client.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rbee_shared::lock::MutexExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tonic::transport::{Channel, Endpoint, Uri};

use super::LinkSettings;
use super::error::{BoxError, DialError};
use super::guard::DialGuard;
use super::identity::CertNames;
use super::tls::HiveTls;
use crate::fleet::Origin;
use crate::fleet::address::is_loopback_address;

/// Largest message the queen accepts from a hive.
pub const MAX_HIVE_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Longest part of a transport error's text that is shown.
const REASON_BYTES: usize = 160;

/// A connected channel, and the names in the hive's certificate when it was dialed over TLS.
pub(super) struct Dialed {
    /// The channel.
    pub channel: Channel,
    /// The certificate's names (TLS only).
    pub cert: Option<CertNames>,
}

/// Dials `address` (normalised) with the link's timeouts, keepalive and TLS. A hive from
/// the network is held to the link's [`DialGuard`].
pub(super) async fn dial(address: &str, s: &LinkSettings, origin: Origin) -> Result<Dialed, DialError> {
    let https = address.starts_with("https://");
    let guard = match origin {
        Origin::Api | Origin::Announced => s.dial_guard.clone(),
        Origin::Static | Origin::Local => None,
    };
    let endpoint_for = |url: String| {
        Endpoint::from_shared(url).map(|e| {
            e.connect_timeout(s.connect_timeout)
                .http2_keep_alive_interval(s.keepalive)
                .keep_alive_timeout(s.keepalive)
                .keep_alive_while_idle(true)
                .tcp_keepalive(Some(s.keepalive))
                .tcp_nodelay(true)
        })
    };
    let bad_address = |e: tonic::transport::Error| DialError::BadAddress(transport_reason(&e));
    let connect_failed = |e: tonic::transport::Error| DialError::Connect(transport_reason(&e));
    let uri: Uri =
        address.parse().map_err(|e: http::uri::InvalidUri| DialError::BadAddress(bounded(&e.to_string())))?;
    let (host, port) = host_port(&uri).map_err(|e| DialError::BadAddress(e.to_owned()))?;
    match (&s.hive_tls, https) {
        (None, true) => Err(DialError::TlsNotConfigured),
        (Some(_), false) if !is_loopback_address(address) => Err(DialError::PlaintextRefused),
        (Some(tls), true) => {
            // tonic would insist on its own TLS for an https:// URI: hand it the same
            // authority as http:// and do TLS in the connector, keeping https as the origin.
            let plain = format!("http://{}", address.trim_start_matches("https://"));
            let endpoint = endpoint_for(plain).map_err(bad_address)?.origin(uri);
            let connector = TlsConnector::new(tls, guard);
            let seen = connector.seen.clone();
            let channel = tokio::time::timeout(s.connect_timeout, endpoint.connect_with_connector(connector))
                .await
                .map_err(|_| DialError::TimedOut)?
                .map_err(connect_failed)?;
            let leaf = seen.lock_unpoisoned().clone();
            let leaf = leaf.ok_or(DialError::NoCertificate)?;
            Ok(Dialed { channel, cert: Some(CertNames::from_der(&leaf)?) })
        }
        (_, false) => {
            // A guarded hive is dialed at the addresses just checked, never re-resolved.
            let targets = match &guard {
                Some(guard) => guard
                    .resolve(&host, port)
                    .await?
                    .into_iter()
                    .map(|a| (format!("http://{a}"), Some(uri.clone())))
                    .collect(),
                None => vec![(address.to_owned(), None)],
            };
            let mut failure = DialError::Connect("no address".into());
            for (url, origin) in targets {
                let mut endpoint = endpoint_for(url).map_err(bad_address)?;
                if let Some(origin) = origin {
                    endpoint = endpoint.origin(origin);
                }
                match tokio::time::timeout(s.connect_timeout, endpoint.connect()).await {
                    Ok(Ok(channel)) => return Ok(Dialed { channel, cert: None }),
                    Ok(Err(e)) => failure = connect_failed(e),
                    Err(_) => failure = DialError::TimedOut,
                }
            }
            Err(failure)
        }
    }
}

/// The host (without IPv6 brackets) and port of a normalised address.
fn host_port(uri: &Uri) -> Result<(String, u16), &'static str> {
    let host = uri.host().ok_or("no host")?.trim_start_matches('[').trim_end_matches(']').to_owned();
    Ok((host, uri.port_u16().ok_or("no port")?))
}

/// TCP (at the guard's checked addresses, when guarded) then a rustls handshake;
/// remembers the first certificate and refuses a later connection of the same channel
/// that presents another.
#[derive(Clone)]
struct TlsConnector {
    /// The handshake.
    tls: tokio_rustls::TlsConnector,
    /// The leaf certificate of the channel's first connection.
    seen: Arc<Mutex<Option<CertificateDer<'static>>>>,
    /// Checks every address before it is dialed (hives from the network).
    guard: Option<DialGuard>,
}

impl TlsConnector {
    fn new(tls: &HiveTls, guard: Option<DialGuard>) -> Self {
        Self { tls: tokio_rustls::TlsConnector::from(tls.client_config()), seen: Arc::default(), guard }
    }
}

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let seen = self.seen.clone();
        let guard = self.guard.clone();
        Box::pin(async move {
            let (host, port) = host_port(&uri)?;
            let name = ServerName::try_from(host.clone())?;
            let tcp = match guard {
                Some(guard) => TcpStream::connect(guard.resolve(&host, port).await?.as_slice()).await?,
                None => TcpStream::connect((host.as_str(), port)).await?,
            };
            tcp.set_nodelay(true)?;
            let stream = tls.connect(name, tcp).await?;
            let leaf =
                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or("no certificate")?;
            let mut first = seen.lock_unpoisoned();
            match first.as_ref() {
                None => *first = Some(leaf.clone().into_owned()),
                Some(held) if held == leaf => {}
                Some(_) => {
                    return Err("the hive presented a different certificate on a new connection".into());
                }
            }
            drop(first);
            Ok(TokioIo::new(stream))
        })
    }
}

/// A transport error as its chain of causes, bounded to [`REASON_BYTES`], one line.
pub(super) fn transport_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    bounded(&parts.join(": "))
}

/// A failed call to a peer that has not yet proven to be a hive (`Discover`, opening the
/// stream): the status code and what it means, never the peer's message, which is
/// logged (bounded) instead. A status the queen's own transport made (it carries the
/// local error as its source) keeps its text, bounded.
pub(super) fn call_reason(address: &str, call: &str, s: &tonic::Status) -> String {
    if rbee_shared::size_limit::is_too_large(s) {
        // The queen's own decoder refused an answer over its limit: say so plainly.
        return format!(
            "{call} failed: ResourceExhausted (the hive's answer is over the queen's {} MiB message limit)",
            MAX_HIVE_MESSAGE_BYTES >> 20
        );
    }
    if let Some(local) = std::error::Error::source(s) {
        return format!("{call} failed: {:?}: {}", s.code(), transport_reason(local));
    }
    tracing::debug!(%address, call, code = ?s.code(), message = %bounded(s.message()), "hive call failed");
    format!("{call} failed: {:?} ({})", s.code(), s.code().description())
}

/// A broken stream from a hive: the code and the first [`REASON_BYTES`] of its message.
pub(super) fn stream_reason(s: &tonic::Status) -> String {
    let s = &rbee_shared::size_limit::normalize(s.clone());
    if s.message().is_empty() {
        format!("stream broke: {:?}", s.code())
    } else {
        format!("stream broke: {:?}: {}", s.code(), bounded(s.message()))
    }
}

/// One line of at most [`REASON_BYTES`] bytes of `text`, control characters replaced,
/// marked when cut.
fn bounded(text: &str) -> String {
    let clean: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if clean.len() <= REASON_BYTES {
        return clean;
    }
    let mut end = REASON_BYTES;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut)", &clean[..end])
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::super::error::HiveTlsError;
    use super::*;

    fn guarded(allow_loopback: bool) -> LinkSettings {
        let guard = DialGuard::new("[test]", move |ip: IpAddr| allow_loopback || !ip.is_loopback());
        LinkSettings { dial_guard: Some(guard), ..LinkSettings::default() }
    }

    #[tokio::test]
    async fn hives_from_the_network_are_checked_at_every_dial() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://localhost:{}", listener.local_addr().unwrap().port());
        for origin in [Origin::Api, Origin::Announced] {
            let err = dial(&address, &guarded(false), origin).await.err().unwrap().to_string();
            assert!(err.contains("outside the allow-list [test]"), "{origin:?}: {err}");
        }
        // The queen's own configuration is not held to the allow-list.
        for origin in [Origin::Static, Origin::Local] {
            let r = dial(&address, &guarded(false), origin).await;
            assert!(r.as_ref().err().is_none_or(|e| !e.to_string().contains("allow-list")), "{origin:?}");
        }
        // Allowed, the checked address is dialed (it accepts the TCP connection).
        let r = dial(&address, &guarded(true), Origin::Api).await;
        assert!(r.as_ref().err().is_none_or(|e| !e.to_string().contains("allow-list")));
    }

    #[test]
    fn hive_tls_errors_name_the_file_and_its_role() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = HiveTls::from_pem_files(&missing, None).unwrap_err().to_string();
        assert!(err.starts_with("CA ") && err.contains("missing.pem"), "{err}");
        let keys_only = dir.path().join("keys-only.pem");
        std::fs::write(&keys_only, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        let err = HiveTls::from_pem_files(&keys_only, None).unwrap_err();
        assert!(matches!(err, HiveTlsError::EmptyCa(_)), "{err}");
        assert!(err.to_string().contains("keys-only.pem: no certificate in it"), "{err}");
    }

    #[test]
    fn a_call_reason_never_carries_the_peers_message() {
        let s = tonic::Status::internal("SECRET page body");
        let reason = call_reason("http://10.0.0.1:1", "Discover", &s);
        assert_eq!(reason, "Discover failed: Internal (Internal error)");
    }

    #[test]
    fn message_size_errors_are_resource_exhausted() {
        let s = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 4700000 bytes, the limit is: 4194304 bytes",
        );
        let reason = call_reason("http://10.0.0.1:1", "Discover", &s);
        assert!(reason.starts_with("Discover failed: ResourceExhausted"), "{reason}");
        assert!(!reason.contains("OutOfRange"), "{reason}");
        let reason = stream_reason(&s);
        assert!(reason.starts_with("stream broke: ResourceExhausted"), "{reason}");
    }

    #[test]
    fn stream_reasons_are_bounded_single_lines() {
        let s = tonic::Status::unavailable(format!("line one\nline two {}", "é".repeat(500)));
        let reason = stream_reason(&s);
        assert!(!reason.contains('\n'), "{reason}");
        assert!(reason.len() < REASON_BYTES + 60, "{} bytes", reason.len());
        assert!(reason.ends_with("… (cut)"), "{reason}");
        assert_eq!(stream_reason(&tonic::Status::cancelled("")), "stream broke: Cancelled");
    }
}
