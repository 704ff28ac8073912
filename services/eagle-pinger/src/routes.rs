//! The meter registry API. Every request needs a bearer token (401); writes need the instructor
//! or service role (403); answers never carry a password.
//!
//! - `POST /api/user/{cloud_id}`: create (201) or update (200) a meter;
//! - `GET /api/user/{cloud_id}`: the public record with its poll state and counters;
//! - `GET /api/users?after=<cloud_id>&limit=<n>`: a page of records in cloud-id order, with
//!   `next` to pass as `after` for the following page;
//! - `DELETE /api/user/{cloud_id}`: 204;
//! - `GET /api/event/{cloud_id}`: poll the meter now and answer its reading; one such poll per
//!   meter per `POLL_NOW_MIN_INTERVAL` (429 with `Retry-After` between), so a script or a
//!   refresh button cannot hammer a small device on a school's network.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Path, Query, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    middleware::from_fn_with_state,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use learntrail_proto::validate::Problem;
use learntrail_runtime::{
    auth::{self, Claims, Role, Verifier},
    http::{self, ApiError, HttpMetrics, not_found},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    client::PollError,
    poller::{Outcome, Poller},
    record::{self, StoredRecord, UserInput},
    registry::{Registry, RegistryError},
};

/// Largest registration body.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// Largest page of `GET /api/users`.
const MAX_PAGE: usize = 1000;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    pub poller: Arc<Poller>,
    pub verifier: Verifier,
    pub request_timeout: Duration,
    pub poll_gate: Arc<PollGate>,
}

/// When each meter was last polled on demand (`GET /api/event`), to space such polls.
#[derive(Debug, Default)]
pub struct PollGate {
    spacing: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl PollGate {
    /// At most one on-demand poll per meter per `spacing` (zero: no limit).
    pub fn new(spacing: Duration) -> Self {
        Self {
            spacing,
            last: Mutex::default(),
        }
    }

    /// Lets an on-demand poll of `cloud_id` through at `now`, or says how long until one may
    /// be. Only registered meters are asked about, and entries older than the spacing are
    /// dropped as the map grows, so it holds at most the meters polled within one spacing.
    pub fn admit(&self, cloud_id: &str, now: Instant) -> Result<(), Duration> {
        if self.spacing.is_zero() {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = last.get(cloud_id) {
            let since = now.saturating_duration_since(*at);
            if since < self.spacing {
                return Err(self.spacing - since);
            }
        }
        if last.len() >= 1024 {
            last.retain(|_, at| now.saturating_duration_since(*at) < self.spacing);
        }
        last.insert(cloud_id.to_string(), now);
        Ok(())
    }
}

/// The API router with JSON 404s, a body limit, request metrics and a request timeout.
pub fn router(state: AppState, http_metrics: HttpMetrics) -> Router {
    let timeout = state.request_timeout;
    let routes = Router::new()
        .route(
            "/api/user/{cloud_id}",
            post(put_user).get(get_user).delete(delete_user),
        )
        .route("/api/users", get(list_users))
        .route("/api/event/{cloud_id}", get(poll_now))
        .fallback(not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .with_state(Arc::new(state))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    http::with_timeout(routes, timeout).layer(from_fn_with_state(http_metrics, HttpMetrics::track))
}

type Answer = Result<Response, ApiError>;

impl AppState {
    fn authenticate(&self, headers: &HeaderMap) -> Result<Claims, ApiError> {
        let header = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.verifier
            .verify_header(header, auth::now())
            .map_err(|e| ApiError::unauthorized(e.to_string()))
    }

    fn authorize_write(&self, headers: &HeaderMap) -> Result<Claims, ApiError> {
        let claims = self.authenticate(headers)?;
        match claims.role {
            Role::Instructor | Role::Service => Ok(claims),
            Role::Student => Err(ApiError::forbidden(
                "registering meters needs an instructor or service token",
            )),
        }
    }
}

fn cloud_id(raw: &str) -> Result<String, ApiError> {
    record::cloud_id(raw)
        .ok_or_else(|| invalid(vec![Problem::new("cloud_id", "must be 6 hex digits")]))
}

fn invalid(problems: Vec<Problem>) -> ApiError {
    let message = match problems.as_slice() {
        [one] => format!("invalid meter: {one}"),
        many => format!("invalid meter: {} problems", many.len()),
    };
    ApiError {
        problems,
        ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_meter", message)
    }
}

fn store_error(err: RegistryError) -> ApiError {
    tracing::warn!(error = %err, "registry unavailable");
    ApiError::unavailable("the meter registry is unavailable")
}

fn no_meter(cloud_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_meter",
        format!("no meter {cloud_id} is registered"),
    )
}

async fn put_user(
    State(state): State<Arc<AppState>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Answer {
    let claims = state.authorize_write(&headers)?;
    let body = body.map_err(|_| ApiError::too_large(MAX_BODY_BYTES))?;
    let input: UserInput = serde_json::from_slice(&body).map_err(|e| {
        // serde's message names the field, never echoes the value
        invalid(vec![Problem::new(
            "body",
            format!("not a registration: {e}"),
        )])
    })?;
    let id = record::cloud_id(&raw_id).unwrap_or_default();
    let existing = if id.is_empty() {
        None
    } else {
        state.registry.get(&id).await.map_err(store_error)?
    };
    let registration = record::validate(&raw_id, input, existing.as_ref()).map_err(invalid)?;
    let (created, stored) = state
        .registry
        .put(&registration)
        .await
        .map_err(store_error)?;
    tracing::info!(cloud_id = %stored.cloud_id, api = stored.api.as_str(), created, by = %claims.sub, "meter registered");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(stored.public())).into_response())
}

async fn get_user(
    State(state): State<Arc<AppState>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let claims = state.authenticate(&headers)?;
    let id = cloud_id(&raw_id)?;
    let record = state.registry.get(&id).await.map_err(store_error)?;
    let record = record.ok_or_else(|| no_meter(&id))?;
    may_see(&claims, &record)?;
    Ok(Json(record.public()).into_response())
}

/// A student sees only the meters whose `actor` is them: a record holds a household's e-mail,
/// and its readings the household's life.
fn may_see(claims: &Claims, record: &StoredRecord) -> Result<(), ApiError> {
    if claims.role == Role::Student && record.actor.as_deref() != Some(claims.sub.as_str()) {
        return Err(ApiError::forbidden(
            "a student token reads only its own meters (those whose actor is its sub)",
        ));
    }
    Ok(())
}

async fn delete_user(
    State(state): State<Arc<AppState>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let claims = state.authorize_write(&headers)?;
    let id = cloud_id(&raw_id)?;
    if !state.registry.delete(&id).await.map_err(store_error)? {
        return Err(no_meter(&id));
    }
    tracing::info!(cloud_id = %id, by = %claims.sub, "meter deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_users(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let claims = state.authenticate(&headers)?;
    let Query(page) = page.map_err(|e| invalid(vec![Problem::new("query", e.body_text())]))?;
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let after = page.after.as_deref().map(cloud_id).transpose()?;
    let ids = state
        .registry
        .page_ids(after.as_deref(), limit)
        .await
        .map_err(store_error)?;
    let records = state.registry.get_many(&ids).await.map_err(store_error)?;
    let next = (ids.len() == limit).then(|| ids.last().cloned()).flatten();
    // a student's page holds only their own meters
    let users: Vec<Value> = records
        .iter()
        .filter(|r| may_see(&claims, r).is_ok())
        .map(StoredRecord::public)
        .collect();
    Ok(Json(json!({"users": users, "next": next})).into_response())
}

async fn poll_now(
    State(state): State<Arc<AppState>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let claims = state.authenticate(&headers)?;
    let id = cloud_id(&raw_id)?;
    let record = state.registry.get(&id).await.map_err(store_error)?;
    let record = record.ok_or_else(|| no_meter(&id))?;
    may_see(&claims, &record)?;
    if let Err(wait) = state.poll_gate.admit(&id, Instant::now()) {
        return Ok(too_soon(&id, state.poll_gate.spacing, wait));
    }
    let outcome = state.poller.poll_now(&record).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "undecryptable",
            format!("the meter's stored password cannot be opened: {e}"),
        )
    })?;
    let (reading, event_id) = match outcome {
        Outcome::Reading { reading, event_id } => (reading, event_id),
        Outcome::Failed(err) => return Err(poll_failed(&id, &err)),
    };
    Ok(Json(json!({
        "cloud_id": id,
        "api": record.api,
        "demand_kw": reading.demand_kw,
        "summation_delivered_kwh": reading.summation_delivered_kwh,
        "summation_received_kwh": reading.summation_received_kwh,
        "meter_timestamp": reading.meter_time.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        "device_mac": reading.device_mac,
        "meter_mac": reading.meter_mac,
        "event_id": event_id,
    }))
    .into_response())
}

/// 429 `too_many_polls`, with `Retry-After` in whole seconds (rounded up).
fn too_soon(cloud_id: &str, spacing: Duration, wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let spacing = spacing.as_secs_f64();
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_polls",
        format!(
            "meter {cloud_id} was polled on demand less than {spacing}s ago; one on-demand poll per meter per {spacing}s (POLL_NOW_MIN_INTERVAL), retry in {seconds}s. Its scheduled readings keep coming every POLL_INTERVAL"
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    response
}

fn poll_failed(cloud_id: &str, err: &PollError) -> ApiError {
    let (status, code) = match err {
        PollError::Auth(_) => (StatusCode::BAD_GATEWAY, "eagle_auth_failed"),
        PollError::Unreachable(_) => (StatusCode::GATEWAY_TIMEOUT, "eagle_unreachable"),
        PollError::Malformed { .. } => (StatusCode::BAD_GATEWAY, "eagle_malformed"),
        PollError::Empty(_) => (StatusCode::BAD_GATEWAY, "eagle_no_value"),
        PollError::NoMeter(_) => (StatusCode::BAD_GATEWAY, "eagle_no_meter"),
    };
    ApiError::new(status, code, format!("meter {cloud_id}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_demand_polls_of_a_meter_are_spaced_and_others_are_not_held_up() {
        let gate = PollGate::new(Duration::from_secs(2));
        let t0 = Instant::now();
        gate.admit("00aa01", t0).unwrap();
        assert_eq!(
            gate.admit("00aa01", t0 + Duration::from_millis(500)),
            Err(Duration::from_millis(1500))
        );
        gate.admit("00aa02", t0 + Duration::from_millis(500))
            .unwrap();
        gate.admit("00aa01", t0 + Duration::from_secs(2)).unwrap();
        // off
        let open = PollGate::new(Duration::ZERO);
        open.admit("00aa01", t0).unwrap();
        open.admit("00aa01", t0).unwrap();
    }

    #[test]
    fn an_eagle_without_an_electric_meter_is_a_bad_gateway_of_its_own() {
        let err = poll_failed(
            "00aa01",
            &PollError::NoMeter("no electric_meter in the device list".into()),
        );
        assert_eq!(
            (err.status, err.code),
            (StatusCode::BAD_GATEWAY, "eagle_no_meter")
        );
        assert_eq!(
            err.message,
            "meter 00aa01: no electric_meter in the device list"
        );
    }

    #[test]
    fn the_gate_forgets_meters_once_their_spacing_has_passed() {
        let gate = PollGate::new(Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..1024 {
            gate.admit(&format!("{i:06x}"), t0).unwrap();
        }
        gate.admit("100000", t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(gate.last.lock().unwrap().len(), 1);
    }
}
