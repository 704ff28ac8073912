//! The one retry policy of every Learntrail service: exponential backoff with full jitter, from
//! `min` doubling up to `max`, forever unless the caller bounds it. Built on `backon`, so a
//! fallible async call retries with `(|| op()).retry(retry::policy(min, max)).await`, and a hand
//! loop (a consumer that must also watch for shutdown) takes its delays from [`Delays`].

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

pub use backon::Retryable;

/// The backoff builder: exponential from `min` to `max` with jitter, unbounded attempts.
pub fn policy(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// Successive delays of one retry episode; [`Delays::reset`] after a success.
#[derive(Debug)]
pub struct Delays {
    builder: ExponentialBuilder,
    current: ExponentialBackoff,
    max: Duration,
}

impl Delays {
    pub fn new(min: Duration, max: Duration) -> Self {
        let builder = policy(min, max);
        Self {
            current: builder.build(),
            builder,
            max,
        }
    }

    /// The next delay to wait before retrying.
    pub fn next_delay(&mut self) -> Duration {
        self.current.next().unwrap_or(self.max)
    }

    /// Starts over from `min` (call after a success).
    pub fn reset(&mut self) {
        self.current = self.builder.build();
    }

    /// Waits for the next delay; false when `token` was cancelled first.
    pub async fn wait(&mut self, token: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = token.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_and_stay_under_the_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut delays = Delays::new(min, max);
        let seen: Vec<Duration> = (0..20).map(|_| delays.next_delay()).collect();
        // jitter adds up to one more delay on top, never more than twice the cap
        assert!(seen.iter().all(|d| *d >= min && *d <= max * 2), "{seen:?}");
        assert!(
            seen[10..].iter().any(|d| *d >= max),
            "reaches the cap: {seen:?}"
        );
        delays.reset();
        assert!(delays.next_delay() < min * 2 + min);
    }

    #[tokio::test]
    async fn retryable_calls_retry_until_success() {
        let mut attempts = 0;
        let result: Result<u32, &str> = (|| {
            attempts += 1;
            let n = attempts;
            async move { if n < 3 { Err("not yet") } else { Ok(n) } }
        })
        .retry(policy(Duration::from_millis(1), Duration::from_millis(5)))
        .await;
        assert_eq!(result, Ok(3));
    }
}
