//! notebook-scanner's metrics.

use learntrail_runtime::metrics::{latency_histogram, register};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Snapshot events acknowledged by the stream.
    pub events: Counter,
    /// Notebooks that could not be parsed (their event carries `parse_error`).
    pub parse_errors: Counter,
    /// Files not snapshotted, by reason (too_large, unreadable, store, publish).
    pub skipped: Family<ReasonLabel, Counter>,
    /// Files in the index.
    pub indexed: Gauge,
    /// Duration of a full scan.
    pub scan_seconds: Histogram,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            events: register(
                registry,
                "notebook_snapshot_events",
                "snapshot events acknowledged by the stream",
                Counter::default(),
            ),
            parse_errors: register(
                registry,
                "notebook_parse_errors",
                "notebooks that could not be parsed",
                Counter::default(),
            ),
            skipped: register(
                registry,
                "notebook_files_skipped",
                "changed files not snapshotted, by reason",
                Family::default(),
            ),
            indexed: register(
                registry,
                "notebook_files_indexed",
                "files in the index",
                Gauge::default(),
            ),
            scan_seconds: register(
                registry,
                "notebook_scan_seconds",
                "duration of a full scan",
                latency_histogram(),
            ),
        }
    }

    pub fn skip(&self, reason: &'static str) {
        self.skipped.get_or_create(&ReasonLabel { reason }).inc();
    }
}
