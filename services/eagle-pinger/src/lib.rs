//! # eagle-pinger
//!
//! Polls Rainforest Eagle energy meters every `POLL_INTERVAL` (6 s) and publishes each reading
//! as an `EnergyReading` event on `events.energy.reading`. Meters are registered in Redis
//! through a small HTTP API (passwords encrypted at rest, never returned or logged); replicas
//! split the meters by a stable hash of their cloud id.
//!
//! Modules: [`decode`] (the Eagle wire formats → [`decode::Reading`]), [`client`] (HTTP to the
//! Eagles), [`crypto`] (AES-256-GCM with key rotation), [`record`] (the stored record and its
//! checks), [`registry`] (Redis), [`schedule`] (shards and slots), [`poller`] (one task per
//! meter), [`routes`] (HTTP API), [`admin`] (`import` and `rekey`), [`metrics`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod client;
pub mod crypto;
pub mod decode;
pub mod metrics;
pub mod poller;
pub mod record;
pub mod registry;
pub mod routes;
pub mod schedule;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use learntrail_runtime::{
    CancellationToken,
    auth::{AuthArgs, parse_secret},
    bus::{Bus, NatsArgs, StreamArgs},
    cli::ConfigError,
    health, http,
    retry::Delays,
    telemetry::LogArgs,
    telemetry::redact_urls,
    units::parse_duration,
};
use prometheus_client::registry::Registry as Prometheus;
use secrecy::SecretString;
use tokio::net::TcpListener;

use crate::{
    client::EagleClient,
    crypto::Keyring,
    poller::{Pacing, Poller},
    registry::Registry,
    schedule::Shard,
};

/// The Rainforest cloud relay.
pub const RAINFOREST_RELAY: &str = "https://rainforestcloud.com:9445/cgi-bin/post_manager";

/// Where the registry lives and the keys that seal its passwords (the server and the
/// `import`/`rekey` commands share these).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Redis holding the meter registry
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[command(flatten)]
    pub redis_tls: learntrail_runtime::redis::RedisTlsArgs,
    /// Prefix of the registry's Redis keys (a record is <prefix><cloud_id>)
    #[arg(long, env = "REDIS_PREFIX", default_value = "eagle:")]
    pub redis_prefix: String,
    /// AES-256 key sealing meter passwords: 32 bytes in base64 (openssl rand -base64 32)
    #[arg(long, env = "EAGLE_SECRET_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub eagle_secret_key: SecretString,
    /// Older keys, comma-separated, that still open passwords sealed before a rotation
    #[arg(long, env = "EAGLE_OLD_KEYS", hide_env_values = true, value_delimiter = ',', value_parser = parse_secret)]
    pub eagle_old_keys: Vec<SecretString>,
}

impl StoreArgs {
    pub fn keyring(&self) -> Result<Keyring, ConfigError> {
        Keyring::new(&self.eagle_secret_key, &self.eagle_old_keys)
            .map_err(|e| ConfigError::new(e.to_string()))
    }

    /// Connects to the registry, retrying until Redis answers or `token` is cancelled. A
    /// `REDIS_URL` that can never work (not a Redis URL, or a list of cluster nodes: the registry
    /// needs one Redis server) is a configuration error at once, not a retry forever.
    pub async fn connect(&self, token: &CancellationToken) -> anyhow::Result<Registry> {
        let keys = Arc::new(self.keyring()?);
        let shown = redact_urls(&self.redis_url);
        if self.redis_url.contains(',') {
            return Err(ConfigError::new(format!(
                "REDIS_URL {shown} lists several nodes (a Redis Cluster); the meter registry needs \
                 one Redis server (a primary, or a standalone one): give eagle-pinger its own"
            ))
            .into());
        }
        let certificates = self.redis_tls.certificates()?;
        let client =
            learntrail_runtime::redis::configured_client(&self.redis_url, certificates.as_ref())?;
        let mut delays = Delays::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match Registry::connect(client.clone(), &self.redis_prefix, keys.clone()).await {
                Ok(registry) => return Ok(registry),
                Err(err) => {
                    tracing::warn!(error = %err, redis_url = %shown, "cannot reach Redis yet")
                }
            }
            if !delays.wait(token).await {
                anyhow::bail!("stopped before Redis answered");
            }
        }
    }
}

/// eagle-pinger: Rainforest Eagle meters polled into the EVENTS stream.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "eagle-pinger",
    version,
    about,
    long_about = None,
    args_override_self = true,
    after_help = "Commands: `eagle-pinger import users.csv` registers meters in bulk; `eagle-pinger rekey` re-seals every password under EAGLE_SECRET_KEY."
)]
pub struct Config {
    /// Address of the meter registry API
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8084")]
    pub http_addr: SocketAddr,
    /// Address of /healthz, /readyz and /metrics
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9185")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The Rainforest cloud relay's post_manager URL
    #[arg(long, env = "EAGLE_CLOUD_URL", default_value = RAINFOREST_RELAY)]
    pub eagle_cloud_url: String,
    /// Extra CA certificate (PEM) trusted for HTTPS to a private relay, besides the system's
    #[arg(long, env = "EAGLE_CA_FILE")]
    pub eagle_ca_file: Option<PathBuf>,
    /// How often each meter is polled
    #[arg(long, env = "POLL_INTERVAL", default_value = "6s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Longest an Eagle may take to answer one request
    #[arg(long, env = "POLL_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub poll_timeout: Duration,
    /// How long a meter whose credentials were refused waits before the next try (a registry
    /// update retries it sooner)
    #[arg(long, env = "AUTH_BACKOFF", default_value = "15m", value_parser = parse_duration)]
    pub auth_backoff: Duration,
    /// Cap of the backoff of an unreachable or garbled meter
    #[arg(long, env = "MAX_BACKOFF", default_value = "5m", value_parser = parse_duration)]
    pub max_backoff: Duration,
    /// This replica's shard, 0..SHARD_COUNT [default: the ordinal of POD_NAME, else 0]
    #[arg(long, env = "SHARD_INDEX")]
    pub shard_index: Option<u32>,
    /// Number of replicas sharing the meters
    #[arg(long, env = "SHARD_COUNT", default_value_t = 1)]
    pub shard_count: u32,
    /// StatefulSet pod name (eagle-pinger-3 is shard 3) when SHARD_INDEX is not set
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Least time between two on-demand polls of one meter (GET /api/event) on this replica; a
    /// request sooner gets 429 with Retry-After. 0: no limit
    #[arg(long, env = "POLL_NOW_MIN_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub poll_now_min_interval: Duration,
    /// Longest an API request may take; a slower one is answered 408
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    /// This replica's shard, from SHARD_INDEX or the pod name's ordinal.
    pub fn shard(&self) -> Result<Shard, ConfigError> {
        let count = self.shard_count;
        if count == 0 {
            return Err(ConfigError::new("SHARD_COUNT must be at least 1"));
        }
        let index = match (self.shard_index, &self.pod_name) {
            (Some(index), _) => index,
            (None, Some(pod)) if count > 1 => schedule::pod_ordinal(pod).ok_or_else(|| {
                ConfigError::new(format!("POD_NAME {pod:?} has no ordinal; set SHARD_INDEX"))
            })?,
            (None, _) if count > 1 => {
                return Err(ConfigError::new(
                    "SHARD_COUNT > 1 needs SHARD_INDEX (or POD_NAME of a StatefulSet pod)",
                ));
            }
            (None, _) => 0,
        };
        if index >= count {
            return Err(ConfigError::new(format!(
                "SHARD_INDEX {index} is not below SHARD_COUNT {count}"
            )));
        }
        Ok(Shard { index, count })
    }

    fn check(&self) -> Result<Shard, ConfigError> {
        if self.poll_interval < Duration::from_millis(10) {
            return Err(ConfigError::new("POLL_INTERVAL must be at least 10ms"));
        }
        self.store.keyring()?;
        self.shard()
    }
}

/// Binds both listeners, then serves until `token` is cancelled.
pub async fn run(config: Config, token: CancellationToken) -> anyhow::Result<()> {
    config.check()?;
    let api = http::bind("HTTP_ADDR", config.http_addr).await?;
    let ops = http::bind("METRICS_ADDR", config.metrics_addr).await?;
    serve(config, api, ops, token).await
}

/// Serves on already-bound listeners (tests pass port-0 listeners).
pub async fn serve(
    config: Config,
    api: TcpListener,
    ops: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let shard = config.check()?;
    let client = EagleClient::new(
        &config.eagle_cloud_url,
        config.poll_timeout,
        config.eagle_ca_file.as_deref(),
    )
    .context("cannot build the Eagle HTTP client")?;
    let (bus, provisioning) =
        Bus::start(&config.nats, &config.streams, "eagle-pinger", &token).await?;
    let registry = config.store.connect(&token).await?;
    let mut prometheus = Prometheus::with_prefix("learntrail");
    let metrics = metrics::Metrics::register(&mut prometheus);
    let pacing = Pacing {
        interval: config.poll_interval,
        auth_backoff: config.auth_backoff,
        max_backoff: config.max_backoff,
        shard,
        full_reload: Duration::from_secs(60).max(config.poll_interval * 10),
    };
    let poller = Arc::new(Poller::new(
        registry.clone(),
        client,
        bus.clone(),
        metrics,
        pacing,
    ));
    let state = routes::AppState {
        registry,
        poller: poller.clone(),
        verifier: config.auth.verifier(),
        request_timeout: config.request_timeout,
        poll_gate: std::sync::Arc::new(routes::PollGate::new(config.poll_now_min_interval)),
    };
    let router = routes::router(state, http::HttpMetrics::register(&mut prometheus));
    let ready = {
        let (bus, poller) = (bus.clone(), poller.clone());
        Arc::new(move || bus.is_ready() && poller.is_loaded())
    };
    let ops_router = health::router(Arc::new(prometheus), ready);
    tracing::info!(
        http_addr = %api.local_addr()?,
        metrics_addr = %ops.local_addr()?,
        nats_url = %redact_urls(&config.nats.url),
        redis_url = %redact_urls(&config.store.redis_url),
        eagle_cloud_url = %redact_urls(&config.eagle_cloud_url),
        poll_interval_secs = config.poll_interval.as_secs_f64(),
        shard_index = shard.index,
        shard_count = shard.count,
        "eagle-pinger listening"
    );
    let polling = tokio::spawn(poller.run(token.clone()));
    let api_server = http::serve(api, router, token.clone());
    let ops_server = http::serve(ops, ops_router, token.clone());
    let served =
        learntrail_runtime::shutdown::drain_with_grace(&token, config.shutdown_grace, async {
            tokio::try_join!(api_server, ops_server)
        })
        .await;
    polling.abort();
    provisioning.abort();
    if let Some(result) = served {
        result.context("HTTP server failed")?;
    }
    bus.close(Duration::from_secs(2)).await;
    tracing::info!("eagle-pinger stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn config(extra: &[&str]) -> Config {
        let mut args = vec![
            "eagle-pinger",
            "--jwt-secret",
            "secret",
            "--eagle-secret-key",
            "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=",
        ];
        args.extend(extra);
        Config::parse_from(args)
    }

    #[test]
    fn defaults_match_the_issue() {
        let config = config(&[]);
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:8084");
        assert_eq!(config.metrics_addr.to_string(), "127.0.0.1:9185");
        assert_eq!(config.poll_interval, Duration::from_secs(6));
        assert_eq!(config.eagle_cloud_url, RAINFOREST_RELAY);
        assert_eq!(config.shard().unwrap(), Shard::ALL);
    }

    #[tokio::test]
    async fn a_redis_url_that_cannot_work_is_a_configuration_error_at_once() {
        let token = CancellationToken::new();
        for url in [
            "redis://:s3cret@r-0:6379,redis://:s3cret@r-1:6379",
            "http://not-redis",
        ] {
            let store = config(&["--redis-url", url]).store;
            let err = store.connect(&token).await.unwrap_err();
            let config = err.downcast_ref::<ConfigError>();
            let message = config
                .unwrap_or_else(|| panic!("{url}: {err:#}"))
                .to_string();
            assert!(message.contains("REDIS_URL"), "{message}");
            assert!(!message.contains("s3cret"), "{message}");
        }
    }

    #[tokio::test]
    async fn the_registry_is_reached_over_tls_checked_against_redis_tls_ca() {
        let redis = learntrail_testkit::RedisServer::start_tls();
        let ca = redis.ca_file().unwrap().to_str().unwrap().to_string();
        let token = CancellationToken::new();
        let store = config(&["--redis-url", &redis.url(), "--redis-tls-ca", &ca]).store;
        let registry = store.connect(&token).await.unwrap();
        assert_eq!(registry.all_ids().await.unwrap(), Vec::<String>::new());
        // without the authority its certificate is not trusted: never connected
        let untrusted = config(&["--redis-url", &redis.url()]).store;
        let attempt = tokio::time::timeout(Duration::from_secs(2), untrusted.connect(&token)).await;
        assert!(attempt.is_err(), "connected to a server it cannot trust");
        // an authority for a plain redis:// URL, or one that cannot be read, cannot work
        let not_pem = std::env::temp_dir().join(format!("lt-not-a-ca-{}", std::process::id()));
        std::fs::write(&not_pem, b"\x30\x82 not PEM").unwrap();
        let url = redis.url();
        for args in [
            ["--redis-url", "redis://127.0.0.1:1", "--redis-tls-ca", &ca],
            ["--redis-url", &url, "--redis-tls-ca", "/no/such/ca.pem"],
            [
                "--redis-url",
                &url,
                "--redis-tls-ca",
                not_pem.to_str().unwrap(),
            ],
        ] {
            let err = config(&args).store.connect(&token).await.unwrap_err();
            assert!(
                err.downcast_ref::<ConfigError>().is_some(),
                "{args:?}: {err:#}"
            );
        }
        let _ = std::fs::remove_file(not_pem);
    }

    #[test]
    fn shard_from_index_or_pod_name() {
        let shard = config(&["--shard-count", "3", "--shard-index", "2"]).shard();
        assert_eq!(shard.unwrap(), Shard { index: 2, count: 3 });
        let pod = config(&["--shard-count", "4", "--pod-name", "eagle-pinger-3"]).shard();
        assert_eq!(pod.unwrap(), Shard { index: 3, count: 4 });
        assert!(config(&["--shard-count", "2"]).shard().is_err());
        assert!(
            config(&["--shard-count", "2", "--shard-index", "2"])
                .shard()
                .is_err()
        );
        assert!(config(&["--shard-count", "0"]).shard().is_err());
        let bad_key = Config::parse_from([
            "eagle-pinger",
            "--jwt-secret",
            "s",
            "--eagle-secret-key",
            "c2hvcnQ=",
        ]);
        assert!(
            bad_key
                .check()
                .unwrap_err()
                .to_string()
                .contains("openssl rand")
        );
    }
}
