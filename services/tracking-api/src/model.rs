//! From a tracking request's JSON to a validated `Event`. Two shapes are accepted:
//!
//! - the **client shape** sent by browser clients:
//!   `{"tracking_event_type", "node_id", "event_data", ["id", "time", "course_slug", ...]}`;
//!   the learner is the token's `sub`;
//! - the **server shape** sent by the LMS server: `{"event_type", "anon_username", "time",
//!   "course_slug", "course_run", "module_id", "section_id", "unit_id", "page_url", "event_data",
//!   ["id"]}`; only a `service` token may speak for another learner.
//!
//! Each event type has its own `event_data`; every problem is reported with its field.
//!
//! The LMS's own video player posts one generic type, `"video"`, with the player's state in
//! `event_data.video_event_type` (`play`, `pause`, `seek`/`seeked`, `ended`, `buffering`, `cued`,
//! `unstarted`, any case, or a YouTube player state number); it is stored as the same
//! `LmsEvent` as the split types (`video_play`, ...). `node_id` and the other ids may be numbers.
//! `time` is RFC 3339, or the LMS server's `YYYY-MM-DDThh:mm:ss.ffffff` taken as UTC.
//!
//! Registration, enrollment and assessment events come from the LMS server: only a `service`
//! token may send them. Students send video events.

use chrono::{DateTime, Duration, Utc};
use learntrail_proto::{
    Event, Payload, id,
    subject::{kind, source},
    time,
    v1::{
        AssessmentData, Context, EnrollmentData, LmsEvent, LmsEventType, RegistrationData,
        VideoData, lms_event::EventData,
    },
    validate::Problem,
};
use learntrail_runtime::auth::{Claims, Role};
use serde_json::{Map, Value};

use crate::fields::Fields;

const MAX_ID: usize = 256;
const MAX_URL: usize = 2048;
/// How far ahead of our clock an event's time may be.
const MAX_CLOCK_AHEAD_HOURS: i64 = 24;

/// Why a request's event was not accepted.
#[derive(Debug, PartialEq)]
pub enum Rejection {
    /// 400: the body names each problem.
    Invalid(Vec<Problem>),
    /// 403: a valid event this token may not send.
    Forbidden(String),
}

/// The event types, as clients name them.
pub const EVENT_TYPES: [(&str, LmsEventType); 11] = [
    ("registration", LmsEventType::Registration),
    ("enrollment_activated", LmsEventType::EnrollmentActivated),
    (
        "enrollment_deactivated",
        LmsEventType::EnrollmentDeactivated,
    ),
    ("assessment_submitted", LmsEventType::AssessmentSubmitted),
    ("video_play", LmsEventType::VideoPlay),
    ("video_pause", LmsEventType::VideoPause),
    ("video_seek", LmsEventType::VideoSeek),
    ("video_ended", LmsEventType::VideoEnded),
    ("video_buffering", LmsEventType::VideoBuffering),
    ("video_cued", LmsEventType::VideoCued),
    ("video_unstarted", LmsEventType::VideoUnstarted),
];

/// The generic type whose player state is in `event_data.video_event_type`.
pub const VIDEO: &str = "video";

/// Player states in `video_event_type`, as names (any case) ...
const VIDEO_STATES: [(&str, LmsEventType); 14] = [
    ("play", LmsEventType::VideoPlay),
    ("playing", LmsEventType::VideoPlay),
    ("played", LmsEventType::VideoPlay),
    ("pause", LmsEventType::VideoPause),
    ("paused", LmsEventType::VideoPause),
    ("seek", LmsEventType::VideoSeek),
    ("seeked", LmsEventType::VideoSeek),
    ("seeking", LmsEventType::VideoSeek),
    ("ended", LmsEventType::VideoEnded),
    ("end", LmsEventType::VideoEnded),
    ("buffering", LmsEventType::VideoBuffering),
    ("cued", LmsEventType::VideoCued),
    ("unstarted", LmsEventType::VideoUnstarted),
    ("complete", LmsEventType::VideoEnded),
];

/// ... or as a YouTube IFrame player state number.
const YOUTUBE_STATES: [(i64, LmsEventType); 6] = [
    (-1, LmsEventType::VideoUnstarted),
    (0, LmsEventType::VideoEnded),
    (1, LmsEventType::VideoPlay),
    (2, LmsEventType::VideoPause),
    (3, LmsEventType::VideoBuffering),
    (5, LmsEventType::VideoCued),
];

const CLIENT_FIELDS: [&str; 11] = [
    "id",
    "tracking_event_type",
    "node_id",
    "event_data",
    "time",
    "course_slug",
    "course_run",
    "module_id",
    "section_id",
    "unit_id",
    "page_url",
];

const SERVER_FIELDS: [&str; 11] = [
    "id",
    "event_type",
    "anon_username",
    "time",
    "course_slug",
    "course_run",
    "module_id",
    "section_id",
    "unit_id",
    "page_url",
    "event_data",
];

/// The subject kind of an event type.
pub fn kind_of(event_type: LmsEventType) -> &'static str {
    match event_type {
        LmsEventType::Registration => kind::REGISTRATION,
        LmsEventType::EnrollmentActivated | LmsEventType::EnrollmentDeactivated => kind::ENROLLMENT,
        LmsEventType::AssessmentSubmitted => kind::ASSESSMENT,
        _ => kind::VIDEO,
    }
}

/// Validates one tracking request body (already parsed as JSON) sent with `claims`, received
/// at `now`.
pub fn parse_event(body: &Value, claims: &Claims, now: DateTime<Utc>) -> Result<Event, Rejection> {
    let Some(map) = body.as_object() else {
        return Err(Rejection::Invalid(vec![Problem::new(
            "body",
            "must be a JSON object",
        )]));
    };
    let client_shape = map.contains_key("tracking_event_type");
    let mut problems = Vec::new();
    let mut fields = Fields::new(map, "", &mut problems);
    if client_shape && map.contains_key("event_type") {
        fields.problem(
            "event_type",
            "send either tracking_event_type (client shape) or event_type (server shape), not both",
        );
    }
    fields.deny_unknown(if client_shape {
        &CLIENT_FIELDS
    } else {
        &SERVER_FIELDS
    });

    let type_key = if client_shape {
        "tracking_event_type"
    } else {
        "event_type"
    };
    let data = fields.object("event_data", true);
    let event_type = read_event_type(&mut fields, type_key, data);
    let generic_video = fields.is(type_key, VIDEO);
    let event_id = fields.string("id", false, MAX_ID);
    if event_id.as_deref().is_some_and(|i| !id::is_valid_id(i)) {
        fields.problem("id", "must be a ULID or a UUID");
    }
    let occurred_at = read_time(&mut fields, !client_shape, now);
    let actor = if client_shape {
        Some(claims.sub.clone())
    } else {
        fields.string("anon_username", true, MAX_ID)
    };
    let node_id = if client_shape {
        fields.id("node_id", event_type.is_some_and(needs_course), MAX_ID)
    } else {
        None
    };
    let mut lms = LmsEvent {
        event_type: event_type.unwrap_or_default() as i32,
        course_slug: fields
            .string(
                "course_slug",
                !client_shape && event_type.is_some_and(needs_course),
                MAX_ID,
            )
            .unwrap_or_default(),
        course_run: fields
            .string("course_run", false, MAX_ID)
            .unwrap_or_default(),
        module_id: fields.id("module_id", false, MAX_ID).unwrap_or_default(),
        section_id: fields.id("section_id", false, MAX_ID).unwrap_or_default(),
        unit_id: fields.id("unit_id", false, MAX_ID).unwrap_or_default(),
        page_url: fields
            .string("page_url", false, MAX_URL)
            .unwrap_or_default(),
        node_id: node_id.unwrap_or_default(),
        event_data: None,
    };
    if lms.unit_id.is_empty() {
        lms.unit_id = lms.node_id.clone();
    }
    if let (Some(event_type), Some(data)) = (event_type, data) {
        lms.event_data = read_event_data(event_type, generic_video, data, &mut problems);
    }
    if !problems.is_empty() {
        return Err(Rejection::Invalid(problems));
    }
    let (Some(event_type), Some(actor)) = (event_type, actor) else {
        unreachable!("a missing type or actor is reported as a problem")
    };
    if claims.role != Role::Service && !is_video(event_type) {
        return Err(Rejection::Forbidden(format!(
            "only service tokens (the LMS server) may send {} events; students send video events",
            type_name(event_type)
        )));
    }
    if !client_shape && claims.role != Role::Service && actor != claims.sub {
        return Err(Rejection::Forbidden(format!(
            "a {} token may only send its own events (anon_username must be {:?})",
            format!("{:?}", claims.role).to_lowercase(),
            claims.sub
        )));
    }
    if !claims.may_name_course(&lms.course_slug) {
        return Err(Rejection::Forbidden(
            claims.course_refusal(&lms.course_slug),
        ));
    }
    Ok(Event {
        id: event_id.unwrap_or_else(id::new_id),
        occurred_at: Some(occurred_at.unwrap_or_else(|| time::timestamp(now))),
        received_at: Some(time::timestamp(now)),
        source: source::LMS.into(),
        kind: kind_of(event_type).into(),
        actor,
        context: Some(Context {
            course: lms.course_slug.clone(),
            course_run: lms.course_run.clone(),
            module_id: lms.module_id.clone(),
            section_id: lms.section_id.clone(),
            unit_id: lms.unit_id.clone(),
            page_url: lms.page_url.clone(),
            ..Default::default()
        }),
        payload: Some(Payload::LmsEvent(lms)),
    })
}

/// Course-level events need to say which course (and, from clients, which node).
fn needs_course(event_type: LmsEventType) -> bool {
    event_type != LmsEventType::Registration
}

fn read_event_type(
    fields: &mut Fields<'_, '_>,
    key: &str,
    data: Option<&Map<String, Value>>,
) -> Option<LmsEventType> {
    let name = fields.string(key, true, 64)?;
    if name == VIDEO {
        return video_state(data?.get("video_event_type"))
            .map_err(|message| fields.problem_at("event_data.video_event_type", message))
            .ok();
    }
    let found = EVENT_TYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t);
    if found.is_none() {
        let known: Vec<_> = EVENT_TYPES.iter().map(|(n, _)| *n).collect();
        fields.problem(
            key,
            format!(
                "unknown event type {name:?} (known: {VIDEO}, {})",
                known.join(", ")
            ),
        );
    }
    found
}

/// The event type of a generic `video` event's `video_event_type`.
fn video_state(value: Option<&Value>) -> Result<LmsEventType, String> {
    let known = || {
        let names: Vec<_> = VIDEO_STATES.iter().map(|(n, _)| *n).collect();
        format!(
            "known: {}, or a YouTube player state -1, 0, 1, 2, 3, 5",
            names.join(", ")
        )
    };
    match value {
        None | Some(Value::Null) => Err(format!("is required with \"video\" ({})", known())),
        Some(Value::String(name)) => {
            let wanted = name.trim().to_ascii_lowercase();
            VIDEO_STATES
                .iter()
                .find(|(n, _)| *n == wanted)
                .map(|(_, t)| *t)
                .ok_or_else(|| format!("unknown video_event_type {name:?} ({})", known()))
        }
        Some(Value::Number(number)) => YOUTUBE_STATES
            .iter()
            .find(|(n, _)| Some(*n) == number.as_i64())
            .map(|(_, t)| *t)
            .ok_or_else(|| format!("unknown video_event_type {number} ({})", known())),
        Some(_) => Err("must be a string such as \"play\" or a YouTube player state number".into()),
    }
}

fn is_video(event_type: LmsEventType) -> bool {
    kind_of(event_type) == kind::VIDEO
}

/// The client name of an event type.
fn type_name(event_type: LmsEventType) -> &'static str {
    EVENT_TYPES
        .iter()
        .find(|(_, t)| *t == event_type)
        .map_or("unknown", |(n, _)| *n)
}

fn read_time(
    fields: &mut Fields<'_, '_>,
    required: bool,
    now: DateTime<Utc>,
) -> Option<learntrail_proto::wkt::Timestamp> {
    let text = fields.string("time", required, 64)?;
    let Some(ts) = time::parse_utc(&text) else {
        fields.problem(
            "time",
            "must be an RFC 3339 time such as 2026-11-24T16:30:18.123Z, or 2026-11-24T16:30:18.123456 (UTC)",
        );
        return None;
    };
    if time::to_datetime(&ts).is_some_and(|t| t > now + Duration::hours(MAX_CLOCK_AHEAD_HOURS)) {
        fields.problem("time", "is more than 24 hours in the future");
        return None;
    }
    Some(ts)
}

fn read_event_data(
    event_type: LmsEventType,
    generic_video: bool,
    data: &Map<String, Value>,
    problems: &mut Vec<Problem>,
) -> Option<EventData> {
    let mut fields = Fields::new(data, "event_data.", problems);
    let event_data = match event_type {
        LmsEventType::Registration => {
            fields.deny_unknown(&["method"]);
            EventData::Registration(RegistrationData {
                method: fields.string("method", false, 64).unwrap_or_default(),
            })
        }
        LmsEventType::EnrollmentActivated | LmsEventType::EnrollmentDeactivated => {
            fields.deny_unknown(&["mode"]);
            EventData::Enrollment(EnrollmentData {
                mode: fields.string("mode", false, 64).unwrap_or_default(),
            })
        }
        LmsEventType::AssessmentSubmitted => read_assessment(&mut fields)?,
        _ => read_video(
            &mut fields,
            event_type == LmsEventType::VideoSeek,
            generic_video,
        )?,
    };
    Some(event_data)
}

fn read_assessment(fields: &mut Fields<'_, '_>) -> Option<EventData> {
    fields.deny_unknown(&["assessment_id", "attempt", "score", "max_score", "passed"]);
    let assessment_id = fields.string("assessment_id", true, MAX_ID);
    let attempt = fields.count("attempt", false, 1).unwrap_or(1);
    let score = fields.number("score", true, 0.0, false);
    let max_score = fields.number("max_score", true, 0.0, true);
    let passed = fields.boolean("passed", false);
    if let (Some(score), Some(max)) = (score, max_score)
        && score > max
    {
        fields.problem("score", format!("must not exceed max_score ({max})"));
        return None;
    }
    Some(EventData::Assessment(AssessmentData {
        assessment_id: assessment_id?,
        attempt,
        score: score?,
        max_score: max_score?,
        passed,
    }))
}

/// Video `event_data`. The split types need the position (`current_time`, or a seek's
/// `old_time`/`new_time`); the player's generic `video` events send what they have.
fn read_video(fields: &mut Fields<'_, '_>, seek: bool, generic: bool) -> Option<EventData> {
    const VIDEO_FIELDS: [&str; 6] = [
        "video_id",
        "current_time",
        "duration",
        "old_time",
        "new_time",
        "speed",
    ];
    if generic {
        let mut allowed = VIDEO_FIELDS.to_vec();
        allowed.push("video_event_type");
        fields.deny_unknown(&allowed);
    } else {
        fields.deny_unknown(&VIDEO_FIELDS);
    }
    let video_id = fields.id("video_id", true, MAX_ID);
    let current_time = fields.number("current_time", !seek && !generic, 0.0, false);
    let duration = fields.number("duration", false, 0.0, true);
    let speed = fields.number("speed", false, 0.0, true);
    let old_time = fields.number("old_time", seek && !generic, 0.0, false);
    let new_time = fields.number("new_time", seek && !generic, 0.0, false);
    Some(EventData::Video(VideoData {
        video_id: video_id?,
        // a position the player did not send stays unknown: 0 would be a position
        current_time: current_time.or(new_time),
        duration: duration.unwrap_or_default(),
        old_time,
        new_time,
        speed: speed.unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn student() -> Claims {
        Claims {
            sub: "learner-1".into(),
            role: Role::Student,
            exp: None,
            nbf: None,
            iat: None,
            courses: None,
        }
    }

    fn service() -> Claims {
        Claims {
            sub: "lms".into(),
            role: Role::Service,
            ..student()
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-11-24T16:30:00Z".parse().unwrap()
    }

    fn problems(body: Value, claims: &Claims) -> Vec<String> {
        match parse_event(&body, claims, now()) {
            Err(Rejection::Invalid(problems)) => problems.into_iter().map(|p| p.field).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn a_student_token_with_courses_names_only_those() {
        let enrolled = Claims {
            courses: Some(vec!["ruby-101".into()]),
            ..student()
        };
        let play = |course: &str| {
            json!({"tracking_event_type": "video_play", "node_id": "n1", "course_slug": course,
                   "event_data": {"video_id": "v", "current_time": 1.0}})
        };
        let event = parse_event(&play("ruby-101"), &enrolled, now()).unwrap();
        assert_eq!(event.context.unwrap().course, "ruby-101");
        match parse_event(&play("ruby-102"), &enrolled, now()) {
            Err(Rejection::Forbidden(why)) => {
                assert!(
                    why.contains("\"ruby-102\"") && why.contains("ruby-101"),
                    "{why}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // no claim: any course, as before; a service names any course for anyone
        assert!(parse_event(&play("ruby-102"), &student(), now()).is_ok());
        let lms = Claims {
            courses: Some(vec!["ruby-101".into()]),
            ..service()
        };
        let server = json!({"event_type": "video_play", "anon_username": "learner-9",
                            "time": "2026-11-24T16:00:00Z", "course_slug": "ruby-102",
                            "event_data": {"video_id": "v", "current_time": 1.0}});
        assert!(parse_event(&server, &lms, now()).is_ok());
    }

    #[test]
    fn client_shape_becomes_an_lms_event_of_the_token_holder() {
        let body = json!({
            "tracking_event_type": "video_play",
            "node_id": "unit-42",
            "event_data": {"video_id": "intro", "current_time": 12.5, "duration": 300, "speed": 1.5}
        });
        let event = parse_event(&body, &student(), now()).unwrap();
        assert_eq!(
            (event.source.as_str(), event.kind.as_str()),
            ("lms", "video")
        );
        assert_eq!(event.actor, "learner-1");
        assert!(id::is_valid_id(&event.id));
        assert_eq!(event.occurred_at, event.received_at);
        let Some(Payload::LmsEvent(lms)) = event.payload else {
            panic!()
        };
        assert_eq!(lms.event_type, LmsEventType::VideoPlay as i32);
        assert_eq!(
            (lms.node_id.as_str(), lms.unit_id.as_str()),
            ("unit-42", "unit-42")
        );
        assert_eq!(
            lms.event_data,
            Some(EventData::Video(VideoData {
                video_id: "intro".into(),
                current_time: Some(12.5),
                duration: 300.0,
                speed: 1.5,
                ..Default::default()
            }))
        );
    }

    #[test]
    fn positions_the_player_did_not_send_stay_unknown() {
        let video = |data: serde_json::Value| {
            let body = json!({"tracking_event_type": "video", "node_id": "n", "event_data": data});
            match parse_event(&body, &student(), now()).unwrap().payload {
                Some(Payload::LmsEvent(LmsEvent {
                    event_data: Some(EventData::Video(v)),
                    ..
                })) => v,
                other => panic!("{other:?}"),
            }
        };
        // the LMS player's own payload: no position at all
        let play = video(json!({"video_id": "v", "video_event_type": "play"}));
        assert_eq!(play.current_time, None);
        // a seek that says only where it landed; where it left is unknown, not 0
        let seek = video(json!({"video_id": "v", "video_event_type": "seek", "current_time": 42}));
        assert_eq!(
            (seek.current_time, seek.old_time, seek.new_time),
            (Some(42.0), None, None)
        );
        // a real position of 0 is kept as one
        let start = video(json!({"video_id": "v", "video_event_type": "play", "current_time": 0}));
        assert_eq!(start.current_time, Some(0.0));
    }

    #[test]
    fn server_shape_keeps_every_field() {
        let body = json!({
            "id": "01J9ZQ3V6S7T8X9Y0Z1A2B3C4D",
            "event_type": "assessment_submitted",
            "anon_username": "anon-9",
            "time": "2026-11-24T15:00:00Z",
            "course_slug": "ruby-101",
            "course_run": "2026-fall",
            "module_id": "m1",
            "section_id": "s2",
            "unit_id": "u3",
            "page_url": "https://lms.example/ruby-101/u3",
            "event_data": {"assessment_id": "quiz-1", "attempt": 2, "score": 7, "max_score": 10, "passed": true}
        });
        let event = parse_event(&body, &service(), now()).unwrap();
        assert_eq!(event.id, "01J9ZQ3V6S7T8X9Y0Z1A2B3C4D");
        assert_eq!(event.actor, "anon-9");
        assert_eq!(event.kind, "assessment");
        assert_eq!(
            time::rfc3339(event.occurred_at.as_ref().unwrap()),
            "2026-11-24T15:00:00.000Z"
        );
        let context = event.context.unwrap();
        assert_eq!(
            (context.course.as_str(), context.unit_id.as_str()),
            ("ruby-101", "u3")
        );
        let Some(Payload::LmsEvent(lms)) = event.payload else {
            panic!()
        };
        assert_eq!(lms.page_url, "https://lms.example/ruby-101/u3");
        assert_eq!(
            lms.event_data,
            Some(EventData::Assessment(AssessmentData {
                assessment_id: "quiz-1".into(),
                attempt: 2,
                score: 7.0,
                max_score: 10.0,
                passed: Some(true),
            }))
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let body = json!({
            "event_type": "video_seek",
            "time": "last tuesday",
            "course_slug": "",
            "colour": "red",
            "event_data": {"video_id": true, "old_time": -1}
        });
        let mut fields = problems(body, &service());
        fields.sort();
        assert_eq!(
            fields,
            [
                "anon_username",
                "colour",
                "course_slug",
                "event_data.new_time",
                "event_data.old_time",
                "event_data.video_id",
                "time"
            ]
        );
    }

    #[test]
    fn per_type_event_data_rules() {
        let seek_without_times = json!({"tracking_event_type": "video_seek", "node_id": "n", "event_data": {"video_id": "v"}});
        assert_eq!(
            problems(seek_without_times, &student()),
            ["event_data.old_time", "event_data.new_time"]
        );
        let over_max = json!({"tracking_event_type": "assessment_submitted", "node_id": "n",
            "event_data": {"assessment_id": "a", "score": 11, "max_score": 10}});
        assert_eq!(problems(over_max, &service()), ["event_data.score"]);
        let unknown_type =
            json!({"tracking_event_type": "video_rewind", "node_id": "n", "event_data": {}});
        assert_eq!(problems(unknown_type, &student()), ["tracking_event_type"]);
        let registration =
            json!({"tracking_event_type": "registration", "event_data": {"method": "sso"}});
        assert!(parse_event(&registration, &service(), now()).is_ok());
        let enrollment_extra = json!({"tracking_event_type": "enrollment_activated", "node_id": "n", "event_data": {"mode": "audit", "price": 3}});
        assert_eq!(problems(enrollment_extra, &service()), ["event_data.price"]);
        let future = json!({"tracking_event_type": "registration", "time": "2026-11-26T16:30:00Z", "event_data": {}});
        assert_eq!(problems(future, &student()), ["time"]);
        let bad_id = json!({"tracking_event_type": "registration", "id": "123", "event_data": {}});
        assert_eq!(problems(bad_id, &student()), ["id"]);
        assert_eq!(problems(json!([1]), &student()), ["body"]);
        assert_eq!(
            problems(json!({}), &student()),
            ["event_data", "event_type", "time", "anon_username"]
        );
    }

    #[test]
    fn students_may_not_speak_for_others() {
        let body = json!({"event_type": "video_pause", "anon_username": "someone-else",
            "time": "2026-11-24T15:00:00Z", "course_slug": "c",
            "event_data": {"video_id": "v", "current_time": 1}});
        assert!(matches!(
            parse_event(&body, &student(), now()),
            Err(Rejection::Forbidden(_))
        ));
        let mut own = body.clone();
        own["anon_username"] = json!("learner-1");
        assert!(parse_event(&own, &student(), now()).is_ok());
        // the message names the sub as it is, case and all, so the sender can copy it
        let mixed = Claims {
            sub: "Learner-AB".into(),
            ..student()
        };
        let Err(Rejection::Forbidden(message)) = parse_event(&body, &mixed, now()) else {
            panic!("refused")
        };
        assert!(message.contains("\"Learner-AB\""), "{message}");
        assert!(message.starts_with("a student token"), "{message}");
    }

    #[test]
    fn only_services_send_registration_enrollment_and_assessment() {
        for body in [
            json!({"tracking_event_type": "registration", "event_data": {}}),
            json!({"tracking_event_type": "enrollment_activated", "node_id": "n", "event_data": {}}),
            json!({"tracking_event_type": "assessment_submitted", "node_id": "n",
                "event_data": {"assessment_id": "a", "score": 10, "max_score": 10}}),
        ] {
            let Err(Rejection::Forbidden(message)) = parse_event(&body, &student(), now()) else {
                panic!("a student token may not send {body}")
            };
            assert!(message.contains("only service tokens"), "{message}");
            assert!(parse_event(&body, &service(), now()).is_ok());
        }
    }

    fn video_of(body: &Value, claims: &Claims) -> (LmsEventType, LmsEvent) {
        let event = parse_event(body, claims, now()).unwrap_or_else(|e| panic!("{body}: {e:?}"));
        let Some(Payload::LmsEvent(lms)) = event.payload else {
            panic!()
        };
        (LmsEventType::try_from(lms.event_type).unwrap(), lms)
    }

    #[test]
    fn the_players_generic_video_events_are_the_split_types() {
        for (state, expected) in [
            ("play", LmsEventType::VideoPlay),
            ("PLAYING", LmsEventType::VideoPlay),
            ("Pause", LmsEventType::VideoPause),
            ("seeked", LmsEventType::VideoSeek),
            ("seek", LmsEventType::VideoSeek),
            ("ended", LmsEventType::VideoEnded),
            ("buffering", LmsEventType::VideoBuffering),
            ("cued", LmsEventType::VideoCued),
            ("unstarted", LmsEventType::VideoUnstarted),
        ] {
            let body = json!({"tracking_event_type": "video", "node_id": 12,
                "event_data": {"video_id": "intro", "video_event_type": state}});
            let (event_type, lms) = video_of(&body, &student());
            assert_eq!(event_type, expected, "{state}");
            assert_eq!(lms.node_id, "12");
        }
        let youtube = json!({"tracking_event_type": "video", "node_id": "n",
            "event_data": {"video_id": "v", "video_event_type": 2}});
        assert_eq!(video_of(&youtube, &student()).0, LmsEventType::VideoPause);
        // the same stored event as the split type
        let generic = json!({"tracking_event_type": "video", "node_id": "n",
            "event_data": {"video_id": "v", "video_event_type": "play", "current_time": 3}});
        let split = json!({"tracking_event_type": "video_play", "node_id": "n",
            "event_data": {"video_id": "v", "current_time": 3}});
        assert_eq!(
            video_of(&generic, &student()).1,
            video_of(&split, &student()).1
        );
    }

    #[test]
    fn unknown_player_states_are_named() {
        let body = json!({"tracking_event_type": "video", "node_id": "n",
            "event_data": {"video_id": "v", "video_event_type": "rewinding"}});
        let Err(Rejection::Invalid(problems)) = parse_event(&body, &student(), now()) else {
            panic!()
        };
        assert_eq!(problems[0].field, "event_data.video_event_type");
        assert!(
            problems[0].message.contains("\"rewinding\""),
            "{}",
            problems[0].message
        );
        let missing = json!({"tracking_event_type": "video", "node_id": "n", "event_data": {"video_id": "v"}});
        assert_eq!(problems_of(missing), ["event_data.video_event_type"]);
    }

    fn problems_of(body: Value) -> Vec<String> {
        problems(body, &student())
    }

    #[test]
    fn the_lms_servers_time_format_is_utc() {
        let body = json!({"event_type": "registration", "anon_username": "anon-9",
            "time": "2026-11-24T15:00:00.123456", "event_data": {}});
        let event = parse_event(&body, &service(), now()).unwrap();
        let occurred = event.occurred_at.unwrap();
        assert_eq!(time::rfc3339(&occurred), "2026-11-24T15:00:00.123Z");
        assert_eq!(occurred.nanos, 123_456_000);
        let mut offset = body.clone();
        offset["time"] = json!("2026-11-24T16:00:00.123456+01:00");
        let same = parse_event(&offset, &service(), now()).unwrap();
        assert_eq!(same.occurred_at, Some(occurred));
    }
}
