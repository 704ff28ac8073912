//! Answers a [`Query`] from what [`crate::fold`] keeps. Without `actor` in the query, from the
//! shared pre-aggregated cells of each collection-hour (168 hashes for a 7-day query, in one
//! round trip; from memory where an hour has not changed since it was last read, see
//! [`crate::cache`]): the hourly cells when every interval edge falls on an hour, the per-minute
//! cells otherwise. With `actor eq`/`in` (every student query), from those learners' own events of the
//! collection (one sorted-set range each, exact times); a count_unique of `actor` with nothing
//! else asked and hourly edges, from each collection-hour's set of actors; with `actor` otherwise
//! (group_by, count_unique with filters, other operators), the actors active in the timeframe's
//! hours first, then their events.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use serde::ser::SerializeMap;
use serde_json::{Map, Value, json};

use super::{
    KeenError,
    query::{Analysis, Operator, Query},
    timeframe::{edges, keen_time},
};
use crate::{
    api::QueryError,
    cache::{Cache, Kind, Wanted},
    fold,
    index::ACTOR,
    keys,
    store::{Fast, Store},
};

const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;

/// Where the cells come from.
#[derive(Debug, Clone, PartialEq)]
enum Plan {
    /// The shared cells of each collection-hour.
    Shared,
    /// These learners' own cells.
    Learners(Vec<String>),
    /// Every learner active in each hour.
    AllLearners,
}

fn plan(query: &Query) -> Plan {
    let mut named: Option<HashSet<String>> = None;
    let mut other_actor_use =
        query.group_by.iter().any(|g| g == ACTOR) || query.target.as_deref() == Some(ACTOR);
    for filter in query.filters.iter().filter(|f| f.property == ACTOR) {
        let listed: Option<HashSet<String>> = match (filter.operator, &filter.value) {
            (Operator::Eq, Value::String(one)) => Some(HashSet::from([one.clone()])),
            (Operator::In, Value::Array(list)) => Some(
                list.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
            ),
            _ => None,
        };
        match listed {
            Some(set) => {
                named = Some(match named {
                    None => set,
                    Some(prev) => prev.intersection(&set).cloned().collect(),
                })
            }
            None => other_actor_use = true,
        }
    }
    match named {
        Some(set) => {
            let mut list: Vec<String> = set.into_iter().collect();
            list.sort();
            Plan::Learners(list)
        }
        None if other_actor_use => Plan::AllLearners,
        None => Plan::Shared,
    }
}

/// Running totals of one (interval, group).
#[derive(Debug, Default)]
struct Acc {
    count: u64,
    sum: f64,
    n: u64,
    lo: Option<f64>,
    hi: Option<f64>,
    /// Values seen (count_unique): shared, so a union over intervals or groups copies no text.
    distinct: HashSet<Arc<str>, Fast>,
}

impl Acc {
    /// Adds `other`'s totals (distinct values as a union).
    fn absorb(&mut self, other: &Acc) {
        self.count += other.count;
        self.sum += other.sum;
        self.n += other.n;
        self.lo = match (self.lo, other.lo) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.hi = match (self.hi, other.hi) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.distinct.extend(other.distinct.iter().cloned());
    }
}

/// Runs `query`; the answer is Keen's body (`{"result": ...}`), as JSON. An answer of more
/// than `max_values` values (intervals × groups) is refused as it is folded, before it is built.
pub async fn run(
    store: &Store,
    cache: &Cache,
    query: &Query,
    max_values: usize,
) -> Result<Vec<u8>, QueryError> {
    let edges_ms: Vec<i64> = edges(query.span, query.interval)
        .iter()
        .map(|t| t.timestamp_millis())
        .collect();
    let hourly = edges_ms.iter().all(|ms| ms % HOUR_MS == 0);
    let first_hour = keys::hour_of(edges_ms[0]);
    let last_hour = keys::hour_of(edges_ms[edges_ms.len() - 1] - 1);
    let hours: Vec<i64> = (first_hour..=last_hour).collect();
    let suffix = if hourly { "h" } else { "m" };

    let (from, to) = (edges_ms[0], edges_ms[edges_ms.len() - 1] - 1);
    // the current hour (and later ones) change while events arrive
    let now_hour = keys::hour_of(chrono::Utc::now().timestamp_millis());
    let mut engine = Engine::new(query, &edges_ms, hourly, max_values);
    if hourly && distinct_actors_only(query) {
        // each hour's actors are kept as a set: no learner's events need to be read
        let generation = cache.generation();
        let sets = hour_actors(store, cache, &query.collection, &hours, now_hour).await?;
        return Ok(answer_once(cache, query, &sets, generation, || {
            for (set, &hour) in sets.iter().zip(&hours) {
                engine.add_actors(set.iter(), hour);
            }
            engine.to_json()
        })?);
    }
    let actors = match plan(query) {
        Plan::Shared => {
            // counts for count and count_unique, the measure's own cells otherwise
            let measure = match query.analysis {
                Analysis::Count | Analysis::CountUnique => None,
                _ => query.target.as_deref(),
            };
            let suffix = match measure {
                Some(m) => keys::measure_cells(suffix, m),
                None => suffix.to_string(),
            };
            let wanted: Vec<Wanted> = hours
                .iter()
                .map(|&hour| Wanted::hour(&query.collection, hour, &suffix, Kind::Hash, now_hour))
                .collect();
            // what the answer is computed from is read after this
            let generation = cache.generation();
            let cells = cache.read(store, &wanted).await?;
            return Ok(answer_once(cache, query, &cells, generation, || {
                for (strings, &hour) in cells.iter().zip(&hours) {
                    engine.add(strings.pairs(), hour);
                }
                engine.to_json()
            })?);
        }
        Plan::Learners(actors) => actors,
        Plan::AllLearners => {
            active_learners(store, cache, &query.collection, &hours, now_hour).await?
        }
    };
    let pipelines: Vec<redis::Pipeline> = actors
        .iter()
        .map(|actor| {
            let mut pipe = redis::pipe();
            pipe.cmd("ZRANGEBYSCORE")
                .arg(keys::learner_events(actor, &query.collection))
                .arg(from)
                .arg(to)
                .arg("WITHSCORES");
            pipe
        })
        .collect();
    let answers = store.query_groups(&pipelines).await?;
    for (answer, actor) in answers.into_iter().zip(&actors) {
        for value in answer {
            let events: Vec<(String, f64)> =
                redis::from_redis_value(value).map_err(redis::RedisError::from)?;
            for (member, ms) in events {
                if let Some((tuple, measures)) = fold::parse_analysis_member(&member) {
                    engine.add_event(ms as i64, tuple, &measures, actor);
                }
            }
        }
    }
    Ok(engine.to_json()?)
}

/// The answer to `query` from `read` (what it is computed from, read at `generation`): the same
/// query over hours at the same versions has the same answer, so it comes from memory when one
/// was kept; otherwise `fold` computes it and it is kept.
fn answer_once(
    cache: &Cache,
    query: &Query,
    read: &[Arc<crate::cache::Strings>],
    generation: u64,
    fold: impl FnOnce() -> Result<Vec<u8>, KeenError>,
) -> Result<Vec<u8>, KeenError> {
    let versions: Vec<i64> = read.iter().map(|c| c.version()).collect();
    let key = format!("{query:?}");
    if let Some(body) = cache.answer(&key, &versions) {
        return Ok(body);
    }
    let body = fold()?;
    cache.keep_answer(&key, versions, &body, generation);
    Ok(body)
}

/// A count_unique of `actor` and nothing else (no filter, no group_by): the learners active in
/// each interval, which the collection-hours' actor sets hold.
fn distinct_actors_only(query: &Query) -> bool {
    query.analysis == Analysis::CountUnique
        && query.target.as_deref() == Some(ACTOR)
        && query.filters.is_empty()
        && query.group_by.is_empty()
}

/// The actors of each of `hours` (a set each).
async fn hour_actors(
    store: &Store,
    cache: &Cache,
    collection: &str,
    hours: &[i64],
    now_hour: i64,
) -> redis::RedisResult<Vec<Arc<crate::cache::Strings>>> {
    let wanted: Vec<Wanted> = hours
        .iter()
        .map(|&hour| Wanted::hour(collection, hour, "u", Kind::Set, now_hour))
        .collect();
    cache.read(store, &wanted).await
}

/// The learners active in any of `hours`, sorted.
async fn active_learners(
    store: &Store,
    cache: &Cache,
    collection: &str,
    hours: &[i64],
    now_hour: i64,
) -> redis::RedisResult<Vec<String>> {
    let sets = hour_actors(store, cache, collection, hours, now_hour).await?;
    let active: std::collections::BTreeSet<&str> = sets.iter().flat_map(|s| s.iter()).collect();
    Ok(active.into_iter().map(str::to_string).collect())
}

/// Folds cells into per-(interval, group) totals.
struct Engine<'q> {
    query: &'q Query,
    edges: &'q [i64],
    hourly: bool,
    tuples: HashMap<String, Option<Map<String, Value>>, Fast>,
    /// The group of each tuple of the shared cells (`None`: filtered out): a 7-day query meets
    /// the same few hundred tuples in thousands of fields.
    shared_groups: HashMap<String, Option<usize>, Fast>,
    /// Totals by (interval, group id).
    totals: BTreeMap<(usize, usize), Acc>,
    /// Each group's key (its values as JSON, the answer's order), id and values.
    groups: BTreeMap<String, (usize, Vec<Value>)>,
    /// Most values the answer may hold (intervals × groups), and whether a group was dropped
    /// for it (the answer is then refused, never given short).
    max_values: usize,
    too_large: bool,
}

impl<'q> Engine<'q> {
    fn new(query: &'q Query, edges: &'q [i64], hourly: bool, max_values: usize) -> Self {
        Self {
            query,
            edges,
            hourly,
            tuples: HashMap::default(),
            shared_groups: HashMap::default(),
            totals: BTreeMap::new(),
            groups: BTreeMap::new(),
            max_values,
            too_large: false,
        }
    }

    /// Intervals of the answer (1 without `interval`).
    fn intervals(&self) -> usize {
        if self.query.interval.is_some() {
            self.edges.len() - 1
        } else {
            1
        }
    }

    /// The interval holding a bucket that starts at `ms`.
    fn interval(&self, ms: i64) -> Option<usize> {
        if ms < self.edges[0] || ms >= self.edges[self.edges.len() - 1] {
            return None;
        }
        Some(self.edges.partition_point(|&edge| edge <= ms) - 1)
    }

    /// Adds a collection-hour's shared cells (hourly, or per minute when not `hourly`).
    fn add<'v>(&mut self, cells: impl IntoIterator<Item = (&'v str, &'v str)>, hour: i64) {
        let measure = self.query.target.clone().unwrap_or_default();
        // hourly cells all fall in the hour's interval
        let hour_interval = self.hourly.then(|| self.interval(hour * HOUR_MS));
        if hour_interval == Some(None) {
            return;
        }
        for (field, value) in cells {
            let Some((prefix, rest)) = field.split_once('|') else {
                continue;
            };
            let interval = match hour_interval {
                Some(interval) => interval,
                None => {
                    self.interval(hour * HOUR_MS + prefix.parse::<i64>().unwrap_or(0) * MINUTE_MS)
                }
            };
            let Some(interval) = interval else {
                continue;
            };
            let (stat, tuple) = match rest.split_once('|') {
                Some(("c", tuple)) => ("c", tuple),
                Some((stat, more)) => match more.split_once('|') {
                    Some((m, tuple)) if m == measure => (stat, tuple),
                    _ => continue,
                },
                None => continue,
            };
            let group = match self.shared_groups.get(tuple) {
                Some(&group) => group,
                None => {
                    let group = self.group_of(tuple, None);
                    self.shared_groups.insert(tuple.to_string(), group);
                    group
                }
            };
            let Some(group) = group else {
                continue;
            };
            let number: f64 = value.parse().unwrap_or(0.0);
            let distinct = match (stat, self.query.analysis) {
                ("c", Analysis::CountUnique) if number > 0.0 => self
                    .value_of(tuple, None, &measure)
                    .map(|v| v.to_string().into()),
                _ => None,
            };
            let acc = self.totals.entry((interval, group)).or_default();
            match stat {
                "c" => acc.count += number as u64,
                "s" => acc.sum += number,
                "n" => acc.n += number as u64,
                "lo" => acc.lo = Some(acc.lo.map_or(number, |lo| lo.min(number))),
                "hi" => acc.hi = Some(acc.hi.map_or(number, |hi| hi.max(number))),
                _ => {}
            }
            if let Some(value) = distinct {
                acc.distinct.insert(value);
            }
        }
    }

    /// Adds the actors of the collection-hour starting at `hour` (a count_unique of `actor`
    /// with hourly edges and nothing else asked).
    fn add_actors<'v>(&mut self, actors: impl IntoIterator<Item = &'v str>, hour: i64) {
        let Some(interval) = self.interval(hour * HOUR_MS) else {
            return;
        };
        let Some(group) = self.group_of("{}", None) else {
            return;
        };
        let acc = self.totals.entry((interval, group)).or_default();
        // only their number is used, and a query counts actors this way alone
        acc.distinct.extend(actors.into_iter().map(Arc::from));
    }

    /// Adds one of `actor`'s events (occurred at `ms`): exact times, so any interval edge works.
    fn add_event(&mut self, ms: i64, tuple: &str, measures: &Map<String, Value>, actor: &str) {
        let Some(interval) = self.interval(ms) else {
            return;
        };
        let Some(group) = self.group_of(tuple, Some(actor)) else {
            return;
        };
        let measure = self.query.target.clone().unwrap_or_default();
        let distinct = match self.query.analysis {
            Analysis::CountUnique => self
                .value_of(tuple, Some(actor), &measure)
                .map(|v| v.to_string().into()),
            _ => None,
        };
        let value = measures.get(&measure).and_then(Value::as_f64);
        let acc = self.totals.entry((interval, group)).or_default();
        acc.count += 1;
        if let Some(v) = value {
            acc.sum += v;
            acc.n += 1;
            acc.lo = Some(acc.lo.map_or(v, |lo| lo.min(v)));
            acc.hi = Some(acc.hi.map_or(v, |hi| hi.max(v)));
        }
        if let Some(value) = distinct {
            acc.distinct.insert(value);
        }
    }

    fn tuple(&mut self, tuple: &str) -> Option<&Map<String, Value>> {
        self.tuples
            .entry(tuple.to_string())
            .or_insert_with(|| serde_json::from_str(tuple).ok())
            .as_ref()
    }

    fn value_of(&mut self, tuple: &str, actor: Option<&str>, property: &str) -> Option<Value> {
        if property == ACTOR {
            return actor.map(|a| Value::String(a.to_string()));
        }
        self.tuple(tuple)?.get(property).cloned()
    }

    /// The group id of a cell or event, or `None` when a filter drops it.
    fn group_of(&mut self, tuple: &str, actor: Option<&str>) -> Option<usize> {
        let query: &'q Query = self.query;
        for filter in &query.filters {
            let value = self.value_of(tuple, actor, &filter.property);
            if !filter.matches(value.as_ref()) {
                return None;
            }
        }
        let values: Vec<Value> = query
            .group_by
            .iter()
            .map(|g| self.value_of(tuple, actor, g).unwrap_or(Value::Null))
            .collect();
        let key = Value::Array(values.clone()).to_string();
        if let Some((id, _)) = self.groups.get(&key) {
            return Some(*id);
        }
        let next = self.groups.len();
        if (next + 1).saturating_mul(self.intervals()) > self.max_values {
            self.too_large = true;
            return None;
        }
        self.groups.insert(key, (next, values));
        Some(next)
    }

    /// Keen's value of one (interval, group) total.
    fn value(&self, acc: &Acc) -> Value {
        match self.query.analysis {
            Analysis::Count => json!(acc.count),
            Analysis::CountUnique => json!(acc.distinct.len()),
            Analysis::Sum => number(acc.sum),
            Analysis::Average if acc.n > 0 => number(acc.sum / acc.n as f64),
            Analysis::Minimum => acc.lo.map_or(Value::Null, number),
            Analysis::Maximum => acc.hi.map_or(Value::Null, number),
            Analysis::Average => Value::Null,
        }
    }

    /// The totals of one interval (or all) by group id, in one pass over them: totals over
    /// groups for count_unique must union the distinct values, not add counts. One interval's
    /// totals are a range of the map (a 7-day hourly query asks 168 × groups times: a scan of
    /// every total each time was quadratic, as was one scan per group).
    fn by_group(&self, interval: Option<usize>) -> Vec<Acc> {
        let mut out: Vec<Acc> = std::iter::repeat_with(Acc::default)
            .take(self.groups.len())
            .collect();
        for ((_, g), acc) in self.totals_of(interval) {
            out[*g].absorb(acc);
        }
        out
    }

    /// The totals of one interval (or all) over every group.
    fn merged(&self, interval: Option<usize>) -> Acc {
        let mut out = Acc::default();
        for (_, acc) in self.totals_of(interval) {
            out.absorb(acc);
        }
        out
    }

    fn totals_of(
        &self,
        interval: Option<usize>,
    ) -> Box<dyn Iterator<Item = (&(usize, usize), &Acc)> + '_> {
        match interval {
            Some(i) => Box::new(self.totals.range((i, 0)..(i + 1, 0))),
            None => Box::new(self.totals.iter()),
        }
    }

    /// The start and end of interval `i`, as Keen writes them.
    fn timeframe(&self, i: usize) -> (String, String) {
        let zone = self.query.span.zone;
        let at = |ms: i64| {
            keen_time(zone.at(chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()))
        };
        (at(self.edges[i]), at(self.edges[i + 1]))
    }

    /// Keen's body (`{"result": ...}`) as JSON, written straight from the totals: a 7-day hourly
    /// group_by answer is a thousand objects, and building them as a `Value` tree first, then
    /// writing that, was a third of the query's CPU.
    fn to_json(&self) -> Result<Vec<u8>, KeenError> {
        if self.too_large {
            return Err(KeenError::bad_request(format!(
                "the answer would hold more than {} values ({} intervals × more than {} groups), more than ANALYSIS_MAX_RESULT_VALUES allows; ask for fewer intervals, a narrower group_by or filters",
                self.max_values,
                self.intervals(),
                self.groups.len(),
            )));
        }
        Ok(serde_json::to_vec(&Body(self)).expect("a Keen answer serialises"))
    }

    #[cfg(test)]
    fn result(&self) -> Value {
        serde_json::to_value(Body(self)).expect("a Keen answer serialises")
    }
}

/// Keen's body, `{"result": ...}`, in its four shapes (scalar, group_by, interval, interval with
/// group_by). Object keys are written in sorted order, as a `serde_json::Map` writes them.
struct Body<'e, 'q>(&'e Engine<'q>);

/// Every interval's object, in order.
struct Intervals<'e, 'q>(&'e Engine<'q>);

/// One interval's `{"timeframe": {"end", "start"}, "value": ...}`.
struct IntervalOf<'e, 'q>(&'e Engine<'q>, usize);

/// The group objects of one interval (or of the whole timeframe).
struct GroupsIn<'e, 'q>(&'e Engine<'q>, Option<usize>);

impl serde::Serialize for Body<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let engine = self.0;
        let mut body = s.serialize_map(Some(1))?;
        let grouped = !engine.query.group_by.is_empty();
        match (engine.query.interval.is_some(), grouped) {
            (false, false) => {
                body.serialize_entry("result", &engine.value(&engine.merged(None)))?
            }
            (false, true) => body.serialize_entry("result", &GroupsIn(engine, None))?,
            (true, _) => body.serialize_entry("result", &Intervals(engine))?,
        }
        body.end()
    }
}

impl serde::Serialize for Intervals<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let engine = self.0;
        s.collect_seq((0..engine.edges.len() - 1).map(|i| IntervalOf(engine, i)))
    }
}

impl serde::Serialize for IntervalOf<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (engine, i) = (self.0, self.1);
        let (start, end) = engine.timeframe(i);
        let mut object = s.serialize_map(Some(2))?;
        object.serialize_entry(
            "timeframe",
            &BTreeMap::from([("end", end), ("start", start)]),
        )?;
        if engine.query.group_by.is_empty() {
            object.serialize_entry("value", &engine.value(&engine.merged(Some(i))))?;
        } else {
            object.serialize_entry("value", &GroupsIn(engine, Some(i)))?;
        }
        object.end()
    }
}

impl serde::Serialize for GroupsIn<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (engine, interval) = (self.0, self.1);
        let totals = engine.by_group(interval);
        s.collect_seq(engine.groups.values().map(|(id, values)| {
            let result = engine.value(&totals[*id]);
            // each group_by property and `result` (which wins a clash, as it did in a map)
            let mut object: BTreeMap<&str, Value> = engine
                .query
                .group_by
                .iter()
                .map(String::as_str)
                .zip(values.iter().cloned())
                .collect();
            object.insert("result", result);
            object
        }))
    }
}

/// A number as Keen writes it: whole numbers without a fraction.
fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        json!(value as i64)
    } else {
        json!(value)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::{
        index::Index,
        keen::query::{Params, parse},
    };

    fn query(body: Value, analysis: &str) -> Query {
        let params = Params(body.as_object().unwrap().clone());
        parse(analysis, &params, &Index::default(), Utc::now()).unwrap()
    }

    #[test]
    fn the_plan_follows_the_actor() {
        let base = json!({"event_collection": "shim.ruby_run", "timeframe": "this_1_days"});
        assert_eq!(plan(&query(base.clone(), "count")), Plan::Shared);
        let mut own = base.clone();
        own["filters"] =
            json!([{"property_name": "actor", "operator": "eq", "property_value": "a1"}]);
        assert_eq!(
            plan(&query(own, "count")),
            Plan::Learners(vec!["a1".into()])
        );
        let mut unique = base.clone();
        unique["target_property"] = json!("actor");
        assert_eq!(plan(&query(unique, "count_unique")), Plan::AllLearners);
    }

    #[test]
    fn a_learners_events_fold_at_their_exact_times() {
        let q = query(
            json!({"event_collection": "shim.ruby_run",
                   "timeframe": {"start": "2026-11-25T08:00:00Z", "end": "2026-11-25T08:03:00Z"},
                   "interval": "minutely", "target_property": "rubyRun.durationMs",
                   "filters": [{"property_name": "rubyRun.error.className", "operator": "ne", "property_value": "TypeError"}]}),
            "average",
        );
        let edges = edges_ms(&q);
        let mut engine = Engine::new(&q, &edges, false, usize::MAX);
        let member = |class: &str, ms: f64| {
            let tuple = json!({ "rubyRun.error.className": class }).to_string();
            String::from_utf8(fold::analysis_member(
                "e",
                &tuple,
                &[("rubyRun.durationMs", ms)],
            ))
            .unwrap()
        };
        let start = edges[0];
        for (at, class, ms) in [
            (start + 59_999, "NameError", 10.0),
            (start + 60_000, "NameError", 20.0),
            (start + 61_000, "NameError", 40.0),
            (start + 62_000, "TypeError", 1000.0),
            (start + 180_000, "NameError", 99.0),
        ] {
            let text = member(class, ms);
            let (tuple, measures) = fold::parse_analysis_member(&text).unwrap();
            engine.add_event(at, tuple, &measures, "a1");
        }
        let values: Vec<Value> = engine.result()["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["value"].clone())
            .collect();
        assert_eq!(values, [json!(10), json!(30), Value::Null]);
    }

    /// A count over two hours, hourly, grouped by error class.
    fn two_hours_by_class() -> Query {
        query(
            json!({"event_collection": "shim.ruby_run",
                   "timeframe": {"start": "2026-11-25T08:00:00Z", "end": "2026-11-25T10:00:00Z"},
                   "interval": "hourly", "group_by": "rubyRun.error.className"}),
            "count",
        )
    }

    fn edges_ms(q: &Query) -> Vec<i64> {
        edges(q.span, q.interval)
            .iter()
            .map(|t| t.timestamp_millis())
            .collect()
    }

    #[test]
    fn cells_fold_into_keen_shapes() {
        let q = two_hours_by_class();
        let edges = edges_ms(&q);
        let mut engine = Engine::new(&q, &edges, true, usize::MAX);
        let hour = edges[0] / HOUR_MS;
        let cells = [
            (r#"|c|{"rubyRun.error.className":"NameError"}"#, "2"),
            (r#"|c|{"rubyRun.error.className":"TypeError"}"#, "1"),
            (
                r#"|s|rubyRun.durationMs|{"rubyRun.error.className":"TypeError"}"#,
                "9",
            ),
        ];
        engine.add(cells, hour);
        engine.add(cells, hour + 1);
        // the hour after the timeframe: outside every interval
        engine.add(cells, hour + 2);
        let result = engine.result();
        assert_eq!(result["result"].as_array().unwrap().len(), 2);
        assert_eq!(
            result["result"][1],
            json!({"timeframe": {"start": "2026-11-25T09:00:00.000Z", "end": "2026-11-25T10:00:00.000Z"},
                   "value": [{"rubyRun.error.className": "NameError", "result": 2},
                             {"rubyRun.error.className": "TypeError", "result": 1}]})
        );
    }

    #[test]
    fn an_answer_over_its_values_is_refused_not_cut_short() {
        let q = two_hours_by_class();
        let edges = edges_ms(&q);
        let cells = |classes: &[&str]| -> Vec<(String, String)> {
            classes
                .iter()
                .map(|class| {
                    let tuple = json!({ "rubyRun.error.className": class });
                    (format!("|c|{tuple}"), "1".to_string())
                })
                .collect()
        };
        let hour = edges[0] / HOUR_MS;
        // 2 intervals × 3 groups: 6 values
        for (max, refused) in [(6, false), (5, true)] {
            let mut engine = Engine::new(&q, &edges, true, max);
            let cells = cells(&["A", "B", "C"]);
            engine.add(cells.iter().map(|(f, v)| (f.as_str(), v.as_str())), hour);
            match engine.to_json() {
                Ok(body) => {
                    assert!(!refused);
                    let body: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(body["result"][0]["value"].as_array().unwrap().len(), 3);
                    assert_eq!(body["result"][1]["value"][2]["result"], json!(0));
                }
                Err(e) => {
                    assert!(refused, "{e}");
                    assert_eq!(e.status, 400);
                    assert!(e.message.contains("ANALYSIS_MAX_RESULT_VALUES"), "{e}");
                }
            }
        }
    }
}
