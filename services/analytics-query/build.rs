//! Generates the `learntrail.v1.AnalyticsQuery` gRPC server and client. The messages come from
//! `learntrail-proto` (extern path); the protos are parsed by protox, so no system `protoc`. The
//! encoded descriptors are kept for gRPC server reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "learntrail/v1/analytics.proto";
    println!("cargo:rerun-if-changed=../../proto/{proto}");
    println!("cargo:rerun-if-changed=../../proto/learntrail/v1/event.proto");
    let descriptors = protox::compile([proto], ["../../proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("analytics_descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .extern_path(".learntrail.v1", "::learntrail_proto::v1")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
