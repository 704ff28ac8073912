use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use clap::Parser;
use learntrail_keen_forwarder::{Config, destination, serve};
use learntrail_proto::{
    Event, Payload, id, subject, time,
    v1::{LabLog, LmsEvent, RubyRun},
};
use learntrail_runtime::{
    CancellationToken,
    bus::{Bus, NatsArgs, StreamArgs},
};
use learntrail_testkit::NatsServer;
use serde_json::Value;
use tokio::net::TcpListener;

/// `n` events over three sources.
pub fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let (source, kind, payload) = match i % 3 {
                0 => (
                    "lms",
                    "video",
                    Payload::LmsEvent(LmsEvent {
                        course_slug: format!("c{i}"),
                        ..Default::default()
                    }),
                ),
                1 => (
                    "shim",
                    "ruby_run",
                    Payload::RubyRun(RubyRun {
                        argv: vec!["ruby".into(), format!("{i}.rb")],
                        duration_ms: i as u64,
                        ..Default::default()
                    }),
                ),
                _ => (
                    "lab",
                    "log",
                    Payload::LabLog(LabLog {
                        experiment: "spinner".into(),
                        log_kind: format!("click-{i}"),
                        ..Default::default()
                    }),
                ),
            };
            Event {
                id: id::new_id(),
                occurred_at: time::parse_rfc3339("2026-11-24T16:30:18.123Z"),
                received_at: Some(time::now()),
                source: source.into(),
                kind: kind.into(),
                actor: format!("learner-{}", i % 7),
                payload: Some(payload),
                ..Default::default()
            }
        })
        .collect()
}

pub async fn bus(nats: &NatsServer) -> Bus {
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "test", true)
        .await
        .unwrap();
    bus.provision(&StreamArgs::default()).await.unwrap();
    bus
}

pub async fn publish(bus: &Bus, events: &[Event]) {
    for result in bus.publish_many(events).await {
        result.unwrap();
    }
}

/// Writes a destinations file (`{"destinations": [...]}`) into `dir`.
pub fn destinations_file(dir: &Path, destinations: Value) -> PathBuf {
    let path = dir.join(format!("destinations-{}.json", id::new_id()));
    std::fs::write(
        &path,
        serde_json::json!({ "destinations": destinations }).to_string(),
    )
    .unwrap();
    path
}

pub fn config(nats: &NatsServer, file: &Path) -> Config {
    Config::parse_from([
        "keen-forwarder",
        "--nats-url",
        &nats.url(),
        "--metrics-addr",
        "127.0.0.1:0",
        "--destinations-file",
        file.to_str().unwrap(),
        "--shutdown-grace",
        "5s",
    ])
}

pub struct Forwarder {
    pub token: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub ops: String,
}

pub async fn start(config: Config) -> Forwarder {
    let destinations = destination::from_config(&config).unwrap();
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_url = format!("http://{}", ops.local_addr().unwrap());
    let token = CancellationToken::new();
    let task = tokio::spawn(serve(config, destinations, ops, token.clone()));
    Forwarder {
        token,
        task,
        ops: ops_url,
    }
}

impl Forwarder {
    pub async fn stop(self) {
        self.token.cancel();
        self.task.await.unwrap().unwrap();
    }

    /// A sample of `/metrics`, e.g. `learntrail_forward_delivered_total{destination="keen"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.ops))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
    }
}

/// A record in DEADLETTER: its subject, reason header and event.
#[derive(Debug)]
pub struct Letter {
    pub subject: String,
    pub reason: String,
    pub event: Event,
}

pub async fn deadletters(bus: &Bus) -> Vec<Letter> {
    use learntrail_proto::Message as _;
    let mut stream = bus
        .jetstream()
        .get_stream(subject::DEADLETTER_STREAM)
        .await
        .unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut letters = Vec::new();
    if state.messages == 0 {
        return letters;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        let reason = message
            .headers
            .get(subject::DEADLETTER_REASON_HEADER)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        letters.push(Letter {
            subject: message.subject.to_string(),
            reason,
            event: Event::decode(message.payload).unwrap(),
        });
    }
    letters
}

/// A Python with Ralph (`ralph-malph[lrs]`) and Keen's client (`keen`), installed from PyPI into
/// a virtualenv under the target directory the first time (`KF_PYTHON` names another).
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Ok(python) = std::env::var("KF_PYTHON") {
            return PathBuf::from(python);
        }
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/keen-forwarder-python");
        let python = venv.join("bin/python");
        let ready = |python: &Path| {
            Command::new(python)
                .args(["-c", "import ralph.api, keen, uvicorn"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ready(&python) {
            let made = Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv)
                .status();
            assert!(
                made.is_ok_and(|s| s.success()),
                "python3 -m venv failed: install python3 and python3-venv"
            );
            let pip = Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "ralph-malph[lrs]==5.1.0",
                    "keen==0.7.0",
                ])
                .status();
            assert!(
                pip.is_ok_and(|s| s.success()),
                "pip install ralph-malph[lrs] keen failed (needs PyPI)"
            );
        }
        python
    })
}

/// Ralph's LRS on the file-system backend, on a free port; killed on drop.
pub struct Ralph {
    child: std::process::Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

pub const LRS_USER: &str = "forwarder";
pub const LRS_PASSWORD: &str = "lrs-password";

impl Ralph {
    pub async fn start() -> Self {
        let python = python();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/ralph_lrs.py");
        let child = Command::new(python)
            .arg(script)
            .arg(dir.path())
            .arg(port.to_string())
            .args([LRS_USER, LRS_PASSWORD])
            .spawn()
            .unwrap();
        let ralph = Self {
            child,
            url: format!("http://127.0.0.1:{port}/xAPI"),
            _dir: dir,
        };
        let http = reqwest::Client::new();
        learntrail_testkit::eventually(
            std::time::Duration::from_secs(60),
            "Ralph answers",
            || async {
                let answer = http
                    .get(format!("{}/statements", ralph.url))
                    .basic_auth(LRS_USER, Some(LRS_PASSWORD))
                    .header("X-Experience-API-Version", "1.0.3")
                    .send()
                    .await
                    .ok()?;
                answer.status().is_success().then_some(())
            },
        )
        .await;
        ralph
    }

    /// Every statement the LRS holds, read back through its statements resource (following
    /// `more`).
    pub async fn statements(&self) -> Vec<Value> {
        let http = reqwest::Client::new();
        let mut all = Vec::new();
        let mut url = format!("{}/statements?limit=500", self.url);
        loop {
            let page: Value = http
                .get(&url)
                .basic_auth(LRS_USER, Some(LRS_PASSWORD))
                .header("X-Experience-API-Version", "1.0.3")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            all.extend(page["statements"].as_array().unwrap().iter().cloned());
            match page["more"].as_str() {
                Some(more) if !more.is_empty() => {
                    let origin = self.url.trim_end_matches("/xAPI");
                    url = if more.starts_with("http") {
                        more.to_string()
                    } else {
                        format!("{origin}{more}")
                    };
                }
                _ => return all,
            }
        }
    }
}

impl Drop for Ralph {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
