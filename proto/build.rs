//! Compiles `learntrail/v1/*.proto` with prost and generates the protobuf canonical JSON
//! mapping with pbjson. The protos are parsed by protox, a protobuf compiler in Rust, so a plain
//! `cargo build` needs nothing but the toolchain (no system `protoc`).

use std::{env, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "learntrail/v1/event.proto",
        "learntrail/v1/analytics.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let encoded = descriptors.encode_to_vec();
    std::fs::write(out.join("learntrail_descriptors.bin"), &encoded)?;
    prost_build::Config::new()
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .build(&[".learntrail"])?;
    Ok(())
}
