//! # tracking-api
//!
//! LMS event tracking over HTTP. `POST /api/tracking` takes one event, `POST /api/tracking/batch`
//! many; each is validated ([`model`]), authenticated by a bearer token, published to JetStream
//! on `events.lms.<kind>`, and answered `202` only after the stream acknowledged it. A retried
//! request with the same event `id` is stored once (the id is the `Nats-Msg-Id`).
//!
//! Modules: [`model`] (request JSON → `Event`), [`fields`] (field-by-field JSON reading),
//! [`routes`] (HTTP handlers), [`metrics`].
#![forbid(unsafe_code)]

pub mod fields;
pub mod metrics;
pub mod model;
pub mod routes;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use learntrail_runtime::{
    CancellationToken,
    auth::AuthArgs,
    bus::{Bus, NatsArgs, StreamArgs},
    health, http,
    telemetry::LogArgs,
    units::{parse_bytes, parse_duration},
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// tracking-api: LMS tracking events over HTTP into the EVENTS stream.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tracking-api", version, about, long_about = None)]
pub struct Config {
    /// Address of the tracking API
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8081")]
    pub http_addr: SocketAddr,
    /// Address of /healthz, /readyz and /metrics
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9181")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Largest request body accepted; larger ones get 413
    #[arg(long, env = "MAX_BODY_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_body_bytes: u64,
    /// Most events in one batch request; more get 413
    #[arg(long, env = "MAX_BATCH_EVENTS", default_value_t = 1000)]
    pub max_batch_events: usize,
    /// Origins allowed to call the API from a browser, comma-separated ("*" for any; empty for none)
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',', default_value = "")]
    pub cors_origins: Vec<String>,
    /// Longest a request may take; a slower one is answered 408
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Binds both listeners, then serves until `token` is cancelled.
pub async fn run(config: Config, token: CancellationToken) -> anyhow::Result<()> {
    let api = http::bind("HTTP_ADDR", config.http_addr).await?;
    let ops = http::bind("METRICS_ADDR", config.metrics_addr).await?;
    serve(config, api, ops, token).await
}

/// Serves on already-bound listeners (tests pass port-0 listeners).
pub async fn serve(
    config: Config,
    api: TcpListener,
    ops: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let (bus, provisioning) =
        Bus::start(&config.nats, &config.streams, "tracking-api", &token).await?;
    let mut registry = Registry::with_prefix("learntrail");
    let state = routes::AppState {
        bus: bus.clone(),
        verifier: config.auth.verifier(),
        metrics: metrics::Metrics::register(&mut registry),
        max_batch_events: config.max_batch_events,
        max_body_bytes: config.max_body_bytes as usize,
        request_timeout: config.request_timeout,
    };
    let http_metrics = http::HttpMetrics::register(&mut registry);
    let router = routes::router(state, &config.cors_origins, http_metrics)?;
    let ready_bus = bus.clone();
    let ops_router = health::router(Arc::new(registry), Arc::new(move || ready_bus.is_ready()));
    tracing::info!(
        http_addr = %api.local_addr()?,
        metrics_addr = %ops.local_addr()?,
        nats_url = %learntrail_runtime::telemetry::redact_urls(&config.nats.url),
        "tracking-api listening"
    );
    let api_server = http::serve(api, router, token.clone());
    let ops_server = http::serve(ops, ops_router, token.clone());
    let served =
        learntrail_runtime::shutdown::drain_with_grace(&token, config.shutdown_grace, async {
            tokio::try_join!(api_server, ops_server)
        })
        .await;
    provisioning.abort();
    if let Some(result) = served {
        result.context("HTTP server failed")?;
    }
    bus.close(Duration::from_secs(2)).await;
    tracing::info!("tracking-api stopped");
    Ok(())
}
