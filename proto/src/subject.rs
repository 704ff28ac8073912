//! Stream and subject names. Every event travels on `events.<source>.<kind>`; records that failed
//! validation or delivery go to `deadletter.<source>`.

/// The stream that keeps every event.
pub const EVENTS_STREAM: &str = "EVENTS";
/// Subjects of [`EVENTS_STREAM`].
pub const EVENTS_SUBJECTS: &str = "events.>";
/// The stream that keeps what failed validation or delivery, with the reason.
pub const DEADLETTER_STREAM: &str = "DEADLETTER";
/// Subjects of [`DEADLETTER_STREAM`].
pub const DEADLETTER_SUBJECTS: &str = "deadletter.>";

/// Header naming why a record was dead-lettered.
pub const DEADLETTER_REASON_HEADER: &str = "Learntrail-Deadletter-Reason";

/// Producing sources.
pub mod source {
    pub const SHIM: &str = "shim";
    pub const NOTEBOOK: &str = "notebook";
    pub const LAB: &str = "lab";
    pub const LMS: &str = "lms";
    pub const ENERGY: &str = "energy";
    /// Every known source.
    pub const ALL: [&str; 5] = [SHIM, NOTEBOOK, LAB, LMS, ENERGY];
}

/// Kinds within a source.
pub mod kind {
    pub const RUBY_RUN: &str = "ruby_run";
    pub const SNAPSHOT: &str = "snapshot";
    pub const LOG: &str = "log";
    pub const VIDEO: &str = "video";
    pub const REGISTRATION: &str = "registration";
    pub const ENROLLMENT: &str = "enrollment";
    pub const ASSESSMENT: &str = "assessment";
    pub const READING: &str = "reading";
}

/// `events.<source>.<kind>`.
pub fn event_subject(source: &str, kind: &str) -> String {
    format!("events.{source}.{kind}")
}

/// `deadletter.<source>`.
pub fn deadletter_subject(source: &str) -> String {
    format!("deadletter.{source}")
}

/// Splits `events.<source>.<kind>` into its source and kind.
pub fn parse_event_subject(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("events.")?;
    let (source, kind) = rest.split_once('.')?;
    (!source.is_empty() && !kind.is_empty() && !kind.contains('.')).then_some((source, kind))
}

/// True for a subject token made of lowercase ASCII letters, digits and `_`.
/// Whether `subject` is one of those `pattern` names, by NATS's rules: `*` is any one token, a
/// last `>` is one or more tokens (`events.lms.>` matches `events.lms.video`).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (token, Some(s)) if token == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let subject = event_subject(source::LMS, kind::VIDEO);
        assert_eq!(subject, "events.lms.video");
        assert_eq!(parse_event_subject(&subject), Some(("lms", "video")));
        assert_eq!(parse_event_subject("events.lms"), None);
        assert_eq!(parse_event_subject("deadletter.lms"), None);
        assert_eq!(deadletter_subject("shim"), "deadletter.shim");
    }

    #[test]
    fn patterns_match_as_nats_matches() {
        assert!(matches("events.>", "events.lms.video"));
        assert!(matches("events.lms.>", "events.lms.video"));
        assert!(!matches("events.lms.>", "events.lms"));
        assert!(!matches("events.lms.>", "events.shim.ruby_run"));
        assert!(matches("events.*.video", "events.lms.video"));
        assert!(!matches("events.*", "events.lms.video"));
        assert!(matches("events.lms.video", "events.lms.video"));
        assert!(!matches("events.lms.video", "events.lms.video.x"));
    }

    #[test]
    fn tokens() {
        assert!(is_token("ruby_run"));
        assert!(!is_token("Ruby"));
        assert!(!is_token("a.b"));
        assert!(!is_token(""));
    }
}
