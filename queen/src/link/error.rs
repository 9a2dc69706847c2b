//! Why a hive's link ended or was refused. Shown to users as the hive's `last_error`
//! and in `lost:` health reasons, so every message is bounded and never carries the
//! peer's response body.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use rbee_shared::ConvertError;
use rbee_shared::tls::TlsError;

use super::identity::CertError;

/// A transport or TLS library's error, kept as the source of ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the TLS set-up for dialing hives (`--hive-ca`, the queen's certificate and key)
/// cannot be used. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum HiveTlsError {
    /// A PEM file could not be read, or is not PEM.
    #[error(transparent)]
    File(#[from] TlsError),
    /// A PEM file's content is not a usable certificate or key.
    #[error("{what} {}: {source}", path.display())]
    Unusable {
        /// What the file was for ("CA", "certificate", "private key").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the TLS library said.
        source: BoxError,
    },
    /// The CA file holds no certificate.
    #[error("CA {}: no certificate in it", .0.display())]
    EmptyCa(PathBuf),
    /// The certificate and key do not make a client identity.
    #[error("certificate {} and key {}: {source}", cert.display(), key.display())]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What the TLS library said.
        source: tokio_rustls::rustls::Error,
    },
    /// The TLS library refused the protocol set-up.
    #[error("TLS set-up: {0}")]
    Setup(#[source] tokio_rustls::rustls::Error),
}

/// Why a hive from the network may not be dialed at the addresses its name resolves to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The name does not resolve.
    #[error("{host} does not resolve, so it cannot be checked against the allow-list")]
    Unresolvable {
        /// The host name.
        host: String,
    },
    /// The name resolves to no address.
    #[error("{host} resolves to nothing")]
    NoAddress {
        /// The host name.
        host: String,
    },
    /// The name resolves to an address outside the allow-list.
    #[error(
        "{host} now resolves to {ip}, outside the allow-list {allowed} (--allow); the queen will not dial it"
    )]
    Outside {
        /// The host name.
        host: String,
        /// The first address outside.
        ip: IpAddr,
        /// What the allow-list allows.
        allowed: String,
    },
}

/// Why dialing a hive failed. Bounded, and never the peer's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// The address cannot be dialed as written.
    #[error("bad address: {0}")]
    BadAddress(String),
    /// An `https://` hive while the queen has no hive TLS set up.
    #[error("an https:// hive needs --hive-ca (and the queen's certificate)")]
    TlsNotConfigured,
    /// A plaintext hive off loopback while hive TLS is set up.
    #[error("plaintext to a non-loopback hive is refused while --hive-ca is set; use https://")]
    PlaintextRefused,
    /// The allow-list refused the address.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// The connection was not made within the connect timeout.
    #[error("connect timed out")]
    TimedOut,
    /// The connection failed (the transport's reason, bounded).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The hive's TLS handshake completed without a certificate.
    #[error("the hive presented no certificate")]
    NoCertificate,
    /// The hive's certificate cannot be read.
    #[error(transparent)]
    Certificate(#[from] CertError),
}

/// What the queen refuses to take from a hive's stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The hive at this address now claims another id.
    #[error("the hive at this address changed its id from {from:?} to {to:?}")]
    IdChanged {
        /// The id held.
        from: String,
        /// The id claimed.
        to: String,
    },
    /// A snapshot moved the capability version backwards within one epoch.
    #[error("capability version went backwards from {from} to {to} within epoch {epoch}")]
    VersionBackwards {
        /// The version held.
        from: u64,
        /// The version claimed.
        to: u64,
        /// The epoch.
        epoch: String,
    },
}

/// Why one connection to a hive ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Dialing failed (the reason is the transport's, bounded; never the peer's body).
    #[error(transparent)]
    Dial(#[from] DialError),
    /// An RPC took longer than the connect timeout.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// `Discover` or opening the stream failed: the status code, not the peer's text.
    #[error("{0}")]
    Call(String),
    /// The hive claimed an id its TLS certificate does not carry.
    #[error(transparent)]
    Certificate(CertError),
    /// `Discover` answered something invalid.
    #[error("Discover: {0}")]
    Discover(#[from] ConvertError),
    /// Another address already holds this hive's id.
    #[error("hive id {id:?} is already managed at {holder}; refusing a second address")]
    IdConflict {
        /// The id claimed.
        id: String,
        /// The address that holds it.
        holder: String,
    },
    /// The stream refused what the hive sent.
    #[error(transparent)]
    Refused(#[from] IngestError),
    /// The hive closed the stream.
    #[error("the hive ended the stream")]
    Ended,
    /// The stream failed (code and bounded message).
    #[error("{0}")]
    Broken(String),
    /// No sample was applied for the lost timeout, whatever else arrived.
    #[error("no sample applied for {:.1} s", .0.as_secs_f64())]
    NoSample(Duration),
    /// A resync was asked for and no snapshot came within the bound.
    #[error("no snapshot {:.1} s after asking for a resync", .0.as_secs_f64())]
    ResyncUnanswered(Duration),
}
