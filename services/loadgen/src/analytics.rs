//! analytics-query benchmark: starts nats-server (JetStream), redis-server and the
//! analytics-query release binary, then measures
//! 1. the projection rate end to end: `events` events for `learners` learners (Ruby runs, lab
//!    actions, video plays over the last 7 days) published with pipelined JetStream publishes,
//!    timed from the first publish until the service reports every event projected (written to
//!    Redis, acknowledged);
//! 2. `GET /api/v1/learners/{learner}/summary` from many keep-alive connections (p50/p99);
//! 3. a Keen count over the previous 7 days, hourly, grouped by error class (p50/p99); the same
//!    with every query distinct (no answer used twice); the same over the current 7 days while
//!    Ruby runs arrive (`--live-rate`); a count_unique of `actor` over the previous 7 days,
//!    daily (learners active per day);
//!
//! and prints them against the targets: projection >= 50,000 events/s, summary p99 <= 5 ms,
//! Keen count p99 <= 20 ms.

use std::{
    collections::VecDeque,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    AckKind,
    consumer::{AckPolicy, pull},
};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::Request;
use learntrail_proto::{
    Event, Message, Payload, id, time,
    v1::{
        Context, LabLog, LmsEvent, LmsEventType, RubyError, RubyRun, VideoData,
        lms_event::EventData,
    },
};
use learntrail_runtime::{
    CancellationToken,
    auth::{self, Claims, Role},
    bus::{Bus, NatsArgs, StreamArgs},
};
use learntrail_testkit::{NatsServer, RedisServer, eventually};

use crate::harness::{
    Service, connect, cores, cpu_seconds, exchange, free_addr, metric, pid_on_port, port_of,
};
use crate::{
    Bench,
    report::{Phase, verdict},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Events to project
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Learners the events belong to
    #[arg(long, default_value_t = 10_000)]
    pub learners: usize,
    /// JetStream publishes in flight
    #[arg(long, default_value_t = 4096)]
    pub inflight: usize,
    /// Concurrent keep-alive connections asking for summaries
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Concurrent keep-alive connections asking the Keen count
    #[arg(long, default_value_t = 8)]
    pub keen_connections: usize,
    /// The service's PROJECTION_BATCH (events per pull batch and Redis round trip)
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Ruby runs per second arriving during the live Keen phase (a busy lab): each lands in the
    /// current hour, so most queries find that hour changed and compute their answer again
    #[arg(long, default_value_t = 200)]
    pub live_rate: u32,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            events: 1_000_000,
            learners: 10_000,
            inflight: 4096,
            connections: 32,
            keen_connections: 8,
            batch: 1000,
            live_rate: 200,
        }
    }
}

const PROJECTED: &str = "learntrail_analytics_events_projected_total";
const CLASSES: [&str; 5] = [
    "NoMethodError",
    "NameError",
    "ArgumentError",
    "TypeError",
    "",
];
const WEEK_MS: i64 = 7 * 24 * 3_600_000;

/// Event `i` of the load: learner `i % learners`, 60% Ruby runs (a fifth of them clean), 20% lab
/// actions, 20% video plays, spread evenly over the 7 days before `now_ms`.
fn event(i: usize, learners: usize, events: usize, now_ms: i64) -> Event {
    let learner = i % learners;
    let ms = now_ms - 60_000 - (i as i64 * (WEEK_MS - 120_000)) / events.max(1) as i64;
    let course = if learner.is_multiple_of(2) {
        "ruby-101"
    } else {
        "ruby-102"
    };
    let (source, kind, payload) = match i % 5 {
        0..=2 => {
            let class = CLASSES[(i / 5) % CLASSES.len()];
            let run = RubyRun {
                exit_code: Some(i32::from(!class.is_empty())),
                duration_ms: 20 + (i % 500) as u64,
                error: (!class.is_empty()).then(|| RubyError {
                    class_name: class.into(),
                    message: "undefined method".into(),
                    file: "main.rb".into(),
                    line: 7,
                    ..Default::default()
                }),
                ..Default::default()
            };
            ("shim", "ruby_run", Payload::RubyRun(run))
        }
        3 => {
            let log = LabLog {
                experiment: format!("experiment-{}", i % 7),
                log_kind: "click".into(),
                log_type: "log".into(),
                ..Default::default()
            };
            ("lab", "log", Payload::LabLog(log))
        }
        _ => {
            let lms = LmsEvent {
                event_type: LmsEventType::VideoPlay as i32,
                course_slug: course.into(),
                event_data: Some(EventData::Video(VideoData {
                    video_id: format!("video-{}", i % 11),
                    current_time: Some((i % 600) as f64),
                    ..Default::default()
                })),
                ..Default::default()
            };
            ("lms", "video", Payload::LmsEvent(lms))
        }
    };
    Event {
        id: id::new_id(),
        occurred_at: time::from_millis(ms),
        received_at: Some(time::now()),
        source: source.into(),
        kind: kind.into(),
        actor: format!("bench-{learner}"),
        context: Some(Context {
            course: course.into(),
            ..Default::default()
        }),
        payload: Some(payload),
    }
}

/// The broker's own ceiling for the projection, the peer of its end-to-end rate: the same
/// events published the same way into a fresh nats-server, while a consumer in this process
/// pulls them (same batch) and acknowledges each one explicitly, as the projection must, with
/// no other work. Timed from the first publish to the last acknowledgement sent; events/s.
async fn broker_ceiling(args: &Args) -> anyhow::Result<f64> {
    let nats = NatsServer::start();
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "bench-ceiling", true).await?;
    bus.provision(&StreamArgs::default()).await?;
    let consumer = bus
        .jetstream()
        .get_stream(learntrail_proto::subject::EVENTS_STREAM)
        .await?
        .get_or_create_consumer(
            "bench-ceiling",
            pull::Config {
                durable_name: Some("bench-ceiling".into()),
                ack_policy: AckPolicy::Explicit,
                max_ack_pending: -1,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(args.batch)
        .messages()
        .await?;
    let (client, total) = (bus.client().clone(), args.events);
    let started = Instant::now();
    let acking = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            let Some(message) = messages.next().await else {
                anyhow::bail!("the ceiling consumer's stream ended after {acked} events");
            };
            if let Some(reply) = message.map_err(anyhow::Error::msg)?.reply.clone() {
                client.publish(reply, AckKind::Ack.into()).await?;
            }
            acked += 1;
        }
        client.flush().await?;
        Ok::<_, anyhow::Error>(())
    });
    publish(&bus, args).await?;
    acking.await??;
    Ok(args.events as f64 / started.elapsed().as_secs_f64())
}

pub async fn run(bench: &Bench, args: &Args) -> anyhow::Result<()> {
    let ceiling = broker_ceiling(args).await?;
    println!(
        "broker ceiling: {} events published and each pulled and acknowledged with no other work: {ceiling:.0} events/s",
        args.events
    );
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let secret = format!("bench-{}", id::new_id());
    let (http_addr, grpc_addr, ops_addr) = (free_addr(), free_addr(), free_addr());
    let binary = bench.bin_dir.join("analytics-query");
    anyhow::ensure!(
        binary.is_file(),
        "{} not found: run `cargo build --release` first",
        binary.display()
    );
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "bench", true).await?;
    bus.provision(&StreamArgs::default()).await?;
    let service = Service(
        Command::new(&binary)
            .env("HTTP_ADDR", &http_addr)
            .env("GRPC_ADDR", &grpc_addr)
            .env("METRICS_ADDR", &ops_addr)
            .env("JWT_SECRET", &secret)
            .env("NATS_URL", nats.url())
            .env("REDIS_URL", redis.url())
            .env("PROJECTION_BATCH", args.batch.to_string())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let http = reqwest::Client::new();
    let metrics_url = format!("http://{ops_addr}/metrics");
    eventually(Duration::from_secs(30), "analytics-query ready", || async {
        let answer = http
            .get(format!("http://{ops_addr}/readyz"))
            .send()
            .await
            .ok()?;
        answer.status().is_success().then_some(())
    })
    .await;
    println!(
        "== analytics-query ({} events, {} learners, PROJECTION_BATCH={}, {} CPUs; pid {}) ==",
        args.events,
        args.learners,
        args.batch,
        cores(),
        service.0.id()
    );

    // where the projection's CPU goes: each process's user + system seconds over it
    let processes = [
        ("nats-server", pid_on_port(nats.port())),
        ("redis-server", pid_on_port(port_of(&redis.url()))),
        ("analytics-query", Some(service.0.id())),
        ("bench (publisher)", Some(std::process::id())),
    ];
    let cpu_before: Vec<f64> = processes
        .iter()
        .map(|(_, pid)| pid.map_or(0.0, cpu_seconds))
        .collect();
    let started = Instant::now();
    publish(&bus, args).await?;
    let published_in = started.elapsed();
    let target = args.events as f64;
    eventually(
        Duration::from_secs(1_200),
        "every event projected",
        || async { (metric(&http, &metrics_url, PROJECTED).await? >= target).then_some(()) },
    )
    .await;
    let projected_in = started.elapsed();
    let rate = target / projected_in.as_secs_f64();
    let split: Vec<String> = processes
        .iter()
        .zip(&cpu_before)
        .filter_map(|((name, pid), before)| {
            let used = cpu_seconds((*pid)?) - before;
            Some(format!(
                "{name} {used:.1} s ({:.0} µs/event)",
                used * 1e6 / target
            ))
        })
        .collect();
    println!(
        "published in {:.2} s ({:.0}/s); projected end to end in {:.2} s: {rate:.0} events/s",
        published_in.as_secs_f64(),
        target / published_in.as_secs_f64(),
        projected_in.as_secs_f64(),
    );
    println!("  CPU over it: {}", split.join(", "));
    println!(
        "  Redis time by command (commands a script runs counted apart): {}",
        redis_commands(port_of(&redis.url()), target)
    );

    let token = auth::sign(
        secret.as_bytes(),
        &Claims {
            sub: "bench-dashboard".into(),
            role: Role::Service,
            exp: Some(auth::now() + 3_600),
            nbf: None,
            iat: None,
            courses: None,
        },
    );
    let learners = args.learners;
    let summary_path =
        move |i: usize| format!("/api/v1/learners/bench-{}/summary", (i * 7_919) % learners);
    let name = format!("GetLearnerSummary ({} conns)", args.connections);
    load(
        &http_addr,
        &token,
        args.connections,
        Duration::from_secs(1),
        &name,
        summary_path,
    )
    .await;
    // answers from memory (analytics-query's cache) so far, by kind
    let from_memory = |kind: &'static str| {
        let (http, url) = (&http, &metrics_url);
        async move {
            let name = format!("learntrail_analytics_{kind}_total");
            metric(http, url, &name).await.unwrap_or(0.0)
        }
    };
    let before = from_memory("summary_cache_hits").await;
    let summary = load(
        &http_addr,
        &token,
        args.connections,
        bench.duration,
        &name,
        summary_path,
    )
    .await;
    println!("{}", summary.line());
    println!(
        "  answered from memory: {:.0} of {}",
        from_memory("summary_cache_hits").await - before,
        summary.count
    );
    let answers = || from_memory("keen_cache_answers");
    let keen_phase = |name: String, path| {
        let (http_addr, token) = (&http_addr, &token);
        async move {
            let before = answers().await;
            let phase = load(
                http_addr,
                token,
                args.keen_connections,
                bench.duration,
                &name,
                path,
            )
            .await;
            println!("{}", phase.line());
            println!(
                "  answered whole from memory: {:.0} of {}",
                answers().await - before,
                phase.count
            );
            phase
        }
    };
    let conns = args.keen_connections;
    let keen = keen_phase(
        format!("Keen count 7 d hourly group_by ({conns} conns)"),
        keen_count(COUNT_BY_CLASS, "previous_7_days", false),
    )
    .await;
    // every query its own (a filter that drops nothing, a different value each time): no
    // answer is used twice, every one is computed from the hours held in memory
    let distinct = keen_phase(
        format!("Keen count 7 d hourly group_by, every query distinct ({conns} conns)"),
        keen_count(COUNT_BY_CLASS, "previous_7_days", true),
    )
    .await;
    // learners active per day, the usual dashboard tile
    keen_phase(
        format!("Keen count_unique actor 7 d daily ({conns} conns)"),
        keen_count(ACTIVE_PER_DAY, "previous_7_days", false),
    )
    .await;
    // the current 7 days while runs arrive: a query that finds the current hour changed since
    // the last answer reads that hour again and computes its answer again
    let projected_before = metric(&http, &metrics_url, PROJECTED).await.unwrap_or(0.0);
    let stop = CancellationToken::new();
    let arriving = tokio::spawn(arrive(bus.clone(), args.clone(), stop.clone()));
    let live = keen_phase(
        format!(
            "Keen count this 7 d hourly group_by, {} runs/s arriving ({conns} conns)",
            args.live_rate
        ),
        keen_count(COUNT_BY_CLASS, "this_7_days", false),
    )
    .await;
    stop.cancel();
    let arrived = arriving.await??;
    println!(
        "  {arrived} runs arrived during it, {:.0} projected",
        metric(&http, &metrics_url, PROJECTED).await.unwrap_or(0.0) - projected_before,
    );
    println!(
        "targets: projection >= 50000 events/s {} ({rate:.0}/s; the broker alone {ceiling:.0}/s); summary p99 <= 5 ms {} ({:.2} ms); Keen count p99 <= 20 ms {} ({:.2} ms; distinct {} {:.2} ms; live {} {:.2} ms)",
        verdict(rate >= 50_000.0),
        verdict(summary.percentile_ms(0.99) <= 5.0 && summary.errors == 0),
        summary.percentile_ms(0.99),
        keen_verdict(&keen),
        keen.percentile_ms(0.99),
        keen_verdict(&distinct),
        distinct.percentile_ms(0.99),
        keen_verdict(&live),
        live.percentile_ms(0.99),
    );
    drop(service);
    drop(redis);
    Ok(())
}

/// A Keen count of Ruby runs, hourly, grouped by error class (the query).
const COUNT_BY_CLASS: &str =
    "count?event_collection=shim.ruby_run&interval=hourly&group_by=rubyRun.error.className";
/// Learners active per day: a count_unique of `actor`, daily.
const ACTIVE_PER_DAY: &str =
    "count_unique?event_collection=shim.ruby_run&interval=daily&target_property=actor";

/// The commands that took most of Redis's time (`INFO commandstats`), per event of `events`.
fn redis_commands(port: u16, events: f64) -> String {
    let Ok(out) = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
    else {
        return "(redis-cli not found)".into();
    };
    let mut stats = command_stats(&String::from_utf8_lossy(&out.stdout));
    stats.sort_by(|a, b| b.2.total_cmp(&a.2));
    stats
        .iter()
        .take(8)
        .map(|(name, calls, usec)| {
            format!(
                "{name} {:.1} µs/event ({:.2} calls/event)",
                usec / events,
                *calls as f64 / events
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `cmdstat_<name>:calls=N,usec=U,...` lines: (name, calls, usec).
fn command_stats(info: &str) -> Vec<(String, u64, f64)> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
            };
            Some((
                name.to_string(),
                field("calls")?.parse().ok()?,
                field("usec")?.parse().ok()?,
            ))
        })
        .collect()
}

/// The path of Keen query `query` over `timeframe`; `distinct`: with a filter that drops
/// nothing and differs from request to request.
fn keen_count(
    query: &'static str,
    timeframe: &'static str,
    distinct: bool,
) -> impl Fn(usize) -> String + Clone + Send + 'static {
    move |i| {
        let mut path = format!("/3.0/projects/learntrail/queries/{query}&timeframe={timeframe}");
        if distinct {
            // [{"property_name":"context.course","operator":"ne","property_value":"none-<i>"}]
            path.push_str(&format!(
                "&filters=%5B%7B%22property_name%22%3A%22context.course%22%2C%22operator%22\
                 %3A%22ne%22%2C%22property_value%22%3A%22none-{i}%22%7D%5D"
            ));
        }
        path
    }
}

/// A Keen phase against the target: p99 <= 20 ms, no errors.
fn keen_verdict(phase: &Phase) -> &'static str {
    verdict(phase.percentile_ms(0.99) <= 20.0 && phase.errors == 0)
}

/// Publishes Ruby runs that occur now, `live_rate` a second, until `stop`; how many.
async fn arrive(bus: Bus, args: Args, stop: CancellationToken) -> anyhow::Result<u64> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(args.live_rate.max(1)),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u64;
    while !stop.is_cancelled() {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        // event i is a Ruby run when i % 5 < 3; it occurs now
        let i = 5 * sent as usize;
        let mut event = event(i, args.learners, args.events, 0);
        event.occurred_at = Some(time::now());
        let payload = Bytes::from(event.encode_to_vec());
        bus.send(event.subject(), &event.id, payload)
            .await?
            .wait()
            .await?;
        sent += 1;
    }
    Ok(sent)
}

/// Publishes the load from four tasks, each keeping its share of `inflight` acks outstanding.
async fn publish(bus: &Bus, args: &Args) -> anyhow::Result<()> {
    let publishers = 4;
    let now_ms = time::now().seconds * 1_000;
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let (bus, args) = (bus.clone(), args.clone());
        tasks.push(tokio::spawn(async move {
            let mut pending = VecDeque::new();
            for i in (p..args.events).step_by(publishers) {
                let event = event(i, args.learners, args.events, now_ms);
                let payload = Bytes::from(event.encode_to_vec());
                pending.push_back(bus.send(event.subject(), &event.id, payload).await?);
                if pending.len() >= args.inflight / publishers {
                    pending.pop_front().expect("non-empty").wait().await?;
                }
            }
            while let Some(ack) = pending.pop_front() {
                ack.wait().await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// GETs `path(i)` from `connections` keep-alive HTTP/1.1 connections for `duration`; a 200 is
/// one unit done, anything else an error.
async fn load<P>(
    addr: &str,
    token: &str,
    connections: usize,
    duration: Duration,
    name: &str,
    path: P,
) -> Phase
where
    P: Fn(usize) -> String + Clone + Send + 'static,
{
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let handles: Vec<_> = (0..connections)
        .map(|c| {
            let (path, addr, auth) = (path.clone(), addr.to_string(), format!("Bearer {token}"));
            tokio::spawn(async move {
                let mut phase = Phase::new("");
                let mut sender = connect(&addr).await;
                let mut i = c;
                while Instant::now() < deadline {
                    let request = Request::get(path(i))
                        .header("host", "bench")
                        .header("authorization", &auth)
                        .body(Full::new(Bytes::new()))
                        .expect("valid request");
                    let sent = Instant::now();
                    match exchange(&mut sender, request).await {
                        Some((200, _)) => {
                            phase.count += 1;
                            let _ = phase.latency.record(sent.elapsed().as_micros() as u64);
                        }
                        Some((status, body)) => {
                            if phase.errors == 0 && c == 0 {
                                let body = String::from_utf8_lossy(&body);
                                eprintln!("{status} from {}: {body:.300}", path(i));
                            }
                            phase.errors += 1;
                        }
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
