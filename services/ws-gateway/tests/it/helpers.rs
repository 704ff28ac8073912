use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use learntrail_proto::{Event, subject};
use learntrail_runtime::{
    CancellationToken,
    auth::{self, Claims, Role},
    bus::{Bus, NatsArgs},
};
use learntrail_testkit::{NatsServer, eventually, stream_events};
use learntrail_ws_gateway::{Config, Listeners, serve};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
};

pub const SECRET: &str = "test-secret-0123456789-0123456789-abcdef";

pub fn token(sub: &str, role: Role) -> String {
    token_of(sub, role, None)
}

/// A token with a `courses` claim when `courses` is given.
pub fn token_of(sub: &str, role: Role, courses: Option<&[&str]>) -> String {
    auth::sign(
        SECRET.as_bytes(),
        &Claims {
            sub: sub.into(),
            role,
            exp: Some(auth::now() + 600),
            nbf: None,
            iat: None,
            courses: courses.map(|c| c.iter().map(|c| c.to_string()).collect()),
        },
    )
}

pub struct TestGateway {
    pub nats: NatsServer,
    /// `ws://127.0.0.1:<port>/ws`
    pub ws: String,
    pub ops: String,
    pub http: reqwest::Client,
    pub bus: Bus,
    token: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn config(nats: &str, extra: &[&str]) -> Config {
    let mut args = vec![
        "ws-gateway",
        "--jwt-secret",
        SECRET,
        "--nats-url",
        nats,
        "--cors-origins",
        "https://lab.example",
    ];
    if !extra.contains(&"--nats-publish-timeout") {
        args.extend_from_slice(&["--nats-publish-timeout", "2s"]);
    }
    if !extra.contains(&"--analytics-grpc-url") {
        // nothing answers here unless a test says otherwise
        args.extend_from_slice(&["--analytics-grpc-url", "http://127.0.0.1:9"]);
    }
    args.extend_from_slice(extra);
    Config::parse_from(args)
}

pub async fn spawn_gateway(extra: &[&str]) -> TestGateway {
    spawn_with(NatsServer::start(), extra).await
}

pub async fn spawn_with(nats: NatsServer, extra: &[&str]) -> TestGateway {
    let config = config(&nats.url(), extra);
    let listeners = Listeners {
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ops: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let ws = format!("ws://{}/ws", listeners.http.local_addr().unwrap());
    let ops = format!("http://{}", listeners.ops.local_addr().unwrap());
    let token = CancellationToken::new();
    let task = tokio::spawn(serve(config, listeners, token.clone()));
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "test", true)
        .await
        .unwrap();
    let gateway = TestGateway {
        nats,
        ws,
        ops,
        http: reqwest::Client::new(),
        bus,
        token,
        task,
    };
    gateway.wait_ready(true).await;
    gateway
}

impl TestGateway {
    pub async fn readyz(&self) -> u16 {
        match self.http.get(format!("{}/readyz", self.ops)).send().await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn wait_ready(&self, ready: bool) {
        let want = if ready { 200 } else { 503 };
        eventually(Duration::from_secs(20), "readyz to change", || async {
            (self.readyz().await == want).then_some(())
        })
        .await;
    }

    /// A socket of `learner-1` (student), token in the header.
    pub async fn student(&self) -> Client {
        Client::connect(&self.ws, Some(&token("learner-1", Role::Student)), None)
            .await
            .expect("upgrade")
    }

    pub async fn stored(&self) -> Vec<Event> {
        stored(&self.bus).await
    }

    /// The value of a counter (`learntrail_<name>_total`) on /metrics.
    pub async fn counter(&self, name: &str) -> u64 {
        metric(&self.http, &self.ops, &format!("learntrail_{name}_total")).await
    }

    pub async fn stop(self) {
        self.token.cancel();
        self.task.await.unwrap().unwrap();
    }
}

pub async fn stored(bus: &Bus) -> Vec<Event> {
    stream_events(
        bus.jetstream(),
        subject::EVENTS_STREAM,
        subject::EVENTS_SUBJECTS,
    )
    .await
    .into_iter()
    .map(|(_, event)| event)
    .collect()
}

/// A sample's value on a Prometheus text page (0 when absent).
pub async fn metric(http: &reqwest::Client, ops: &str, name: &str) -> u64 {
    let text = learntrail_testkit::metrics_page(http, ops).await;
    learntrail_testkit::sample(&text, name).unwrap_or(0.0) as u64
}

/// A real WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// The upgrade's HTTP status when it was refused.
pub fn refused_status(err: &tungstenite::Error) -> u16 {
    match err {
        tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

impl Client {
    /// Connects to `url`, with `bearer` in the Authorization header and `origin` when given.
    pub async fn connect(
        url: &str,
        bearer: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Self, tungstenite::Error> {
        let mut request = url.into_client_request()?;
        if let Some(bearer) = bearer {
            request.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {bearer}")).unwrap(),
            );
        }
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", HeaderValue::from_str(origin).unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { ws })
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Queues a message without flushing (pipelined sends); `flush` sends them.
    pub async fn feed_json(&mut self, value: &Value) {
        self.ws
            .feed(Message::text(value.to_string()))
            .await
            .expect("feed");
    }

    pub async fn flush(&mut self) {
        self.ws.flush().await.expect("flush");
    }

    /// The next text frame as JSON (pings skipped), within 20 s.
    pub async fn next_json(&mut self) -> Value {
        match self.next_frame().await {
            Frame::Json(value) => value,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// The next frame that is not a ping or pong.
    pub async fn next_frame(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        return Frame::Json(serde_json::from_str(text.as_str()).expect("JSON"));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(frame))) => {
                        return Frame::Close(
                            frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                        );
                    }
                    Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                    None => return Frame::Ended,
                    Some(Err(err)) => return Frame::Error(err.to_string()),
                }
            }
        })
        .await
        .expect("a frame within 20 s")
    }

    /// Reads until the close frame and returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next_frame().await {
                Frame::Close(Some(close)) => return close,
                Frame::Json(_) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Close(Option<(u16, String)>),
    Ended,
    Error(#[allow(dead_code)] String),
}

/// A log message as the spinner UI sends it, with the client's `id`.
pub fn click(user: &str, id: &str, t: i64) -> Value {
    serde_json::json!({
        "id": id,
        "user": user,
        "t": t,
        "exp": "spinner",
        "hardware": "spin30",
        "course": "engdes1",
        "type": "log",
        "payload": {"log": "click", "data": {"target": "run-voltage-step"}}
    })
}

/// The pid of the process listening on `port` (to pause a real server: SIGSTOP/SIGCONT).
pub fn listener_pid(port: u16) -> u32 {
    let hex = format!(":{port:04X} ");
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let inode = table
        .lines()
        .skip(1)
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (format!("{} ", fields[1]).ends_with(&hex) && fields[3] == "0A")
                .then(|| fields[9].to_string())
        })
        .expect("a listening socket on the port");
    let needle = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == needle) {
                return pid;
            }
        }
    }
    panic!("no process holds the socket of port {port}")
}

pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
    if signal == "STOP" {
        wait_stopped(pid);
    }
}

/// kill(2) only queues SIGSTOP: the process stops when one of its threads next runs, and until
/// then its other threads keep serving (on a busy machine, for milliseconds). Waits until every
/// thread of `pid` is in state T.
fn wait_stopped(pid: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let state = |stat: String| {
        stat.rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
    };
    loop {
        let mut tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten();
        if tasks.all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(state)
                == Some('T')
        }) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} did not stop"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
