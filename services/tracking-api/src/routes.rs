//! HTTP handlers. Order of checks: token (401), body size (413), JSON and fields (400), the
//! token's right to the event (403), then publish and wait for the ack (202, or 503 when the
//! bus cannot store it).

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::from_fn_with_state,
    routing::post,
};
use learntrail_proto::{Event, validate::Problem};
use learntrail_runtime::{
    auth::{self, Claims, Verifier},
    bus::{Ack, Bus, PublishError},
    http::{self, ApiError, HttpMetrics, not_found},
};
use serde_json::{Value, json};

use crate::{
    metrics::{KindLabel, Metrics},
    model::{Rejection, parse_event},
};

/// Everything a handler needs.
#[derive(Clone, Debug)]
pub struct AppState {
    pub bus: Bus,
    pub verifier: Verifier,
    pub metrics: Metrics,
    pub max_batch_events: usize,
    pub max_body_bytes: usize,
    pub request_timeout: std::time::Duration,
}

/// The API router: tracking routes, JSON 404s, body limit, request metrics and CORS.
pub fn router(
    state: AppState,
    cors_origins: &[String],
    http_metrics: HttpMetrics,
) -> anyhow::Result<Router> {
    let body_limit = state.max_body_bytes;
    let timeout = state.request_timeout;
    let routes = Router::new()
        .route("/api/tracking", post(track))
        .route("/api/tracking/batch", post(track_batch))
        .fallback(not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .with_state(Arc::new(state))
        .layer(DefaultBodyLimit::max(body_limit));
    Ok(http::with_timeout(routes, timeout)
        .layer(from_fn_with_state(http_metrics, HttpMetrics::track))
        .layer(http::cors(cors_origins, &[Method::POST])?))
}

type Answer = Result<(StatusCode, Json<Value>), ApiError>;

async fn track(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Answer {
    let claims = state.authenticate(&headers)?;
    let body = state.read_json(body)?;
    let event = state.to_event(&body, &claims)?;
    let started = Instant::now();
    let ack = state.bus.publish(&event).await;
    state
        .metrics
        .publish_seconds
        .observe(started.elapsed().as_secs_f64());
    let ack = ack.map_err(|e| state.publish_failed(&e).with_id(&event.id))?;
    state.record_accepted(&event, &ack);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": event.id, "status": "accepted", "duplicate": ack.duplicate})),
    ))
}

async fn track_batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Answer {
    let claims = state.authenticate(&headers)?;
    let body = state.read_json(body)?;
    let items = match &body {
        Value::Array(items) => items,
        Value::Object(map) if map.len() == 1 && map.get("events").is_some_and(Value::is_array) => {
            map["events"].as_array().expect("checked is_array")
        }
        _ => {
            state.metrics.reject("invalid");
            return Err(ApiError::invalid(vec![Problem::new(
                "events",
                "send {\"events\": [...]} or a JSON array of events",
            )]));
        }
    };
    if items.is_empty() {
        return Err(ApiError::invalid(vec![Problem::new(
            "events",
            "must not be empty",
        )]));
    }
    if items.len() > state.max_batch_events {
        state.metrics.reject("too_many_events");
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!(
                "a batch holds at most {} events; this one has {}",
                state.max_batch_events,
                items.len()
            ),
        ));
    }
    let parsed: Vec<Result<Event, ApiError>> = items
        .iter()
        .map(|item| state.to_event(item, &claims))
        .collect();
    let started = Instant::now();
    let valid: Vec<&Event> = parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
    let mut acks = state.bus.publish_many(valid).await.into_iter();
    state
        .metrics
        .publish_seconds
        .observe(started.elapsed().as_secs_f64());
    let (mut accepted, mut rejected, mut failed) = (0, 0, 0);
    let results: Vec<Value> = parsed
        .iter()
        .enumerate()
        .map(|(index, parsed)| {
            let outcome = match parsed {
                Err(err) => Err(err.clone()),
                Ok(event) => match acks.next().expect("one ack per published event") {
                    Ok(ack) => {
                        state.record_accepted(event, &ack);
                        Ok(json!({"status": 202, "id": event.id, "duplicate": ack.duplicate}))
                    }
                    Err(err) => Err(state.publish_failed(&err).with_id(&event.id)),
                },
            };
            match outcome {
                Ok(mut result) => {
                    accepted += 1;
                    result["index"] = json!(index);
                    result
                }
                Err(err) => {
                    if err.status == StatusCode::SERVICE_UNAVAILABLE {
                        failed += 1;
                    } else {
                        rejected += 1;
                    }
                    let mut result = err.body();
                    result["index"] = json!(index);
                    result["status"] = json!(err.status.as_u16());
                    match parsed {
                        Ok(event) => result["id"] = json!(event.id),
                        // a refused event keeps the id its sender gave, so it can be matched
                        Err(_) => {
                            if let Some(id) = items[index]
                                .get("id")
                                .filter(|id| id.is_string() || id.is_number())
                            {
                                result["id"] = id.clone();
                            }
                        }
                    }
                    result
                }
            }
        })
        .collect();
    let status = if failed > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(
            json!({"accepted": accepted, "rejected": rejected, "failed": failed, "results": results}),
        ),
    ))
}

impl AppState {
    fn authenticate(&self, headers: &HeaderMap) -> Result<Claims, ApiError> {
        let header = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.verifier
            .verify_header(header, auth::now())
            .map_err(|err| {
                self.metrics.reject("unauthorized");
                ApiError::unauthorized(err.to_string())
            })
    }

    fn read_json(
        &self,
        body: Result<axum::body::Bytes, BytesRejection>,
    ) -> Result<Value, ApiError> {
        let body = body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                self.metrics.reject("too_large");
                ApiError::too_large(self.max_body_bytes)
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    rejection.body_text(),
                )
            }
        })?;
        serde_json::from_slice(&body).map_err(|err| {
            self.metrics.reject("invalid");
            ApiError::invalid(vec![Problem::new(
                "body",
                format!("is not valid JSON: {err}"),
            )])
        })
    }

    fn to_event(&self, body: &Value, claims: &Claims) -> Result<Event, ApiError> {
        parse_event(body, claims, chrono::Utc::now()).map_err(|rejection| match rejection {
            Rejection::Invalid(problems) => {
                self.metrics.reject("invalid");
                ApiError::invalid(problems)
            }
            Rejection::Forbidden(message) => {
                self.metrics.reject("forbidden");
                ApiError::forbidden(message)
            }
        })
    }

    fn publish_failed(&self, err: &PublishError) -> ApiError {
        if let PublishError::TooLarge(message) = err {
            self.metrics.reject("too_large");
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                message.clone(),
            );
        }
        tracing::warn!(error = %err, "event not acknowledged");
        self.metrics.reject("unavailable");
        ApiError::unavailable(match err {
            PublishError::Timeout => format!(
                "{err}: the event may or may not be stored; retrying with the same id is safe (it is stored once)"
            ),
            _ => format!("{err}: the event was not stored; retry with the same id"),
        })
    }

    fn record_accepted(&self, event: &Event, ack: &Ack) {
        if ack.duplicate {
            self.metrics.duplicates.inc();
        } else {
            self.metrics
                .accepted
                .get_or_create(&KindLabel {
                    kind: event.kind.clone(),
                })
                .inc();
        }
    }
}
