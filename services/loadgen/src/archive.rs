//! s3-rotator benchmark: starts nats-server, Garage (S3) and the s3-rotator release binary,
//! publishes `events` events as fast as JetStream takes them, and measures from the first
//! publish until the rotator reports every event archived (object stored, messages acked):
//! events/s end to end and compressed MB/s to S3. Target: >= 50,000 events/s.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use learntrail_proto::{Event, Message, Payload, id, time, v1::LmsEvent};
use learntrail_runtime::bus::{Bus, NatsArgs, StreamArgs};
use learntrail_testkit::{GarageServer, NatsServer, eventually, garage};

use crate::harness::{Service, metric};
use crate::{Bench, report::verdict};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Events to archive
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
}

impl Default for Args {
    fn default() -> Self {
        Self { events: 1_000_000 }
    }
}

pub async fn run(bench: &Bench, args: &Args) -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let s3 = GarageServer::start();
    s3.create_bucket("bench");
    let segments = tempfile::Builder::new()
        .prefix("lt-bench-rotator-")
        .tempdir()?;
    let ops = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let binary = bench.bin_dir.join("s3-rotator");
    anyhow::ensure!(
        binary.is_file(),
        "{} not found: run `cargo build --release` first",
        binary.display()
    );
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "bench", true).await?;
    bus.provision(&StreamArgs::default()).await?;
    let _rotator = Service(
        Command::new(&binary)
            .env("NATS_URL", nats.url())
            .env("METRICS_ADDR", ops.to_string())
            .env("SEGMENT_DIR", segments.path())
            .env("S3_BUCKET", "bench")
            .env("S3_ENDPOINT", s3.endpoint())
            .env("S3_REGION", garage::REGION)
            .env("S3_PATH_STYLE", "true")
            .env("AWS_ACCESS_KEY_ID", garage::ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", garage::SECRET_ACCESS_KEY)
            .env("ROTATE_INTERVAL", "2s")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let http = reqwest::Client::new();
    let metrics_url = format!("http://{ops}/metrics");
    let archived_name = "learntrail_archive_events_archived_total";
    eventually(Duration::from_secs(30), "s3-rotator up", || async {
        metric(&http, &metrics_url, archived_name).await.map(|_| ())
    })
    .await;

    let payload = move |i: usize| {
        let event = Event {
            id: id::new_id(),
            occurred_at: Some(time::now()),
            received_at: Some(time::now()),
            source: "lms".into(),
            kind: "video".into(),
            actor: format!("learner-{}", i % 500),
            payload: Some(Payload::LmsEvent(LmsEvent {
                course_slug: "ruby-101".into(),
                unit_id: format!("unit-{}", i % 40),
                ..Default::default()
            })),
            ..Default::default()
        };
        (event.id.clone(), Bytes::from(event.encode_to_vec()))
    };
    let started = Instant::now();
    let publishers = 4;
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let bus = bus.clone();
        let share = (p..args.events).step_by(publishers).collect::<Vec<_>>();
        tasks.push(tokio::spawn(async move {
            let mut pending = std::collections::VecDeque::new();
            for i in share {
                let (event_id, bytes) = payload(i);
                pending.push_back(
                    bus.send("events.lms.video".into(), &event_id, bytes)
                        .await?,
                );
                if pending.len() >= 512 {
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
    let published_in = started.elapsed();
    let target = args.events as f64;
    eventually(Duration::from_secs(600), "every event archived", || async {
        (metric(&http, &metrics_url, archived_name).await? >= target).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    let bytes = metric(
        &http,
        &metrics_url,
        "learntrail_archive_bytes_uploaded_total",
    )
    .await
    .unwrap_or(0.0);
    let objects = metric(
        &http,
        &metrics_url,
        "learntrail_archive_objects_uploaded_total",
    )
    .await
    .unwrap_or(0.0);
    let rate = target / elapsed.as_secs_f64();
    println!(
        "== s3-rotator ({} events, Garage S3, ROTATE_INTERVAL=2s) ==",
        args.events
    );
    println!(
        "published in {:.2} s ({:.0}/s)",
        published_in.as_secs_f64(),
        target / published_in.as_secs_f64()
    );
    println!(
        "archived end to end in {:.2} s: {:.0} events/s; {:.1} MB gzip in {} objects = {:.2} MB/s to S3",
        elapsed.as_secs_f64(),
        rate,
        bytes / 1e6,
        objects,
        bytes / 1e6 / elapsed.as_secs_f64()
    );
    println!(
        "targets: >= 50000 events/s archived {} ({rate:.0}/s)",
        verdict(rate >= 50_000.0)
    );
    Ok(())
}
