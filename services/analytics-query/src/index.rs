//! The indexed properties: which Keen properties the analysis API can group by, filter on and
//! aggregate. Dimensions (low-cardinality values: course, error class, experiment, ...) are kept
//! as the key of each pre-aggregated cell; measures (numbers: durations, scores, kW) are summed
//! and their minimum and maximum kept per cell. `actor` is a dimension of its own: it is kept
//! per learner (see [`crate::keys`]), not in the shared cells, so those stay small.
//!
//! Anything not listed here is refused with a 400 naming it, never answered wrongly. Changing
//! the lists changes the cells: rebuild the projection afterwards (README).

use std::collections::BTreeMap;

use serde_json::Value;

/// The learner dimension.
pub const ACTOR: &str = "actor";

/// Dimensions indexed by default.
pub const DEFAULT_DIMENSIONS: &[&str] = &[
    "source",
    "kind",
    "context.course",
    "context.courseRun",
    "context.moduleId",
    "context.unitId",
    "context.machine.os",
    "rubyRun.exitCode",
    "rubyRun.signalName",
    "rubyRun.error.className",
    "rubyRun.error.syntaxError",
    "notebookSnapshot.course",
    "notebookSnapshot.assignment",
    "labLog.experiment",
    "labLog.hardware",
    "labLog.logType",
    "labLog.logKind",
    "lmsEvent.eventType",
    "lmsEvent.courseSlug",
    "lmsEvent.video.videoId",
    "lmsEvent.assessment.assessmentId",
    "lmsEvent.assessment.passed",
    "lmsEvent.enrollment.mode",
    "energyReading.cloudId",
    "energyReading.meterMac",
];

/// Measures indexed by default.
pub const DEFAULT_MEASURES: &[&str] = &[
    "rubyRun.durationMs",
    "rubyRun.stderrBytes",
    "notebookSnapshot.codeOk",
    "notebookSnapshot.errorOutputs",
    "lmsEvent.video.currentTime",
    "lmsEvent.assessment.score",
    "lmsEvent.assessment.maxScore",
    "lmsEvent.assessment.attempt",
    "energyReading.demandKw",
    "energyReading.summationDeliveredKwh",
];

/// What a property may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// group_by, filters, count_unique.
    Dimension,
    /// sum, average, minimum, maximum.
    Measure,
}

/// The configured index.
#[derive(Debug, Clone)]
pub struct Index {
    pub dimensions: Vec<String>,
    pub measures: Vec<String>,
}

impl Default for Index {
    fn default() -> Self {
        Self::with_extra(&[], &[])
    }
}

impl Index {
    /// The defaults plus `dimensions` and `measures` from configuration.
    pub fn with_extra(dimensions: &[String], measures: &[String]) -> Self {
        let extend = |defaults: &[&str], extra: &[String]| {
            let mut all: Vec<String> = defaults.iter().map(|s| s.to_string()).collect();
            for name in extra.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
                if !all.iter().any(|known| known == name) {
                    all.push(name.to_string());
                }
            }
            all
        };
        Self {
            dimensions: extend(DEFAULT_DIMENSIONS, dimensions),
            measures: extend(DEFAULT_MEASURES, measures),
        }
    }

    /// Whether `property` may be used as `usage`.
    pub fn allows(&self, property: &str, usage: Use) -> bool {
        match usage {
            Use::Dimension => property == ACTOR || self.dimensions.iter().any(|d| d == property),
            Use::Measure => self.measures.iter().any(|m| m == property),
        }
    }

    /// The cell key of a Keen event: its dimension values (absent ones left out), as a JSON
    /// object with sorted keys.
    pub fn tuple(&self, keen: &Value) -> String {
        let cell: BTreeMap<&str, &Value> = self
            .dimensions
            .iter()
            .filter_map(|d| {
                Some((
                    d.as_str(),
                    scalar(learntrail_proto::keen::property(keen, d)?)?,
                ))
            })
            .collect();
        serde_json::to_string(&cell).expect("a map of JSON values serialises")
    }

    /// The measures present in a Keen event, with their values.
    pub fn measures_of<'a>(&'a self, keen: &Value) -> Vec<(&'a str, f64)> {
        self.measures
            .iter()
            .filter_map(|m| {
                let value = learntrail_proto::keen::property(keen, m)?.as_f64()?;
                Some((m.as_str(), value))
            })
            .collect()
    }
}

/// Only scalars are dimension values (Keen cannot group by objects or lists either).
fn scalar(value: &Value) -> Option<&Value> {
    matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)).then_some(value)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tuples_keep_present_dimensions_in_order() {
        let index = Index::with_extra(&["labLog.data.mode".into()], &[]);
        let keen = json!({"actor": "a", "kind": "log", "context": {"course": "c1"},
            "labLog": {"data": {"mode": "fast"}, "experiment": {"nested": 1}}});
        assert_eq!(
            index.tuple(&keen),
            r#"{"context.course":"c1","kind":"log","labLog.data.mode":"fast"}"#
        );
        assert!(index.allows("actor", Use::Dimension));
        assert!(index.allows("labLog.data.mode", Use::Dimension));
        assert!(!index.allows("rubyRun.error.message", Use::Dimension));
        assert!(index.allows("rubyRun.durationMs", Use::Measure));
        assert!(!index.allows("rubyRun.durationMs", Use::Dimension));
    }
}
