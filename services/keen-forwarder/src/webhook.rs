//! Webhooks: a batch is one `POST` of `{"events": [<canonical JSON event>, ...]}` signed with
//! `Learntrail-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`; the receiver
//! recomputes it with the shared secret and rejects old timestamps. Any 2xx delivers the batch;
//! anything else is retried (the whole batch: a webhook answers for the request, not per event).

use hmac::{Hmac, Mac};
use learntrail_proto::Event;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::sink::{Outcome, failed_status};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "Learntrail-Signature";

#[derive(Debug)]
pub struct Webhook {
    http: reqwest::Client,
    name: String,
    url: String,
    secret: Option<SecretString>,
}

impl Webhook {
    pub fn new(
        http: reqwest::Client,
        name: String,
        url: String,
        secret: Option<SecretString>,
    ) -> Self {
        Self {
            http,
            name,
            url,
            secret,
        }
    }

    pub fn describe(&self) -> String {
        format!("webhook {} {}", self.name, self.url)
    }

    pub async fn deliver(&self, events: &[Event]) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Delivered; events.len()];
        let mut body = Vec::with_capacity(events.len() * 512);
        body.extend_from_slice(b"{\"events\":[");
        let mut sent = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            match event.to_json() {
                Err(err) => {
                    outcomes[i] = Outcome::Rejected(format!("not expressible as JSON: {err}"))
                }
                Ok(json) => {
                    if !sent.is_empty() {
                        body.push(b',');
                    }
                    body.extend_from_slice(json.as_bytes());
                    sent.push(i);
                }
            }
        }
        body.extend_from_slice(b"]}");
        if sent.is_empty() {
            return outcomes;
        }
        let mut request = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json");
        if let Some(secret) = &self.secret {
            let t = chrono::Utc::now().timestamp();
            request = request.header(
                SIGNATURE_HEADER,
                signature(secret.expose_secret(), t, &body),
            );
        }
        let outcome = match request.body(body).send().await {
            Err(err) => Outcome::failed(format!("webhook unreachable: {err}")),
            Ok(response) if response.status().is_success() => Outcome::Delivered,
            Ok(response) => {
                let (status, headers) = (response.status(), response.headers().clone());
                failed_status(status, &headers, &response.text().await.unwrap_or_default())
            }
        };
        for i in sent {
            outcomes[i] = outcome.clone();
        }
        outcomes
    }
}

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a `Learntrail-Signature` header as a receiver does: the HMAC matches and `t` is within
/// `tolerance_secs` of `now`.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance_secs: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    (now - t).abs() <= tolerance_secs && mac.verify_slice(&v1).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_expire() {
        let header = signature("s3cret", 1_700_000_000, b"{\"events\":[]}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert!(verify(
            "s3cret",
            &header,
            b"{\"events\":[]}",
            1_700_000_100,
            300
        ));
        assert!(!verify(
            "s3cret",
            &header,
            b"{\"events\":[1]}",
            1_700_000_100,
            300
        ));
        assert!(!verify(
            "other",
            &header,
            b"{\"events\":[]}",
            1_700_000_100,
            300
        ));
        assert!(!verify(
            "s3cret",
            &header,
            b"{\"events\":[]}",
            1_700_001_000,
            300
        ));
    }
}
