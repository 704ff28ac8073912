//! s3-rotator with a real nats-server and a real S3-compatible server (Garage).

mod archive;
mod faults;
mod helpers;
