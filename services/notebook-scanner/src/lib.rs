//! # notebook-scanner
#![forbid(unsafe_code)]

pub mod notebook;
