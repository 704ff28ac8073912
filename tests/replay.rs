//! Events replayed from the archive change no analytics: events go to JetStream, s3-rotator
//! archives them to a local directory, analytics-query projects them into Redis; then
//! `s3-rotator replay` republishes the archive into a fresh NATS server, where a fresh
//! analytics-query consumer folds them into the same Redis. Every summary and Keen count is as
//! it was, and the second consumer reports each replayed event as already projected.

use std::{
    collections::{BTreeMap, HashSet},
    io::Read,
    path::Path,
    time::Duration,
};

use clap::Parser;
use flate2::read::GzDecoder;
use learntrail_proto::{
    Event, Payload, id, time,
    v1::{Context, LmsEvent, LmsEventType, RubyError, RubyRun, VideoData, lms_event::EventData},
};
use learntrail_runtime::{
    CancellationToken,
    auth::{self, Claims, Role},
    bus::{Bus, NatsArgs},
};
use learntrail_testkit::{NatsServer, RedisServer, eventually};
use serde_json::Value;
use tokio::net::TcpListener;

const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-e2e";
const LEARNERS: usize = 8;
const EVENTS: usize = 240;

/// Ruby runs (two error classes and clean ones) and video plays, in the hour before now.
fn events() -> Vec<Event> {
    let now = chrono::Utc::now().timestamp_millis();
    (0..EVENTS)
        .map(|i| {
            let payload = if i % 4 == 3 {
                Payload::LmsEvent(LmsEvent {
                    event_type: LmsEventType::VideoPlay as i32,
                    course_slug: "ruby-101".into(),
                    event_data: Some(EventData::Video(VideoData {
                        video_id: "intro".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
            } else {
                let class = ["NoMethodError", "NameError", ""][i % 3];
                Payload::RubyRun(RubyRun {
                    exit_code: Some(i32::from(!class.is_empty())),
                    duration_ms: 10 * i as u64,
                    error: (!class.is_empty()).then(|| RubyError {
                        class_name: class.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            };
            let (source, kind) = match payload {
                Payload::LmsEvent(_) => ("lms", "video"),
                _ => ("shim", "ruby_run"),
            };
            Event {
                id: id::new_id(),
                occurred_at: time::from_millis(now - 3_000_000 + 10_000 * i as i64),
                received_at: Some(time::now()),
                source: source.into(),
                kind: kind.into(),
                actor: format!("learner-{}", i % LEARNERS),
                context: Some(Context {
                    course: "ruby-101".into(),
                    ..Default::default()
                }),
                payload: Some(payload),
            }
        })
        .collect()
}

/// analytics-query in-process on port 0.
struct Analytics {
    api: String,
    ops: String,
}

async fn analytics(nats: &str, redis: &str, token: &CancellationToken) -> Analytics {
    let config = learntrail_analytics_query::Config::parse_from([
        "analytics-query",
        "--jwt-secret",
        SECRET,
        "--nats-url",
        nats,
        "--redis-url",
        redis,
    ]);
    let listeners = learntrail_analytics_query::Listeners {
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ops: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let url = |l: &TcpListener| format!("http://{}", l.local_addr().unwrap());
    let service = Analytics {
        api: url(&listeners.http),
        ops: url(&listeners.ops),
    };
    tokio::spawn(learntrail_analytics_query::serve(
        config,
        listeners,
        token.clone(),
    ));
    service
}

/// The projection consumer on `bus` has acknowledged all `n` events of EVENTS.
async fn projected(bus: &Bus, n: usize) {
    eventually(Duration::from_secs(60), "every event projected", || async {
        let stream = bus.jetstream().get_stream("EVENTS").await.ok()?;
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("analytics-query").await.ok()?;
        let info = consumer.info().await.ok()?;
        (info.delivered.stream_sequence == n as u64
            && info.num_pending == 0
            && info.num_ack_pending == 0)
            .then_some(())
    })
    .await;
}

/// Event ids in the archive directory's gzip NDJSON objects (those written completely).
fn archived(dir: &Path) -> HashSet<String> {
    let mut ids = HashSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return ids;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            ids.extend(archived(&path));
        } else if path.to_string_lossy().ends_with(".ndjson.gz") {
            // an object being written reads short: it is counted on a later look
            let mut text = String::new();
            let Ok(file) = std::fs::File::open(&path) else {
                continue;
            };
            if GzDecoder::new(file).read_to_string(&mut text).is_err() {
                continue;
            }
            for line in text.lines() {
                let event: Value = serde_json::from_str(line).unwrap();
                ids.insert(event["id"].as_str().unwrap().to_string());
            }
        }
    }
    ids
}

/// Every learner's summary and a Keen count per error class: what a replay must not change.
async fn totals(http: &reqwest::Client, api: &str) -> BTreeMap<String, Value> {
    let token = auth::sign(
        SECRET.as_bytes(),
        &Claims {
            sub: "dashboard".into(),
            role: Role::Service,
            exp: Some(auth::now() + 600),
            nbf: None,
            iat: None,
            courses: None,
        },
    );
    let mut out = BTreeMap::new();
    for learner in 0..LEARNERS {
        let summary: Value = http
            .get(format!("{api}/api/v1/learners/learner-{learner}/summary"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.insert(format!("learner-{learner}"), summary);
    }
    let count: Value = http
        .get(format!(
            "{api}/3.0/projects/learntrail/queries/count?event_collection=shim.ruby_run&timeframe=this_2_hours&group_by=rubyRun.error.className"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    out.insert("count".into(), count);
    out
}

async fn metric(http: &reqwest::Client, ops: &str, name: &str) -> Option<u64> {
    let text = http
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn events_replayed_from_the_archive_change_no_analytics() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("archive");
    let archive_dir = archive.display().to_string();
    let segments = work.path().join("segments").display().to_string();
    let token = CancellationToken::new();
    let http = reqwest::Client::new();

    // s3-rotator (local archive) and analytics-query on the live stream
    let rotator = learntrail_s3_rotator::Config::parse_from([
        "s3-rotator",
        "--nats-url",
        &nats.url(),
        "--segment-dir",
        &segments,
        "--rotate-interval",
        "1s",
        "--archive-dir",
        &archive_dir,
    ]);
    let store = learntrail_s3_rotator::store::Store::from_args(&rotator.store).unwrap();
    tokio::spawn(learntrail_s3_rotator::serve(
        rotator,
        store,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        token.clone(),
    ));
    let live = analytics(&nats.url(), &redis.url(), &token).await;
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "e2e", true)
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "streams provisioned", || async {
        bus.jetstream().get_stream("EVENTS").await.ok().map(|_| ())
    })
    .await;

    let from = chrono::Utc::now() - chrono::Duration::minutes(1);
    let events = events();
    for result in bus.publish_many(&events).await {
        result.unwrap();
    }
    let ids: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    projected(&bus, EVENTS).await;
    eventually(Duration::from_secs(60), "every event archived", || async {
        (archived(&archive) == ids).then_some(())
    })
    .await;
    let to = chrono::Utc::now() + chrono::Duration::minutes(1);

    let before = totals(&http, &live.api).await;
    for learner in 0..LEARNERS {
        let summary = &before[&format!("learner-{learner}")];
        let expected = events
            .iter()
            .filter(|e| e.actor == format!("learner-{learner}"))
            .count();
        assert_eq!(summary["events"], expected.to_string(), "{summary}");
    }
    let counted: u64 = before["count"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", before["count"]))
        .iter()
        .map(|g| g["result"].as_u64().unwrap())
        .sum();
    let runs = events.iter().filter(|e| e.kind == "ruby_run").count();
    assert_eq!(counted, runs as u64, "{}", before["count"]);

    // replay the archive into a fresh NATS server, read by a fresh consumer on the same Redis
    let fresh = NatsServer::start();
    let rebuilt = analytics(&fresh.url(), &redis.url(), &token).await;
    let fresh_bus = Bus::connect(&NatsArgs::with_url(fresh.url()), "e2e", true)
        .await
        .unwrap();
    let replay = learntrail_s3_rotator::Config::parse_from([
        "s3-rotator",
        "--nats-url",
        &fresh.url(),
        "--archive-dir",
        &archive_dir,
        "replay",
        "--from",
        &from.to_rfc3339(),
        "--to",
        &to.to_rfc3339(),
    ]);
    learntrail_s3_rotator::run(replay, CancellationToken::new())
        .await
        .unwrap();
    let replayed = learntrail_testkit::stream_events(fresh_bus.jetstream(), "EVENTS", "events.>")
        .await
        .into_iter()
        .map(|(_, e)| e.id)
        .collect::<HashSet<_>>();
    assert_eq!(replayed, ids, "the replay republished every archived event");
    projected(&fresh_bus, EVENTS).await;
    assert_eq!(
        metric(
            &http,
            &rebuilt.ops,
            "learntrail_analytics_redeliveries_ignored_total"
        )
        .await,
        Some(EVENTS as u64),
        "every replayed event was recognised as already projected"
    );
    assert_eq!(totals(&http, &rebuilt.api).await, before);
    assert_eq!(totals(&http, &live.api).await, before);
    token.cancel();
}
