use std::time::Duration;

use clap::Parser;
use learntrail_proto::{Event, subject};
use learntrail_runtime::{
    CancellationToken,
    auth::{self, Claims, Role},
    bus::{Bus, NatsArgs},
};
use learntrail_testkit::{NatsServer, eventually, stream_events};
use learntrail_tracking_api::{Config, serve};
use tokio::net::TcpListener;

pub const SECRET: &str = "test-secret-0123456789-0123456789-abcdef";
pub const BODY_LIMIT: usize = 64 * 1024;
pub const BATCH_LIMIT: usize = 50;

pub struct TestApp {
    pub nats: NatsServer,
    pub api: String,
    pub ops: String,
    pub http: reqwest::Client,
    pub bus: Bus,
    token: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

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

pub async fn spawn_app() -> TestApp {
    let nats = NatsServer::start();
    let config = Config::parse_from([
        "tracking-api",
        "--jwt-secret",
        SECRET,
        "--nats-url",
        &nats.url(),
        "--nats-publish-timeout",
        "2s",
        "--max-body-bytes",
        &BODY_LIMIT.to_string(),
        "--max-batch-events",
        &BATCH_LIMIT.to_string(),
        "--cors-origins",
        "https://lms.example",
    ]);
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api_url, ops_url) = (
        format!("http://{}", api.local_addr().unwrap()),
        format!("http://{}", ops.local_addr().unwrap()),
    );
    let token = CancellationToken::new();
    let task = tokio::spawn(serve(config, api, ops, token.clone()));
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "test", true)
        .await
        .unwrap();
    let app = TestApp {
        nats,
        api: api_url,
        ops: ops_url,
        http: reqwest::Client::new(),
        bus,
        token,
        task,
    };
    app.wait_ready(true).await;
    app
}

impl TestApp {
    pub async fn post(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.api))
            .body(body)
            .header("content-type", "application/json");
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// A bearer token of `learner-1` in `role`.
    pub fn token(&self, role: Role) -> String {
        token("learner-1", role)
    }

    pub async fn post_json(
        &self,
        path: &str,
        role: Role,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.post(path, Some(&token("learner-1", role)), body.to_string())
            .await
    }

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

    /// Everything the EVENTS stream holds.
    pub async fn stored(&self) -> Vec<Event> {
        stream_events(
            self.bus.jetstream(),
            subject::EVENTS_STREAM,
            subject::EVENTS_SUBJECTS,
        )
        .await
        .into_iter()
        .map(|(_, event)| event)
        .collect()
    }

    pub async fn metrics(&self) -> String {
        learntrail_testkit::metrics_page(&self.http, &self.ops).await
    }

    pub async fn stop(self) {
        self.token.cancel();
        self.task.await.unwrap().unwrap();
    }
}
