//! xAPI: statements accepted by a real LRS (Ralph, file-system backend) and read back equal; a
//! resend is the same statements, held once.

use std::{collections::HashMap, time::Duration};

use learntrail_keen_forwarder::{destination, sink::Outcome, xapi::Mapping};
use learntrail_proto::{
    Event, Payload, id, time,
    v1::{
        AssessmentData, EnergyReading, LabLog, LmsEvent, LmsEventType, NotebookSnapshot,
        ProblemResult, RegistrationData, RubyError, RubyRun, VideoData, lms_event::EventData,
        problem_result::Status,
    },
};
use learntrail_testkit::{NatsServer, eventually};
use serde_json::{Value, json};

use crate::helpers::*;

fn event(source: &str, kind: &str, payload: Payload) -> Event {
    Event {
        id: id::new_id(),
        occurred_at: time::parse_rfc3339("2026-11-24T16:30:18.123Z"),
        received_at: Some(time::now()),
        source: source.into(),
        kind: kind.into(),
        actor: "learner-42".into(),
        payload: Some(payload),
        ..Default::default()
    }
}

fn lms(kind: &str, event_type: LmsEventType, data: EventData) -> Event {
    let lms = LmsEvent {
        event_type: event_type as i32,
        course_slug: "ruby-101".into(),
        unit_id: "u1".into(),
        event_data: Some(data),
        ..Default::default()
    };
    event("lms", kind, Payload::LmsEvent(lms))
}

pub fn learning_events() -> Vec<Event> {
    let video = |t: LmsEventType| {
        lms(
            "video",
            t,
            EventData::Video(VideoData {
                video_id: "intro".into(),
                current_time: Some(12.5),
                duration: 60.0,
                old_time: Some(3.0),
                new_time: Some(30.0),
                ..Default::default()
            }),
        )
    };
    let mut problems = HashMap::new();
    problems.insert(
        "q1".to_string(),
        ProblemResult {
            status: Status::Passed as i32,
            points: 2.0,
            max_points: 2.0,
        },
    );
    problems.insert(
        "q2".to_string(),
        ProblemResult {
            status: Status::Failed as i32,
            points: 0.0,
            max_points: 1.0,
        },
    );
    vec![
        video(LmsEventType::VideoPlay),
        video(LmsEventType::VideoPause),
        video(LmsEventType::VideoSeek),
        video(LmsEventType::VideoEnded),
        lms(
            "assessment",
            LmsEventType::AssessmentSubmitted,
            EventData::Assessment(AssessmentData {
                assessment_id: "quiz-1".into(),
                attempt: 1,
                score: 7.0,
                max_score: 10.0,
                passed: Some(true),
            }),
        ),
        lms(
            "registration",
            LmsEventType::Registration,
            EventData::Registration(RegistrationData {
                method: "email".into(),
            }),
        ),
        event(
            "shim",
            "ruby_run",
            Payload::RubyRun(RubyRun {
                script: "hello.rb".into(),
                exit_code: Some(1),
                duration_ms: 1500,
                error: Some(RubyError {
                    class_name: "NoMethodError".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        ),
        event(
            "notebook",
            "snapshot",
            Payload::NotebookSnapshot(NotebookSnapshot {
                assignment: "ps1".into(),
                problems,
                ..Default::default()
            }),
        ),
        event(
            "lab",
            "log",
            Payload::LabLog(LabLog {
                experiment: "spinner".into(),
                log_type: "ui".into(),
                log_kind: "click".into(),
                ..Default::default()
            }),
        ),
        event(
            "energy",
            "reading",
            Payload::EnergyReading(EnergyReading {
                demand_kw: 1.5,
                ..Default::default()
            }),
        ),
    ]
}

/// The statement fields the forwarder sets, with the timestamp as an instant (an LRS may write
/// it in another RFC 3339 form).
fn comparable(statement: &Value) -> Value {
    let timestamp =
        chrono::DateTime::parse_from_rfc3339(statement["timestamp"].as_str().unwrap()).unwrap();
    json!({
        "id": statement["id"], "actor": statement["actor"], "verb": statement["verb"], "object": statement["object"],
        "result": statement["result"], "context": statement["context"], "timestamp": timestamp.timestamp_millis(),
    })
}

#[tokio::test]
async fn statements_are_accepted_by_a_real_lrs_and_read_back_equal() {
    let ralph = Ralph::start().await;
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let entry = json!({"type": "lrs", "url": ralph.url, "username": LRS_USER, "password": LRS_PASSWORD,
        "actor_homepage": "https://lms.example.org", "batch_size": 4, "linger": "50ms"});
    let file = destinations_file(dir.path(), json!([entry]));
    let config = config(&nats, &file);
    let forwarder = start(config.clone()).await;
    let events = learning_events();
    publish(&bus, &events).await;

    let mapping = Mapping {
        actor_homepage: "https://lms.example.org".into(),
        activity_base: config.lrs_activity_base.clone(),
    };
    let expected: Vec<Value> = events.iter().flat_map(|e| mapping.statements(e)).collect();
    // 4 video + answered/scored + registered + attempted + 2 notebook answers + interacted
    assert_eq!(expected.len(), 11);
    let stored = eventually(
        Duration::from_secs(30),
        "every statement in the LRS",
        || async {
            let stored = ralph.statements().await;
            (stored.len() >= expected.len()).then_some(stored)
        },
    )
    .await;
    eventually(Duration::from_secs(10), "every event acked", || async {
        (forwarder
            .metric("learntrail_forward_delivered_total{destination=\"lrs\"}")
            .await?
            == events.len() as f64)
            .then_some(())
    })
    .await;
    forwarder.stop().await;
    assert_eq!(stored.len(), expected.len());
    let stored: HashMap<String, Value> = stored
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), comparable(s)))
        .collect();
    for statement in &expected {
        let id = statement["id"].as_str().unwrap();
        assert_eq!(
            stored.get(id),
            Some(&comparable(statement)),
            "statement {id} read back"
        );
    }
    let verbs: Vec<&str> = expected
        .iter()
        .map(|s| s["verb"]["display"]["en-US"].as_str().unwrap())
        .collect();
    assert_eq!(
        verbs,
        [
            "played",
            "paused",
            "seeked",
            "completed",
            "answered",
            "scored",
            "registered",
            "attempted",
            "answered",
            "answered",
            "interacted"
        ]
    );

    // a resend (a redelivery after a crash) is the same statements: delivered, held once
    let dest = destination::from_config(&config).unwrap().remove(0);
    let outcomes = dest.sink.deliver(&events).await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Delivered),
        "{outcomes:?}"
    );
    assert_eq!(ralph.statements().await.len(), expected.len());
}
