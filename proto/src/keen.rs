//! The one event → Keen mapping, shared by keen-forwarder (events sent to Keen.IO) and
//! analytics-query (its Keen-compatible analysis API), so a dashboard gets the same answers from
//! either.
//!
//! An event becomes its protobuf canonical JSON (`actor`, `context.course`,
//! `rubyRun.error.className`, ...) with these changes, following Keen's data rules
//! (../shared/PROTOCOLS.md §2.5):
//! - 64-bit integers, which canonical JSON writes as strings, are numbers;
//! - `keen.timestamp` is `occurredAt` (the source's clock, as `2026-11-24T16:30:18.123Z`), so late and offline events land
//!   in the hour they happened;
//! - property names never contain `.` (replaced by `_`) nor start with `$` (dropped) and are
//!   under 256 characters: map keys such as nbgrader grade ids or lab data keys are names too;
//! - strings are cut below 10,000 characters.
//!
//! The collection of an event is `<source>.<kind>` ([`collection`]).

use serde_json::{Map, Value, json};

use crate::Event;

/// Longest string value Keen stores (it wants fewer than 10,000 characters).
pub const MAX_STRING_CHARS: usize = 9_999;
/// Longest property name Keen accepts (fewer than 256 characters).
pub const MAX_NAME_CHARS: usize = 255;

/// The 64-bit integer fields of the event schema, as canonical JSON paths: canonical JSON
/// writes them as strings, Keen wants numbers (for sums and averages).
const INT64_PATHS: [&str; 3] = [
    "rubyRun.durationMs",
    "rubyRun.stderrBytes",
    "notebookSnapshot.size",
];

/// The Keen collection of an event: `<source>.<kind>`, e.g. `shim.ruby_run`.
pub fn collection(event: &Event) -> String {
    format!("{}.{}", event.source, event.kind)
}

/// The event as a Keen event (properties plus `keen.timestamp`). Fails only where canonical
/// JSON does (a timestamp out of range, a NaN).
pub fn to_keen(event: &Event) -> Result<Value, serde_json::Error> {
    let mut value = serde_json::to_value(event)?;
    with_zeros(&mut value, ".learntrail.v1.Event");
    for path in INT64_PATHS {
        number_at(&mut value, path);
    }
    let mut value = sanitize(value);
    if let Value::Object(map) = &mut value {
        let timestamp = event.occurred_at.as_ref().map(crate::time::rfc3339);
        map.insert("keen".into(), json!({ "timestamp": timestamp }));
    }
    Ok(value)
}

/// What a field left out of canonical JSON holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Zero {
    Int,
    Float,
    Bool,
    /// A message field: its own fields are filled in when it is there.
    Message(&'static str),
    /// A map of messages: each value's fields are filled in.
    Values(&'static str),
}

include!(concat!(env!("OUT_DIR"), "/keen_zeros.rs"));

/// Puts back the numbers and booleans canonical JSON leaves out at 0 and false (proto3 fields
/// without presence), in `value`, a message of type `message`, and in the messages within it:
/// a Ruby run with no stderr has `stderrBytes` 0, a problem worth nothing `points` 0 and an
/// error `syntaxError` false, for Keen's sums, averages, minimums and filters as for anything
/// else. Strings, enums, lists, fields with presence and the numbers whose 0 says "not given"
/// (`NOT_GIVEN_AT_ZERO` in build.rs) stay as they were, and so do the counts of a notebook that
/// could not be parsed (`parseError`): they were never taken.
fn with_zeros(value: &mut Value, message: &str) {
    let (Value::Object(map), Some((_, fields))) =
        (value, ZEROS.iter().find(|(name, _)| *name == message))
    else {
        return;
    };
    if map.contains_key("parseError") {
        return;
    }
    for (name, zero) in fields.iter() {
        match zero {
            Zero::Message(inner) => {
                if let Some(child) = map.get_mut(*name) {
                    with_zeros(child, inner);
                }
            }
            Zero::Values(inner) => {
                if let Some(Value::Object(values)) = map.get_mut(*name) {
                    for child in values.values_mut() {
                        with_zeros(child, inner);
                    }
                }
            }
            Zero::Int => {
                map.entry(*name).or_insert_with(|| Value::from(0));
            }
            Zero::Float => {
                map.entry(*name).or_insert_with(|| Value::from(0.0));
            }
            Zero::Bool => {
                map.entry(*name).or_insert(Value::Bool(false));
            }
        }
    }
}

/// Looks up a dotted property path (`rubyRun.error.className`) in a Keen event.
pub fn property<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(event, |value, name| value.get(name))
        .filter(|value| !value.is_null())
}

fn number_at(value: &mut Value, path: &str) {
    let target = path
        .split('.')
        .try_fold(value, |value, name| value.get_mut(name));
    if let Some(slot) = target
        && let Some(number) = slot.as_str().and_then(|s| s.parse::<i64>().ok())
    {
        *slot = Value::from(number);
    }
}

fn sanitize(value: Value) -> Value {
    match value {
        Value::String(text) if text.chars().count() > MAX_STRING_CHARS => {
            Value::String(text.chars().take(MAX_STRING_CHARS).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sanitize).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter_map(|(name, value)| Some((property_name(&name)?, sanitize(value))))
                .collect::<Map<_, _>>(),
        ),
        other => other,
    }
}

/// A name Keen accepts: no `.`, no leading `$`, under 256 characters; `None` when nothing is left.
fn property_name(name: &str) -> Option<String> {
    let name: String = name
        .trim_start_matches('$')
        .replace('.', "_")
        .chars()
        .take(MAX_NAME_CHARS)
        .collect();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        time,
        v1::{Context, NotebookSnapshot, ProblemResult, RubyError, RubyRun},
    };

    fn ruby_event() -> Event {
        Event {
            id: "01JD0000000000000000000000".into(),
            occurred_at: time::parse_rfc3339("2026-11-24T16:30:18.123Z"),
            received_at: time::parse_rfc3339("2026-11-25T09:00:00Z"),
            source: "shim".into(),
            kind: "ruby_run".into(),
            actor: "a1".into(),
            context: Some(Context {
                course: "ruby-101".into(),
                ..Default::default()
            }),
            payload: Some(crate::Payload::RubyRun(RubyRun {
                duration_ms: 1234,
                exit_code: Some(1),
                stderr: "x".repeat(20_000),
                error: Some(RubyError {
                    class_name: "NoMethodError".into(),
                    line: 3,
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn maps_an_event_to_keen_properties() {
        let keen = to_keen(&ruby_event()).unwrap();
        assert_eq!(collection(&ruby_event()), "shim.ruby_run");
        assert_eq!(keen["keen"]["timestamp"], "2026-11-24T16:30:18.123Z");
        assert_eq!(keen["rubyRun"]["durationMs"], 1234);
        assert_eq!(keen["rubyRun"]["exitCode"], 1);
        assert_eq!(
            property(&keen, "rubyRun.error.className"),
            Some(&json!("NoMethodError"))
        );
        assert_eq!(property(&keen, "context.course"), Some(&json!("ruby-101")));
        assert_eq!(property(&keen, "rubyRun.signal"), None);
        let stderr = keen["rubyRun"]["stderr"].as_str().unwrap();
        assert_eq!(stderr.chars().count(), MAX_STRING_CHARS);
    }

    #[test]
    fn numbers_and_booleans_at_their_default_are_properties_too() {
        let keen = to_keen(&ruby_event()).unwrap();
        // canonical JSON leaves these out at 0 and false; a Keen event has them
        assert_eq!(keen["rubyRun"]["stderrBytes"], 0);
        assert_eq!(keen["rubyRun"]["stderrTruncated"], false);
        assert_eq!(keen["rubyRun"]["error"]["syntaxError"], false);
        assert_eq!(
            property(&keen, "rubyRun.error.syntaxError"),
            Some(&json!(false))
        );
        // presence kept: no signal, no made-up message, strings not given stay out
        assert_eq!(property(&keen, "rubyRun.signal"), None);
        assert_eq!(property(&keen, "rubyRun.cwd"), None);
        assert!(keen.get("labLog").is_none());
        let mut clean = ruby_event();
        if let Some(crate::Payload::RubyRun(run)) = &mut clean.payload {
            run.error = None;
        }
        assert_eq!(property(&to_keen(&clean).unwrap(), "rubyRun.error"), None);
        let snapshot = Event {
            payload: Some(crate::Payload::NotebookSnapshot(NotebookSnapshot {
                code_ok: 3,
                ..Default::default()
            })),
            ..ruby_event()
        };
        let keen = to_keen(&snapshot).unwrap();
        assert_eq!(keen["notebookSnapshot"]["codeOk"], 3);
        assert_eq!(keen["notebookSnapshot"]["errorOutputs"], 0);
        // 0 where it says "not given" stays out: a line Ruby did not name
        assert_eq!(
            property(&to_keen(&ruby_event()).unwrap(), "rubyRun.error.line"),
            Some(&json!(3))
        );
        let mut lineless = ruby_event();
        if let Some(crate::Payload::RubyRun(run)) = &mut lineless.payload {
            run.error.as_mut().unwrap().line = 0;
        }
        assert_eq!(
            property(&to_keen(&lineless).unwrap(), "rubyRun.error.line"),
            None
        );
        // a problem worth nothing has its 0 points, in the map's values
        let mut problems = std::collections::HashMap::new();
        problems.insert(
            "q1".to_string(),
            ProblemResult {
                status: 1,
                points: 0.0,
                max_points: 0.0,
            },
        );
        let graded = Event {
            payload: Some(crate::Payload::NotebookSnapshot(NotebookSnapshot {
                problems,
                ..Default::default()
            })),
            ..ruby_event()
        };
        let keen = to_keen(&graded).unwrap();
        assert_eq!(keen["notebookSnapshot"]["problems"]["q1"]["points"], 0.0);
        assert_eq!(keen["notebookSnapshot"]["problems"]["q1"]["maxPoints"], 0.0);
        // a notebook that could not be parsed: its counts were never taken
        let broken = Event {
            payload: Some(crate::Payload::NotebookSnapshot(NotebookSnapshot {
                parse_error: "not JSON".into(),
                ..Default::default()
            })),
            ..ruby_event()
        };
        assert_eq!(
            property(&to_keen(&broken).unwrap(), "notebookSnapshot.errorOutputs"),
            None
        );
    }

    #[test]
    fn map_keys_become_valid_property_names() {
        let mut event = ruby_event();
        let mut problems = std::collections::HashMap::new();
        problems.insert(
            "q1.a".to_string(),
            ProblemResult {
                status: 1,
                points: 1.0,
                max_points: 1.0,
            },
        );
        problems.insert("$bad".to_string(), ProblemResult::default());
        event.source = "notebook".into();
        event.kind = "snapshot".into();
        event.payload = Some(crate::Payload::NotebookSnapshot(NotebookSnapshot {
            size: 77,
            problems,
            ..Default::default()
        }));
        let keen = to_keen(&event).unwrap();
        assert_eq!(keen["notebookSnapshot"]["size"], 77);
        assert!(keen["notebookSnapshot"]["problems"].get("q1_a").is_some());
        assert!(keen["notebookSnapshot"]["problems"].get("bad").is_some());
    }
}
