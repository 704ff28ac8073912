//! Pick-up times, limits and safety, one behaviour per test.

use std::time::{Duration, Instant};

use learntrail_proto::pseudonym::pseudonym;
use learntrail_testkit::eventually;

use crate::helpers::*;

const ONE_USER: &[u8] = b"uid,notebooks\nann,home/ann\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_is_reported_within_two_seconds_by_notification() {
    let env = Env::new().await;
    env.write("users.csv", ONE_USER);
    std::fs::create_dir_all(env.path("home/ann")).unwrap();
    let scanner = env.start(&[]).await;
    let saved = Instant::now();
    env.write("home/ann/hw/problem1.ipynb", &fixture("passing.ipynb"));
    let events = env.wait_events(1, Duration::from_secs(2)).await;
    assert!(saved.elapsed() < Duration::from_secs(2));
    assert_eq!(events[0].actor, pseudonym(KEY, "ann"));
    assert_eq!(snapshot_of(&events[0]).path, "hw/problem1.ipynb");
    scanner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_notifications_off_the_next_scan_reports_a_save() {
    let env = Env::new().await;
    env.write("users.csv", ONE_USER);
    std::fs::create_dir_all(env.path("home/ann")).unwrap();
    let scanner = env
        .start(&["--watch", "off", "--scan-interval", "1s"])
        .await;
    env.write("home/ann/problem1.ipynb", &fixture("failing.ipynb"));
    let saved = Instant::now();
    let events = env.wait_events(1, Duration::from_secs(3)).await;
    // within one interval (plus the scan itself, on a busy machine)
    assert!(
        saved.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        saved.elapsed()
    );
    assert_eq!(snapshot_of(&events[0]).error_outputs, 1);
    // and nothing more on later scans
    let scans = scanner
        .metric("learntrail_notebook_scan_seconds_count")
        .await as u64;
    scanner.wait_scans(scans + 2).await;
    assert_eq!(env.events().await.len(), 1);
    scanner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_to_etc_is_not_followed() {
    let env = Env::new().await;
    env.write("users.csv", ONE_USER);
    env.write("home/ann/problem1.ipynb", &fixture("passing.ipynb"));
    std::os::unix::fs::symlink("/etc", env.path("home/ann/etc")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", env.path("home/ann/hostname.ipynb")).unwrap();
    let scanner = env.start(&["--scan-interval", "200ms"]).await;
    scanner.wait_scans(3).await;
    // a notification about a file behind the link is refused too
    std::fs::write(
        env.path("home/ann/problem1.ipynb"),
        fixture("failing.ipynb"),
    )
    .unwrap();
    let events = env.wait_events(2, Duration::from_secs(5)).await;
    scanner.wait_scans(5).await;
    let events_now = env.events().await;
    assert_eq!(events_now.len(), 2, "{events:?}");
    assert!(
        events_now
            .iter()
            .all(|e| snapshot_of(e).path == "problem1.ipynb")
    );
    assert!(!env.snapshot("ann/etc").exists());
    assert!(!env.snapshot("ann/hostname.ipynb").exists());
    scanner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_notebook_is_skipped_and_a_truncated_one_is_a_parse_error() {
    let env = Env::new().await;
    env.write("users.csv", ONE_USER);
    let mut big = br#"{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "raw", "id": "x", "metadata": {}, "source": ""#.to_vec();
    big.resize(50 * 1024 * 1024, b'x');
    big.extend_from_slice(br#""}]}"#);
    env.write("home/ann/big.ipynb", &big);
    env.write("home/ann/cut.ipynb", &fixture("truncated.ipynb"));
    env.write("home/ann/ok.ipynb", &fixture("v4_4.ipynb"));
    let scanner = env.start(&[]).await;
    let events = env.wait_events(2, Duration::from_secs(5)).await;
    assert_eq!(events.len(), 2);
    let cut = find(&events, &pseudonym(KEY, "ann"), "cut.ipynb");
    assert!(
        cut.parse_error.starts_with("not valid notebook JSON"),
        "{cut:?}"
    );
    assert_eq!(cut.problems.len(), 0);
    assert_eq!(
        find(&events, &pseudonym(KEY, "ann"), "ok.ipynb").parse_error,
        ""
    );
    assert_eq!(
        scanner
            .metric("learntrail_notebook_files_skipped_total{reason=\"too_large\"}")
            .await,
        1.0
    );
    assert!(!env.snapshot("ann/big.ipynb").exists());
    scanner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_index_line_re_emits_the_same_event_id() {
    let env = Env::new().await;
    env.write("users.csv", ONE_USER);
    env.write("home/ann/problem1.ipynb", &fixture("passing.ipynb"));
    let scanner = env.start(&[]).await;
    let first = env.wait_events(1, Duration::from_secs(5)).await;
    scanner.stop().await;
    // the index never learnt of the ack (crash between ack and index line)
    std::fs::remove_file(env.snapshot(".index.jsonl")).unwrap();
    let again = env.start(&[]).await;
    // it published again, and the stream recognised the id
    assert_eq!(
        again
            .metric("learntrail_notebook_snapshot_events_total")
            .await,
        1.0
    );
    let events = env.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, first[0].id);
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_file_is_reread_when_it_changes() {
    let env = Env::new().await;
    env.write("users.csv", ONE_USER);
    env.write("home/bob/problem1.ipynb", &fixture("passing.ipynb"));
    let scanner = env.start(&[]).await;
    assert!(env.events().await.is_empty());
    env.write("users.csv", b"uid,notebooks\nann,home/ann\nbob,home/bob\n");
    let events = env.wait_events(1, Duration::from_secs(3)).await;
    assert_eq!(events[0].actor, pseudonym(KEY, "bob"));
    scanner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_listed_with_a_present_and_a_missing_directory_is_watched_in_both() {
    let env = Env::new().await;
    // ann is listed with two courses' directories (of the same length), the second not there
    // yet; bob is listed too
    env.write(
        "users.csv",
        b"uid,notebooks\nbob,home/bob\nann,c101/ann\nann,c102/ann\n",
    );
    std::fs::create_dir_all(env.path("home/bob")).unwrap();
    std::fs::create_dir_all(env.path("c101/ann")).unwrap();
    let scanner = env.start(&[]).await;
    env.write("c101/ann/problem1.ipynb", &fixture("passing.ipynb"));
    let events = env.wait_events(1, Duration::from_secs(3)).await;
    assert_eq!(events[0].actor, pseudonym(KEY, "ann"));
    // the scanner is not stuck on ann's missing directory: another learner's save comes
    env.write("home/bob/problem1.ipynb", &fixture("passing.ipynb"));
    let events = env.wait_events(2, Duration::from_secs(3)).await;
    assert_eq!(events[1].actor, pseudonym(KEY, "bob"));
    // the missing one appears, with a notebook in it
    env.write("c102/ann/problem2.ipynb", &fixture("passing.ipynb"));
    let events = env.wait_events(3, Duration::from_secs(3)).await;
    assert_eq!(snapshot_of(&events[2]).path, "problem2.ipynb");
    assert_eq!(events[2].actor, pseudonym(KEY, "ann"));
    scanner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_during_a_nats_outage_is_reported_when_nats_is_back() {
    let mut env = Env::new().await;
    env.write("users.csv", ONE_USER);
    std::fs::create_dir_all(env.path("home/ann")).unwrap();
    let scanner = env.start(&[]).await;
    env.nats.stop();
    env.write("home/ann/problem1.ipynb", &fixture("passing.ipynb"));
    eventually(Duration::from_secs(5), "a failed publish", || async {
        (scanner
            .metric("learntrail_notebook_files_skipped_total{reason=\"publish\"}")
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    // stored already: the snapshot comes before the event
    assert!(env.snapshot("ann/problem1.ipynb").exists());
    env.nats.restart();
    let events = env.wait_events(1, Duration::from_secs(15)).await;
    assert_eq!(snapshot_of(&events[0]).path, "problem1.ipynb");
    scanner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_can_go_to_an_s3_prefix_one_object_per_version() {
    use learntrail_s3_rotator::store::{Store, StoreArgs};
    use learntrail_testkit::{GarageServer, garage};
    let s3 = GarageServer::start();
    s3.create_bucket("snaps");
    let endpoint = s3.endpoint();
    let env = Env::new().await;
    env.write("users.csv", ONE_USER);
    env.write("home/ann/ps1/problem1.ipynb", &fixture("unanswered.ipynb"));
    let scanner = env
        .start(&[
            "--s3-bucket",
            "snaps",
            "--s3-endpoint",
            &endpoint,
            "--s3-region",
            garage::REGION,
            "--s3-path-style",
            "--aws-access-key-id",
            garage::ACCESS_KEY_ID,
            "--aws-secret-access-key",
            garage::SECRET_ACCESS_KEY,
        ])
        .await;
    let first = env.wait_events(1, Duration::from_secs(10)).await;
    env.write("home/ann/ps1/problem1.ipynb", &fixture("passing.ipynb"));
    let both = env.wait_events(2, Duration::from_secs(10)).await;
    let keys: Vec<&str> = both
        .iter()
        .map(|e| snapshot_of(e).snapshot.as_str())
        .collect();
    assert!(
        keys[0].starts_with("snapshots/ann/ps1/problem1.ipynb~"),
        "{keys:?}"
    );
    assert_eq!(snapshot_of(&first[0]).snapshot, keys[0]);
    let store = Store::from_args(&StoreArgs {
        s3_bucket: Some("snaps".into()),
        s3_endpoint: Some(endpoint.clone()),
        s3_region: garage::REGION.into(),
        s3_path_style: true,
        aws_access_key_id: Some(garage::ACCESS_KEY_ID.into()),
        aws_secret_access_key: Some(garage::SECRET_ACCESS_KEY.into()),
        s3_multipart_bytes: 8 << 20,
        s3_timeout: Duration::from_secs(10),
        archive_dir: env.path("unused"),
    })
    .unwrap();
    let listed = store.list("snapshots/ann/").await.unwrap();
    assert_eq!(listed, vec![keys[0].to_string(), keys[1].to_string()]);
    assert_eq!(
        store.get(keys[0]).await.unwrap(),
        fixture("unanswered.ipynb")
    );
    assert_eq!(store.get(keys[1]).await.unwrap(), fixture("passing.ipynb"));
    assert!(
        !env.snapshot("ann").exists(),
        "nothing in the directory store"
    );
    scanner.stop().await;
}
