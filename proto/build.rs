//! Compiles `learntrail/v1/*.proto` with prost and generates the protobuf canonical JSON
//! mapping with pbjson. The protos are parsed by protox, a protobuf compiler in Rust, so a plain
//! `cargo build` needs nothing but the toolchain (no system `protoc`).

use std::{env, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // every learntrail/v1/*.proto, in a stable order
    let mut protos: Vec<String> = std::fs::read_dir("learntrail/v1")?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".proto"))
        .map(|name| format!("learntrail/v1/{name}"))
        .collect();
    protos.sort();
    println!("cargo:rerun-if-changed=learntrail/v1");
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(&protos, ["."])?;
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
