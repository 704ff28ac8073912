//! Keen's timeframes, intervals and time zones.
//!
//! - Relative: `this_N_<units>` is the current unit and the N-1 before it, up to the end of the
//!   current unit; `previous_N_<units>` the N whole units before the current one; units
//!   `minutes|hours|days|weeks|months|years` (singular too, `this_hour`), plus `today` and
//!   `yesterday`. Weeks start on Monday.
//! - Absolute: `{"start": ISO-8601, "end": ISO-8601}`, half-open, honoured to the minute.
//! - `timezone`: seconds east of UTC (Keen's SDKs send a number), `±HH:MM`, `UTC`, or a named
//!   zone of the tz database (`US/Pacific`, `Europe/Paris`); days, weeks, months and years then
//!   start at that zone's midnight, its daylight-saving changes included (a day may be 23 or 25
//!   hours long).

use chrono::{
    DateTime, Datelike, Duration, FixedOffset, LocalResult, Months, NaiveDate, NaiveDateTime,
    Offset, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use serde_json::Value;

use super::KeenError;

/// A unit of time, shortest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

/// The time zone units are aligned to: a fixed offset, or a named zone with its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Fixed(FixedOffset),
    Named(Tz),
}

impl Zone {
    pub const UTC: Zone = Zone::Fixed(FixedOffset::east_opt(0).expect("0 is an offset"));

    /// `time` as a local time of this zone (with the offset in force then).
    pub fn at<T: TimeZone>(self, time: DateTime<T>) -> DateTime<FixedOffset> {
        match self {
            Zone::Fixed(offset) => time.with_timezone(&offset),
            Zone::Named(tz) => {
                let offset = tz.offset_from_utc_datetime(&time.naive_utc()).fix();
                time.with_timezone(&offset)
            }
        }
    }

    /// The instant a local time names: the earlier of two when clocks went back; when it was
    /// skipped (clocks went forward), the instant the skipped hour ends.
    fn local(self, local: NaiveDateTime) -> DateTime<FixedOffset> {
        match self {
            Zone::Fixed(offset) => offset
                .from_local_datetime(&local)
                .single()
                .expect("fixed offsets are unambiguous"),
            Zone::Named(tz) => {
                // a gap is at most a day (Pacific/Apia skipped 2011-12-30): where it ends, to
                // the quarter hour (every offset of the tz database is a whole quarter hour
                // since 1972)
                let mut at = local;
                for _ in 0..=24 * 4 {
                    match tz.from_local_datetime(&at) {
                        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                            return self.at(t);
                        }
                        LocalResult::None => at += Duration::minutes(15),
                    }
                }
                self.at(Utc.from_utc_datetime(&local))
            }
        }
    }
}

/// A half-open span `[start, end)` and the zone its units are aligned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: DateTime<FixedOffset>,
    pub end: DateTime<FixedOffset>,
    pub zone: Zone,
}

/// Parses Keen's `timezone`.
pub fn zone(timezone: Option<&Value>) -> Result<Zone, KeenError> {
    let bad = || {
        KeenError::bad_request(
            "timezone must be seconds east of UTC (e.g. -28800), an offset such as +05:30, or a zone name such as US/Pacific",
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
                    _ => {
                        return s.parse::<Tz>().map(Zone::Named).map_err(|_| {
                            KeenError::bad_request(format!(
                                "timezone {s:?} is not a zone name (such as US/Pacific or Europe/Paris), seconds east of UTC or an offset such as +05:30"
                            ))
                        });
                    }
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
    FixedOffset::east_opt(i32::try_from(seconds).map_err(|_| bad())?)
        .map(Zone::Fixed)
        .ok_or_else(bad)
}

/// Parses Keen's `timeframe` at `now`.
pub fn span(timeframe: &Value, zone: Zone, now: DateTime<Utc>) -> Result<Span, KeenError> {
    let span = match timeframe {
        Value::String(text) => relative(text, zone, now)?,
        Value::Object(map) => {
            let at = |name: &str| -> Result<DateTime<FixedOffset>, KeenError> {
                let text = map.get(name).and_then(Value::as_str).ok_or_else(|| {
                    KeenError::bad_request(format!("absolute timeframe needs \"{name}\""))
                })?;
                let time = DateTime::parse_from_rfc3339(text).map_err(|_| {
                    KeenError::bad_request(format!("timeframe {name} {text:?} is not ISO-8601"))
                })?;
                Ok(floor(zone.at(time), Unit::Minute, zone))
            };
            Span {
                start: at("start")?,
                end: at("end")?,
                zone,
            }
        }
        _ => return Err(KeenError::bad_request("timeframe is required")),
    };
    if span.end <= span.start {
        return Err(KeenError::bad_request("timeframe ends before it starts"));
    }
    Ok(span)
}

fn relative(text: &str, zone: Zone, now: DateTime<Utc>) -> Result<Span, KeenError> {
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
    let current = floor(zone.at(now), unit, zone);
    match kind {
        "this" => Ok(Span {
            start: add(current, unit, -(i64::from(n) - 1), zone),
            end: add(current, unit, 1, zone),
            zone,
        }),
        "previous" => Ok(Span {
            start: add(current, unit, -i64::from(n), zone),
            end: current,
            zone,
        }),
        _ => Err(bad()),
    }
}

/// The start of the unit holding `time`, in `zone`.
pub fn floor(time: DateTime<FixedOffset>, unit: Unit, zone: Zone) -> DateTime<FixedOffset> {
    let time = zone.at(time);
    let date = time.date_naive();
    let day = |d: NaiveDate| zone.local(d.and_hms_opt(0, 0, 0).expect("midnight"));
    match unit {
        Unit::Minute => time
            .with_nanosecond(0)
            .and_then(|t| t.with_second(0))
            .expect("zero is a valid second"),
        // an hour starts at minute 0 of the local hour (in every zone of the tz database but
        // those with a :30 or :45 offset, the UTC hour)
        Unit::Hour => floor(time, Unit::Minute, zone)
            .with_minute(0)
            .expect("zero is a valid minute"),
        Unit::Day => day(date),
        Unit::Week => day(date - Duration::days(i64::from(date.weekday().num_days_from_monday()))),
        Unit::Month => day(date.with_day(1).expect("day 1")),
        Unit::Year => day(NaiveDate::from_ymd_opt(date.year(), 1, 1).expect("jan 1")),
    }
}

/// `time` plus `n` units (negative: minus): minutes and hours as elapsed time, days and longer
/// on `zone`'s calendar (the same local time `n` days on, however long those days were).
pub fn add(time: DateTime<FixedOffset>, unit: Unit, n: i64, zone: Zone) -> DateTime<FixedOffset> {
    let mut local = zone.at(time).naive_local();
    // the start of a day whose midnight was skipped (clocks went forward at 00:00) is not at
    // 00:00 local: count from its midnight, so the next days start at theirs
    let midnight = local.date().and_hms_opt(0, 0, 0).expect("midnight");
    if unit >= Unit::Day && local != midnight && zone.local(midnight) == time {
        local = midnight;
    }
    let months = |m: i64| {
        let shifted = if m >= 0 {
            local.checked_add_months(Months::new(m as u32))
        } else {
            local.checked_sub_months(Months::new((-m) as u32))
        };
        zone.local(shifted.unwrap_or(local))
    };
    let days = |d: i64| {
        local
            .checked_add_signed(Duration::days(d))
            .map_or(time, |t| zone.local(t))
    };
    match unit {
        Unit::Minute => zone.at(time + Duration::minutes(n)),
        Unit::Hour => zone.at(time + Duration::hours(n)),
        Unit::Day => days(n),
        Unit::Week => days(7 * n),
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
    let zone = span.zone;
    let inner = interval.map(|unit| {
        let first = add(floor(span.start, unit, zone), unit, 1, zone);
        std::iter::successors(Some(first), move |&t| {
            Some(add(t, unit, 1, zone)).filter(|next| *next > t)
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

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn now() -> DateTime<Utc> {
        utc("2026-11-25T10:20:30.5Z")
    }

    /// The interval edges of `span`, as Keen writes them.
    fn edge_times(span: Span, unit: Unit) -> Vec<String> {
        edges(span, Some(unit)).into_iter().map(keen_time).collect()
    }

    #[test]
    fn relative_timeframes() {
        let utc = zone(None).unwrap();
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

    fn seconds_east(zone: Zone) -> i32 {
        match zone {
            Zone::Fixed(offset) => offset.local_minus_utc(),
            Zone::Named(tz) => panic!("{tz} is not fixed"),
        }
    }

    #[test]
    fn timezones_align_days_to_local_midnight() {
        let pacific = zone(Some(&json!(-28800))).unwrap();
        let s = span(&json!("today"), pacific, now()).unwrap();
        assert_eq!(keen_time(s.start), "2026-11-25T00:00:00.000-08:00");
        assert_eq!(s.start.to_utc().to_rfc3339(), "2026-11-25T08:00:00+00:00");
        assert_eq!(seconds_east(zone(Some(&json!("+05:30"))).unwrap()), 19_800);
        assert_eq!(seconds_east(zone(Some(&json!("-23:59"))).unwrap()), -86_340);
        assert!(zone(Some(&json!("Mars/Olympus_Mons"))).is_err());
        // minutes and hours out of range, and hours that overflow when multiplied
        for bad in [
            "+00:1439",
            "+24:00",
            "-00:60",
            "+99999999999999999:00",
            "+1:-5",
        ] {
            assert!(zone(Some(&json!(bad))).is_err(), "{bad}");
        }
    }

    /// US/Pacific left daylight saving time on 2026-11-01 at 02:00 local (09:00 UTC): that day
    /// had 25 hours, and the days either side of it start at different offsets.
    #[test]
    fn named_zones_follow_their_daylight_saving_changes() {
        let pacific = zone(Some(&json!("US/Pacific"))).unwrap();
        assert_eq!(pacific, Zone::Named(chrono_tz::US::Pacific));
        let s = span(
            &json!({"start": "2026-10-31T07:00:00Z", "end": "2026-11-03T08:00:00Z"}),
            pacific,
            now(),
        )
        .unwrap();
        assert_eq!(
            edge_times(s, Unit::Day),
            [
                "2026-10-31T00:00:00.000-07:00",
                "2026-11-01T00:00:00.000-07:00",
                "2026-11-02T00:00:00.000-08:00",
                "2026-11-03T00:00:00.000-08:00"
            ]
        );
        let day_edges = edges(s, Some(Unit::Day));
        assert_eq!(day_edges[2] - day_edges[1], Duration::hours(25));
        // "today" in Paris on 2026-11-25 (UTC+1 in winter)
        let paris = zone(Some(&json!("Europe/Paris"))).unwrap();
        let today = span(&json!("today"), paris, now()).unwrap();
        assert_eq!(keen_time(today.start), "2026-11-25T00:00:00.000+01:00");
        assert_eq!(keen_time(today.end), "2026-11-26T00:00:00.000+01:00");
        // a month across the change: this_1_months in March 2026, Europe/Paris (UTC+1 → +2)
        let march = utc("2026-03-15T12:00:00Z");
        let month = span(&json!("this_month"), paris, march).unwrap();
        assert_eq!(keen_time(month.start), "2026-03-01T00:00:00.000+01:00");
        assert_eq!(keen_time(month.end), "2026-04-01T00:00:00.000+02:00");
        // the local midnight that does not exist (Santiago skips 00:00–01:00 when it springs
        // forward on 2026-09-06): the day starts when the skipped hour ends
        let santiago = zone(Some(&json!("America/Santiago"))).unwrap();
        let sept = utc("2026-09-06T15:00:00Z");
        let day = span(&json!("today"), santiago, sept).unwrap();
        assert_eq!(keen_time(day.start), "2026-09-06T01:00:00.000-03:00");
        assert_eq!(keen_time(day.end), "2026-09-07T00:00:00.000-03:00");
        let days = span(
            &json!({"start": "2026-09-05T04:00:00Z", "end": "2026-09-09T03:00:00Z"}),
            santiago,
            sept,
        )
        .unwrap();
        assert_eq!(
            edge_times(days, Unit::Day),
            [
                "2026-09-05T00:00:00.000-04:00",
                "2026-09-06T01:00:00.000-03:00",
                "2026-09-07T00:00:00.000-03:00",
                "2026-09-08T00:00:00.000-03:00",
                "2026-09-09T00:00:00.000-03:00"
            ]
        );
        // a whole day skipped: Pacific/Apia went from 2011-12-29 to 2011-12-31
        let apia = zone(Some(&json!("Pacific/Apia"))).unwrap();
        let then = utc("2011-12-31T12:00:00Z");
        let skipped = span(&json!("previous_3_days"), apia, then).unwrap();
        assert_eq!(
            edge_times(skipped, Unit::Day),
            [
                "2011-12-29T00:00:00.000-10:00",
                "2011-12-31T00:00:00.000+14:00",
                "2012-01-01T00:00:00.000+14:00"
            ]
        );
    }

    #[test]
    fn intervals_split_at_unit_boundaries() {
        let utc = zone(None).unwrap();
        let s = span(
            &json!({"start": "2026-11-25T08:30:00Z", "end": "2026-11-25T10:00:00Z"}),
            utc,
            now(),
        )
        .unwrap();
        assert_eq!(
            edge_times(s, Unit::Hour),
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
        let utc = zone(None).unwrap();
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
