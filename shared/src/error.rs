//! The shared crate's errors.

/// A wire message that does not make a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ConvertError {
    /// The offending field, as a dotted path (e.g. `capabilities.gpus[2].id`).
    pub field: String,
    /// Why it is invalid.
    pub reason: String,
}

impl ConvertError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

impl From<ConvertError> for tonic::Status {
    fn from(e: ConvertError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// Why a capability diff could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    /// The diff was computed against another version than the one held.
    #[error("diff base version {base} does not match held version {held}")]
    BaseMismatch {
        /// The version the view holds.
        held: u64,
        /// The version the diff starts from.
        base: u64,
    },
    /// The diff does not move the version forward.
    #[error("diff goes from version {base} to {new}, which is not forward")]
    NotForward {
        /// The base version.
        base: u64,
        /// The new version.
        new: u64,
    },
    /// The diff names a GPU that is not in the held view, or adds one that is.
    #[error("diff is inconsistent with the held view: {0}")]
    Inconsistent(String),
}
