//! End-to-end tests live in `pipeline.rs`; this crate has no library code.
