//! s3-rotator's metrics.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub events_archived: Counter,
    pub bytes_uploaded: Counter,
    pub objects_uploaded: Counter,
    pub upload_failures: Counter,
    pub deadlettered: Counter,
    pub upload_seconds: Histogram,
    pub oldest_unarchived_seconds: Gauge<f64, AtomicU64>,
    pub events_pending: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            events_archived: Counter::default(),
            bytes_uploaded: Counter::default(),
            objects_uploaded: Counter::default(),
            upload_failures: Counter::default(),
            deadlettered: Counter::default(),
            upload_seconds: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            oldest_unarchived_seconds: Gauge::default(),
            events_pending: Gauge::default(),
        };
        registry.register(
            "archive_events_archived",
            "events stored in the archive and acknowledged",
            metrics.events_archived.clone(),
        );
        registry.register(
            "archive_bytes_uploaded",
            "compressed bytes written to the archive",
            metrics.bytes_uploaded.clone(),
        );
        registry.register(
            "archive_objects_uploaded",
            "objects written to the archive",
            metrics.objects_uploaded.clone(),
        );
        registry.register(
            "archive_upload_failures",
            "failed object uploads (retried)",
            metrics.upload_failures.clone(),
        );
        registry.register(
            "archive_deadlettered",
            "messages that were not events, sent to DEADLETTER",
            metrics.deadlettered.clone(),
        );
        registry.register(
            "archive_upload_seconds",
            "object upload latency",
            metrics.upload_seconds.clone(),
        );
        registry.register(
            "archive_oldest_unarchived_seconds",
            "age of the oldest received event not yet in the archive",
            metrics.oldest_unarchived_seconds.clone(),
        );
        registry.register(
            "archive_events_pending",
            "events received but not yet archived",
            metrics.events_pending.clone(),
        );
        metrics
    }
}
