//! Answers a [`Query`] from the pre-aggregated cells of [`crate::fold`]: the hourly cells when
//! every interval edge falls on an hour, the per-minute cells otherwise. Without `actor` in the
//! query, the shared cells of each collection-hour are read (168 hashes for a 7-day query, in one
//! round trip); with `actor eq`/`in` (every student query), only those learners' own cells; with
//! `actor` otherwise (group_by, count_unique, other operators), the actors of each hour first,
//! then their cells.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value, json};

use super::{
    query::{Analysis, Filter, Operator, Query},
    timeframe::{edges, keen_time},
};
use crate::{index::ACTOR, keys, store::Store};

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
    distinct: HashSet<String>,
}

/// Runs `query`; the answer is Keen's body (`{"result": ...}`).
pub async fn run(store: &Store, query: &Query) -> redis::RedisResult<Value> {
    let edges_ms: Vec<i64> = edges(query.span, query.interval)
        .iter()
        .map(|t| t.timestamp_millis())
        .collect();
    let hourly = edges_ms.iter().all(|ms| ms % HOUR_MS == 0);
    let first_hour = keys::hour_of(edges_ms[0]);
    let last_hour = keys::hour_of(edges_ms[edges_ms.len() - 1] - 1);
    let hours: Vec<i64> = (first_hour..=last_hour).collect();
    let suffix = if hourly { "h" } else { "m" };

    // (actor, hour) of each hash read, and the pipelines
    let mut sources: Vec<Vec<(Option<String>, i64)>> = Vec::new();
    let mut pipelines = Vec::new();
    let learner_pipeline = |actor: &str, hours: &[i64]| {
        let mut pipe = redis::pipe();
        for &hour in hours {
            let key = if hourly {
                keys::learner_cells(actor, &query.collection, hour)
            } else {
                keys::learner_minute_cells(actor, &query.collection, hour)
            };
            pipe.hgetall(key);
        }
        pipe
    };
    match plan(query) {
        Plan::Shared => {
            for &hour in &hours {
                let mut pipe = redis::pipe();
                pipe.hgetall(format!(
                    "{}:{suffix}",
                    keys::aggregate(&query.collection, hour)
                ));
                pipelines.push(pipe);
                sources.push(vec![(None, hour)]);
            }
        }
        Plan::Learners(actors) => {
            for actor in actors {
                pipelines.push(learner_pipeline(&actor, &hours));
                sources.push(hours.iter().map(|&h| (Some(actor.clone()), h)).collect());
            }
        }
        Plan::AllLearners => {
            let active = active_learners(store, &query.collection, &hours).await?;
            for (actor, hours) in active {
                pipelines.push(learner_pipeline(&actor, &hours));
                sources.push(hours.iter().map(|&h| (Some(actor.clone()), h)).collect());
            }
        }
    }
    let answers = store.query_groups(&pipelines).await?;
    let mut engine = Engine::new(query, &edges_ms, hourly);
    for (answer, sources) in answers.into_iter().zip(sources) {
        for (value, (actor, hour)) in answer.into_iter().zip(sources) {
            let cells: HashMap<String, String> = redis::from_redis_value(value)?;
            engine.add(&cells, actor.as_deref(), hour);
        }
    }
    Ok(engine.result())
}

/// The learners active in each hour, as learner → hours.
async fn active_learners(
    store: &Store,
    collection: &str,
    hours: &[i64],
) -> redis::RedisResult<BTreeMap<String, Vec<i64>>> {
    let pipelines: Vec<redis::Pipeline> = hours
        .iter()
        .map(|&hour| {
            let mut pipe = redis::pipe();
            pipe.smembers(format!("{}:u", keys::aggregate(collection, hour)));
            pipe
        })
        .collect();
    let answers = store.query_groups(&pipelines).await?;
    let mut active: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (answer, &hour) in answers.into_iter().zip(hours) {
        for value in answer {
            let actors: Vec<String> = redis::from_redis_value(value)?;
            for actor in actors {
                active.entry(actor).or_default().push(hour);
            }
        }
    }
    Ok(active)
}

/// Folds cells into per-(interval, group) totals.
struct Engine<'q> {
    query: &'q Query,
    edges: &'q [i64],
    hourly: bool,
    tuples: HashMap<String, Option<Map<String, Value>>>,
    totals: BTreeMap<(usize, String), Acc>,
    groups: BTreeMap<String, Vec<Value>>,
}

impl<'q> Engine<'q> {
    fn new(query: &'q Query, edges: &'q [i64], hourly: bool) -> Self {
        Self {
            query,
            edges,
            hourly,
            tuples: HashMap::new(),
            totals: BTreeMap::new(),
            groups: BTreeMap::new(),
        }
    }

    /// The interval holding a bucket that starts at `ms`.
    fn interval(&self, ms: i64) -> Option<usize> {
        if ms < self.edges[0] || ms >= self.edges[self.edges.len() - 1] {
            return None;
        }
        Some(self.edges.partition_point(|&edge| edge <= ms) - 1)
    }

    fn add(&mut self, cells: &HashMap<String, String>, actor: Option<&str>, hour: i64) {
        let measure = self.query.target.clone().unwrap_or_default();
        for (field, value) in cells {
            let Some((prefix, rest)) = field.split_once('|') else {
                continue;
            };
            let bucket = if self.hourly {
                hour * HOUR_MS
            } else {
                hour * HOUR_MS + prefix.parse::<i64>().unwrap_or(0) * MINUTE_MS
            };
            let Some(interval) = self.interval(bucket) else {
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
            let Some(group) = self.group_of(tuple, actor) else {
                continue;
            };
            let number: f64 = value.parse().unwrap_or(0.0);
            let distinct = match (stat, self.query.analysis) {
                ("c", Analysis::CountUnique) if number > 0.0 => {
                    self.value_of(tuple, actor, &measure).map(|v| v.to_string())
                }
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

    /// The group of a cell (its group_by values as JSON), or `None` when a filter drops it.
    fn group_of(&mut self, tuple: &str, actor: Option<&str>) -> Option<String> {
        let filters: Vec<Filter> = self.query.filters.clone();
        for filter in &filters {
            let value = self.value_of(tuple, actor, &filter.property);
            if !filter.matches(value.as_ref()) {
                return None;
            }
        }
        let group_by = self.query.group_by.clone();
        let values: Vec<Value> = group_by
            .iter()
            .map(|g| self.value_of(tuple, actor, g).unwrap_or(Value::Null))
            .collect();
        let key = Value::Array(values.clone()).to_string();
        self.groups.entry(key.clone()).or_insert(values);
        Some(key)
    }

    fn value(&self, acc: Option<&Acc>) -> Value {
        let empty = Acc::default();
        let acc = acc.unwrap_or(&empty);
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

    /// One group's object: each group_by property and `result`.
    fn group_object(&self, key: &str, result: Value) -> Value {
        let mut object = Map::new();
        for (name, value) in self.query.group_by.iter().zip(&self.groups[key]) {
            object.insert(name.clone(), value.clone());
        }
        object.insert("result".into(), result);
        Value::Object(object)
    }

    /// Totals over groups for count_unique must union the distinct values, not add counts.
    /// One interval's totals are a range of the map (a 7-day hourly query asks 168 × groups
    /// times: a scan of every total each time was quadratic).
    fn merged(&self, interval: Option<usize>, group: Option<&str>) -> Acc {
        let mut out = Acc::default();
        let totals: Box<dyn Iterator<Item = (&(usize, String), &Acc)>> = match interval {
            Some(i) => Box::new(
                self.totals
                    .range((i, String::new())..(i + 1, String::new())),
            ),
            None => Box::new(self.totals.iter()),
        };
        for ((_, g), acc) in totals {
            if group.is_some_and(|want| want != g) {
                continue;
            }
            out.count += acc.count;
            out.sum += acc.sum;
            out.n += acc.n;
            out.lo = match (out.lo, acc.lo) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            out.hi = match (out.hi, acc.hi) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            out.distinct.extend(acc.distinct.iter().cloned());
        }
        out
    }

    fn result(&self) -> Value {
        let intervals = self.edges.len() - 1;
        let timeframe = |i: usize| {
            let zone = *self.query.span.start.offset();
            let at = |ms: i64| {
                keen_time(
                    chrono::DateTime::from_timestamp_millis(ms)
                        .unwrap_or_default()
                        .with_timezone(&zone),
                )
            };
            json!({"start": at(self.edges[i]), "end": at(self.edges[i + 1])})
        };
        let grouped = !self.query.group_by.is_empty();
        let groups_in = |interval: Option<usize>| -> Vec<Value> {
            self.groups
                .keys()
                .map(|g| self.group_object(g, self.value(Some(&self.merged(interval, Some(g))))))
                .collect()
        };
        let result = match (self.query.interval.is_some(), grouped) {
            (false, false) => self.value(Some(&self.merged(None, None))),
            (false, true) => Value::Array(groups_in(None)),
            (true, false) => Value::Array(
                (0..intervals)
                    .map(|i| json!({"value": self.value(Some(&self.merged(Some(i), None))), "timeframe": timeframe(i)}))
                    .collect(),
            ),
            (true, true) => Value::Array(
                (0..intervals)
                    .map(|i| json!({"value": groups_in(Some(i)), "timeframe": timeframe(i)}))
                    .collect(),
            ),
        };
        json!({ "result": result })
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
    fn cells_fold_into_keen_shapes() {
        let q = query(
            json!({"event_collection": "shim.ruby_run",
                   "timeframe": {"start": "2026-11-25T08:00:00Z", "end": "2026-11-25T10:00:00Z"},
                   "interval": "hourly", "group_by": "rubyRun.error.className"}),
            "count",
        );
        let edges: Vec<i64> = edges(q.span, q.interval)
            .iter()
            .map(|t| t.timestamp_millis())
            .collect();
        let mut engine = Engine::new(&q, &edges, true);
        let hour = edges[0] / HOUR_MS;
        let cells = HashMap::from([
            (
                r#"|c|{"rubyRun.error.className":"NameError"}"#.to_string(),
                "2".to_string(),
            ),
            (
                r#"|c|{"rubyRun.error.className":"TypeError"}"#.to_string(),
                "1".to_string(),
            ),
            (
                r#"|s|rubyRun.durationMs|{"rubyRun.error.className":"TypeError"}"#.to_string(),
                "9".to_string(),
            ),
        ]);
        engine.add(&cells, None, hour);
        engine.add(&cells, None, hour + 1);
        engine.add(&cells, None, hour + 2);
        let result = engine.result();
        assert_eq!(result["result"].as_array().unwrap().len(), 2);
        assert_eq!(
            result["result"][1],
            json!({"timeframe": {"start": "2026-11-25T09:00:00.000Z", "end": "2026-11-25T10:00:00.000Z"},
                   "value": [{"rubyRun.error.className": "NameError", "result": 2},
                             {"rubyRun.error.className": "TypeError", "result": 1}]})
        );
    }
}
