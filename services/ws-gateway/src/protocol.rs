//! The lab UIs' message format (shared/PROTOCOLS.md §4.2) as plain functions: a text frame →
//! [`Incoming`] or an [`ErrorCode`], a log message → a `LabLog` [`Event`], and the reply frames.
//! No I/O here; [`crate::socket`] drives it.

use learntrail_proto::{
    Event, Payload, subject, time,
    v1::{Context, LabLog},
    wkt::{self, Struct, value::Kind},
};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// Why a message was refused: the `code` of an error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not JSON, or not a JSON object.
    InvalidJson,
    /// A binary frame (the protocol is JSON text).
    BinaryFrame,
    /// A `type` this gateway does not know.
    UnknownType,
    /// A field missing or of the wrong type.
    InvalidField,
    /// Over `WS_MAX_FRAME_BYTES`.
    TooLarge,
    /// `user` is not the token's `sub` (and the token is a student's).
    Forbidden,
    /// The bus did not store it (NATS down or slow): resend with the same `id`.
    Unavailable,
    /// analytics-query could not answer.
    AnalyticsUnavailable,
    /// analytics-query refused or did not find what was asked.
    AnalyticsRefused,
    /// An auth message on an authenticated socket.
    AlreadyAuthenticated,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::BinaryFrame => "binary_frame",
            Self::UnknownType => "unknown_type",
            Self::InvalidField => "invalid_field",
            Self::TooLarge => "too_large",
            Self::Forbidden => "forbidden",
            Self::Unavailable => "unavailable",
            Self::AnalyticsUnavailable => "analytics_unavailable",
            Self::AnalyticsRefused => "analytics_refused",
            Self::AlreadyAuthenticated => "already_authenticated",
        }
    }
}

/// A refused message: its code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn field(name: &str, what: &str) -> Self {
        Self::new(ErrorCode::InvalidField, format!("{name}: {what}"))
    }
}

/// The message types that become `LabLog` events.
pub const LOG_TYPES: [&str; 3] = ["log", "analytics", "feedback"];

/// One parsed client message.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// `{"type":"auth","token":...}`.
    Auth { token: String },
    /// `log`, `analytics` or `feedback`.
    Log(LogMessage),
    /// `{"type":"request","content":...}`.
    Request(RequestMessage),
}

/// A message to store, as the UI sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogMessage {
    pub user: String,
    /// The browser's clock, ms since the epoch.
    pub t: i64,
    pub log_type: String,
    pub experiment: String,
    pub hardware: String,
    pub course: String,
    /// `payload.log` (empty when a feedback payload has none).
    pub log_kind: String,
    /// The payload without `log`.
    pub data: Map<String, Value>,
    /// The client's own message id, echoed in the ack and the basis of the event id.
    pub client_id: Option<ClientId>,
}

/// An analytics request of a dashboard.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestMessage {
    pub user: String,
    /// `summary` or `comparison`.
    pub content: String,
    pub course: String,
    /// For `comparison`: the metric (default `lab_actions`).
    pub metric: String,
    pub client_id: Option<ClientId>,
}

impl Incoming {
    /// The `user` a message acts for, to check against the token.
    pub fn user(&self) -> Option<&str> {
        match self {
            Self::Auth { .. } => None,
            Self::Log(log) => Some(&log.user),
            Self::Request(request) => Some(&request.user),
        }
    }

    /// The course a message writes into (a log's `course`); `None` for one that writes nothing.
    pub fn course(&self) -> Option<&str> {
        match self {
            Self::Log(log) => Some(&log.course),
            Self::Auth { .. } | Self::Request(_) => None,
        }
    }
}

/// The client `id` of a message, read even from one that is otherwise refused, so its error
/// frame can name it.
pub fn client_id_of(value: &Value) -> Option<ClientId> {
    match value.get("id")? {
        Value::String(id) => Some(ClientId::Text(id.clone())),
        Value::Number(n) => Some(ClientId::Number(n.clone())),
        _ => None,
    }
}

/// A client's own message `id`: a string or a number, echoed as it came (`7` as `7`, `"7"` as
/// `"7"`), and two different ids, so the two are two messages.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientId {
    Text(String),
    Number(serde_json::Number),
}

impl ClientId {
    /// Its text (a number's JSON text), as the event keeps it (`LabLog.client_id`).
    pub fn text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Number(n) => n.to_string(),
        }
    }
}

impl Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Text(text) => serializer.serialize_str(text),
            Self::Number(n) => n.serialize(serializer),
        }
    }
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Incoming, Refusal> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Refusal::new(ErrorCode::InvalidJson, format!("not JSON: {e}")))?;
    parse_value(value)
}

/// Parses one message already read as JSON (taken, so a log's payload is moved, not copied).
pub fn parse_value(value: Value) -> Result<Incoming, Refusal> {
    let client_id = client_id_of(&value);
    let Value::Object(object) = value else {
        return Err(Refusal::new(
            ErrorCode::InvalidJson,
            "a message is a JSON object",
        ));
    };
    if client_id.is_none() && object.get("id").is_some_and(|id| !id.is_null()) {
        return Err(Refusal::field("id", "must be a string or a number"));
    }
    let kind = required_str(&object, "type")?;
    if let Some(log_type) = LOG_TYPES.iter().find(|log_type| **log_type == kind) {
        return parse_log(object, log_type, client_id).map(Incoming::Log);
    }
    match kind {
        "auth" => Ok(Incoming::Auth {
            token: required_str(&object, "token")?.to_string(),
        }),
        "request" => Ok(Incoming::Request(RequestMessage {
            user: user(&object)?,
            content: required_str(&object, "content")
                .or_else(|_| payload_str(&object, "content"))?
                .to_string(),
            course: optional_str(&object, "course")?,
            metric: {
                let metric = optional_str(&object, "metric")?;
                if metric.is_empty() {
                    "lab_actions".into()
                } else {
                    metric
                }
            },
            client_id,
        })),
        other => Err(Refusal::new(
            ErrorCode::UnknownType,
            format!("unknown type {other:?}: one of auth, log, analytics, feedback, request"),
        )),
    }
}

fn parse_log(
    mut object: Map<String, Value>,
    log_type: &str,
    client_id: Option<ClientId>,
) -> Result<LogMessage, Refusal> {
    let t = match object.get("t") {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .filter(|ms| time::from_millis(*ms).is_some() && *ms >= 0)
            .ok_or_else(|| Refusal::field("t", "must be ms since the epoch"))?,
        Some(_) => return Err(Refusal::field("t", "must be a number (ms since the epoch)")),
        None => return Err(Refusal::field("t", "is required (Date.now())")),
    };
    let Some(Value::Object(mut data)) = object.remove("payload") else {
        return Err(Refusal::field("payload", "must be an object"));
    };
    let depth = nesting(&data);
    if depth > MAX_PAYLOAD_DEPTH {
        return Err(Refusal::field(
            "payload",
            &format!(
                "nests {depth} levels of objects and lists; at most {MAX_PAYLOAD_DEPTH} are stored"
            ),
        ));
    }
    let log_kind = match data.remove("log") {
        Some(Value::String(kind)) => kind,
        None if log_type == "feedback" => String::new(),
        Some(_) => return Err(Refusal::field("payload.log", "must be a string")),
        None => return Err(Refusal::field("payload.log", "is required")),
    };
    Ok(LogMessage {
        user: user(&object)?,
        t,
        log_type: log_type.to_string(),
        experiment: required_str(&object, "exp")?.to_string(),
        hardware: optional_str(&object, "hardware")?,
        course: optional_str(&object, "course")?,
        log_kind,
        data,
        client_id,
    })
}

/// Deepest nesting of objects and lists kept in a log's `payload` (itself one level): its data
/// becomes a protobuf `Struct`, three nested messages per level, and every reader of the event
/// decodes at most 100 nested messages. Deeper would be acked here and unreadable downstream.
pub const MAX_PAYLOAD_DEPTH: usize = 16;

/// Levels of objects and lists in `object`, itself one.
fn nesting(object: &Map<String, Value>) -> usize {
    fn depth(value: &Value) -> usize {
        match value {
            Value::Object(map) => nesting(map),
            Value::Array(list) => 1 + list.iter().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    1 + object.values().map(depth).max().unwrap_or(0)
}

fn user(object: &Map<String, Value>) -> Result<String, Refusal> {
    let user = required_str(object, "user")?;
    if user.trim().is_empty() {
        return Err(Refusal::field("user", "must not be empty"));
    }
    Ok(user.to_string())
}

fn required_str<'a>(object: &'a Map<String, Value>, name: &str) -> Result<&'a str, Refusal> {
    match object.get(name) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(Refusal::field(name, "must be a string")),
        None => Err(Refusal::field(name, "is required")),
    }
}

fn payload_str<'a>(object: &'a Map<String, Value>, name: &str) -> Result<&'a str, Refusal> {
    match object.get("payload").and_then(|p| p.get(name)) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(Refusal::field(name, "must be a string")),
        None => Err(Refusal::field(name, "is required")),
    }
}

fn optional_str(object: &Map<String, Value>, name: &str) -> Result<String, Refusal> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(Refusal::field(name, "must be a string")),
    }
}

/// The event id of a message: derived from the user and the client's `id` when it sent one (so
/// a resent message is the same event, stored once), a fresh ULID otherwise. Derived ids are
/// UUIDs (version 8) of a SHA-256 of both, so two users' equal ids never collide.
pub fn event_id(user: &str, client_id: Option<&ClientId>) -> String {
    let Some(client_id) = client_id else {
        return learntrail_proto::id::new_id();
    };
    let mut hash = Sha256::new();
    hash.update(b"learntrail ws-gateway\0");
    hash.update(user.as_bytes());
    hash.update([0]);
    match client_id {
        ClientId::Text(text) => hash.update(text.as_bytes()),
        // apart from the string of the same digits
        ClientId::Number(n) => {
            hash.update([0, b'#']);
            hash.update(n.to_string().as_bytes());
        }
    }
    let bytes: [u8; 16] = hash.finalize()[..16].try_into().expect("16 of 32 bytes");
    // sets the version (8) and the RFC 4122 variant bits
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The `LabLog` event of a message received at `received_ms` (server clock). `occurred_at` and
/// `client_time` are the browser's `t`; `received_at` is the server's.
pub fn to_event(message: LogMessage, received_ms: i64) -> Event {
    let client_time = time::from_millis(message.t);
    Event {
        id: event_id(&message.user, message.client_id.as_ref()),
        occurred_at: client_time,
        received_at: time::from_millis(received_ms),
        source: subject::source::LAB.into(),
        kind: subject::kind::LOG.into(),
        actor: message.user,
        context: (!message.course.is_empty()).then(|| Context {
            course: message.course,
            ..Default::default()
        }),
        payload: Some(Payload::LabLog(LabLog {
            experiment: message.experiment,
            hardware: message.hardware,
            log_type: message.log_type,
            log_kind: message.log_kind,
            data: (!message.data.is_empty()).then(|| to_struct(message.data)),
            client_time,
            client_id: message
                .client_id
                .as_ref()
                .map(ClientId::text)
                .unwrap_or_default(),
        })),
    }
}

/// A JSON object as a protobuf `Struct`, whose numbers are doubles: every number is taken as
/// one, as JavaScript sent it (pbjson's own conversion refuses an integer of 2^53 or more, and
/// the whole payload would have been dropped).
fn to_struct(map: Map<String, Value>) -> Struct {
    Struct {
        fields: map
            .into_iter()
            .map(|(name, value)| (name, to_value(value)))
            .collect(),
    }
}

fn to_value(value: Value) -> wkt::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        // always Some without serde_json's arbitrary_precision
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(wkt::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    wkt::Value { kind: Some(kind) }
}

/// `{"ack": id, "seq": n}`, with the client's `id` echoed and `duplicate` when the stream
/// already held it.
pub fn ack_frame(
    event_id: &str,
    seq: u64,
    client_id: Option<&ClientId>,
    duplicate: bool,
) -> String {
    /// The frame's fields in the order the other frames have them (sorted).
    #[derive(Serialize)]
    struct Ack<'a> {
        ack: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a ClientId>,
        seq: u64,
    }
    let frame = Ack {
        ack: event_id,
        duplicate,
        id: client_id,
        seq,
    };
    serde_json::to_string(&frame).expect("strings and numbers serialise")
}

/// `{"error": {"code", "message"}, "seq": n}`, with the client's `id` echoed.
pub fn error_frame(refusal: &Refusal, seq: u64, client_id: Option<&ClientId>) -> String {
    let mut frame = json!({
        "error": {"code": refusal.code.as_str(), "message": refusal.message},
        "seq": seq,
    });
    if let Some(id) = client_id {
        frame["id"] = json!(id);
    }
    frame.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of PROTOCOLS.md §4.2, exactly as the spinner UI sends it.
    const CLICK: &str = r#"{"user": "8f2d4e23-fd99-44f0-bdbc-82add7c0973c",
 "t": 1677228000123,
 "exp": "spinner",
 "hardware": "spin30",
 "course": "engdes1",
 "type": "log",
 "payload": {"log": "click", "data": {"target": "run-voltage-step", "screen_pos": {"x": 411, "y": 212}, "window": {"width": 1440, "height": 789}}}}"#;

    #[test]
    fn the_spinner_click_becomes_a_lab_log() {
        let Incoming::Log(log) = parse(CLICK).unwrap() else {
            panic!("a log")
        };
        assert_eq!(log.user, "8f2d4e23-fd99-44f0-bdbc-82add7c0973c");
        let event = to_event(log, 1_677_228_000_500);
        assert_eq!(event.subject(), "events.lab.log");
        assert_eq!(event.actor, "8f2d4e23-fd99-44f0-bdbc-82add7c0973c");
        assert_eq!(event.context.as_ref().unwrap().course, "engdes1");
        assert_eq!(
            time::rfc3339(event.occurred_at.as_ref().unwrap()),
            "2023-02-24T08:40:00.123Z"
        );
        assert_eq!(
            time::rfc3339(event.received_at.as_ref().unwrap()),
            "2023-02-24T08:40:00.500Z"
        );
        let Some(Payload::LabLog(lab)) = &event.payload else {
            panic!("LabLog")
        };
        assert_eq!(
            (lab.experiment.as_str(), lab.hardware.as_str()),
            ("spinner", "spin30")
        );
        assert_eq!(
            (lab.log_type.as_str(), lab.log_kind.as_str()),
            ("log", "click")
        );
        let data = serde_json::to_value(lab.data.as_ref().unwrap()).unwrap();
        assert_eq!(data["data"]["screen_pos"]["x"], 411.0);
        assert!(learntrail_proto::validate::validate_event(&event).is_ok());
    }

    #[test]
    fn every_payload_shape_of_the_uis_is_accepted() {
        for payload in [
            json!({"log": "start", "data": 1677228000123i64}),
            json!({"log": "end", "type": "close", "data": 1677228000123i64}),
            json!({"log": "component", "name": "graph", "open": true}),
            json!({"log": "achievements", "data": ["a", "b"]}),
            json!({"log": "voltage", "data": {"set": 1.5, "kp": 1, "ki": 0, "kd": 0}}),
        ] {
            let message = json!({"user": "u", "t": 1, "exp": "spinner", "type": "analytics", "payload": payload});
            assert!(
                matches!(parse(&message.to_string()), Ok(Incoming::Log(_))),
                "{message}"
            );
        }
        // the dashboard's log has no hardware
        let dashboard = json!({"user": "u", "t": 1, "exp": "spinner", "course": "engdes1", "type": "log",
            "payload": {"log": "analytics-interaction", "type": "request"}});
        assert!(matches!(
            parse(&dashboard.to_string()),
            Ok(Incoming::Log(_))
        ));
    }

    #[test]
    fn bad_messages_name_the_problem() {
        let code = |text: &str| parse(text).unwrap_err().code;
        assert_eq!(code("not json"), ErrorCode::InvalidJson);
        assert_eq!(code("[1]"), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"type": "launch"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"user": "u"}"#), ErrorCode::InvalidField);
        let no_t = r#"{"user": "u", "exp": "e", "type": "log", "payload": {"log": "x"}}"#;
        assert_eq!(
            parse(no_t).unwrap_err().message,
            "t: is required (Date.now())"
        );
        let bad_t =
            r#"{"user": "u", "t": "soon", "exp": "e", "type": "log", "payload": {"log": "x"}}"#;
        assert_eq!(code(bad_t), ErrorCode::InvalidField);
        let user_number =
            r#"{"user": 7, "t": 1, "exp": "e", "type": "log", "payload": {"log": "x"}}"#;
        assert_eq!(
            parse(user_number).unwrap_err().message,
            "user: must be a string"
        );
    }

    #[test]
    fn payloads_nest_no_deeper_than_every_reader_decodes() {
        // `levels` objects and lists in all, the payload the first
        let nested = |levels: usize| {
            let mut inner = json!(1);
            for level in 1..levels {
                inner = if level % 2 == 0 {
                    json!([inner])
                } else {
                    json!({ "k": inner })
                };
            }
            json!({"user": "u", "t": 1, "exp": "e", "type": "log",
                   "payload": {"log": "deep", "data": inner}})
            .to_string()
        };
        let Incoming::Log(log) = parse(&nested(MAX_PAYLOAD_DEPTH)).unwrap() else {
            panic!("a log")
        };
        // the deepest accepted decodes again, as every reader of the stream does
        let bytes = learntrail_proto::Message::encode_to_vec(&to_event(log, 1));
        let back = <Event as learntrail_proto::Message>::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.kind, "log");
        let refusal = parse(&nested(MAX_PAYLOAD_DEPTH + 1)).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::InvalidField);
        assert!(
            refusal.message.starts_with("payload: nests 17 levels"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn integers_past_two_to_the_53_are_kept_as_doubles() {
        let frame = json!({"user": "u", "t": 1, "exp": "spinner", "type": "analytics",
            "payload": {"log": "voltage", "data": {"set": 10_000_000_000_000_000u64,
                "ns": -9_007_199_254_740_993i64, "list": [u64::MAX, 1.5, null, true, "x"]}}});
        let Incoming::Log(log) = parse(&frame.to_string()).unwrap() else {
            panic!("a log")
        };
        let Some(Payload::LabLog(lab)) = to_event(log, 1).payload else {
            panic!("LabLog")
        };
        let data = serde_json::to_value(lab.data.as_ref().unwrap()).unwrap();
        assert_eq!(data["data"]["set"], 1e16);
        assert_eq!(data["data"]["ns"], -9_007_199_254_740_993i64 as f64);
        assert_eq!(
            data["data"]["list"],
            json!([u64::MAX as f64, 1.5, null, true, "x"])
        );
    }

    #[test]
    fn a_resent_id_is_the_same_event_and_users_do_not_collide() {
        let text = |id: &str| ClientId::Text(id.into());
        let a = event_id("u1", Some(&text("m-1")));
        assert_eq!(a, event_id("u1", Some(&text("m-1"))));
        assert_ne!(a, event_id("u2", Some(&text("m-1"))));
        // the number 7 and the string "7" are two ids
        let seven = ClientId::Number(7.into());
        assert_ne!(
            event_id("u1", Some(&seven)),
            event_id("u1", Some(&text("7")))
        );
        assert_eq!(event_id("u1", Some(&seven)), event_id("u1", Some(&seven)));
        assert!(learntrail_proto::id::is_valid_id(&a), "{a}");
        assert_eq!(&a[14..15], "8");
        // the same id as ever for the same user and client id (stored ids stay stable)
        assert_eq!(a, "fba3ece0-cbcf-8489-8411-7989ee9ae836");
        assert_ne!(event_id("u1", None), event_id("u1", None));
    }

    #[test]
    fn frames() {
        assert_eq!(
            ack_frame("e1", 3, Some(&ClientId::Text("m-1".into())), false),
            r#"{"ack":"e1","id":"m-1","seq":3}"#
        );
        // a number comes back a number
        assert_eq!(
            ack_frame("e3", 5, Some(&ClientId::Number(7.into())), false),
            r#"{"ack":"e3","id":7,"seq":5}"#
        );
        let numbered = parse(r#"{"id": 7, "type": "nope"}"#).unwrap_err();
        let frame: Value = serde_json::from_str(&error_frame(
            &numbered,
            6,
            client_id_of(&json!({"id": 7})).as_ref(),
        ))
        .unwrap();
        assert_eq!(frame["id"], 7);
        // an id of another kind is refused, naming it
        let refused = parse(r#"{"id": {"n": 7}, "type": "log"}"#).unwrap_err();
        assert_eq!(refused.code, ErrorCode::InvalidField);
        assert!(refused.message.contains("id"), "{}", refused.message);
        // null is no id (JavaScript clients send it)
        assert_eq!(client_id_of(&json!({"id": null})), None);
        assert_ne!(
            parse(r#"{"id": null, "type": "nope"}"#).unwrap_err().code,
            ErrorCode::InvalidField
        );
        assert_eq!(
            ack_frame("e2", 4, None, true),
            r#"{"ack":"e2","duplicate":true,"seq":4}"#
        );
        let refusal = Refusal::new(ErrorCode::UnknownType, "no");
        let frame: Value = serde_json::from_str(&error_frame(&refusal, 2, None)).unwrap();
        assert_eq!(
            frame,
            json!({"error": {"code": "unknown_type", "message": "no"}, "seq": 2})
        );
    }
}
