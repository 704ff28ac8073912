//! Shared pieces of every HTTP edge: a JSON error body that names each problem, request metrics
//! labelled by route template (never by raw path), and serving with graceful shutdown.

use std::time::{Duration, Instant};

use axum::{
    Json, Router,
    extract::{MatchedPath, Request, State},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use learntrail_proto::validate::Problem;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use serde_json::json;

use crate::metrics::{latency_family, register};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// An error answer: HTTP status plus `{"error": code, "message": ..., "problems": [...]}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `invalid_event`.
    pub code: &'static str,
    pub message: String,
    /// Per-field problems (400s).
    pub problems: Vec<Problem>,
    /// The id of the event concerned, when one is known, so a client can retry it safely.
    pub id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
            id: None,
        }
    }

    /// Names the event this answer is about.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub fn invalid(problems: Vec<Problem>) -> Self {
        let message = match problems.as_slice() {
            [one] => format!("invalid event: {one}"),
            many => format!("invalid event: {} problems", many.len()),
        };
        Self {
            problems,
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_event", message)
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is over the limit of {limit} bytes"),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// The JSON body, also used inside batch results.
    pub fn body(&self) -> serde_json::Value {
        let mut body = json!({"error": self.code, "message": self.message});
        if !self.problems.is_empty() {
            body["problems"] = json!(self.problems);
        }
        if let Some(id) = &self.id {
            body["id"] = json!(id);
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// JSON 404 for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// A route that exists, asked with another method: 405 in the same JSON shape.
pub async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// Request counters and latency histograms, labelled by route template.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            requests: register(
                registry,
                "http_requests",
                "HTTP requests by route and status",
                Family::default(),
            ),
            duration: register(
                registry,
                "http_request_duration_seconds",
                "HTTP request latency",
                latency_family(),
            ),
        }
    }

    /// Middleware: `router.layer(axum::middleware::from_fn_with_state(metrics, HttpMetrics::track))`.
    pub async fn track(State(metrics): State<Self>, request: Request, next: Next) -> Response {
        let started = Instant::now();
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
        let method = method_label(request.method());
        let response = next.run(request).await;
        metrics
            .duration
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        metrics
            .requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status: response.status().as_u16(),
            })
            .inc();
        response
    }
}

/// The method as a metric label: the standard methods by name, anything else `other`, so a
/// client cannot grow the label set.
fn method_label(method: &Method) -> String {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ];
    if KNOWN.contains(method) {
        method.as_str().to_string()
    } else {
        "other".to_string()
    }
}

/// Bounds every request of `router` to `timeout`: a request still running then is answered
/// 408 with an [`ApiError`] body (`"error": "timeout"`) and its work dropped, so a slow client or a stuck dependency cannot hold a connection.
pub fn with_timeout(router: Router, timeout: Duration) -> Router {
    with_timeout_answer(router, timeout, |timeout| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the request took longer than {timeout:?} (REQUEST_TIMEOUT)"),
        )
        .into_response()
    })
}

/// Like [`with_timeout`], answering a request that takes longer than `timeout` with
/// `answer(timeout)` (an API's own error shape).
pub fn with_timeout_answer(
    router: Router,
    timeout: Duration,
    answer: fn(Duration) -> Response,
) -> Router {
    router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| async move {
            match tokio::time::timeout(timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => answer(timeout),
            }
        },
    ))
}

/// CORS for browser clients (`CORS_ORIGINS`): the listed origins, or any with `*`, may call
/// `methods` with a bearer token (and the `keen-sdk` header Keen's clients add); none when the
/// list is empty (same-origin only).
pub fn cors(origins: &[String], methods: &[Method]) -> anyhow::Result<CorsLayer> {
    let origins: Vec<&str> = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    let allow = if origins.contains(&"*") {
        AllowOrigin::from(Any)
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o)
                    .map_err(|_| anyhow::anyhow!("CORS origin {o:?} is not a valid header value"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(list)
    };
    let mut methods = methods.to_vec();
    methods.push(Method::OPTIONS);
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods(methods)
        // `keen-sdk`: Keen's JavaScript clients send it on every request
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("keen-sdk"),
        ])
        .max_age(Duration::from_secs(3600)))
}

/// Serves `router` on `listener` until `token` is cancelled, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    token: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
}

/// Binds `addr`, naming the setting in the error (`cannot listen on HTTP_ADDR 0.0.0.0:80: ...`).
pub async fn bind(setting: &str, addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {setting} {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        let odd = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&odd), "other");
    }
}
