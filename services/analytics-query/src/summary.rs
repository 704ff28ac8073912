//! Reading a learner back: one pipelined round trip to the learner's slot (and one to the slots
//! of their courses, for the problems each assignment is known to have), then plain functions
//! that turn the stored fields into a [`LearnerSummary`]. A summary asked again while nothing it
//! came from changed is answered from memory ([`summary`], [`crate::cache`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use learntrail_proto::{
    Event, Message as _, time,
    v1::{
        AssessmentBest, AssignmentProgress, EnergySummary, Enrollment, LabKinds, LabSummary,
        LearnerSummary, LearnerTimeline, LmsSummary, NotebookSummary, ProblemProgress,
        RubyErrorSample, RubySummary, problem_result::Status,
    },
    wkt::Timestamp,
};
use redis::{RedisResult, Value, from_redis_value};
use serde_json::Value as Json;

use crate::{
    cache::{Cache, HeldSummary},
    fold::RECENT_ERRORS,
    keys::{self, SEP},
    store::Store,
};

type Hash = HashMap<String, String>;

/// What one learner's slot holds, as read.
#[derive(Debug, Default)]
pub struct Raw {
    /// The size of the learner's seen-mark set, read before the rest ([`crate::cache`]).
    pub version: i64,
    pub counters: Hash,
    pub error_classes: Hash,
    pub recent_errors: Vec<String>,
    pub notebooks: Hash,
    pub problems: Hash,
    pub lab: Hash,
    pub video: Vec<(String, f64)>,
    pub enrollments: Hash,
    pub assessments: Hash,
    pub energy: Hash,
    pub courses: Vec<String>,
    pub by_course: Hash,
    /// course → its known problems (`assignment\x1fgrade_id`).
    pub known: HashMap<String, HashSet<String>>,
}

fn parse<T: redis::FromRedisValue>(value: Option<Value>) -> RedisResult<T> {
    Ok(from_redis_value(value.unwrap_or(Value::Nil))?)
}

/// Reads the stored state of several learners (two round trips in all).
pub async fn read_many(store: &Store, learners: &[String]) -> RedisResult<Vec<Raw>> {
    let pipelines: Vec<redis::Pipeline> = learners.iter().map(|l| pipeline(l)).collect();
    let answers = store.query_groups(&pipelines).await?;
    let mut raws = Vec::with_capacity(learners.len());
    for answer in answers {
        let mut values = answer.into_iter();
        let mut next = || values.next();
        raws.push(Raw {
            version: parse(next())?,
            counters: parse(next())?,
            error_classes: parse(next())?,
            recent_errors: parse(next())?,
            notebooks: parse(next())?,
            problems: parse(next())?,
            lab: parse(next())?,
            video: parse(next())?,
            enrollments: parse(next())?,
            assessments: parse(next())?,
            energy: parse(next())?,
            courses: parse(next())?,
            by_course: parse(next())?,
            known: HashMap::new(),
        });
    }
    let courses: Vec<String> = raws
        .iter()
        .flat_map(|r| r.courses.iter().cloned())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let known = known_problems(store, &courses).await?;
    for raw in &mut raws {
        raw.known = raw
            .courses
            .iter()
            .filter_map(|c| Some((c.clone(), known.get(c)?.clone())))
            .collect();
    }
    Ok(raws)
}

/// The summary of `learner`: from memory when neither the learner nor the known problems of
/// their courses changed since it was built (one round trip of their versions), read and built
/// otherwise.
pub async fn summary(store: &Store, cache: &Cache, learner: &str) -> RedisResult<LearnerSummary> {
    let generation = cache.generation();
    if let Some(held) = cache.summary(learner) {
        let version = |key: String| {
            let mut pipe = redis::pipe();
            pipe.scard(key);
            pipe
        };
        let mut groups = vec![version(keys::seen(&keys::learner(learner)))];
        groups.extend(held.known.iter().map(|(c, _)| version(known_key(c))));
        let now: Vec<i64> = store
            .query_groups(&groups)
            .await?
            .into_iter()
            .map(|answer| parse(answer.into_iter().next()))
            .collect::<RedisResult<_>>()?;
        let then = std::iter::once(held.version).chain(held.known.iter().map(|(_, n)| *n));
        if then.eq(now) {
            cache.summary_used();
            return Ok(held.summary.clone());
        }
    }
    let raw = read_many(store, &[learner.to_string()])
        .await?
        .pop()
        .unwrap_or_default();
    let summary = build(learner, &raw);
    cache.keep_summary(
        learner,
        HeldSummary {
            version: raw.version,
            known: raw
                .courses
                .iter()
                .map(|c| (c.clone(), raw.known.get(c).map_or(0, |k| k.len() as i64)))
                .collect(),
            summary: summary.clone(),
        },
        generation,
    );
    Ok(summary)
}

/// The set of a course's known problems.
fn known_key(course: &str) -> String {
    format!("{}:p", keys::course(course))
}

/// The known problems of each course.
pub async fn known_problems(
    store: &Store,
    courses: &[String],
) -> RedisResult<HashMap<String, HashSet<String>>> {
    let pipelines: Vec<redis::Pipeline> = courses
        .iter()
        .map(|c| {
            let mut pipe = redis::pipe();
            pipe.smembers(known_key(c));
            pipe
        })
        .collect();
    let answers = store.query_groups(&pipelines).await?;
    courses
        .iter()
        .zip(answers)
        .map(|(course, answer)| Ok((course.clone(), parse(answer.into_iter().next())?)))
        .collect()
}

fn pipeline(learner: &str) -> redis::Pipeline {
    let tag = keys::learner(learner);
    let key = |suffix: &str| format!("{tag}:{suffix}");
    let mut pipe = redis::pipe();
    pipe.scard(keys::seen(&tag))
        .hgetall(key("n"))
        .hgetall(key("rcls"))
        .zrevrange(key("rerr"), 0, RECENT_ERRORS as isize - 1)
        .hgetall(key("nb"))
        .hgetall(key("prob"))
        .hgetall(key("lab"))
        .zrange_withscores(key("vid"), 0, -1)
        .hgetall(key("enr"))
        .hgetall(key("as"))
        .hgetall(key("en"))
        .smembers(key("crs"))
        .hgetall(key("bc"));
    pipe
}

/// The timeline's exclusive bound for a `before` time. Entries are kept by the millisecond, so a
/// time inside a millisecond is rounded up: an event of that millisecond may come again on the
/// next page, but none is skipped.
pub fn before_ms(before: chrono::DateTime<chrono::Utc>) -> i64 {
    let ms = before.timestamp_millis();
    if before.timestamp_subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms + 1
    }
}

/// Reads one learner's timeline page: events that occurred before `before_ms`, newest first.
/// A page never ends inside a millisecond: the events sharing the last one's millisecond all
/// come on it (a page may then hold more than `limit`), so `next_before`, that millisecond,
/// leaves none of them out of the next page.
pub async fn timeline(
    store: &Store,
    learner: &str,
    before_ms: Option<i64>,
    limit: usize,
) -> RedisResult<LearnerTimeline> {
    let key = format!("{}:tl", keys::learner(learner));
    let max = before_ms.map_or("+inf".to_string(), |ms| format!("({ms}"));
    let mut pipe = redis::pipe();
    pipe.zrevrangebyscore_limit_withscores(&key, max, "-inf", 0, limit as isize + 1);
    let answer = store.query_groups(&[pipe]).await?;
    let mut entries: Vec<(Vec<u8>, f64)> =
        parse(answer.into_iter().next().and_then(|a| a.into_iter().next()))?;
    let extra = if entries.len() > limit {
        entries.pop()
    } else {
        None
    };
    let mut next_before = None;
    if let (Some((_, extra)), Some(&(_, last))) = (extra, entries.last()) {
        if extra < last {
            next_before = time::from_millis(last as i64);
        } else {
            // the page would end inside a millisecond: the rest of it, and whether anything is
            // older
            let mut pipe = redis::pipe();
            pipe.zrevrangebyscore_withscores(&key, last, last)
                .zrevrangebyscore_limit(&key, format!("({last}"), "-inf", 0, 1);
            let answer = store.query_groups(&[pipe]).await?;
            let mut answer = answer.into_iter().next().unwrap_or_default().into_iter();
            let ties: Vec<(Vec<u8>, f64)> = parse(answer.next())?;
            let older: Vec<Vec<u8>> = parse(answer.next())?;
            entries.retain(|(_, score)| *score > last);
            entries.extend(ties);
            if !older.is_empty() {
                next_before = time::from_millis(last as i64);
            }
        }
    }
    let events: Vec<Event> = entries
        .iter()
        .filter_map(|(bytes, _)| Event::decode(bytes.as_slice()).ok())
        .collect();
    Ok(LearnerTimeline {
        learner: learner.to_string(),
        events,
        next_before,
    })
}

fn num(map: &Hash, field: &str) -> f64 {
    map.get(field).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

fn count(map: &Hash, field: &str) -> u64 {
    map.get(field).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn at(map: &Hash, field: &str) -> Option<Timestamp> {
    map.get(field)
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| time::from_millis(ms as i64))
}

/// Latest-wins registers: the value fields, without their `|v` version fields.
fn registers(map: &Hash) -> impl Iterator<Item = (&String, &String)> {
    map.iter().filter(|(field, _)| !field.ends_with("|v"))
}

/// The summary of one learner from what was read.
pub fn build(learner: &str, raw: &Raw) -> LearnerSummary {
    let mut courses = raw.courses.clone();
    courses.sort();
    LearnerSummary {
        learner: learner.to_string(),
        events: count(&raw.counters, "events"),
        first_activity: at(&raw.counters, "first"),
        last_activity: at(&raw.counters, "last"),
        ruby: Some(ruby(raw)),
        notebooks: notebooks(raw),
        lab: Some(lab(raw)),
        lms: Some(lms(raw)),
        energy: energy(raw),
        courses,
        assignments: assignments(raw),
    }
}

fn ruby(raw: &Raw) -> RubySummary {
    let recent_errors = raw
        .recent_errors
        .iter()
        .filter_map(|text| serde_json::from_str::<Json>(text).ok())
        .map(|e| RubyErrorSample {
            class_name: e["class_name"].as_str().unwrap_or_default().into(),
            message: e["message"].as_str().unwrap_or_default().into(),
            file: e["file"].as_str().unwrap_or_default().into(),
            line: e["line"].as_u64().unwrap_or_default() as u32,
            occurred_at: e["ms"].as_i64().and_then(time::from_millis),
            event_id: e["id"].as_str().unwrap_or_default().into(),
        })
        .collect();
    RubySummary {
        runs: count(&raw.counters, "ruby_runs"),
        failed_runs: count(&raw.counters, "ruby_failed"),
        errors_by_class: raw
            .error_classes
            .iter()
            .map(|(class, n)| (class.clone(), n.parse().unwrap_or(0)))
            .collect(),
        recent_errors,
        first_run: at(&raw.counters, "ruby_first"),
        last_run: at(&raw.counters, "ruby_last"),
    }
}

fn notebooks(raw: &Raw) -> Vec<NotebookSummary> {
    let mut list: Vec<NotebookSummary> = registers(&raw.notebooks)
        .filter_map(|(path, text)| {
            let nb: Json = serde_json::from_str(text).ok()?;
            let n = |name: &str| nb[name].as_u64().unwrap_or(0) as u32;
            Some(NotebookSummary {
                path: path.clone(),
                course: nb["course"].as_str().unwrap_or_default().into(),
                assignment: nb["assignment"].as_str().unwrap_or_default().into(),
                snapshot_at: nb["ms"].as_i64().and_then(time::from_millis),
                code_ok: n("code_ok"),
                display_outputs: n("display_outputs"),
                stream_outputs: n("stream_outputs"),
                error_outputs: n("error_outputs"),
                empty_cells: n("empty_cells"),
            })
        })
        .collect();
    list.sort_by(|a, b| a.path.cmp(&b.path));
    list
}

/// A stored problem result: `status|points|max_points|ms`.
fn problem(text: &str) -> Option<ProblemProgress> {
    let mut parts = text.split('|');
    Some(ProblemProgress {
        status: parts.next()?.parse().ok()?,
        points: parts.next()?.parse().ok()?,
        max_points: parts.next()?.parse().ok()?,
        at: parts.next()?.parse().ok().and_then(time::from_millis),
    })
}

/// The learner's problems per (course, assignment).
pub fn problems_by_assignment(
    raw: &Raw,
) -> BTreeMap<(String, String), HashMap<String, ProblemProgress>> {
    let mut out: BTreeMap<(String, String), HashMap<String, ProblemProgress>> = BTreeMap::new();
    for (name, text) in registers(&raw.problems) {
        let mut parts = name.split(SEP);
        let (Some(course), Some(assignment), Some(grade_id), Some(progress)) =
            (parts.next(), parts.next(), parts.next(), problem(text))
        else {
            continue;
        };
        out.entry((course.into(), assignment.into()))
            .or_default()
            .insert(grade_id.into(), progress);
    }
    out
}

fn assignments(raw: &Raw) -> Vec<AssignmentProgress> {
    problems_by_assignment(raw)
        .into_iter()
        .map(|((course, assignment), problems)| {
            let known = raw
                .known
                .get(&course)
                .map(|set| {
                    set.iter()
                        .filter(|p| p.split(SEP).next() == Some(assignment.as_str()))
                        .count()
                })
                .unwrap_or(0)
                .max(problems.len()) as u32;
            let passed = problems
                .values()
                .filter(|p| p.status == Status::Passed as i32)
                .count() as u32;
            AssignmentProgress {
                course,
                assignment,
                problems,
                passed,
                known,
                completion: ratio(passed, known),
            }
        })
        .collect()
}

/// `part / whole`, 0 when `whole` is 0.
pub fn ratio(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) / f64::from(whole)
    }
}

fn lab(raw: &Raw) -> LabSummary {
    let mut experiments: HashMap<String, LabKinds> = HashMap::new();
    for (name, n) in &raw.lab {
        let (experiment, kind) = name.split_once(SEP).unwrap_or((name, ""));
        experiments
            .entry(experiment.into())
            .or_default()
            .kinds
            .insert(kind.into(), n.parse().unwrap_or(0));
    }
    LabSummary {
        experiments,
        actions: count(&raw.counters, "lab_actions"),
        last_activity: at(&raw.counters, "lab_last"),
    }
}

fn lms(raw: &Raw) -> LmsSummary {
    let mut enrollments: Vec<Enrollment> = registers(&raw.enrollments)
        .map(|(course, text)| {
            let (active, mode) = text.split_once('|').unwrap_or((text, ""));
            let version = raw.enrollments.get(&format!("{course}|v"));
            Enrollment {
                course: course.clone(),
                active: active == "1",
                mode: mode.into(),
                at: version
                    .and_then(|v| v.split(':').next())
                    .and_then(|ms| ms.parse().ok())
                    .and_then(time::from_millis),
            }
        })
        .collect();
    enrollments.sort_by(|a, b| a.course.cmp(&b.course));
    LmsSummary {
        videos_played: count(&raw.counters, "video_play"),
        videos_paused: count(&raw.counters, "video_pause"),
        videos_ended: count(&raw.counters, "video_ended"),
        seconds_watched: seconds_watched(&raw.video),
        enrollments,
        assessments: assessments(raw),
        registrations: count(&raw.counters, "registrations"),
    }
}

/// For each play, the position at the same video's next marker less the position it started
/// at (never negative); where a position is unknown, the time between the two by the clock.
pub fn seconds_watched(markers: &[(String, f64)]) -> f64 {
    // (when, marker, position) by video
    type Marks<'a> = Vec<(f64, &'a str, Option<f64>)>;
    let mut by_video: HashMap<&str, Marks<'_>> = HashMap::new();
    for (member, score) in markers {
        let mut parts = member.split(SEP);
        let (Some(video), Some(kind), Some(position)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        by_video
            .entry(video)
            .or_default()
            .push((*score, kind, position.parse().ok()));
    }
    let mut total = 0.0;
    for marks in by_video.values_mut() {
        marks.sort_by(|a, b| a.0.total_cmp(&b.0));
        for pair in marks.windows(2) {
            let ((at, kind, from), (next_at, next_kind, to)) = (pair[0], pair[1]);
            if kind != "play" {
                continue;
            }
            total += match (from, to) {
                (Some(from), Some(to)) => (to - from).max(0.0),
                // a player that sends no positions (the LMS player's own `video` events): the
                // time until it stopped, by the clock; a second play means the stop was lost
                _ if next_kind != "play" => ((next_at - at) / 1000.0).max(0.0),
                _ => 0.0,
            };
        }
    }
    total
}

fn assessments(raw: &Raw) -> Vec<AssessmentBest> {
    let mut names: Vec<&str> = raw
        .assessments
        .keys()
        .filter_map(|f| f.strip_suffix("|best"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let (course, id) = name.split_once(SEP).unwrap_or(("", name));
            AssessmentBest {
                assessment_id: id.into(),
                course: course.into(),
                best_score: num(&raw.assessments, &format!("{name}|best")),
                max_score: num(&raw.assessments, &format!("{name}|max")),
                attempts: count(&raw.assessments, &format!("{name}|n")),
            }
        })
        .collect()
}

fn energy(raw: &Raw) -> Vec<EnergySummary> {
    let mut clouds: BTreeMap<&str, EnergySummary> = BTreeMap::new();
    for (name, value) in &raw.energy {
        let parts: Vec<&str> = name.split('|').collect();
        match parts.as_slice() {
            [cloud, "kw"] => {
                let entry = clouds.entry(cloud).or_default();
                entry.latest_demand_kw = value.parse().unwrap_or(0.0);
            }
            [cloud, "kw", "v"] => {
                let ms = value.split(':').next().and_then(|ms| ms.parse().ok());
                clouds.entry(cloud).or_default().latest_at = ms.and_then(time::from_millis);
            }
            [cloud, day, "hi"] => {
                let low = num(&raw.energy, &format!("{cloud}|{day}|lo"));
                let high: f64 = value.parse().unwrap_or(0.0);
                clouds
                    .entry(cloud)
                    .or_default()
                    .kwh_delivered_per_day
                    .insert(day.to_string(), high - low);
            }
            _ => {}
        }
    }
    clouds
        .into_iter()
        .map(|(cloud, mut summary)| {
            summary.cloud_id = cloud.to_string();
            summary
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_before_inside_a_millisecond_leaves_that_millisecond_in() {
        let at = |text: &str| chrono::DateTime::parse_from_rfc3339(text).unwrap().to_utc();
        assert_eq!(before_ms(at("2026-11-24T16:30:18.123Z")), 1_795_537_818_123);
        assert_eq!(
            before_ms(at("2026-11-24T16:30:18.123456Z")),
            1_795_537_818_124
        );
        assert_eq!(before_ms(at("2026-11-24T16:30:18Z")), 1_795_537_818_000);
    }

    #[test]
    fn seconds_watched_pairs_plays_with_the_next_marker() {
        let m = |video: &str, kind: &str, pos: f64, id: &str| {
            format!("{video}{SEP}{kind}{SEP}{pos}{SEP}{id}")
        };
        let markers = vec![
            (m("v1", "play", 0.0, "a"), 1_000.0),
            (m("v1", "pause", 30.0, "b"), 31_000.0),
            (m("v2", "play", 10.0, "c"), 2_000.0),
            (m("v1", "play", 30.0, "d"), 40_000.0),
            (m("v1", "ended", 90.0, "e"), 100_000.0),
            (m("v2", "seek", 5.0, "f"), 3_000.0),
        ];
        assert_eq!(seconds_watched(&markers), 30.0 + 60.0);
    }

    #[test]
    fn seconds_watched_without_positions_go_by_the_clock() {
        let m = |kind: &str, pos: &str, id: &str| format!("v1{SEP}{kind}{SEP}{pos}{SEP}{id}");
        let markers = vec![
            (m("play", "", "a"), 1_000.0),
            (m("pause", "", "b"), 46_000.0),
            // a play whose stop was lost counts nothing
            (m("play", "", "c"), 100_000.0),
            (m("play", "", "d"), 7_200_000.0),
            (m("ended", "", "e"), 7_212_500.0),
            // a known position on one side only: by the clock too
            (m("play", "10", "f"), 8_000_000.0),
            (m("seek", "", "g"), 8_002_000.0),
        ];
        assert_eq!(seconds_watched(&markers), 45.0 + 12.5 + 2.0);
    }
}
