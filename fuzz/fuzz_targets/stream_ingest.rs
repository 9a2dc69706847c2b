//! Decode + validate + apply: arbitrary bytes become a sequence of `HiveMessage`s
//! (each chunk prefixed by one length byte), decoded with prost, validated by the
//! shared conversions and applied to the queen's ingest state (which applies diffs).
//! The target: no panic, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rbee_queen::ingest::IngestState;

fuzz_target!(|data: &[u8]| {
    let mut state = IngestState::default();
    state.start_stream();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (chunk, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        let Ok(wire) = rbee_proto::v1::HiveMessage::decode(chunk) else { continue };
        let Ok(message) = rbee_shared::HiveStreamMessage::try_from(&wire) else { continue };
        let _ = state.apply(message);
    }
});
