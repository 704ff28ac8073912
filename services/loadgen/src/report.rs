//! Latency histograms and the printed figures.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Throughput and latency of one measured phase.
#[derive(Debug)]
pub struct Phase {
    pub name: String,
    /// Units done (events stored, runs made).
    pub count: u64,
    pub elapsed: Duration,
    /// Per-request latency in microseconds.
    pub latency: Histogram<u64>,
    pub errors: u64,
}

impl Phase {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            count: 0,
            elapsed: Duration::ZERO,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            errors: 0,
        }
    }

    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn merge(&mut self, other: &Phase) {
        self.count += other.count;
        self.errors += other.errors;
        self.latency.add(&other.latency).expect("same bounds");
    }

    /// One line: rate, p50/p99 and errors.
    pub fn line(&self) -> String {
        format!(
            "{:<34} {:>10.0} /s   p50 {:>7.2} ms   p99 {:>7.2} ms   errors {}",
            self.name,
            self.rate(),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            self.errors
        )
    }
}

/// `PASS`/`MISS` against a target.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}
