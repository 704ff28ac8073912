//! # s3-rotator
//!
//! Archives every event of the EVENTS stream: a durable pull consumer appends events to local
//! segment files per partition (source and UTC hour of receipt), and each segment becomes one
//! gzip NDJSON object (protobuf canonical JSON, one event per line) under
//! `events/source={source}/dt={YYYY-MM-DD}/hour={HH}/{first_seq}-{last_seq}-{digest}.ndjson.gz`,
//! in S3 or, with no bucket configured, a local directory. Messages are acknowledged only after
//! their object is stored, and a segment is forgotten only once the server has confirmed every
//! acknowledgement; an object is never replaced. Each event is archived exactly once, through
//! lost acknowledgements, redeliveries, crashes and store outages. `s3-rotator replay`
//! republishes archived events.
//!
//! Modules: [`layout`] (partitions, keys), [`segment`] (local files), [`seqs`] (sequence sets),
//! [`pending`] (what is held against redeliveries), [`store`] (S3 / directory), [`archiver`]
//! (consume, rotate), [`uploader`] (upload, ack), [`replay`], [`metrics`].
#![forbid(unsafe_code)]

pub mod archiver;
pub mod layout;
pub mod metrics;
pub mod pending;
pub mod replay;
pub mod segment;
pub mod seqs;
pub mod store;
pub mod uploader;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use learntrail_runtime::{
    CancellationToken,
    bus::{Bus, NatsArgs, StreamArgs},
    cli::ConfigError,
    health, http,
    telemetry::LogArgs,
    units::{parse_bytes, parse_duration},
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// s3-rotator: archives every event to S3 (or a local directory) as hourly gzip NDJSON objects.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "s3-rotator", version, about, long_about = None, args_conflicts_with_subcommands = false)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address of /healthz, /readyz and /metrics
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9184")]
    pub metrics_addr: SocketAddr,
    /// Local directory for segments not yet uploaded (keep it on persistent storage)
    #[arg(long, env = "SEGMENT_DIR", default_value = "var/rotator")]
    pub segment_dir: PathBuf,
    /// Close and upload a segment after this long (and always when its hour ends)
    #[arg(long, env = "ROTATE_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub rotate_interval: Duration,
    /// Close and upload a segment when it reaches this size (uncompressed)
    #[arg(long, env = "ROTATE_MAX_BYTES", default_value = "256MiB", value_parser = parse_bytes)]
    pub rotate_max_bytes: u64,
    /// Durable consumer name (run one rotator per consumer: a second one would archive the other's
    /// redeliveries again)
    #[arg(long, env = "ROTATOR_CONSUMER", default_value = "s3-rotator")]
    pub consumer: String,
    /// First path segment of every object key
    #[arg(long, env = "ARCHIVE_PREFIX", default_value = "events")]
    pub key_prefix: String,
    /// gzip level, 1 (fast) to 9 (small)
    #[arg(long, env = "GZIP_LEVEL", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub gzip_level: u32,
    /// How long JetStream waits for an ack before redelivering [default: the rotation interval (at
    /// most 1h) + 15m]; redeliveries of events already in a segment are ignored
    #[arg(long, env = "ROTATOR_ACK_WAIT", value_parser = parse_duration)]
    pub ack_wait: Option<Duration>,
    /// Most events received and not yet archived; past it JetStream holds the rest until
    /// segments are uploaded (bounds memory and disk during a long S3 outage)
    #[arg(long, env = "ROTATOR_MAX_PENDING", default_value_t = 5_000_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_pending: i64,
    /// How long SIGTERM waits for the upload in progress
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub store: store::StoreArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Faults tests inject (never set from the command line).
    #[doc(hidden)]
    #[arg(skip)]
    pub faults: Arc<archiver::Faults>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Republish archived events received in [--from, --to) (RFC 3339 times)
    Replay {
        /// Start (inclusive), e.g. 2026-11-24T16:00:00Z
        #[arg(long, value_parser = parse_time)]
        from: DateTime<Utc>,
        /// End (exclusive), e.g. 2026-11-24T18:00:00Z: consecutive windows neither overlap nor
        /// leave a gap
        #[arg(long, value_parser = parse_time)]
        to: DateTime<Utc>,
        /// Only these sources (repeatable); default every source the archive holds
        #[arg(long = "source")]
        sources: Vec<String>,
    },
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e} (use RFC 3339, e.g. 2026-11-24T16:00:00Z)"))
}

impl Config {
    fn settings(&self) -> archiver::Settings {
        archiver::Settings {
            consumer: self.consumer.clone(),
            rotate_interval: self.rotate_interval,
            rotate_max_bytes: self.rotate_max_bytes,
            key_prefix: self.key_prefix.clone(),
            gzip_level: self.gzip_level,
            fetch_batch: 4096,
            // a message waits for its segment's upload; redelivery before that would be wasted
            ack_wait: self.ack_wait.unwrap_or_else(|| {
                self.rotate_interval.min(Duration::from_secs(3600)) + Duration::from_secs(900)
            }),
            max_pending: self.max_pending,
            faults: self.faults.clone(),
        }
    }
}

/// Runs the archiver (or the replay command) until done or `token` is cancelled.
pub async fn run(config: Config, token: CancellationToken) -> anyhow::Result<()> {
    let store =
        store::Store::from_args(&config.store).map_err(|e| ConfigError::new(e.to_string()))?;
    if let Some(Command::Replay { from, to, sources }) = &config.command {
        let bus = Bus::connect(&config.nats, "s3-rotator-replay", true).await?;
        let report = replay::replay(&store, &bus, &config.key_prefix, *from, *to, sources).await?;
        bus.close(Duration::from_secs(5)).await;
        learntrail_runtime::cli::print(&format!("{report}\n"));
        return Ok(());
    }
    let ops = http::bind("METRICS_ADDR", config.metrics_addr).await?;
    serve(config, store, ops, token).await
}

/// The archiver with an already-bound metrics listener (tests pass port 0).
pub async fn serve(
    config: Config,
    store: store::Store,
    ops: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let segments = segment::SegmentDir::new(&config.segment_dir)
        .with_context(|| format!("cannot use SEGMENT_DIR {}", config.segment_dir.display()))?;
    let (bus, provisioning) =
        Bus::start(&config.nats, &config.streams, "s3-rotator", &token).await?;
    let mut registry = Registry::with_prefix("learntrail");
    let metrics = metrics::Metrics::register(&mut registry);
    let ready = Arc::new(archiver::Readiness::default());
    let ready_check = {
        let (bus, ready) = (bus.clone(), ready.clone());
        Arc::new(move || bus.is_ready() && ready.is_ready())
    };
    let ops_router = health::router(Arc::new(registry), ready_check);
    tracing::info!(store = %store.describe(), metrics_addr = %ops.local_addr()?, segments = %config.segment_dir.display(), "s3-rotator started");
    // the ops endpoint outlives the drain: it answers not-ready while the service winds down
    let ops_token = CancellationToken::new();
    let ops_server = tokio::spawn(http::serve(ops, ops_router, ops_token.clone()));
    let archiving = archiver::run(
        bus.clone(),
        store,
        segments,
        config.settings(),
        metrics,
        ready.clone(),
        token.clone(),
    );
    let outcome =
        learntrail_runtime::shutdown::drain_with_grace(&token, config.shutdown_grace, archiving)
            .await;
    provisioning.abort();
    ops_token.cancel();
    let _ = ops_server.await;
    bus.close(Duration::from_secs(2)).await;
    tracing::info!("s3-rotator stopped");
    match (outcome, ready.failure()) {
        (Some(Err(err)), _) => Err(err),
        (_, Some(failure)) => Err(anyhow::anyhow!(failure)),
        _ => Ok(()),
    }
}
