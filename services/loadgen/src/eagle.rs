//! eagle-pinger benchmark: starts nats-server, redis-server, the fake-eagle release binary
//! simulating `meters` meters, registers them all with `eagle-pinger import`, starts `replicas`
//! eagle-pinger release binaries (SHARD_INDEX 0..replicas) at the real 6 s cadence, waits until
//! every meter has been polled, then measures for a while: polls/s per replica, schedule drift
//! p99 (from the poller's own drift histogram) and CPU use of each process.
//! Target on a 2-core machine: 20,000 meters (3,300 polls/s) with drift p99 <= 250 ms.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use learntrail_testkit::{NatsServer, RedisServer, eventually};

use crate::{
    Bench,
    harness::{cpu_seconds, pid_on_port, port_of},
    report::verdict,
};

const KEY: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
const JWT: &str = "bench-secret-0123456789-0123456789-abcdef";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Meters to simulate and poll
    #[arg(long, default_value_t = 20_000)]
    pub meters: u32,
    /// eagle-pinger replicas sharing them
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// API the meters speak: cloud (two requests a poll) or local200 (one)
    #[arg(long, default_value = "cloud")]
    pub api: String,
    /// Poll interval
    #[arg(long, default_value = "6s")]
    pub interval: String,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            meters: 20_000,
            replicas: 1,
            api: "cloud".into(),
            interval: "6s".into(),
        }
    }
}

struct Service {
    child: Child,
    name: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> anyhow::Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string())
}

fn binary(bench: &Bench, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = bench.bin_dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} not found: run `cargo build --release --bins` first",
        path.display()
    );
    Ok(path)
}

/// Every sample of a Prometheus text page: name{labels} → value.
async fn scrape(http: &reqwest::Client, url: &str) -> BTreeMap<String, f64> {
    let Ok(response) = http.get(url).send().await else {
        return BTreeMap::new();
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sum(samples: &[BTreeMap<String, f64>], name: &str) -> f64 {
    samples.iter().filter_map(|s| s.get(name)).sum()
}

/// The upper bound of the drift bucket holding quantile `q`, from the difference of two scrapes.
fn drift_quantile(
    before: &[BTreeMap<String, f64>],
    after: &[BTreeMap<String, f64>],
    q: f64,
) -> Option<f64> {
    const BUCKET: &str = "learntrail_eagle_schedule_drift_seconds_bucket{le=\"";
    let mut bounds: Vec<(f64, f64)> = after[0]
        .keys()
        .filter_map(|k| {
            k.strip_prefix(BUCKET)?
                .strip_suffix("\"}")
                .map(|le| (k, le))
        })
        .map(|(k, le)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            (bound, sum(after, k) - sum(before, k))
        })
        .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = bounds.last()?.1;
    bounds
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map(|(bound, _)| *bound)
}

pub async fn run(bench: &Bench, args: &Args) -> anyhow::Result<()> {
    let (pinger, fake_bin) = (binary(bench, "eagle-pinger")?, binary(bench, "fake-eagle")?);
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let fake_addr = free_addr()?;
    let fake = Service {
        child: Command::new(fake_bin)
            .args(["--addr", &fake_addr, "--meters", &args.meters.to_string()])
            .args(["--api", &args.api])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
        name: "fake-eagle".into(),
    };
    let cloud_url = format!("http://{fake_addr}/cgi-bin/post_manager");
    eventually(Duration::from_secs(10), "fake-eagle listening", || async {
        std::net::TcpStream::connect(&fake_addr).ok().map(|_| ())
    })
    .await;

    // register every meter through the import command
    let mut csv = tempfile::NamedTempFile::new()?;
    writeln!(csv, "cloud_id,user_email,user_pw,api,address,actor,course")?;
    for n in 1..=args.meters {
        let id = format!("{n:06x}");
        let (email, address) = if args.api == "cloud" {
            (format!("meter-{id}@example.org"), String::new())
        } else {
            (String::new(), fake_addr.clone())
        };
        writeln!(
            csv,
            "{id},{email},pw-{id},{},{address},household-{id},energy-101",
            args.api
        )?;
    }
    let started = Instant::now();
    import(&pinger, csv.path(), &redis.url())?;
    println!(
        "eagle-pinger: {} meters registered with `eagle-pinger import` in {:.1} s",
        args.meters,
        started.elapsed().as_secs_f64()
    );

    let http = reqwest::Client::new();
    let mut replicas = Vec::new();
    let mut metrics_urls = Vec::new();
    for index in 0..args.replicas {
        let ops = free_addr()?;
        metrics_urls.push(format!("http://{ops}/metrics"));
        replicas.push(Service {
            child: Command::new(&pinger)
                .env("NATS_URL", nats.url())
                .env("REDIS_URL", redis.url())
                .env("HTTP_ADDR", free_addr()?)
                .env("METRICS_ADDR", &ops)
                .env("JWT_SECRET", JWT)
                .env("EAGLE_SECRET_KEY", KEY)
                .env("EAGLE_CLOUD_URL", &cloud_url)
                .env("POLL_INTERVAL", &args.interval)
                .env("SHARD_INDEX", index.to_string())
                .env("SHARD_COUNT", args.replicas.to_string())
                .env("LOG_FORMAT", "json")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()?,
            name: format!("eagle-pinger[{index}]"),
        });
    }
    let scrape_all = || async {
        let mut all = Vec::new();
        for url in &metrics_urls {
            all.push(scrape(&http, url).await);
        }
        all
    };
    // warm-up: every meter polled at least once, and one more interval for the slots to settle
    let meters = f64::from(args.meters);
    eventually(
        Duration::from_secs(120),
        "every meter polled once",
        || async {
            let ok = sum(&scrape_all().await, "learntrail_eagle_meters{state=\"ok\"}");
            (ok >= meters).then_some(())
        },
    )
    .await;
    let interval = learntrail_runtime::units::parse_duration(&args.interval)
        .map_err(|e| anyhow::anyhow!("--interval: {e}"))?;
    tokio::time::sleep(interval).await;

    let mut processes: Vec<(String, u32)> = replicas
        .iter()
        .chain(std::iter::once(&fake))
        .map(|s| (s.name.clone(), s.child.id()))
        .collect();
    for (name, port) in [
        ("nats-server", nats.port()),
        ("redis-server", port_of(&redis.url())),
    ] {
        if let Some(pid) = pid_on_port(port) {
            processes.push((name.into(), pid));
        }
    }
    let measure = bench.duration.max(interval * 5);
    let cpu_before: Vec<f64> = processes.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    let before = scrape_all().await;
    let t0 = Instant::now();
    tokio::time::sleep(measure).await;
    let after = scrape_all().await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu: Vec<f64> = processes
        .iter()
        .zip(&cpu_before)
        .map(|((_, pid), b)| (cpu_seconds(*pid) - b) / elapsed * 100.0)
        .collect();

    let ok_polls =
        |s: &[BTreeMap<String, f64>]| sum(s, "learntrail_eagle_polls_total{outcome=\"ok\"}");
    let polls = (ok_polls(&after) - ok_polls(&before)) / elapsed;
    let failed = [
        "auth_failed",
        "unreachable",
        "malformed",
        "no_meter",
        "empty",
    ]
    .iter()
    .map(|o| {
        let name = format!("learntrail_eagle_polls_total{{outcome=\"{o}\"}}");
        sum(&after, &name) - sum(&before, &name)
    })
    .sum::<f64>();
    let events = sum(&after, "learntrail_eagle_events_published_total")
        - sum(&before, "learntrail_eagle_events_published_total");
    let expected = meters / interval.as_secs_f64();
    let p50 = drift_quantile(&before, &after, 0.50).unwrap_or(f64::NAN) * 1000.0;
    let p99 = drift_quantile(&before, &after, 0.99).unwrap_or(f64::NAN) * 1000.0;
    let p999 = drift_quantile(&before, &after, 0.999).unwrap_or(f64::NAN) * 1000.0;
    println!(
        "eagle-pinger: {} meters ({}), {} replica(s), interval {}, measured {:.0} s",
        args.meters, args.api, args.replicas, args.interval, elapsed
    );
    println!(
        "  polls/s            {polls:>9.0}   (expected {expected:.0}; {:.0} per replica)   failed polls {failed:.0}   events/s {:.0}",
        polls / f64::from(args.replicas),
        events / elapsed
    );
    println!("  drift p50/p99/p999 <= {p50:.0} / {p99:.0} / {p999:.0} ms (bucket upper bounds)");
    for ((name, _), cpu) in processes.iter().zip(&cpu) {
        println!("  cpu {name:<16} {cpu:>6.0} %");
    }
    let ok = polls >= expected * 0.98 && p99 <= 250.0;
    println!(
        "  target: {expected:.0} polls/s with drift p99 <= 250 ms: {}",
        verdict(ok)
    );
    drop(replicas);
    drop(fake);
    Ok(())
}

fn import(pinger: &Path, csv: &Path, redis_url: &str) -> anyhow::Result<()> {
    let status = Command::new(pinger)
        .arg("import")
        .arg(csv)
        .env("REDIS_URL", redis_url)
        .env("EAGLE_SECRET_KEY", KEY)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "eagle-pinger import failed: {status}");
    Ok(())
}
