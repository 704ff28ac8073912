//! What a destination answers for each event of a batch, and the destinations themselves: one
//! enum over Keen.IO, a webhook and an xAPI LRS, each delivering a batch in one call and
//! answering per event.

use std::time::Duration;

use learntrail_proto::Event;

use crate::{keen::Keen, lrs::Lrs, webhook::Webhook};

/// The fate of one event in one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination accepted (or already held) the event: acknowledge it.
    Delivered,
    /// The destination refused it for good (bad name or value): dead-letter it with the reason.
    Rejected(String),
    /// Not accepted this time (network, 5xx, 429, ...): retry, not before `retry_after`.
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
}

impl Outcome {
    pub fn failed(reason: impl Into<String>) -> Self {
        Self::Failed {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

/// A destination's protocol client.
#[derive(Debug)]
pub enum Sink {
    Keen(Keen),
    Webhook(Webhook),
    Lrs(Lrs),
}

impl Sink {
    /// Delivers `events` in as few requests as the protocol allows; one outcome per event, in
    /// order.
    pub async fn deliver(&self, events: &[Event]) -> Vec<Outcome> {
        match self {
            Self::Keen(keen) => keen.deliver(events).await,
            Self::Webhook(webhook) => webhook.deliver(events).await,
            Self::Lrs(lrs) => lrs.deliver(events).await,
        }
    }

    /// Where it goes, for the log (no secrets).
    pub fn describe(&self) -> String {
        match self {
            Self::Keen(keen) => keen.describe(),
            Self::Webhook(webhook) => webhook.describe(),
            Self::Lrs(lrs) => lrs.describe(),
        }
    }
}

/// `Retry-After` as seconds (the form Keen and most APIs send) or an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// The outcome for a whole request answered with a non-success status.
pub fn failed_status(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> Outcome {
    let body: String = body.chars().take(300).collect();
    let moved = status
        .is_redirection()
        .then(|| headers.get(reqwest::header::LOCATION)?.to_str().ok())
        .flatten()
        .map(|to| format!(" (a redirect to {to}, not followed: configure the URL it names)"))
        .unwrap_or_default();
    Outcome::Failed {
        reason: format!("HTTP {}{moved}: {}", status.as_u16(), body.trim()),
        retry_after: (status == reqwest::StatusCode::TOO_MANY_REQUESTS)
            .then(|| retry_after(headers))
            .flatten(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        let outcome = failed_status(reqwest::StatusCode::TOO_MANY_REQUESTS, &headers, "{}");
        assert!(
            matches!(
                outcome,
                Outcome::Failed {
                    retry_after: Some(_),
                    ..
                }
            ),
            "{outcome:?}"
        );
    }
}
