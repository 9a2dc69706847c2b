//! The queen's one mapping from its error to a gRPC status, at the API edge (as
//! restate keeps its mapping in its gRPC module): each error's code, and the metadata a
//! client can act on — the leader's address when a follower refuses a write, the
//! script position when a policy fails.

use tonic::Status;

use crate::QueenError;
use crate::scheduler::policy::PolicyError;
use crate::store::{Leader, StoreError};

/// The response metadata key that names the leader's address when a follower refuses
/// a write.
pub const LEADER_METADATA: &str = "rbee-leader";

impl From<QueenError> for Status {
    fn from(e: QueenError) -> Self {
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
                    PolicyError::Busy { .. } => tonic::Code::ResourceExhausted,
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
            QueenError::Store(StoreError::NotLeader(ref leader)) => {
                let mut status = Status::unavailable(e.to_string());
                if let Leader::Other(at) = leader
                    && let Ok(v) = at.parse()
                {
                    status.metadata_mut().insert(LEADER_METADATA, v);
                }
                status
            }
            // Another queen committed on the device in between: nothing was promised.
            QueenError::Store(StoreError::OverCommit { .. }) => Status::aborted(e.to_string()),
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
            | QueenError::Reflection(_) => Status::internal(e.to_string()),
        }
    }
}
