//! Keen.IO: events as Keen records (the shared mapping, [`learntrail_proto::keen`], plus a
//! top-level `learntrail_id`), sent with the bulk API `POST /3.0/projects/{id}/events` and the
//! write key raw in `Authorization`, as Keen's SDKs send it (../shared/PROTOCOLS.md §2.3).
//!
//! The answer names each event's fate, per collection in the order sent: `{"success": true}`,
//! or `{"success": false, "error": {"name", "description"}}`. The names Keen's SDKs drop for
//! good (`InvalidCollectionNameError`, `InvalidPropertyNameError`, `InvalidPropertyValueError`)
//! are rejections; anything else is retried.

use std::collections::{BTreeMap, HashMap};

use learntrail_proto::{Event, keen};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use crate::sink::{Outcome, failed_status};

/// Error names Keen's SDKs treat as permanent.
pub const PERMANENT_ERRORS: [&str; 3] = [
    "InvalidCollectionNameError",
    "InvalidPropertyNameError",
    "InvalidPropertyValueError",
];
/// Largest single event Keen stores.
pub const MAX_EVENT_BYTES: usize = 900_000;
/// Keen's bulk limit is 10,000,000 bytes; requests stay under this.
pub const MAX_REQUEST_BYTES: usize = 9_000_000;

#[derive(Debug)]
pub struct Keen {
    http: reqwest::Client,
    base: String,
    project_id: String,
    write_key: SecretString,
    renames: HashMap<String, String>,
}

/// One event as Keen gets it: its collection and its JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub collection: String,
    pub json: Vec<u8>,
}

impl Keen {
    pub fn new(
        http: reqwest::Client,
        base: &str,
        project_id: String,
        write_key: SecretString,
        renames: HashMap<String, String>,
    ) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            project_id,
            write_key,
            renames,
        }
    }

    pub fn describe(&self) -> String {
        format!("keen {}/3.0/projects/{}", self.base, self.project_id)
    }

    /// The event's record: the shared mapping, `learntrail_id`, and the collection
    /// `<source>.<kind>` or its rename.
    pub fn record(&self, event: &Event) -> Result<Record, String> {
        let mut value =
            keen::to_keen(event).map_err(|e| format!("not expressible as JSON: {e}"))?;
        if let Value::Object(map) = &mut value {
            map.insert("learntrail_id".into(), Value::String(event.id.clone()));
        }
        let collection = keen::collection(event);
        let collection = self.renames.get(&collection).cloned().unwrap_or(collection);
        let json = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
        if json.len() > MAX_EVENT_BYTES {
            return Err(format!(
                "EventTooLarge: {} bytes, Keen stores at most {MAX_EVENT_BYTES}",
                json.len()
            ));
        }
        Ok(Record { collection, json })
    }

    pub async fn deliver(&self, events: &[Event]) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Delivered; events.len()];
        let mut chunk: Vec<(usize, Record)> = Vec::new();
        let mut chunk_bytes = 0;
        for (i, event) in events.iter().enumerate() {
            match self.record(event) {
                Err(reason) => outcomes[i] = Outcome::Rejected(reason),
                Ok(record) => {
                    if chunk_bytes + record.json.len() > MAX_REQUEST_BYTES {
                        self.send(std::mem::take(&mut chunk), &mut outcomes).await;
                        chunk_bytes = 0;
                    }
                    chunk_bytes += record.json.len() + 1;
                    chunk.push((i, record));
                }
            }
        }
        if !chunk.is_empty() {
            self.send(chunk, &mut outcomes).await;
        }
        outcomes
    }

    /// One bulk request; writes the outcome of each record's event into `outcomes`.
    async fn send(&self, records: Vec<(usize, Record)>, outcomes: &mut [Outcome]) {
        let (body, order) = bulk_body(&records);
        let url = format!("{}/3.0/projects/{}/events", self.base, self.project_id);
        let response = self
            .http
            .post(url)
            .header("Authorization", self.write_key.expose_secret())
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await;
        let results = match response {
            Err(err) => Err(Outcome::failed(format!("keen unreachable: {err}"))),
            Ok(response) => {
                let (status, headers) = (response.status(), response.headers().clone());
                let text = response.text().await.unwrap_or_default();
                if status.is_success() {
                    serde_json::from_str::<HashMap<String, Vec<EventResult>>>(&text)
                        .map_err(|e| Outcome::failed(format!("unreadable bulk answer: {e}")))
                } else {
                    Err(failed_status(status, &headers, &text))
                }
            }
        };
        match results {
            Err(outcome) => {
                for (i, _) in &records {
                    outcomes[*i] = outcome.clone();
                }
            }
            Ok(results) => {
                for (collection, indices) in order {
                    let answers = results.get(&collection).map(Vec::as_slice).unwrap_or(&[]);
                    for (n, i) in indices.into_iter().enumerate() {
                        outcomes[i] = answers.get(n).map_or_else(
                            || Outcome::failed("no result for the event in Keen's answer"),
                            EventResult::outcome,
                        );
                    }
                }
            }
        }
    }
}

/// The bulk body `{"<collection>": [record, ...], ...}` and, per collection, the batch indices
/// of its records in the order sent.
pub fn bulk_body(records: &[(usize, Record)]) -> (Vec<u8>, BTreeMap<String, Vec<usize>>) {
    let mut groups: BTreeMap<String, Vec<&(usize, Record)>> = BTreeMap::new();
    for entry in records {
        groups
            .entry(entry.1.collection.clone())
            .or_default()
            .push(entry);
    }
    let size: usize = records.iter().map(|(_, r)| r.json.len() + 1).sum();
    let mut body = Vec::with_capacity(size + 64 * groups.len() + 2);
    let mut order = BTreeMap::new();
    body.push(b'{');
    for (n, (collection, entries)) in groups.into_iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, &collection).expect("a string serializes");
        body.extend_from_slice(b":[");
        for (k, (_, record)) in entries.iter().enumerate() {
            if k > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&record.json);
        }
        body.push(b']');
        order.insert(collection, entries.iter().map(|(i, _)| *i).collect());
    }
    body.push(b'}');
    (body, order)
}

/// One event's entry in a bulk answer.
#[derive(Debug, Deserialize)]
pub struct EventResult {
    pub success: bool,
    #[serde(default)]
    pub error: Option<KeenError>,
}

/// Either field may be absent or `null` (Keen writes `"description": null` for some errors).
#[derive(Debug, Deserialize)]
pub struct KeenError {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

impl EventResult {
    pub fn outcome(&self) -> Outcome {
        if self.success {
            return Outcome::Delivered;
        }
        let error = self.error.as_ref();
        let name = error
            .and_then(|e| e.name.as_deref())
            .filter(|n| !n.is_empty())
            .unwrap_or("UnknownError");
        let description = error.and_then(|e| e.description.as_deref()).unwrap_or("");
        let reason = format!("{name}: {description}");
        if PERMANENT_ERRORS.contains(&name) {
            Outcome::Rejected(reason)
        } else {
            Outcome::failed(reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use learntrail_proto::{Payload, time, v1::RubyRun};

    fn keen(renames: &[(&str, &str)]) -> Keen {
        Keen::new(
            reqwest::Client::new(),
            "http://keen.test/",
            "p1".into(),
            SecretString::from("wk"),
            renames
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    fn event(id: &str, source: &str, kind: &str) -> Event {
        Event {
            id: id.into(),
            occurred_at: time::parse_rfc3339("2026-11-24T16:30:18.123Z"),
            source: source.into(),
            kind: kind.into(),
            actor: "a1".into(),
            payload: Some(Payload::RubyRun(RubyRun {
                duration_ms: 5,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn records_carry_the_event_id_and_the_shared_mapping() {
        let keen = keen(&[("shim.ruby_run", "ruby_runs")]);
        let record = keen.record(&event("e1", "shim", "ruby_run")).unwrap();
        assert_eq!(record.collection, "ruby_runs");
        let value: Value = serde_json::from_slice(&record.json).unwrap();
        assert_eq!(value["learntrail_id"], "e1");
        assert_eq!(value["keen"]["timestamp"], "2026-11-24T16:30:18.123Z");
        assert_eq!(value["rubyRun"]["durationMs"], 5);
        let other = keen.record(&event("e2", "lab", "log")).unwrap();
        assert_eq!(other.collection, "lab.log");
    }

    #[test]
    fn bulk_body_groups_by_collection_keeping_order() {
        let keen = keen(&[]);
        let records: Vec<(usize, Record)> = [("a", "shim"), ("b", "lab"), ("c", "shim")]
            .iter()
            .enumerate()
            .map(|(i, (id, source))| (i, keen.record(&event(id, source, "k")).unwrap()))
            .collect();
        let (body, order) = bulk_body(&records);
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["shim.k"][0]["learntrail_id"], "a");
        assert_eq!(value["shim.k"][1]["learntrail_id"], "c");
        assert_eq!(value["lab.k"][0]["learntrail_id"], "b");
        assert_eq!(order["shim.k"], [0, 2]);
        assert_eq!(order["lab.k"], [1]);
    }

    #[test]
    fn permanent_errors_are_rejections_others_retries() {
        let answer: Vec<EventResult> = serde_json::from_str(
            r#"[{"success": true},
                {"success": false, "error": {"name": "InvalidPropertyNameError", "description": "a.b"}},
                {"success": false, "error": {"name": "InternalServerError", "description": "oops"}}]"#,
        )
        .unwrap();
        let outcomes: Vec<Outcome> = answer.iter().map(EventResult::outcome).collect();
        assert_eq!(outcomes[0], Outcome::Delivered);
        assert_eq!(
            outcomes[1],
            Outcome::Rejected("InvalidPropertyNameError: a.b".into())
        );
        assert!(matches!(outcomes[2], Outcome::Failed { .. }));
    }

    #[test]
    fn an_answer_with_null_error_fields_is_still_read() {
        let answer: Vec<EventResult> = serde_json::from_str(
            r#"[{"success": true},
                {"success": false, "error": {"name": "InvalidCollectionNameError", "description": null}},
                {"success": false, "error": {"name": null, "description": null}},
                {"success": false, "error": null}]"#,
        )
        .unwrap();
        let outcomes: Vec<Outcome> = answer.iter().map(EventResult::outcome).collect();
        assert_eq!(outcomes[0], Outcome::Delivered);
        assert_eq!(
            outcomes[1],
            Outcome::Rejected("InvalidCollectionNameError: ".into())
        );
        assert!(matches!(outcomes[2], Outcome::Failed { .. }));
        assert!(matches!(outcomes[3], Outcome::Failed { .. }));
    }
}
