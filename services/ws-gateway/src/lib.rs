//! # ws-gateway
//!
//! The one port a remote lab needs. Lab UIs and dashboards open `GET /ws` (a bearer token in
//! `Authorization`, in the `token` query parameter, or in a first `{"type":"auth"}` message with
//! `?auth=message`) and send the JSON messages of the practable UIs: `log`, `analytics` and
//! `feedback` become `LabLog` events on `events.lab.log`, each answered `{"ack", "seq"}` once
//! JetStream stored it; `request` is answered from analytics-query over gRPC.
//!
//! Modules: [`protocol`] (messages → events and reply frames, no I/O), [`routes`] (the upgrade:
//! origin, token, connection cap), [`socket`] (one connection: pipelined publishes, ordered
//! acks, rate limit, keepalive, shutdown), [`analytics`] (the gRPC client), [`ratelimit`],
//! [`tls`], [`metrics`].
#![forbid(unsafe_code)]

pub mod analytics;
pub mod metrics;
pub mod protocol;
pub mod ratelimit;
pub mod routes;
pub mod socket;
pub mod tls;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use learntrail_runtime::{
    CancellationToken,
    auth::AuthArgs,
    bus::{Bus, NatsArgs, StreamArgs},
    health, http,
    telemetry::LogArgs,
    units::{parse_bytes, parse_duration, parse_positive_duration},
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

/// ws-gateway: remote-lab UIs over WebSocket into the EVENTS stream, analytics back.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "ws-gateway", version, about, long_about = None)]
pub struct Config {
    /// Address of the WebSocket endpoint (GET /ws)
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8082")]
    pub http_addr: SocketAddr,
    /// Address of /healthz, /readyz and /metrics
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9182")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// analytics-query's gRPC API, answering "request" messages
    #[arg(
        long,
        env = "ANALYTICS_GRPC_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub analytics_grpc_url: String,
    /// Longest an analytics request may take (then an error frame)
    #[arg(long, env = "ANALYTICS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub analytics_timeout: Duration,
    /// Browser origins allowed to open a socket, comma-separated ("*" for any; empty: same origin only)
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',', default_value = "")]
    pub cors_origins: Vec<String>,
    /// Largest message accepted; larger ones get an error frame (far larger ones close the socket, 1009)
    #[arg(long, env = "WS_MAX_FRAME_BYTES", default_value = "64KiB", value_parser = parse_bytes)]
    pub max_frame_bytes: u64,
    /// Most open sockets; more are refused with 503
    #[arg(long, env = "WS_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,
    /// Messages per second a connection may send on average; over it the socket is closed (1008)
    #[arg(long, env = "WS_RATE_LIMIT", default_value_t = 200.0)]
    pub rate_limit: f64,
    /// Messages a connection may send at once above the rate (a UI flushing its backlog)
    #[arg(long, env = "WS_RATE_BURST", default_value_t = 1_000)]
    pub rate_burst: u32,
    /// Most messages of one connection waiting for their ack or analytics response; reading
    /// pauses at it
    #[arg(long, env = "WS_MAX_UNACKED", default_value_t = 1_000)]
    pub max_unacked: usize,
    /// How often the server pings; a peer silent for two intervals is dropped
    #[arg(long, env = "WS_PING_INTERVAL", default_value = "20s", value_parser = parse_positive_duration)]
    pub ping_interval: Duration,
    /// A socket that sends no message for this long is closed
    #[arg(long, env = "WS_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,
    /// How long a socket opened with ?auth=message has to send its auth message
    #[arg(long, env = "WS_AUTH_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub auth_timeout: Duration,
    /// TLS certificate chain (PEM); with --tls-key the endpoint speaks wss://
    #[arg(long = "tls-cert", env = "TLS_CERT", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long = "tls-key", env = "TLS_KEY", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// How long open sockets get after SIGTERM to receive the acks they are owed
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The two listeners.
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    pub ops: TcpListener,
}

/// Binds both listeners, then serves until `token` is cancelled.
pub async fn run(config: Config, token: CancellationToken) -> anyhow::Result<()> {
    // one descriptor per socket, plus room for NATS, gRPC and the listeners
    let want = config.max_connections as u64 + 1_024;
    match learntrail_runtime::limits::raise_open_file_limit(want) {
        Ok(limit) if limit < want => tracing::warn!(
            open_file_limit = limit,
            max_connections = config.max_connections,
            "the open-file limit is below WS_MAX_CONNECTIONS plus headroom: sockets past it are refused"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "cannot read or raise the open-file limit"),
    }
    let listeners = Listeners {
        http: http::bind("HTTP_ADDR", config.http_addr).await?,
        ops: http::bind("METRICS_ADDR", config.metrics_addr).await?,
    };
    serve(config, listeners, token).await
}

/// Serves on already-bound listeners (tests pass port-0 listeners). On cancellation: stops
/// accepting, lets every socket receive the acks it is owed (up to `SHUTDOWN_GRACE`), closes
/// them with 1001, then closes the bus.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(
            tls::acceptor(cert, key)
                .map_err(|e| learntrail_runtime::cli::ConfigError::new(format!("{e:#}")))?,
        ),
        _ => None,
    };
    let analytics = analytics::Analytics::new(&config.analytics_grpc_url, config.analytics_timeout)
        .map_err(|e| learntrail_runtime::cli::ConfigError::new(e.to_string()))?;
    let (bus, provisioning) =
        Bus::start(&config.nats, &config.streams, "ws-gateway", &token).await?;
    let mut registry = Registry::with_prefix("learntrail");
    let sockets = TaskTracker::new();
    let state = routes::Gateway::new(
        &config,
        bus.clone(),
        analytics,
        metrics::Metrics::register(&mut registry),
        sockets.clone(),
        token.clone(),
    );
    let router = routes::router(state);
    let ready_bus = bus.clone();
    let ops_router = health::router(Arc::new(registry), Arc::new(move || ready_bus.is_ready()));
    tracing::info!(
        http_addr = %listeners.http.local_addr()?,
        metrics_addr = %listeners.ops.local_addr()?,
        tls = tls.is_some(),
        nats_url = %learntrail_runtime::telemetry::redact_urls(&config.nats.url),
        analytics_grpc_url = %config.analytics_grpc_url,
        "ws-gateway listening"
    );
    let ops_server = http::serve(listeners.ops, ops_router, token.clone());
    let stop = token.clone();
    let api_server = async move {
        let stopped = async move { stop.cancelled().await };
        match tls {
            Some(acceptor) => {
                let listener = tls::TlsListener::new(listeners.http, acceptor);
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
            }
            None => {
                // small frames both ways: each ack goes out when written, not after the peer's
                // delayed ACK (Nagle)
                let listener = listeners.http.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
            }
        }
    };
    let served = tokio::try_join!(
        async { api_server.await.context("WebSocket server failed") },
        async { ops_server.await.context("ops server failed") },
    );
    // HTTP has stopped accepting; sockets finish their owed acks, then close with 1001
    sockets.close();
    if tokio::time::timeout(config.shutdown_grace, sockets.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = sockets.len(),
            "shutdown grace period ran out with sockets open"
        );
    }
    provisioning.abort();
    served?;
    bus.close(Duration::from_secs(2)).await;
    tracing::info!("ws-gateway stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn a_zero_interval_or_timeout_is_a_configuration_error() {
        let parse = |flag: &str, value: &str| {
            let base = [
                "ws-gateway",
                "--jwt-secret",
                "a-secret-of-thirty-two-bytes-or-more",
            ];
            Config::try_parse_from(base.into_iter().chain([flag, value]))
        };
        for flag in ["--ping-interval", "--idle-timeout", "--auth-timeout"] {
            let err = parse(flag, "0s").err();
            let err = err.unwrap_or_else(|| panic!("{flag} 0s accepted"));
            assert!(err.to_string().contains("longer than 0"), "{err}");
            assert!(parse(flag, "1s").is_ok(), "{flag} 1s refused");
        }
    }
}
