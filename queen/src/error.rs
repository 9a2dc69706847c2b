//! The queen's one error type, and its one mapping to a gRPC status.

/// The response metadata key that names the leader's address when a follower refuses
/// a write.
pub const LEADER_METADATA: &str = "rbee-leader";

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
    /// The embedded local hive failed.
    #[error("local hive: {0}")]
    LocalHive(#[from] rbee_hive::HiveError),
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

impl From<QueenError> for tonic::Status {
    fn from(e: QueenError) -> Self {
        use tonic::Status;
        match e {
            QueenError::InvalidArgument(m) => Status::invalid_argument(m),
            QueenError::NotFound(_) | QueenError::NoReservation(_) | QueenError::Missing(_) => {
                Status::not_found(e.to_string())
            }
            QueenError::PermissionDenied(m) => Status::permission_denied(m),
            QueenError::FailedPrecondition(m) => Status::failed_precondition(m),
            QueenError::ResourceExhausted(m) => Status::resource_exhausted(m),
            QueenError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            QueenError::Policy { ref error, .. } => {
                // Every policy worker busy is load, not the policy's failure.
                let code = match error {
                    crate::scheduler::policy::PolicyError::Busy { .. } => tonic::Code::ResourceExhausted,
                    _ => tonic::Code::FailedPrecondition,
                };
                // The script position also travels as metadata, for clients that point at it.
                let at = error.position();
                let mut status = Status::new(code, e.to_string());
                for (key, value) in [("rbee-policy-line", at.line), ("rbee-policy-column", at.column)] {
                    if let Some(v) = value {
                        status.metadata_mut().insert(key, v.into());
                    }
                }
                status
            }
            // The write that makes an answer durable failed: the queen promised nothing,
            // and the caller may try again.
            // Only the leader writes: the leader's address also travels as metadata, for
            // clients that follow it.
            QueenError::Store(crate::store::StoreError::NotLeader(ref leader)) => {
                let mut status = Status::unavailable(e.to_string());
                if let crate::store::Leader::Other(at) = leader
                    && let Ok(v) = at.parse()
                {
                    status.metadata_mut().insert(LEADER_METADATA, v);
                }
                status
            }
            // Another queen committed on the device in between: nothing was promised.
            QueenError::Store(crate::store::StoreError::OverCommit { .. }) => Status::aborted(e.to_string()),
            QueenError::Store(_) => Status::unavailable(e.to_string()),
            QueenError::Hive { ref status, .. } => Status::new(status.code(), e.to_string()),
            QueenError::HiveUnreachable { .. } => Status::unavailable(e.to_string()),
            QueenError::Config(_)
            | QueenError::Tls(_)
            | QueenError::HiveTls(_)
            | QueenError::Internal(_)
            | QueenError::UnsoundRecord { .. }
            | QueenError::Io { .. }
            | QueenError::Transport(_)
            | QueenError::Reflection(_)
            | QueenError::LocalHive(_) => Status::internal(e.to_string()),
        }
    }
}
