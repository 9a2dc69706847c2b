//! Why a hive's link ended or was refused. Shown to users as the hive's `last_error`
//! and in `lost:` health reasons, so every message is bounded and never carries the
//! peer's response body.

use std::time::Duration;

use rbee_shared::ConvertError;

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
    #[error("{0}")]
    Dial(String),
    /// An RPC took longer than the connect timeout.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// `Discover` or opening the stream failed: the status code, not the peer's text.
    #[error("{0}")]
    Call(String),
    /// The hive claimed an id its TLS certificate does not carry.
    #[error("{0}")]
    Certificate(String),
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
