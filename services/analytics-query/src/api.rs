//! The queries, once, for every edge (gRPC, HTTP/JSON, Keen): authorisation, reading, shaping.

use std::{collections::BTreeSet, time::Instant};

use learntrail_proto::v1::{CohortComparison, CohortTable, LearnerSummary, LearnerTimeline};
use learntrail_runtime::auth::Verifier;

use crate::{
    access::{Caller, Denied, authenticate},
    cohort,
    index::Index,
    keen::{self, KeenError, query::Params},
    keys,
    metrics::Metrics,
    store::Store,
    summary,
};

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Keen(#[from] KeenError),
    #[error("redis unavailable: {0}")]
    Unavailable(#[from] redis::RedisError),
}

/// Shared state of the query edges.
#[derive(Debug, Clone)]
pub struct Api {
    pub store: Store,
    pub verifier: Verifier,
    pub index: Index,
    pub metrics: Metrics,
    pub project_id: String,
    /// `ANALYSIS_RETENTION`: Keen timeframes may not start before it.
    pub retention: Option<std::time::Duration>,
    /// `ANALYSIS_MAX_INTERVALS`, `ANALYSIS_MAX_TIMEFRAME`, `ANALYSIS_MAX_RESULT_VALUES`: what one
    /// Keen query may ask for.
    pub limits: keen::query::Limits,
    /// What queries have read and answered, while unchanged (`ANALYSIS_CACHE_MB`).
    pub cache: crate::cache::Cache,
}

/// Largest timeline page.
pub const MAX_PAGE: u32 = 1_000;

impl Api {
    pub fn caller(&self, credential: Option<&str>) -> Result<Caller, QueryError> {
        Ok(authenticate(&self.verifier, credential)?)
    }

    pub async fn summary(
        &self,
        caller: &Caller,
        learner: &str,
        api: &'static str,
    ) -> Result<LearnerSummary, QueryError> {
        let started = Instant::now();
        caller.may_read_learner(&self.store, learner).await?;
        let out = summary::summary(&self.store, &self.cache, learner).await?;
        self.metrics.observe("summary", api, started);
        Ok(out)
    }

    pub async fn timeline(
        &self,
        caller: &Caller,
        learner: &str,
        before_ms: Option<i64>,
        limit: u32,
        api: &'static str,
    ) -> Result<LearnerTimeline, QueryError> {
        let started = Instant::now();
        caller.may_read_learner(&self.store, learner).await?;
        let limit = match limit {
            0 => 50,
            n if n > MAX_PAGE => {
                return Err(QueryError::BadRequest(format!(
                    "limit is at most {MAX_PAGE}"
                )));
            }
            n => n,
        };
        let page = summary::timeline(&self.store, learner, before_ms, limit as usize).await?;
        self.metrics.observe("timeline", api, started);
        Ok(page)
    }

    /// A Keen analysis; the caller's scope is added as filters.
    pub async fn count(
        &self,
        caller: &Caller,
        analysis: &str,
        params: &Params,
        api: &'static str,
    ) -> Result<Vec<u8>, QueryError> {
        let started = Instant::now();
        let now = chrono::Utc::now();
        let mut query = keen::query::parse(analysis, params, &self.index, now)?;
        keen::query::within_limits(&query, self.limits)?;
        if let Some(retention) = self.retention {
            keen::query::within_retention(&query, retention, now)?;
        }
        query.filters.extend(caller.scope());
        let result = keen::exec::run(
            &self.store,
            &self.cache,
            &query,
            self.limits.max_result_values,
        )
        .await?;
        let result = match &query.order {
            Some(order) => keen::order::apply(result, order),
            None => result,
        };
        self.metrics.observe("count", api, started);
        Ok(result)
    }

    pub async fn compare(
        &self,
        caller: &Caller,
        learner: &str,
        course: &str,
        metric: &str,
        api: &'static str,
    ) -> Result<CohortComparison, QueryError> {
        let started = Instant::now();
        caller.may_read_learner(&self.store, learner).await?;
        caller.may_compare_in(&self.store, learner, course).await?;
        if !cohort::METRICS.contains(&metric) {
            return Err(QueryError::BadRequest(format!(
                "metric {metric:?} is not one of {}",
                cohort::METRICS.join(", ")
            )));
        }
        let members = self.members(course).await?;
        let raws = summary::read_many(&self.store, &members).await?;
        let values: Vec<f64> = raws
            .iter()
            .filter_map(|raw| cohort::metric(raw, course, metric))
            .collect();
        let value = match members.iter().position(|m| m == learner) {
            Some(i) => values[i],
            None => {
                let own = summary::read_many(&self.store, &[learner.to_string()]).await?;
                cohort::metric(&own[0], course, metric).unwrap_or(0.0)
            }
        };
        self.metrics.observe("compare", api, started);
        Ok(CohortComparison {
            learner: learner.to_string(),
            course: course.to_string(),
            metric: metric.to_string(),
            value,
            deciles: cohort::deciles(&values),
            percentile_rank: cohort::percentile_rank(&values, value),
            cohort_size: values.len() as u32,
        })
    }

    pub async fn cohort(
        &self,
        caller: &Caller,
        course: &str,
        api: &'static str,
    ) -> Result<CohortTable, QueryError> {
        let started = Instant::now();
        caller.may_read_course(course)?;
        let members = self.members(course).await?;
        let raws = summary::read_many(&self.store, &members).await?;
        let known: BTreeSet<String> = summary::known_problems(&self.store, &[course.to_string()])
            .await?
            .remove(course)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let learners: Vec<_> = members.into_iter().zip(raws).collect();
        self.metrics.observe("cohort", api, started);
        Ok(cohort::table(course, &learners, &known))
    }

    /// The learners of a course, sorted.
    async fn members(&self, course: &str) -> Result<Vec<String>, QueryError> {
        let mut conn = self.store.clone();
        let mut members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}:l", keys::course(course)))
            .query_async(&mut conn)
            .await?;
        members.sort();
        Ok(members)
    }
}
