//! The operations endpoint every service serves on `METRICS_ADDR`: `/healthz` (the process
//! answers), `/readyz` (503 while a dependency such as NATS is down) and Prometheus `/metrics`.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::{encoding::text::encode, registry::Registry};

/// Answers whether the service can do its work right now.
pub type ReadyCheck = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
struct Ops {
    registry: Arc<Registry>,
    ready: ReadyCheck,
}

/// The operations router; serve it with [`crate::http::serve`]. Every request is bounded (10 s),
/// so a stuck scraper cannot hold connections.
pub fn router(registry: Arc<Registry>, ready: ReadyCheck) -> Router {
    let routes = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Ops { registry, ready });
    crate::http::with_timeout(routes, std::time::Duration::from_secs(10))
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    if (ops.ready)() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    let mut body = String::new();
    if encode(&mut body, &ops.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
