//! Compact samples at the queen's edge: a `CompactSample` is expanded back into the
//! full `Sample` it stands for ([`rbee_shared::compact::Decoder`]) against the
//! capabilities this link holds, before the message goes through the ordinary
//! validation and ingest. The decoder starts again on every stream and snapshot.

use std::borrow::Cow;
use std::sync::Arc;

use rbee_proto::v1 as pb;
use rbee_shared::VersionedCapabilities;
use rbee_shared::compact::{CompactError, Decoder, Layout};

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

    /// `m`, with a compact sample expanded into the full sample it stands for against
    /// `caps` (the capabilities held). Other messages pass as they are; a snapshot
    /// starts the view again.
    pub fn expand<'m>(
        &mut self,
        m: &'m pb::HiveMessage,
        caps: Option<&Arc<VersionedCapabilities>>,
    ) -> Result<Cow<'m, pb::HiveMessage>, CompactError> {
        use pb::hive_message::Payload;
        match &m.payload {
            Some(Payload::CompactSample(c)) => {
                let layout = match (&self.layout, caps) {
                    (Some((held, layout)), Some(caps)) if Arc::ptr_eq(held, caps) => layout,
                    (_, Some(caps)) => &self.layout.insert((caps.clone(), Layout::of(caps))).1,
                    (_, None) => return Err(CompactError::NoKeyframe),
                };
                let sample = self.decoder.decode(c, layout)?;
                Ok(Cow::Owned(pb::HiveMessage { payload: Some(Payload::Sample(sample)), ..m.clone_header() }))
            }
            Some(Payload::Snapshot(_)) => {
                self.decoder.reset();
                Ok(Cow::Borrowed(m))
            }
            _ => Ok(Cow::Borrowed(m)),
        }
    }
}

/// The envelope of a message without its payload.
trait Header {
    fn clone_header(&self) -> Self;
}

impl Header for pb::HiveMessage {
    fn clone_header(&self) -> Self {
        Self { seq: self.seq, hive_time_unix_ms: self.hive_time_unix_ms, payload: None }
    }
}
