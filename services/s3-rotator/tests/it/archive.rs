use std::{
    collections::{HashMap, HashSet},
    process::{Command, Stdio},
    time::Duration,
};

use learntrail_proto::{Event, subject, time};
use learntrail_s3_rotator::replay;
use learntrail_testkit::{NatsServer, eventually, stream_events};

use crate::helpers::*;

/// Every event exactly once, equal to what was published, in the object of its source and
/// receipt hour.
pub fn assert_archived_once(objects: &HashMap<String, Vec<Event>>, published: &[Event]) {
    let mut seen = HashSet::new();
    for (key, events) in objects {
        assert!(!events.is_empty(), "{key} is empty");
        for event in events {
            assert!(seen.insert(event.id.clone()), "{} archived twice", event.id);
            let received =
                time::to_datetime(event.received_at.as_ref().expect("receipt clock kept")).unwrap();
            let expected_prefix = format!(
                "events/source={}/dt={}/hour={}/",
                event.source,
                received.format("%Y-%m-%d"),
                received.format("%H")
            );
            assert!(
                key.starts_with(&expected_prefix),
                "{key} holds an event received {received} from {}",
                event.source
            );
            assert!(key.ends_with(".ndjson.gz"));
        }
    }
    let by_id: HashMap<_, _> = objects
        .values()
        .flatten()
        .map(|e| (e.id.clone(), e))
        .collect();
    assert_eq!(by_id.len(), published.len(), "every event archived");
    for original in published {
        let mut archived = (*by_id.get(&original.id).expect("archived")).clone();
        archived.received_at = None;
        assert_eq!(
            &archived, original,
            "archived event equals what was published"
        );
    }
}

#[tokio::test]
async fn events_land_once_in_the_objects_of_their_source_and_hour() {
    let nats = NatsServer::start();
    let garage = garage();
    let dirs = tempfile::tempdir().unwrap();
    let flags = flags(
        &nats,
        Some(&garage),
        &dirs.path().join("segments"),
        &dirs.path().join("unused"),
    );
    let bus = bus(&nats).await;
    let published = events(300);
    publish(&bus, &published[..150]).await;
    let rotator = start(&flags).await;
    publish(&bus, &published[150..]).await;
    let objects = wait_archived(&store(&flags), 300).await;
    assert_archived_once(&objects, &published);
    let sources: HashSet<_> = objects
        .keys()
        .map(|k| k.split('/').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(
        sources,
        HashSet::from([
            "source=lms".into(),
            "source=shim".into(),
            "source=lab".into()
        ])
    );
    // the source clocks span three days; objects follow the receipt hour, so they are final
    let occurred: HashSet<_> = objects
        .values()
        .flatten()
        .map(|e| e.occurred_at.unwrap().seconds)
        .collect();
    assert_eq!(occurred.len(), 3);
    eventually(
        Duration::from_secs(10),
        "everything acknowledged",
        || async {
            (metric(&rotator.ops, "learntrail_archive_events_archived_total").await == 300.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        metric(&rotator.ops, "learntrail_archive_events_pending").await,
        0.0
    );
    assert!(metric(&rotator.ops, "learntrail_archive_objects_uploaded_total").await >= 3.0);
    rotator.stop().await;
    let info = consumer_info(&bus).await.unwrap();
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
}

#[tokio::test]
async fn an_s3_outage_loses_and_doubles_nothing() {
    let nats = NatsServer::start();
    let mut garage = garage();
    let dirs = tempfile::tempdir().unwrap();
    let mut flags = flags(
        &nats,
        Some(&garage),
        &dirs.path().join("segments"),
        &dirs.path().join("unused"),
    );
    // a short ack wait: JetStream redelivers everything pending during the outage, and again
    // while the backlog is being uploaded; no redelivery may add a copy
    flags.extend(["--ack-wait".into(), "1s".into()]);
    let bus = bus(&nats).await;
    let rotator = start(&flags).await;
    let published = events(90);
    publish(&bus, &published[..30]).await;
    wait_archived(&store(&flags), 30).await;

    garage.stop();
    publish(&bus, &published[30..]).await;
    eventually(
        Duration::from_secs(30),
        "uploads failing while S3 is down",
        || async {
            (metric(&rotator.ops, "learntrail_archive_upload_failures_total").await >= 2.0)
                .then_some(())
        },
    )
    .await;
    let info = consumer_info(&bus).await.unwrap();
    assert!(
        info.num_ack_pending >= 60,
        "nothing acknowledged while its object is not stored ({} pending)",
        info.num_ack_pending
    );

    eventually(
        Duration::from_secs(30),
        "pending events redelivered during the outage",
        || async {
            let info = consumer_info(&bus).await?;
            (info.num_redelivered >= 60).then_some(())
        },
    )
    .await;

    garage.restart();
    let objects = wait_archived(&store(&flags), 90).await;
    assert_archived_once(&objects, &published);
    eventually(
        Duration::from_secs(30),
        "every event acknowledged",
        || async {
            let info = consumer_info(&bus).await?;
            (info.num_ack_pending == 0).then_some(())
        },
    )
    .await;
    // redeliveries sent before the last acks arrived may still come in; none may add a copy
    settled(&bus, &rotator.ops, 0).await;
    assert_archived_once(&archived(&store(&flags)).await, &published);
    rotator.stop().await;
}

#[tokio::test]
async fn a_killed_rotator_resumes_with_nothing_lost_or_doubled() {
    let nats = NatsServer::start();
    let garage = garage();
    let dirs = tempfile::tempdir().unwrap();
    let mut flags = flags(
        &nats,
        Some(&garage),
        &dirs.path().join("segments"),
        &dirs.path().join("unused"),
    );
    let bus = bus(&nats).await;
    let published = events(600);

    // a long rotation interval keeps the segments open; a short ack wait makes JetStream
    // redeliver soon after the kill
    let mut long = flags.clone();
    let at = long.iter().position(|f| f == "--rotate-interval").unwrap();
    long[at + 1] = "1h".into();
    long.extend(["--ack-wait".into(), "2s".into()]);
    let ops_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let at = long.iter().position(|f| f == "--metrics-addr").unwrap();
    long[at + 1] = format!("127.0.0.1:{ops_port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_s3-rotator"))
        .args(&long[1..])
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    publish(&bus, &published[..400]).await;
    let ops = format!("http://127.0.0.1:{ops_port}");
    eventually(
        Duration::from_secs(30),
        "events written to open segments",
        || async {
            let pending = reqwest::get(format!("{ops}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            pending
                .contains("learntrail_archive_events_pending 400")
                .then_some(())
        },
    )
    .await;
    let segment_dir = dirs.path().join("segments");
    eventually(
        Duration::from_secs(30),
        "open segments on disk hold the events",
        || async {
            let lines: usize = std::fs::read_dir(&segment_dir)
                .ok()?
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "open"))
                .filter_map(|e| std::fs::read(e.path()).ok())
                .map(|data| data.iter().filter(|&&b| b == b'\n').count())
                .sum();
            (lines == 400).then_some(())
        },
    )
    .await;
    child.kill().unwrap(); // SIGKILL mid-hour: no goodbye; the open segments are recovered
    child.wait().unwrap();
    // deliveries to the killed run: counted once the server has dropped its pull requests
    let earlier = eventually(
        Duration::from_secs(30),
        "the killed run's pulls gone",
        || async {
            let info = consumer_info(&bus).await?;
            (info.num_waiting == 0).then_some(info.delivered.consumer_sequence)
        },
    )
    .await;
    assert!(
        archived(&store(&flags)).await.is_empty(),
        "nothing was uploaded before the kill"
    );

    flags.extend(["--ack-wait".into(), "2s".into()]);
    let rotator = start(&flags).await;
    publish(&bus, &published[400..]).await;
    let objects = wait_archived(&store(&flags), 600).await;
    assert_archived_once(&objects, &published);
    // redeliveries keep coming for a moment; none may add a copy
    settled(&bus, &rotator.ops, earlier).await;
    assert_archived_once(&archived(&store(&flags)).await, &published);
    rotator.stop().await;
}

#[tokio::test]
async fn messages_that_are_not_events_go_to_the_dead_letter_stream() {
    // (the server and the directories live as long as their bindings)
    let LocalRig {
        nats: _nats,
        dirs: _dirs,
        flags,
        bus,
        rotator,
    } = local_rig().await;
    let published = events(30);
    publish(&bus, &published[..15]).await;
    bus.jetstream()
        .publish("events.lab.log", "not a protobuf \u{1}\u{2}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    publish(&bus, &published[15..]).await;
    let objects = wait_archived(&store(&flags), 30).await;
    assert_archived_once(&objects, &published);
    let deadletter = bus
        .jetstream()
        .get_stream(subject::DEADLETTER_STREAM)
        .await
        .unwrap();
    let message = eventually(Duration::from_secs(30), "the dead letter", || async {
        deadletter.get_raw_message(1).await.ok()
    })
    .await;
    assert_eq!(message.subject.as_str(), "deadletter.lab");
    assert_eq!(&message.payload[..], "not a protobuf \u{1}\u{2}".as_bytes());
    let reason = message
        .headers
        .get(subject::DEADLETTER_REASON_HEADER)
        .expect("a reason")
        .to_string();
    assert!(
        reason.contains("events.lab.log") && reason.contains("not a learntrail.v1.Event"),
        "{reason}"
    );
    assert_eq!(
        metric(&rotator.ops, "learntrail_archive_deadlettered_total").await,
        1.0
    );
    rotator.stop().await;
}

#[tokio::test]
async fn with_no_s3_settings_the_archive_is_a_local_directory() {
    let nats = NatsServer::start();
    let dirs = tempfile::tempdir().unwrap();
    let archive_dir = dirs.path().join("archive");
    let flags = flags(&nats, None, &dirs.path().join("segments"), &archive_dir);
    let bus = bus(&nats).await;
    let rotator = start(&flags).await;
    let published = events(60);
    publish(&bus, &published).await;
    let objects = wait_archived(&store(&flags), 60).await;
    assert_archived_once(&objects, &published);
    for key in objects.keys() {
        assert!(
            archive_dir.join(key).is_file(),
            "{key} is a file under ARCHIVE_DIR"
        );
    }
    rotator.stop().await;
}

#[tokio::test]
async fn replay_of_an_archived_hour_gives_the_same_events() {
    // (the server and the directories live as long as their bindings)
    let LocalRig {
        nats: _nats,
        dirs: _dirs,
        flags,
        bus,
        rotator,
    } = local_rig().await;
    let mut published = events(120);
    // a source of a producer's own (not one of Learntrail's) is archived and replayed too
    published[2].source = "quiz".into();
    publish(&bus, &published).await;
    let objects = wait_archived(&store(&flags), 120).await;
    rotator.stop().await;
    assert!(
        objects.keys().any(|k| k.starts_with("events/source=quiz/")),
        "{:?}",
        objects.keys()
    );
    let archived_events: HashMap<_, _> = objects
        .values()
        .flatten()
        .map(|e| (e.id.clone(), e.clone()))
        .collect();

    let fresh = NatsServer::start();
    let fresh_bus = bus_for(&fresh).await;
    let now = chrono::Utc::now();
    let report = replay::replay(
        &store(&flags),
        &fresh_bus,
        "events",
        now - chrono::Duration::hours(1),
        now,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        (report.published, report.duplicates, report.unreadable),
        (120, 0, 0),
        "{report}"
    );
    let replayed = stream_events(
        fresh_bus.jetstream(),
        subject::EVENTS_STREAM,
        subject::EVENTS_SUBJECTS,
    )
    .await;
    assert_eq!(replayed.len(), 120);
    for (_, event) in &replayed {
        assert_eq!(
            Some(event),
            archived_events.get(&event.id),
            "replayed event equals the archived one"
        );
    }
    // replaying again stores nothing new: same ids, same duplicate window
    let again = replay::replay(
        &store(&flags),
        &fresh_bus,
        "events",
        now - chrono::Duration::hours(1),
        now,
        &["lms".into()],
    )
    .await
    .unwrap();
    assert_eq!((again.published, again.duplicates), (0, 40));

    // consecutive windows [a, b) and [b, c) give each event exactly once
    let mut received: Vec<_> = archived_events
        .values()
        .map(|e| learntrail_proto::time::to_datetime(e.received_at.as_ref().unwrap()).unwrap())
        .collect();
    received.sort();
    let split = received[received.len() / 2];
    let before = received.iter().filter(|t| **t < split).count();
    let windows = NatsServer::start();
    let windows_bus = bus_for(&windows).await;
    let mut counts = Vec::new();
    for (from, to) in [(now - chrono::Duration::hours(1), split), (split, now)] {
        let report = replay::replay(&store(&flags), &windows_bus, "events", from, to, &[])
            .await
            .unwrap();
        counts.push((report.published, report.duplicates));
    }
    assert_eq!(counts, [(before, 0), (120 - before, 0)]);
}

async fn bus_for(nats: &NatsServer) -> learntrail_runtime::bus::Bus {
    bus(nats).await
}

#[tokio::test]
async fn events_sent_again_as_first_deliveries_are_not_archived_twice() {
    let nats = NatsServer::start();
    let dirs = tempfile::tempdir().unwrap();
    // the segment stays open while its events come again
    let flags = held_open_flags(&nats, dirs.path());
    let bus = bus(&nats).await;
    let rotator = start(&flags).await;
    let published = events(40);
    publish(&bus, &published).await;
    eventually(
        Duration::from_secs(10),
        "40 events in a segment",
        || async {
            (metric(&rotator.ops, "learntrail_archive_events_pending").await == 40.0).then_some(())
        },
    )
    .await;
    // the consumer made anew (as a NATS node that died before recording its deliveries would
    // leave it): JetStream sends all 40 again, each as a first delivery
    let stream = bus
        .jetstream()
        .get_stream(subject::EVENTS_STREAM)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the consumer deleted", || async {
        // nats-server 2.9 may answer "directory not empty" while the consumer writes its state
        // (it is gone from the stream all the same); a retry that deletes the consumer the
        // rotator made again only sends everything once more
        match stream.delete_consumer("s3-rotator").await {
            Ok(_) => Some(()),
            Err(err) if err.to_string().contains("directory not empty") => Some(()),
            Err(_) => None,
        }
    })
    .await;
    eventually(Duration::from_secs(30), "the 40 sent again", || async {
        (metric(&rotator.ops, "learntrail_archive_deliveries_total").await >= 80.0).then_some(())
    })
    .await;
    let ignored = metric(
        &rotator.ops,
        "learntrail_archive_redeliveries_ignored_total",
    )
    .await;
    assert!(ignored >= 40.0, "{ignored}");
    // stopping seals and uploads the open segment
    rotator.stop().await;
    let objects = wait_archived(&store(&flags), 40).await;
    assert_archived_once(&objects, &published);
}

#[tokio::test]
async fn at_the_pending_limit_open_segments_are_sealed_so_the_flow_goes_on() {
    let nats = NatsServer::start();
    let dirs = tempfile::tempdir().unwrap();
    // JetStream holds back all but 20 events until some are acknowledged, and no segment is
    // due by age within the test
    let mut flags = held_open_flags(&nats, dirs.path());
    flags.extend(["--max-pending".into(), "20".into()]);
    let bus = bus(&nats).await;
    let rotator = start(&flags).await;
    let published = events(70);
    publish(&bus, &published).await;
    let objects = wait_archived(&store(&flags), 70).await;
    assert_archived_once(&objects, &published);
    rotator.stop().await;
}
