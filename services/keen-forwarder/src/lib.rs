//! # keen-forwarder
//!
//! Delivers events to the outside: Keen.IO (bulk API, the shared event → Keen mapping), any
//! number of webhooks (signed JSON batches) and an xAPI Learning Record Store (statements). Each
//! configured destination has its own durable pull consumer on EVENTS, subject filter, batching,
//! concurrency and retry policy, so a slow or failing destination holds back no other. An event is
//! acknowledged only after its destination accepted it, or after it was put on
//! `deadletter.<destination>` with the reason (refused for good, or out of attempts); every
//! record carries the event id (`learntrail_id`, the webhook event's `id`, the statement id), so a
//! receiver can drop the rare duplicate after a crash. `keen-forwarder redrive` delivers a
//! destination's dead letters again once the cause is fixed; `keen-forwarder backfill` feeds one
//! destination from s3-rotator's archive.
//!
//! Modules: [`destination`] (settings), [`forwarder`] (consume, batch, retry, ack), [`sink`]
//! (outcomes), [`keen`], [`webhook`], [`xapi`] (event → statements), [`lrs`], [`redrive`], [`backfill`],
//! [`metrics`].
#![forbid(unsafe_code)]

pub mod backfill;
pub mod destination;
pub mod forwarder;
pub mod keen;
pub mod lrs;
pub mod metrics;
pub mod redrive;
pub mod sink;
pub mod webhook;
pub mod xapi;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use learntrail_runtime::{
    CancellationToken,
    auth::parse_secret,
    bus::{Bus, NatsArgs, StreamArgs},
    cli::ConfigError,
    health, http,
    telemetry::LogArgs,
    units::{parse_bytes, parse_duration},
};
use prometheus_client::registry::Registry;
use secrecy::SecretString;
use tokio::net::TcpListener;

/// keen-forwarder: delivers events to Keen.IO, webhooks and an xAPI Learning Record Store.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "keen-forwarder", version, about, long_about = None)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address of /healthz, /readyz and /metrics
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9187")]
    pub metrics_addr: SocketAddr,
    /// Keen API base URL
    #[arg(long, env = "KEEN_URL", default_value = "https://api.keen.io")]
    pub keen_url: String,
    /// Keen project id (Keen is off unless it and the write key are set)
    #[arg(long, env = "KEEN_PROJECT_ID")]
    pub keen_project_id: Option<String>,
    /// Keen write key
    #[arg(long, env = "KEEN_WRITE_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub keen_write_key: Option<SecretString>,
    /// Renamed Keen collections, `<source>.<kind>=<collection>,...` (default `<source>.<kind>`)
    #[arg(long, env = "KEEN_COLLECTIONS", default_value = "")]
    pub keen_collections: String,
    /// Events Keen gets (a subject filter)
    #[arg(long, env = "KEEN_SUBJECTS", default_value = "events.>")]
    pub keen_subjects: String,
    /// Webhook URLs, comma-separated, each optionally `name=URL`
    #[arg(long, env = "WEBHOOK_URLS", default_value = "")]
    pub webhook_urls: String,
    /// Secret that signs webhook bodies (`Learntrail-Signature`); unsigned without it
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub webhook_secret: Option<SecretString>,
    /// Events the webhooks get (a subject filter)
    #[arg(long, env = "WEBHOOK_SUBJECTS", default_value = "events.>")]
    pub webhook_subjects: String,
    /// xAPI LRS base URL (statements go to <URL>/statements); no LRS without it
    #[arg(long, env = "LRS_URL")]
    pub lrs_url: Option<String>,
    /// LRS Basic auth user
    #[arg(long, env = "LRS_USERNAME")]
    pub lrs_username: Option<String>,
    /// LRS Basic auth password
    #[arg(long, env = "LRS_PASSWORD", hide_env_values = true, value_parser = parse_secret)]
    pub lrs_password: Option<SecretString>,
    /// `account.homePage` of statement actors (their `name` is the learner pseudonym)
    #[arg(
        long,
        env = "LRS_ACTOR_HOMEPAGE",
        default_value = "https://learntrail.local/learners"
    )]
    pub lrs_actor_homepage: String,
    /// Prefix of activity ids and extension IRIs in statements
    #[arg(
        long,
        env = "LRS_ACTIVITY_BASE",
        default_value = "https://learntrail.local/xapi"
    )]
    pub lrs_activity_base: String,
    /// Events the LRS gets (a subject filter)
    #[arg(long, env = "LRS_SUBJECTS", default_value = "events.>")]
    pub lrs_subjects: String,
    /// More destinations, JSON `{"destinations": [{"type": "keen"|"webhook"|"lrs", ...}]}`
    #[arg(long, env = "DESTINATIONS_FILE")]
    pub destinations_file: Option<PathBuf>,
    /// Most events per delivery (default of every destination)
    #[arg(long, env = "FORWARD_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// Most event bytes per delivery (Keen requests also stay under its 10 MB bulk limit)
    #[arg(long, env = "FORWARD_BATCH_BYTES", default_value = "4MiB", value_parser = parse_bytes)]
    pub batch_bytes: u64,
    /// How long a partial batch waits for more events
    #[arg(long, env = "FORWARD_LINGER", default_value = "200ms", value_parser = parse_duration)]
    pub linger: Duration,
    /// Deliveries in flight at once, per destination
    #[arg(long, env = "FORWARD_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Attempts before an event is dead-lettered
    #[arg(long, env = "FORWARD_MAX_ATTEMPTS", default_value_t = 10)]
    pub max_attempts: u32,
    /// First retry delay (doubling, with jitter)
    #[arg(long, env = "FORWARD_RETRY_MIN", default_value = "500ms", value_parser = parse_duration)]
    pub retry_min: Duration,
    /// Longest retry delay
    #[arg(long, env = "FORWARD_RETRY_MAX", default_value = "1m", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// How long JetStream waits for an ack before redelivering (deliveries being retried are
    /// kept in progress)
    #[arg(long, env = "FORWARD_ACK_WAIT", default_value = "1m", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// HTTP timeout of one delivery request
    #[arg(long, env = "FORWARD_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// How long SIGTERM waits for deliveries under way
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Deliver a destination's dead letters again (once the cause is fixed) and remove the
    /// delivered ones from DEADLETTER
    Redrive {
        /// Destination name: keen, webhook.<name> or lrs
        #[arg(long)]
        destination: String,
        /// Only records dead-lettered at or after this time (RFC 3339)
        #[arg(long, value_parser = parse_time)]
        from: Option<DateTime<Utc>>,
        /// Only records dead-lettered before this time (RFC 3339)
        #[arg(long, value_parser = parse_time)]
        to: Option<DateTime<Utc>>,
    },
    /// Feed a destination from the archive (s3-rotator's objects, S3 or ARCHIVE_DIR): events
    /// received in [--from, --to), to this destination alone
    Backfill {
        /// Destination name: keen, webhook.<name> or lrs
        #[arg(long)]
        destination: String,
        /// Start (inclusive, RFC 3339)
        #[arg(long, value_parser = parse_time)]
        from: DateTime<Utc>,
        /// End (exclusive, RFC 3339)
        #[arg(long, value_parser = parse_time)]
        to: DateTime<Utc>,
        /// First path segment of the archive's object keys
        #[arg(long, env = "ARCHIVE_PREFIX", default_value = "events")]
        prefix: String,
        #[command(flatten)]
        store: learntrail_s3_rotator::store::StoreArgs,
    },
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e} (use RFC 3339, e.g. 2026-11-24T16:00:00Z)"))
}

/// Runs the forwarder (or the redrive or backfill command) until done or `token` is cancelled.
pub async fn run(config: Config, token: CancellationToken) -> anyhow::Result<()> {
    let destinations = destination::from_config(&config).map_err(ConfigError::new)?;
    if let Some(command) = &config.command {
        return run_command(command, &config, &destinations, &token).await;
    }
    let ops = http::bind("METRICS_ADDR", config.metrics_addr).await?;
    serve(config, destinations, ops, token).await
}

/// `redrive` or `backfill`: one destination, then exit.
async fn run_command(
    command: &Command,
    config: &Config,
    destinations: &[destination::Destination],
    token: &CancellationToken,
) -> anyhow::Result<()> {
    let (Command::Redrive { destination, .. } | Command::Backfill { destination, .. }) = command;
    let dest = destinations
        .iter()
        .find(|d| &d.name == destination)
        .ok_or_else(|| ConfigError::new(format!("no destination {destination} is configured")))?;
    let bus = Bus::connect(&config.nats, "keen-forwarder-command", true).await?;
    let metrics = metrics::Metrics::register(&mut Registry::default()).for_destination(&dest.name);
    let report = match command {
        Command::Redrive { from, to, .. } => {
            redrive::redrive(&bus, dest, *from, *to, &metrics, token)
                .await?
                .to_string()
        }
        Command::Backfill {
            from,
            to,
            prefix,
            store,
            ..
        } => {
            let store = learntrail_s3_rotator::store::Store::from_args(store)
                .map_err(|e| ConfigError::new(e.to_string()))?;
            let window = backfill::Window {
                store: &store,
                prefix,
                from: *from,
                to: *to,
            };
            backfill::backfill(window, &bus, dest, &metrics, token)
                .await?
                .to_string()
        }
    };
    bus.close(Duration::from_secs(5)).await;
    learntrail_runtime::cli::print(&format!("{report}\n"));
    Ok(())
}

/// The forwarder with its destinations and an already-bound metrics listener (tests pass port 0).
pub async fn serve(
    config: Config,
    destinations: Vec<destination::Destination>,
    ops: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let (bus, provisioning) =
        Bus::start(&config.nats, &config.streams, "keen-forwarder", &token).await?;
    let mut registry = Registry::with_prefix("learntrail");
    let metrics = metrics::Metrics::register(&mut registry);
    let ready_check = {
        let bus = bus.clone();
        Arc::new(move || bus.is_ready())
    };
    let ops_router = health::router(Arc::new(registry), ready_check);
    if destinations.is_empty() {
        tracing::info!(
            "no destination configured (KEEN_PROJECT_ID + KEEN_WRITE_KEY, WEBHOOK_URLS, LRS_URL or DESTINATIONS_FILE): idle"
        );
    }
    for dest in &destinations {
        tracing::info!(destination = %dest.name, to = %dest.sink.describe(), subjects = %dest.tuning.subjects, "destination configured");
    }
    tracing::info!(metrics_addr = %ops.local_addr()?, "keen-forwarder started");
    let ops_token = CancellationToken::new();
    let ops_server = tokio::spawn(http::serve(ops, ops_router, ops_token.clone()));
    let mut forwarders = tokio::task::JoinSet::new();
    for dest in destinations {
        let m = metrics.for_destination(&dest.name);
        forwarders.spawn(forwarder::run(
            bus.clone(),
            Arc::new(dest),
            m,
            token.clone(),
        ));
    }
    let forwarding = async {
        while forwarders.join_next().await.is_some() {}
        // with no destination: idle until told to stop
        token.cancelled().await
    };
    let outcome =
        learntrail_runtime::shutdown::drain_with_grace(&token, config.shutdown_grace, forwarding)
            .await;
    if outcome.is_none() {
        tracing::warn!(
            "deliveries still under way at the end of the grace period; they will be redelivered"
        );
    }
    provisioning.abort();
    ops_token.cancel();
    let _ = ops_server.await;
    bus.close(Duration::from_secs(2)).await;
    tracing::info!("keen-forwarder stopped");
    Ok(())
}
