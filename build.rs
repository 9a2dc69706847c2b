//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates the
//! prost messages, tonic clients/servers and proto3-JSON serde impls into `OUT_DIR`,
//! and the client of the part of etcd's v3 API the queen speaks (`proto/etcd/`).

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &["rbee/v1/hive.proto", "rbee/v1/fleet.proto", "rbee/v1/scheduler.proto"];
const ETCD: &[&str] = &["etcd/v3.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    let fds_path = out.join("rbee_descriptor.bin");
    std::fs::write(&fds_path, fds.encode_to_vec())?;
    // Small stream buffers: a queen holds one stream per hive (`src/codec.rs`).
    tonic_prost_build::configure()
        .skip_protoc_run()
        .codec_path("crate::codec::LeanCodec")
        .file_descriptor_set_path(&fds_path)
        .compile_protos(PROTOS, &["proto"])?;
    // Canonical proto3 JSON (the mapping grpcurl prints) for the CLI's --json output, with
    // every field emitted: a zero (`"index": 0`) or an empty list (`"reservations": []`)
    // is printed, not dropped. (Unset optional and message fields come out as null, which
    // the CLI leaves out: `queen/src/cli/json.rs`.)
    pbjson_build::Builder::new()
        .register_descriptors(&fds.encode_to_vec())?
        .emit_fields()
        .build(&[".rbee"])?;

    // etcd: clients only, and a descriptor set of its own (not served by reflection).
    let etcd = protox::compile(ETCD, ["proto"])?;
    let etcd_path = out.join("etcd_descriptor.bin");
    std::fs::write(&etcd_path, etcd.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(false)
        .skip_protoc_run()
        .file_descriptor_set_path(&etcd_path)
        .compile_protos(ETCD, &["proto"])?;
    Ok(())
}
