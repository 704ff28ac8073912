use std::time::Duration;

use clap::Parser;
use learntrail_analytics_query::{
    Config, Listeners, pb::analytics_query_client::AnalyticsQueryClient, serve,
};
use learntrail_proto::{
    Event, Payload, time,
    v1::{
        AssessmentData, Context, EnergyReading, LabLog, LmsEvent, LmsEventType, NotebookSnapshot,
        ProblemResult, RubyError, RubyRun, VideoData, lms_event::EventData,
    },
};
use learntrail_runtime::{
    CancellationToken,
    auth::{self, Claims, Role},
    bus::{Bus, NatsArgs},
};
use learntrail_testkit::{NatsServer, RedisServer, eventually};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub const SECRET: &str = "test-secret-0123456789-0123456789-abcdef";

pub fn token(sub: &str, role: Role) -> String {
    auth::sign(
        SECRET.as_bytes(),
        &Claims {
            sub: sub.into(),
            role,
            exp: Some(auth::now() + 600),
            nbf: None,
            iat: None,
            courses: None,
        },
    )
}

/// An instructor token limited to `courses`.
pub fn instructor_of(courses: &[&str]) -> String {
    limited_to("teacher", "instructor", courses)
}

/// A token of `sub` and `role` with a `courses` claim.
pub fn limited_to(sub: &str, role: &str, courses: &[&str]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub, "role": role, "exp": auth::now() + 600, "courses": courses}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn service() -> String {
    token("svc", Role::Service)
}

pub struct TestApp {
    _nats: NatsServer,
    pub api: String,
    pub grpc: String,
    pub ops: String,
    pub http: reqwest::Client,
    pub bus: Bus,
    token: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _redis: Option<RedisServer>,
}

pub fn config(nats: &str, redis: &str, extra: &[&str]) -> Config {
    let mut args = vec![
        "analytics-query",
        "--jwt-secret",
        SECRET,
        "--nats-url",
        nats,
        "--redis-url",
        redis,
        "--cors-origins",
        "https://dash.example",
    ];
    args.extend_from_slice(extra);
    Config::parse_from(args)
}

pub async fn spawn_app() -> TestApp {
    let redis = RedisServer::start();
    let url = redis.url();
    spawn_with(NatsServer::start(), url, Some(redis), &[]).await
}

/// Port-0 listeners for the three servers.
pub async fn listeners() -> Listeners {
    Listeners {
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ops: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    }
}

/// A connection to the test's Redis, to look at its keys.
pub async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

pub async fn spawn_with(
    nats: NatsServer,
    redis_url: String,
    redis: Option<RedisServer>,
    extra: &[&str],
) -> TestApp {
    let config = config(&nats.url(), &redis_url, extra);
    let listeners = listeners().await;
    let addr = |l: &TcpListener| format!("http://{}", l.local_addr().unwrap());
    let (api, grpc, ops) = (
        addr(&listeners.http),
        addr(&listeners.grpc),
        addr(&listeners.ops),
    );
    let token = CancellationToken::new();
    let task = tokio::spawn(serve(config, listeners, token.clone()));
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "test", true)
        .await
        .unwrap();
    let app = TestApp {
        _nats: nats,
        api,
        grpc,
        ops,
        http: reqwest::Client::new(),
        bus,
        token,
        task,
        _redis: redis,
    };
    eventually(Duration::from_secs(20), "readyz", || async {
        let r = app
            .http
            .get(format!("{}/readyz", app.ops))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    app
}

impl TestApp {
    pub async fn get(&self, path: &str, auth: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{path}", self.api));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn summary(&self, learner: &str) -> Value {
        let (status, body) = self
            .get(
                &format!("/api/v1/learners/{learner}/summary"),
                Some(&format!("Bearer {}", service())),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Publishes events and waits for the stream's acks.
    pub async fn publish(&self, events: &[Event]) {
        for result in self.bus.publish_many(events).await {
            result.unwrap();
        }
    }

    /// Publishes the same events under other message ids (as a replay past the duplicate window).
    pub async fn publish_again(&self, events: &[Event], tag: &str) {
        for event in events {
            let payload = bytes::Bytes::from(learntrail_proto::Message::encode_to_vec(event));
            self.bus
                .send(event.subject(), &format!("{}-{tag}", event.id), payload)
                .await
                .unwrap()
                .wait()
                .await
                .unwrap();
        }
    }

    /// Waits until the projection consumer has received and acknowledged everything.
    pub async fn caught_up(&self) {
        eventually(Duration::from_secs(30), "projection caught up", || async {
            let stream = self.bus.jetstream().get_stream("EVENTS").await.ok()?;
            let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("analytics-query").await.ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        })
        .await;
    }

    /// The /metrics page.
    pub async fn metrics(&self) -> String {
        learntrail_testkit::metrics_page(&self.http, &self.ops).await
    }

    pub async fn grpc_client(&self) -> AnalyticsQueryClient<Channel> {
        AnalyticsQueryClient::connect(self.grpc.clone())
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.token.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Events at `ms` (milliseconds since the epoch).
pub fn at(ms: i64) -> Option<learntrail_proto::wkt::Timestamp> {
    time::from_millis(ms)
}

pub fn base(id: &str, actor: &str, source: &str, kind: &str, ms: i64, course: &str) -> Event {
    Event {
        id: id.into(),
        occurred_at: at(ms),
        received_at: Some(time::now()),
        source: source.into(),
        kind: kind.into(),
        actor: actor.into(),
        context: Some(Context {
            course: course.into(),
            ..Default::default()
        }),
        payload: None,
    }
}

pub fn ruby(id: &str, actor: &str, ms: i64, exit: i32, class: &str, duration_ms: u64) -> Event {
    Event {
        payload: Some(Payload::RubyRun(RubyRun {
            exit_code: Some(exit),
            duration_ms,
            error: (!class.is_empty()).then(|| RubyError {
                class_name: class.into(),
                message: format!("boom {id}"),
                file: "main.rb".into(),
                line: 7,
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..base(id, actor, "shim", "ruby_run", ms, "ruby-101")
    }
}

pub fn snapshot(
    id: &str,
    actor: &str,
    ms: i64,
    code_ok: u32,
    problems: &[(&str, i32, f64)],
) -> Event {
    Event {
        payload: Some(Payload::NotebookSnapshot(NotebookSnapshot {
            path: "hw1.ipynb".into(),
            assignment: "hw1".into(),
            course: "ruby-101".into(),
            code_ok,
            problems: problems
                .iter()
                .map(|(g, status, points)| {
                    (
                        g.to_string(),
                        ProblemResult {
                            status: *status,
                            points: *points,
                            max_points: 1.0,
                        },
                    )
                })
                .collect(),
            ..Default::default()
        })),
        ..base(id, actor, "notebook", "snapshot", ms, "ruby-101")
    }
}

pub fn lab(id: &str, actor: &str, ms: i64, experiment: &str, kind: &str) -> Event {
    Event {
        payload: Some(Payload::LabLog(LabLog {
            experiment: experiment.into(),
            log_kind: kind.into(),
            log_type: "log".into(),
            ..Default::default()
        })),
        ..base(id, actor, "lab", "log", ms, "ruby-101")
    }
}

pub fn video(id: &str, actor: &str, ms: i64, kind: LmsEventType, position: f64) -> Event {
    Event {
        payload: Some(Payload::LmsEvent(LmsEvent {
            event_type: kind as i32,
            course_slug: "ruby-101".into(),
            event_data: Some(EventData::Video(VideoData {
                video_id: "v1".into(),
                current_time: Some(position),
                ..Default::default()
            })),
            ..Default::default()
        })),
        ..base(id, actor, "lms", "video", ms, "ruby-101")
    }
}

pub fn assessment(id: &str, actor: &str, ms: i64, score: f64) -> Event {
    Event {
        payload: Some(Payload::LmsEvent(LmsEvent {
            event_type: LmsEventType::AssessmentSubmitted as i32,
            course_slug: "ruby-101".into(),
            event_data: Some(EventData::Assessment(AssessmentData {
                assessment_id: "quiz1".into(),
                score,
                max_score: 10.0,
                attempt: 1,
                passed: None,
            })),
            ..Default::default()
        })),
        ..base(id, actor, "lms", "assessment", ms, "ruby-101")
    }
}

pub fn reading(id: &str, actor: &str, ms: i64, kw: f64, total_kwh: f64) -> Event {
    Event {
        payload: Some(Payload::EnergyReading(EnergyReading {
            cloud_id: "cloud-1".into(),
            demand_kw: kw,
            summation_delivered_kwh: total_kwh,
            ..Default::default()
        })),
        ..base(id, actor, "energy", "reading", ms, "")
    }
}

/// The start of the current UTC hour, in milliseconds.
pub fn this_hour() -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    now - now.rem_euclid(3_600_000)
}

/// A Keen timestamp (RFC 3339, milliseconds, UTC).
pub fn keen_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Percent-encodes a JSON query parameter.
pub fn enc(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
