//! The real `analytics-query` binary SIGKILLed while it projects a stream of events, then started
//! again (as often as it takes for a kill to land between a batch's write and its acks): every
//! summary and Keen count equals what the events say, so nothing the killed process wrote before
//! its acks is counted twice when JetStream redelivers it.

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use async_nats::jetstream::consumer::PullConsumer;
use learntrail_proto::{Event, id, v1::LmsEventType};
use learntrail_runtime::bus::{Bus, NatsArgs};
use learntrail_testkit::{NatsServer, RedisServer, eventually};
use serde_json::{Value, json};

use crate::helpers::*;

const LEARNERS: usize = 40;
/// Events the publisher has at hand; it stops once a restart has shown what the test is for,
/// so a projection that outpaces the kills never runs out of stream first.
const EVENTS: usize = 200_000;
const PROJECTED: &str = "learntrail_analytics_events_projected_total";
const IGNORED: &str = "learntrail_analytics_redeliveries_ignored_total";
/// Kills at most, waiting for one that leaves written events unacknowledged.
const MAX_KILLS: usize = 20;
const CLASSES: [&str; 3] = ["NoMethodError", "NameError", ""];

/// The stream of events: per learner a mix of failing and passing Ruby runs, lab actions and
/// video plays, all in the hour before `h`.
fn stream(h: i64) -> Vec<Event> {
    (0..EVENTS)
        .map(|i| {
            let actor = format!("r{}", i % LEARNERS);
            let ms = h - 3_600_000 + (i as i64 * 577) % 3_600_000;
            let id = id::new_id();
            match i % 5 {
                0..=2 => {
                    let class = CLASSES[i % 3];
                    ruby(&id, &actor, ms, i32::from(!class.is_empty()), class, 10)
                }
                3 => lab(&id, &actor, ms, "spinner", "click"),
                _ => video(&id, &actor, ms, LmsEventType::VideoPlay, 0.0),
            }
        })
        .collect()
}

/// What a learner's summary must say, from the events alone.
#[derive(Debug, Default, PartialEq)]
struct Totals {
    events: i64,
    runs: i64,
    failed: i64,
    by_class: BTreeMap<String, i64>,
    lab: i64,
    videos: i64,
}

fn expected(events: &[Event]) -> BTreeMap<String, Totals> {
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    for event in events {
        let t = out.entry(event.actor.clone()).or_default();
        t.events += 1;
        match event.kind.as_str() {
            "ruby_run" => {
                t.runs += 1;
                if let Some(learntrail_proto::Payload::RubyRun(run)) = &event.payload
                    && let Some(error) = &run.error
                {
                    t.failed += 1;
                    *t.by_class.entry(error.class_name.clone()).or_default() += 1;
                }
            }
            "log" => t.lab += 1,
            _ => t.videos += 1,
        }
    }
    out
}

/// An int64 of canonical JSON (a string), or 0 when left out.
fn int(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().expect("an int64"),
        Value::Number(n) => n.as_i64().expect("an integer"),
        _ => 0,
    }
}

fn totals_of(summary: &Value) -> Totals {
    let by_class = summary["ruby"]["errorsByClass"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), int(v))).collect())
        .unwrap_or_default();
    Totals {
        events: int(&summary["events"]),
        runs: int(&summary["ruby"]["runs"]),
        failed: int(&summary["ruby"]["failedRuns"]),
        by_class,
        lab: int(&summary["lab"]["actions"]),
        videos: int(&summary["lms"]["videosPlayed"]),
    }
}

/// The binary under test, on free ports, killed (SIGKILL) on drop.
struct Service {
    child: Child,
    started: std::time::Instant,
    api: String,
    ops: String,
}

impl Service {
    fn start(nats: &str, redis: &str) -> Self {
        let free = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let (http, grpc, ops) = (free(), free(), free());
        let child = Command::new(env!("CARGO_BIN_EXE_analytics-query"))
            .env_clear()
            .env("NATS_URL", nats)
            .env("REDIS_URL", redis)
            .env("JWT_SECRET", SECRET)
            .env("HTTP_ADDR", &http)
            .env("GRPC_ADDR", &grpc)
            .env("METRICS_ADDR", &ops)
            // small batches: the kill lands between many write/ack steps
            .env("PROJECTION_BATCH", "50")
            // what the killed process held unacknowledged comes again soon
            .env("ANALYTICS_ACK_WAIT", "2s")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start analytics-query");
        Self {
            child,
            started: std::time::Instant::now(),
            api: format!("http://{http}"),
            ops: format!("http://{ops}"),
        }
    }

    /// A counter of the ops endpoint, once it answers.
    async fn metric(&self, http: &reqwest::Client, name: &str) -> Option<u64> {
        let text = http
            .get(format!("{}/metrics", self.ops))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn consumer_info(bus: &Bus) -> Option<async_nats::jetstream::consumer::Info> {
    let stream = bus.jetstream().get_stream("EVENTS").await.ok()?;
    let mut consumer: PullConsumer = stream.get_consumer("analytics-query").await.ok()?;
    consumer.info().await.ok().cloned()
}

#[tokio::test]
async fn sigkill_mid_stream_and_restart_gives_the_same_totals() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let http = reqwest::Client::new();
    let h = this_hour();
    let events = stream(h);

    let first = Service::start(&nats.url(), &redis.url());
    eventually(Duration::from_secs(30), "first process ready", || async {
        let r = http
            .get(format!("{}/readyz", first.ops))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "test", true)
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (bus, events, stop) = (bus.clone(), events.clone(), stop.clone());
        tokio::spawn(async move {
            let mut published = 0;
            for chunk in events.chunks(500) {
                // at least 20,000, then until told to stop, never more than 5,000 ahead of the
                // projection (all of it is projected again at the end)
                loop {
                    if published >= 20_000 && stop.load(std::sync::atomic::Ordering::Acquire) {
                        return published;
                    }
                    let ahead = consumer_info(&bus).await.map_or(0, |i| i.num_pending);
                    if ahead < 5_000 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                for result in bus.publish_many(chunk).await {
                    result.unwrap();
                }
                published += chunk.len();
            }
            published
        })
    };

    // kill -9 while it is projecting, and start it again, until a restarted process is handed
    // events its killed predecessor had written to Redis but not acknowledged (it reports them
    // as redeliveries it ignored)
    let mut kills = Vec::new();
    let mut running = first;
    let ignored = loop {
        // past what a predecessor held unacknowledged (8 batches of 50), and long enough for
        // what it held to come again (ANALYTICS_ACK_WAIT): a fast machine otherwise kills every
        // process before its redeliveries arrive
        eventually(Duration::from_secs(60), "projection under way", || async {
            let projected = running.metric(&http, PROJECTED).await?;
            let ignored = running.metric(&http, IGNORED).await.unwrap_or(0);
            let waited = running.started.elapsed() > Duration::from_secs(3);
            (projected >= 500 && (ignored > 0 || waited)).then_some(())
        })
        .await;
        let ignored = running.metric(&http, IGNORED).await.unwrap_or(0);
        if ignored > 0 {
            break ignored;
        }
        assert!(
            kills.len() < MAX_KILLS,
            "no restarted process was handed an event already written: {kills:?}"
        );
        running.kill9();
        let info = consumer_info(&bus).await.expect("the durable consumer");
        kills.push(info.ack_floor.stream_sequence);
        running = Service::start(&nats.url(), &redis.url());
    };
    eprintln!(
        "{} kills (ack floors {kills:?}); the last process ignored {ignored} events already written",
        kills.len()
    );
    stop.store(true, std::sync::atomic::Ordering::Release);
    let published = publisher.await.unwrap();
    let events = &events[..published];

    let second = running;
    eventually(
        Duration::from_secs(120),
        "restarted process caught up",
        || async {
            let info = consumer_info(&bus).await?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        },
    )
    .await;
    let info = consumer_info(&bus).await.unwrap();
    assert_eq!(info.delivered.stream_sequence, published as u64);

    let auth = format!("Bearer {}", service());
    let want = expected(events);
    assert_eq!(want.len(), LEARNERS);
    for (learner, totals) in &want {
        let response = http
            .get(format!("{}/api/v1/learners/{learner}/summary", second.api))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let summary: Value = response.json().await.unwrap();
        assert_eq!(&totals_of(&summary), totals, "learner {learner}: {summary}");
    }

    // the shared analysis cells: runs per error class over the hour
    let timeframe = json!({"start": keen_time(h - 3_600_000), "end": keen_time(h)});
    let response = http
        .get(format!(
            "{}/3.0/projects/learntrail/queries/count?event_collection=shim.ruby_run&group_by=rubyRun.error.className&timeframe={}",
            second.api,
            enc(&timeframe)
        ))
        .header("authorization", service())
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for group in body["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
    {
        let class = group["rubyRun.error.className"].as_str().unwrap_or("");
        counted.insert(class.to_string(), group["result"].as_u64().unwrap());
    }
    let mut runs: BTreeMap<String, u64> = BTreeMap::new();
    for event in events.iter().filter(|e| e.kind == "ruby_run") {
        let class = match &event.payload {
            Some(learntrail_proto::Payload::RubyRun(run)) => run.error.as_ref(),
            _ => None,
        }
        .map_or("", |e| e.class_name.as_str());
        *runs.entry(class.to_string()).or_default() += 1;
    }
    assert_eq!(counted, runs, "{body}");
    drop(second);
}
