//! The configured destinations: Keen.IO, webhooks and an LRS from the environment (`KEEN_*`,
//! `WEBHOOK_URLS` + `WEBHOOK_SECRET`, `LRS_*`) and any number more from a destinations file,
//! each with its own subject filter, batching, concurrency and retry policy (the `FORWARD_*`
//! settings are the defaults a file entry may override).

use std::{collections::HashMap, path::Path, time::Duration};

use learntrail_runtime::units::{parse_bytes, parse_duration};
use secrecy::SecretString;
use serde::Deserialize;

use crate::{Config, keen::Keen, lrs::Lrs, sink::Sink, webhook::Webhook, xapi::Mapping};

/// How one destination consumes and retries.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// Subject filter of its consumer, e.g. `events.lms.>`.
    pub subjects: String,
    /// Most events per delivery.
    pub batch_size: usize,
    /// Most payload bytes per delivery.
    pub batch_bytes: u64,
    /// How long a partial batch waits for more events.
    pub linger: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Attempts before an event is dead-lettered.
    pub max_attempts: u32,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// JetStream redelivers an unacknowledged event after this long.
    pub ack_wait: Duration,
}

/// One destination: its name (`keen`, `webhook.<name>`, `lrs`), protocol client and tuning.
#[derive(Debug)]
pub struct Destination {
    pub name: String,
    pub sink: Sink,
    pub tuning: Tuning,
}

impl Destination {
    /// The durable consumer's name: `keen-forwarder-<name>` with `.` as `-`.
    pub fn consumer(&self) -> String {
        format!("keen-forwarder-{}", self.name.replace('.', "-"))
    }
}

/// A destinations file entry (JSON: `{"destinations": [ ... ]}`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// `keen`, `webhook` or `lrs`.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    pub url: Option<String>,
    pub project_id: Option<String>,
    pub write_key: Option<String>,
    #[serde(default)]
    pub collections: HashMap<String, String>,
    pub secret: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub actor_homepage: Option<String>,
    pub activity_base: Option<String>,
    pub subjects: Option<String>,
    pub batch_size: Option<usize>,
    pub batch_bytes: Option<String>,
    pub linger: Option<String>,
    pub concurrency: Option<usize>,
    pub max_attempts: Option<u32>,
    pub retry_min: Option<String>,
    pub retry_max: Option<String>,
    pub ack_wait: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    destinations: Vec<Entry>,
}

/// Every configured destination, or every problem with the settings at once.
pub fn from_config(config: &Config) -> Result<Vec<Destination>, String> {
    let http = reqwest::Client::builder()
        .timeout(config.request_timeout)
        // a redirect is not followed: following one turns a POST into a body-less GET, whose 2xx
        // would count as delivered; it fails (and is retried) naming where it points
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!(
            "learntrail-keen-forwarder/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let mut entries = env_entries(config);
    if let Some(path) = &config.destinations_file {
        entries.extend(read_file(path)?);
    }
    let mut problems = Vec::new();
    let mut destinations: Vec<Destination> = Vec::new();
    for entry in entries {
        match build(config, &http, entry) {
            Ok(d) if destinations.iter().any(|o| o.name == d.name) => {
                problems.push(format!("destination {} is configured twice", d.name))
            }
            Ok(d) => destinations.push(d),
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(destinations)
    } else {
        Err(problems.join("; "))
    }
}

fn read_file(path: &Path) -> Result<Vec<Entry>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read DESTINATIONS_FILE {}: {e}", path.display()))?;
    let file: File = serde_json::from_str(&text)
        .map_err(|e| format!("DESTINATIONS_FILE {}: {e}", path.display()))?;
    Ok(file.destinations)
}

/// The destinations the environment configures: Keen with a project id, webhooks with URLs, an
/// LRS with a URL.
fn env_entries(config: &Config) -> Vec<Entry> {
    let mut entries = Vec::new();
    if config.keen_project_id.is_some() || config.keen_write_key.is_some() {
        entries.push(Entry {
            kind: "keen".into(),
            subjects: Some(config.keen_subjects.clone()),
            ..Default::default()
        });
    }
    let urls: Vec<&str> = config
        .webhook_urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    for (n, url) in urls.iter().enumerate() {
        let (name, url) = match url.split_once('=') {
            Some((name, url)) if !name.contains('/') => (name.to_string(), url.to_string()),
            _ if urls.len() == 1 => ("default".to_string(), url.to_string()),
            _ => (format!("hook{}", n + 1), url.to_string()),
        };
        entries.push(Entry {
            kind: "webhook".into(),
            name: Some(name),
            url: Some(url),
            subjects: Some(config.webhook_subjects.clone()),
            ..Default::default()
        });
    }
    if config.lrs_url.is_some() {
        entries.push(Entry {
            kind: "lrs".into(),
            subjects: Some(config.lrs_subjects.clone()),
            ..Default::default()
        });
    }
    entries
}

fn secret(value: Option<String>, fallback: Option<&SecretString>) -> Option<SecretString> {
    value.map(SecretString::from).or_else(|| fallback.cloned())
}

fn build(config: &Config, http: &reqwest::Client, entry: Entry) -> Result<Destination, String> {
    let tuning = tuning(config, &entry)?;
    let (name, sink) = match entry.kind.as_str() {
        "keen" => {
            let project = entry.project_id.or_else(|| config.keen_project_id.clone());
            let key = secret(entry.write_key, config.keen_write_key.as_ref());
            let (Some(project), Some(key)) = (project, key) else {
                return Err("Keen needs KEEN_PROJECT_ID and KEEN_WRITE_KEY".into());
            };
            let mut renames = parse_renames(&config.keen_collections)?;
            renames.extend(entry.collections);
            let url = entry.url.unwrap_or_else(|| config.keen_url.clone());
            let keen = Keen::new(http.clone(), &url, project, key, renames);
            ("keen".to_string(), Sink::Keen(keen))
        }
        "webhook" => {
            let name = entry.name.ok_or("a webhook needs a name")?;
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(format!(
                    "webhook name {name:?}: letters, digits, - and _ only"
                ));
            }
            let url = entry
                .url
                .ok_or_else(|| format!("webhook {name} needs a url"))?;
            let secret = secret(entry.secret, config.webhook_secret.as_ref());
            let hook = Webhook::new(http.clone(), name.clone(), url, secret);
            (format!("webhook.{name}"), Sink::Webhook(hook))
        }
        "lrs" => {
            let url = entry
                .url
                .or_else(|| config.lrs_url.clone())
                .ok_or("the LRS needs LRS_URL")?;
            let username = entry
                .username
                .or_else(|| config.lrs_username.clone())
                .unwrap_or_default();
            let password = secret(entry.password, config.lrs_password.as_ref())
                .unwrap_or_else(|| SecretString::from(""));
            let mapping = Mapping {
                actor_homepage: entry
                    .actor_homepage
                    .unwrap_or_else(|| config.lrs_actor_homepage.clone()),
                activity_base: entry
                    .activity_base
                    .unwrap_or_else(|| config.lrs_activity_base.clone()),
            };
            (
                "lrs".to_string(),
                Sink::Lrs(Lrs::new(http.clone(), &url, username, password, mapping)),
            )
        }
        other => {
            return Err(format!(
                "unknown destination type {other:?} (keen, webhook, lrs)"
            ));
        }
    };
    Ok(Destination { name, sink, tuning })
}

fn tuning(config: &Config, entry: &Entry) -> Result<Tuning, String> {
    let duration = |value: &Option<String>, default: Duration| {
        value.as_deref().map_or(Ok(default), parse_duration)
    };
    let tuning = Tuning {
        subjects: entry.subjects.clone().unwrap_or_else(|| "events.>".into()),
        batch_size: entry.batch_size.unwrap_or(config.batch_size).max(1),
        batch_bytes: entry
            .batch_bytes
            .as_deref()
            .map_or(Ok(config.batch_bytes), parse_bytes)?,
        linger: duration(&entry.linger, config.linger)?,
        concurrency: entry.concurrency.unwrap_or(config.concurrency).max(1),
        max_attempts: entry.max_attempts.unwrap_or(config.max_attempts).max(1),
        retry_min: duration(&entry.retry_min, config.retry_min)?,
        retry_max: duration(&entry.retry_max, config.retry_max)?,
        ack_wait: duration(&entry.ack_wait, config.ack_wait)?,
    };
    Ok(tuning)
}

/// `shim.ruby_run=ruby_runs,lms.video=videos` → renames of Keen collections.
pub fn parse_renames(text: &str) -> Result<HashMap<String, String>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
                .ok_or_else(|| {
                    format!("KEEN_COLLECTIONS: {pair:?} is not <source>.<kind>=<collection>")
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn environment_and_file_destinations_with_their_own_tuning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.json");
        std::fs::write(
            &path,
            r#"{"destinations": [{"type": "webhook", "name": "lms", "url": "http://h/x",
                "subjects": "events.lms.>", "batch_size": 7, "linger": "1s", "max_attempts": 2}]}"#,
        )
        .unwrap();
        let config = Config::parse_from([
            "keen-forwarder",
            "--keen-project-id",
            "p",
            "--keen-write-key",
            "k",
            "--keen-collections",
            "shim.ruby_run=runs",
            "--webhook-urls",
            "http://a/1,ops=http://b/2",
            "--destinations-file",
            path.to_str().unwrap(),
        ]);
        let destinations = from_config(&config).unwrap();
        let names: Vec<&str> = destinations.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["keen", "webhook.hook1", "webhook.ops", "webhook.lms"]
        );
        let lms = &destinations[3];
        assert_eq!(lms.consumer(), "keen-forwarder-webhook-lms");
        assert_eq!(lms.tuning.subjects, "events.lms.>");
        assert_eq!((lms.tuning.batch_size, lms.tuning.max_attempts), (7, 2));
        assert_eq!(lms.tuning.linger, Duration::from_secs(1));
        assert_eq!(destinations[0].tuning.batch_size, config.batch_size);
    }

    #[test]
    fn every_problem_is_reported() {
        let config = Config::parse_from([
            "keen-forwarder",
            "--keen-project-id",
            "p",
            "--keen-collections",
            "nonsense",
        ]);
        let err = from_config(&config).unwrap_err();
        assert!(err.contains("KEEN_WRITE_KEY"), "{err}");
        let none = Config::parse_from(["keen-forwarder"]);
        assert!(from_config(&none).unwrap().is_empty());
    }
}
