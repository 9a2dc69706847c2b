//! The queen's inbound edge for a hive's stream: a wire message becomes the domain
//! [`HiveStreamMessage`] that ingest applies. A `CompactSample` is decoded straight into
//! the domain [`Sample`](rbee_shared::Sample) it stands for
//! ([`rbee_shared::compact::Decoder::decode_sample`]) against the capabilities this link
//! holds; every other message goes through the ordinary checked conversion. The decoder
//! starts again on every stream and snapshot. Mirrors the hive's outbound edge,
//! `hive/src/stream_compact.rs`.

use std::sync::Arc;

use rbee_proto::v1 as pb;
use rbee_shared::compact::{CompactError, Decoder, Layout};
use rbee_shared::{ConvertError, HivePayload, HiveStreamMessage, VersionedCapabilities};

/// Why a message from the hive does not make a domain message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// A message that does not validate.
    #[error(transparent)]
    Invalid(#[from] ConvertError),
    /// A compact sample that cannot be decoded against the view held.
    #[error(transparent)]
    Compact(#[from] CompactError),
}

/// One link's compact decoding state.
#[derive(Debug, Default)]
pub struct CompactIngest {
    /// The view the hive's compact samples are deltas against.
    decoder: Decoder,
    /// The layout of the capabilities held, while they are the same `Arc`.
    layout: Option<(Arc<VersionedCapabilities>, Layout)>,
}

impl CompactIngest {
    /// Forgets the view (a new stream).
    pub fn reset(&mut self) {
        self.decoder.reset();
    }

    /// `m` as a domain message: a compact sample decoded against `caps` (the
    /// capabilities held), anything else converted and checked. A snapshot starts the
    /// view again.
    pub fn decode(
        &mut self,
        m: &pb::HiveMessage,
        caps: Option<&Arc<VersionedCapabilities>>,
    ) -> Result<HiveStreamMessage, InboundError> {
        use pb::hive_message::Payload;
        match &m.payload {
            Some(Payload::CompactSample(c)) => {
                let layout = match (&self.layout, caps) {
                    (Some((held, layout)), Some(caps)) if Arc::ptr_eq(held, caps) => layout,
                    (_, Some(caps)) => &self.layout.insert((caps.clone(), Layout::of(caps))).1,
                    (_, None) => return Err(CompactError::NoKeyframe.into()),
                };
                let sample = self.decoder.decode_sample(c, layout)?;
                Ok(HiveStreamMessage {
                    seq: m.seq,
                    hive_time_unix_ms: m.hive_time_unix_ms,
                    payload: HivePayload::Sample(sample),
                })
            }
            Some(Payload::Snapshot(_)) => {
                self.decoder.reset();
                Ok(HiveStreamMessage::try_from(m)?)
            }
            _ => Ok(HiveStreamMessage::try_from(m)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_shared::Sample;
    use rbee_shared::compact::Encoder;

    fn caps() -> Arc<VersionedCapabilities> {
        let mut caps = VersionedCapabilities { version: 1, caps: Default::default() };
        caps.caps.ram_total_bytes = 100;
        Arc::new(caps)
    }

    fn frame(seq: u64, c: pb::CompactSample) -> pb::HiveMessage {
        pb::HiveMessage {
            seq,
            hive_time_unix_ms: 9,
            payload: Some(pb::hive_message::Payload::CompactSample(c)),
        }
    }

    #[test]
    fn a_compact_frame_becomes_the_domain_sample_it_stands_for() {
        let caps = caps();
        let layout = Layout::of(&caps);
        let sample = Sample {
            taken_at_unix_ms: 1_000,
            capability_version: Some(1),
            ram_total_bytes: 100,
            ram_used_bytes: 40,
            ram_available_bytes: 60,
            cpu_percent: Some(25.0),
            ..Default::default()
        };
        let c = Encoder::new().encode_sample(&sample, &layout).unwrap();
        let mut ingest = CompactIngest::default();
        let m = ingest.decode(&frame(4, c), Some(&caps)).unwrap();
        assert_eq!(
            m,
            HiveStreamMessage { seq: 4, hive_time_unix_ms: 9, payload: HivePayload::Sample(sample) }
        );
    }

    #[test]
    fn a_compact_frame_that_makes_an_invalid_sample_is_refused_and_keeps_the_view() {
        let caps = caps();
        let mut ingest = CompactIngest::default();
        let mut ok = pb::CompactSample {
            taken_at_unix_ms: Some(1_000),
            ram_used_bytes: Some(40),
            ram_available_bytes: Some(60),
            ..Default::default()
        };
        ingest.decode(&frame(1, ok.clone()), Some(&caps)).unwrap();
        // Used above the capabilities' RAM total: the full sample does not validate.
        let bad =
            pb::CompactSample { taken_at_delta_ms: 1_000, ram_used_bytes: Some(500), ..Default::default() };
        let err = ingest.decode(&frame(2, bad), Some(&caps)).unwrap_err();
        assert!(
            matches!(&err, InboundError::Compact(CompactError::Invalid(e)) if e.field == "sample.ram_used_bytes")
        );
        // The view is the one before the bad frame: a delta applies to it.
        ok.taken_at_unix_ms = None;
        ok.taken_at_delta_ms = 2_000;
        let HivePayload::Sample(s) = ingest.decode(&frame(3, ok), Some(&caps)).unwrap().payload else {
            panic!("not a sample")
        };
        assert_eq!((s.taken_at_unix_ms, s.ram_used_bytes), (3_000, 40));
        assert_eq!(
            ingest.decode(&frame(4, pb::CompactSample::default()), None),
            Err(InboundError::Compact(CompactError::NoKeyframe))
        );
    }
}
