//! Reading a JSON object field by field, collecting every problem with its dotted path instead of
//! stopping at the first.

use learntrail_proto::validate::Problem;
use serde_json::{Map, Value};

/// One JSON object being read; problems go to a shared list.
pub struct Fields<'a, 'p> {
    map: &'a Map<String, Value>,
    prefix: &'static str,
    problems: &'p mut Vec<Problem>,
}

impl<'a, 'p> Fields<'a, 'p> {
    pub fn new(
        map: &'a Map<String, Value>,
        prefix: &'static str,
        problems: &'p mut Vec<Problem>,
    ) -> Self {
        Self {
            map,
            prefix,
            problems,
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A problem at a full path (a field of a nested object read before it).
    pub fn problem_at(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem::new(path.to_string(), message));
    }

    /// True when `key` holds exactly the string `text`.
    pub fn is(&self, key: &str, text: &str) -> bool {
        self.map.get(key).and_then(Value::as_str) == Some(text)
    }

    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let path = self.path(key);
        self.problems.push(Problem::new(path, message));
    }

    /// A present, non-null value.
    fn get(&mut self, key: &str, required: bool) -> Option<&'a Value> {
        match self.map.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.problem(key, "is required");
                }
                None
            }
            Some(value) => Some(value),
        }
    }

    /// A non-empty string of at most `max_len` characters. An empty optional string counts as
    /// absent (the LMS server sends `""` for ids it does not have).
    pub fn string(&mut self, key: &str, required: bool, max_len: usize) -> Option<String> {
        match self.get(key, required)? {
            Value::String(text) if text.trim().is_empty() => {
                if required {
                    self.problem(key, "must not be empty");
                }
                None
            }
            Value::String(text) if text.chars().count() > max_len => {
                self.problem(key, format!("must be at most {max_len} characters"));
                None
            }
            Value::String(text) => Some(text.clone()),
            _ => {
                self.problem(key, "must be a string");
                None
            }
        }
    }

    /// An identifier sent as a string or as a whole number (LMS node and unit ids are often
    /// numeric), as text.
    pub fn id(&mut self, key: &str, required: bool, max_len: usize) -> Option<String> {
        match self.map.get(key) {
            Some(Value::Number(number)) if number.is_i64() || number.is_u64() => {
                Some(number.to_string())
            }
            Some(Value::Number(_)) => {
                self.problem(key, "must be a string or a whole number");
                None
            }
            _ => self.string(key, required, max_len),
        }
    }

    /// A finite number `>= min` (or `> min` when `exclusive`).
    pub fn number(&mut self, key: &str, required: bool, min: f64, exclusive: bool) -> Option<f64> {
        let value = self.get(key, required)?;
        let Some(number) = value.as_f64().filter(|n| n.is_finite()) else {
            self.problem(key, "must be a number");
            return None;
        };
        if (exclusive && number <= min) || number < min {
            let op = if exclusive { ">" } else { ">=" };
            self.problem(key, format!("must be a number {op} {min}"));
            return None;
        }
        Some(number)
    }

    /// A whole number in `min..=u32::MAX`.
    pub fn count(&mut self, key: &str, required: bool, min: u32) -> Option<u32> {
        let value = self.get(key, required)?;
        match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n >= min => Some(n),
            _ => {
                self.problem(key, format!("must be a whole number >= {min}"));
                None
            }
        }
    }

    pub fn boolean(&mut self, key: &str, required: bool) -> Option<bool> {
        let value = self.get(key, required)?;
        let flag = value.as_bool();
        if flag.is_none() {
            self.problem(key, "must be true or false");
        }
        flag
    }

    /// A JSON object.
    pub fn object(&mut self, key: &str, required: bool) -> Option<&'a Map<String, Value>> {
        let value = self.get(key, required)?;
        let object = value.as_object();
        if object.is_none() {
            self.problem(key, "must be a JSON object");
        }
        object
    }

    /// Reports the keys not in `allowed`: the first [`UNKNOWN_NAMED`] by name, then how many
    /// more (an answer stays about as small as the body that asked, however many keys it has).
    pub fn deny_unknown(&mut self, allowed: &[&str]) {
        let unknown: Vec<String> = self
            .map
            .keys()
            .filter(|key| !allowed.contains(&key.as_str()))
            .cloned()
            .collect();
        for key in unknown.iter().take(UNKNOWN_NAMED) {
            self.problem(
                key,
                format!("unknown field (known: {})", allowed.join(", ")),
            );
        }
        if unknown.len() > UNKNOWN_NAMED {
            let more = unknown.len() - UNKNOWN_NAMED;
            let path = match self.prefix.trim_end_matches('.') {
                "" => "(body)",
                object => object,
            };
            self.problem_at(path, format!("and {more} more unknown fields"));
        }
    }
}

/// Unknown fields named one by one in an answer; past them, a count.
pub const UNKNOWN_NAMED: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_named_up_to_a_few_then_counted() {
        let mut body = Map::new();
        for i in 0..10_000 {
            body.insert(format!("a{i:05}"), json!(0));
        }
        body.insert("known".into(), json!(1));
        let mut problems = Vec::new();
        Fields::new(&body, "event_data.", &mut problems).deny_unknown(&["known"]);
        assert_eq!(problems.len(), UNKNOWN_NAMED + 1);
        let last = serde_json::to_string(&problems[UNKNOWN_NAMED]).unwrap();
        assert!(last.contains("and 9990 more unknown fields"), "{last}");
        assert!(last.contains("\"event_data\""), "{last}");
    }

    #[test]
    fn collects_every_problem_with_its_path() {
        let value = json!({"a": "", "b": -1, "c": "x", "d": 1.5, "e": "yes", "f": []});
        let map = value.as_object().unwrap();
        let mut problems = Vec::new();
        let mut fields = Fields::new(map, "event_data.", &mut problems);
        assert_eq!(fields.string("a", true, 10), None);
        assert_eq!(fields.number("b", true, 0.0, false), None);
        assert_eq!(fields.number("c", true, 0.0, false), None);
        assert_eq!(fields.count("d", false, 1), None);
        assert_eq!(fields.boolean("e", false), None);
        assert_eq!(fields.object("f", false), None);
        assert_eq!(fields.string("missing", true, 10), None);
        fields.deny_unknown(&["a", "b", "c", "d", "e"]);
        let paths: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            paths,
            [
                "event_data.a",
                "event_data.b",
                "event_data.c",
                "event_data.d",
                "event_data.e",
                "event_data.f",
                "event_data.missing",
                "event_data.f"
            ]
        );
    }

    #[test]
    fn reads_good_values() {
        let value = json!({"s": "hi", "n": 2.5, "c": 3, "b": false});
        let map = value.as_object().unwrap();
        let mut problems = Vec::new();
        let mut fields = Fields::new(map, "", &mut problems);
        assert_eq!(fields.string("s", true, 10).as_deref(), Some("hi"));
        assert_eq!(fields.number("n", true, 0.0, true), Some(2.5));
        assert_eq!(fields.count("c", true, 1), Some(3));
        assert_eq!(fields.boolean("b", true), Some(false));
        assert_eq!(fields.id("c", true, 10).as_deref(), Some("3"));
        assert_eq!(fields.id("s", true, 10).as_deref(), Some("hi"));
        assert_eq!(fields.id("n", true, 10), None);
        assert_eq!(problems.len(), 1, "only the fractional id: {problems:?}");
    }
}
