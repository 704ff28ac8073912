use std::{collections::HashMap, io::Read, time::Duration};

use clap::Parser;
use flate2::read::GzDecoder;
use learntrail_proto::{
    Event, Payload, id, time,
    v1::{LabLog, LmsEvent, RubyRun},
};
use learntrail_runtime::{
    CancellationToken,
    bus::{Bus, NatsArgs, StreamArgs},
};
use learntrail_s3_rotator::{Config, serve, store::Store};
use learntrail_testkit::{GarageServer, NatsServer};
use tokio::net::TcpListener;

pub const BUCKET: &str = "archive";

/// Events over three sources whose source clocks span several hours and days.
pub fn events(n: usize) -> Vec<Event> {
    let occurred = [
        "2026-11-22T08:15:00Z",
        "2026-11-23T23:59:59Z",
        "2026-11-24T03:00:00Z",
    ];
    (0..n)
        .map(|i| {
            let (source, kind, payload) = match i % 3 {
                0 => (
                    "lms",
                    "video",
                    Payload::LmsEvent(LmsEvent {
                        course_slug: format!("c{i}"),
                        ..Default::default()
                    }),
                ),
                1 => (
                    "shim",
                    "ruby_run",
                    Payload::RubyRun(RubyRun {
                        argv: vec!["ruby".into(), format!("{i}.rb")],
                        ..Default::default()
                    }),
                ),
                _ => (
                    "lab",
                    "log",
                    Payload::LabLog(LabLog {
                        experiment: "spinner".into(),
                        log_kind: format!("click-{i}"),
                        ..Default::default()
                    }),
                ),
            };
            Event {
                id: id::new_id(),
                occurred_at: time::parse_rfc3339(occurred[i % 3]),
                source: source.into(),
                kind: kind.into(),
                actor: format!("learner-{}", i % 7),
                payload: Some(payload),
                ..Default::default()
            }
        })
        .collect()
}

pub async fn bus(nats: &NatsServer) -> Bus {
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "test", true)
        .await
        .unwrap();
    bus.provision(&StreamArgs::default()).await.unwrap();
    bus
}

pub async fn publish(bus: &Bus, events: &[Event]) {
    for result in bus.publish_many(events).await {
        result.unwrap();
    }
}

pub fn garage() -> GarageServer {
    let garage = GarageServer::start();
    garage.create_bucket(BUCKET);
    garage
}

/// Flags for a rotator against `nats`, S3 on `garage` (or the local directory when `None`).
pub fn flags(
    nats: &NatsServer,
    garage: Option<&GarageServer>,
    segment_dir: &std::path::Path,
    archive_dir: &std::path::Path,
) -> Vec<String> {
    let mut flags: Vec<String> = [
        "s3-rotator",
        "--nats-url",
        &nats.url(),
        "--segment-dir",
        &segment_dir.display().to_string(),
        "--archive-dir",
        &archive_dir.display().to_string(),
        "--rotate-interval",
        "1s",
        "--metrics-addr",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(garage) = garage {
        for (flag, value) in [
            ("--s3-bucket", BUCKET.to_string()),
            ("--s3-endpoint", garage.endpoint()),
            (
                "--s3-region",
                learntrail_testkit::garage::REGION.to_string(),
            ),
            (
                "--aws-access-key-id",
                learntrail_testkit::garage::ACCESS_KEY_ID.to_string(),
            ),
            (
                "--aws-secret-access-key",
                learntrail_testkit::garage::SECRET_ACCESS_KEY.to_string(),
            ),
        ] {
            flags.push(flag.into());
            flags.push(value);
        }
        flags.push("--s3-path-style".into());
    }
    flags
}

/// [`flags`] for a local archive in `dir` whose segments stay open within a test (a rotation
/// interval of an hour): only a shutdown, the size limit or the pending limit seals them.
pub fn held_open_flags(nats: &NatsServer, dir: &std::path::Path) -> Vec<String> {
    let mut flags = flags(nats, None, &dir.join("segments"), &dir.join("archive"));
    let at = flags.iter().position(|f| f == "--rotate-interval").unwrap();
    flags[at + 1] = "1h".into();
    flags
}

pub struct Rotator {
    pub token: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub ops: String,
}

pub async fn start(flags: &[String]) -> Rotator {
    start_config(Config::parse_from(flags)).await
}

/// Starts a rotator with a configuration the test has adjusted (faults, say).
pub async fn start_config(config: Config) -> Rotator {
    let store = Store::from_args(&config.store).unwrap();
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_url = format!("http://{}", ops.local_addr().unwrap());
    let token = CancellationToken::new();
    let task = tokio::spawn(serve(config, store, ops, token.clone()));
    Rotator {
        token,
        task,
        ops: ops_url,
    }
}

impl Rotator {
    pub async fn stop(self) {
        self.token.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// A NATS server, a started rotator that archives to a local directory, and a bus.
pub struct LocalRig {
    pub nats: NatsServer,
    pub dirs: tempfile::TempDir,
    pub flags: Vec<String>,
    pub bus: Bus,
    pub rotator: Rotator,
}

pub async fn local_rig() -> LocalRig {
    let nats = NatsServer::start();
    let dirs = tempfile::tempdir().unwrap();
    let flags = flags(
        &nats,
        None,
        &dirs.path().join("segments"),
        &dirs.path().join("archive"),
    );
    let bus = bus(&nats).await;
    let rotator = start(&flags).await;
    LocalRig {
        nats,
        dirs,
        flags,
        bus,
        rotator,
    }
}

/// The archiver's consumer as JetStream sees it (None while it does not answer).
pub async fn consumer_info(bus: &Bus) -> Option<async_nats::jetstream::consumer::Info> {
    bus.jetstream()
        .get_stream(learntrail_proto::subject::EVENTS_STREAM)
        .await
        .ok()?
        .consumer_info("s3-rotator")
        .await
        .ok()
}

pub fn store(flags: &[String]) -> Store {
    Store::from_args(&Config::parse_from(flags).store).unwrap()
}

/// Every archived event, by object key.
pub async fn archived(store: &Store) -> HashMap<String, Vec<Event>> {
    let mut objects = HashMap::new();
    for key in store.list("events/").await.unwrap() {
        let body = store.get(&key).await.unwrap();
        let mut text = String::new();
        GzDecoder::new(body.as_slice())
            .read_to_string(&mut text)
            .unwrap();
        let events = text
            .lines()
            .map(|l| Event::from_json(l).expect("each line is an event"))
            .collect();
        objects.insert(key, events);
    }
    objects
}

/// Waits until the archive holds `n` events (or panics), and returns them by key.
pub async fn wait_archived(store: &Store, n: usize) -> HashMap<String, Vec<Event>> {
    learntrail_testkit::eventually(
        Duration::from_secs(60),
        &format!("{n} events archived"),
        || async {
            let objects = archived_quietly(store).await?;
            (objects.values().map(Vec::len).sum::<usize>() >= n).then_some(objects)
        },
    )
    .await
}

async fn archived_quietly(store: &Store) -> Option<HashMap<String, Vec<Event>>> {
    let keys = store.list("events/").await.ok()?;
    let mut objects = HashMap::new();
    for key in keys {
        let body = store.get(&key).await.ok()?;
        let mut text = String::new();
        GzDecoder::new(body.as_slice())
            .read_to_string(&mut text)
            .ok()?;
        objects.insert(
            key,
            text.lines()
                .filter_map(|l| Event::from_json(l).ok())
                .collect(),
        );
    }
    Some(objects)
}

pub async fn metric(ops: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// The HTTP status of `/readyz`.
pub async fn readyz(ops: &str) -> u16 {
    reqwest::get(format!("{ops}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Waits until nothing more can reach the archive: the consumer has no message pending or
/// unacknowledged, the rotator has handled every delivery the server made (redeliveries
/// included; `earlier` counts deliveries to an earlier run), and no event waits in a segment.
/// A duplicate the rotator would write is in the archive by then.
pub async fn settled(bus: &Bus, ops: &str, earlier: u64) {
    learntrail_testkit::eventually(
        Duration::from_secs(60),
        "every delivery handled and every event archived and acknowledged",
        || async {
            let info = consumer_info(bus).await?;
            let handled = metric(ops, "learntrail_archive_deliveries_total").await as u64;
            let waiting = metric(ops, "learntrail_archive_events_pending").await;
            (info.num_ack_pending == 0
                && info.num_pending == 0
                && handled + earlier == info.delivered.consumer_sequence
                && waiting == 0.0)
                .then_some(())
        },
    )
    .await;
}

/// Objects seen earlier are still there with the same events (none replaced).
pub fn assert_none_replaced(
    before: &HashMap<String, Vec<Event>>,
    after: &HashMap<String, Vec<Event>>,
) {
    for (key, events) in before {
        assert_eq!(after.get(key), Some(events), "{key} was replaced");
    }
}
