//! Keen's `order_by` and `limit` on a `group_by` answer: the groups sorted by their `result` or
//! by a `group_by` property, ascending or descending, then the first `limit` of them (a top-N
//! chart). Keen documents them for grouped answers; with an `interval` it does not say how they
//! apply, so that is refused rather than guessed.

use std::cmp::Ordering;

use serde_json::Value;

use super::KeenError;

/// How to order a grouped answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    /// (property: `result` or a `group_by` property, descending), first key first.
    pub by: Vec<(String, bool)>,
    pub limit: Option<usize>,
}

/// Reads `order_by` (a list of `{"property_name", "direction"}`, one such object, or a property
/// name) and `limit` (a positive number, or its text). `None` when neither is given.
pub fn parse(
    order_by: Option<&Value>,
    limit: Option<&Value>,
    group_by: &[String],
    interval: bool,
) -> Result<Option<Order>, KeenError> {
    let (order_by, limit) = (given(order_by), given(limit));
    let Some(order_by) = order_by else {
        return match limit {
            None => Ok(None),
            Some(_) => Err(KeenError::bad_request("limit requires order_by")),
        };
    };
    if group_by.is_empty() {
        return Err(KeenError::bad_request("order_by requires group_by"));
    }
    if interval {
        return Err(KeenError::bad_request(
            "order_by with an interval is not offered: order a group_by answer without one",
        ));
    }
    let entries = match order_by {
        Value::Array(list) => list.iter().collect(),
        one => vec![one],
    };
    if entries.is_empty() {
        return Err(KeenError::bad_request("order_by names no property"));
    }
    let by = entries
        .into_iter()
        .map(|entry| key(entry, group_by))
        .collect::<Result<Vec<_>, _>>()?;
    let limit = match limit {
        None => None,
        Some(value) => Some(
            value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                .filter(|n| *n > 0)
                .ok_or_else(|| KeenError::bad_request("limit must be a positive whole number"))?
                as usize,
        ),
    };
    Ok(Some(Order { by, limit }))
}

/// A parameter that is there: not missing, null or empty.
fn given(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null() && *v != "")
}

fn key(entry: &Value, group_by: &[String]) -> Result<(String, bool), KeenError> {
    let (name, direction) = match entry {
        Value::String(name) => (name.as_str(), None),
        Value::Object(fields) => (
            fields
                .get("property_name")
                .and_then(Value::as_str)
                .ok_or_else(|| KeenError::bad_request("order_by needs a property_name"))?,
            fields.get("direction"),
        ),
        _ => {
            return Err(KeenError::bad_request(
                "order_by must be a list of {\"property_name\", \"direction\"}",
            ));
        }
    };
    if name != "result" && !group_by.iter().any(|g| g == name) {
        return Err(KeenError::bad_request(format!(
            "order_by property {name:?} is neither result nor a group_by property"
        )));
    }
    let descending = match direction.and_then(Value::as_str) {
        None => false,
        Some(d) if d.eq_ignore_ascii_case("asc") => false,
        Some(d) if d.eq_ignore_ascii_case("desc") => true,
        Some(d) => {
            return Err(KeenError::bad_request(format!(
                "order_by direction {d:?} is not ASC or DESC"
            )));
        }
    };
    Ok((name.to_string(), descending))
}

/// Orders and cuts the groups of Keen's answer body (`{"result": [groups]}`).
pub fn apply(body: Vec<u8>, order: &Order) -> Vec<u8> {
    let Ok(mut answer) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    if let Some(groups) = answer.get_mut("result").and_then(Value::as_array_mut) {
        groups.sort_by(|a, b| {
            order
                .by
                .iter()
                .map(|(name, descending)| {
                    let ordering = compare(&a[name.as_str()], &b[name.as_str()]);
                    if *descending {
                        ordering.reverse()
                    } else {
                        ordering
                    }
                })
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        });
        if let Some(limit) = order.limit {
            groups.truncate(limit);
        }
    }
    serde_json::to_vec(&answer).unwrap_or(body)
}

/// Nulls first, then booleans, numbers (by value), strings: one order for values of any kind.
fn compare(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.total_cmp(&y)
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn groups() -> Vec<String> {
        vec!["rubyRun.error.className".to_string()]
    }

    #[test]
    fn the_top_groups_by_result_as_keens_clients_ask() {
        // KeenClient-Python's get_params: order_by JSON-encoded, limit as given
        let order_by = json!([{"property_name": "result", "direction": "DESC"}]);
        let order = parse(Some(&order_by), Some(&json!(2)), &groups(), false)
            .unwrap()
            .unwrap();
        let body = json!({"result": [
            {"rubyRun.error.className": "ArgumentError", "result": 3},
            {"rubyRun.error.className": "NameError", "result": 9},
            {"rubyRun.error.className": "NoMethodError", "result": 5},
        ]});
        let out: Value =
            serde_json::from_slice(&apply(serde_json::to_vec(&body).unwrap(), &order)).unwrap();
        assert_eq!(
            out,
            json!({"result": [
                {"rubyRun.error.className": "NameError", "result": 9},
                {"rubyRun.error.className": "NoMethodError", "result": 5},
            ]})
        );
        // by the property, ascending by default, the limit as text
        let order = parse(
            Some(&json!({"property_name": "rubyRun.error.className"})),
            Some(&json!("1")),
            &groups(),
            false,
        )
        .unwrap()
        .unwrap();
        let out: Value =
            serde_json::from_slice(&apply(serde_json::to_vec(&body).unwrap(), &order)).unwrap();
        assert_eq!(out["result"][0]["rubyRun.error.className"], "ArgumentError");
        assert_eq!(out["result"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn what_cannot_be_answered_right_is_refused() {
        let desc = json!([{"property_name": "result", "direction": "DESC"}]);
        let refused =
            |order_by: Option<&Value>, limit: Option<&Value>, group: &[String], interval| {
                parse(order_by, limit, group, interval).unwrap_err().message
            };
        assert!(refused(Some(&desc), None, &[], false).contains("requires group_by"));
        assert!(refused(None, Some(&json!(3)), &groups(), false).contains("requires order_by"));
        assert!(refused(Some(&desc), None, &groups(), true).contains("interval"));
        let other = json!({"property_name": "actor"});
        assert!(refused(Some(&other), None, &groups(), false).contains("\"actor\""));
        let sideways = json!({"property_name": "result", "direction": "UP"});
        assert!(refused(Some(&sideways), None, &groups(), false).contains("ASC or DESC"));
        assert!(refused(Some(&desc), Some(&json!(0)), &groups(), false).contains("positive"));
        assert_eq!(parse(None, None, &groups(), true), Ok(None));
    }
}
