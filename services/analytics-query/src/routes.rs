//! HTTP/JSON for browsers (`/api/v1/...`, bodies in the protobuf canonical JSON of the same
//! messages as gRPC) and the Keen-compatible analysis API (`/3.0/projects/{id}/queries/{type}`,
//! Keen's own shapes and error bodies).

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::from_fn_with_state,
    response::{IntoResponse, Response},
    routing::get,
};
use learntrail_proto::time;
use learntrail_runtime::http::{self, ApiError, HttpMetrics, not_found};
use serde::Deserialize;
use serde_json::Value;

use crate::{
    access::Denied,
    api::{Api, QueryError},
    keen::{KeenError, query::Params},
};

type Shared = State<Arc<Api>>;

/// The API router: learner and cohort routes, the Keen routes, metrics, timeout and CORS.
pub fn router(
    api: Api,
    cors_origins: &[String],
    http_metrics: HttpMetrics,
    timeout: Duration,
) -> anyhow::Result<Router> {
    let api = Arc::new(api);
    // everything under /3.0 answers in Keen's shapes, its failures too: an unknown path or
    // method, a body too large, a query past REQUEST_TIMEOUT (Keen's 504)
    let keen_not_found = || async {
        KeenAnswer(KeenError {
            status: 404,
            code: "ResourceNotFoundError",
            message: "Resource not found".into(),
        })
    };
    let keen = Router::new()
        .route(
            "/projects/{project}/queries/{analysis}",
            get(keen_query).post(keen_query),
        )
        .fallback(keen_not_found)
        .method_not_allowed_fallback(|| async {
            KeenAnswer(KeenError {
                status: 405,
                code: "MethodNotAllowedError",
                message: "queries are GET or POST".into(),
            })
        })
        .with_state(api.clone());
    let keen = http::with_timeout_answer(keen, timeout, |timeout| {
        KeenAnswer(KeenError {
            status: 504,
            code: "QueryTimeoutError",
            message: format!("the query took longer than {timeout:?} (REQUEST_TIMEOUT)"),
        })
        .into_response()
    });
    let routes = Router::new()
        .route("/api/v1/learners/{learner}/summary", get(summary))
        .route("/api/v1/learners/{learner}/timeline", get(timeline))
        .route("/api/v1/learners/{learner}/compare", get(compare))
        .route("/api/v1/cohorts/{course}", get(cohort))
        // the bare prefix with a slash, which the nested router's fallback does not see
        .route("/3.0/", axum::routing::any(keen_not_found))
        .fallback(not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .with_state(api);
    Ok(http::with_timeout(routes, timeout)
        .nest("/3.0", keen)
        .layer(from_fn_with_state(http_metrics, HttpMetrics::track))
        .layer(http::cors(cors_origins, &[Method::GET, Method::POST])?))
}

fn api_error(err: QueryError) -> ApiError {
    match err {
        QueryError::Denied(Denied::Unauthenticated(m)) => ApiError::unauthorized(m),
        QueryError::Denied(Denied::Forbidden(m)) => ApiError::forbidden(m),
        QueryError::BadRequest(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m),
        QueryError::Keen(e) => ApiError::new(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            "bad_request",
            e.message,
        ),
        QueryError::Unavailable(e) => ApiError::unavailable(format!("redis: {e}")),
    }
}

/// The Authorization header's value; an empty one counts as none (keen-analysis.js sends an
/// empty header beside `?api_key=`).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
}

type Answer = Result<Response, ApiError>;

/// The JSON body of `value`, written straight from it (no intermediate `Value` tree).
fn json_of<T: serde::Serialize>(value: &T) -> Answer {
    Ok(Json(value).into_response())
}

async fn summary(State(api): Shared, Path(learner): Path<String>, headers: HeaderMap) -> Answer {
    let caller = api.caller(bearer(&headers)).map_err(api_error)?;
    json_of(
        &api.summary(&caller, &learner, "http")
            .await
            .map_err(api_error)?,
    )
}

#[derive(Debug, Deserialize)]
struct Page {
    before: Option<String>,
    limit: Option<u32>,
}

async fn timeline(
    State(api): Shared,
    Path(learner): Path<String>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Answer {
    let caller = api.caller(bearer(&headers)).map_err(api_error)?;
    let before = match page.before.as_deref().filter(|b| !b.is_empty()) {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .ok()
                .or_else(|| {
                    // a `+` of an offset arrives as a space when the client did not encode it
                    let text = text.replace(' ', "+");
                    time::parse_rfc3339(&text)
                        .and_then(|t| time::to_datetime(&t))
                        .map(crate::summary::before_ms)
                })
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "before must be an RFC 3339 time or milliseconds since the epoch",
                    )
                })?,
        ),
    };
    let page = api
        .timeline(&caller, &learner, before, page.limit.unwrap_or(0), "http")
        .await
        .map_err(api_error)?;
    json_of(&page)
}

#[derive(Debug, Deserialize)]
struct CompareParams {
    course: String,
    metric: String,
}

async fn compare(
    State(api): Shared,
    Path(learner): Path<String>,
    Query(params): Query<CompareParams>,
    headers: HeaderMap,
) -> Answer {
    let caller = api.caller(bearer(&headers)).map_err(api_error)?;
    let out = api
        .compare(&caller, &learner, &params.course, &params.metric, "http")
        .await
        .map_err(api_error)?;
    json_of(&out)
}

async fn cohort(State(api): Shared, Path(course): Path<String>, headers: HeaderMap) -> Answer {
    let caller = api.caller(bearer(&headers)).map_err(api_error)?;
    json_of(
        &api.cohort(&caller, &course, "http")
            .await
            .map_err(api_error)?,
    )
}

/// A Keen error answer.
struct KeenAnswer(KeenError);

impl IntoResponse for KeenAnswer {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(self.0.body())).into_response()
    }
}

fn keen_error(err: QueryError) -> KeenAnswer {
    KeenAnswer(match err {
        QueryError::Keen(e) => e,
        QueryError::BadRequest(m) => KeenError::bad_request(m),
        QueryError::Denied(Denied::Unauthenticated(m)) => KeenError {
            status: 401,
            code: "InvalidApiKeyError",
            message: m,
        },
        QueryError::Denied(Denied::Forbidden(m)) => KeenError {
            status: 403,
            code: "ForbiddenError",
            message: m,
        },
        QueryError::Unavailable(e) => KeenError {
            status: 503,
            code: "ServiceUnavailableError",
            message: format!("redis: {e}"),
        },
    })
}

async fn keen_query(
    State(api): Shared,
    Path((project, analysis)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, KeenAnswer> {
    let body = body.map_err(|rejection| {
        KeenAnswer(KeenError {
            status: rejection.status().as_u16(),
            code: "BadRequestError",
            message: rejection.body_text(),
        })
    })?;
    if project != api.project_id {
        return Err(KeenAnswer(KeenError {
            status: 404,
            code: "ResourceNotFoundError",
            message: format!("project {project:?} not found"),
        }));
    }
    let key = pairs
        .iter()
        .find(|(name, _)| name == "api_key")
        .map(|(_, key)| key.as_str());
    let caller = api.caller(bearer(&headers).or(key)).map_err(keen_error)?;
    let mut params = Params::from_pairs(pairs.into_iter().filter(|(name, _)| name != "api_key"));
    if !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => params.merge_body(map),
            _ => {
                return Err(KeenAnswer(KeenError::bad_request(
                    "the request body must be a JSON object of query parameters",
                )));
            }
        }
    }
    let result = api
        .count(&caller, &analysis, &params, "keen")
        .await
        .map_err(keen_error)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], result).into_response())
}
