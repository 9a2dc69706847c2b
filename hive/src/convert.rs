//! The hive's API edge: the caller's wire messages become domain
//! [`QueenStreamMessage`]s (validated once, in `rbee_shared::convert`); the session's
//! domain messages become wire messages at `stream_compact.rs`. Nothing else in the
//! hive touches generated stream types. `ReadModelFile`'s request and chunks convert
//! here too.

use rbee_proto::v1 as pb;
use rbee_shared::QueenStreamMessage;
use rbee_shared::size_limit::is_too_large;
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

use crate::HiveError;
use crate::models::serve::{FileChunk, FileRequest, MAX_PATH_BYTES};
use crate::stream::Inbound;

/// A `ReadModelFile` request, checked: a model id of valid syntax and a path of 1 to
/// [`MAX_PATH_BYTES`] bytes (INVALID_ARGUMENT otherwise). Whether the path is one of
/// the model's files is the server's question (NOT_FOUND), so that every other text,
/// traversal forms included, gets the same answer as a file the model does not have.
pub fn file_request(r: pb::ReadModelFileRequest) -> Result<FileRequest, HiveError> {
    let model_id = rbee_shared::convert::models::model_id_from_wire("model_id", &r.model_id)?;
    if r.path.is_empty() || r.path.len() > MAX_PATH_BYTES {
        return Err(
            rbee_shared::ConvertError::new("path", format!("must be 1..={MAX_PATH_BYTES} bytes")).into()
        );
    }
    Ok(FileRequest { model_id, path: r.path, offset: r.offset, allow_partial: r.allow_partial })
}

impl From<FileChunk> for pb::ModelFileChunk {
    fn from(c: FileChunk) -> Self {
        Self { offset: c.offset, data: c.data, size_bytes: c.size_bytes, sha256: c.sha256 }
    }
}

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
