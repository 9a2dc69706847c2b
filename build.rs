//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates the
//! prost messages, tonic clients/servers and proto3-JSON serde impls into `OUT_DIR`.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &["rbee/v1/hive.proto", "rbee/v1/fleet.proto", "rbee/v1/scheduler.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    let fds_path = out.join("rbee_descriptor.bin");
    std::fs::write(&fds_path, fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .skip_protoc_run()
        .file_descriptor_set_path(&fds_path)
        .compile_protos(PROTOS, &["proto"])?;
    // Canonical proto3 JSON (the mapping grpcurl prints) for the CLI's --json output.
    pbjson_build::Builder::new().register_descriptors(&fds.encode_to_vec())?.build(&[".rbee"])?;
    Ok(())
}
