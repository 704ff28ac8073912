//! The dashboard (issue 11): the cohort page at `/`, each learner's page at
//! `/learners/{learner}`, their static files at `/dashboard/{file}` (plain HTML, CSS and
//! JavaScript compiled into the binary, no build step; the one charting library, Chart.js, vendored
//! under `dashboard/vendor/`), and the two JSON answers the pages need
//! beyond `/api/v1/...`: the courses a caller may pick, and a cohort table with last activity,
//! Ruby runs and (for instructor and service tokens) the roster's names.

use std::{collections::BTreeSet, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use learntrail_proto::v1::problem_result::Status;
use learntrail_runtime::{auth::Role, http::ApiError};
use serde_json::{Value, json};

use crate::{
    access::{Caller, Denied},
    api::Api,
    cohort, keys,
    roster::Roster,
    summary,
};

/// A strict policy: scripts, styles and requests only from this origin, no inline code.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $mime:literal) => {
        Asset {
            name: $name,
            mime: $mime,
            body: include_bytes!(concat!("../dashboard/", $name)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("cohort.html", "text/html; charset=utf-8"),
    asset!("learner.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("common.js", "text/javascript; charset=utf-8"),
    asset!("cohort.js", "text/javascript; charset=utf-8"),
    asset!("learner.js", "text/javascript; charset=utf-8"),
    // Chart.js 4.6.1 as npm publishes it (vendor/VENDORED.md: source, licence, hash)
    asset!("vendor/chart.umd.min.js", "text/javascript; charset=utf-8"),
];

#[derive(Clone)]
struct Dash {
    api: Api,
    roster: Arc<Roster>,
}

type Shared = State<Arc<Dash>>;

/// The pages, their files and the dashboard's JSON routes.
pub fn router(api: Api, roster: Arc<Roster>) -> Router {
    Router::new()
        .route("/", get(|| async { page("cohort.html") }))
        .route(
            "/learners/{learner}",
            get(|_: Path<String>| async { page("learner.html") }),
        )
        .route("/dashboard/{*file}", get(file))
        .route("/api/v1/dashboard/courses", get(courses))
        .route("/api/v1/dashboard/cohorts/{course}", get(cohort_table))
        .route("/api/v1/dashboard/learners/{learner}", get(learner))
        .with_state(Arc::new(Dash { api, roster }))
}

fn serve_asset(asset: &Asset, cache: &'static str) -> Response {
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn missing() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such page").into_response()
}

fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// A page: revalidated on every load (it names the current files).
fn page(name: &str) -> Response {
    find(name).map_or_else(missing, |a| serve_asset(a, "no-cache"))
}

/// Scripts and styles: cached for an hour (pages ask for `?v=<version>`, so an upgrade refetches).
async fn file(Path(name): Path<String>) -> Response {
    match find(&name).filter(|a| !a.name.ends_with(".html")) {
        Some(asset) => serve_asset(asset, "public, max-age=3600"),
        None => missing(),
    }
}

fn denied(err: crate::api::QueryError) -> ApiError {
    use crate::api::QueryError;
    match err {
        QueryError::Denied(Denied::Unauthenticated(m)) => ApiError::unauthorized(m),
        QueryError::Denied(Denied::Forbidden(m)) => ApiError::forbidden(m),
        QueryError::Unavailable(e) => ApiError::unavailable(format!("redis: {e}")),
        other => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", other.to_string()),
    }
}

fn caller(dash: &Dash, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    dash.api.caller(credential).map_err(denied)
}

fn sees_names(caller: &Caller) -> bool {
    matches!(caller.role, Role::Instructor | Role::Service)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Student => "student",
        Role::Instructor => "instructor",
        Role::Service => "service",
    }
}

/// Every course with a learner (`{c:<course>}:l` keys; a cluster answers only a token's courses).
async fn all_courses(dash: &Dash) -> redis::RedisResult<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let Some(mut conn) = dash.api.store.single() else {
        return Ok(out);
    };
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("{c:*}:l")
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        out.extend(keys.iter().filter_map(|k| {
            k.strip_prefix("{c:")
                .and_then(|k| k.strip_suffix("}:l"))
                .map(str::to_string)
        }));
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// Who the caller is and which courses they may pick.
async fn courses(State(dash): Shared, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let caller = caller(&dash, &headers)?;
    let courses: Vec<String> = match (caller.role, &caller.courses) {
        (Role::Student, _) => Vec::new(),
        (Role::Instructor, Some(mine)) => mine.clone(),
        _ => all_courses(&dash)
            .await
            .map_err(|e| ApiError::unavailable(format!("redis: {e}")))?
            .into_iter()
            .collect(),
    };
    Ok(Json(json!({
        "sub": caller.sub,
        "role": role_name(caller.role),
        "courses": courses,
    })))
}

fn status_name(status: i32) -> &'static str {
    match Status::try_from(status).unwrap_or(Status::Unspecified) {
        Status::Passed => "passed",
        Status::Failed => "failed",
        Status::NotRun => "not_run",
        Status::NeedsManualGrading => "manual",
        Status::Unanswered => "unanswered",
        Status::Unspecified => "none",
    }
}

/// The cohort table of the page: statuses by name, completion, last activity, Ruby runs and
/// failures in the course, and names when the caller may see them.
async fn cohort_table(
    State(dash): Shared,
    Path(course): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&dash, &headers)?;
    caller
        .may_read_course(&course)
        .map_err(|d| denied(d.into()))?;
    let (mut rows, known) = read_rows(&dash.api.store, &course)
        .await
        .map_err(|e| ApiError::unavailable(format!("redis: {e}")))?;
    let learners: Vec<(String, summary::Raw)> = rows
        .iter_mut()
        .map(|r| (r.learner.clone(), std::mem::take(&mut r.raw)))
        .collect();
    let table = cohort::table(&course, &learners, &known);
    let names = sees_names(&caller);
    let order = natural_order(&table.problems);
    let rows: Vec<Value> = table
        .learners
        .iter()
        .zip(&rows)
        .map(|(row, read)| {
            json!({
                "learner": read.learner,
                "name": names.then(|| dash.roster.get(&read.learner).map(|p| &p.name)).flatten(),
                "statuses": order.iter().map(|&i| status_name(row.statuses[i])).collect::<Vec<_>>(),
                "passed": row.passed,
                "completion": row.completion,
                "lastActivity": read.last,
                "rubyRuns": read.runs,
                "rubyFailed": read.failed,
            })
        })
        .collect();
    let problems: Vec<&String> = order.iter().map(|&i| &table.problems[i]).collect();
    Ok(Json(json!({
        "course": course,
        "problems": problems,
        "names": names,
        "rows": rows,
    })))
}

/// The learner page's header: the name (instructor and service tokens) and the viewer's role;
/// 403 for a student asking about someone else.
async fn learner(
    State(dash): Shared,
    Path(learner): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&dash, &headers)?;
    caller
        .may_read_learner(&dash.api.store, &learner)
        .await
        .map_err(|d| denied(d.into()))?;
    let name = sees_names(&caller)
        .then(|| dash.roster.get(&learner).map(|p| p.name.clone()))
        .flatten();
    Ok(Json(json!({
        "learner": learner,
        "name": name,
        "viewer": role_name(caller.role),
    })))
}

/// What one row of the page needs, read in one small pipeline per learner.
struct RowRead {
    learner: String,
    raw: summary::Raw,
    last: Option<f64>,
    runs: f64,
    failed: f64,
}

async fn read_rows(
    store: &crate::store::Store,
    course: &str,
) -> redis::RedisResult<(Vec<RowRead>, BTreeSet<String>)> {
    let mut conn = store.clone();
    let mut members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{}:l", keys::course(course)))
        .query_async(&mut conn)
        .await?;
    members.sort();
    let pipelines: Vec<redis::Pipeline> = members
        .iter()
        .map(|learner| {
            let tag = keys::learner(learner);
            let mut pipe = redis::pipe();
            pipe.hget(format!("{tag}:n"), "last")
                .hgetall(format!("{tag}:prob"))
                .hget(format!("{tag}:bc"), keys::field(&[course, "ruby_runs"]))
                .hget(
                    format!("{tag}:bc"),
                    keys::field(&[course, "ruby_failed_runs"]),
                );
            pipe
        })
        .collect();
    let answers = store.query_groups(&pipelines).await?;
    let known = summary::known_problems(store, &[course.to_string()])
        .await?
        .remove(course)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut rows = Vec::with_capacity(members.len());
    for (learner, answer) in members.into_iter().zip(answers) {
        let mut values = answer.into_iter().map(Some);
        let mut next = || values.next().flatten().unwrap_or(redis::Value::Nil);
        let number = |value: redis::Value| -> redis::RedisResult<Option<f64>> {
            Ok(redis::from_redis_value::<Option<String>>(value)?.and_then(|v| v.parse().ok()))
        };
        let last = number(next())?;
        let problems = redis::from_redis_value(next())?;
        let runs = number(next())?.unwrap_or(0.0);
        let failed = number(next())?.unwrap_or(0.0);
        rows.push(RowRead {
            learner,
            raw: summary::Raw {
                problems,
                ..Default::default()
            },
            last,
            runs,
            failed,
        });
    }
    Ok((rows, known))
}

/// Problem indices in natural order (`q2` before `q10`).
fn natural_order(problems: &[String]) -> Vec<usize> {
    fn key(name: &str) -> Vec<(String, u64)> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut digits = String::new();
        for c in name.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
            } else {
                if !digits.is_empty() {
                    parts.push((
                        std::mem::take(&mut text),
                        digits.parse().unwrap_or(u64::MAX),
                    ));
                    digits.clear();
                }
                text.push(c);
            }
        }
        parts.push((text, digits.parse().unwrap_or(0)));
        parts
    }
    let mut order: Vec<usize> = (0..problems.len()).collect();
    order.sort_by_cached_key(|&i| key(&problems[i]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_sort_naturally() {
        let names: Vec<String> = ["hw1/q10", "hw1/q2", "hw10/q1", "hw2/q1", "hw1/q1"]
            .map(String::from)
            .to_vec();
        let sorted: Vec<&str> = natural_order(&names)
            .into_iter()
            .map(|i| names[i].as_str())
            .collect();
        assert_eq!(sorted, ["hw1/q1", "hw1/q2", "hw1/q10", "hw2/q1", "hw10/q1"]);
    }

    #[test]
    fn the_vendored_chart_library_is_the_file_its_record_names() {
        use sha2::{Digest, Sha256};
        let record = include_str!("../dashboard/vendor/VENDORED.md");
        let served = find("vendor/chart.umd.min.js").expect("the chart library is served");
        let hash = hex::encode(Sha256::digest(served.body));
        assert!(
            record.contains(&format!("sha256 of `chart.umd.min.js`: `{hash}`")),
            "vendor/chart.umd.min.js (sha256 {hash}) is not the file VENDORED.md records"
        );
        let head = String::from_utf8_lossy(&served.body[..200]);
        assert!(head.contains("Chart.js v4.6.1") && head.contains("MIT"));
        assert!(include_str!("../dashboard/vendor/chart.js.LICENSE.md").contains("MIT License"));
    }
}
