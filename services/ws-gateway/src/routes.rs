//! The upgrade: `GET /ws`. Order of checks: the browser's `Origin` (403), the token from
//! `Authorization: Bearer` or `?token=` (401; without either, only `?auth=message` is let
//! through, to authenticate with its first message), the upgrade itself, then the connection
//! cap (503).

use std::sync::Arc;

use axum::{
    Router,
    extract::{
        Query, State,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use learntrail_runtime::{
    CancellationToken,
    auth::{self, Claims, Verifier},
    bus::Bus,
    http::{ApiError, not_found},
};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::{Config, analytics::Analytics, metrics::Metrics, socket};

/// What every socket shares.
#[derive(Debug)]
pub struct Gateway {
    pub bus: Bus,
    pub verifier: Verifier,
    pub analytics: Analytics,
    pub metrics: Metrics,
    pub limits: socket::Limits,
    origins: Vec<String>,
    slots: Arc<Semaphore>,
    sockets: TaskTracker,
    pub shutdown: CancellationToken,
}

impl Gateway {
    pub fn new(
        config: &Config,
        bus: Bus,
        analytics: Analytics,
        metrics: Metrics,
        sockets: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            bus,
            verifier: config.auth.verifier(),
            analytics,
            metrics,
            limits: socket::Limits {
                max_frame_bytes: config.max_frame_bytes as usize,
                rate: config.rate_limit,
                burst: config.rate_burst,
                max_unacked: config.max_unacked.max(1),
                ping_interval: config.ping_interval,
                idle_timeout: config.idle_timeout,
                auth_timeout: config.auth_timeout,
            },
            origins: config
                .cors_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            sockets,
            shutdown,
        })
    }
}

/// The WebSocket router (`GET /ws`, JSON 404s elsewhere).
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .fallback(not_found)
        .with_state(gateway)
}

#[derive(Debug, Deserialize)]
struct UpgradeQuery {
    token: Option<String>,
    auth: Option<String>,
}

async fn upgrade(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(query): Query<UpgradeQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !origin_allowed(&headers, &gateway.origins) {
        gateway.metrics.refuse("origin");
        return ApiError::forbidden("this Origin may not open a socket (CORS_ORIGINS)")
            .into_response();
    }
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let credentials = match (header, query.token.as_deref()) {
        (Some(header), _) => Some(
            gateway
                .verifier
                .verify_header(Some(header), auth::now())
                .map(|claims| (claims, bearer_of(header))),
        ),
        (None, Some(token)) => Some(
            gateway
                .verifier
                .verify(token, auth::now())
                .map(|claims| (claims, token.to_string())),
        ),
        (None, None) if query.auth.as_deref() == Some("message") => None,
        (None, None) => Some(Err(auth::AuthError::Missing)),
    };
    let credentials: Option<(Claims, String)> = match credentials.transpose() {
        Ok(credentials) => credentials,
        Err(err) => {
            gateway.metrics.refuse("unauthorized");
            let message = match err {
                auth::AuthError::Missing => "missing bearer token: send Authorization: Bearer <jwt>, ?token=<jwt>, or connect with ?auth=message and send {\"type\":\"auth\",\"token\":...} first".to_string(),
                other => other.to_string(),
            };
            return ApiError::unauthorized(message).into_response();
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let Ok(slot) = gateway.slots.clone().try_acquire_owned() else {
        gateway.metrics.refuse("full");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "too many open sockets (WS_MAX_CONNECTIONS); retry later",
        )
        .into_response();
    };
    let limits = &gateway.limits;
    // small buffers: most sockets are idle most of the time
    let hard_limit = (limits.max_frame_bytes * 4).max(1 << 20);
    let gateway = gateway.clone();
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            let session = socket::Session::new(gateway.clone(), credentials);
            gateway.sockets.track_future(async move {
                session.run(socket).await;
                drop(slot);
            })
        })
}

fn bearer_of(header: &str) -> String {
    header
        .trim()
        .split_once(' ')
        .map_or("", |(_, token)| token.trim())
        .to_string()
}

/// A socket without `Origin` (a lab script, a server) is allowed; a browser's origin must be
/// listed in `CORS_ORIGINS` (`*`: any), or be the gateway's own (same origin).
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a == "*" || a == origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, host)| host);
    matches!((host, origin_host), (Some(host), Some(origin_host)) if host.eq_ignore_ascii_case(origin_host))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn origins() {
        let listed = vec!["https://lab.example".to_string()];
        assert!(origin_allowed(&headers(None, "gw:8082"), &[]), "no Origin");
        assert!(origin_allowed(
            &headers(Some("https://lab.example"), "gw:8082"),
            &listed
        ));
        assert!(!origin_allowed(
            &headers(Some("https://evil.example"), "gw:8082"),
            &listed
        ));
        assert!(
            origin_allowed(&headers(Some("http://gw:8082"), "gw:8082"), &[]),
            "same origin"
        );
        assert!(!origin_allowed(
            &headers(Some("http://other:8082"), "gw:8082"),
            &[]
        ));
        assert!(origin_allowed(
            &headers(Some("https://any.example"), "gw"),
            &["*".to_string()]
        ));
    }
}
