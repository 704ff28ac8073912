//! The projection as a plain function: one event → the Redis writes it makes, grouped by hash
//! slot ([`Write`]). Every write commutes with every other (counters, minimum/maximum, "latest
//! by occurred_at" registers, capped sorted sets, set members), so events may be folded in any
//! order and by several replicas; each group is applied with its seen-mark in one atomic step by
//! [`crate::store`], so an event is counted once per group however often it comes.

use learntrail_proto::{
    Event, Message as _, Payload, keen,
    time::to_datetime,
    v1::{LmsEventType, lms_event::EventData},
};
use serde_json::json;

use crate::{
    index::Index,
    keys::{self, SEP, field},
};

/// Recent Ruby errors kept per learner.
pub const RECENT_ERRORS: u32 = 20;
/// Video play/stop markers kept per learner (for seconds watched).
pub const VIDEO_MARKERS: u32 = 5_000;
/// Longest stderr kept in a timeline entry.
pub const TIMELINE_STDERR_CHARS: usize = 500;

/// One commutative write.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// HINCRBY.
    Incr { key: String, field: String, by: i64 },
    /// HINCRBYFLOAT.
    IncrF { key: String, field: String, by: f64 },
    /// Keep the larger number.
    Max {
        key: String,
        field: String,
        value: f64,
    },
    /// Keep the smaller number.
    Min {
        key: String,
        field: String,
        value: f64,
    },
    /// Keep the value with the greater version (`<occurred ms, 15 digits>:<event id>`).
    Lww {
        key: String,
        field: String,
        version: String,
        value: String,
    },
    /// ZADD, then keep only the `keep` highest scores (0 = all).
    ZAdd {
        key: String,
        score: f64,
        member: Vec<u8>,
        keep: u32,
    },
    /// SADD.
    SAdd { key: String, member: String },
    /// Drop the sorted set's members scored below `below`, after the write's additions
    /// (`ANALYSIS_RETENTION` of a learner's analysis events).
    Trim { key: String, below: f64 },
    /// Every key of the slot's step, its seen-mark included, expires at `at` (Unix seconds),
    /// after the write (`ANALYSIS_RETENTION` of a collection-hour).
    Expire { at: i64 },
    /// One event in an analysis cell: a count at `key`, and each measure's sum, count,
    /// minimum and maximum at [`keys::measure_cells`]`(key, measure)` (the fields of
    /// [`cell_field`]). Kept whole until the cells of a write are merged, then expanded into
    /// those fields once per write ([`Op::expand`] is the meaning of one).
    Cell {
        key: String,
        /// `""` for an hourly cell, the minute (`"07"`) for a per-minute one.
        prefix: String,
        /// The dimension tuple (JSON).
        tuple: String,
        measures: Vec<Measure>,
    },
}

/// One measure of an event in an analysis cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    pub name: String,
    /// [`keys::measure_cells`] of the cell's key.
    pub key: String,
    pub value: f64,
}

/// The hash field of one statistic (`c` count; `s`, `n`, `lo`, `hi` a measure's sum, count,
/// minimum, maximum) of the cell of `tuple`.
pub fn cell_field(prefix: &str, stat: &str, measure: Option<&str>, tuple: &str) -> String {
    match measure {
        None => format!("{prefix}|{stat}|{tuple}"),
        Some(m) => format!("{prefix}|{stat}|{m}|{tuple}"),
    }
}

impl Op {
    /// The plain operations this one stands for (itself, but for a [`Op::Cell`]).
    pub fn expand(&self) -> Vec<Op> {
        let Op::Cell {
            key,
            prefix,
            tuple,
            measures,
        } = self
        else {
            return vec![self.clone()];
        };
        let mut ops = vec![Op::Incr {
            key: key.clone(),
            field: cell_field(prefix, "c", None, tuple),
            by: 1,
        }];
        for m in measures {
            let field = |stat| cell_field(prefix, stat, Some(&m.name), tuple);
            ops.push(Op::IncrF {
                key: m.key.clone(),
                field: field("s"),
                by: m.value,
            });
            ops.push(Op::Incr {
                key: m.key.clone(),
                field: field("n"),
                by: 1,
            });
            ops.push(Op::Min {
                key: m.key.clone(),
                field: field("lo"),
                value: m.value,
            });
            ops.push(Op::Max {
                key: m.key.clone(),
                field: field("hi"),
                value: m.value,
            });
        }
        ops
    }
}

/// The writes of one event to one hash slot (`tag`). `marked` groups are applied only once per
/// event id (a seen-mark); unmarked ones are set additions, idempotent by themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub tag: String,
    pub marked: bool,
    pub ops: Vec<Op>,
}

/// Projection settings.
#[derive(Debug, Clone)]
pub struct FoldSettings {
    pub index: Index,
    /// Timeline entries kept per learner.
    pub timeline_len: u32,
    /// How long analysis data is kept after its hour (`ANALYSIS_RETENTION`); `None` keeps all.
    pub retention: Option<std::time::Duration>,
}

/// The course an event belongs to, from wherever its source puts it.
pub fn course_of(event: &Event) -> Option<&str> {
    let context = event.context.as_ref().map(|c| c.course.as_str());
    let payload = match &event.payload {
        Some(Payload::NotebookSnapshot(nb)) => Some(nb.course.as_str()),
        Some(Payload::LmsEvent(lms)) => Some(lms.course_slug.as_str()),
        _ => None,
    };
    [context, payload]
        .into_iter()
        .flatten()
        .find(|c| !c.is_empty())
}

/// Milliseconds since the epoch of the event's `occurred_at` (0 when unset).
pub fn occurred_ms(event: &Event) -> i64 {
    event
        .occurred_at
        .as_ref()
        .and_then(to_datetime)
        .map_or(0, |t| t.timestamp_millis())
}

/// All the writes of `event`. An event without an actor only feeds the analysis cells.
pub fn fold(event: &Event, settings: &FoldSettings) -> Vec<Write> {
    let ms = occurred_ms(event);
    let hour = keys::hour_of(ms);
    let collection = keen::collection(event);
    let small = stripped(event);
    let keen_event = keen::to_keen(&small).unwrap_or_default();
    let tuple = settings.index.tuple(&keen_event);
    let measures = settings.index.measures_of(&keen_event);
    let minute = format!("{:02}", ms.rem_euclid(3_600_000) / 60_000);

    let agg = keys::aggregate(&collection, hour);
    let mut agg_ops = Vec::new();
    cells(&mut agg_ops, &format!("{agg}:h"), "", &tuple, &measures);
    cells(
        &mut agg_ops,
        &format!("{agg}:m"),
        &minute,
        &tuple,
        &measures,
    );
    let retention_ms = settings.retention.map(|r| r.as_millis() as i64);
    if let Some(retention_ms) = retention_ms {
        agg_ops.push(Op::Expire {
            at: expiry_secs(hour, retention_ms),
        });
    }
    let mut writes = Vec::new();
    if !event.actor.is_empty() {
        agg_ops.push(Op::SAdd {
            key: format!("{agg}:u"),
            member: event.actor.clone(),
        });
        let mut learner = Learner::new(event, ms);
        learner.zadd("tl", small.encode_to_vec(), settings.timeline_len);
        // the learner's own analysis data: the event itself (one member), not pre-aggregated
        // cells, which cost ten and more operations per event and rarely merge
        let events_key = keys::learner_events(&event.actor, &collection);
        if let Some(retention_ms) = retention_ms {
            // as old as a collection-hour that has expired: a query no longer reaches it
            learner.ops.push(Op::Trim {
                key: events_key.clone(),
                below: (ms - retention_ms) as f64,
            });
        }
        learner.ops.push(Op::ZAdd {
            key: events_key,
            score: ms as f64,
            member: analysis_member(&event.id, &tuple, &measures),
            keep: 0,
        });
        learner.fold();
        writes.push(Write {
            tag: keys::learner(&event.actor),
            marked: true,
            ops: learner.ops,
        });
        if let Some(course) = course_of(event) {
            writes.push(course_write(event, course));
        }
    }
    writes.push(Write {
        tag: agg,
        marked: true,
        ops: agg_ops,
    });
    writes
}

/// When the keys of collection-hour `hour` expire under a retention of `retention_ms`: that
/// long after the hour ends (Unix seconds).
fn expiry_secs(hour: i64, retention_ms: i64) -> i64 {
    ((hour + 1) * 3_600_000 + retention_ms).div_euclid(1_000)
}

/// One event in a learner's analysis log: `<event id>SEP<dimension tuple JSON>SEP<measures JSON>`
/// (the id keeps two events with the same values apart).
pub fn analysis_member(id: &str, tuple: &str, measures: &[(&str, f64)]) -> Vec<u8> {
    let measures: serde_json::Map<String, serde_json::Value> = measures
        .iter()
        .map(|&(name, value)| (name.to_string(), json!(value)))
        .collect();
    format!(
        "{id}{SEP}{tuple}{SEP}{}",
        serde_json::Value::Object(measures)
    )
    .into_bytes()
}

/// The dimension tuple (JSON) and the measures of an [`analysis_member`].
pub fn parse_analysis_member(
    member: &str,
) -> Option<(&str, serde_json::Map<String, serde_json::Value>)> {
    let mut parts = member.splitn(3, SEP);
    let (_id, tuple, measures) = (parts.next()?, parts.next()?, parts.next()?);
    Some((tuple, serde_json::from_str(measures).ok()?))
}

/// The event without its large fields: they are neither indexed nor shown in a timeline.
fn stripped(event: &Event) -> Event {
    let mut event = event.clone();
    if let Some(Payload::RubyRun(run)) = &mut event.payload
        && run.stderr.chars().count() > TIMELINE_STDERR_CHARS
    {
        run.stderr = run.stderr.chars().take(TIMELINE_STDERR_CHARS).collect();
        run.stderr_truncated = true;
    }
    event
}

/// Count, and per measure sum, count, minimum and maximum, of one analysis cell. Counts go to
/// `key`, each measure's figures to [`keys::measure_cells`]`(key, measure)`: a count reads only
/// the counts, a sum only its measure.
fn cells(ops: &mut Vec<Op>, key: &str, prefix: &str, tuple: &str, measures: &[(&str, f64)]) {
    ops.push(Op::Cell {
        key: key.into(),
        prefix: prefix.into(),
        tuple: tuple.into(),
        measures: measures
            .iter()
            .map(|&(name, value)| Measure {
                name: name.into(),
                key: keys::measure_cells(key, name),
                value,
            })
            .collect(),
    });
}

fn course_write(event: &Event, course: &str) -> Write {
    let tag = keys::course(course);
    let mut ops = vec![Op::SAdd {
        key: format!("{tag}:l"),
        member: event.actor.clone(),
    }];
    if let Some(Payload::NotebookSnapshot(nb)) = &event.payload {
        for grade_id in nb.problems.keys() {
            ops.push(Op::SAdd {
                key: format!("{tag}:p"),
                member: field(&[&nb.assignment, grade_id]),
            });
        }
    }
    Write {
        tag,
        marked: false,
        ops,
    }
}

/// Builds the writes to one learner's slot.
struct Learner<'a> {
    event: &'a Event,
    ms: i64,
    tag: String,
    version: String,
    course: Option<&'a str>,
    ops: Vec<Op>,
}

impl<'a> Learner<'a> {
    fn new(event: &'a Event, ms: i64) -> Self {
        Self {
            event,
            ms,
            tag: keys::learner(&event.actor),
            version: format!("{:015}:{}", ms.max(0), event.id),
            course: course_of(event),
            ops: Vec::new(),
        }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.tag)
    }

    fn incr(&mut self, suffix: &str, field: impl Into<String>, by: i64) {
        let key = self.key(suffix);
        self.ops.push(Op::Incr {
            key,
            field: field.into(),
            by,
        });
    }

    fn max(&mut self, suffix: &str, field: impl Into<String>, value: f64) {
        let key = self.key(suffix);
        self.ops.push(Op::Max {
            key,
            field: field.into(),
            value,
        });
    }

    fn min(&mut self, suffix: &str, field: impl Into<String>, value: f64) {
        let key = self.key(suffix);
        self.ops.push(Op::Min {
            key,
            field: field.into(),
            value,
        });
    }

    fn lww(&mut self, suffix: &str, field: impl Into<String>, value: String) {
        let key = self.key(suffix);
        let version = self.version.clone();
        self.ops.push(Op::Lww {
            key,
            field: field.into(),
            version,
            value,
        });
    }

    fn zadd(&mut self, suffix: &str, member: Vec<u8>, keep: u32) {
        let key = self.key(suffix);
        self.ops.push(Op::ZAdd {
            key,
            score: self.ms as f64,
            member,
            keep,
        });
    }

    /// Counts for this learner's course (for cohort comparisons).
    fn course_incr(&mut self, metric: &str) {
        if let Some(course) = self.course {
            self.incr("bc", field(&[course, metric]), 1);
        }
    }

    fn fold(&mut self) {
        let ms = self.ms as f64;
        self.incr("n", "events", 1);
        self.min("n", "first", ms);
        self.max("n", "last", ms);
        self.course_incr("events");
        if let Some(course) = self.course {
            let key = self.key("crs");
            self.ops.push(Op::SAdd {
                key,
                member: course.to_string(),
            });
        }
        match &self.event.payload {
            Some(Payload::RubyRun(_)) => self.ruby(),
            Some(Payload::NotebookSnapshot(_)) => self.notebook(),
            Some(Payload::LabLog(_)) => self.lab(),
            Some(Payload::LmsEvent(_)) => self.lms(),
            Some(Payload::EnergyReading(_)) => self.energy(),
            None => {}
        }
    }

    fn ruby(&mut self) {
        let Some(Payload::RubyRun(run)) = &self.event.payload else {
            return;
        };
        let ms = self.ms as f64;
        self.incr("n", "ruby_runs", 1);
        self.min("n", "ruby_first", ms);
        self.max("n", "ruby_last", ms);
        self.course_incr("ruby_runs");
        let failed = run.exit_code.is_some_and(|c| c != 0) || run.signal.is_some();
        if failed {
            self.incr("n", "ruby_failed", 1);
            self.course_incr("ruby_failed_runs");
        }
        let Some(error) = run.error.as_ref().filter(|e| !e.class_name.is_empty()) else {
            return;
        };
        self.incr("rcls", error.class_name.clone(), 1);
        let sample = json!({
            "class_name": error.class_name, "message": error.message, "file": error.file,
            "line": error.line, "ms": self.ms, "id": self.event.id,
        });
        self.zadd("rerr", sample.to_string().into_bytes(), RECENT_ERRORS);
    }

    fn notebook(&mut self) {
        let Some(Payload::NotebookSnapshot(nb)) = &self.event.payload else {
            return;
        };
        let course = self.course.unwrap_or_default().to_string();
        let latest = json!({
            "course": course, "assignment": nb.assignment, "ms": self.ms,
            "code_ok": nb.code_ok, "display_outputs": nb.display_outputs,
            "stream_outputs": nb.stream_outputs, "error_outputs": nb.error_outputs,
            "empty_cells": nb.empty_cells,
        });
        self.lww("nb", nb.path.clone(), latest.to_string());
        for (grade_id, result) in &nb.problems {
            let value = format!(
                "{}|{}|{}|{}",
                result.status, result.points, result.max_points, self.ms
            );
            self.lww("prob", field(&[&course, &nb.assignment, grade_id]), value);
        }
    }

    fn lab(&mut self) {
        let Some(Payload::LabLog(log)) = &self.event.payload else {
            return;
        };
        self.incr("lab", field(&[&log.experiment, &log.log_kind]), 1);
        self.incr("n", "lab_actions", 1);
        self.max("n", "lab_last", self.ms as f64);
        self.course_incr("lab_actions");
    }

    fn lms(&mut self) {
        let Some(Payload::LmsEvent(lms)) = &self.event.payload else {
            return;
        };
        let course = self.course.unwrap_or_default().to_string();
        let kind = LmsEventType::try_from(lms.event_type).unwrap_or(LmsEventType::Unspecified);
        match (&lms.event_data, kind) {
            (Some(EventData::Video(video)), kind) => {
                let (marker, position) = match kind {
                    LmsEventType::VideoPlay => ("play", video.current_time),
                    LmsEventType::VideoPause => ("pause", video.current_time),
                    LmsEventType::VideoEnded => ("ended", video.current_time),
                    LmsEventType::VideoSeek => ("seek", video.old_time),
                    _ => return,
                };
                if marker != "seek" {
                    self.incr("n", format!("video_{marker}"), 1);
                }
                if marker == "play" {
                    self.course_incr("videos_played");
                }
                // a position the player did not send is left empty (see `seconds_watched`)
                let position = position.map(|p| p.to_string()).unwrap_or_default();
                let member = format!(
                    "{}{SEP}{marker}{SEP}{position}{SEP}{}",
                    video.video_id, self.event.id
                );
                self.zadd("vid", member.into_bytes(), VIDEO_MARKERS);
            }
            (Some(EventData::Assessment(a)), _) => {
                let name = field(&[&course, &a.assessment_id]);
                self.max("as", format!("{name}|best"), a.score);
                self.max("as", format!("{name}|max"), a.max_score);
                self.incr("as", format!("{name}|n"), 1);
            }
            (Some(EventData::Enrollment(e)), kind) => {
                let active = kind != LmsEventType::EnrollmentDeactivated;
                self.lww("enr", course, format!("{}|{}", u8::from(active), e.mode));
            }
            (Some(EventData::Registration(_)), _) | (None, LmsEventType::Registration) => {
                self.incr("n", "registrations", 1);
            }
            _ => {}
        }
    }

    fn energy(&mut self) {
        let Some(Payload::EnergyReading(reading)) = &self.event.payload else {
            return;
        };
        let cloud = reading.cloud_id.clone();
        self.lww("en", format!("{cloud}|kw"), reading.demand_kw.to_string());
        let day = chrono::DateTime::from_timestamp_millis(self.ms)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        // a reading without the meter's total (the meter did not give it) carries 0, which
        // would count the whole total as the day's use
        let total = reading.summation_delivered_kwh;
        if total > 0.0 {
            self.min("en", format!("{cloud}|{day}|lo"), total);
            self.max("en", format!("{cloud}|{day}|hi"), total);
        }
    }
}

#[cfg(test)]
mod tests {
    use learntrail_proto::{
        time,
        v1::{Context, RubyError, RubyRun},
    };

    use super::*;

    pub(crate) fn settings() -> FoldSettings {
        FoldSettings {
            index: Index::default(),
            timeline_len: 100,
            retention: None,
        }
    }

    fn run(id: &str, actor: &str, class: &str) -> Event {
        Event {
            id: id.into(),
            occurred_at: time::parse_rfc3339("2026-11-24T16:30:18Z"),
            source: "shim".into(),
            kind: "ruby_run".into(),
            actor: actor.into(),
            context: Some(Context {
                course: "ruby-101".into(),
                ..Default::default()
            }),
            payload: Some(Payload::RubyRun(RubyRun {
                exit_code: Some(1),
                duration_ms: 40,
                error: Some(RubyError {
                    class_name: class.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_retention_expires_the_hour_and_trims_the_learners_analysis_events() {
        let event = run("e1", "a1", "NoMethodError");
        assert!(
            fold(&event, &settings())
                .iter()
                .flat_map(|w| &w.ops)
                .all(|op| !matches!(op, Op::Expire { .. } | Op::Trim { .. })),
            "nothing expires without a retention"
        );
        let settings = FoldSettings {
            retention: Some(std::time::Duration::from_secs(86_400)),
            ..settings()
        };
        let writes = fold(&event, &settings);
        let ms = occurred_ms(&event); // 16:30:18: the hour ends at 17:00, plus a day
        let end = time::parse_rfc3339("2026-11-25T17:00:00Z").unwrap().seconds;
        let hour = writes.iter().find(|w| w.tag.starts_with("{a:")).unwrap();
        assert!(hour.ops.contains(&Op::Expire { at: end }), "{hour:?}");
        let learner = writes.iter().find(|w| w.tag == "{l:a1}").unwrap();
        assert!(learner.ops.contains(&Op::Trim {
            key: "{l:a1}:ke:shim.ruby_run".into(),
            below: (ms - 86_400_000) as f64,
        }));
        assert!(
            learner
                .ops
                .iter()
                .all(|op| !matches!(op, Op::Expire { .. })),
            "a learner's slot never expires (its summary is all-time)"
        );
    }

    #[test]
    fn a_reading_without_the_meters_total_leaves_the_days_use_alone() {
        use learntrail_proto::v1::EnergyReading;
        let reading = |total: f64| Event {
            id: format!("r{total}"),
            occurred_at: time::parse_rfc3339("2026-11-24T16:30:18Z"),
            source: "energy".into(),
            kind: "reading".into(),
            actor: "household-1".into(),
            payload: Some(Payload::EnergyReading(EnergyReading {
                cloud_id: "00d001".into(),
                demand_kw: 1.5,
                summation_delivered_kwh: total,
                ..Default::default()
            })),
            ..Default::default()
        };
        let day_ops = |total: f64| -> usize {
            fold(&reading(total), &settings())
                .iter()
                .flat_map(|w| &w.ops)
                .filter(|op| {
                    matches!(op, Op::Min { field, .. } | Op::Max { field, .. } if field.starts_with("00d001|2026-11-24"))
                })
                .count()
        };
        assert_eq!(day_ops(2853.5), 2);
        assert_eq!(day_ops(0.0), 0);
    }

    #[test]
    fn a_run_writes_to_its_learner_its_course_and_its_hour() {
        let writes = fold(&run("e1", "a1", "NoMethodError"), &settings());
        let tags: Vec<_> = writes.iter().map(|w| w.tag.as_str()).collect();
        let hour = keys::hour_of(occurred_ms(&run("e1", "a1", "x")));
        assert_eq!(
            tags,
            [
                "{l:a1}".to_string(),
                "{c:ruby-101}".into(),
                format!("{{a:shim.ruby_run:{hour}}}")
            ]
        );
        for write in &writes {
            assert!(
                write
                    .ops
                    .iter()
                    .flat_map(Op::expand)
                    .all(|op| op_key(&op).starts_with(&write.tag)),
                "every key of a group is in its slot"
            );
        }
        let learner = &writes[0].ops;
        assert!(learner.contains(&Op::Incr {
            key: "{l:a1}:rcls".into(),
            field: "NoMethodError".into(),
            by: 1
        }));
        assert!(learner.contains(&Op::Incr {
            key: "{l:a1}:n".into(),
            field: "ruby_failed".into(),
            by: 1
        }));
        let agg: Vec<Op> = writes[2].ops.iter().flat_map(Op::expand).collect();
        // a boolean at false is a value, as Keen has it
        let tuple = r#"{"context.course":"ruby-101","kind":"ruby_run","rubyRun.error.className":"NoMethodError","rubyRun.error.syntaxError":false,"rubyRun.exitCode":1,"source":"shim"}"#;
        assert!(agg.contains(&Op::Incr {
            key: format!("{{a:shim.ruby_run:{hour}}}:h"),
            field: format!("|c|{tuple}"),
            by: 1
        }));
        assert!(agg.contains(&Op::IncrF {
            key: format!("{{a:shim.ruby_run:{hour}}}:h:rubyRun.durationMs"),
            field: format!("|s|rubyRun.durationMs|{tuple}"),
            by: 40.0
        }));
        // the learner's own analysis data: the event, once, with its tuple and measures
        let own: Vec<&Vec<u8>> = learner
            .iter()
            .filter_map(|op| match op {
                Op::ZAdd { key, member, .. } if key == "{l:a1}:ke:shim.ruby_run" => Some(member),
                _ => None,
            })
            .collect();
        assert_eq!(own.len(), 1);
        let member = std::str::from_utf8(own[0]).unwrap();
        assert!(member.starts_with("e1\u{1f}"), "{member}");
        let (own_tuple, measures) = parse_analysis_member(member).unwrap();
        assert_eq!(own_tuple, tuple);
        assert_eq!(measures["rubyRun.durationMs"], 40.0);
        assert!(
            !learner
                .iter()
                .any(|op| matches!(op, Op::Incr { key, .. } if key.contains(":k"))),
            "no per-learner cells"
        );
    }

    fn op_key(op: &Op) -> &str {
        match op {
            Op::Incr { key, .. }
            | Op::IncrF { key, .. }
            | Op::Max { key, .. }
            | Op::Min { key, .. }
            | Op::Lww { key, .. }
            | Op::ZAdd { key, .. }
            | Op::SAdd { key, .. }
            | Op::Trim { key, .. }
            | Op::Cell { key, .. } => key,
            Op::Expire { .. } => "",
        }
    }
}
