//! # learntrail-testkit
//!
//! Real servers for tests, each on its own free port with its own temporary data directory, so
//! tests run in parallel and never rely on servers that happen to be running:
//! [`NatsServer`] (nats-server with JetStream), [`NatsCluster`] (several, clustered), [`RedisServer`],
//! [`RedisCluster`], [`GarageServer`] (S3).
//! Dropping a server stops it and removes its data. A missing binary panics with the command that
//! installs it (`make test` installs them all).
//!
//! Also [`eventually`], which waits for a condition instead of sleeping, [`stream_events`],
//! which reads back what a stream stored, and [`FaultProxy`], an HTTP proxy in front of a real
//! server that makes chosen requests hang or fail.

mod cluster;
pub mod fault;
pub mod garage;
mod nats;
mod process;
mod redis;

use std::time::Duration;

pub use cluster::NatsCluster;
pub use fault::{Fault, FaultProxy};
pub use garage::GarageServer;
pub use nats::{NatsServer, stream_events, try_stream_events};
pub use redis::{RedisCluster, RedisServer};

/// Polls `check` every 20 ms until it returns `Some`, and returns that; panics naming `what`
/// after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the unlabelled sample `name` (its full name, `_total` and all) on a `/metrics`
/// page's text.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The text of the `/metrics` page of a service whose ops server is at `ops` (`http://host:port`).
pub async fn metrics_page(http: &reqwest::Client, ops: &str) -> String {
    http.get(format!("{ops}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("/metrics text")
}
