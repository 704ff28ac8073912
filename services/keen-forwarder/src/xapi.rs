//! Events → xAPI 1.0.3 statements (../shared/PROTOCOLS.md §6): LMS video events → the Video
//! profile's played/paused/seeked/completed with `result.extensions` times; an assessment
//! submitted → `answered` and `scored` with `result.score`; a registration or an activated
//! enrollment → `registered`; a Ruby run → `attempted` with `result.success` and the error
//! class; a notebook snapshot → `answered` per answered `grade_id` (with its score once graded);
//! a lab log → `interacted`. Other events have no statement. A video position the player did
//! not send is left out rather than sent as 0.
//!
//! The actor is an `account` (`homePage` configured, `name` the learner pseudonym). A statement's
//! `id` is the UUID v5 of the event id (with the verb or grade id where one event gives several),
//! so a resend is the same statement; `timestamp` is the occurred time.

use learntrail_proto::{
    Event, Payload, time,
    v1::{LmsEventType, problem_result::Status},
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// What an activity id's own part keeps as it is: RFC 3986's unreserved characters and `/`.
const ACTIVITY_ID: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

use learntrail_proto::v1::lms_event::EventData;

const ADL: &str = "http://adlnet.gov/expapi/verbs/";
const VIDEO_VERBS: &str = "https://w3id.org/xapi/video/verbs/";
const VIDEO_EXT: &str = "https://w3id.org/xapi/video/extensions/";
const VIDEO_TYPE: &str = "https://w3id.org/xapi/video/activity-type/video";
const VIDEO_CATEGORY: &str = "https://w3id.org/xapi/video";

/// Where statement IRIs point.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// `account.homePage` of every actor.
    pub actor_homepage: String,
    /// Prefix of activity ids and extension IRIs, e.g. `https://learntrail.example/xapi`.
    pub activity_base: String,
}

/// The statement id of `event` (and `part`, where one event gives several statements).
pub fn statement_id(event_id: &str, part: Option<&str>) -> Uuid {
    let name = match part {
        Some(part) => format!("learntrail:{event_id}#{part}"),
        None => format!("learntrail:{event_id}"),
    };
    Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes())
}

impl Mapping {
    /// The statements of one event (none for events xAPI has no verb for).
    pub fn statements(&self, event: &Event) -> Vec<Value> {
        let Some(payload) = &event.payload else {
            return Vec::new();
        };
        match payload {
            Payload::LmsEvent(lms) => self.lms(event, lms),
            Payload::RubyRun(run) => {
                let script = if run.script.is_empty() {
                    "unnamed"
                } else {
                    &run.script
                };
                let mut result =
                    json!({ "success": run.exit_code == Some(0) && run.signal.is_none() });
                if run.duration_ms > 0 {
                    result["duration"] =
                        json!(format!("PT{:.3}S", run.duration_ms as f64 / 1000.0));
                }
                if let Some(error) = run.error.as_ref().filter(|e| !e.class_name.is_empty()) {
                    result["extensions"] = json!({ self.ext("error-class"): error.class_name });
                }
                vec![self.statement(
                    event,
                    None,
                    (ADL, "attempted"),
                    self.activity("ruby", script, "Ruby script"),
                    Some(result),
                    None,
                )]
            }
            Payload::NotebookSnapshot(notebook) => {
                let mut grades: Vec<_> = notebook.problems.iter().collect();
                grades.sort_by(|a, b| a.0.cmp(b.0));
                grades
                    .into_iter()
                    .filter_map(|(grade_id, problem)| {
                        let status = Status::try_from(problem.status).unwrap_or_default();
                        // an answer waiting for the instructor has no outcome yet; a problem not
                        // answered or not run was not answered at all
                        let result = match status {
                            Status::Passed | Status::Failed => Some(json!({
                                "success": status == Status::Passed,
                                "score": score(problem.points, problem.max_points),
                            })),
                            Status::NeedsManualGrading => None,
                            Status::Unanswered | Status::NotRun | Status::Unspecified => {
                                return None;
                            }
                        };
                        let assignment = if notebook.assignment.is_empty() {
                            &notebook.path
                        } else {
                            &notebook.assignment
                        };
                        let object = self.activity(
                            "notebook",
                            &format!("{assignment}/{grade_id}"),
                            grade_id,
                        );
                        Some(self.statement(
                            event,
                            Some(grade_id),
                            (ADL, "answered"),
                            object,
                            result,
                            None,
                        ))
                    })
                    .collect()
            }
            Payload::LabLog(log) => {
                let mut extensions = Map::new();
                extensions.insert(self.ext("log-type"), json!(log.log_type));
                extensions.insert(self.ext("log-kind"), json!(log.log_kind));
                let object = self.activity("lab", &log.experiment, &log.experiment);
                vec![self.statement(
                    event,
                    None,
                    (ADL, "interacted"),
                    object,
                    None,
                    Some(Value::Object(extensions)),
                )]
            }
            Payload::EnergyReading(_) => Vec::new(),
        }
    }

    fn lms(&self, event: &Event, lms: &learntrail_proto::v1::LmsEvent) -> Vec<Value> {
        let kind = LmsEventType::try_from(lms.event_type).unwrap_or(LmsEventType::Unspecified);
        let course = self.activity("course", &lms.course_slug, &lms.course_slug);
        match (kind, &lms.event_data) {
            (LmsEventType::Registration | LmsEventType::EnrollmentActivated, _) => {
                vec![self.statement(event, None, (ADL, "registered"), course, None, None)]
            }
            (LmsEventType::AssessmentSubmitted, Some(EventData::Assessment(a))) => {
                let mut result = json!({ "score": score(a.score, a.max_score) });
                if let Some(passed) = a.passed {
                    result["success"] = json!(passed);
                }
                let object = self.activity(
                    "assessment",
                    &format!("{}/{}", lms.course_slug, a.assessment_id),
                    &a.assessment_id,
                );
                ["answered", "scored"]
                    .into_iter()
                    .map(|verb| {
                        self.statement(
                            event,
                            Some(verb),
                            (ADL, verb),
                            object.clone(),
                            Some(result.clone()),
                            None,
                        )
                    })
                    .collect()
            }
            (video_kind, Some(EventData::Video(v))) => {
                let (base, verb, times) = match video_kind {
                    LmsEventType::VideoPlay => {
                        (VIDEO_VERBS, "played", vec![("time", v.current_time)])
                    }
                    LmsEventType::VideoPause => {
                        (VIDEO_VERBS, "paused", vec![("time", v.current_time)])
                    }
                    // where a seek landed is its position when that is all the player sent
                    LmsEventType::VideoSeek => (
                        VIDEO_VERBS,
                        "seeked",
                        vec![
                            ("time-from", v.old_time),
                            ("time-to", v.new_time.or(v.current_time)),
                        ],
                    ),
                    LmsEventType::VideoEnded => (ADL, "completed", vec![("time", v.current_time)]),
                    _ => return Vec::new(),
                };
                // a position the player did not send is left out, not sent as 0
                let extensions: Map<String, Value> = times
                    .into_iter()
                    .filter_map(|(name, t)| Some((format!("{VIDEO_EXT}{name}"), json!(t?))))
                    .collect();
                let mut result = Map::new();
                if !extensions.is_empty() {
                    result.insert("extensions".into(), Value::Object(extensions));
                }
                if verb == "completed" {
                    // the Video profile: a completed statement's result says so
                    result.insert("completion".into(), json!(true));
                }
                let video = if v.video_id.is_empty() {
                    &lms.unit_id
                } else {
                    &v.video_id
                };
                let mut object = self.activity("video", video, video);
                object["definition"]["type"] = json!(VIDEO_TYPE);
                let mut statement = self.statement(
                    event,
                    None,
                    (base, verb),
                    object,
                    (!result.is_empty()).then_some(Value::Object(result)),
                    None,
                );
                statement["context"]["contextActivities"] =
                    json!({ "category": [{ "id": VIDEO_CATEGORY }] });
                if v.duration > 0.0 {
                    statement["context"]["extensions"][format!("{VIDEO_EXT}length")] =
                        json!(v.duration);
                }
                vec![statement]
            }
            _ => Vec::new(),
        }
    }

    fn ext(&self, name: &str) -> String {
        format!("{}/extensions/{name}", self.activity_base)
    }

    fn activity(&self, kind: &str, id: &str, name: &str) -> Value {
        // percent-encoded, so ids that differ stay apart (`quiz 1`, `quiz_1`)
        let id = utf8_percent_encode(id, ACTIVITY_ID);
        json!({
            "objectType": "Activity",
            "id": format!("{}/{kind}/{id}", self.activity_base),
            "definition": { "name": { "en-US": if name.is_empty() { kind } else { name } } },
        })
    }

    fn statement(
        &self,
        event: &Event,
        part: Option<&str>,
        (base, verb): (&str, &str),
        object: Value,
        result: Option<Value>,
        extensions: Option<Value>,
    ) -> Value {
        let mut context_extensions = extensions.unwrap_or_else(|| json!({}));
        context_extensions[self.ext("event-id")] = json!(event.id);
        let mut statement = json!({
            "id": statement_id(&event.id, part).to_string(),
            "actor": {
                "objectType": "Agent",
                "account": { "homePage": self.actor_homepage, "name": event.actor },
            },
            "verb": { "id": format!("{base}{verb}"), "display": { "en-US": verb } },
            "object": object,
            "context": { "extensions": context_extensions },
        });
        if let Some(occurred) = &event.occurred_at {
            statement["timestamp"] = json!(time::rfc3339(occurred));
        }
        if let Some(result) = result {
            statement["result"] = result;
        }
        statement
    }
}

/// An xAPI score of `raw` points out of `max`. xAPI requires `min` < `max`, `raw` between them
/// and `scaled` within -1..1, and an LRS refuses the whole statement otherwise: so `min` and
/// `max` (0 and `max`) only when `raw` lies between them, `scaled` only when `max` is positive
/// (an nbgrader answer cell is worth 0 points; extra credit passes `max`).
fn score(raw: f64, max: f64) -> Value {
    let mut score = json!({ "raw": raw });
    if max > 0.0 {
        score["scaled"] = json!((raw / max).clamp(-1.0, 1.0));
        if (0.0..=max).contains(&raw) {
            score["min"] = json!(0.0);
            score["max"] = json!(max);
        }
    }
    score
}

#[cfg(test)]
mod tests {
    use super::*;
    use learntrail_proto::v1::{
        AssessmentData, LmsEvent, NotebookSnapshot, ProblemResult, VideoData,
    };

    fn mapping() -> Mapping {
        Mapping {
            actor_homepage: "https://lms.example".into(),
            activity_base: "https://learntrail.example/xapi".into(),
        }
    }

    fn lms(event_type: LmsEventType, data: EventData) -> Event {
        Event {
            id: "01JD0000000000000000000001".into(),
            occurred_at: time::parse_rfc3339("2026-11-24T16:30:18.123Z"),
            source: "lms".into(),
            kind: "video".into(),
            actor: "learner-1".into(),
            payload: Some(Payload::LmsEvent(LmsEvent {
                event_type: event_type as i32,
                course_slug: "ruby-101".into(),
                event_data: Some(data),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_seek_is_a_video_profile_statement() {
        let event = lms(
            LmsEventType::VideoSeek,
            EventData::Video(VideoData {
                video_id: "intro".into(),
                old_time: Some(3.5),
                new_time: Some(42.0),
                duration: 60.0,
                ..Default::default()
            }),
        );
        let [s] = mapping().statements(&event).try_into().unwrap();
        assert_eq!(s["verb"]["id"], "https://w3id.org/xapi/video/verbs/seeked");
        assert_eq!(
            s["result"]["extensions"]["https://w3id.org/xapi/video/extensions/time-from"],
            3.5
        );
        assert_eq!(
            s["result"]["extensions"]["https://w3id.org/xapi/video/extensions/time-to"],
            42.0
        );
        assert_eq!(s["object"]["definition"]["type"], VIDEO_TYPE);
        assert_eq!(
            s["context"]["contextActivities"]["category"][0]["id"],
            VIDEO_CATEGORY
        );
        assert_eq!(s["actor"]["account"]["name"], "learner-1");
        assert_eq!(s["timestamp"], "2026-11-24T16:30:18.123Z");
        assert_eq!(s["id"], statement_id(&event.id, None).to_string());
    }

    #[test]
    fn positions_the_player_did_not_send_are_left_out() {
        let video = |kind, data: VideoData| {
            let [s] = mapping()
                .statements(&lms(kind, EventData::Video(data)))
                .try_into()
                .unwrap();
            s
        };
        let ext = |name: &str| format!("{VIDEO_EXT}{name}");
        // a seek that says only where it landed: time-to, and no made-up time-from
        let seek = video(
            LmsEventType::VideoSeek,
            VideoData {
                video_id: "intro".into(),
                current_time: Some(42.0),
                ..Default::default()
            },
        );
        assert_eq!(seek["result"]["extensions"][ext("time-to")], 42.0);
        assert!(
            seek["result"]["extensions"].get(ext("time-from")).is_none(),
            "{seek}"
        );
        // the LMS player's own play: no position, so no result at all
        let play = video(
            LmsEventType::VideoPlay,
            VideoData {
                video_id: "intro".into(),
                ..Default::default()
            },
        );
        assert!(play.get("result").is_none(), "{play}");
        // a real position of 0 is sent
        let start = video(
            LmsEventType::VideoPlay,
            VideoData {
                video_id: "intro".into(),
                current_time: Some(0.0),
                ..Default::default()
            },
        );
        assert_eq!(start["result"]["extensions"][ext("time")], 0.0);
        // completed says so in its result (the Video profile's rule)
        let ended = video(
            LmsEventType::VideoEnded,
            VideoData {
                video_id: "intro".into(),
                current_time: Some(60.0),
                ..Default::default()
            },
        );
        assert_eq!(ended["result"]["completion"], true);
        assert_eq!(ended["result"]["extensions"][ext("time")], 60.0);
    }

    #[test]
    fn activity_ids_that_differ_stay_apart() {
        let m = mapping();
        let id = |name: &str| m.activity("assessment", name, name)["id"].clone();
        assert_ne!(id("quiz 1"), id("quiz_1"));
        assert_ne!(id("quiz?1"), id("quiz_1"));
        assert_eq!(
            id("quiz 1/é"),
            "https://learntrail.example/xapi/assessment/quiz%201/%C3%A9"
        );
        assert_eq!(
            id("ps1/q-1.a_b~c"),
            "https://learntrail.example/xapi/assessment/ps1/q-1.a_b~c"
        );
    }

    #[test]
    fn an_assessment_gives_answered_and_scored_with_distinct_stable_ids() {
        let event = lms(
            LmsEventType::AssessmentSubmitted,
            EventData::Assessment(AssessmentData {
                assessment_id: "q1".into(),
                score: 3.0,
                max_score: 4.0,
                passed: Some(true),
                ..Default::default()
            }),
        );
        let statements = mapping().statements(&event);
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0]["verb"]["id"], format!("{ADL}answered"));
        assert_eq!(statements[1]["verb"]["id"], format!("{ADL}scored"));
        assert_eq!(statements[1]["result"]["score"]["scaled"], 0.75);
        assert_ne!(statements[0]["id"], statements[1]["id"]);
        assert_eq!(
            mapping().statements(&event),
            statements,
            "a resend is the same statement"
        );
    }

    #[test]
    fn a_notebook_gives_one_answer_per_grade_id() {
        let mut problems = std::collections::HashMap::new();
        problems.insert(
            "q1".to_string(),
            ProblemResult {
                status: Status::Passed as i32,
                points: 1.0,
                max_points: 1.0,
            },
        );
        problems.insert(
            "q2".to_string(),
            ProblemResult {
                status: Status::Failed as i32,
                points: 0.0,
                max_points: 2.0,
            },
        );
        problems.insert(
            "q3".to_string(),
            ProblemResult {
                status: Status::Passed as i32,
                points: 0.0,
                max_points: 0.0,
            },
        );
        for (grade_id, status) in [
            ("q4", Status::NeedsManualGrading),
            ("q5", Status::Unanswered),
            ("q6", Status::NotRun),
        ] {
            problems.insert(
                grade_id.to_string(),
                ProblemResult {
                    status: status as i32,
                    points: 0.0,
                    max_points: 3.0,
                },
            );
        }
        let event = Event {
            id: "e9".into(),
            actor: "a".into(),
            payload: Some(Payload::NotebookSnapshot(NotebookSnapshot {
                assignment: "ps1".into(),
                problems,
                ..Default::default()
            })),
            ..Default::default()
        };
        let statements = mapping().statements(&event);
        // q5 and q6 were not answered: no statement; q4 waits for the instructor: answered,
        // with no success and no score yet
        assert_eq!(statements.len(), 4);
        assert!(
            statements[3]["object"]["id"]
                .as_str()
                .unwrap()
                .ends_with("/ps1/q4")
        );
        assert_eq!(statements[3]["verb"]["id"], format!("{ADL}answered"));
        assert!(statements[3].get("result").is_none(), "{}", statements[3]);
        assert_eq!(statements[0]["result"]["success"], true);
        assert_eq!(statements[1]["result"]["success"], false);
        assert_eq!(
            statements[1]["id"],
            statement_id("e9", Some("q2")).to_string()
        );
        assert_eq!(
            statements[1]["result"]["score"],
            json!({"raw": 0.0, "min": 0.0, "max": 2.0, "scaled": 0.0})
        );
        // an answer cell worth no points (nbgrader's solution cells): no min == max
        assert_eq!(statements[2]["result"]["score"], json!({"raw": 0.0}));
    }

    #[test]
    fn scores_keep_the_rules_an_lrs_checks() {
        for (raw, max) in [(0.0, 0.0), (1.0, 4.0), (5.0, 4.0), (-1.0, 4.0), (2.0, 0.0)] {
            let s = score(raw, max);
            assert_eq!(s["raw"], raw);
            if let (Some(min), Some(max)) = (s["min"].as_f64(), s["max"].as_f64()) {
                assert!(min < max && (min..=max).contains(&raw), "{s}");
            }
            if let Some(scaled) = s["scaled"].as_f64() {
                assert!((-1.0..=1.0).contains(&scaled), "{s}");
            }
        }
        assert_eq!(score(5.0, 4.0), json!({"raw": 5.0, "scaled": 1.0}));
    }
}
