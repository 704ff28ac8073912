//! The LMS's own clients, as its documentation shows their payloads: the React video player's
//! generic `video` event with a numeric node id, and the server's events with its own time
//! format. Each is posted verbatim and stored as the same event the split types give.

use learntrail_proto::{
    Event, Payload, time,
    v1::{LmsEvent, LmsEventType, lms_event::EventData},
};
use learntrail_runtime::auth::{self, Claims, Role};
use serde_json::json;

use crate::helpers::{SECRET, spawn_app};

fn lms(event: &Event) -> LmsEvent {
    let Some(Payload::LmsEvent(lms)) = &event.payload else {
        panic!("lms payload in {event:?}")
    };
    lms.clone()
}

#[tokio::test]
async fn the_video_players_payloads_are_stored_as_the_split_types() {
    let app = spawn_app().await;
    // videoEventType as the player reports it, and the split type it stands for
    let states = [
        ("play", "video_play"),
        ("pause", "video_pause"),
        ("seek", "video_seek"),
        ("seeked", "video_seek"),
        ("ended", "video_ended"),
        ("PLAYING", "video_play"),
        ("buffering", "video_buffering"),
        ("cued", "video_cued"),
    ];
    for (index, (state, _)) in states.iter().enumerate() {
        // node_id a number, as this.state.nodeID is; then a string
        let node_id = if index % 2 == 0 {
            json!(42)
        } else {
            json!("42")
        };
        let body = format!(
            r#"{{"tracking_event_type": "video", "node_id": {node_id},
 "event_data": {{"video_id": "dQw4w9WgXcQ", "video_event_type": "{state}"}}}}"#
        );
        let (status, answer) = app
            .post("/api/tracking", Some(&app.token(Role::Student)), body)
            .await;
        assert_eq!(status, 202, "{state}: {answer}");
    }
    // the same events as the split types would send them
    for (_, split) in states {
        let body = json!({"tracking_event_type": split, "node_id": "42",
            "event_data": {"video_id": "dQw4w9WgXcQ", "current_time": 0, "old_time": 0, "new_time": 0}});
        let (status, answer) = app.post_json("/api/tracking", Role::Student, &body).await;
        assert_eq!(status, 202, "{split}: {answer}");
    }
    let stored = app.stored().await;
    assert_eq!(stored.len(), 2 * states.len());
    let (generic, split) = stored.split_at(states.len());
    for (generic, split) in generic.iter().zip(split) {
        assert_eq!(generic.subject(), "events.lms.video");
        assert_eq!(generic.actor, "learner-1");
        // the player sent no position: the generic event has none, where the split types
        // must send one (here 0)
        let mut split = lms(split);
        if let Some(EventData::Video(v)) = &mut split.event_data {
            assert!(v.current_time.is_some());
            (v.current_time, v.old_time, v.new_time) = (None, None, None);
        }
        assert_eq!(lms(generic), split);
    }
    assert_eq!(lms(&generic[2]).event_type, LmsEventType::VideoSeek as i32);

    let unknown = r#"{"tracking_event_type": "video", "node_id": 42,
        "event_data": {"video_id": "v", "video_event_type": "teleported"}}"#;
    let (status, answer) = app
        .post("/api/tracking", Some(&app.token(Role::Student)), unknown)
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        answer["problems"][0]["field"],
        "event_data.video_event_type"
    );
    assert!(
        answer["message"].as_str().unwrap().contains("teleported"),
        "{answer}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_lms_servers_batch_with_its_own_time_format() {
    let app = spawn_app().await;
    let batch = r#"{"events": [
  {"event_type": "registration", "anon_username": "anon-7f3a", "time": "2026-11-24T15:00:00.123456",
   "course_slug": "ruby-101", "course_run": "2026-fall", "module_id": "", "section_id": "", "unit_id": "",
   "page_url": "https://lms.example/register", "event_data": {}},
  {"event_type": "enrollment_activated", "anon_username": "anon-7f3a", "time": "2026-11-24T15:00:01.500000",
   "course_slug": "ruby-101", "course_run": "2026-fall", "module_id": "m1", "section_id": "s1", "unit_id": "u1",
   "page_url": "https://lms.example/ruby-101", "event_data": {"mode": "audit"}},
  {"event_type": "video", "anon_username": "anon-7f3a", "time": "2026-11-24T16:00:02.000000+01:00",
   "course_slug": "ruby-101", "course_run": "2026-fall", "module_id": 3, "section_id": 4, "unit_id": 5,
   "page_url": "https://lms.example/ruby-101/5", "event_data": {"video_id": 77, "video_event_type": "Pause"}}
]}"#;
    let (status, answer) = app
        .post(
            "/api/tracking/batch",
            Some(&app.token(Role::Service)),
            batch,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 3, "{answer}");
    let stored = app.stored().await;
    let times: Vec<String> = stored
        .iter()
        .map(|e| time::rfc3339(e.occurred_at.as_ref().unwrap()))
        .collect();
    assert_eq!(
        times,
        [
            "2026-11-24T15:00:00.123Z",
            "2026-11-24T15:00:01.500Z",
            "2026-11-24T15:00:02.000Z"
        ]
    );
    assert_eq!(stored[0].occurred_at.as_ref().unwrap().nanos, 123_456_000);
    let video = lms(&stored[2]);
    assert_eq!(video.event_type, LmsEventType::VideoPause as i32);
    assert_eq!(
        (video.module_id.as_str(), video.unit_id.as_str()),
        ("3", "5")
    );
    assert_eq!(stored[2].subject(), "events.lms.video");
    app.stop().await;
}

#[tokio::test]
async fn students_send_video_events_only() {
    let app = spawn_app().await;
    let assessment = json!({"tracking_event_type": "assessment_submitted", "node_id": 9,
        "event_data": {"assessment_id": "quiz-1", "score": 10, "max_score": 10}});
    let (status, answer) = app
        .post_json("/api/tracking", Role::Student, &assessment)
        .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"], "forbidden");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("only service tokens"),
        "{answer}"
    );
    assert!(app.stored().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn every_token_must_expire_and_student_tokens_not_too_late() {
    let app = spawn_app().await;
    let body = json!({"tracking_event_type": "video", "node_id": 1,
        "event_data": {"video_id": "v", "video_event_type": "play"}})
    .to_string();
    let sign = |role, exp| {
        auth::sign(
            SECRET.as_bytes(),
            &Claims {
                sub: "learner-1".into(),
                role,
                exp,
                nbf: None,
                iat: None,
                courses: None,
            },
        )
    };
    let forever = sign(Role::Service, None);
    let (status, answer) = app
        .post("/api/tracking", Some(&forever), body.clone())
        .await;
    assert_eq!(status, 401);
    assert!(
        answer["message"].as_str().unwrap().contains("no exp claim"),
        "{answer}"
    );
    let sixty_days = sign(Role::Student, Some(auth::now() + 60 * 86_400));
    let (status, answer) = app
        .post("/api/tracking", Some(&sixty_days), body.clone())
        .await;
    assert_eq!(status, 401);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("STUDENT_TOKEN_MAX_TTL"),
        "{answer}"
    );
    let a_week = sign(Role::Student, Some(auth::now() + 7 * 86_400));
    let (status, answer) = app.post("/api/tracking", Some(&a_week), body).await;
    assert_eq!(status, 202, "{answer}");
    app.stop().await;
}
