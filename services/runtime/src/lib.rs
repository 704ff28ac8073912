//! # learntrail-runtime
//!
//! What every Learntrail service needs, in one place:
//! - [`cli`]: parse a service's `Config` (flags with environment fallbacks), exit 64 on bad input;
//! - [`telemetry`]: tracing, JSON in production and pretty on a terminal;
//! - [`bus`]: NATS connect with retry, stream provisioning, publish-with-ack, dead letters;
//! - [`health`]: the `/healthz`, `/readyz` and Prometheus `/metrics` server;
//! - [`metrics`]: one-line Prometheus registration and shared buckets;
//! - [`redis`]: Redis clients, over TLS (`rediss://`, `REDIS_TLS_CA`) where asked;
//! - [`http`]: JSON error bodies and request metrics for HTTP edges;
//! - [`auth`]: HS256 bearer tokens with `sub` and `role`;
//! - [`retry`]: the one backoff policy (exponential with jitter) every retry loop uses;
//! - [`shutdown`]: SIGTERM/SIGINT as a cancellation token;
//! - [`units`]: durations and byte sizes as operators write them (`5s`, `64KiB`).
#![forbid(unsafe_code)]

pub mod auth;
pub mod bus;
pub mod cli;
pub mod health;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod redis;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
pub mod units;

pub use tokio_util::sync::CancellationToken;
