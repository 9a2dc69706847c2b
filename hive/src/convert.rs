//! Wire -> domain for what the hive receives: the queen's stream messages. Validated
//! here, once.

use std::time::Duration;

use rbee_proto::v1 as pb;
use rbee_shared::{MAX_SAMPLE_INTERVAL, MIN_SAMPLE_INTERVAL};

use crate::HiveError;

/// What a queen's stream message asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamRequest {
    /// A new sample interval.
    pub interval: Option<Duration>,
    /// The epoch and capability version the caller holds (meaningful on the first message).
    pub known: Option<(String, u64)>,
    /// Send a full snapshot now.
    pub resync: bool,
}

impl TryFrom<&pb::QueenMessage> for StreamRequest {
    type Error = HiveError;

    fn try_from(m: &pb::QueenMessage) -> Result<Self, HiveError> {
        let interval = match m.sample_interval_ms {
            None => None,
            Some(ms) => {
                let d = Duration::from_millis(u64::from(ms));
                if !(MIN_SAMPLE_INTERVAL..=MAX_SAMPLE_INTERVAL).contains(&d) {
                    return Err(HiveError::InvalidArgument(format!(
                        "sample_interval_ms = {ms} is out of range: must be {}..={}",
                        MIN_SAMPLE_INTERVAL.as_millis(),
                        MAX_SAMPLE_INTERVAL.as_millis()
                    )));
                }
                Some(d)
            }
        };
        let known = match (&m.known_epoch, m.known_capability_version) {
            (None, None) => None,
            (Some(epoch), Some(version)) if !epoch.is_empty() && epoch.len() <= 64 => {
                Some((epoch.clone(), version))
            }
            (Some(_), Some(_)) => {
                return Err(HiveError::InvalidArgument("known_epoch must be 1..=64 bytes".into()));
            }
            _ => {
                return Err(HiveError::InvalidArgument(
                    "known_epoch and known_capability_version must be set together".into(),
                ));
            }
        };
        Ok(Self { interval, known, resync: m.resync })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_message_subscribes_with_defaults() {
        assert_eq!(StreamRequest::try_from(&pb::QueenMessage::default()).unwrap(), StreamRequest::default());
    }

    #[test]
    fn intervals_outside_bounds_are_invalid_arguments() {
        for ms in [0, 99, 60_001, u32::MAX] {
            let m = pb::QueenMessage { sample_interval_ms: Some(ms), ..Default::default() };
            let err = StreamRequest::try_from(&m).unwrap_err().to_string();
            assert!(err.contains("sample_interval_ms") && err.contains("100..=60000"), "{err}");
        }
    }

    #[test]
    fn half_a_resume_point_is_refused() {
        let m = pb::QueenMessage { known_epoch: Some("e".into()), ..Default::default() };
        assert!(StreamRequest::try_from(&m).is_err());
    }
}
