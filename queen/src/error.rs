//! The queen's one error type. Each layer below the API keeps its own typed error
//! (`link::HiveTlsError`, `store::StoreError`, `scheduler::policy::PolicyError`, ...)
//! and this type wraps it; it names those error types and nothing else of theirs, and
//! none of them imports this file. Its one mapping to a gRPC status lives at the API
//! edge (`api::status`).

/// Everything that can go wrong in the queen.
#[derive(Debug, thiserror::Error)]
pub enum QueenError {
    /// A caller sent something invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such hive.
    #[error("no hive {0:?} (give a hive id or an address)")]
    NotFound(String),
    /// Something else asked for is not there (the message says what).
    #[error("{0}")]
    Missing(String),
    /// No such reservation.
    #[error("no reservation {0:?} (it was released, expired, or never made)")]
    NoReservation(String),
    /// The request conflicts with the state (e.g. a request id held for another request).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller may not do this (e.g. announce an address outside the allow-list).
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller's deadline passed before the answer was certain (nothing was kept).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The configuration is not valid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The queen's TLS files (`--tls-cert`, `--tls-key`) cannot be used.
    #[error("invalid configuration: {0}")]
    Tls(#[from] rbee_shared::tls::TlsError),
    /// The TLS set-up for dialing hives (`--hive-ca`) cannot be used.
    #[error("invalid configuration: {0}")]
    HiveTls(#[from] crate::link::HiveTlsError),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The placement policy failed (the error carries the script position).
    #[error("placement policy {policy} failed: {error}")]
    Policy {
        /// The policy's source (a path, or the built-in name).
        policy: String,
        /// What went wrong, and where in the script.
        error: crate::scheduler::policy::PolicyError,
    },
    /// A kept reservation record is not sound (corrupted): the queen will not start and
    /// drop it silently.
    #[error(
        "the state store {store} holds a reservation record {key:?} that is not sound: {reason}. It \
         may be corrupt; the queen will not start and drop it silently. Restore a backup, or start \
         with --reset-state to move the state aside and start empty"
    )]
    UnsoundRecord {
        /// The store (its file, or etcd endpoints).
        store: String,
        /// The record's key (the reservation id).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A worker thread failed (a bug: it panicked).
    #[error("internal error: {0}")]
    Internal(String),
    /// The state store cannot be opened, read or written (the message names its file).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A hive answered a call the queen made for a client with an error.
    #[error("hive {hive}: {}", status.message())]
    Hive {
        /// The hive id.
        hive: String,
        /// Its answer.
        status: tonic::Status,
    },
    /// A hive could not be reached for a call the queen made for a client.
    #[error("hive {hive}: {reason}")]
    HiveUnreachable {
        /// The hive id.
        hive: String,
        /// Why.
        reason: String,
    },
}
