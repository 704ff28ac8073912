//! Conversions between `google.protobuf.Timestamp` and chrono / std times.

use chrono::{DateTime, SecondsFormat, Utc};
use pbjson_types::Timestamp;

/// The timestamp of a UTC time.
pub fn timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

/// Now, as a timestamp.
pub fn now() -> Timestamp {
    timestamp(Utc::now())
}

/// The UTC time of a timestamp, `None` when out of range.
pub fn to_datetime(ts: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

/// Milliseconds since the Unix epoch.
pub fn from_millis(ms: i64) -> Option<Timestamp> {
    DateTime::from_timestamp_millis(ms).map(timestamp)
}

/// RFC 3339 with millisecond precision and `Z`, e.g. `2026-11-24T16:30:18.123Z`.
pub fn rfc3339(ts: &Timestamp) -> String {
    to_datetime(ts)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Parses an RFC 3339 time (any offset) into a timestamp.
pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| timestamp(t.with_timezone(&Utc)))
}

/// Parses an RFC 3339 time, or a time with no offset, taken as UTC: `2026-11-24T16:30:18.123456`
/// (the LMS server's own format; a space may stand for the `T`).
pub fn parse_utc(text: &str) -> Option<Timestamp> {
    parse_rfc3339(text).or_else(|| {
        ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
            .iter()
            .find_map(|format| chrono::NaiveDateTime::parse_from_str(text.trim(), format).ok())
            .map(|naive| timestamp(naive.and_utc()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let ts = parse_rfc3339("2026-11-24T17:30:18.123+01:00").unwrap();
        assert_eq!(rfc3339(&ts), "2026-11-24T16:30:18.123Z");
        assert_eq!(
            from_millis(1_677_228_000_123).map(|t| rfc3339(&t)).unwrap(),
            "2023-02-24T08:40:00.123Z"
        );
        assert!(parse_rfc3339("yesterday").is_none());
        let naive = parse_utc("2026-11-24T16:30:18.123456").unwrap();
        assert_eq!((naive.seconds % 60, naive.nanos), (18, 123_456_000));
        assert_eq!(rfc3339(&naive), "2026-11-24T16:30:18.123Z");
        assert_eq!(
            parse_utc("2026-11-24 16:30:18"),
            parse_rfc3339("2026-11-24T16:30:18Z")
        );
        assert_eq!(
            parse_utc("2026-11-24T17:30:18+01:00"),
            parse_rfc3339("2026-11-24T16:30:18Z")
        );
        assert!(parse_utc("2026-11-24").is_none());
    }
}
