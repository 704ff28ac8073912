//! # notebook-scanner
//!
//! Snapshots students' notebooks and reports their nbgrader progress live. For each learner of
//! the users file (`uid,notebooks,...`) it watches the notebooks directory (file-system
//! notifications, plus a full scan every `SCAN_INTERVAL` for whatever notifications miss), and
//! for each file that changed: stores a copy in the snapshot store (older copies kept as
//! timestamped backups), parses it if it is a notebook, and publishes one `NotebookSnapshot`
//! event on `events.notebook.snapshot`, as the learner's pseudonym. An on-disk index of what was
//! reported makes restarts and unchanged rescans silent.
//!
//! Modules: [`users`] (the CSV), [`walk`] (which files, never through symlinks), [`index`],
//! [`store`] and [`snapshots`] (directory or S3), [`notebook`] (nbformat + nbgrader → counts and results), [`event`], [`scanner`]
//! (the order of the steps), [`watch`] (notifications), [`metrics`].
#![forbid(unsafe_code)]

pub mod event;
pub mod index;
pub mod metrics;
pub mod notebook;
pub mod scanner;
pub mod snapshots;
pub mod store;
pub mod users;
pub mod walk;
pub mod watch;

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{ArgAction, builder::BoolishValueParser};
use learntrail_proto::v1::Machine;
use learntrail_runtime::{
    CancellationToken,
    auth::parse_secret,
    bus::{Bus, NatsArgs, StreamArgs},
    health, http,
    retry::Delays,
    telemetry::LogArgs,
    units::{parse_bytes, parse_duration},
};
use prometheus_client::registry::Registry;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::{net::TcpListener, sync::mpsc};

/// Notifications arriving within this time of the first one are handled together (a save is
/// several file-system events).
const COALESCE: Duration = Duration::from_millis(50);

/// notebook-scanner: snapshots of learners' notebooks and their nbgrader progress as events.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "notebook-scanner", version, about, long_about = None)]
pub struct Config {
    /// CSV of learners: a header with at least uid,notebooks (a directory, absolute or relative to
    /// the CSV); other columns are ignored. Re-read when it changes
    #[arg(long, env = "USERS_CSV", default_value = "users.csv")]
    pub users_csv: PathBuf,
    /// Where snapshots (and their timestamped backups) and the scanner's index are kept
    #[arg(long, env = "SNAPSHOT_DIR", default_value = "var/snapshots")]
    pub snapshot_dir: PathBuf,
    /// Backups kept per file (the newest ones)
    #[arg(long, env = "SNAPSHOT_KEEP", default_value_t = 100)]
    pub snapshot_keep: usize,
    /// Backups older than this are removed (empty: no age limit)
    #[arg(long, env = "SNAPSHOT_MAX_AGE", value_parser = parse_duration)]
    pub snapshot_max_age: Option<Duration>,
    /// Time between full scans (they catch what notifications missed)
    #[arg(long, env = "SCAN_INTERVAL", default_value = "300s", value_parser = parse_duration)]
    pub scan_interval: Duration,
    /// Larger files are skipped (with a logged reason)
    #[arg(long, env = "MAX_FILE_BYTES", default_value = "10MB", value_parser = parse_bytes)]
    pub max_file_bytes: u64,
    /// Watch directories for changes (file-system notifications); off: full scans only
    #[arg(long, env = "WATCH", default_value = "on", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub watch: bool,
    /// HMAC key that turns account names into learner pseudonyms (the shim's secret)
    #[arg(long, env = "PSEUDONYM_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub pseudonym_key: Option<SecretString>,
    /// Address of /healthz, /readyz and /metrics
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9186")]
    pub metrics_addr: SocketAddr,
    /// How long the work in flight may take to finish after SIGTERM
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub s3: snapshots::S3Args,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Binds the operations listener, then scans until `token` is cancelled.
pub async fn run(config: Config, token: CancellationToken) -> anyhow::Result<()> {
    let ops = http::bind("METRICS_ADDR", config.metrics_addr).await?;
    serve(config, ops, token).await
}

/// Scans and serves /healthz, /readyz, /metrics on an already-bound listener (tests pass port 0).
pub async fn serve(
    config: Config,
    ops: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    if config.pseudonym_key.is_none() {
        tracing::warn!(
            "PSEUDONYM_KEY is not set: events carry the actor \"unkeyed\", not a pseudonym"
        );
    }
    let index = index::Index::open(&config.snapshot_dir.join(".index.jsonl"))
        .with_context(|| format!("cannot open the index in {}", config.snapshot_dir.display()))?;
    let (bus, provisioning) =
        Bus::start(&config.nats, &config.streams, "notebook-scanner", &token).await?;
    let mut registry = Registry::with_prefix("learntrail");
    let metrics = metrics::Metrics::register(&mut registry);
    let ready_bus = bus.clone();
    let ops_router = health::router(Arc::new(registry), Arc::new(move || ready_bus.is_ready()));
    let ops_server = tokio::spawn(http::serve(ops, ops_router, token.clone()));
    let settings = scanner::Settings {
        users_csv: config.users_csv.clone(),
        max_file_bytes: config.max_file_bytes,
        pseudonym_key: config
            .pseudonym_key
            .as_ref()
            .map(|k| k.expose_secret().to_string()),
        machine: machine(),
    };
    let dir_store = store::Store::new(
        config.snapshot_dir.clone(),
        config.snapshot_keep,
        config.snapshot_max_age,
    );
    let store = snapshots::Snapshots::new(dir_store, &config.s3)
        .map_err(|e| learntrail_runtime::cli::ConfigError::new(e.to_string()))?;
    let described = store.describe();
    let scanner = scanner::Scanner::new(settings, store, index, bus.clone(), metrics);
    tracing::info!(
        users_csv = %config.users_csv.display(),
        snapshots = %described,
        scan_interval = ?config.scan_interval,
        watch = config.watch,
        nats_url = %learntrail_runtime::telemetry::redact_urls(&config.nats.url),
        "notebook-scanner starting"
    );
    // after SIGTERM, the scan in flight may finish within the grace period; cut short, nothing
    // is lost: the index only moves after an ack, so the next start redoes the rest
    let scanned = learntrail_runtime::shutdown::drain_with_grace(
        &token,
        config.shutdown_grace,
        drive(scanner, &config, &bus, &token),
    )
    .await
    .unwrap_or(Ok(()));
    provisioning.abort();
    token.cancel();
    let _ = ops_server.await;
    bus.close(Duration::from_secs(2)).await;
    tracing::info!("notebook-scanner stopped");
    scanned
}

/// The loop: a full scan at start and every interval, notified paths as they come, failed files
/// again after a backoff.
async fn drive(
    mut scanner: scanner::Scanner,
    config: &Config,
    bus: &Bus,
    token: &CancellationToken,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = if config.watch {
        Some(watch::Watcher::new(tx).context("cannot start file-system notifications")?)
    } else {
        drop(tx);
        None
    };
    // wait for the bus, so the first scan is not a burst of failed publishes
    while !bus.is_ready() {
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    scanner.reload_users();
    sync_watches(&mut watcher, &mut scanner).await;
    scanner.full_scan().await;
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + config.scan_interval,
        config.scan_interval,
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut delays = Delays::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            _ = ticks.tick() => {
                scanner.full_scan().await;
                sync_watches(&mut watcher, &mut scanner).await;
            }
            Some(first) = rx.recv() => {
                let mut paths = BTreeSet::new();
                let mut rescan = first.is_none();
                paths.extend(first);
                let until = tokio::time::Instant::now() + COALESCE;
                while let Ok(Some(next)) = tokio::time::timeout_at(until, rx.recv()).await {
                    rescan |= next.is_none();
                    paths.extend(next);
                }
                if rescan {
                    scanner.full_scan().await;
                } else {
                    scanner.notified(paths).await;
                }
                sync_watches(&mut watcher, &mut scanner).await;
            }
            _ = tokio::time::sleep(delays.next_delay()), if scanner.has_retries() => {
                scanner.retry_failed().await;
                if !scanner.has_retries() {
                    delays.reset();
                }
            }
        }
    }
}

/// Watches what the scanner's plan says; a directory that appeared while the plan was changing
/// is picked up at once.
async fn sync_watches(watcher: &mut Option<watch::Watcher>, scanner: &mut scanner::Scanner) {
    let Some(watcher) = watcher else { return };
    loop {
        watcher.sync(scanner.watch_plan());
        if !scanner.missing_appeared() {
            return;
        }
        scanner.notified(BTreeSet::new()).await;
    }
}

/// This machine, without a learner (events fill `user` with the pseudonym).
fn machine() -> Machine {
    Machine {
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        os: match std::env::consts::OS {
            "macos" => "macos".into(),
            other => other.into(),
        },
        user: String::new(),
        arch: std::env::consts::ARCH.into(),
    }
}
