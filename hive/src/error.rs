//! The hive's one error type, and its one mapping to a gRPC status.

use std::path::PathBuf;

use rbee_shared::ConvertError;
use rbee_shared::bearer::BearerError;
use rbee_shared::tls::TlsError;

/// Everything that can go wrong in the hive.
#[derive(Debug, thiserror::Error)]
pub enum HiveError {
    /// A caller sent a message that is not valid.
    #[error("{0}")]
    InvalidMessage(#[from] ConvertError),
    /// A caller's message is larger than the hive accepts.
    #[error("message too large: {0}")]
    MessageTooLarge(String),
    /// A caller's message could not be decoded.
    #[error("message could not be decoded: {0}")]
    Undecodable(String),
    /// A caller did not subscribe in time.
    #[error("no subscription message within {} s; send {{}} to subscribe", .0.as_secs())]
    SubscribeTimeout(std::time::Duration),
    /// Every stream slot is taken.
    #[error(
        "too many streams: this hive serves at most {limit} MetricsStreams at once ({reserved} of them \
         reserved for the queen it announces to); close one or raise --max-streams"
    )]
    TooManyStreams {
        /// The limit (`--max-streams`).
        limit: usize,
        /// Slots only the announced queen may use.
        reserved: usize,
    },
    /// A configuration value is not valid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A TLS file could not be used.
    #[error("invalid configuration: {0}")]
    Tls(#[from] TlsError),
    /// A simulation scenario could not be read or parsed.
    #[error("simulation file {path}: {source}")]
    Scenario {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: ScenarioError,
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
    /// The queen to announce to could not be reached.
    #[error("cannot reach the queen at {queen}: {source}")]
    QueenUnreachable {
        /// The queen's URL.
        queen: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The queen refused the announce.
    #[error("the queen at {queen} refused the announce: {:?}: {}", status.code(), status.message())]
    AnnounceRefused {
        /// The queen's URL.
        queen: String,
        /// Its answer.
        status: tonic::Status,
    },
    /// The queen token cannot be sent.
    #[error("the queen token: {0}")]
    Bearer(#[from] BearerError),
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
    /// This hive runs without a models directory.
    #[error("this hive has no models directory")]
    ModelsDisabled,
    /// No such model or download.
    #[error("{0}")]
    ModelNotFound(String),
    /// The model is on disk and being verified.
    #[error("model {0} is on disk and its files are being verified; delete it first to download it again")]
    ModelBusy(String),
    /// The model is ready (or being downloaded) with other content than the caller
    /// declared.
    #[error("{0}")]
    ModelConflict(String),
    /// A new download would pass a budget of the hive's view (catalog entries, failed
    /// downloads per caller): RESOURCE_EXHAUSTED.
    #[error("{0}")]
    ModelsBudget(String),
    /// A download's declared size exceeds the free disk.
    #[error("not enough disk space in {}: the model declares {needed} bytes, {free} are free", dir.display())]
    InsufficientDisk {
        /// The models directory.
        dir: PathBuf,
        /// Declared bytes.
        needed: u64,
        /// Free bytes.
        free: u64,
    },
    /// The models directory could not be used.
    #[error("models directory {}: {source}", path.display())]
    ModelIo {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A preload needs a ready model.
    #[error("model {model} is {state}, not ready; only a ready model can be preloaded")]
    ModelNotReady {
        /// The model.
        model: String,
        /// Its state.
        state: &'static str,
    },
    /// The model is larger than the whole RAM cache budget.
    #[error("model {model} is {size} bytes, more than the whole --ram-cache-budget of {budget} bytes")]
    OverBudget {
        /// The model.
        model: String,
        /// Its size.
        size: u64,
        /// The budget.
        budget: u64,
    },
    /// Preloads in flight fill the RAM cache budget: a model being read is never
    /// evicted for room, so this one must wait for them.
    #[error(
        "model {model} ({size} bytes) does not fit the --ram-cache-budget of {budget} bytes now: preloads in \
         flight hold {in_flight} bytes of it; try again when they are done"
    )]
    BudgetInFlight {
        /// The model.
        model: String,
        /// Its size.
        size: u64,
        /// Bytes of the other preloads in flight.
        in_flight: u64,
        /// The budget.
        budget: u64,
    },
    /// A preload would not fit the memory available now.
    #[error(
        "not enough memory to preload {model}: {needed} bytes still to read plus a headroom of {headroom} \
         bytes exceed MemAvailable ({available} bytes)"
    )]
    InsufficientMemory {
        /// The model.
        model: String,
        /// Bytes not yet resident.
        needed: u64,
        /// `MemAvailable`.
        available: u64,
        /// Kept free (5% of RAM).
        headroom: u64,
    },
    /// The machine is under memory pressure.
    #[error(
        "memory pressure: some avg10 = {avg10:.1}% is over the limit of {limit:.1}% (--preload-pressure-limit); try later"
    )]
    MemoryPressure {
        /// The reading.
        avg10: f64,
        /// The limit.
        limit: f64,
    },
    /// A preload waited for failed or was cancelled.
    #[error("preload failed: {0}")]
    PreloadFailed(String),
    /// This hive does not serve its models to peers (`--serve-models=false`).
    #[error("this hive does not serve model files to peers (--serve-models=false)")]
    ServingDisabled,
    /// A ReadModelFile caller without a client certificate, beyond loopback.
    #[error(
        "reading model files needs a client certificate the hive trusts (--client-ca, mutual TLS); \
         plaintext callers are served on loopback only"
    )]
    PeerUnauthenticated,
    /// Every peer upload slot is taken (`--max-peer-uploads`).
    #[error(
        "this hive serves at most {limit} model file uploads to peers at once (--max-peer-uploads); \
         read from another source or retry later"
    )]
    TooManyUploads {
        /// The limit.
        limit: usize,
    },
    /// A served file's bytes are not the ones verified (they changed on disk): the
    /// stream ends and the model is verified again.
    #[error("{0}")]
    ServedFileChanged(String),
    /// A partial file being served stopped growing for good: its download failed, was
    /// cancelled or started the file over.
    #[error("{0}")]
    PartialAborted(String),
    /// A read offset past the end of the file.
    #[error("offset {offset} is past the end of {path} ({size} bytes)")]
    OffsetPastEnd {
        /// The file.
        path: String,
        /// The offset asked for.
        offset: u64,
        /// The file's size.
        size: u64,
    },
}

impl From<HiveError> for tonic::Status {
    fn from(e: HiveError) -> Self {
        use tonic::Status;
        match e {
            HiveError::InvalidMessage(_) | HiveError::Undecodable(_) => {
                Status::invalid_argument(e.to_string())
            }
            HiveError::MessageTooLarge(_) => Status::resource_exhausted(e.to_string()),
            HiveError::SubscribeTimeout(_) => Status::deadline_exceeded(e.to_string()),
            HiveError::TooManyStreams { .. } => Status::resource_exhausted(e.to_string()),
            HiveError::ShuttingDown | HiveError::Source { .. } => Status::unavailable(e.to_string()),
            HiveError::ModelNotFound(_) => Status::not_found(e.to_string()),
            HiveError::ModelsDisabled | HiveError::ModelBusy(_) | HiveError::ModelConflict(_) => {
                Status::failed_precondition(e.to_string())
            }
            HiveError::InsufficientDisk { .. } | HiveError::ModelsBudget(_) => {
                Status::resource_exhausted(e.to_string())
            }
            HiveError::ModelIo { .. } => Status::internal(e.to_string()),
            HiveError::ModelNotReady { .. } => Status::failed_precondition(e.to_string()),
            HiveError::OverBudget { .. } | HiveError::InsufficientMemory { .. } => {
                Status::resource_exhausted(e.to_string())
            }
            HiveError::MemoryPressure { .. } | HiveError::BudgetInFlight { .. } => {
                Status::unavailable(e.to_string())
            }
            HiveError::PreloadFailed(_) => Status::aborted(e.to_string()),
            HiveError::ServingDisabled => Status::failed_precondition(e.to_string()),
            HiveError::PeerUnauthenticated => Status::unauthenticated(e.to_string()),
            HiveError::TooManyUploads { .. } => Status::resource_exhausted(e.to_string()),
            HiveError::ServedFileChanged(_) => Status::data_loss(e.to_string()),
            HiveError::PartialAborted(_) => Status::aborted(e.to_string()),
            HiveError::OffsetPastEnd { .. } => Status::out_of_range(e.to_string()),
            HiveError::Config(_)
            | HiveError::Tls(_)
            | HiveError::Scenario { .. }
            | HiveError::StateDir { .. }
            | HiveError::QueenUnreachable { .. }
            | HiveError::AnnounceRefused { .. }
            | HiveError::Bearer(_)
            | HiveError::Transport(_)
            | HiveError::Reflection(_)
            | HiveError::Task(_) => Status::internal(e.to_string()),
        }
    }
}

/// What is wrong with a simulation scenario (the message names the GPU and the field).
/// Defined here, below `source::simulated` which parses scenarios, so that this file
/// imports nothing of the layers above it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScenarioError(pub String);

impl From<String> for ScenarioError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_error() {
        let s = tonic::Status::from(HiveError::TooManyStreams { limit: 4, reserved: 2 });
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("--max-streams"), "{}", s.message());
        assert_eq!(tonic::Status::from(HiveError::ShuttingDown).code(), tonic::Code::Unavailable);
        let bad = ConvertError::new("sample_interval_ms", "50 ms is out of range");
        assert_eq!(tonic::Status::from(HiveError::from(bad)).code(), tonic::Code::InvalidArgument);
    }
}
