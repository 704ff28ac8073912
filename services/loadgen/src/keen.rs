//! keen-forwarder benchmark: starts nats-server, stores `events` events in EVENTS, then starts
//! the keen-forwarder release binary against a local Keen double (bulk API, one `{"success":
//! true}` per event per collection) and, in a second run, a local webhook receiver, and measures
//! how fast it drains the stream: events/s delivered and acknowledged, from the forwarder's start
//! until its `delivered` counter covers every event. Target: >= 50,000 events/s to Keen.

use std::{
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, http::StatusCode, response::IntoResponse, routing::post};
use learntrail_proto::{Event, Message, Payload, id, time, v1::RubyRun};
use learntrail_runtime::bus::{Bus, NatsArgs, StreamArgs};
use learntrail_testkit::{NatsServer, eventually};

use crate::harness::Service;
use crate::{Bench, report::verdict};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Events to deliver (to each destination)
    #[arg(long, default_value_t = 300_000)]
    pub events: usize,
}

impl Default for Args {
    fn default() -> Self {
        Self { events: 300_000 }
    }
}

pub async fn run(bench: &Bench, args: &Args) -> anyhow::Result<()> {
    let binary = bench.bin_dir.join("keen-forwarder");
    anyhow::ensure!(
        binary.is_file(),
        "{} not found: run `cargo build --release` first",
        binary.display()
    );
    println!(
        "== keen-forwarder ({} events per destination) ==",
        args.events
    );
    let keen = drain(&binary, args.events, Target::Keen).await?;
    let webhook = drain(&binary, args.events, Target::Webhook).await?;
    println!(
        "targets: >= 50000 events/s to Keen {} ({keen:.0}/s); webhook {webhook:.0}/s (no target)",
        verdict(keen >= 50_000.0)
    );
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Keen,
    Webhook,
}

/// One destination: stores the events, starts the forwarder, returns events/s delivered.
async fn drain(binary: &std::path::Path, n: usize, target: Target) -> anyhow::Result<f64> {
    let nats = NatsServer::start();
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "bench", true).await?;
    bus.provision(&StreamArgs::default()).await?;
    publish(&bus, n).await?;
    let received = Arc::new(AtomicU64::new(0));
    let url = fake(target, received.clone()).await?;
    let ops = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut command = Command::new(binary);
    command
        .env("NATS_URL", nats.url())
        .env("METRICS_ADDR", ops.to_string())
        .env("FORWARD_BATCH_SIZE", "1000")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    let (label, name) = match target {
        Target::Keen => {
            command
                .env("KEEN_URL", &url)
                .env("KEEN_PROJECT_ID", "bench")
                .env("KEEN_WRITE_KEY", "bench-write-key");
            ("Keen bulk API", "keen")
        }
        Target::Webhook => {
            command
                .env("WEBHOOK_URLS", format!("{url}/hook"))
                .env("WEBHOOK_SECRET", "bench-secret");
            ("signed webhook", "webhook.default")
        }
    };
    let started = Instant::now();
    let _forwarder = Service(command.spawn()?);
    let http = reqwest::Client::new();
    let metrics = format!("http://{ops}/metrics");
    let sample = format!("learntrail_forward_delivered_total{{destination=\"{name}\"}}");
    let target_count = n as f64;
    eventually(
        Duration::from_secs(600),
        "every event delivered",
        || async {
            let text = http.get(&metrics).send().await.ok()?.text().await.ok()?;
            let delivered: f64 = text.lines().find_map(|l| {
                l.strip_prefix(sample.as_str())
                    .and_then(|v| v.trim().parse().ok())
            })?;
            (delivered >= target_count).then_some(())
        },
    )
    .await;
    let elapsed = started.elapsed();
    let rate = target_count / elapsed.as_secs_f64();
    println!(
        "{label:<16} {n} events delivered and acked in {:.2} s: {rate:.0} events/s (the receiver counted {})",
        elapsed.as_secs_f64(),
        received.load(Ordering::Relaxed)
    );
    Ok(rate)
}

async fn publish(bus: &Bus, n: usize) -> anyhow::Result<()> {
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        let event = Event {
            id: id::new_id(),
            occurred_at: Some(time::now()),
            received_at: Some(time::now()),
            source: "shim".into(),
            kind: "ruby_run".into(),
            actor: format!("learner-{}", i % 500),
            payload: Some(Payload::RubyRun(RubyRun {
                argv: vec!["ruby".into(), "hello.rb".into()],
                script: "hello.rb".into(),
                exit_code: Some(i as i32 % 2),
                duration_ms: 120,
                ruby_version: "3.3.3".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let bytes = bytes::Bytes::from(event.encode_to_vec());
        pending.push_back(bus.send(event.subject(), &event.id, bytes).await?);
        if pending.len() >= 1024 {
            pending.pop_front().expect("non-empty").wait().await?;
        }
    }
    while let Some(ack) = pending.pop_front() {
        ack.wait().await?;
    }
    Ok(())
}

/// A local receiver: Keen's bulk API (per collection, one success per event in order) or a
/// webhook (204); counts the events it accepted.
async fn fake(target: Target, received: Arc<AtomicU64>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = match target {
        Target::Keen => Router::new().route(
            "/3.0/projects/bench/events",
            post(move |body: Bytes| async move {
                let counts = records(&body);
                received.fetch_add(
                    counts.iter().map(|(_, n)| *n as u64).sum(),
                    Ordering::Relaxed,
                );
                let mut answer = String::from("{");
                for (k, (collection, n)) in counts.iter().enumerate() {
                    if k > 0 {
                        answer.push(',');
                    }
                    answer.push_str(&format!("{collection}:["));
                    answer.push_str(&vec![r#"{"success":true}"#; *n].join(","));
                    answer.push(']');
                }
                answer.push('}');
                ([("content-type", "application/json")], answer)
            }),
        ),
        Target::Webhook => Router::new().route(
            "/hook",
            post(move |body: Bytes| async move {
                received.fetch_add(
                    records(&body).iter().map(|(_, n)| *n as u64).sum(),
                    Ordering::Relaxed,
                );
                StatusCode::NO_CONTENT.into_response()
            }),
        ),
    };
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(url)
}

/// The objects in each top-level array of a JSON object, by key (kept as its JSON string): a
/// one-pass scan, so the receiver costs the benchmark little CPU.
fn records(body: &[u8]) -> Vec<(String, usize)> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut start = 0;
    let mut counts: Vec<(String, usize)> = Vec::new();
    for (i, &b) in body.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    in_string = false;
                    if depth == 1 {
                        counts.push((String::from_utf8_lossy(&body[start..=i]).into_owned(), 0));
                    }
                }
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                start = i;
            }
            b'{' | b'[' => {
                if depth == 2
                    && b == b'{'
                    && let Some(last) = counts.last_mut()
                {
                    last.1 += 1;
                }
                depth += 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    counts
}
