//! tracking-api's own metrics (HTTP request metrics come from the runtime).

use learntrail_runtime::metrics::{latency_histogram, register};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Events stored on the bus, by kind.
    pub accepted: Family<KindLabel, Counter>,
    /// Events refused, by reason (invalid, forbidden, unavailable, ...).
    pub rejected: Family<ReasonLabel, Counter>,
    /// Retries recognised by id and stored once.
    pub duplicates: Counter,
    /// Time from publish to JetStream ack.
    pub publish_seconds: Histogram,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            accepted: register(
                registry,
                "tracking_events_accepted",
                "events stored on the bus",
                Family::default(),
            ),
            rejected: register(
                registry,
                "tracking_events_rejected",
                "events refused, by reason",
                Family::default(),
            ),
            duplicates: register(
                registry,
                "tracking_events_duplicate",
                "retried events stored once",
                Counter::default(),
            ),
            publish_seconds: register(
                registry,
                "tracking_publish_seconds",
                "publish-to-ack latency",
                latency_histogram(),
            ),
        }
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }
}
