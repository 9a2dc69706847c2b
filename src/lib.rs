//! The rbee wire contract: the `rbee.v1` protobuf messages and gRPC services,
//! generated at build time from `proto/` (nothing generated is committed),
//! and the client of the part of etcd's v3 API that the queen speaks.
//!
//! Domain code does not pass these types around: `rbee-shared`'s `convert`
//! module translates them at the edge.

pub mod codec;

/// `rbee.v1`: hive and queen services and their messages.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("rbee.v1");
    include!(concat!(env!("OUT_DIR"), "/rbee.v1.serde.rs"));
}

/// `etcdserverpb`: the client of the part of etcd's v3 API that the queen speaks when
/// its state lives in etcd (KV, Watch, Lease; `proto/etcd/v3.proto`).
pub mod etcd {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("etcdserverpb");
}

/// The encoded `FileDescriptorSet` of every rbee proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rbee_descriptor");

/// The wire protocol version this crate implements.
pub const PROTOCOL_VERSION: u32 = 1;

#[cfg(test)]
mod tests {
    /// Building needs no system `protoc`: the only crate that generates code from
    /// protos is this one, with protox. A dependency whose build script runs `protoc`
    /// (as the `etcd-client` crate's does) would break the README's two commands on a
    /// machine with only cargo and python3.
    #[test]
    fn no_dependency_compiles_protos_with_a_system_protoc() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
            .expect("Cargo.lock is committed next to the workspace's Cargo.toml");
        let generators =
            ["prost-build", "tonic-build", "tonic-prost-build", "protobuf-codegen", "protoc-rust"];
        let mut users = Vec::new();
        for package in lock.split("[[package]]").skip(1) {
            let name = package
                .lines()
                .find_map(|l| l.strip_prefix("name = \""))
                .and_then(|l| l.strip_suffix('"'))
                .unwrap_or_default();
            let depends_on_generator = package.lines().any(|l| {
                let dep = l.trim().trim_start_matches('"').split([' ', '"']).next().unwrap_or_default();
                l.starts_with(" \"") && generators.contains(&dep)
            });
            if depends_on_generator && !generators.contains(&name) {
                users.push(name.to_owned());
            }
        }
        assert_eq!(users, ["rbee-proto"], "crates that generate code from protos at build time");
    }
}
