//! Keen-compatible analysis (../shared/PROTOCOLS.md §2.6): `count`, `count_unique`, `sum`,
//! `average`, `minimum`, `maximum` with `timeframe`, `interval`, `group_by`, `filters`,
//! `timezone`, `order_by` and `limit`, answered from pre-aggregated cells, never by scanning
//! events:
//! - [`query`]: parameters (query string or JSON body) → a checked [`query::Query`];
//! - [`timeframe`]: Keen's relative and absolute timeframes, intervals and time zones;
//! - [`order`]: `order_by` and `limit` on a grouped answer;
//! - [`exec`]: reads the cells the query needs in one round trip (from memory where an hour is
//!   unchanged, [`crate::cache`]) and shapes Keen's answer.

pub mod exec;
pub mod order;
pub mod query;
pub mod timeframe;

/// A Keen error answer: status and `{"message", "error_code"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KeenError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl KeenError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            code: "BadRequestError",
            message: message.into(),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"message": self.message, "error_code": self.code})
    }
}
