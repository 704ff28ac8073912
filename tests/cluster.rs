//! Past one machine (`make test-cluster`): a 3-node NATS JetStream cluster on loopback, the
//! streams with 3 replicas, two tracking-api replicas and s3-rotator against it. A stream of
//! events is sent while the node leading EVENTS is killed (SIGKILL) and restarted; every event
//! tracking-api accepted must be in the archive exactly once.
//!
//! One s3-rotator, not two: replicas of it on one durable consumer are not safe (each keeps its
//! own record of what it archived, so a redelivery to the other replica would be archived again;
//! see `ROTATOR_CONSUMER`). It is run under a supervisor that restarts it if it exits, as
//! Kubernetes would.

use std::{
    collections::{HashMap, HashSet},
    io::Read,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use flate2::read::GzDecoder;
use learntrail_proto::{Event, id};
use learntrail_runtime::{
    CancellationToken,
    auth::{self, Claims},
    bus::{Bus, NatsArgs, StreamArgs},
};
use learntrail_testkit::{NatsCluster, eventually};
use tokio::net::TcpListener;

const EVENTS: usize = 3000;
const SENDERS: usize = 12;
const SECRET: &str = "cluster-secret-cluster-secret-cluster";

#[derive(Default)]
struct Tally {
    accepted: Mutex<Vec<String>>,
    retries: AtomicUsize,
    gave_up: Mutex<Vec<String>>,
}

async fn start_tracking_api(urls: &str, token: &CancellationToken) -> String {
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", api.local_addr().unwrap());
    let config = learntrail_tracking_api::Config::parse_from([
        "tracking-api",
        "--jwt-secret",
        SECRET,
        "--nats-url",
        urls,
        "--stream-replicas",
        "3",
    ]);
    tokio::spawn(learntrail_tracking_api::serve(
        config,
        api,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        token.clone(),
    ));
    url
}

/// s3-rotator to a local archive, restarted whenever it exits (as an orchestrator would).
fn start_rotator(urls: &str, work: &Path, token: &CancellationToken) -> Arc<AtomicUsize> {
    let restarts = Arc::new(AtomicUsize::new(0));
    let config = learntrail_s3_rotator::Config::parse_from([
        "s3-rotator",
        "--nats-url",
        urls,
        "--stream-replicas",
        "3",
        "--segment-dir",
        &work.join("segments").display().to_string(),
        "--archive-dir",
        &work.join("archive").display().to_string(),
        "--rotate-interval",
        "1s",
        // A delivery in flight when its node dies is lost on the way, and the consumer's new
        // leader sends it again only after the ack wait (by default the rotation interval +
        // 15 min). A short one brings it back within the test; redeliveries of events already
        // in a segment are ignored, so it cannot double one.
        "--ack-wait",
        "5s",
    ]);
    let (token, count) = (token.clone(), restarts.clone());
    tokio::spawn(async move {
        let store = learntrail_s3_rotator::store::Store::from_args(&config.store).unwrap();
        loop {
            let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let outcome =
                learntrail_s3_rotator::serve(config.clone(), store.clone(), ops, token.clone())
                    .await;
            if token.is_cancelled() {
                break;
            }
            eprintln!("s3-rotator exited ({outcome:?}); restarting");
            count.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    restarts
}

/// Posts one event until an API accepts it (retrying 503/408 and connection errors with the
/// same id, alternating between the replicas, as a client behind a load balancer would).
async fn send(client: &reqwest::Client, apis: &[String], bearer: &str, n: usize, tally: &Tally) {
    let event_id = id::new_id();
    let body = serde_json::json!({
        "id": event_id, "tracking_event_type": "video_play", "node_id": format!("unit-{}", n % 50),
        "course_slug": "ruby-101", "event_data": {"video_id": "intro", "current_time": n}
    });
    for attempt in 0..60 {
        let api = &apis[(n + attempt) % apis.len()];
        let answer = client
            .post(format!("{api}/api/tracking"))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await;
        match answer.map(|a| a.status().as_u16()) {
            Ok(202) => {
                tally.accepted.lock().unwrap().push(event_id);
                return;
            }
            Ok(status) if status != 503 && status != 408 => panic!("HTTP {status} for {body}"),
            _ => {
                tally.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    tally.gave_up.lock().unwrap().push(event_id);
}

/// Every event id in the archive's objects, with how often it occurs.
fn archived(dir: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".ndjson.gz")
                && !entry.file_name().to_string_lossy().starts_with(".tmp-")
            {
                // (`.tmp-*` files are objects being written: linked into place, then removed)
                let mut text = String::new();
                let file = std::fs::File::open(&path).unwrap();
                GzDecoder::new(file).read_to_string(&mut text).unwrap();
                for line in text.lines() {
                    let event = Event::from_json(line).expect("an archived event");
                    *counts.entry(event.id).or_insert(0) += 1;
                }
            }
        }
    }
    counts
}

/// Where the s3-rotator's consumer stands.
async fn rotator_consumer(bus: &Bus) -> Option<async_nats::jetstream::consumer::Info> {
    let stream = bus.jetstream().get_stream("EVENTS").await.ok()?;
    let mut consumer = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("s3-rotator")
        .await
        .ok()?;
    consumer.info().await.ok().cloned()
}

/// Waits until every accepted event is in the archive and returns the archive's counts; after a
/// minute, fails naming how many are missing and where the rotator's consumer stands.
async fn all_archived(
    bus: &Bus,
    archive: &Path,
    accepted: &HashSet<String>,
    restarts: &AtomicUsize,
) -> HashMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = archived(archive);
        let missing = accepted
            .iter()
            .filter(|id| !counts.contains_key(*id))
            .count();
        if missing == 0 {
            return counts;
        }
        if Instant::now() >= deadline {
            let consumer = rotator_consumer(bus).await.map(|info| {
                format!(
                    "{} waiting to be delivered, {} delivered and not acknowledged, {} redelivered, \
                     leader {:?}",
                    info.num_pending,
                    info.num_ack_pending,
                    info.num_redelivered,
                    info.cluster.as_ref().and_then(|c| c.leader.clone()),
                )
            });
            panic!(
                "after 60 s, {missing} of {} accepted events are not archived; the s3-rotator \
                 consumer: {}; s3-rotator restarts {}",
                accepted.len(),
                consumer.as_deref().unwrap_or("no answer"),
                restarts.load(Ordering::Relaxed),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_nats_node_loses_and_doubles_no_archived_event() {
    let started = Instant::now();
    let mut cluster = NatsCluster::start(3);
    let urls = cluster.urls();
    let work = tempfile::tempdir().unwrap();

    // the stream Job: learntrail-admin provision with STREAM_REPLICAS=3
    let bus = Bus::connect(&NatsArgs::with_url(&urls), "cluster-test", true)
        .await
        .unwrap();
    let streams = StreamArgs {
        stream_replicas: 3,
        ..StreamArgs::default()
    };
    eventually(Duration::from_secs(30), "streams provisioned", || async {
        bus.provision(&streams).await.ok()
    })
    .await;
    let info = bus
        .jetstream()
        .get_stream("EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3);

    let token = CancellationToken::new();
    let apis = vec![
        start_tracking_api(&urls, &token).await,
        start_tracking_api(&urls, &token).await,
    ];
    let restarts = start_rotator(&urls, work.path(), &token);
    let bearer = auth::sign(
        SECRET.as_bytes(),
        // from JSON, so the claims' optional fields need no listing here
        &serde_json::from_value::<Claims>(serde_json::json!({
            "sub": "learner-c", "role": "student", "exp": auth::now() + 3600
        }))
        .unwrap(),
    );

    // a steady stream of events from several senders (about 300 a second)
    let tally = Arc::new(Tally::default());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (client, apis, bearer, tally) =
            (client.clone(), apis.clone(), bearer.clone(), tally.clone());
        senders.push(tokio::spawn(async move {
            for n in (s..EVENTS).step_by(SENDERS) {
                send(&client, &apis, &bearer, n, &tally).await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }));
    }

    // a third of the way in, kill the node that leads EVENTS; bring it back 6 s later
    eventually(
        Duration::from_secs(60),
        "a third of the events sent",
        || async { (tally.accepted.lock().unwrap().len() >= EVENTS / 3).then_some(()) },
    )
    .await;
    let leader = eventually(Duration::from_secs(30), "the EVENTS leader", || async {
        let mut stream = bus.jetstream().get_stream("EVENTS").await.ok()?;
        stream.info().await.ok()?.cluster.clone()?.leader
    })
    .await;
    let victim = cluster.index_of(&leader).expect("leader is a node");
    let accepted_at_kill = tally.accepted.lock().unwrap().len();
    let killed_at = started.elapsed();
    tokio::task::block_in_place(|| cluster.kill(victim));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let accepted_while_down = tally.accepted.lock().unwrap().len() - accepted_at_kill;
    tokio::task::block_in_place(|| cluster.restart(victim));
    let restarted_at = started.elapsed();
    for sender in senders {
        sender.await.unwrap();
    }
    let sent_in = started.elapsed();

    // every accepted event reaches the archive once
    let accepted: HashSet<String> = tally.accepted.lock().unwrap().iter().cloned().collect();
    let gave_up = tally.gave_up.lock().unwrap().clone();
    assert!(gave_up.is_empty(), "events never accepted: {gave_up:?}");
    assert_eq!(accepted.len(), EVENTS, "every event was accepted once");
    let counts = all_archived(&bus, &work.path().join("archive"), &accepted, &restarts).await;
    let archived_in = started.elapsed();
    // a little longer, so a late double would show
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = {
        let later = archived(&work.path().join("archive"));
        assert!(later.len() >= counts.len());
        later
    };
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let unknown: Vec<_> = counts.keys().filter(|id| !accepted.contains(*id)).collect();
    let stored = bus
        .jetstream()
        .get_stream("EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    let new_leader = bus
        .jetstream()
        .get_stream("EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .unwrap_or_default();
    println!(
        "test-cluster: 3 nodes, streams R3; {EVENTS} events from {SENDERS} senders to 2 tracking-api \
         replicas; EVENTS leader {leader} killed at {killed_at:.1?} (after {accepted_at_kill} accepted), \
         {accepted_while_down} accepted while it was down, restarted at {restarted_at:.1?}, leader now \
         {new_leader}; {} client retries (503/timeouts), all sent by {sent_in:.1?}; \
         accepted {}, stored in EVENTS {stored}, archived {} distinct, doubled {}, lost {}, unknown {}; \
         s3-rotator restarts {}; archive complete at {archived_in:.1?}",
        tally.retries.load(Ordering::Relaxed),
        accepted.len(),
        counts.len(),
        doubled.len(),
        accepted
            .iter()
            .filter(|id| !counts.contains_key(*id))
            .count(),
        unknown.len(),
        restarts.load(Ordering::Relaxed),
    );
    assert!(doubled.is_empty(), "archived more than once: {doubled:?}");
    assert!(
        unknown.is_empty(),
        "archived but never accepted: {unknown:?}"
    );
    assert_eq!(counts.len(), EVENTS);
    assert_eq!(stored as usize, EVENTS, "the stream stored each event once");
    token.cancel();
}
