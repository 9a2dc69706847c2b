//! The rbee wire contract: the `rbee.v1` protobuf messages and gRPC services,
//! generated at build time from `proto/` (nothing generated is committed).
//!
//! Domain code does not pass these types around: `rbee-shared`'s `convert`
//! module translates them at the edge.

/// `rbee.v1`: hive and queen services and their messages.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("rbee.v1");
    include!(concat!(env!("OUT_DIR"), "/rbee.v1.serde.rs"));
}

/// The encoded `FileDescriptorSet` of every rbee proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rbee_descriptor");

/// The wire protocol version this crate implements.
pub const PROTOCOL_VERSION: u32 = 1;
