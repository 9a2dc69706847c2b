//! Compact samples at the hive's outbound edge, mirroring the queen's
//! `link/ingest_compact.rs`: on a stream that asked for them, a session's domain
//! [`Sample`](rbee_shared::Sample) goes on the wire as a `CompactSample`
//! ([`rbee_shared::compact::Encoder`]) measured against the capabilities the stream has
//! delivered. The edge follows those capabilities from the snapshots and diffs it sends
//! itself, so the session never sees a wire type. A snapshot starts the receiver's view
//! again (the next sample is a keyframe).

use rbee_proto::v1 as pb;
use rbee_shared::compact::{Encoder, Layout};
use rbee_shared::{HivePayload, HiveStreamMessage, VersionedCapabilities};
use tonic::Status;

use crate::HiveError;

/// One stream's outbound conversion: domain messages to wire messages, samples in
/// compact form when the caller asked for them.
#[derive(Debug, Default)]
pub struct CompactEgress {
    /// `None` when the stream sends whole samples.
    compact: Option<CompactState>,
}

/// What a compact stream's edge holds.
#[derive(Debug, Default)]
struct CompactState {
    /// The receiver's view, as the encoder keeps it.
    encoder: Encoder,
    /// The capabilities the stream has delivered (`None` before the first snapshot of a
    /// stream that did not start from the caller's view).
    delivered: Option<VersionedCapabilities>,
    /// The layout of `delivered`, while its version holds.
    layout: Option<Layout>,
}

impl CompactEgress {
    /// The edge of a stream that sends whole samples.
    pub fn whole() -> Self {
        Self::default()
    }

    /// The edge of a stream that sends compact samples; `delivered` is the view the caller
    /// already holds, when the stream resumed it without a snapshot.
    pub fn compact(delivered: Option<VersionedCapabilities>) -> Self {
        Self { compact: Some(CompactState { delivered, ..Default::default() }) }
    }

    /// A session message for the wire, or the error as a status.
    pub fn outbound(&mut self, m: Result<HiveStreamMessage, HiveError>) -> Result<pb::HiveMessage, Status> {
        let m = m.map_err(Status::from)?;
        let payload = match (&m.payload, self.compact.as_mut()) {
            (_, None) => (&m.payload).into(),
            (HivePayload::Snapshot { capabilities, .. }, Some(state)) => {
                *state = CompactState { delivered: Some(capabilities.clone()), ..Default::default() };
                (&m.payload).into()
            }
            (HivePayload::Diff(diff), Some(state)) => {
                if let Some(held) = state.delivered.as_mut()
                    && let Err(e) = diff.apply_to(held)
                {
                    // Never happens (the session diffs from what it delivered): send whole
                    // samples until the next snapshot rather than a wrong layout.
                    tracing::warn!(error = %e, "compact edge lost track of the delivered capabilities");
                    state.delivered = None;
                }
                (&m.payload).into()
            }
            (HivePayload::Sample(sample), Some(state)) => state.encode(sample),
        };
        Ok(pb::HiveMessage { seq: m.seq, hive_time_unix_ms: m.hive_time_unix_ms, payload: Some(payload) })
    }
}

impl CompactState {
    /// The sample in compact form (whole if the encoder cannot express it, which a
    /// sample consistent with the delivered capabilities never causes).
    fn encode(&mut self, sample: &rbee_shared::Sample) -> pb::hive_message::Payload {
        use pb::hive_message::Payload;
        let Some(delivered) = self.delivered.as_ref() else {
            return Payload::Sample(sample.into());
        };
        let layout = match &mut self.layout {
            Some(l) if l.version == delivered.version => l,
            layout => layout.insert(Layout::of(delivered)),
        };
        match self.encoder.encode_sample(sample, layout) {
            Ok(c) => Payload::CompactSample(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot send this sample in compact form; sending it whole");
                self.encoder = Encoder::new();
                Payload::Sample(sample.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_shared::compact::Decoder;
    use rbee_shared::{CapabilityDiff, GpuDevice, GpuSample, HiveIdentity, Sample, SnapshotReason};

    fn caps(version: u64, gpus: &[&str]) -> VersionedCapabilities {
        let mut caps = VersionedCapabilities { version, caps: Default::default() };
        caps.caps.ram_total_bytes = 64 << 30;
        for (i, id) in gpus.iter().enumerate() {
            let gpu = GpuDevice {
                id: (*id).into(),
                index: i as u32,
                name: String::new(),
                pci_bus_id: String::new(),
                compute_capability: None,
                vram_total_bytes: 80 << 30,
                driver_version: None,
                cuda_version: None,
                power_limit_mw: None,
                mig_mode: rbee_shared::MigMode::NotReported,
                topology: Default::default(),
            };
            caps.caps.gpus.insert(gpu.id.clone(), gpu);
        }
        caps
    }

    fn sample(at: u64, version: u64, gpus: &[&str]) -> Sample {
        Sample {
            taken_at_unix_ms: at,
            capability_version: Some(version),
            ram_total_bytes: 64 << 30,
            ram_used_bytes: 1 << 30,
            ram_available_bytes: 63 << 30,
            cpu_percent: Some(12.0),
            gpus: gpus
                .iter()
                .enumerate()
                .map(|(i, id)| GpuSample {
                    id: (*id).into(),
                    index: i as u32,
                    vram_used_bytes: Some(2 << 30),
                    gpu_util_percent: Some(40.0),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn msg(seq: u64, payload: HivePayload) -> Result<HiveStreamMessage, HiveError> {
        Ok(HiveStreamMessage { seq, hive_time_unix_ms: 7, payload })
    }

    fn snapshot(caps: VersionedCapabilities) -> HivePayload {
        HivePayload::Snapshot {
            reason: SnapshotReason::Initial,
            identity: HiveIdentity {
                hive_id: "h".into(),
                epoch: "e".into(),
                hostname: String::new(),
                advertised_address: String::new(),
                version: String::new(),
                protocol_version: 1,
                labels: Default::default(),
                gpu_source: rbee_shared::DeviceSourceKind::Simulated,
                started_at_unix_ms: 0,
            },
            capabilities: caps,
        }
    }

    /// The wire frame's sample, decoded as the queen's edge does.
    fn decoded(frame: &pb::HiveMessage, decoder: &mut Decoder, held: &VersionedCapabilities) -> Sample {
        match frame.payload.as_ref().unwrap() {
            pb::hive_message::Payload::CompactSample(c) => {
                decoder.decode_sample(c, &Layout::of(held)).unwrap()
            }
            other => panic!("not a compact sample: {other:?}"),
        }
    }

    #[test]
    fn a_compact_stream_sends_compact_samples_against_what_it_delivered() {
        let mut edge = CompactEgress::compact(None);
        let mut decoder = Decoder::new();
        let v1 = caps(1, &["GPU-a"]);
        let frame = edge.outbound(msg(1, snapshot(v1.clone()))).unwrap();
        assert!(matches!(frame.payload, Some(pb::hive_message::Payload::Snapshot(_))));
        let first = sample(1_000, 1, &["GPU-a"]);
        let frame = edge.outbound(msg(2, HivePayload::Sample(first.clone()))).unwrap();
        assert_eq!((frame.seq, frame.hive_time_unix_ms), (2, 7));
        assert_eq!(decoded(&frame, &mut decoder, &v1), first, "a keyframe is exact");
        // A diff adds a GPU: the next sample names it by its position in the new layout.
        let v2 = caps(2, &["GPU-a", "GPU-b"]);
        let diff = CapabilityDiff::between(&v1, &v2);
        edge.outbound(msg(3, HivePayload::Diff(diff))).unwrap();
        let second = sample(2_000, 2, &["GPU-a", "GPU-b"]);
        let frame = edge.outbound(msg(4, HivePayload::Sample(second.clone()))).unwrap();
        assert_eq!(decoded(&frame, &mut decoder, &v2), second);
    }

    #[test]
    fn a_resumed_compact_stream_encodes_against_the_view_the_caller_holds() {
        let held = caps(3, &["GPU-a", "GPU-b"]);
        let mut edge = CompactEgress::compact(Some(held.clone()));
        let s = sample(1_000, 3, &["GPU-a", "GPU-b"]);
        let frame = edge.outbound(msg(1, HivePayload::Sample(s.clone()))).unwrap();
        assert_eq!(decoded(&frame, &mut Decoder::new(), &held), s);
    }

    #[test]
    fn whole_streams_and_samples_the_encoder_cannot_express_go_whole() {
        let s = sample(1_000, 1, &["GPU-a"]);
        let frame = CompactEgress::whole().outbound(msg(1, HivePayload::Sample(s.clone()))).unwrap();
        assert_eq!(frame.payload, Some(pb::hive_message::Payload::Sample((&s).into())));
        // A GPU the delivered capabilities lack cannot be named by position: sent whole.
        let mut edge = CompactEgress::compact(Some(caps(1, &["GPU-a"])));
        let odd = sample(1_000, 1, &["GPU-z"]);
        let frame = edge.outbound(msg(1, HivePayload::Sample(odd.clone()))).unwrap();
        assert_eq!(frame.payload, Some(pb::hive_message::Payload::Sample((&odd).into())));
        let err = edge.outbound(Err(HiveError::ShuttingDown)).unwrap_err();
        assert_eq!(err.code(), Status::from(HiveError::ShuttingDown).code());
    }
}
