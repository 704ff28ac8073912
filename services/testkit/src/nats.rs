//! nats-server with JetStream on a free port.

use std::{
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures_util::StreamExt;
use learntrail_proto::{Event, Message};
use tempfile::TempDir;

use crate::process::{binary, spawn, stop, wait_for};

/// A running `nats-server -js` with a temporary store. Stopped and removed on drop.
pub struct NatsServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    bin: PathBuf,
}

impl NatsServer {
    /// Starts a server on a port of its own choosing.
    pub fn start() -> Self {
        let bin = binary(
            "nats-server",
            "NATS_SERVER_BIN",
            "apt-get install -y nats-server",
        );
        let dir = tempfile::Builder::new()
            .prefix("lt-nats-")
            .tempdir()
            .expect("temp dir");
        let mut server = Self {
            child: None,
            dir,
            port: 0,
            bin,
        };
        server.launch(None);
        server
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn launch(&mut self, port: Option<u16>) {
        let log = self.log_path();
        let _ = std::fs::remove_file(&log);
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        self.child = Some(spawn(
            Command::new(&self.bin)
                .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
                .arg(self.dir.path().join("store"))
                .arg("-l")
                .arg(&log),
        ));
        let mut found = 0;
        wait_for("nats-server", &log, Duration::from_secs(20), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("Listening for client connections on ").nth(1) {
                found = rest
                    .lines()
                    .next()
                    .and_then(|l| l.trim().rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
            }
            found != 0 && text.contains("Server is ready")
        });
        self.port = found;
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server, keeping its store (as a crash or an outage would).
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.launch(Some(self.port));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every event stored in `stream` whose subject matches `filter` (e.g. `events.>`), with its
/// stream sequence, read by an ephemeral ordered consumer. Panics if the stream cannot be read.
pub async fn stream_events(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Vec<(u64, Event)> {
    try_stream_events(js, stream, filter)
        .await
        .unwrap_or_else(|e| panic!("cannot read stream {stream}: {e}"))
}

/// [`stream_events`], with an error instead of a panic (for use inside [`crate::eventually`],
/// while a server is still coming back).
pub async fn try_stream_events(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Result<Vec<(u64, Event)>, async_nats::Error> {
    let stream = js.get_stream(stream).await?;
    let mut stream = stream;
    let pending = stream.info().await?.state.messages;
    if pending == 0 {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut events = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(500), messages.next()).await;
        let Ok(Some(Ok(message))) = next else { break };
        let info = message.info().expect("jetstream message");
        let seq = info.stream_sequence;
        let remaining = info.pending;
        let event = Event::decode(message.payload.clone()).expect("stored payload is an Event");
        events.push((seq, event));
        if remaining == 0 {
            break;
        }
    }
    Ok(events)
}
