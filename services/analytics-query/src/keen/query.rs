//! Keen query parameters → a checked [`Query`]. Parameters come from the query string (where
//! Keen's clients JSON-encode `filters`, a list `group_by` and an absolute `timeframe`) or from a
//! JSON body; every property named must be indexed ([`crate::index`]), else 400 naming it.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{
    KeenError,
    timeframe::{self, Span, Unit},
};
use crate::index::{Index, Use};

/// The analyses offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Analysis {
    Count,
    CountUnique,
    Sum,
    Average,
    Minimum,
    Maximum,
}

impl Analysis {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "count" => Self::Count,
            "count_unique" => Self::CountUnique,
            "sum" => Self::Sum,
            "average" => Self::Average,
            "minimum" => Self::Minimum,
            "maximum" => Self::Maximum,
            _ => return None,
        })
    }

    /// How the target property is used (`None`: no target).
    fn target_use(self) -> Option<Use> {
        match self {
            Self::Count => None,
            Self::CountUnique => Some(Use::Dimension),
            _ => Some(Use::Measure),
        }
    }
}

/// Filter operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    Exists,
    In,
}

impl Operator {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "lt" => Self::Lt,
            "lte" => Self::Lte,
            "gt" => Self::Gt,
            "gte" => Self::Gte,
            "exists" => Self::Exists,
            "in" => Self::In,
            _ => return None,
        })
    }
}

/// One filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub property: String,
    pub operator: Operator,
    pub value: Value,
}

impl Filter {
    /// Whether a property value (absent: `None`) passes.
    pub fn matches(&self, value: Option<&Value>) -> bool {
        match (self.operator, value) {
            (Operator::Exists, v) => self.value.as_bool().unwrap_or(true) == v.is_some(),
            (_, None) => false,
            (Operator::Eq, Some(v)) => same(v, &self.value),
            (Operator::Ne, Some(v)) => !same(v, &self.value),
            (Operator::In, Some(v)) => self
                .value
                .as_array()
                .is_some_and(|list| list.iter().any(|item| same(v, item))),
            (op, Some(v)) => match compare(v, &self.value) {
                Some(order) => match op {
                    Operator::Lt => order.is_lt(),
                    Operator::Lte => order.is_le(),
                    Operator::Gt => order.is_gt(),
                    _ => order.is_ge(),
                },
                None => false,
            },
        }
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// A checked query.
#[derive(Debug, Clone)]
pub struct Query {
    pub analysis: Analysis,
    pub collection: String,
    pub target: Option<String>,
    pub span: Span,
    pub interval: Option<Unit>,
    pub group_by: Vec<String>,
    pub filters: Vec<Filter>,
    /// `order_by` and `limit`, applied to the answer's groups.
    pub order: Option<super::order::Order>,
}

/// Parameters as given, from a query string or a JSON body.
#[derive(Debug, Clone, Default)]
pub struct Params(pub Map<String, Value>);

impl Params {
    /// From query-string pairs: values Keen's clients JSON-encode are decoded.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut map = Map::new();
        for (name, text) in pairs {
            let trimmed = text.trim_start();
            let json_like = trimmed.starts_with('[') || trimmed.starts_with('{');
            let value = match serde_json::from_str::<Value>(&text) {
                Ok(value) if json_like || name == "timezone" && value.is_number() => value,
                _ => Value::String(text),
            };
            map.insert(name, value);
        }
        Self(map)
    }

    /// Adds a JSON body's parameters (they win over the query string's).
    pub fn merge_body(&mut self, body: Map<String, Value>) {
        self.0.extend(body);
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// Checks `params` for `analysis` against the index, at `now`.
pub fn parse(
    analysis: &str,
    params: &Params,
    index: &Index,
    now: DateTime<Utc>,
) -> Result<Query, KeenError> {
    let analysis = Analysis::parse(analysis).ok_or_else(|| KeenError {
        status: 404,
        code: "ResourceNotFoundError",
        message: format!("analysis type {analysis:?} is not offered (count, count_unique, sum, average, minimum, maximum)"),
    })?;
    let collection = params
        .text("event_collection")
        .ok_or_else(|| KeenError::bad_request("event_collection is required"))?
        .to_string();
    let target = params.text("target_property").map(str::to_string);
    match (analysis.target_use(), &target) {
        (Some(_), None) => {
            return Err(KeenError::bad_request(
                "target_property is required for this analysis",
            ));
        }
        (Some(usage), Some(property)) => check(index, property, usage, "target_property")?,
        (None, _) => {}
    }
    let zone = timeframe::zone(params.0.get("timezone"))?;
    let span = timeframe::span(params.0.get("timeframe").unwrap_or(&Value::Null), zone, now)?;
    let interval = match params.text("interval") {
        None => None,
        Some(text) => Some(Unit::interval(text).ok_or_else(|| {
            KeenError::bad_request(format!(
                "interval {text:?} is not one of minutely, hourly, daily, weekly, monthly, yearly"
            ))
        })?),
    };
    let mut group_by = match params.0.get("group_by") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(one)) if one.is_empty() => Vec::new(),
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                KeenError::bad_request("group_by must be a property name or a list of them")
            })?,
        Some(_) => {
            return Err(KeenError::bad_request(
                "group_by must be a property name or a list of them",
            ));
        }
    };
    for property in &group_by {
        check(index, property, Use::Dimension, "group_by")?;
    }
    // a property named twice groups as once (and its cost is the index's few dimensions at most)
    let mut named = std::collections::HashSet::new();
    group_by.retain(|property| named.insert(property.clone()));
    let filters = filters(params.0.get("filters"), index)?;
    let order = super::order::parse(
        params.0.get("order_by"),
        params.0.get("limit"),
        &group_by,
        interval.is_some(),
    )?;
    Ok(Query {
        analysis,
        collection,
        target,
        span,
        interval,
        group_by,
        filters,
        order,
    })
}

/// Most values one query's filters may hold in all (each filter one, an `in` filter one per
/// value listed): each is compared with every cell or event read.
pub const MAX_FILTER_VALUES: usize = 1_000;

/// What one Keen query may ask for (`ANALYSIS_MAX_INTERVALS`, `ANALYSIS_MAX_TIMEFRAME`): a
/// query's cost grows with its intervals and with the hours its timeframe spans, whatever the
/// data, so a larger one is refused (400) before anything is read or built. Its answer's size
/// (intervals × groups, `ANALYSIS_MAX_RESULT_VALUES`) depends on the data and is checked while
/// the answer is folded ([`super::exec`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_intervals: usize,
    pub max_timeframe: std::time::Duration,
    pub max_result_values: usize,
}

/// Refuses a query over [`Limits`], naming the setting.
pub fn within_limits(query: &Query, limits: Limits) -> Result<(), KeenError> {
    let spanned = query.span.end.signed_duration_since(query.span.start);
    let allowed =
        chrono::TimeDelta::from_std(limits.max_timeframe).unwrap_or(chrono::TimeDelta::MAX);
    if spanned > allowed {
        return Err(KeenError::bad_request(format!(
            "timeframe from {} to {} spans {} hours, more than ANALYSIS_MAX_TIMEFRAME allows ({} hours); ask for a shorter one",
            query.span.start.to_rfc3339(),
            query.span.end.to_rfc3339(),
            spanned.num_hours(),
            allowed.num_hours(),
        )));
    }
    let count = timeframe::interval_count(query.span, query.interval, limits.max_intervals);
    if count > limits.max_intervals {
        return Err(KeenError::bad_request(format!(
            "this timeframe has more than {} intervals of the interval asked for (ANALYSIS_MAX_INTERVALS); ask for a coarser interval or a shorter timeframe",
            limits.max_intervals,
        )));
    }
    Ok(())
}

/// Refuses a timeframe that starts before the analysis data kept (`ANALYSIS_RETENTION`): its
/// answer would be short of what expired, and a wrong answer is worse than none.
pub fn within_retention(
    query: &Query,
    retention: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<(), KeenError> {
    let kept_from = chrono::TimeDelta::from_std(retention)
        .ok()
        .and_then(|r| now.checked_sub_signed(r))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    if query.span.start >= kept_from {
        return Ok(());
    }
    Err(KeenError::bad_request(format!(
        "timeframe starts at {}, before the analysis data kept (ANALYSIS_RETENTION {}s: from {} on); ask for a later start",
        query.span.start.to_rfc3339(),
        retention.as_secs(),
        kept_from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )))
}

fn check(index: &Index, property: &str, usage: Use, role: &str) -> Result<(), KeenError> {
    if index.allows(property, usage) {
        return Ok(());
    }
    let what = match usage {
        Use::Dimension => "an indexed dimension (INDEX_DIMENSIONS)",
        Use::Measure => "an indexed numeric measure (INDEX_MEASURES)",
    };
    Err(KeenError::bad_request(format!(
        "property \"{property}\" in {role} is not {what}; it cannot be used here"
    )))
}

fn filters(value: Option<&Value>, index: &Index) -> Result<Vec<Filter>, KeenError> {
    let list = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(KeenError::bad_request("filters must be a list")),
    };
    // every cell or event is matched against every value
    let values: usize = list
        .iter()
        .map(|item| match item.get("property_value") {
            Some(Value::Array(listed)) => listed.len().max(1),
            _ => 1,
        })
        .sum();
    if values > MAX_FILTER_VALUES {
        return Err(KeenError::bad_request(format!(
            "filters hold {values} values in all (a filter counts one, an in filter one per value listed); at most {MAX_FILTER_VALUES} are answered"
        )));
    }
    list.iter()
        .map(|item| {
            let name = item
                .get("property_name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    KeenError::bad_request(
                        "each filter needs property_name, operator and property_value",
                    )
                })?;
            let op_text = item
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let operator = Operator::parse(op_text).ok_or_else(|| {
                KeenError::bad_request(format!(
                    "filter operator {op_text:?} is not one of eq, ne, lt, lte, gt, gte, exists, in"
                ))
            })?;
            check(index, name, Use::Dimension, "filters")?;
            let value = item.get("property_value").cloned().unwrap_or(Value::Null);
            if operator == Operator::In && !value.is_array() {
                return Err(KeenError::bad_request(
                    "the in operator needs a list as property_value",
                ));
            }
            Ok(Filter {
                property: name.to_string(),
                operator,
                value,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    #[test]
    fn a_timeframe_before_the_retention_is_refused_naming_it() {
        let index = Index::default();
        let query = |timeframe: &str| {
            let params = Params::from_pairs([
                ("event_collection".to_string(), "shim.ruby_run".to_string()),
                ("timeframe".to_string(), timeframe.to_string()),
            ]);
            parse("count", &params, &index, now()).unwrap()
        };
        let week = std::time::Duration::from_secs(7 * 86_400);
        within_retention(&query("this_7_days"), week, now()).unwrap();
        within_retention(&query("previous_6_days"), week, now()).unwrap();
        let refused = within_retention(&query("previous_8_days"), week, now()).unwrap_err();
        assert_eq!((refused.status, refused.code), (400, "BadRequestError"));
        assert!(
            refused.message.contains("ANALYSIS_RETENTION 604800s"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn a_query_over_its_limits_is_refused_naming_the_setting() {
        let index = Index::default();
        let query = |timeframe: &str, interval: &str| {
            let mut pairs = vec![
                ("event_collection".to_string(), "shim.ruby_run".to_string()),
                ("timeframe".to_string(), timeframe.to_string()),
            ];
            if !interval.is_empty() {
                pairs.push(("interval".to_string(), interval.to_string()));
            }
            parse("count", &Params::from_pairs(pairs), &index, now()).unwrap()
        };
        let limits = Limits {
            max_intervals: 10_080,
            max_timeframe: std::time::Duration::from_secs(366 * 86_400),
            max_result_values: 1,
        };
        within_limits(&query("this_7_days", "minutely"), limits).unwrap();
        within_limits(&query("previous_366_days", "hourly"), limits).unwrap();
        within_limits(&query("previous_366_days", ""), limits).unwrap();
        let refused = within_limits(&query("this_8_days", "minutely"), limits).unwrap_err();
        assert_eq!((refused.status, refused.code), (400, "BadRequestError"));
        assert!(
            refused.message.contains("more than 10080 intervals")
                && refused.message.contains("ANALYSIS_MAX_INTERVALS"),
            "{}",
            refused.message
        );
        let refused = within_limits(&query("previous_367_days", "daily"), limits).unwrap_err();
        assert_eq!((refused.status, refused.code), (400, "BadRequestError"));
        assert!(
            refused.message.contains("spans 8808 hours")
                && refused
                    .message
                    .contains("ANALYSIS_MAX_TIMEFRAME allows (8784 hours)"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn query_string_parameters_are_decoded_where_keen_encodes_them() {
        let params = Params::from_pairs([
            ("event_collection".into(), "shim.ruby_run".into()),
            ("timeframe".into(), "this_3_hours".into()),
            ("interval".into(), "hourly".into()),
            ("group_by".into(), "rubyRun.error.className".into()),
            (
                "filters".into(),
                r#"[{"property_name":"context.course","operator":"eq","property_value":"c1"}]"#
                    .into(),
            ),
        ]);
        let query = parse("count", &params, &Index::default(), now()).unwrap();
        assert_eq!(query.group_by, ["rubyRun.error.className"]);
        assert_eq!(query.filters[0].value, json!("c1"));
        assert_eq!(query.interval, Some(Unit::Hour));
    }

    #[test]
    fn a_group_by_named_twice_groups_once_and_filters_are_bounded() {
        let body = |extra: Value| {
            let mut body = json!({"event_collection": "shim.ruby_run", "timeframe": "this_1_days"});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            Params(body.as_object().unwrap().clone())
        };
        let twice = body(json!({"group_by": ["actor", "kind", "actor", "actor"]}));
        let query = parse("count", &twice, &Index::default(), now()).unwrap();
        assert_eq!(query.group_by, ["actor", "kind"]);

        let listed = |n: usize| {
            let values: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
            body(json!({"filters": [
                {"property_name": "actor", "operator": "in", "property_value": values},
                {"property_name": "kind", "operator": "exists", "property_value": true},
            ]}))
        };
        parse(
            "count",
            &listed(MAX_FILTER_VALUES - 1),
            &Index::default(),
            now(),
        )
        .unwrap();
        let err = parse(
            "count",
            &listed(MAX_FILTER_VALUES),
            &Index::default(),
            now(),
        )
        .unwrap_err();
        assert_eq!((err.status, err.code), (400, "BadRequestError"));
        assert!(
            err.message.contains("1001 values") && err.message.contains("at most 1000"),
            "{err}"
        );
    }

    #[test]
    fn unindexed_properties_are_refused_by_name() {
        let params = Params(
            json!({"event_collection": "shim.ruby_run", "timeframe": "this_1_days",
                   "group_by": ["rubyRun.error.message"]})
            .as_object()
            .unwrap()
            .clone(),
        );
        let err = parse("count", &params, &Index::default(), now()).unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.message.contains("rubyRun.error.message"), "{err}");
        let mut sum = params.clone();
        sum.0.remove("group_by");
        sum.0
            .insert("target_property".into(), json!("rubyRun.stderr"));
        let err = parse("sum", &sum, &Index::default(), now()).unwrap_err();
        assert!(err.message.contains("rubyRun.stderr"), "{err}");
    }

    #[test]
    fn filters_compare_like_keen() {
        let f = |op, value| Filter {
            property: "p".into(),
            operator: op,
            value,
        };
        assert!(f(Operator::Eq, json!(1)).matches(Some(&json!(1.0))));
        assert!(f(Operator::Gt, json!(1)).matches(Some(&json!(2))));
        assert!(!f(Operator::Gt, json!(1)).matches(None));
        assert!(f(Operator::In, json!(["a", "b"])).matches(Some(&json!("b"))));
        assert!(f(Operator::Exists, json!(false)).matches(None));
        assert!(f(Operator::Ne, json!("a")).matches(Some(&json!("b"))));
    }
}
