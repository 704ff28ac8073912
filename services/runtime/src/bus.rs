//! The event bus: NATS connect with retry (one or several servers, credentials and TLS from flags
//! or the environment), stream provisioning, and publish-with-ack where the event id is the
//! `Nats-Msg-Id`, so a retried publish is stored once.
//!
//! Streams have one owner: a service creates `EVENTS` or `DEADLETTER` when it is missing (with
//! the configured defaults, so a fresh `make up` or test needs no extra step) but never changes
//! one that exists; `learntrail-admin provision` ([`Bus::reconcile`]) applies changes and
//! reports drift.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::{
    Client, ConnectOptions, HeaderMap,
    connection::State,
    jetstream::{
        self, ErrorCode,
        context::GetStreamErrorKind,
        context::{PublishAckFuture, PublishErrorKind},
        stream::{Config as StreamConfig, DiscardPolicy, StorageType},
    },
};
use bytes::Bytes;
use learntrail_proto::{Event, Message, subject};
use tokio_util::sync::CancellationToken;

use secrecy::{ExposeSecret, SecretString};

use crate::{
    auth::parse_secret,
    retry::Delays,
    units::{parse_bytes, parse_duration},
};

/// The header JetStream deduplicates on.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// How to reach NATS. The same names mean the same thing in every service.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated
    #[arg(
        long = "nats-url",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// NATS credentials file (.creds, JWT + nkey seed)
    #[arg(long = "nats-creds", env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// NATS user (with --nats-password)
    #[arg(long = "nats-user", env = "NATS_USER")]
    pub user: Option<String>,
    /// NATS password
    #[arg(long = "nats-password", env = "NATS_PASSWORD", hide_env_values = true, value_parser = parse_secret)]
    pub password: Option<SecretString>,
    /// NATS token
    #[arg(long = "nats-token", env = "NATS_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub token: Option<SecretString>,
    /// Require TLS to NATS
    #[arg(long = "nats-tls", env = "NATS_TLS")]
    pub tls: bool,
    /// CA certificate (PEM) that signed the NATS server's certificate; implies --nats-tls
    #[arg(long = "nats-tls-ca", env = "NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --nats-tls-key
    #[arg(long = "nats-tls-cert", env = "NATS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS
    #[arg(long = "nats-tls-key", env = "NATS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// How long a publish waits for the stream's acknowledgement
    #[arg(long = "nats-publish-timeout", env = "NATS_PUBLISH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub publish_timeout: Duration,
}

impl NatsArgs {
    /// Defaults with the given server URL (tests, tools).
    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            creds: None,
            user: None,
            password: None,
            token: None,
            tls: false,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            publish_timeout: Duration::from_secs(5),
        }
    }
}

/// Limits of the streams this deployment provisions.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// How long EVENTS keeps an event
    #[arg(long, env = "EVENTS_MAX_AGE", default_value = "30d", value_parser = parse_duration)]
    pub events_max_age: Duration,
    /// Size cap of EVENTS (0 = unlimited); over it the oldest events go
    #[arg(long, env = "EVENTS_MAX_BYTES", default_value = "0", value_parser = parse_bytes)]
    pub events_max_bytes: u64,
    /// Window in which a republished event id is recognised and stored once
    #[arg(long, env = "EVENTS_DUPLICATE_WINDOW", default_value = "1h", value_parser = parse_duration)]
    pub events_duplicate_window: Duration,
    /// JetStream replicas of each stream (1 for a single server, 3 for a cluster)
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// How long DEADLETTER keeps a record
    #[arg(long, env = "DEADLETTER_MAX_AGE", default_value = "30d", value_parser = parse_duration)]
    pub deadletter_max_age: Duration,
    /// Size cap of DEADLETTER; over it the oldest records go
    #[arg(long, env = "DEADLETTER_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub deadletter_max_bytes: u64,
}

impl Default for StreamArgs {
    fn default() -> Self {
        Self {
            events_max_age: Duration::from_secs(30 * 86_400),
            events_max_bytes: 0,
            events_duplicate_window: Duration::from_secs(3600),
            stream_replicas: 1,
            deadletter_max_age: Duration::from_secs(30 * 86_400),
            deadletter_max_bytes: 1 << 30,
        }
    }
}

/// Why a publish did not get an acknowledgement.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Not connected to NATS right now: nothing was sent.
    #[error("event bus unavailable: not connected to NATS")]
    Unavailable,
    /// Sent, but no ack within the timeout: the event may or may not be stored.
    #[error("event bus did not acknowledge in time")]
    Timeout,
    /// No stream takes the subject (streams not provisioned yet).
    #[error("no stream stores subject {0}")]
    NoStream(String),
    /// The message is over the server's max_payload.
    #[error("event too large for the bus: {0}")]
    TooLarge(String),
    #[error("publish failed: {0}")]
    Other(String),
}

impl PublishError {
    /// True when retrying later may succeed (the bus is down or slow), as opposed to a bad event.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::TooLarge(_))
    }

    fn from_nats(err: jetstream::context::PublishError, subject: &str) -> Self {
        match err.kind() {
            PublishErrorKind::TimedOut => Self::Timeout,
            PublishErrorKind::BrokenPipe => Self::Unavailable,
            PublishErrorKind::StreamNotFound => Self::NoStream(subject.to_string()),
            PublishErrorKind::MaxPayloadExceeded => Self::TooLarge(err.to_string()),
            _ => Self::Other(err.to_string()),
        }
    }
}

/// What JetStream answered for a stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub sequence: u64,
    /// The id was already stored within the duplicate window; nothing new was written.
    pub duplicate: bool,
}

/// Error connecting to NATS or provisioning streams.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot read NATS credentials: {0}")]
    Credentials(#[from] std::io::Error),
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("cannot provision stream {stream}: {message}")]
    Provision { stream: String, message: String },
}

/// A connection to the bus, cheap to clone.
#[derive(Clone, Debug)]
pub struct Bus {
    client: Client,
    js: jetstream::Context,
    provisioned: Arc<AtomicBool>,
}

impl Bus {
    /// Connects to NATS. With `wait == false` the connection is made in the background (retrying
    /// forever), so a service can start and report not-ready while NATS is down; with
    /// `wait == true` the first attempt must succeed.
    pub async fn connect(args: &NatsArgs, name: &str, wait: bool) -> Result<Self, BusError> {
        let mut options = ConnectOptions::new()
            .name(name)
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((50u64 << attempts.min(6) as u64).min(2_000))
            })
            .event_callback(|event| async move {
                tracing::info!(%event, "nats connection event");
            });
        if !wait {
            options = options.retry_on_initial_connect();
        }
        if let Some(creds) = &args.creds {
            options = options.credentials_file(creds).await?;
        }
        if let (Some(user), Some(password)) = (&args.user, &args.password) {
            options = options.user_and_password(user.clone(), password.expose_secret().into());
        }
        if let Some(token) = &args.token {
            options = options.token(token.expose_secret().into());
        }
        if args.tls || args.tls_ca.is_some() {
            options = options.require_tls(true);
        }
        if let Some(ca) = &args.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let client = options
            .connect(server_addrs(&args.url))
            .await
            .map_err(|e| BusError::Connect {
                url: args.url.clone(),
                message: e.to_string(),
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(args.publish_timeout)
            .max_ack_inflight(20_000)
            .backpressure_on_inflight(true)
            .build(client.clone());
        Ok(Self {
            client,
            js,
            provisioned: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Connected, and the streams are known to exist.
    pub fn is_ready(&self) -> bool {
        self.is_connected() && self.provisioned.load(Ordering::Relaxed)
    }

    /// Creates `EVENTS` and `DEADLETTER` where missing, with `args`; never changes a stream
    /// that exists (that is `learntrail-admin provision`'s job). Idempotent.
    pub async fn provision(&self, args: &StreamArgs) -> Result<(), BusError> {
        for config in stream_configs(args) {
            let name = config.name.clone();
            let failed = |message: String| BusError::Provision {
                stream: name.clone(),
                message,
            };
            match self.js.get_stream(&name).await {
                Ok(_) => continue,
                Err(err) if stream_not_found(&err.kind()) => {}
                Err(err) => return Err(failed(err.to_string())),
            }
            if let Err(err) = self.js.create_stream(config).await {
                // another service may have created it in the meantime
                if self.js.get_stream(&name).await.is_err() {
                    return Err(failed(err.to_string()));
                }
            } else {
                tracing::info!(stream = %name, "created stream");
            }
        }
        self.provisioned.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Compares `EVENTS` and `DEADLETTER` with `args` and, with `apply`, creates or updates them
    /// to match. One report per stream, naming each setting that differs.
    pub async fn reconcile(
        &self,
        args: &StreamArgs,
        apply: bool,
    ) -> Result<Vec<StreamReport>, BusError> {
        let mut reports = Vec::new();
        for wanted in stream_configs(args) {
            let name = wanted.name.clone();
            let failed = |message: String| BusError::Provision {
                stream: name.clone(),
                message,
            };
            let current = match self.js.get_stream(&name).await {
                Ok(mut stream) => Some(
                    stream
                        .info()
                        .await
                        .map_err(|e| failed(e.to_string()))?
                        .config
                        .clone(),
                ),
                Err(err) if stream_not_found(&err.kind()) => None,
                Err(err) => return Err(failed(err.to_string())),
            };
            let (state, drift) = match &current {
                None => (StreamState::Missing, Vec::new()),
                Some(current) => {
                    let drift = stream_drift(current, &wanted);
                    let state = if drift.is_empty() {
                        StreamState::Unchanged
                    } else {
                        StreamState::Drifted
                    };
                    (state, drift)
                }
            };
            let state = match (apply, state) {
                (true, StreamState::Missing) => {
                    self.js
                        .create_stream(wanted)
                        .await
                        .map_err(|e| failed(e.to_string()))?;
                    StreamState::Created
                }
                (true, StreamState::Drifted) => {
                    self.js
                        .update_stream(wanted)
                        .await
                        .map_err(|e| failed(e.to_string()))?;
                    StreamState::Updated
                }
                (_, state) => state,
            };
            reports.push(StreamReport { name, state, drift });
        }
        Ok(reports)
    }

    /// Provisions, retrying with backoff until it succeeds or `token` is cancelled.
    pub async fn provision_with_retry(&self, args: &StreamArgs, token: &CancellationToken) {
        let mut delays = Delays::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.provision(args).await {
                Ok(()) => {
                    tracing::info!("streams EVENTS and DEADLETTER ready");
                    return;
                }
                Err(err) => tracing::warn!(error = %err, "stream provisioning failed, retrying"),
            }
            if !delays.wait(token).await {
                return;
            }
        }
    }

    /// Flushes what is buffered for up to `grace` (a flush waits for a connection, so it is
    /// bounded: at shutdown NATS may be gone).
    pub async fn close(&self, grace: Duration) {
        if tokio::time::timeout(grace, self.client.flush())
            .await
            .is_err()
        {
            tracing::warn!("could not flush to NATS before shutting down");
        }
    }

    /// A service's usual start: connect in the background and provision the streams in a task
    /// that retries until it succeeds or `token` is cancelled (abort the handle at shutdown).
    pub async fn start(
        nats: &NatsArgs,
        streams: &StreamArgs,
        name: &str,
        token: &CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), BusError> {
        let bus = Self::connect(nats, name, false).await?;
        let provisioning = {
            let (bus, streams, token) = (bus.clone(), streams.clone(), token.clone());
            tokio::spawn(async move { bus.provision_with_retry(&streams, &token).await })
        };
        Ok((bus, provisioning))
    }

    /// Marks the streams as present without provisioning them (for producers that may not manage
    /// streams, such as lab agents; a missing stream then shows as a publish error).
    pub fn assume_provisioned(&self) {
        self.provisioned.store(true, Ordering::Relaxed);
    }

    /// Sends one already-encoded event; the returned future resolves to its ack. Fails at once
    /// when NATS is not connected, so callers never wait on a dead connection.
    pub async fn send(
        &self,
        subject: String,
        id: &str,
        payload: Bytes,
    ) -> Result<PendingAck, PublishError> {
        if !self.is_connected() {
            return Err(PublishError::Unavailable);
        }
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID_HEADER, id);
        let future = self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| PublishError::from_nats(e, &subject))?;
        Ok(PendingAck { future, subject })
    }

    /// Publishes one event and waits for JetStream to store it.
    pub async fn publish(&self, event: &Event) -> Result<Ack, PublishError> {
        let payload = Bytes::from(event.encode_to_vec());
        self.send(event.subject(), &event.id, payload)
            .await?
            .wait()
            .await
    }

    /// Publishes many events, pipelined: all are sent before any ack is awaited, and the acks
    /// are awaited together (each one's timeout starts when it is awaited: one after another,
    /// lost acks would add a timeout each). One result per event, in order.
    pub async fn publish_many<'a>(
        &self,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Vec<Result<Ack, PublishError>> {
        let mut pending = Vec::new();
        for event in events {
            let payload = Bytes::from(event.encode_to_vec());
            pending.push(self.send(event.subject(), &event.id, payload).await);
        }
        futures_util::future::join_all(pending.into_iter().map(|sent| async move {
            match sent {
                Ok(ack) => ack.wait().await,
                Err(err) => Err(err),
            }
        }))
        .await
    }

    /// Records a payload that failed validation or delivery on `deadletter.<source>`, with the
    /// reason in a header, so nothing is silently dropped.
    pub async fn deadletter(
        &self,
        source: &str,
        id: &str,
        reason: &str,
        payload: Bytes,
    ) -> Result<Ack, PublishError> {
        if !self.is_connected() {
            return Err(PublishError::Unavailable);
        }
        let subject = subject::deadletter_subject(source);
        let mut headers = HeaderMap::new();
        if !id.is_empty() {
            headers.insert(MSG_ID_HEADER, id);
        }
        headers.insert(
            subject::DEADLETTER_REASON_HEADER,
            reason.replace(['\r', '\n'], " "),
        );
        let future = self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| PublishError::from_nats(e, &subject))?;
        PendingAck { future, subject }.wait().await
    }
}

/// A sent publish whose acknowledgement is still to come.
pub struct PendingAck {
    future: PublishAckFuture,
    subject: String,
}

impl PendingAck {
    pub async fn wait(self) -> Result<Ack, PublishError> {
        let ack = self
            .future
            .await
            .map_err(|e| PublishError::from_nats(e, &self.subject))?;
        Ok(Ack {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// The stream configurations `provision` applies.
pub fn stream_configs(args: &StreamArgs) -> [StreamConfig; 2] {
    let events = StreamConfig {
        name: subject::EVENTS_STREAM.into(),
        description: Some("every Learntrail event, events.<source>.<kind>".into()),
        subjects: vec![subject::EVENTS_SUBJECTS.into()],
        storage: StorageType::File,
        discard: DiscardPolicy::Old,
        max_age: args.events_max_age,
        max_bytes: if args.events_max_bytes == 0 {
            -1
        } else {
            args.events_max_bytes as i64
        },
        duplicate_window: args.events_duplicate_window,
        num_replicas: args.stream_replicas,
        ..Default::default()
    };
    let deadletter = StreamConfig {
        name: subject::DEADLETTER_STREAM.into(),
        description: Some("records that failed validation or delivery, with the reason".into()),
        subjects: vec![subject::DEADLETTER_SUBJECTS.into()],
        storage: StorageType::File,
        max_age: args.deadletter_max_age,
        max_bytes: args.deadletter_max_bytes as i64,
        discard: DiscardPolicy::Old,
        duplicate_window: Duration::from_secs(120),
        num_replicas: args.stream_replicas,
        ..Default::default()
    };
    [events, deadletter]
}

fn stream_not_found(kind: &GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(err) if err.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// The server URLs in a `NATS_URL` setting: comma-separated, blanks ignored.
pub fn server_addrs(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// What [`Bus::reconcile`] found (and did) for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    pub name: String,
    pub state: StreamState,
    /// `setting: current -> wanted`, one per differing setting.
    pub drift: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    Missing,
    Created,
    Unchanged,
    Drifted,
    Updated,
}

/// The settings this deployment manages that differ between `current` and `wanted`.
pub fn stream_drift(current: &StreamConfig, wanted: &StreamConfig) -> Vec<String> {
    let mut drift = Vec::new();
    let mut check = |name: &str, current: String, wanted: String| {
        if current != wanted {
            drift.push(format!("{name}: {current} -> {wanted}"));
        }
    };
    check(
        "subjects",
        format!("{:?}", current.subjects),
        format!("{:?}", wanted.subjects),
    );
    check(
        "max_age",
        humantime::format_duration(current.max_age).to_string(),
        humantime::format_duration(wanted.max_age).to_string(),
    );
    check(
        "max_bytes",
        current.max_bytes.to_string(),
        wanted.max_bytes.to_string(),
    );
    check(
        "duplicate_window",
        humantime::format_duration(current.duplicate_window).to_string(),
        humantime::format_duration(wanted.duplicate_window).to_string(),
    );
    check(
        "replicas",
        current.num_replicas.max(1).to_string(),
        wanted.num_replicas.max(1).to_string(),
    );
    check(
        "storage",
        format!("{:?}", current.storage),
        format!("{:?}", wanted.storage),
    );
    check(
        "discard",
        format!("{:?}", current.discard),
        format!("{:?}", wanted.discard),
    );
    drift
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_configs_follow_the_args() {
        let args = StreamArgs {
            events_max_bytes: 1 << 30,
            ..Default::default()
        };
        let [events, deadletter] = stream_configs(&args);
        assert_eq!(events.subjects, ["events.>"]);
        assert_eq!(events.max_bytes, 1 << 30);
        assert_eq!(events.duplicate_window, Duration::from_secs(3600));
        assert_eq!(events.storage, StorageType::File);
        assert_eq!(deadletter.subjects, ["deadletter.>"]);
        let [unlimited, capped] = stream_configs(&StreamArgs::default());
        assert_eq!(unlimited.max_bytes, -1);
        assert_eq!(capped.max_bytes, 1 << 30);
    }

    #[test]
    fn several_servers_in_one_url() {
        assert_eq!(
            server_addrs("nats://a:4222, nats://b:4222,,"),
            ["nats://a:4222", "nats://b:4222"]
        );
        assert_eq!(
            server_addrs("nats://127.0.0.1:4222"),
            ["nats://127.0.0.1:4222"]
        );
    }

    #[test]
    fn drift_names_each_setting() {
        let [current, _] = stream_configs(&StreamArgs::default());
        let [wanted, _] = stream_configs(&StreamArgs {
            stream_replicas: 3,
            events_max_age: Duration::from_secs(7 * 86_400),
            ..Default::default()
        });
        assert_eq!(
            stream_drift(&current, &wanted),
            ["max_age: 30days -> 7days", "replicas: 1 -> 3"]
        );
        assert!(stream_drift(&current, &current).is_empty());
    }
}
