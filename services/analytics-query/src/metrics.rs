//! analytics-query's own metrics (HTTP request metrics come from the runtime).

use learntrail_runtime::metrics::{latency_family, register};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::cache::CacheMetrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabel {
    /// The query: summary, timeline, count, compare, cohort (a fixed set).
    pub call: &'static str,
    /// grpc, http or keen.
    pub api: &'static str,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Events folded into Redis (a redelivered or replayed event counts again; Redis does not).
    pub projected: Counter,
    /// Events already in the projection when they came (a redelivery after a crash, a replay,
    /// the same event under another message id), so nothing was written for them.
    pub redeliveries_ignored: Counter,
    /// Messages on EVENTS that are not events, dead-lettered.
    pub deadlettered: Counter,
    /// Messages the consumer has yet to receive (JetStream's pending count).
    pub pending: Gauge,
    /// Age in seconds of the oldest event received and not yet projected (0 when caught up).
    pub oldest_unprojected_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Failed Redis writes (retried).
    pub write_failures: Counter,
    /// Events per projection write (one Redis round trip): larger while a backlog waits.
    pub write_events: Histogram,
    /// Query latency per call.
    pub query_seconds: Family<CallLabel, Histogram>,
    /// What queries took from memory and what they read from Redis.
    pub cache: CacheMetrics,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            projected: register(
                registry,
                "analytics_events_projected",
                "events folded into the Redis projection",
                Counter::default(),
            ),
            redeliveries_ignored: register(
                registry,
                "analytics_redeliveries_ignored",
                "events that came again and were already in the projection (nothing written)",
                Counter::default(),
            ),
            deadlettered: register(
                registry,
                "analytics_deadlettered",
                "messages on EVENTS that are not events",
                Counter::default(),
            ),
            pending: register(
                registry,
                "analytics_consumer_pending",
                "messages the projection consumer has yet to receive",
                Gauge::default(),
            ),
            oldest_unprojected_seconds: register(
                registry,
                "analytics_oldest_unprojected_seconds",
                "age of the oldest event received and not yet projected",
                Gauge::default(),
            ),
            write_failures: register(
                registry,
                "analytics_redis_write_failures",
                "failed projection writes (retried)",
                Counter::default(),
            ),
            write_events: register(
                registry,
                "analytics_projection_write_events",
                "events per projection write (one Redis round trip)",
                Histogram::new([
                    1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 20_000.0, 50_000.0,
                ]),
            ),
            query_seconds: register(
                registry,
                "analytics_query_seconds",
                "query latency per call",
                latency_family(),
            ),
            cache: CacheMetrics {
                hits: register(
                    registry,
                    "analytics_keen_cache_hits",
                    "collection-hour keys of Keen queries answered from memory (unchanged since read)",
                    Counter::default(),
                ),
                misses: register(
                    registry,
                    "analytics_keen_cache_misses",
                    "collection-hour keys of Keen queries read from Redis (not held, or changed)",
                    Counter::default(),
                ),
                answers: register(
                    registry,
                    "analytics_keen_cache_answers",
                    "Keen queries answered whole from memory (every hour they read unchanged since)",
                    Counter::default(),
                ),
                summaries: register(
                    registry,
                    "analytics_summary_cache_hits",
                    "learner summaries answered from memory (the learner and their courses' known problems unchanged since)",
                    Counter::default(),
                ),
                clears: register(
                    registry,
                    "analytics_cache_clears",
                    "times the query cache was emptied after a Redis error (Redis may have lost writes)",
                    Counter::default(),
                ),
            },
        }
    }

    /// Records one query's latency.
    pub fn observe(&self, call: &'static str, api: &'static str, started: std::time::Instant) {
        self.query_seconds
            .get_or_create(&CallLabel { call, api })
            .observe(started.elapsed().as_secs_f64());
    }
}
