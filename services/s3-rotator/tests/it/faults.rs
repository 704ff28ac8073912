//! The archive's guarantees when things go wrong: lost acknowledgements, damaged segments, a
//! segment directory that fails, a hung or refusing S3, changed consumer settings.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::Duration,
};

use clap::Parser as _;
use learntrail_s3_rotator::Config;
use learntrail_testkit::{Fault, FaultProxy, NatsServer, eventually};

use crate::{archive::assert_archived_once, helpers::*};

#[tokio::test]
async fn lost_acks_bring_redeliveries_that_are_not_archived_again() {
    let nats = NatsServer::start();
    let dirs = tempfile::tempdir().unwrap();
    let mut flags = flags(
        &nats,
        None,
        &dirs.path().join("segments"),
        &dirs.path().join("archive"),
    );
    flags.extend(["--ack-wait".into(), "1s".into()]);
    let bus = bus(&nats).await;
    let config = Config::parse_from(&flags);
    let faults = config.faults.clone();
    faults.lose_acks.store(true, Ordering::Relaxed);
    let rotator = start_config(config).await;
    let published = events(60);
    publish(&bus, &published).await;
    // stored, but no acknowledgement reaches the server: it redelivers every second
    let stored = wait_archived(&store(&flags), 60).await;
    eventually(
        Duration::from_secs(30),
        "every event redelivered while its acks are lost",
        || async {
            let info = consumer_info(&bus).await?;
            let ignored = metric(
                &rotator.ops,
                "learntrail_archive_redeliveries_ignored_total",
            )
            .await;
            (info.num_redelivered >= 60 && info.num_ack_pending == 60 && ignored >= 60.0)
                .then_some(())
        },
    )
    .await;
    assert!(metric(&rotator.ops, "learntrail_archive_ack_failures_total").await >= 1.0);
    faults.lose_acks.store(false, Ordering::Relaxed);
    settled(&bus, &rotator.ops, 0).await;
    let after = archived(&store(&flags)).await;
    assert_archived_once(&after, &published);
    assert_none_replaced(&stored, &after);
    rotator.stop().await;
}

#[tokio::test]
async fn a_damaged_segment_releases_its_events_without_a_restart() {
    let nats = NatsServer::start();
    let dirs = tempfile::tempdir().unwrap();
    let (segments, archive) = (dirs.path().join("segments"), dirs.path().join("archive"));
    let mut flags = flags(&nats, None, &segments, &archive);
    flags.extend(["--ack-wait".into(), "2s".into()]);
    // the archive cannot be written while a file stands where its directory goes
    std::fs::write(&archive, b"not a directory").unwrap();
    let bus = bus(&nats).await;
    let rotator = start(&flags).await;
    let published = events(30);
    publish(&bus, &published).await;
    let sealed = eventually(
        Duration::from_secs(30),
        "all events in sealed segments",
        || async {
            let sealed: Vec<_> = std::fs::read_dir(&segments)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sealed"))
                .collect();
            let lines: usize = sealed
                .iter()
                .filter_map(|p| std::fs::read(p).ok())
                .map(|d| d.iter().filter(|&&b| b == b'\n').count())
                .sum();
            (lines == 30
                && metric(&rotator.ops, "learntrail_archive_upload_failures_total").await >= 1.0)
                .then_some(sealed)
        },
    )
    .await;
    // one segment is damaged on disk before it could be uploaded
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&sealed[0])
        .unwrap();
    std::io::Write::write_all(&mut file, b"\0\0 not a segment line\n").unwrap();
    drop(file);
    std::fs::remove_file(&archive).unwrap();
    // its events come again by redelivery and are archived by this same run
    let objects = wait_archived(&store(&flags), 30).await;
    settled(&bus, &rotator.ops, 0).await;
    assert_archived_once(&archived(&store(&flags)).await, &published);
    assert!(!objects.is_empty());
    assert_eq!(
        metric(&rotator.ops, "learntrail_archive_segments_damaged_total").await,
        1.0
    );
    assert!(
        sealed[0].with_extension("damaged").exists(),
        "kept for inspection"
    );
    rotator.stop().await;
}

#[tokio::test]
async fn a_failing_segment_directory_fails_readiness_then_ends_the_process_non_zero() {
    let nats = NatsServer::start();
    let garage = garage();
    let proxy = FaultProxy::start(&garage.endpoint()).await;
    let dirs = tempfile::tempdir().unwrap();
    let segments = dirs.path().join("segments");
    let mut flags = flags(&nats, Some(&garage), &segments, &dirs.path().join("unused"));
    let at = flags.iter().position(|f| f == "--s3-endpoint").unwrap();
    flags[at + 1] = proxy.url();
    let ops_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let at = flags.iter().position(|f| f == "--metrics-addr").unwrap();
    flags[at + 1] = format!("127.0.0.1:{ops_port}");
    flags.extend(["--shutdown-grace".into(), "10s".into()]);
    let ops = format!("http://127.0.0.1:{ops_port}");
    let bus = bus(&nats).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_s3-rotator"))
        .args(&flags[1..])
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // read the log as it comes: a full pipe would stall the process on its next log line
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    let published = events(3);
    publish(&bus, &published[..1]).await;
    wait_archived(&store(&flags), 1).await;
    eventually(Duration::from_secs(30), "ready", || async {
        (readyz(&ops).await == 200).then_some(())
    })
    .await;
    // the second event's upload hangs, so the drain takes the whole 10 s grace: a window to see
    // /readyz 503 in even on a busy machine. Only once that PUT is in the proxy is the segment
    // directory replaced: replaced earlier, the uploader may find no directory to list, then
    // nothing holds the drain and the process ends within milliseconds of the failure. A PUT
    // in flight has read its segment, and the segment is sealed, so the third event cannot join
    // that file.
    proxy.fail(|method, path| (method == "PUT" && path.contains("shim")).then_some(Fault::Hang));
    publish(&bus, &published[1..2]).await;
    eventually(
        Duration::from_secs(30),
        "the second event's upload hanging",
        || async { (proxy.faulted() > 0).then_some(()) },
    )
    .await;
    std::fs::rename(&segments, dirs.path().join("moved")).unwrap();
    std::fs::write(&segments, b"a file where the directory was").unwrap();
    publish(&bus, &published[2..]).await;
    eventually(
        Duration::from_secs(30),
        "/readyz 503 while still up",
        || async { (readyz(&ops).await == 503).then_some(()) },
    )
    .await;
    let child = std::sync::Mutex::new(child);
    let status = eventually(Duration::from_secs(30), "the process ends", || async {
        child.lock().unwrap().try_wait().unwrap()
    })
    .await;
    assert_eq!(
        status.code(),
        Some(1),
        "non-zero: the orchestrator restarts it"
    );
    let log = log.join().unwrap();
    assert!(
        log.contains("cannot write segments") && log.contains("\"level\":\"ERROR\""),
        "{log}"
    );
}

#[tokio::test]
async fn a_hung_s3_times_out_and_recovers() {
    let nats = NatsServer::start();
    let garage = garage();
    let proxy = FaultProxy::start(&garage.endpoint()).await;
    proxy.fail(|_, _| Some(Fault::Hang));
    let dirs = tempfile::tempdir().unwrap();
    let mut flags = flags(
        &nats,
        Some(&garage),
        &dirs.path().join("segments"),
        &dirs.path().join("unused"),
    );
    let at = flags.iter().position(|f| f == "--s3-endpoint").unwrap();
    flags[at + 1] = proxy.url();
    flags.extend(["--s3-timeout".into(), "1s".into()]);
    let bus = bus(&nats).await;
    let rotator = start(&flags).await;
    let published = events(30);
    publish(&bus, &published).await;
    eventually(Duration::from_secs(60), "uploads timing out", || async {
        (metric(&rotator.ops, "learntrail_archive_upload_failures_total").await >= 2.0)
            .then_some(())
    })
    .await;
    assert_eq!(readyz(&rotator.ops).await, 503, "the store does not answer");
    proxy.heal();
    let _ = wait_archived(&store(&flags), 30).await;
    settled(&bus, &rotator.ops, 0).await;
    assert_archived_once(&archived(&store(&flags)).await, &published);
    eventually(Duration::from_secs(30), "ready again", || async {
        (readyz(&rotator.ops).await == 200).then_some(())
    })
    .await;
    rotator.stop().await;
}

#[tokio::test]
async fn a_refused_segment_is_set_aside_while_the_others_upload() {
    let nats = NatsServer::start();
    let garage = garage();
    let proxy = FaultProxy::start(&garage.endpoint()).await;
    proxy.fail(|_, path| {
        (path.contains("source%3Dlab") || path.contains("source=lab")).then_some(Fault::Status(403))
    });
    let dirs = tempfile::tempdir().unwrap();
    let mut flags = flags(
        &nats,
        Some(&garage),
        &dirs.path().join("segments"),
        &dirs.path().join("unused"),
    );
    let at = flags.iter().position(|f| f == "--s3-endpoint").unwrap();
    flags[at + 1] = proxy.url();
    let bus = bus(&nats).await;
    let rotator = start(&flags).await;
    let published = events(90); // lms, shim and lab in turn
    publish(&bus, &published[..45]).await;
    eventually(
        Duration::from_secs(30),
        "the lab segment refused",
        || async {
            (metric(&rotator.ops, "learntrail_archive_segments_rejected_total").await >= 1.0)
                .then_some(())
        },
    )
    .await;
    publish(&bus, &published[45..]).await;
    let objects = wait_archived(&store(&flags), 60).await;
    assert!(objects.keys().all(|k| !k.contains("source=lab")));
    let others: Vec<_> = published
        .iter()
        .filter(|e| e.source != "lab")
        .cloned()
        .collect();
    assert_archived_once(&objects, &others);
    eventually(
        Duration::from_secs(30),
        "only lab's events unacknowledged",
        || async { (consumer_info(&bus).await?.num_ack_pending == 30).then_some(()) },
    )
    .await;
    assert_eq!(
        readyz(&rotator.ops).await,
        200,
        "the store answers; one key is refused"
    );
    rotator.stop().await;
}

#[tokio::test]
async fn consumer_settings_follow_the_configuration_at_every_start() {
    let LocalRig {
        nats: _nats,
        dirs: _dirs,
        mut flags,
        bus,
        rotator,
    } = local_rig().await;
    eventually(Duration::from_secs(30), "the consumer", || {
        consumer_info(&bus)
    })
    .await;
    rotator.stop().await;
    flags.extend([
        "--ack-wait".into(),
        "7s".into(),
        "--max-pending".into(),
        "123".into(),
    ]);
    let rotator = start(&flags).await;
    let info = eventually(Duration::from_secs(30), "the consumer updated", || async {
        let info = consumer_info(&bus).await?;
        (info.config.ack_wait == Duration::from_secs(7)).then_some(info)
    })
    .await;
    assert_eq!(info.config.max_ack_pending, 123);
    rotator.stop().await;
}

#[test]
fn a_configuration_error_exits_64_with_the_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_s3-rotator"))
        .args(["--s3-bucket", "archive", "--metrics-addr", "127.0.0.1:0"])
        .env("AWS_ACCESS_KEY_ID", "only-the-key-id")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AWS_ACCESS_KEY_ID"), "{stderr}");
}

#[tokio::test]
async fn an_object_is_never_replaced_by_other_content() {
    let garage = garage();
    let dirs = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    for flags in [
        flags(&nats, Some(&garage), dirs.path(), &dirs.path().join("a")),
        flags(&nats, None, dirs.path(), &dirs.path().join("b")),
    ] {
        let store = store(&flags);
        let key = "events/source=lms/dt=2026-11-24/hour=16/1-10.ndjson.gz";
        store.put(key, b"ten events".to_vec()).await.unwrap();
        let again = store.put(key, b"two".to_vec()).await;
        assert!(
            matches!(again, Err(learntrail_s3_rotator::store::StoreError::Exists)),
            "{} answers a taken key: {again:?}",
            store.describe()
        );
        assert_eq!(store.get(key).await.unwrap(), b"ten events");
    }
}

#[tokio::test]
async fn without_keys_the_standard_aws_credential_chain_is_used() {
    let garage = garage();
    let nats = NatsServer::start();
    let dirs = tempfile::tempdir().unwrap();
    let with_keys = flags(
        &nats,
        Some(&garage),
        &dirs.path().join("segments"),
        &dirs.path().join("archive"),
    );
    // the same settings without the two key flags; the keys are in an AWS profile file instead
    let mut keyless = Vec::new();
    let mut args = with_keys.iter().skip(1);
    while let Some(arg) = args.next() {
        if arg.starts_with("--aws-") {
            args.next();
        } else {
            keyless.push(arg.clone());
        }
    }
    let profile = dirs.path().join("credentials");
    std::fs::write(
        &profile,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            learntrail_testkit::garage::ACCESS_KEY_ID,
            learntrail_testkit::garage::SECRET_ACCESS_KEY
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_s3-rotator"))
        .args(&keyless)
        .env("AWS_SHARED_CREDENTIALS_FILE", &profile)
        .env("AWS_CONFIG_FILE", dirs.path().join("no-config"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let bus = bus(&nats).await;
    publish(&bus, &events(3)).await;
    let archived = wait_archived(&store(&with_keys), 3).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(archived.values().map(Vec::len).sum::<usize>(), 3);
}
