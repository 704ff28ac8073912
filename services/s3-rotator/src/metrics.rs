//! s3-rotator's metrics (`learntrail_archive_*`).

use std::sync::atomic::AtomicU64;

use learntrail_runtime::metrics::register;
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
    pub ack_failures: Counter,
    pub segments_rejected: Counter,
    pub segments_damaged: Counter,
    pub deliveries: Counter,
    pub redeliveries_ignored: Counter,
    pub deadlettered: Counter,
    pub upload_seconds: Histogram,
    pub oldest_unarchived_seconds: Gauge<f64, AtomicU64>,
    pub events_pending: Gauge,
}

impl Metrics {
    pub fn register(r: &mut Registry) -> Self {
        Self {
            events_archived: register(
                r,
                "archive_events_archived",
                "events stored in the archive and acknowledged",
                Counter::default(),
            ),
            bytes_uploaded: register(
                r,
                "archive_bytes_uploaded",
                "compressed bytes written to the archive",
                Counter::default(),
            ),
            objects_uploaded: register(
                r,
                "archive_objects_uploaded",
                "objects written to the archive",
                Counter::default(),
            ),
            upload_failures: register(
                r,
                "archive_upload_failures",
                "failed object uploads (retried)",
                Counter::default(),
            ),
            ack_failures: register(
                r,
                "archive_ack_failures",
                "acknowledgements the server did not confirm (retried)",
                Counter::default(),
            ),
            segments_rejected: register(
                r,
                "archive_segments_rejected",
                "uploads the store refused outright (403, 400, ...); the segment is set aside and retried after a while",
                Counter::default(),
            ),
            segments_damaged: register(
                r,
                "archive_segments_damaged",
                "segments that could not be read back, set aside; their events come again by redelivery",
                Counter::default(),
            ),
            deliveries: register(
                r,
                "archive_deliveries",
                "messages received from the consumer, redeliveries included",
                Counter::default(),
            ),
            redeliveries_ignored: register(
                r,
                "archive_redeliveries_ignored",
                "redeliveries of events already in a segment or just archived",
                Counter::default(),
            ),
            deadlettered: register(
                r,
                "archive_deadlettered",
                "messages that were not events, sent to DEADLETTER",
                Counter::default(),
            ),
            upload_seconds: register(
                r,
                "archive_upload_seconds",
                "object upload latency",
                Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            ),
            oldest_unarchived_seconds: register(
                r,
                "archive_oldest_unarchived_seconds",
                "age of the oldest received event not yet in the archive",
                Gauge::default(),
            ),
            events_pending: register(
                r,
                "archive_events_pending",
                "events received but not yet archived",
                Gauge::default(),
            ),
        }
    }
}
