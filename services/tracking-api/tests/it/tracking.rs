use std::time::Duration;

use learntrail_proto::{
    Payload, time,
    v1::{AssessmentData, LmsEventType, VideoData, lms_event::EventData},
};
use learntrail_runtime::auth::Role;
use learntrail_testkit::eventually;
use serde_json::json;

use crate::helpers::{BATCH_LIMIT, BODY_LIMIT, SECRET, spawn_app, token};

fn video_play(id: &str) -> serde_json::Value {
    json!({
        "id": id,
        "tracking_event_type": "video_play",
        "node_id": "unit-7",
        "course_slug": "ruby-101",
        "page_url": "https://lms.example/ruby-101/unit-7",
        "event_data": {"video_id": "intro", "current_time": 3.5, "duration": 120}
    })
}

#[tokio::test]
async fn accepted_events_are_stored_as_sent() {
    let app = spawn_app().await;
    let server_event = json!({
        "id": "0192a5b4-6c1d-7e2f-8a9b-0c1d2e3f4a5b",
        "event_type": "assessment_submitted",
        "anon_username": "anon-42",
        "time": "2026-11-24T15:00:00.250Z",
        "course_slug": "ruby-101",
        "course_run": "2026-fall",
        "module_id": "m1",
        "section_id": "s1",
        "unit_id": "u9",
        "page_url": "https://lms.example/ruby-101/u9",
        "event_data": {"assessment_id": "quiz-3", "attempt": 2, "score": 8.5, "max_score": 10, "passed": true}
    });
    let (status, body) = app
        .post_json("/api/tracking", Role::Service, &server_event)
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["id"], "0192a5b4-6c1d-7e2f-8a9b-0c1d2e3f4a5b");
    assert_eq!(body["duplicate"], false);

    let (status, body) = app
        .post_json(
            "/api/tracking",
            Role::Student,
            &video_play("01JBQ0Z6W0000000000000VXD1"),
        )
        .await;
    assert_eq!(status, 202, "{body}");

    let stored = app.stored().await;
    assert_eq!(stored.len(), 2);
    let assessment = &stored[0];
    assert_eq!(assessment.id, "0192a5b4-6c1d-7e2f-8a9b-0c1d2e3f4a5b");
    assert_eq!(
        (assessment.source.as_str(), assessment.kind.as_str()),
        ("lms", "assessment")
    );
    assert_eq!(assessment.actor, "anon-42");
    assert_eq!(
        time::rfc3339(assessment.occurred_at.as_ref().unwrap()),
        "2026-11-24T15:00:00.250Z"
    );
    assert!(assessment.received_at.is_some());
    let context = assessment.context.as_ref().unwrap();
    assert_eq!(
        (
            context.course.as_str(),
            context.course_run.as_str(),
            context.module_id.as_str(),
            context.section_id.as_str(),
            context.unit_id.as_str()
        ),
        ("ruby-101", "2026-fall", "m1", "s1", "u9")
    );
    let Some(Payload::LmsEvent(lms)) = &assessment.payload else {
        panic!("lms payload")
    };
    assert_eq!(lms.event_type, LmsEventType::AssessmentSubmitted as i32);
    assert_eq!(lms.course_slug, "ruby-101");
    assert_eq!(lms.course_run, "2026-fall");
    assert_eq!(lms.page_url, "https://lms.example/ruby-101/u9");
    assert_eq!(
        lms.event_data,
        Some(EventData::Assessment(AssessmentData {
            assessment_id: "quiz-3".into(),
            attempt: 2,
            score: 8.5,
            max_score: 10.0,
            passed: Some(true),
        }))
    );

    let video = &stored[1];
    assert_eq!(video.subject(), "events.lms.video");
    assert_eq!(
        video.actor, "learner-1",
        "client-shape events belong to the token's sub"
    );
    let Some(Payload::LmsEvent(lms)) = &video.payload else {
        panic!("lms payload")
    };
    assert_eq!(lms.node_id, "unit-7");
    assert_eq!(
        lms.event_data,
        Some(EventData::Video(VideoData {
            video_id: "intro".into(),
            current_time: Some(3.5),
            duration: 120.0,
            ..Default::default()
        }))
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_fields_get_400_naming_each_field() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"tracking_event_type": "video_play", "node_id": "n", "event_data": {"current_time": 1}}),
            vec!["event_data.video_id"],
        ),
        (
            json!({"tracking_event_type": "video_play", "node_id": "n", "event_data": {"video_id": "v", "current_time": -2}}),
            vec!["event_data.current_time"],
        ),
        (
            json!({"tracking_event_type": "video_fly", "node_id": "n", "event_data": {}}),
            vec!["tracking_event_type"],
        ),
        (
            json!({"tracking_event_type": "assessment_submitted", "node_id": "n", "event_data": {"assessment_id": "a", "score": "high", "max_score": 0}}),
            vec!["event_data.score", "event_data.max_score"],
        ),
        (
            json!({"tracking_event_type": "registration", "time": "noon", "event_data": {}, "extra": 1}),
            vec!["extra", "time"],
        ),
        (
            json!({"event_type": "enrollment_activated", "time": "2026-11-24T15:00:00Z", "course_slug": "c", "event_data": {"mode": 5}}),
            vec!["anon_username", "event_data.mode"],
        ),
    ];
    for (body, fields) in cases {
        let (status, answer) = app.post_json("/api/tracking", Role::Service, &body).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_eq!(answer["error"], "invalid_event");
        let mut named: Vec<_> = answer["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["field"].as_str().unwrap().to_string())
            .collect();
        named.sort();
        let mut fields: Vec<String> = fields.into_iter().map(String::from).collect();
        fields.sort();
        assert_eq!(named, fields, "{body} -> {answer}");
        assert!(
            answer["problems"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (status, answer) = app
        .post(
            "/api/tracking",
            Some(&token("learner-1", Role::Student)),
            "{not json",
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(answer["problems"][0]["field"], "body");
    assert!(
        app.stored().await.is_empty(),
        "nothing invalid reaches the bus"
    );
    app.stop().await;
}

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let app = spawn_app().await;
    let body = video_play("01JBQ0Z6W0000000000000VXD2").to_string();
    let (status, answer) = app.post("/api/tracking", None, body.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(answer["error"], "unauthorized");
    let (status, _) = app
        .post("/api/tracking", Some("not.a.jwt"), body.clone())
        .await;
    assert_eq!(status, 401);
    let other_secret = learntrail_runtime::auth::sign(
        b"some-other-secret",
        &learntrail_runtime::auth::Claims {
            sub: "x".into(),
            role: Role::Service,
            exp: None,
            nbf: None,
            iat: None,
            courses: None,
        },
    );
    let (status, _) = app
        .post("/api/tracking", Some(&other_secret), body.clone())
        .await;
    assert_eq!(status, 401);
    let expired = learntrail_runtime::auth::sign(
        SECRET.as_bytes(),
        &learntrail_runtime::auth::Claims {
            sub: "x".into(),
            role: Role::Service,
            exp: Some(1_000),
            nbf: None,
            iat: None,
            courses: None,
        },
    );
    let (status, answer) = app.post("/api/tracking", Some(&expired), body).await;
    assert_eq!(status, 401);
    assert!(answer["message"].as_str().unwrap().contains("expired"));

    let for_someone_else = json!({"event_type": "registration", "anon_username": "someone-else",
        "time": "2026-11-24T15:00:00Z", "event_data": {}});
    let (status, answer) = app
        .post_json("/api/tracking", Role::Student, &for_someone_else)
        .await;
    assert_eq!(status, 403, "{answer}");
    assert!(app.stored().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn oversized_bodies_and_batches_get_413() {
    let app = spawn_app().await;
    let mut big = video_play("01JBQ0Z6W0000000000000VXD3");
    big["page_url"] = json!("x".repeat(BODY_LIMIT + 1));
    let (status, answer) = app.post_json("/api/tracking", Role::Student, &big).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "payload_too_large");

    let events: Vec<_> = (0..=BATCH_LIMIT)
        .map(|_| json!({"tracking_event_type": "registration", "event_data": {}}))
        .collect();
    let (status, answer) = app
        .post_json(
            "/api/tracking/batch",
            Role::Student,
            &json!({"events": events}),
        )
        .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "too_many_events");
    assert!(app.stored().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_retried_event_is_stored_once() {
    let app = spawn_app().await;
    let event = video_play("01JBQ0Z6W0000000000000VXD4");
    let (first, body) = app.post_json("/api/tracking", Role::Student, &event).await;
    assert_eq!((first, &body["duplicate"]), (202, &json!(false)));
    let (second, body) = app.post_json("/api/tracking", Role::Student, &event).await;
    assert_eq!((second, &body["duplicate"]), (202, &json!(true)));
    let (status, body) = app
        .post_json("/api/tracking/batch", Role::Student, &json!([event]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["duplicate"], true);
    let stored = app.stored().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, "01JBQ0Z6W0000000000000VXD4");
    assert!(
        app.metrics()
            .await
            .contains("learntrail_tracking_events_duplicate_total 2")
    );
    app.stop().await;
}

#[tokio::test]
async fn batches_answer_per_event() {
    let app = spawn_app().await;
    let batch = json!({"events": [
        video_play("01JBQ0Z6W0000000000000VXD5"),
        {"id": "01JBQ0Z6W0000000000000VXD7", "tracking_event_type": "video_pause", "node_id": "n", "event_data": {"video_id": "v"}},
        {"tracking_event_type": "video_ended", "node_id": "n", "course_slug": "c", "event_data": {"video_id": "v", "current_time": 60}},
    ]});
    let (status, body) = app
        .post_json("/api/tracking/batch", Role::Student, &batch)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["rejected"].as_u64()),
        (Some(2), Some(1))
    );
    let results = body["results"].as_array().unwrap();
    assert_eq!(
        results
            .iter()
            .map(|r| r["status"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [202, 400, 202]
    );
    assert_eq!(
        results[1]["problems"][0]["field"],
        "event_data.current_time"
    );
    assert_eq!(results[0]["id"], "01JBQ0Z6W0000000000000VXD5");
    assert_eq!(
        results[1]["id"], "01JBQ0Z6W0000000000000VXD7",
        "a refused event keeps its sender's id"
    );
    let stored = app.stored().await;
    assert_eq!(
        stored.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["video", "video"]
    );
    assert_eq!(stored[1].id, results[2]["id"].as_str().unwrap());
    app.stop().await;
}

#[tokio::test]
async fn bus_down_gives_503_and_recovers() {
    let mut app = spawn_app().await;
    app.nats.stop();
    app.wait_ready(false).await;
    let event = video_play("01JBQ0Z6W0000000000000VXD6");
    let (status, body) = app.post_json("/api/tracking", Role::Student, &event).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable");
    assert_eq!(
        body["id"], "01JBQ0Z6W0000000000000VXD6",
        "the id to retry with"
    );
    let (status, body) = app
        .post_json("/api/tracking/batch", Role::Student, &json!([event]))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["results"][0]["status"], 503);
    assert_eq!(body["results"][0]["id"], "01JBQ0Z6W0000000000000VXD6");
    // a client that sent no id learns the one the server assigned
    let mut anonymous = event.clone();
    anonymous.as_object_mut().unwrap().remove("id");
    let (status, body) = app
        .post_json("/api/tracking", Role::Student, &anonymous)
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["id"].as_str().map(str::len), Some(26), "{body}");

    app.nats.restart();
    app.wait_ready(true).await;
    let (status, body) = eventually(
        Duration::from_secs(20),
        "a 202 after NATS is back",
        || async {
            let answer = app.post_json("/api/tracking", Role::Student, &event).await;
            (answer.0 != 503).then_some(answer)
        },
    )
    .await;
    assert_eq!(status, 202, "{body}");
    eventually(
        Duration::from_secs(10),
        "the test's own connection to reconnect",
        || async { app.bus.is_connected().then_some(()) },
    )
    .await;
    let stored = app.stored().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, "01JBQ0Z6W0000000000000VXD6");
    app.stop().await;
}

#[tokio::test]
async fn browsers_get_cors_and_unknown_routes_get_json() {
    let app = spawn_app().await;
    let preflight = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/tracking", app.api),
        )
        .header("origin", "https://lms.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://lms.example"
    );
    let stranger = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/tracking", app.api),
        )
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(
        stranger
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let (status, body) = app
        .post_json("/api/nothing", Role::Student, &json!({}))
        .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    // a route asked with another method: 405, JSON too
    let got = app
        .http
        .get(format!("{}/api/tracking", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 405);
    let body: serde_json::Value = got.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed", "{body}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("learntrail_http_requests_total"),
        "{metrics}"
    );
    app.stop().await;
}

#[test]
fn configuration_errors_exit_64_naming_the_setting() {
    for (secret, expect) in [("", "must not be empty"), ("   ", "must not be empty")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tracking-api"))
            .env("JWT_SECRET", secret)
            .env("LOG_FORMAT", "json")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("jwt-secret") && stderr.contains(expect),
            "{stderr}"
        );
        assert!(!stderr.contains(secret.trim()) || secret.trim().is_empty());
    }
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_tracking-api"))
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(64));
}
