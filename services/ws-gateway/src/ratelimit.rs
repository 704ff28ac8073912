//! A token bucket per connection: `rate` messages a second on average, `burst` at once (a lab UI
//! flushing its backlog after a reconnect).

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token; false when the bucket is empty (the client is over its limit).
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(200.0, 1_000, start);
        assert!((0..1_000).all(|_| bucket.take(start)), "the burst");
        assert!(!bucket.take(start), "over the burst");
        // 100 ms later: 20 more
        let later = start + Duration::from_millis(100);
        assert_eq!((0..50).filter(|_| bucket.take(later)).count(), 20);
        // refills to the burst, not beyond
        let much_later = later + Duration::from_secs(60);
        assert_eq!(
            (0..2_000).filter(|_| bucket.take(much_later)).count(),
            1_000
        );
    }
}
