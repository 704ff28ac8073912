//! tracking-api benchmark: starts nats-server (JetStream, file storage) and the tracking-api
//! release binary, then measures in one run
//! 1. the raw JetStream publish-with-ack rate of the same encoded events (the bus's ceiling),
//! 2. the HTTP ceiling: the same load on a bare endpoint of the same HTTP stack ([`crate::ceiling`]),
//! 3. `POST /api/tracking` with many keep-alive clients (events/s, p50/p99), profiled with
//!    `perf record` when perf is installed (the top entries are printed),
//! 4. `POST /api/tracking/batch` (events/s, request p50/p99),
//!    and prints them against the targets: single >= 50% of the HTTP ceiling with p99 <= 10 ms,
//!    batch >= 50% of raw.

use std::{
    collections::VecDeque,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use learntrail_proto::{Message, id};
use learntrail_runtime::{
    auth::{self, Claims, Role},
    bus::{Bus, NatsArgs, StreamArgs},
};
use learntrail_testkit::{NatsServer, eventually};
use serde_json::json;
use tokio::net::TcpStream;

use crate::harness::{Service, connect, cores, exchange, free_addr};
use crate::{
    Bench,
    report::{Phase, verdict},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Concurrent keep-alive connections for single events
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Concurrent connections for batches
    #[arg(long, default_value_t = 8)]
    pub batch_connections: usize,
    /// Events per batch request
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Publishes in flight for the raw JetStream phase
    #[arg(long, default_value_t = 1024)]
    pub raw_inflight: usize,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            connections: 64,
            batch_connections: 8,
            batch_size: 100,
            raw_inflight: 1024,
        }
    }
}

fn sample_event(i: usize) -> serde_json::Value {
    json!({
        "tracking_event_type": "video_play",
        "node_id": "unit-7",
        "course_slug": "ruby-101",
        "page_url": "https://lms.example/ruby-101/unit-7",
        "event_data": {"video_id": "intro", "current_time": (i % 600) as f64, "duration": 600}
    })
}

pub async fn run(bench: &Bench, args: &Args) -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let secret = format!("bench-{}", id::new_id());
    let (http_addr, ops_addr) = (free_addr(), free_addr());
    let binary = bench.bin_dir.join("tracking-api");
    anyhow::ensure!(
        binary.is_file(),
        "{} not found: run `cargo build --release` first",
        binary.display()
    );
    let service = Service(
        Command::new(&binary)
            .env("HTTP_ADDR", &http_addr)
            .env("METRICS_ADDR", &ops_addr)
            .env("JWT_SECRET", &secret)
            .env("NATS_URL", nats.url())
            .env("MAX_BATCH_EVENTS", args.batch_size.max(1000).to_string())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let ready_url = format!("http://{ops_addr}/readyz");
    eventually(Duration::from_secs(30), "tracking-api ready", || async {
        let answer = http.get(&ready_url).send().await.ok()?;
        answer.status().is_success().then_some(())
    })
    .await;
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "bench", true).await?;
    bus.provision(&StreamArgs::default()).await?;
    let token = auth::sign(
        secret.as_bytes(),
        &Claims {
            sub: "bench-learner".into(),
            role: Role::Student,
            exp: Some(auth::now() + 3_600),
            nbf: None,
            iat: None,
            courses: None,
        },
    );
    let ceiling = http_ceiling(&token, args.connections, bench.duration).await?;

    println!(
        "== tracking-api ({} per phase, {} CPUs) ==",
        humanize(bench.duration),
        cores()
    );
    let raw = raw_jetstream(&bus, args.raw_inflight, bench.duration).await;
    println!("{}", raw.line());
    println!("{}", ceiling.line());
    // warm up connections and the service's caches
    single(&http_addr, &token, args.connections, Duration::from_secs(1)).await;
    let profile = Profile::start(service.0.id());
    let single = single(&http_addr, &token, args.connections, bench.duration).await;
    let profile = profile.report();
    println!("{}", single.line());
    let batch = batch(&http_addr, &token, args, bench.duration).await;
    println!("{}", batch.line());
    let ratio = batch.rate() / raw.rate();
    let share = single.rate() / ceiling.rate();
    println!(
        "targets: single >= 50% of the HTTP ceiling {} ({:.0}%: {:.0}/s of {:.0}/s); single p99 <= 10 ms {} ({:.2} ms); batch >= 50% of raw {} ({:.0}%)",
        verdict(share >= 0.5),
        share * 100.0,
        single.rate(),
        ceiling.rate(),
        verdict(single.percentile_ms(0.99) <= 10.0),
        single.percentile_ms(0.99),
        verdict(ratio >= 0.5),
        ratio * 100.0
    );
    println!("{profile}");
    Ok(())
}

/// The same single-event load on the bare endpoint of the same HTTP stack, in its own process.
async fn http_ceiling(
    token: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let addr = free_addr();
    let _server = Service(
        Command::new(std::env::current_exe()?)
            .args(["ceiling", &addr])
            .stdout(Stdio::null())
            .spawn()?,
    );
    eventually(Duration::from_secs(10), "the ceiling endpoint", || async {
        TcpStream::connect(&addr).await.ok().map(drop)
    })
    .await;
    single(&addr, token, connections, Duration::from_secs(1)).await;
    let mut phase = single(&addr, token, connections, duration).await;
    phase.name = format!("HTTP ceiling: bare endpoint, same stack ({connections} conns)");
    Ok(phase)
}

/// Which part of the service a profiled symbol belongs to.
fn profile_bucket(dso: &str, symbol: &str) -> &'static str {
    const PARTS: [(&str, &str); 12] = [
        ("mi_", "allocator"),
        ("serde_json", "JSON"),
        ("serde", "JSON"),
        ("jsonwebtoken", "JWT"),
        ("ring::", "JWT"),
        ("sha2", "JWT"),
        ("base64", "JWT"),
        ("prost", "protobuf"),
        ("async_nats", "NATS client"),
        ("hyper", "HTTP"),
        ("axum", "HTTP"),
        ("tokio", "tokio"),
    ];
    if dso.contains("kernel") {
        return "kernel";
    }
    if let Some((_, part)) = PARTS.iter().find(|(needle, _)| symbol.contains(needle)) {
        return part;
    }
    if symbol.contains("learntrail") {
        return "learntrail";
    }
    if dso.starts_with("libc") {
        return "libc (memcpy, ...)";
    }
    "other"
}

/// `perf record` of one process while a phase runs; its report's top entries afterwards.
struct Profile {
    perf: Option<Child>,
    data: tempfile::TempPath,
}

impl Profile {
    fn start(pid: u32) -> Self {
        let data = tempfile::NamedTempFile::new()
            .expect("temp file")
            .into_temp_path();
        let perf = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "999", "-q", "-o"])
            .arg(&data)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        Self { perf, data }
    }

    /// Stops recording and returns the top of `perf report` (self time by symbol).
    fn report(mut self) -> String {
        let Some(perf) = self.perf.as_mut() else {
            return "profile: perf not found (apt-get install linux-perf)".into();
        };
        let _ = Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
        let report = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "dso,symbol",
                "-i",
            ])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output();
        let text = report
            .map(|r| String::from_utf8_lossy(&r.stdout).into_owned())
            .unwrap_or_default();
        let entries: Vec<(f64, String, String)> = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let share = words.next()?.strip_suffix('%')?.parse().ok()?;
                let dso = words.next()?.to_string();
                let symbol: Vec<&str> = words.skip(1).take_while(|w| *w != "-").collect();
                Some((share, dso, symbol.join(" ")))
            })
            .collect();
        let mut buckets: Vec<(&str, f64)> = Vec::new();
        for (share, dso, symbol) in &entries {
            let bucket = profile_bucket(dso, symbol);
            match buckets.iter_mut().find(|(name, _)| *name == bucket) {
                Some((_, total)) => *total += share,
                None => buckets.push((bucket, *share)),
            }
        }
        buckets.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut out = String::from(
            "profile of tracking-api during the single phase (perf record, self time)\n  by part:",
        );
        for (name, share) in &buckets {
            out.push_str(&format!(" {name} {share:.1}%;"));
        }
        out.push_str("\n  top symbols:\n");
        for (share, dso, symbol) in entries.iter().take(15) {
            out.push_str(&format!("  {share:5.2}%  {dso:<18} {symbol}\n"));
        }
        out
    }
}

/// The ceiling: the same events published straight to JetStream, `inflight` acks outstanding.
async fn raw_jetstream(bus: &Bus, inflight: usize, duration: Duration) -> Phase {
    let template = learntrail_proto::Event {
        id: id::new_id(),
        source: "lms".into(),
        kind: "video".into(),
        actor: "bench-learner".into(),
        occurred_at: Some(learntrail_proto::time::now()),
        received_at: Some(learntrail_proto::time::now()),
        ..Default::default()
    };
    let payload = Bytes::from(template.encode_to_vec());
    let tasks = 4;
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (bus, payload) = (bus.clone(), payload.clone());
        handles.push(tokio::spawn(async move {
            let mut phase = Phase::new("");
            let mut pending = VecDeque::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                match bus
                    .send("events.lms.video".into(), &id::new_id(), payload.clone())
                    .await
                {
                    Ok(ack) => pending.push_back((sent, ack)),
                    Err(_) => phase.errors += 1,
                }
                if pending.len() >= inflight / tasks {
                    settle(&mut phase, pending.pop_front()).await;
                }
            }
            while let Some(next) = pending.pop_front() {
                settle(&mut phase, Some(next)).await;
            }
            phase
        }));
    }
    let mut total = Phase::new(&format!("raw JetStream publish+ack ({inflight} in flight)"));
    for handle in handles {
        total.merge(&handle.await.expect("raw task"));
    }
    total.elapsed = started.elapsed();
    total
}

async fn settle(phase: &mut Phase, next: Option<(Instant, learntrail_runtime::bus::PendingAck)>) {
    let Some((sent, ack)) = next else { return };
    match ack.wait().await {
        Ok(_) => {
            phase.count += 1;
            let _ = phase.latency.record(sent.elapsed().as_micros() as u64);
        }
        Err(_) => phase.errors += 1,
    }
}

async fn single(addr: &str, token: &str, connections: usize, duration: Duration) -> Phase {
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..256)
            .map(|i| Bytes::from(sample_event(i).to_string()))
            .collect(),
    );
    let name = format!("single POST /api/tracking ({connections} conns)");
    let make = {
        let token = token.to_string();
        move |i: usize| post("/api/tracking", &token, bodies[i % bodies.len()].clone())
    };
    drive(&name, addr, connections, duration, make, |status, _| {
        (status == 202).then_some(1)
    })
    .await
}

async fn batch(addr: &str, token: &str, args: &Args, duration: Duration) -> Phase {
    let body = Bytes::from(
        json!({"events": (0..args.batch_size).map(sample_event).collect::<Vec<_>>()}).to_string(),
    );
    let size = args.batch_size as u64;
    let name = format!(
        "batch POST ({} conns x {} events)",
        args.batch_connections, args.batch_size
    );
    let make = {
        let token = token.to_string();
        move |_| post("/api/tracking/batch", &token, body.clone())
    };
    drive(
        &name,
        addr,
        args.batch_connections,
        duration,
        make,
        move |status, answer| {
            let answer: serde_json::Value = serde_json::from_slice(answer).ok()?;
            (status == 200 && answer["accepted"].as_u64() == Some(size)).then_some(size)
        },
    )
    .await
}

fn post(path: &str, token: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "bench")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("valid request")
}

/// Runs requests from `connections` keep-alive HTTP/1.1 connections (one task each) for
/// `duration`; `units` turns a response into the units it got done, or `None` on error.
async fn drive<M, U>(
    name: &str,
    addr: &str,
    connections: usize,
    duration: Duration,
    make: M,
    units: U,
) -> Phase
where
    M: Fn(usize) -> Request<Full<Bytes>> + Clone + Send + 'static,
    U: Fn(u16, &Bytes) -> Option<u64> + Clone + Send + 'static,
{
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let handles: Vec<_> = (0..connections)
        .map(|c| {
            let (make, units, addr) = (make.clone(), units.clone(), addr.to_string());
            tokio::spawn(async move {
                let mut phase = Phase::new("");
                let mut sender = connect(&addr).await;
                let mut i = c;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match exchange(&mut sender, make(i)).await {
                        Some((status, body)) => match units(status, &body) {
                            Some(done) => {
                                phase.count += done;
                                let _ = phase.latency.record(sent.elapsed().as_micros() as u64);
                            }
                            None => phase.errors += 1,
                        },
                        None => {
                            phase.errors += 1;
                            sender = connect(&addr).await;
                        }
                    }
                    i += connections;
                }
                phase
            })
        })
        .collect();
    let mut total = Phase::new(name);
    for handle in handles {
        total.merge(&handle.await.expect("load loop"));
    }
    total.elapsed = started.elapsed();
    total
}

fn humanize(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}
