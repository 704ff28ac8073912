//! Envelope validation. Every check reports the field it concerns, so a producer's error answer
//! (an HTTP 400 body, a dead-letter record) names each problem at once.

use serde::Serialize;

use crate::{Event, Payload, id, subject};

/// One problem with one field of an input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Dotted path of the field, e.g. `event_data.current_time`.
    pub field: String,
    /// What is wrong, e.g. `must be a number >= 0`.
    pub message: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The source a payload variant belongs to.
pub fn payload_source(payload: &Payload) -> &'static str {
    match payload {
        Payload::RubyRun(_) => subject::source::SHIM,
        Payload::NotebookSnapshot(_) => subject::source::NOTEBOOK,
        Payload::LabLog(_) => subject::source::LAB,
        Payload::LmsEvent(_) => subject::source::LMS,
        Payload::EnergyReading(_) => subject::source::ENERGY,
    }
}

/// Checks the envelope: id, source, kind, occurred_at and a payload that fits the source.
pub fn validate_event(event: &Event) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    if !id::is_valid_id(&event.id) {
        problems.push(Problem::new("id", "must be a ULID or a UUID"));
    }
    if !subject::source::ALL.contains(&event.source.as_str()) {
        let known = subject::source::ALL.join(", ");
        problems.push(Problem::new("source", format!("must be one of {known}")));
    }
    if !subject::is_token(&event.kind) {
        problems.push(Problem::new(
            "kind",
            "must be lowercase letters, digits and _",
        ));
    }
    if event.occurred_at.is_none() {
        problems.push(Problem::new("occurred_at", "is required"));
    }
    match &event.payload {
        None => problems.push(Problem::new("payload", "is required")),
        Some(payload) if payload_source(payload) != event.source => problems.push(Problem::new(
            "payload",
            format!(
                "belongs to source {}, not {}",
                payload_source(payload),
                event.source
            ),
        )),
        Some(_) => {}
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{LmsEvent, RubyRun};

    fn lms_event() -> Event {
        Event {
            id: id::new_id(),
            occurred_at: Some(crate::time::now()),
            source: "lms".into(),
            kind: "video".into(),
            payload: Some(Payload::LmsEvent(LmsEvent::default())),
            ..Default::default()
        }
    }

    #[test]
    fn a_good_event_passes() {
        assert_eq!(validate_event(&lms_event()), Ok(()));
    }

    #[test]
    fn every_problem_is_named() {
        let event = Event {
            id: "nope".into(),
            source: "mail".into(),
            kind: "Big Kind".into(),
            ..Default::default()
        };
        let fields: Vec<_> = validate_event(&event)
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, ["id", "source", "kind", "occurred_at", "payload"]);
    }

    #[test]
    fn payload_must_fit_the_source() {
        let mut event = lms_event();
        event.payload = Some(Payload::RubyRun(RubyRun::default()));
        let problems = validate_event(&event).unwrap_err();
        assert_eq!(problems[0].field, "payload");
        assert!(problems[0].message.contains("shim"));
    }

    #[test]
    fn json_mapping_is_canonical_and_round_trips() {
        let mut event = lms_event();
        event.actor = "learner-1".into();
        event.occurred_at = crate::time::parse_rfc3339("2026-11-24T16:30:18.5Z");
        let json = event.to_json().unwrap();
        // pbjson writes UTC as `+00:00`, which every RFC 3339 parser reads.
        assert!(
            json.contains("\"occurredAt\":\"2026-11-24T16:30:18.500"),
            "{json}"
        );
        assert!(json.contains("\"lmsEvent\""), "{json}");
        assert_eq!(Event::from_json(&json).unwrap(), event);
    }
}
