//! Compiles `learntrail/v1/*.proto` with prost and generates the protobuf canonical JSON
//! mapping with pbjson. Needs `protoc` (Debian: protobuf-compiler; `make test` installs it).

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["learntrail/v1/event.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = out.join("learntrail_descriptors.bin");
    prost_build::Config::new()
        .file_descriptor_set_path(&descriptors)
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_protos(&protos, &["."])?;
    let set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .build(&[".learntrail"])?;
    Ok(())
}
