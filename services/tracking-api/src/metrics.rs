//! tracking-api's own metrics (HTTP request metrics come from the runtime).

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
        let metrics = Self {
            accepted: Family::default(),
            rejected: Family::default(),
            duplicates: Counter::default(),
            publish_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0,
            ]),
        };
        registry.register(
            "tracking_events_accepted",
            "events stored on the bus",
            metrics.accepted.clone(),
        );
        registry.register(
            "tracking_events_rejected",
            "events refused, by reason",
            metrics.rejected.clone(),
        );
        registry.register(
            "tracking_events_duplicate",
            "retried events stored once",
            metrics.duplicates.clone(),
        );
        registry.register(
            "tracking_publish_seconds",
            "publish-to-ack latency",
            metrics.publish_seconds.clone(),
        );
        metrics
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }
}
