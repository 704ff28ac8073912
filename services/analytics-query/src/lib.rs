//! # analytics-query
//!
//! The read side of Learntrail. A durable pull consumer on EVENTS folds every event into Redis
//! ([`projector`], [`fold`], [`store`]; key layout in [`keys`]), acknowledging each pull batch
//! only after its one-round-trip write; the same event applied twice changes nothing. Dashboards
//! ask over gRPC ([`grpc`]: `learntrail.v1.AnalyticsQuery`, health, reflection), HTTP/JSON and a
//! Keen-compatible analysis API ([`routes`], [`keen`]); every call is authorised by [`access`]
//! and answered by [`api`] from [`summary`] and [`cohort`].
#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod cache;
pub mod cohort;
pub mod dashboard;
pub mod fold;
pub mod grpc;
pub mod index;
pub mod keen;
pub mod keys;
pub mod metrics;
pub mod projector;
pub mod roster;
pub mod routes;
pub mod store;
pub mod summary;

/// The generated gRPC server and client of `learntrail.v1.AnalyticsQuery` (messages live in
/// `learntrail_proto::v1`).
#[allow(clippy::all, missing_docs, rust_2018_idioms)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/learntrail.v1.rs"));
}

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use learntrail_runtime::{
    CancellationToken,
    auth::{AuthArgs, parse_secret},
    bus::{Bus, NatsArgs, StreamArgs},
    health, http,
    retry::Delays,
    telemetry::LogArgs,
    units::parse_duration,
};
use prometheus_client::registry::Registry;
use secrecy::SecretString;
use tokio::net::TcpListener;

/// analytics-query: Redis projections of every event; gRPC, HTTP/JSON and Keen-style queries.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "analytics-query", version, about, long_about = None)]
pub struct Config {
    /// Address of the HTTP/JSON and Keen API
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8083")]
    pub http_addr: SocketAddr,
    /// Address of the gRPC API
    #[arg(long, env = "GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Address of /healthz, /readyz and /metrics
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9183")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Redis URL(s), comma-separated (several: nodes of a cluster)
    #[arg(
        long,
        env = "REDIS_URL",
        value_delimiter = ',',
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: Vec<String>,
    /// Talk to Redis Cluster (on by itself when REDIS_URL names several nodes)
    #[arg(long, env = "REDIS_CLUSTER")]
    pub redis_cluster: bool,
    #[command(flatten)]
    pub redis_tls: learntrail_runtime::redis::RedisTlsArgs,
    /// Project id of the Keen-compatible API (/3.0/projects/{id}/queries/...)
    #[arg(long, env = "ANALYSIS_PROJECT_ID", default_value = "learntrail")]
    pub analysis_project_id: String,
    /// HMAC key of learner pseudonyms (matches ROSTER_CSV uids to actors, as the shim makes them)
    #[arg(long, env = "PSEUDONYM_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub pseudonym_key: Option<SecretString>,
    /// Origins allowed to call the API from a browser, comma-separated ("*" for any; empty for none)
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',', default_value = "")]
    pub cors_origins: Vec<String>,
    /// Roster of real names (`uid,name,email[,actor]`), shown on the dashboard to instructors
    #[arg(long, env = "ROSTER_CSV")]
    pub roster_csv: Option<std::path::PathBuf>,
    /// Durable consumer name of the projection (a fresh name rebuilds from the stream)
    #[arg(long, env = "ANALYTICS_CONSUMER", default_value = "analytics-query")]
    pub consumer: String,
    /// Events asked for in one pull request
    #[arg(long, env = "PROJECTION_BATCH", default_value_t = 1000)]
    pub batch: usize,
    /// Most events in one Redis write (one round trip). A write closes as soon as the stream has
    /// nothing more waiting; while a backlog waits it grows up to this, so a learner's events
    /// merge into fewer commands
    #[arg(long, env = "PROJECTION_WRITE_MAX", default_value_t = 20_000)]
    pub write_max: usize,
    /// Longest a write stays open for more events while a backlog waits
    #[arg(long, env = "PROJECTION_LINGER", default_value = "250ms", value_parser = parse_duration)]
    pub linger: Duration,
    /// Writes folded and applied at once (their effects commute): Redis applies one while the
    /// next ones are gathered and folded
    #[arg(long, env = "PROJECTION_CONCURRENCY", default_value_t = 2)]
    pub concurrency: usize,
    /// JetStream redelivery timeout of an unacknowledged event
    #[arg(long, env = "ANALYTICS_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Timeline entries kept per learner
    #[arg(long, env = "TIMELINE_LEN", default_value_t = 1000)]
    pub timeline_len: u32,
    /// How long the analysis data behind the Keen API (each collection-hour's cells, each
    /// learner's events of a collection) is kept after the hour of the events' occurred_at; a
    /// Keen query whose timeframe starts earlier is refused (400) rather than undercounted.
    /// Summaries, timelines and cohorts are all-time and not affected. 0 keeps everything
    #[arg(long, env = "ANALYSIS_RETENTION", default_value = "0", value_parser = parse_duration)]
    pub analysis_retention: Duration,
    /// Most intervals one Keen query may ask for (a week minutely is 10,080, two years hourly
    /// 17,520); a query with more is refused (400) before anything is read
    #[arg(long, env = "ANALYSIS_MAX_INTERVALS", default_value_t = 20_000)]
    pub analysis_max_intervals: usize,
    /// Longest timeframe one Keen query may span (its hours are read whatever the interval); a
    /// longer one is refused (400) before anything is read
    #[arg(long, env = "ANALYSIS_MAX_TIMEFRAME", default_value = "10y", value_parser = parse_duration)]
    pub analysis_max_timeframe: Duration,
    /// Most values one Keen answer may hold (intervals × groups: a week hourly over 1,000
    /// groups is 168,000); a larger answer is refused (400) as it is computed, never cut short
    #[arg(long, env = "ANALYSIS_MAX_RESULT_VALUES", default_value_t = 250_000)]
    pub analysis_max_result_values: usize,
    /// Memory (MiB) for what queries have read and answered: Keen answers and collection-hours,
    /// learner summaries. Each is used only while what it was computed from is unchanged (its
    /// version is checked in Redis on every query, so answers are never stale). 0: off
    #[arg(long, env = "ANALYSIS_CACHE_MB", default_value_t = 64)]
    pub analysis_cache_mb: usize,
    /// Extra indexed dimensions (group_by, filters, count_unique), comma-separated Keen properties
    #[arg(
        long,
        env = "INDEX_DIMENSIONS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub index_dimensions: Vec<String>,
    /// Extra indexed measures (sum, average, minimum, maximum), comma-separated Keen properties
    #[arg(
        long,
        env = "INDEX_MEASURES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub index_measures: Vec<String>,
    /// Longest a request may take; a slower one is answered 408
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// How long in-flight work may take to finish after SIGTERM
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The three listeners.
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
    pub ops: TcpListener,
}

/// Binds the listeners, then serves until `token` is cancelled.
pub async fn run(config: Config, token: CancellationToken) -> anyhow::Result<()> {
    let listeners = Listeners {
        http: http::bind("HTTP_ADDR", config.http_addr).await?,
        grpc: http::bind("GRPC_ADDR", config.grpc_addr).await?,
        ops: http::bind("METRICS_ADDR", config.metrics_addr).await?,
    };
    serve(config, listeners, token).await
}

/// Connects to Redis, retrying until it answers or `token` is cancelled. A `REDIS_URL` or a
/// `REDIS_TLS_CA` that can never work is a configuration error at once.
async fn connect_store(
    config: &Config,
    token: &CancellationToken,
) -> anyhow::Result<Option<store::Store>> {
    let cluster = config.redis_cluster || config.redis_url.len() > 1;
    let certificates = config.redis_tls.certificates()?;
    for url in &config.redis_url {
        learntrail_runtime::redis::configured_client(url, certificates.as_ref())?;
    }
    let mut delays = Delays::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match store::Store::connect(&config.redis_url, cluster, certificates.as_ref()).await {
            Ok(store) => return Ok(Some(store)),
            Err(err) => tracing::warn!(error = %err, "cannot reach redis yet"),
        }
        if !delays.wait(token).await {
            return Ok(None);
        }
    }
}

/// Refuses a Redis that holds the projection in another key layout: this build would misread
/// it and mix its own writes in.
async fn check_layout(store: &store::Store) -> anyhow::Result<()> {
    let held = store.layout().await.with_context(|| {
        format!(
            "reading the projection's layout mark ({})",
            keys::LAYOUT_KEY
        )
    })?;
    if held == keys::LAYOUT {
        return Ok(());
    }
    Err(learntrail_runtime::cli::ConfigError::new(format!(
        "Redis holds the projection in key layout {held} ({}), this build reads and writes layout {}: \
         rebuild the projection into an empty Redis database (README, \"Rebuilding the projection\"), \
         or run the build that wrote it",
        keys::LAYOUT_KEY,
        keys::LAYOUT
    ))
    .into())
}

/// Serves on already-bound listeners (tests pass port-0 listeners).
pub async fn serve(
    config: Config,
    listeners: Listeners,
    token: CancellationToken,
) -> anyhow::Result<()> {
    if config.batch == 0 || config.concurrency == 0 || config.write_max == 0 {
        return Err(learntrail_runtime::cli::ConfigError::new(
            "PROJECTION_BATCH, PROJECTION_WRITE_MAX and PROJECTION_CONCURRENCY must be at least 1",
        )
        .into());
    }
    if config.roster_csv.is_some() && config.pseudonym_key.is_none() {
        tracing::warn!("ROSTER_CSV without PSEUDONYM_KEY: only rows with an actor cell get names");
    }
    let (bus, provisioning) =
        Bus::start(&config.nats, &config.streams, "analytics-query", &token).await?;
    let store = match connect_store(&config, &token).await {
        Ok(Some(store)) => store,
        Ok(None) => {
            provisioning.abort();
            return Ok(());
        }
        Err(err) => {
            provisioning.abort();
            return Err(err);
        }
    };
    if let Err(err) = check_layout(&store).await {
        provisioning.abort();
        return Err(err);
    }
    let mut registry = Registry::with_prefix("learntrail");
    let metrics = metrics::Metrics::register(&mut registry);
    let index = index::Index::with_extra(&config.index_dimensions, &config.index_measures);
    let retention = retention(&config);
    let cache = cache::Cache::new(
        cache::budget_bytes(config.analysis_cache_mb),
        metrics.cache.clone(),
        store.epoch_counter(),
    );
    let api = api::Api {
        store: store.clone(),
        verifier: config.auth.verifier(),
        index: index.clone(),
        metrics: metrics.clone(),
        project_id: config.analysis_project_id.clone(),
        retention,
        limits: keen::query::Limits {
            max_intervals: config.analysis_max_intervals,
            max_timeframe: config.analysis_max_timeframe,
            max_result_values: config.analysis_max_result_values,
        },
        cache: cache.clone(),
    };
    let roster = match &config.roster_csv {
        Some(path) => roster::Roster::load(path, pseudonym_key(&config))?,
        None => roster::Roster::default(),
    };
    let http_metrics = http::HttpMetrics::register(&mut registry);
    let router = routes::router(
        api.clone(),
        &config.cors_origins,
        http_metrics,
        config.request_timeout,
    )?
    .merge(dashboard::router(api.clone(), Arc::new(roster)));
    let ready_bus = bus.clone();
    let ops_router = health::router(Arc::new(registry), Arc::new(move || ready_bus.is_ready()));
    tracing::info!(
        http_addr = %listeners.http.local_addr()?,
        grpc_addr = %listeners.grpc.local_addr()?,
        metrics_addr = %listeners.ops.local_addr()?,
        nats_url = %learntrail_runtime::telemetry::redact_urls(&config.nats.url),
        consumer = %config.consumer,
        "analytics-query listening"
    );
    let settings = projector::Settings {
        consumer: config.consumer.clone(),
        batch: config.batch,
        write_max: config.write_max,
        linger: config.linger,
        concurrency: config.concurrency,
        ack_wait: config.ack_wait,
        fold: fold::FoldSettings {
            index,
            timeline_len: config.timeline_len,
            retention,
        },
    };
    let projection = tokio::spawn(projector::run(
        bus.clone(),
        store,
        settings,
        metrics,
        token.clone(),
    ));
    let api_server = http::serve(listeners.http, router, token.clone());
    let ops_server = http::serve(listeners.ops, ops_router, token.clone());
    let grpc_server = grpc::serve(api, listeners.grpc, token.clone());
    let served =
        learntrail_runtime::shutdown::drain_with_grace(&token, config.shutdown_grace, async {
            tokio::try_join!(
                async { api_server.await.context("HTTP server failed") },
                async { ops_server.await.context("ops server failed") },
                grpc_server,
            )
        })
        .await;
    provisioning.abort();
    if let Some(result) = served {
        result?;
    }
    projection.await.context("projection task panicked")??;
    bus.close(Duration::from_secs(2)).await;
    tracing::info!("analytics-query stopped");
    Ok(())
}

/// `ANALYSIS_RETENTION`, `None` when 0 (keep everything).
fn retention(config: &Config) -> Option<Duration> {
    (!config.analysis_retention.is_zero()).then_some(config.analysis_retention)
}

fn pseudonym_key(config: &Config) -> Option<&str> {
    use secrecy::ExposeSecret as _;
    config.pseudonym_key.as_ref().map(|k| k.expose_secret())
}
