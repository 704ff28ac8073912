//! Test doubles of the outside services, speaking their wire protocols over real HTTP: Keen's
//! bulk event API (../shared/PROTOCOLS.md §2.3–2.5: auth, per-collection per-event results,
//! Keen's name and value rules) and a webhook receiver that checks `Learntrail-Signature` the way
//! the README tells receivers to.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;

/// A canned answer to the next request instead of the real one.
#[derive(Debug, Clone, Copy)]
pub struct Scripted {
    pub status: u16,
    pub retry_after: Option<u64>,
}

#[derive(Default)]
pub struct Shared {
    /// Accepted records (Keen: collection and record; webhook: "" and event).
    pub stored: Mutex<Vec<(String, Value)>>,
    /// When each request arrived.
    pub requests: Mutex<Vec<Instant>>,
    pub script: Mutex<VecDeque<Scripted>>,
    /// How long each answer waits (0 by default).
    pub delay: Mutex<Duration>,
    /// Webhook requests whose signature did not verify.
    pub bad_signatures: Mutex<u32>,
    /// Keen: events (by `learntrail_id`) answered with a per-event server error, as Keen
    /// answers an event it could not store this time (`"description": null`).
    pub busy: Mutex<std::collections::HashSet<String>>,
}

impl Shared {
    pub fn stored(&self) -> Vec<(String, Value)> {
        self.stored.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<Instant> {
        self.requests.lock().unwrap().clone()
    }

    pub fn fail_next(&self, status: u16, retry_after: Option<u64>, times: usize) {
        let mut script = self.script.lock().unwrap();
        for _ in 0..times {
            script.push_back(Scripted {
                status,
                retry_after,
            });
        }
    }

    /// Records the request; the scripted answer if one is queued.
    async fn arrive(&self) -> Option<Response> {
        self.requests.lock().unwrap().push(Instant::now());
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let scripted = self.script.lock().unwrap().pop_front()?;
        let status = StatusCode::from_u16(scripted.status).unwrap();
        let body =
            Json(json!({"message": "scripted failure", "error_code": "InternalServerError"}));
        let mut response = (status, body).into_response();
        if let Some(seconds) = scripted.retry_after {
            response
                .headers_mut()
                .insert("Retry-After", seconds.to_string().parse().unwrap());
        }
        Some(response)
    }
}

pub struct Fake {
    pub url: String,
    pub state: Arc<Shared>,
    _server: tokio::task::JoinHandle<()>,
}

async fn serve(router: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (url, server)
}

// === Keen ===

pub const PROJECT: &str = "5f1e2d3c4b5a697887766554";
pub const WRITE_KEY: &str = "test-write-key-0123456789abcdef";

#[derive(Clone)]
struct KeenApp(Arc<Shared>);

pub async fn keen() -> Fake {
    let state = Arc::new(Shared::default());
    let router = Router::new()
        .route("/3.0/projects/{project}/events", post(keen_bulk))
        .with_state(KeenApp(state.clone()));
    let (url, server) = serve(router).await;
    Fake {
        url,
        state,
        _server: server,
    }
}

fn keen_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"message": message, "error_code": code})),
    )
        .into_response()
}

async fn keen_bulk(
    State(KeenApp(state)): State<KeenApp>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if project != PROJECT {
        return keen_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundError",
            "Resource not found",
        );
    }
    // the write key raw in Authorization (or ?api_key=, which the forwarder does not use)
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(WRITE_KEY) {
        return keen_error(
            StatusCode::UNAUTHORIZED,
            "InvalidApiKeyError",
            "authorization error",
        );
    }
    if let Some(scripted) = state.arrive().await {
        return scripted;
    }
    if body.len() > 10_000_000 {
        return keen_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeError",
            "bulk payload over 10,000,000 bytes",
        );
    }
    let Ok(collections) = serde_json::from_slice::<Map<String, Value>>(&body) else {
        return keen_error(
            StatusCode::BAD_REQUEST,
            "InvalidJsonError",
            "body is not a JSON object",
        );
    };
    let mut answer = Map::new();
    let mut stored = state.stored.lock().unwrap();
    for (collection, events) in collections {
        let Value::Array(events) = events else {
            return keen_error(
                StatusCode::BAD_REQUEST,
                "InvalidEventError",
                "a collection takes an array of events",
            );
        };
        let busy = state.busy.lock().unwrap().clone();
        let results = events
            .into_iter()
            .map(|event| {
                let id = event["learntrail_id"].as_str().unwrap_or_default();
                if busy.contains(id) {
                    return json!({"success": false, "error": {"name": "InternalServerError", "description": null}});
                }
                match check_collection(&collection).or_else(|| check_event(&event)) {
                None => {
                    stored.push((collection.clone(), event));
                    json!({"success": true})
                }
                Some((name, description)) => {
                    json!({"success": false, "error": {"name": name, "description": description}})
                }
            }})
            .collect();
        answer.insert(collection, Value::Array(results));
    }
    (StatusCode::OK, Json(Value::Object(answer))).into_response()
}

/// Keen's collection rules: at most 64 ASCII characters, no `$`, no leading `_`, no leading or
/// trailing `.`.
fn check_collection(name: &str) -> Option<(&'static str, String)> {
    let bad = name.is_empty()
        || name.len() > 64
        || !name.is_ascii()
        || name.contains('$')
        || name.starts_with('_')
        || name.starts_with('.')
        || name.ends_with('.');
    bad.then(|| {
        (
            "InvalidCollectionNameError",
            format!("invalid collection name {name:?}"),
        )
    })
}

/// Keen's property rules, recursively: names without `.`, not starting with `$`, under 256
/// characters; strings under 10,000 characters.
fn check_event(value: &Value) -> Option<(&'static str, String)> {
    match value {
        Value::Object(map) => map.iter().find_map(|(name, value)| {
            if name.contains('.') || name.starts_with('$') || name.chars().count() >= 256 {
                Some((
                    "InvalidPropertyNameError",
                    format!("invalid property name {name:?}"),
                ))
            } else {
                check_event(value)
            }
        }),
        Value::Array(items) => items.iter().find_map(check_event),
        Value::String(text) if text.chars().count() >= 10_000 => Some((
            "InvalidPropertyValueError",
            "string of 10,000 characters or more".into(),
        )),
        _ => None,
    }
}

// === webhook receiver ===

pub const WEBHOOK_SECRET: &str = "whsec-test-0123456789";

#[derive(Clone)]
struct HookApp(Arc<Shared>);

pub async fn webhook() -> Fake {
    let state = Arc::new(Shared::default());
    let router = Router::new()
        .route("/hook", post(receive))
        // a receiver that moved: /moved redirects to /landing, which answers 200 to anything
        .route(
            "/moved",
            axum::routing::any(|| async {
                (
                    StatusCode::MOVED_PERMANENTLY,
                    [(axum::http::header::LOCATION, "/landing")],
                )
            }),
        )
        .route("/landing", axum::routing::any(|| async { StatusCode::OK }))
        .with_state(HookApp(state.clone()));
    let (url, server) = serve(router).await;
    Fake {
        url: format!("{url}/hook"),
        state,
        _server: server,
    }
}

async fn receive(
    State(HookApp(state)): State<HookApp>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let signature = headers
        .get("learntrail-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !signature_ok(signature, &body) {
        *state.bad_signatures.lock().unwrap() += 1;
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    if let Some(scripted) = state.arrive().await {
        return scripted;
    }
    let body: Value = serde_json::from_slice(&body).unwrap();
    let mut stored = state.stored.lock().unwrap();
    for event in body["events"].as_array().unwrap() {
        stored.push((String::new(), event.clone()));
    }
    StatusCode::NO_CONTENT.into_response()
}

/// A receiver's check: `t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, t within 5 minutes.
fn signature_ok(header: &str, body: &[u8]) -> bool {
    let parts: std::collections::HashMap<&str, &str> = header
        .split(',')
        .filter_map(|p| p.split_once('='))
        .collect();
    let (Some(t), Some(v1)) = (parts.get("t"), parts.get("v1")) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let fresh = t.parse::<i64>().is_ok_and(|t| (now - t).abs() <= 300);
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    fresh && hex::decode(v1).is_ok_and(|v1| mac.verify_slice(&v1).is_ok())
}
