//! Why a download stopped, and which stops another attempt may cure. Below the
//! downloader, the HTTP client and the Hub listing, which all return it.

use std::path::Path;
use std::time::Duration;

use super::redact::redact_url;

/// Why a download stopped.
///
/// Every URL is shown through [`redact_url`]: no password or presigned query reaches
/// an error text, a record or a log line.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The network failed (retried).
    #[error("{}: {reason}", redact_url(.url))]
    Network {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The server answered with an error status (5xx, 408 and 429 are retried).
    #[error("{}: HTTP {status}", redact_url(.url))]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The URL, or a redirect hop, is a destination the egress rule refuses. Nothing
    /// was sent there, and nothing about it is reported beyond its host.
    #[error("{}: {source}", redact_url(.url))]
    NotAllowed {
        /// The URL (or redirect hop) refused.
        url: String,
        /// Which host, and which rule.
        source: super::egress::NotAllowed,
    },
    /// The source could not be resolved into files.
    #[error("resolving the source: {0}")]
    Resolve(String),
    /// Fewer bytes than [`MinProgress`] asks arrived in a window (a server dripping
    /// bytes): the attempt is dropped and retried; a few in a row fail the download.
    #[error("{}: only {got} bytes arrived in {window:?}, fewer than {min}; the server is too slow", redact_url(.url))]
    TooSlow {
        /// The URL.
        url: String,
        /// Bytes that arrived in the window.
        got: u64,
        /// The least expected.
        min: u64,
        /// The window.
        window: Duration,
    },
    /// The body ended before the declared size (retried from where it stopped).
    #[error("{path}: the connection ended at {got} of {total} bytes")]
    Truncated {
        /// The file.
        path: String,
        /// Bytes received.
        got: u64,
        /// Bytes expected.
        total: u64,
    },
    /// The file's size is not the declared one.
    #[error("{path}: size mismatch: expected {expected} bytes, the server has {actual}")]
    SizeMismatch {
        /// The file.
        path: String,
        /// Declared.
        expected: u64,
        /// Found.
        actual: u64,
    },
    /// The file's hash is not the declared one.
    #[error("{path}: sha256 mismatch: expected {expected}, got {actual}")]
    Sha256Mismatch {
        /// The file.
        path: String,
        /// Declared.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// Not enough free disk for the download.
    #[error("not enough disk space in {dir}: the download needs {needed} more bytes, {free} are free")]
    InsufficientDisk {
        /// The models directory.
        dir: String,
        /// Bytes still to write.
        needed: u64,
        /// Free bytes.
        free: u64,
    },
    /// A local file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Cancelled by CancelFetch.
    #[error("cancelled")]
    Cancelled,
    /// The hive is shutting down (the partial files stay for a resume).
    #[error("the hive is shutting down")]
    ShuttingDown,
}

impl DownloadError {
    /// A mapper for a reqwest error on `url`.
    pub fn network(url: &str) -> impl FnOnce(reqwest::Error) -> Self + '_ {
        move |e| {
            if let Some(refused) = super::egress::refusal_in(&e) {
                return Self::NotAllowed { url: url.to_owned(), source: refused.clone() };
            }
            // reqwest's text names the whole URL: the error shows it redacted instead.
            let e = e.without_url();
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason = format!("{reason}: {s}");
                source = s.source();
            }
            Self::Network { url: url.to_owned(), reason }
        }
    }

    /// A mapper for an I/O error on the local file `path`.
    pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io { path: path.display().to_string(), source }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Network { .. } | Self::Truncated { .. } | Self::TooSlow { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }
}
