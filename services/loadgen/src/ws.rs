//! ws-gateway benchmark: starts nats-server (JetStream, file storage) and the ws-gateway release
//! binary, then measures
//! 1. connections held open: `--held` authenticated idle sockets and the gateway's resident
//!    memory per socket (VmRSS after minus before, over the count);
//! 2. log messages acked per second from `--connections` sockets, each keeping `--window`
//!    messages in flight (default 1: the next is sent when the last is acked), and the
//!    send-to-ack latency p50/p99;
//!    and prints them against the targets: 20,000 connections at <= 16 KiB each; >= 50,000
//!    acked logs/s with p99 <= 50 ms from 1,000 connections.
//!
//! Both processes hold one descriptor per socket, so `--held` is capped a little under the
//! open-file limit (`ulimit -n`) of this shell; the figure printed says how many were held.

use std::{
    collections::VecDeque,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt, stream};
use learntrail_proto::id;
use learntrail_runtime::auth::{self, Claims, Role};
use learntrail_testkit::{NatsServer, eventually};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async_with_config,
    tungstenite::{Message, client::IntoClientRequest, protocol::WebSocketConfig},
};

use crate::harness::{Service, free_addr};
use crate::{
    Bench,
    report::{Phase, verdict},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Idle sockets to hold open (capped under the open-file limit)
    #[arg(long, default_value_t = 20_000)]
    pub held: usize,
    /// Sockets sending log messages
    #[arg(long, default_value_t = 1_000)]
    pub connections: usize,
    /// Messages each sending socket keeps in flight (sent, not yet acked). 1: each socket waits
    /// for its ack before the next, as a UI does. Latency is the in-flight count over the rate
    /// (Little's law): 2 in flight on 1,000 sockets at 50,000/s is 40 ms at the mean, whatever
    /// the gateway does
    #[arg(long, default_value_t = 1)]
    pub window: usize,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            held: 20_000,
            connections: 1_000,
            window: 1,
        }
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn run(bench: &Bench, args: &Args) -> anyhow::Result<()> {
    // the bench and the gateway (which inherits the limit) each hold a descriptor per socket;
    // raised where this process may (as root), else the figure says how many were held
    let limit = learntrail_runtime::limits::raise_open_file_limit(args.held as u64 + 1_024)
        .unwrap_or(1_024) as usize;
    let nats = NatsServer::start();
    let secret = format!("bench-{}", id::new_id());
    let (http_addr, ops_addr) = (free_addr(), free_addr());
    let binary = bench.bin_dir.join("ws-gateway");
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
            .env("WS_MAX_CONNECTIONS", "100000")
            // the bench measures throughput, not the per-socket limit
            .env("WS_RATE_LIMIT", "100000")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let http = reqwest::Client::new();
    let ready_url = format!("http://{ops_addr}/readyz");
    eventually(Duration::from_secs(30), "ws-gateway ready", || async {
        let answer = http.get(&ready_url).send().await.ok()?;
        answer.status().is_success().then_some(())
    })
    .await;
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
    let url = format!("ws://{http_addr}/ws?token={token}");
    println!(
        "== ws-gateway ({}s per phase, {} CPUs) ==",
        bench.duration.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let held = args.held.min(limit.saturating_sub(200));
    let before = rss_kib(service.0.id());
    let sockets = open(&url, held).await;
    let gauge = format!("http://{ops_addr}/metrics");
    eventually(Duration::from_secs(60), "every socket open", || async {
        let text = http.get(&gauge).send().await.ok()?.text().await.ok()?;
        let open = text
            .lines()
            .find_map(|l| l.strip_prefix("learntrail_ws_connections "))?
            .trim()
            .parse::<f64>()
            .ok()?;
        (open as usize >= sockets.len()).then_some(())
    })
    .await;
    let after = rss_kib(service.0.id());
    let per_socket = (after.saturating_sub(before)) as f64 / sockets.len().max(1) as f64;
    println!(
        "held open: {} idle sockets (asked {}, open-file limit {limit}); gateway RSS {:.1} MiB -> {:.1} MiB: {per_socket:.1} KiB per socket",
        sockets.len(),
        args.held,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
    );
    let held_count = sockets.len();
    drop(sockets);

    let logs = send_logs(&url, args, bench.duration).await;
    println!("{}", logs.line());
    println!(
        "targets: 20,000 connections {} ({held_count} held); <= 16 KiB each {} ({per_socket:.1} KiB); >= 50,000 acked logs/s {} ({:.0}/s); p99 <= 50 ms {} ({:.2} ms)",
        verdict(held_count >= 20_000),
        verdict(per_socket <= 16.0),
        verdict(logs.rate() >= 50_000.0),
        logs.rate(),
        verdict(logs.percentile_ms(0.99) <= 50.0),
        logs.percentile_ms(0.99),
    );
    Ok(())
}

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

async fn connect(url: &str) -> anyhow::Result<Socket> {
    let request = url.into_client_request()?;
    let (socket, _) = connect_async_with_config(request, Some(client_config()), true).await?;
    Ok(socket)
}

/// `count` sockets, 256 handshakes at a time; the ones that failed are left out.
async fn open(url: &str, count: usize) -> Vec<Socket> {
    stream::iter(0..count)
        .map(|_| connect(url))
        .buffer_unordered(256)
        .filter_map(|socket| async move { socket.ok() })
        .collect()
        .await
}

/// Every socket sends click logs, keeping `window` in flight, until `duration` is over.
async fn send_logs(url: &str, args: &Args, duration: Duration) -> Phase {
    let sockets = open(url, args.connections).await;
    let opened = sockets.len();
    let started = Instant::now();
    let deadline = started + duration;
    let handles: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(c, socket)| tokio::spawn(drive(socket, c, args.window.max(1), deadline)))
        .collect();
    let mut phase = Phase::new(&format!(
        "acked logs ({opened} sockets, window {})",
        args.window
    ));
    for handle in handles {
        if let Ok(part) = handle.await {
            phase.merge(&part);
        }
    }
    phase.elapsed = started.elapsed();
    phase
}

async fn drive(mut socket: Socket, c: usize, window: usize, deadline: Instant) -> Phase {
    let mut phase = Phase::new("");
    let mut in_flight: VecDeque<Instant> = VecDeque::new();
    let mut i = 0u64;
    loop {
        let now = Instant::now();
        if now < deadline {
            while in_flight.len() < window {
                // written, not built as a JSON tree: the client's CPU is the gateway's too here
                let message = format!(
                    r#"{{"id":"{c}-{i}","user":"bench-learner","t":{t},"exp":"spinner","hardware":"spin30","course":"engdes1","type":"log","payload":{{"log":"click","data":{{"target":"run-voltage-step","screen_pos":{{"x":411,"y":212}}}}}}}}"#,
                    t = 1_700_000_000_000u64 + i
                );
                if socket.feed(Message::text(message)).await.is_err() {
                    phase.errors += 1;
                    return phase;
                }
                in_flight.push_back(Instant::now());
                i += 1;
            }
            if socket.flush().await.is_err() {
                phase.errors += 1;
                return phase;
            }
        } else if in_flight.is_empty() {
            let _ = socket.close(None).await;
            return phase;
        }
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let sent = in_flight.pop_front().unwrap_or(now);
                if text.as_str().starts_with("{\"ack\"") {
                    phase.count += 1;
                    let micros = sent.elapsed().as_micros() as u64;
                    let _ = phase.latency.record(micros.max(1));
                } else {
                    phase.errors += 1;
                }
            }
            Some(Ok(_)) => {}
            _ => {
                phase.errors += in_flight.len() as u64;
                return phase;
            }
        }
    }
}

/// Resident memory of a process in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
