//! eagle-pinger's own metrics (HTTP request metrics come from the runtime). Labels are bounded:
//! a state or an outcome, never a cloud id.

use learntrail_runtime::metrics::{latency_histogram, register};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Buckets for schedule drift (seconds): 1 ms to 10 s, finer around the 250 ms target.
pub const DRIFT_BUCKETS: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every state a meter can be in.
pub const STATES: [&str; 7] = [
    "pending",
    "ok",
    "auth_failed",
    "unreachable",
    "malformed",
    "no_meter",
    "undecryptable",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Meters this replica polls, by state.
    pub meters: Family<StateLabel, Gauge>,
    /// Polls by outcome (ok, auth_failed, unreachable, malformed, no_meter, empty).
    pub polls: Family<OutcomeLabel, Counter>,
    /// Time an Eagle took to answer a whole poll.
    pub poll_seconds: Histogram,
    /// How late a poll started after its scheduled time.
    pub drift_seconds: Histogram,
    /// Readings stored on the bus.
    pub events: Counter,
    /// Readings the bus did not store.
    pub publish_failures: Counter,
    /// Malformed replies recorded on deadletter.energy.
    pub deadletters: Counter,
    /// Poll outcomes Redis did not take.
    pub registry_failures: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            meters: register(
                registry,
                "eagle_meters",
                "meters this replica polls, by state",
                Family::default(),
            ),
            polls: register(
                registry,
                "eagle_polls",
                "polls by outcome",
                Family::default(),
            ),
            poll_seconds: register(
                registry,
                "eagle_poll_seconds",
                "time an Eagle took to answer a poll",
                latency_histogram(),
            ),
            drift_seconds: register(
                registry,
                "eagle_schedule_drift_seconds",
                "how late a poll started after its scheduled time",
                Histogram::new(DRIFT_BUCKETS),
            ),
            events: register(
                registry,
                "eagle_events_published",
                "readings stored on the bus",
                Counter::default(),
            ),
            publish_failures: register(
                registry,
                "eagle_publish_failures",
                "readings the bus did not store",
                Counter::default(),
            ),
            deadletters: register(
                registry,
                "eagle_deadletters",
                "malformed replies recorded on deadletter.energy",
                Counter::default(),
            ),
            registry_failures: register(
                registry,
                "eagle_registry_write_failures",
                "poll outcomes Redis did not take",
                Counter::default(),
            ),
        };
        for state in STATES {
            let _ = metrics.meters.get_or_create(&StateLabel { state });
        }
        metrics
    }

    /// Moves one meter from state `from` (None: a new meter) to `to` (None: gone).
    pub fn transition(&self, from: Option<&'static str>, to: Option<&'static str>) {
        if from == to {
            return;
        }
        if let Some(state) = from {
            self.meters.get_or_create(&StateLabel { state }).dec();
        }
        if let Some(state) = to {
            self.meters.get_or_create(&StateLabel { state }).inc();
        }
    }

    pub fn poll(&self, outcome: &'static str) {
        self.polls.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}
