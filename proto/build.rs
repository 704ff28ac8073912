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
    let mut zeros = String::from(
        "/// Per message type, the fields canonical JSON leaves out at their default that a Keen\n\
         /// event carries: numbers and booleans without presence, and the messages to look into.\n\
         pub(crate) static ZEROS: &[(&str, &[(&str, Zero)])] = &[\n",
    );
    for file in &descriptors.file {
        let package = file.package.clone().unwrap_or_default();
        let mut stack: Vec<(String, _)> = file
            .message_type
            .iter()
            .map(|m| (format!(".{package}"), m))
            .collect();
        while let Some((scope, message)) = stack.pop() {
            let name = format!("{scope}.{}", message.name.clone().unwrap_or_default());
            stack.extend(message.nested_type.iter().map(|m| (name.clone(), m)));
            let mut fields = String::new();
            for field in &message.field {
                let field_name = field.name.as_deref().unwrap_or_default();
                let json = field
                    .json_name
                    .clone()
                    .unwrap_or_else(|| lower_camel(field_name));
                if field.label == Some(3) {
                    // a map of messages: their fields are filled in each value; other repeated
                    // fields stay as they are
                    let entry = field.type_name.as_deref().and_then(|t| {
                        let short = t.rsplit('.').next()?;
                        message.nested_type.iter().find(|n| {
                            n.name.as_deref() == Some(short)
                                && n.options.as_ref().and_then(|o| o.map_entry) == Some(true)
                        })
                    });
                    let value = entry
                        .and_then(|e| e.field.iter().find(|f| f.number == Some(2)))
                        .and_then(|v| v.type_name.as_deref())
                        .filter(|t| t.starts_with(".learntrail."));
                    if let Some(value) = value {
                        fields.push_str(&format!("({json:?}, Zero::Values({value:?})), "));
                    }
                    continue;
                }
                if NOT_GIVEN_AT_ZERO.contains(&format!("{name}.{field_name}").as_str()) {
                    continue;
                }
                let zero = match field.r#type.unwrap_or_default() {
                    11 => match field.type_name.as_deref() {
                        Some(t) if t.starts_with(".learntrail.") => format!("Zero::Message({t:?})"),
                        _ => continue,
                    },
                    // a scalar in a oneof (proto3 `optional` too) has presence: absent is absent
                    _ if field.oneof_index.is_some() => continue,
                    1 | 2 => "Zero::Float".to_string(),
                    3..=7 | 13 | 15..=18 => "Zero::Int".to_string(),
                    8 => "Zero::Bool".to_string(),
                    // strings, bytes and enums: their default says "not given"
                    _ => continue,
                };
                fields.push_str(&format!("({json:?}, {zero}), "));
            }
            if !fields.is_empty() {
                zeros.push_str(&format!("    ({name:?}, &[{fields}]),\n"));
            }
        }
    }
    zeros.push_str("];\n");
    std::fs::write(out.join("keen_zeros.rs"), zeros)?;
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

/// Numbers whose 0 says "not given" rather than zero: they stay out of a Keen event at 0, as
/// canonical JSON leaves them.
const NOT_GIVEN_AT_ZERO: &[&str] = &[
    // a line Ruby's report did not name
    ".learntrail.v1.RubyError.line",
    // "when known"
    ".learntrail.v1.VideoData.duration",
    ".learntrail.v1.VideoData.speed",
    // attempts count from 1; a maximum of 0 is one the LMS did not send
    ".learntrail.v1.AssessmentData.attempt",
    ".learntrail.v1.AssessmentData.max_score",
];

/// protoc's JSON name of a field: `error_outputs` → `errorOutputs`.
fn lower_camel(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}
