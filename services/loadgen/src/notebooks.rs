//! notebook-scanner benchmark: generates `notebooks` real nbformat v4 notebooks with nbgrader
//! metadata (about `notebook_kib` each, an image output making up the bulk, as plots do) for 100
//! learners, starts nats-server and the notebook-scanner release binary, and measures
//! - the first scan: from start until every notebook's event is acknowledged (MB/s, files/s);
//!   the files were just written, so they are in the page cache: a cold-cache scan is slower;
//! - a rescan with nothing changed: the scan time of a restarted scanner (and that it reports
//!   nothing);
//! - save-to-event latency: one notebook saved at a time, from the write until the scanner counts
//!   its event acknowledged by JetStream (polled every 2 ms), p50/p99 over `saves` saves.
//!
//! Targets on a 2-core machine: first scan >= 200 MB/s, rescan <= 1 s, save-to-event p99 <= 1 s.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use learntrail_testkit::{NatsServer, eventually};

use crate::harness::{Service, metric};
use crate::{
    Bench,
    report::{Phase, verdict},
};

const LEARNERS: usize = 100;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Notebooks to generate (spread over 100 learners)
    #[arg(long, default_value_t = 10_000)]
    pub notebooks: usize,
    /// Approximate size of each notebook in KiB
    #[arg(long, default_value_t = 100)]
    pub notebook_kib: usize,
    /// Saves timed for the save-to-event latency
    #[arg(long, default_value_t = 200)]
    pub saves: usize,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            notebooks: 10_000,
            notebook_kib: 100,
            saves: 200,
        }
    }
}

/// One notebook: a solution cell, a passing test, and an image output of `kib` KiB; `salt`
/// makes every file's content different.
fn notebook(salt: usize, version: usize, kib: usize) -> Vec<u8> {
    let image: String = (0..kib * 1024)
        .map(|i| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                [(i * 7 + salt + version) % 64] as char
        })
        .collect();
    let nb = serde_json::json!({
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [
            {"cell_type": "code", "id": "answer", "execution_count": 1, "outputs": [],
             "metadata": {"nbgrader": {"schema_version": 3, "grade": false, "solution": true,
                                       "locked": false, "grade_id": "squares"}},
             "source": format!("def squares(n):\n    return [i * i for i in range(1, n + 1)]  # {salt} v{version}\n")},
            {"cell_type": "code", "id": "test", "execution_count": 2,
             "metadata": {"nbgrader": {"schema_version": 3, "grade": true, "solution": false,
                                       "locked": true, "grade_id": "correct_squares", "points": 2}},
             "source": "assert squares(3) == [1, 4, 9]\nprint('ok')",
             "outputs": [{"output_type": "stream", "name": "stdout", "text": ["ok\n"]}]},
            {"cell_type": "code", "id": "plot", "execution_count": 3, "metadata": {},
             "source": "plot(squares(10))",
             "outputs": [{"output_type": "display_data", "metadata": {},
                          "data": {"image/png": image, "text/plain": ["<Figure>"]}}]}
        ]
    });
    serde_json::to_vec(&nb).expect("json")
}

fn start(binary: &Path, nats: &NatsServer, root: &Path, ops: &str) -> anyhow::Result<Service> {
    Ok(Service(
        Command::new(binary)
            .env("NATS_URL", nats.url())
            .env("METRICS_ADDR", ops)
            .env("USERS_CSV", root.join("users.csv"))
            .env("SNAPSHOT_DIR", root.join("snapshots"))
            .env("SCAN_INTERVAL", "1h")
            .env("PSEUDONYM_KEY", "bench")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    ))
}

pub async fn run(bench: &Bench, args: &Args) -> anyhow::Result<()> {
    let binary = bench.bin_dir.join("notebook-scanner");
    anyhow::ensure!(
        binary.is_file(),
        "{} not found: run `cargo build --release` first",
        binary.display()
    );
    let root = tempfile::Builder::new()
        .prefix("lt-bench-notebooks-")
        .tempdir()?;
    let mut csv = String::from("uid,notebooks\n");
    let mut total_bytes = 0u64;
    for learner in 0..LEARNERS {
        csv.push_str(&format!("learner{learner},homes/learner{learner}\n"));
    }
    for i in 0..args.notebooks {
        let dir = root.path().join(format!(
            "homes/learner{}/ps{}",
            i % LEARNERS,
            i / LEARNERS % 10
        ));
        std::fs::create_dir_all(&dir)?;
        let bytes = notebook(i, 0, args.notebook_kib);
        total_bytes += bytes.len() as u64;
        std::fs::write(dir.join(format!("problem{i}.ipynb")), bytes)?;
    }
    std::fs::write(root.path().join("users.csv"), csv)?;
    let mb = total_bytes as f64 / 1e6;
    println!(
        "notebook-scanner: {} notebooks, {mb:.0} MB, {LEARNERS} learners",
        args.notebooks
    );

    let nats = NatsServer::start();
    let ops = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let metrics_url = format!("http://{ops}/metrics");
    let http = reqwest::Client::new();
    let events_name = "learntrail_notebook_snapshot_events_total";
    let scans_name = "learntrail_notebook_scan_seconds_count";
    let started = Instant::now();
    let scanner = start(&binary, &nats, root.path(), &ops.to_string())?;
    let target = args.notebooks as f64;
    eventually(
        Duration::from_secs(1800),
        "every notebook reported",
        || async { (metric(&http, &metrics_url, events_name).await? >= target).then_some(()) },
    )
    .await;
    let first = started.elapsed().as_secs_f64();
    let rate = mb / first;
    println!(
        "  first scan {first:>7.2} s   {rate:>7.0} MB/s   {:>7.0} files/s   target >= 200 MB/s: {}",
        target / first,
        verdict(rate >= 200.0)
    );

    drop(scanner);
    let scanner = start(&binary, &nats, root.path(), &ops.to_string())?;
    eventually(Duration::from_secs(120), "the rescan done", || async {
        (metric(&http, &metrics_url, scans_name).await? >= 1.0).then_some(())
    })
    .await;
    let rescan = metric(&http, &metrics_url, "learntrail_notebook_scan_seconds_sum")
        .await
        .unwrap_or(f64::NAN);
    let reported = metric(&http, &metrics_url, events_name)
        .await
        .unwrap_or(0.0);
    println!(
        "  rescan, nothing changed {rescan:>7.3} s   events {reported}   target <= 1 s: {}",
        verdict(rescan <= 1.0 && reported == 0.0)
    );

    let mut phase = Phase::new("save to event");
    let phase_started = Instant::now();
    for save in 0..args.saves {
        let i = save * 7919 % args.notebooks;
        let path = root.path().join(format!(
            "homes/learner{}/ps{}/problem{i}.ipynb",
            i % LEARNERS,
            i / LEARNERS % 10
        ));
        let bytes = notebook(i, save + 1, args.notebook_kib);
        let before = metric(&http, &metrics_url, events_name)
            .await
            .unwrap_or(0.0);
        let saved = Instant::now();
        std::fs::write(&path, bytes)?;
        let reported = async {
            loop {
                if metric(&http, &metrics_url, events_name)
                    .await
                    .unwrap_or(0.0)
                    > before
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), reported).await {
            Ok(()) => {
                phase.count += 1;
                phase
                    .latency
                    .record(saved.elapsed().as_micros().max(1) as u64)?;
            }
            Err(_) => phase.errors += 1,
        }
    }
    phase.elapsed = phase_started.elapsed();
    println!("  {}", phase.line());
    println!(
        "  save-to-event p99 {:.1} ms   target <= 1000 ms: {}",
        phase.percentile_ms(0.99),
        verdict(phase.errors == 0 && phase.percentile_ms(0.99) <= 1000.0)
    );
    drop(scanner);
    Ok(())
}
