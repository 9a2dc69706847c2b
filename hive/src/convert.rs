//! The hive's API edge: the caller's wire messages become domain
//! [`QueenStreamMessage`]s (validated once, in `rbee_shared::convert`); the session's
//! domain messages become wire messages at `stream_compact.rs`. Nothing else in the
//! hive touches generated stream types.

use rbee_proto::v1 as pb;
use rbee_shared::QueenStreamMessage;
use rbee_shared::size_limit::is_too_large;
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

use crate::HiveError;
use crate::stream::Inbound;

/// The caller's half of `MetricsStream`, converted. A message that does not decode
/// (for example one over the size limit) or does not validate is an error item; a
/// caller that resets or cancels simply ends the stream.
pub fn inbound(messages: Streaming<pb::QueenMessage>) -> Inbound {
    Box::pin(messages.map_while(|m| match m {
        Ok(m) => Some(QueenStreamMessage::try_from(&m).map_err(HiveError::from)),
        Err(status) if is_too_large(&status) => {
            Some(Err(HiveError::MessageTooLarge(status.message().to_owned())))
        }
        Err(status) if status.code() == Code::InvalidArgument || status.code() == Code::Internal => {
            Some(Err(HiveError::Undecodable(status.message().to_owned())))
        }
        Err(_) => None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn oversized_messages_are_recognised() {
        assert!(is_too_large(&Status::out_of_range(
            "Error, decoded message length too large: found 70000 bytes, the limit is: 65536 bytes"
        )));
        assert!(!is_too_large(&Status::out_of_range("index")));
        let status = Status::from(HiveError::MessageTooLarge("found 70000 bytes".into()));
        assert_eq!(status.code(), Code::ResourceExhausted);
    }
}
