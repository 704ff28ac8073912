//! An xAPI Learning Record Store: `POST {LRS_URL}/statements` with an array of statements,
//! Basic auth and `X-Experience-API-Version: 1.0.3`. Statement ids are stable, so a statement
//! the LRS already holds answers 409 Conflict and counts as delivered. A batch refused as a whole
//! (400 or 409) is resent one event at a time, so one bad event does not hold back the rest: an
//! event's own 400 is a rejection, its 409 a delivery.

use learntrail_proto::Event;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::{
    sink::{Outcome, failed_status},
    xapi::Mapping,
};

pub const VERSION_HEADER: &str = "X-Experience-API-Version";
pub const VERSION: &str = "1.0.3";

#[derive(Debug)]
pub struct Lrs {
    http: reqwest::Client,
    url: String,
    username: String,
    password: SecretString,
    mapping: Mapping,
}

impl Lrs {
    pub fn new(
        http: reqwest::Client,
        url: &str,
        username: String,
        password: SecretString,
        mapping: Mapping,
    ) -> Self {
        Self {
            http,
            url: format!("{}/statements", url.trim_end_matches('/')),
            username,
            password,
            mapping,
        }
    }

    pub fn describe(&self) -> String {
        format!("lrs {}", self.url)
    }

    pub async fn deliver(&self, events: &[Event]) -> Vec<Outcome> {
        let per_event: Vec<Vec<Value>> =
            events.iter().map(|e| self.mapping.statements(e)).collect();
        let all: Vec<&Value> = per_event.iter().flatten().collect();
        if all.is_empty() {
            return vec![Outcome::Delivered; events.len()];
        }
        let whole = self.post(&all).await;
        let several = per_event.iter().filter(|s| !s.is_empty()).count() > 1;
        match whole {
            Answer::Rejected(_) | Answer::Conflict if several => {
                let mut outcomes = Vec::with_capacity(events.len());
                for statements in &per_event {
                    outcomes.push(if statements.is_empty() {
                        Outcome::Delivered
                    } else {
                        self.post(&statements.iter().collect::<Vec<_>>())
                            .await
                            .outcome()
                    });
                }
                outcomes
            }
            answer => {
                let outcome = answer.outcome();
                per_event
                    .iter()
                    .map(|s| {
                        if s.is_empty() {
                            Outcome::Delivered
                        } else {
                            outcome.clone()
                        }
                    })
                    .collect()
            }
        }
    }

    async fn post(&self, statements: &[&Value]) -> Answer {
        let response = self
            .http
            .post(&self.url)
            .basic_auth(&self.username, Some(self.password.expose_secret()))
            .header(VERSION_HEADER, VERSION)
            .json(statements)
            .send()
            .await;
        let response = match response {
            Err(err) => return Answer::Failed(Outcome::failed(format!("lrs unreachable: {err}"))),
            Ok(response) => response,
        };
        let (status, headers) = (response.status(), response.headers().clone());
        let text = response.text().await.unwrap_or_default();
        match status {
            s if s.is_success() => Answer::Stored,
            StatusCode::CONFLICT => Answer::Conflict,
            StatusCode::BAD_REQUEST => Answer::Rejected(format!(
                "LRS 400: {}",
                text.chars().take(300).collect::<String>()
            )),
            _ => Answer::Failed(failed_status(status, &headers, &text)),
        }
    }
}

enum Answer {
    Stored,
    /// The LRS already holds a statement with one of these ids.
    Conflict,
    Rejected(String),
    Failed(Outcome),
}

impl Answer {
    fn outcome(self) -> Outcome {
        match self {
            Self::Stored | Self::Conflict => Outcome::Delivered,
            Self::Rejected(reason) => Outcome::Rejected(reason),
            Self::Failed(outcome) => outcome,
        }
    }
}
