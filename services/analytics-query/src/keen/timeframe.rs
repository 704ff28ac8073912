//! Keen's timeframes, intervals and time zones.
//!
//! - Relative: `this_N_<units>` is the current unit and the N-1 before it, up to the end of the
//!   current unit; `previous_N_<units>` the N whole units before the current one; units
//!   `minutes|hours|days|weeks|months|years` (singular too, `this_hour`), plus `today` and
//!   `yesterday`. Weeks start on Monday.
//! - Absolute: `{"start": ISO-8601, "end": ISO-8601}`, half-open, honoured to the minute.
//! - `timezone`: seconds east of UTC (Keen's SDKs send a number) or `±HH:MM`, or `UTC`; units and
//!   intervals are then aligned to that offset's midnight. Named zones are refused (400).

use chrono::{
    DateTime, Datelike, Duration, FixedOffset, Months, NaiveDate, TimeZone, Timelike, Utc,
};
use serde_json::Value;

use super::KeenError;

/// A unit of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    fn parse(text: &str) -> Option<Self> {
        Some(match text.trim_end_matches('s') {
            "minute" => Self::Minute,
            "hour" => Self::Hour,
            "day" => Self::Day,
            "week" => Self::Week,
            "month" => Self::Month,
            "year" => Self::Year,
            _ => return None,
        })
    }

    /// An `interval` parameter.
    pub fn interval(text: &str) -> Option<Self> {
        Some(match text {
            "minutely" => Self::Minute,
            "hourly" => Self::Hour,
            "daily" => Self::Day,
            "weekly" => Self::Week,
            "monthly" => Self::Month,
            "yearly" => Self::Year,
            _ => return None,
        })
    }
}

/// A half-open span `[start, end)` with the offset its units are aligned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: DateTime<FixedOffset>,
    pub end: DateTime<FixedOffset>,
}

/// Parses Keen's `timezone`.
pub fn offset(timezone: Option<&Value>) -> Result<FixedOffset, KeenError> {
    let bad = || {
        KeenError::bad_request(
            "timezone must be seconds east of UTC (e.g. -28800) or an offset such as +05:30; named zones are not supported",
        )
    };
    let seconds = match timezone {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n.as_i64().ok_or_else(bad)?,
        Some(Value::String(s)) if s.is_empty() || s == "UTC" || s == "Etc/UTC" || s == "Z" => 0,
        Some(Value::String(s)) => match s.parse::<i64>() {
            Ok(n) => n,
            Err(_) => {
                let (sign, rest) = match s.as_bytes().first() {
                    Some(b'+') => (1, &s[1..]),
                    Some(b'-') => (-1, &s[1..]),
                    _ => return Err(bad()),
                };
                let (h, m) = rest.split_once(':').ok_or_else(bad)?;
                let (h, m): (u8, u8) =
                    (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
                if h > 23 || m > 59 {
                    return Err(bad());
                }
                sign * (i64::from(h) * 3600 + i64::from(m) * 60)
            }
        },
        Some(_) => return Err(bad()),
    };
    FixedOffset::east_opt(i32::try_from(seconds).map_err(|_| bad())?).ok_or_else(bad)
}

/// Parses Keen's `timeframe` at `now`.
pub fn span(timeframe: &Value, zone: FixedOffset, now: DateTime<Utc>) -> Result<Span, KeenError> {
    let span = match timeframe {
        Value::String(text) => relative(text, now.with_timezone(&zone))?,
        Value::Object(map) => {
            let at = |name: &str| -> Result<DateTime<FixedOffset>, KeenError> {
                let text = map.get(name).and_then(Value::as_str).ok_or_else(|| {
                    KeenError::bad_request(format!("absolute timeframe needs \"{name}\""))
                })?;
                let time = DateTime::parse_from_rfc3339(text).map_err(|_| {
                    KeenError::bad_request(format!("timeframe {name} {text:?} is not ISO-8601"))
                })?;
                Ok(floor(time.with_timezone(&zone), Unit::Minute))
            };
            Span {
                start: at("start")?,
                end: at("end")?,
            }
        }
        _ => return Err(KeenError::bad_request("timeframe is required")),
    };
    if span.end <= span.start {
        return Err(KeenError::bad_request("timeframe ends before it starts"));
    }
    Ok(span)
}

fn relative(text: &str, now: DateTime<FixedOffset>) -> Result<Span, KeenError> {
    let bad = || {
        KeenError::bad_request(format!(
            "timeframe {text:?} is not one Keen knows (this_7_days, previous_3_hours, today, ...)"
        ))
    };
    let (kind, n, unit) = match text {
        "today" => ("this", 1, Unit::Day),
        "yesterday" => ("previous", 1, Unit::Day),
        _ => {
            let parts: Vec<&str> = text.split('_').collect();
            match parts.as_slice() {
                [kind, unit] => (*kind, 1, Unit::parse(unit).ok_or_else(bad)?),
                [kind, n, unit] => (
                    *kind,
                    n.parse::<u32>().map_err(|_| bad())?,
                    Unit::parse(unit).ok_or_else(bad)?,
                ),
                _ => return Err(bad()),
            }
        }
    };
    if n == 0 || n > 100_000 {
        return Err(bad());
    }
    let current = floor(now, unit);
    match kind {
        "this" => Ok(Span {
            start: add(current, unit, -(i64::from(n) - 1)),
            end: add(current, unit, 1),
        }),
        "previous" => Ok(Span {
            start: add(current, unit, -i64::from(n)),
            end: current,
        }),
        _ => Err(bad()),
    }
}

/// The start of the unit holding `time`, in its offset.
pub fn floor(time: DateTime<FixedOffset>, unit: Unit) -> DateTime<FixedOffset> {
    let zone = *time.offset();
    let date = time.date_naive();
    let day = |d: NaiveDate| {
        zone.from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"))
            .single()
            .expect("fixed offsets are unambiguous")
    };
    match unit {
        Unit::Minute => time
            .with_nanosecond(0)
            .and_then(|t| t.with_second(0))
            .expect("zero is a valid second"),
        Unit::Hour => floor(time, Unit::Minute)
            .with_minute(0)
            .expect("zero is a valid minute"),
        Unit::Day => day(date),
        Unit::Week => day(date - Duration::days(i64::from(date.weekday().num_days_from_monday()))),
        Unit::Month => day(date.with_day(1).expect("day 1")),
        Unit::Year => day(NaiveDate::from_ymd_opt(date.year(), 1, 1).expect("jan 1")),
    }
}

/// `time` plus `n` units (negative: minus).
pub fn add(time: DateTime<FixedOffset>, unit: Unit, n: i64) -> DateTime<FixedOffset> {
    let months = |m: i64| {
        let shifted = if m >= 0 {
            time.checked_add_months(Months::new(m as u32))
        } else {
            time.checked_sub_months(Months::new((-m) as u32))
        };
        shifted.unwrap_or(time)
    };
    match unit {
        Unit::Minute => time + Duration::minutes(n),
        Unit::Hour => time + Duration::hours(n),
        Unit::Day => time + Duration::days(n),
        Unit::Week => time + Duration::weeks(n),
        Unit::Month => months(n),
        Unit::Year => months(12 * n),
    }
}

/// The interval edges of `span`: its start, every unit boundary inside it, its end.
pub fn edges(span: Span, interval: Option<Unit>) -> Vec<DateTime<FixedOffset>> {
    edges_of(span, interval).collect()
}

/// How many intervals `span` splits into, counted no further than `cap + 1` (a query is
/// refused before its edges are built, whatever it asks).
pub fn interval_count(span: Span, interval: Option<Unit>, cap: usize) -> usize {
    edges_of(span, interval).take(cap.saturating_add(2)).count() - 1
}

fn edges_of(span: Span, interval: Option<Unit>) -> impl Iterator<Item = DateTime<FixedOffset>> {
    let inner = interval.map(|unit| {
        std::iter::successors(Some(add(floor(span.start, unit), unit, 1)), move |&t| {
            Some(add(t, unit, 1)).filter(|next| *next > t)
        })
        .take_while(move |t| *t < span.end)
    });
    std::iter::once(span.start)
        .chain(inner.into_iter().flatten())
        .chain(std::iter::once(span.end))
}

/// Keen's time format: `2014-12-01T00:00:00.000Z` (or the offset when not UTC).
pub fn keen_time(time: DateTime<FixedOffset>) -> String {
    if time.offset().local_minus_utc() == 0 {
        time.with_timezone(&Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    } else {
        time.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T10:20:30.5Z")
            .unwrap()
            .to_utc()
    }

    #[test]
    fn relative_timeframes() {
        let utc = offset(None).unwrap();
        let span = |t: &str| {
            let s = super::span(&json!(t), utc, now()).unwrap();
            (keen_time(s.start), keen_time(s.end))
        };
        assert_eq!(
            span("this_3_hours"),
            (
                "2026-11-25T08:00:00.000Z".into(),
                "2026-11-25T11:00:00.000Z".into()
            )
        );
        assert_eq!(
            span("previous_2_days"),
            (
                "2026-11-23T00:00:00.000Z".into(),
                "2026-11-25T00:00:00.000Z".into()
            )
        );
        assert_eq!(
            span("this_week"),
            (
                "2026-11-23T00:00:00.000Z".into(),
                "2026-11-30T00:00:00.000Z".into()
            )
        );
        assert_eq!(
            span("previous_1_months"),
            (
                "2026-10-01T00:00:00.000Z".into(),
                "2026-11-01T00:00:00.000Z".into()
            )
        );
        assert!(super::span(&json!("last_3_hours"), utc, now()).is_err());
    }

    #[test]
    fn timezones_align_days_to_local_midnight() {
        let zone = offset(Some(&json!(-28800))).unwrap();
        let s = span(&json!("today"), zone, now()).unwrap();
        assert_eq!(keen_time(s.start), "2026-11-25T00:00:00.000-08:00");
        assert_eq!(s.start.to_utc().to_rfc3339(), "2026-11-25T08:00:00+00:00");
        assert_eq!(
            offset(Some(&json!("+05:30"))).unwrap().local_minus_utc(),
            19_800
        );
        assert!(offset(Some(&json!("US/Pacific"))).is_err());
        assert_eq!(
            offset(Some(&json!("-23:59"))).unwrap().local_minus_utc(),
            -86_340
        );
        // minutes and hours out of range, and hours that overflow when multiplied
        for bad in [
            "+00:1439",
            "+24:00",
            "-00:60",
            "+99999999999999999:00",
            "+1:-5",
        ] {
            assert!(offset(Some(&json!(bad))).is_err(), "{bad}");
        }
    }

    #[test]
    fn intervals_split_at_unit_boundaries() {
        let utc = offset(None).unwrap();
        let s = span(
            &json!({"start": "2026-11-25T08:30:00Z", "end": "2026-11-25T10:00:00Z"}),
            utc,
            now(),
        )
        .unwrap();
        let edges: Vec<String> = edges(s, Some(Unit::Hour))
            .into_iter()
            .map(keen_time)
            .collect();
        assert_eq!(
            edges,
            [
                "2026-11-25T08:30:00.000Z",
                "2026-11-25T09:00:00.000Z",
                "2026-11-25T10:00:00.000Z"
            ]
        );
        assert_eq!(interval_count(s, Some(Unit::Hour), 100), 2);
        assert_eq!(interval_count(s, Some(Unit::Minute), 100), 90);
        assert_eq!(interval_count(s, None, 100), 1);
    }

    #[test]
    fn intervals_are_counted_no_further_than_asked() {
        let utc = offset(None).unwrap();
        let s = span(
            &json!({"start": "0001-01-01T00:00:00Z", "end": "9999-12-31T00:00:00Z"}),
            utc,
            now(),
        )
        .unwrap();
        assert_eq!(interval_count(s, Some(Unit::Minute), 20_000), 20_001);
        assert_eq!(interval_count(s, Some(Unit::Year), 20_000), 9_999);
    }
}
