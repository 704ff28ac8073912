use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use clap::Parser;
use learntrail_eagle_pinger::{Config, serve};
use learntrail_fake_eagle::{Api, FakeEagle, MeterSpec};
use learntrail_proto::{Event, subject};
use learntrail_runtime::{
    CancellationToken,
    auth::{self, Claims, Role},
    bus::{Bus, NatsArgs},
};
use learntrail_testkit::{NatsServer, RedisServer, eventually, stream_events};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const SECRET: &str = "test-secret-0123456789-0123456789-abcdef";
/// Two AES keys (openssl rand -base64 32).
pub const KEY_A: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
pub const KEY_B: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Everything the service talks to: NATS, Redis and a fake Eagle over real HTTP.
pub struct Rig {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub fake: FakeEagle,
    /// `http://127.0.0.1:<port>` of the fake.
    pub fake_addr: String,
    pub bus: Bus,
}

impl Rig {
    pub async fn start() -> Self {
        capture_logs();
        let nats = NatsServer::start();
        let redis = RedisServer::start();
        let (fake, fake_addr) = start_fake().await;
        let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "test", true)
            .await
            .unwrap();
        Self {
            nats,
            redis,
            fake,
            fake_addr,
            bus,
        }
    }

    /// The fake's cloud relay URL.
    pub fn cloud_url(&self) -> String {
        format!("http://{}/cgi-bin/post_manager", self.fake_addr)
    }

    /// Adds a meter to the fake and returns its registration body.
    pub fn meter(&self, cloud_id: &str, api: Api) -> Value {
        self.fake.add(cloud_id, MeterSpec::demo(cloud_id, api));
        registration(cloud_id, api, &self.fake_addr)
    }

    /// Flags for a fast test app: 200 ms interval, 300 ms timeout.
    pub fn args(&self, key: &str) -> Vec<String> {
        [
            "eagle-pinger",
            "--jwt-secret",
            SECRET,
            "--nats-url",
            &self.nats.url(),
            "--nats-publish-timeout",
            "2s",
            "--redis-url",
            &self.redis.url(),
            "--eagle-secret-key",
            key,
            "--eagle-cloud-url",
            &self.cloud_url(),
            "--poll-interval",
            "200ms",
            "--poll-timeout",
            "300ms",
            "--auth-backoff",
            "1h",
            "--max-backoff",
            "1s",
        ]
        .map(String::from)
        .to_vec()
    }

    pub async fn spawn(&self, extra: &[&str]) -> TestApp {
        let mut args = self.args(KEY_A);
        args.extend(extra.iter().map(|s| s.to_string()));
        spawn_app(Config::parse_from(args)).await
    }

    /// Everything EVENTS holds on events.energy.reading.
    pub async fn readings(&self) -> Vec<Event> {
        stream_events(
            self.bus.jetstream(),
            subject::EVENTS_STREAM,
            "events.energy.reading",
        )
        .await
        .into_iter()
        .map(|(_, e)| e)
        .collect()
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// A fake Eagle on a port-0 listener.
pub async fn start_fake() -> (FakeEagle, String) {
    let fake = FakeEagle::new(Duration::from_secs(5));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(fake.clone().serve(listener));
    (fake, addr)
}

/// The registration body of a demo meter of the fake at `fake_addr`.
pub fn registration(cloud_id: &str, api: Api, fake_addr: &str) -> Value {
    let api_name = serde_json::to_value(api).unwrap();
    let mut body = json!({
        "user_pw": learntrail_fake_eagle::demo_password(cloud_id),
        "api": api_name,
        "actor": format!("household-{cloud_id}"),
        "course": "energy-101",
    });
    if api == Api::Cloud {
        body["user_email"] = json!(learntrail_fake_eagle::demo_email(cloud_id));
    } else {
        body["address"] = json!(fake_addr);
    }
    body
}

pub fn token(role: Role) -> String {
    auth::sign(
        SECRET.as_bytes(),
        &Claims {
            sub: "tester".into(),
            role,
            exp: Some(auth::now() + 600),
            nbf: None,
            iat: None,
            courses: None,
        },
    )
}

pub struct TestApp {
    pub api: String,
    pub ops: String,
    pub http: reqwest::Client,
    token: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_app(config: Config) -> TestApp {
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api_url, ops_url) = (
        format!("http://{}", api.local_addr().unwrap()),
        format!("http://{}", ops.local_addr().unwrap()),
    );
    let token = CancellationToken::new();
    let task = tokio::spawn(serve(config, api, ops, token.clone()));
    let app = TestApp {
        api: api_url,
        ops: ops_url,
        http: reqwest::Client::new(),
        token,
        task,
    };
    eventually(Duration::from_secs(20), "eagle-pinger ready", || async {
        let response = app.http.get(format!("{}/readyz", app.ops)).send().await;
        response.ok().filter(|r| r.status() == 200).map(|_| ())
    })
    .await;
    app
}

impl TestApp {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        role: Option<Role>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.api));
        if let Some(role) = role {
            request = request.bearer_auth(token(role));
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        record_response(&text);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn register(&self, cloud_id: &str, body: &Value) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/api/user/{cloud_id}"),
            Some(Role::Instructor),
            Some(body),
        )
        .await
    }

    pub async fn user(&self, cloud_id: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/user/{cloud_id}"),
                Some(Role::Instructor),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until the meter's poll state is `state`, and returns its record.
    pub async fn wait_state(&self, cloud_id: &str, state: &str) -> Value {
        eventually(
            Duration::from_secs(20),
            &format!("{cloud_id} in state {state}"),
            || async {
                let user = self.user(cloud_id).await;
                (user["poll"]["state"] == state).then_some(user)
            },
        )
        .await
    }

    pub async fn metrics(&self) -> String {
        learntrail_testkit::metrics_page(&self.http, &self.ops).await
    }

    pub async fn stop(self) {
        self.token.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// The value of a metric line starting with `prefix` (e.g. `learntrail_eagle_meters{state="ok"}`).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// everything logged and answered, to check that no password leaves

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(Sink::default)
}

/// Every log line of every test in this binary (all targets, trace level) goes to one buffer.
fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let writer = sink().clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .try_init();
    });
}

fn record_response(text: &str) {
    let mut sink = sink().clone();
    let _ = writeln!(sink, "RESPONSE {text}");
}

/// Everything logged (and every API answer) so far.
pub fn captured() -> String {
    String::from_utf8_lossy(&sink().0.lock().unwrap()).into_owned()
}
