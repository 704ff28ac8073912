//! Prometheus registration in one line per metric: [`register`] adds a metric to the service's
//! registry and hands back the handle the service keeps, so a `Metrics` struct is built as a
//! list of `name: register(registry, "name", "help", Counter::default())` fields.

use prometheus_client::{
    metrics::{family::Family, histogram::Histogram},
    registry::{Metric, Registry},
};

/// Registers `metric` under `name` (the registry adds the `learntrail_` prefix and, for counters,
/// `_total`) and returns it.
pub fn register<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Latency buckets (seconds) for requests and publishes: 0.5 ms to 5 s.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// A histogram over [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// A labelled family of latency histograms.
pub fn latency_family<L>() -> Family<L, Histogram>
where
    L: Clone + std::hash::Hash + Eq,
{
    Family::new_with_constructor(latency_histogram)
}
