//! ws-gateway's own metrics.

use learntrail_runtime::metrics::{latency_histogram, register};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Upgrades refused, by reason (unauthorized, origin, full).
    pub refused: Family<CodeLabel, Counter>,
    /// Data messages read from sockets.
    pub received: Counter,
    /// Messages stored on the bus and acked.
    pub acked: Counter,
    /// Resent messages recognised by id and stored once.
    pub duplicates: Counter,
    /// Error frames sent, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Analytics requests answered.
    pub responses: Counter,
    /// Connections closed for going over the rate limit.
    pub rate_limited: Counter,
    /// Time from reading a log message to its JetStream ack.
    pub ack_seconds: Histogram,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            connections: register(
                registry,
                "ws_connections",
                "open WebSocket connections",
                Gauge::default(),
            ),
            refused: register(
                registry,
                "ws_upgrades_refused",
                "upgrades refused, by reason",
                Family::default(),
            ),
            received: register(
                registry,
                "ws_messages_received",
                "data messages read from sockets",
                Counter::default(),
            ),
            acked: register(
                registry,
                "ws_messages_acked",
                "log messages stored on the bus and acked",
                Counter::default(),
            ),
            duplicates: register(
                registry,
                "ws_messages_duplicate",
                "resent messages stored once",
                Counter::default(),
            ),
            errors: register(
                registry,
                "ws_error_frames",
                "error frames sent, by code",
                Family::default(),
            ),
            responses: register(
                registry,
                "ws_analytics_responses",
                "analytics requests answered",
                Counter::default(),
            ),
            rate_limited: register(
                registry,
                "ws_rate_limited",
                "connections closed over the rate limit",
                Counter::default(),
            ),
            ack_seconds: register(
                registry,
                "ws_ack_seconds",
                "message-to-ack latency",
                latency_histogram(),
            ),
        }
    }

    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&CodeLabel { code }).inc();
    }

    pub fn refuse(&self, code: &'static str) {
        self.refused.get_or_create(&CodeLabel { code }).inc();
    }
}
