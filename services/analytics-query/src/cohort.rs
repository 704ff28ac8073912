//! Cohorts: a learner against their course (deciles and percentile rank of a metric), and the
//! learners × problems table of a course. Plain functions over what [`crate::summary`] read.

use std::collections::BTreeSet;

use learntrail_proto::v1::{CohortRow, CohortTable, problem_result::Status};

use crate::{
    keys::{SEP, field},
    summary::{Raw, problems_by_assignment, ratio},
};

/// Metrics a learner can be compared on.
pub const METRICS: [&str; 7] = [
    "events",
    "ruby_runs",
    "ruby_failed_runs",
    "lab_actions",
    "videos_played",
    "completion",
    "assessment_score",
];

/// A learner's value of `metric` within `course`; `None` for an unknown metric.
pub fn metric(raw: &Raw, course: &str, metric: &str) -> Option<f64> {
    let counter = |name: &str| {
        raw.by_course
            .get(&field(&[course, name]))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Some(match metric {
        "events" | "ruby_runs" | "ruby_failed_runs" | "lab_actions" | "videos_played" => {
            counter(metric)
        }
        "completion" => {
            let known = raw.known.get(course).map_or(0, |k| k.len());
            let passed = problems_by_assignment(raw)
                .iter()
                .filter(|((c, _), _)| c == course)
                .flat_map(|(_, problems)| problems.values())
                .filter(|p| p.status == Status::Passed as i32)
                .count();
            ratio(passed as u32, known.max(passed) as u32)
        }
        "assessment_score" => {
            let prefix = format!("{course}{SEP}");
            let scores: Vec<f64> = raw
                .assessments
                .iter()
                .filter_map(|(name, best)| {
                    let id = name.strip_prefix(&prefix)?.strip_suffix("|best")?;
                    let max: f64 = raw
                        .assessments
                        .get(&format!("{prefix}{id}|max"))?
                        .parse()
                        .ok()?;
                    (max > 0.0).then(|| best.parse::<f64>().unwrap_or(0.0) / max)
                })
                .collect();
            if scores.is_empty() {
                0.0
            } else {
                scores.iter().sum::<f64>() / scores.len() as f64
            }
        }
        _ => return None,
    })
}

/// The 0th, 10th, ..., 100th percentiles of `values`, interpolating linearly between ranks.
pub fn deciles(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return Vec::new();
    }
    (0..=10)
        .map(|d| {
            let rank = d as f64 / 10.0 * (sorted.len() - 1) as f64;
            let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
        })
        .collect()
}

/// The share of `values` below `value`, ties counting half, in percent.
pub fn percentile_rank(values: &[f64], value: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let below = values.iter().filter(|v| **v < value).count() as f64;
    let equal = values.iter().filter(|v| **v == value).count() as f64;
    100.0 * (below + equal / 2.0) / values.len() as f64
}

/// The learners × problems table of `course`.
pub fn table(course: &str, learners: &[(String, Raw)], known: &BTreeSet<String>) -> CohortTable {
    let mut problems: BTreeSet<String> = known.clone();
    let per_learner: Vec<_> = learners
        .iter()
        .map(|(learner, raw)| {
            let mut mine = std::collections::HashMap::new();
            for ((c, assignment), list) in problems_by_assignment(raw) {
                if c != course {
                    continue;
                }
                for (grade_id, progress) in list {
                    let name = field(&[&assignment, &grade_id]);
                    problems.insert(name.clone());
                    mine.insert(name, progress);
                }
            }
            (learner, mine)
        })
        .collect();
    let rows = per_learner
        .into_iter()
        .map(|(learner, mine)| {
            let statuses: Vec<i32> = problems
                .iter()
                .map(|p| mine.get(p).map_or(Status::Unspecified as i32, |r| r.status))
                .collect();
            let passed = statuses
                .iter()
                .filter(|s| **s == Status::Passed as i32)
                .count() as u32;
            CohortRow {
                learner: learner.clone(),
                points: problems
                    .iter()
                    .map(|p| mine.get(p).map_or(0.0, |r| r.points))
                    .collect(),
                statuses,
                passed,
                completion: ratio(passed, problems.len() as u32),
            }
        })
        .collect();
    CohortTable {
        course: course.to_string(),
        problems: problems.iter().map(|p| p.replace(SEP, "/")).collect(),
        learners: rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deciles_and_rank_of_a_known_cohort() {
        let values: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(deciles(&values), values);
        assert_eq!(percentile_rank(&values, 6.0), 100.0 * 5.5 / 11.0);
        assert_eq!(percentile_rank(&[1.0, 2.0, 3.0, 4.0], 4.0), 87.5);
        assert_eq!(deciles(&[0.0, 10.0])[5], 5.0);
    }
}
