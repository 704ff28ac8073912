//! A scanner in-process on a real nats-server, over real directories in a temp dir.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use async_nats::jetstream;
use clap::Parser as _;
use learntrail_notebook_scanner::{Config, serve};
use learntrail_proto::{Event, Payload, subject, v1::NotebookSnapshot};
use learntrail_runtime::CancellationToken;
use learntrail_testkit::{NatsServer, eventually, stream_events};
use tempfile::TempDir;
use tokio::net::TcpListener;

pub const KEY: &str = "test-pseudonym-key";

/// Bytes of a fixture notebook (tests/fixtures, executed by a real kernel; see make.py).
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

pub struct Env {
    pub nats: NatsServer,
    pub js: jetstream::Context,
    pub dir: TempDir,
}

impl Env {
    pub async fn new() -> Self {
        let nats = NatsServer::start();
        let client = async_nats::connect(nats.url()).await.unwrap();
        Self {
            js: jetstream::new(client),
            nats,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file, creating its directories.
    pub fn write(&self, rel: &str, bytes: &[u8]) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    pub fn snapshot(&self, rel: &str) -> PathBuf {
        self.path("snapshots").join(rel)
    }

    /// Starts a scanner on `users.csv` with extra flags.
    pub async fn start(&self, extra: &[&str]) -> Running {
        let url = self.nats.url();
        let csv = self.path("users.csv");
        let snapshots = self.path("snapshots");
        let mut args = vec![
            "notebook-scanner",
            "--users-csv",
            csv.to_str().unwrap(),
            "--snapshot-dir",
            snapshots.to_str().unwrap(),
            "--nats-url",
            &url,
            "--pseudonym-key",
            KEY,
        ];
        if !extra.contains(&"--scan-interval") {
            args.extend_from_slice(&["--scan-interval", "1h"]);
        }
        args.extend_from_slice(extra);
        let config = Config::parse_from(args);
        let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops_url = format!("http://{}", ops.local_addr().unwrap());
        let token = CancellationToken::new();
        let task = tokio::spawn(serve(config, ops, token.clone()));
        let running = Running {
            ops: ops_url,
            token,
            task,
        };
        running.wait_scans(1).await;
        running
    }

    /// Snapshot events in the stream, oldest first.
    pub async fn events(&self) -> Vec<Event> {
        stream_events(&self.js, subject::EVENTS_STREAM, "events.notebook.>")
            .await
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    /// Waits until the stream holds `n` snapshot events (and returns them).
    pub async fn wait_events(&self, n: usize, timeout: Duration) -> Vec<Event> {
        eventually(timeout, &format!("{n} snapshot events"), || async {
            let events = self.events().await;
            (events.len() >= n).then_some(events)
        })
        .await
    }
}

pub struct Running {
    pub ops: String,
    token: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// A metric's value from /metrics (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let Ok(response) = reqwest::get(format!("{}/metrics", self.ops)).await else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `n` full scans have finished.
    pub async fn wait_scans(&self, n: u64) {
        eventually(
            Duration::from_secs(20),
            &format!("{n} full scans"),
            || async {
                (self.metric("learntrail_notebook_scan_seconds_count").await >= n as f64)
                    .then_some(())
            },
        )
        .await
    }

    pub async fn stop(self) {
        self.token.cancel();
        self.task.await.unwrap().unwrap();
    }
}

pub fn snapshot_of(event: &Event) -> &NotebookSnapshot {
    match &event.payload {
        Some(Payload::NotebookSnapshot(s)) => s,
        other => panic!("not a snapshot: {other:?}"),
    }
}

/// The event for `path` of `actor` (the last one, if there are several).
pub fn find<'a>(events: &'a [Event], actor: &str, path: &str) -> &'a NotebookSnapshot {
    events
        .iter()
        .rev()
        .filter(|e| e.actor == actor)
        .map(snapshot_of)
        .find(|s| s.path == path)
        .unwrap_or_else(|| panic!("no event for {actor} {path}"))
}
