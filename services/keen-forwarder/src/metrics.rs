//! keen-forwarder's metrics (`learntrail_forward_*`), labelled by destination (a handful of
//! configured names, never an event id).

use std::sync::atomic::AtomicU64;

use learntrail_runtime::metrics::register;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Dest {
    pub destination: String,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub delivered: Family<Dest, Counter>,
    pub retried: Family<Dest, Counter>,
    pub deadlettered: Family<Dest, Counter>,
    pub requests_failed: Family<Dest, Counter>,
    pub batch_size: Family<Dest, Histogram>,
    pub delivery_seconds: Family<Dest, Histogram>,
    pub pending: Family<Dest, Gauge>,
    pub oldest_undelivered_seconds: Family<Dest, Gauge<f64, AtomicU64>>,
}

/// One destination's handles.
#[derive(Debug, Clone)]
pub struct DestMetrics {
    pub delivered: Counter,
    pub retried: Counter,
    pub deadlettered: Counter,
    pub requests_failed: Counter,
    pub batch_size: Histogram,
    pub delivery_seconds: Histogram,
    pub pending: Gauge,
    pub oldest_undelivered_seconds: Gauge<f64, AtomicU64>,
}

impl Metrics {
    pub fn register(r: &mut Registry) -> Self {
        Self {
            delivered: register(
                r,
                "forward_delivered",
                "events the destination accepted, acknowledged",
                Family::default(),
            ),
            retried: register(
                r,
                "forward_retried",
                "event deliveries retried after a failed attempt",
                Family::default(),
            ),
            deadlettered: register(
                r,
                "forward_deadlettered",
                "events sent to DEADLETTER (refused, or out of attempts)",
                Family::default(),
            ),
            requests_failed: register(
                r,
                "forward_attempts_failed",
                "delivery attempts with at least one event not accepted",
                Family::default(),
            ),
            batch_size: register(
                r,
                "forward_batch_size",
                "events per delivery",
                Family::new_with_constructor(|| {
                    Histogram::new([1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0])
                }),
            ),
            delivery_seconds: register(
                r,
                "forward_delivery_latency_seconds",
                "from an event's receipt on the bus to its acknowledgement after delivery",
                Family::new_with_constructor(|| {
                    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0])
                }),
            ),
            pending: register(
                r,
                "forward_pending",
                "events not yet delivered: waiting in the stream or in flight",
                Family::default(),
            ),
            oldest_undelivered_seconds: register(
                r,
                "forward_oldest_undelivered_seconds",
                "age of the oldest event not yet delivered (0 when caught up)",
                Family::default(),
            ),
        }
    }

    pub fn for_destination(&self, name: &str) -> DestMetrics {
        let l = Dest {
            destination: name.to_string(),
        };
        DestMetrics {
            delivered: self.delivered.get_or_create(&l).clone(),
            retried: self.retried.get_or_create(&l).clone(),
            deadlettered: self.deadlettered.get_or_create(&l).clone(),
            requests_failed: self.requests_failed.get_or_create(&l).clone(),
            batch_size: self.batch_size.get_or_create(&l).clone(),
            delivery_seconds: self.delivery_seconds.get_or_create(&l).clone(),
            pending: self.pending.get_or_create(&l).clone(),
            oldest_undelivered_seconds: self.oldest_undelivered_seconds.get_or_create(&l).clone(),
        }
    }
}
