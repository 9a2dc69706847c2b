//! The hive's one error type, and its one mapping to a gRPC status.

use std::path::PathBuf;

/// Everything that can go wrong in the hive.
#[derive(Debug, thiserror::Error)]
pub enum HiveError {
    /// A caller sent a message that is not valid.
    #[error("{0}")]
    InvalidArgument(String),
    /// A configuration value is not valid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A simulation scenario could not be read or parsed.
    #[error("simulation file {path}: {reason}")]
    Scenario {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The state directory could not be used.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The directory or file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A device source failed as a whole (one bad GPU is not an error: it is left out).
    #[error("{source_name} device source: {reason}")]
    Source {
        /// Which source.
        source_name: &'static str,
        /// What failed.
        reason: String,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built from the descriptor set.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The hive is shutting down.
    #[error("the hive is shutting down")]
    ShuttingDown,
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<HiveError> for tonic::Status {
    fn from(e: HiveError) -> Self {
        use tonic::Status;
        match e {
            HiveError::InvalidArgument(msg) => Status::invalid_argument(msg),
            HiveError::ShuttingDown => Status::unavailable(e.to_string()),
            HiveError::Source { .. } => Status::unavailable(e.to_string()),
            HiveError::Config(_)
            | HiveError::Scenario { .. }
            | HiveError::StateDir { .. }
            | HiveError::Transport(_)
            | HiveError::Reflection(_)
            | HiveError::Task(_) => Status::internal(e.to_string()),
        }
    }
}
