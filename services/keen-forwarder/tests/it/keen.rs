//! Keen and webhooks: exactly once in the happy path, refusals dead-lettered and redriven,
//! failures and rate limits retried without holding back another destination, attempts bounded.

use std::{collections::HashMap, time::Duration};

use learntrail_keen_forwarder::{Command as Sub, destination, redrive};
use learntrail_proto::{Event, id};
use learntrail_testkit::{NatsServer, eventually};
use serde_json::{Value, json};

use crate::{
    fakes::{self, Fake, PROJECT, WEBHOOK_SECRET, WRITE_KEY},
    helpers::*,
};

fn keen_entry(keen: &Fake, extra: Value) -> Value {
    let mut entry = json!({
        "type": "keen", "url": keen.url, "project_id": PROJECT, "write_key": WRITE_KEY,
        "batch_size": 25, "linger": "50ms", "retry_min": "50ms", "retry_max": "200ms",
    });
    entry
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    entry
}

fn hook_entry(name: &str, hook: &Fake, extra: Value) -> Value {
    let mut entry = json!({
        "type": "webhook", "name": name, "url": hook.url, "secret": WEBHOOK_SECRET,
        "batch_size": 40, "linger": "50ms", "retry_min": "50ms", "retry_max": "200ms",
    });
    entry
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    entry
}

/// learntrail_id → how many times the fake stored it.
fn counts(fake: &Fake, key: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (_, record) in fake.state.stored() {
        *counts
            .entry(record[key].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

async fn all_stored(fake: &Fake, key: &str, events: &[Event], what: &str) {
    eventually(Duration::from_secs(30), what, || async {
        let counts = counts(fake, key);
        events
            .iter()
            .all(|e| counts.contains_key(&e.id))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn every_event_reaches_keen_and_a_webhook_exactly_once() {
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    let (keen, hook) = (fakes::keen().await, fakes::webhook().await);
    let dir = tempfile::tempdir().unwrap();
    let file = destinations_file(
        dir.path(),
        json!([
            keen_entry(&keen, json!({})),
            hook_entry("lms", &hook, json!({}))
        ]),
    );
    let forwarder = start(config(&nats, &file)).await;
    let events = events(300);
    publish(&bus, &events).await;

    all_stored(&keen, "learntrail_id", &events, "every event at Keen").await;
    all_stored(&hook, "id", &events, "every event at the webhook").await;
    eventually(Duration::from_secs(10), "delivered counted", || async {
        (forwarder
            .metric("learntrail_forward_delivered_total{destination=\"keen\"}")
            .await?
            == 300.0)
            .then_some(())
    })
    .await;
    forwarder.stop().await;

    let keen_counts = counts(&keen, "learntrail_id");
    assert_eq!(keen_counts.len(), 300);
    assert!(keen_counts.values().all(|n| *n == 1), "a duplicate at Keen");
    assert!(
        counts(&hook, "id").values().all(|n| *n == 1),
        "a duplicate at the webhook"
    );
    // collections <source>.<kind>, the shared mapping, keen.timestamp = occurredAt
    let stored = keen.state.stored();
    let (collection, record) = stored
        .iter()
        .find(|(_, r)| r["learntrail_id"] == events[1].id.as_str())
        .unwrap();
    assert_eq!(collection, "shim.ruby_run");
    assert_eq!(record["keen"]["timestamp"], "2026-11-24T16:30:18.123Z");
    assert_eq!(record["rubyRun"]["durationMs"], 1);
    assert_eq!(record["actor"], "learner-1");
    // batches of at most 25 in as few requests as the linger allows; every webhook request signed
    assert!(
        keen.state.requests().len() >= 12,
        "{} requests",
        keen.state.requests().len()
    );
    assert_eq!(*hook.state.bad_signatures.lock().unwrap(), 0);
    let (_, event) = &hook.state.stored()[0];
    assert!(
        Event::from_json(&event.to_string()).is_ok(),
        "canonical JSON events: {event}"
    );
    assert!(deadletters(&bus).await.is_empty());
}

#[tokio::test]
async fn a_refused_event_is_deadlettered_with_its_error_and_redriven_once() {
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    let keen = fakes::keen().await;
    let dir = tempfile::tempdir().unwrap();
    // a deployment renamed one collection to a name Keen refuses (leading `_`)
    let broken = destinations_file(
        dir.path(),
        json!([keen_entry(
            &keen,
            json!({"collections": {"lab.odd": "_odd"}})
        )]),
    );
    let forwarder = start(config(&nats, &broken)).await;
    let mut events = events(60);
    events[17].source = "lab".into();
    events[17].kind = "odd".into();
    publish(&bus, &events).await;

    let good: Vec<Event> = events.iter().filter(|e| e.kind != "odd").cloned().collect();
    all_stored(&keen, "learntrail_id", &good, "the others at Keen").await;
    let letters = eventually(
        Duration::from_secs(10),
        "the refused event dead-lettered",
        || async {
            let letters = deadletters(&bus).await;
            (!letters.is_empty()).then_some(letters)
        },
    )
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].subject, "deadletter.keen");
    assert_eq!(letters[0].event, events[17], "the original event");
    assert!(
        letters[0].reason.starts_with("InvalidCollectionNameError"),
        "{}",
        letters[0].reason
    );
    // acknowledged, not redelivered: the consumer has nothing outstanding
    eventually(Duration::from_secs(10), "every message acked", || async {
        let stream = bus.jetstream().get_stream("EVENTS").await.ok()?;
        let info = stream.consumer_info("keen-forwarder-keen").await.ok()?;
        (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
    })
    .await;
    forwarder.stop().await;
    assert!(!counts(&keen, "learntrail_id").contains_key(&events[17].id));

    // the rename fixed: redrive delivers it once and removes it from DEADLETTER
    let fixed = destinations_file(dir.path(), json!([keen_entry(&keen, json!({}))]));
    let mut config = config(&nats, &fixed);
    config.command = Some(Sub::Redrive {
        destination: "keen".into(),
        from: None,
        to: None,
    });
    let dest = destination::from_config(&config).unwrap().remove(0);
    let metrics = learntrail_keen_forwarder::metrics::Metrics::register(&mut Default::default())
        .for_destination("keen");
    let token = learntrail_runtime::CancellationToken::new();
    let report = redrive::redrive(&bus, &dest, None, None, &metrics, &token)
        .await
        .unwrap();
    assert_eq!(
        report,
        redrive::Report {
            redriven: 1,
            ..Default::default()
        }
    );
    assert_eq!(counts(&keen, "learntrail_id")[&events[17].id], 1);
    assert!(
        keen.state
            .stored()
            .iter()
            .any(|(c, r)| c == "lab.odd" && r["learntrail_id"] == events[17].id.as_str())
    );
    assert!(
        deadletters(&bus).await.is_empty(),
        "redriven letters are removed"
    );
    let again = redrive::redrive(&bus, &dest, None, None, &metrics, &token)
        .await
        .unwrap();
    assert_eq!(
        again,
        redrive::Report::default(),
        "a second redrive has nothing to do"
    );
    assert_eq!(counts(&keen, "learntrail_id").values().sum::<usize>(), 60);
}

#[tokio::test]
async fn failures_and_rate_limits_are_retried_while_another_destination_flows() {
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    let (keen, limited, healthy) = (
        fakes::keen().await,
        fakes::webhook().await,
        fakes::webhook().await,
    );
    keen.state.fail_next(500, None, 2);
    limited.state.fail_next(429, Some(2), 1);
    let dir = tempfile::tempdir().unwrap();
    let big = json!({"batch_size": 1000, "linger": "300ms"});
    let file = destinations_file(
        dir.path(),
        json!([
            keen_entry(&keen, big.clone()),
            hook_entry("limited", &limited, big.clone()),
            hook_entry("healthy", &healthy, big)
        ]),
    );
    let forwarder = start(config(&nats, &file)).await;
    let events = events(50);
    publish(&bus, &events).await;

    // the healthy webhook has everything while the limited one still waits out its Retry-After
    all_stored(
        &healthy,
        "id",
        &events,
        "every event at the healthy webhook",
    )
    .await;
    assert!(
        limited.state.stored().is_empty(),
        "the rate-limited webhook waits"
    );
    all_stored(
        &keen,
        "learntrail_id",
        &events,
        "every event at Keen after two 500s",
    )
    .await;
    all_stored(
        &limited,
        "id",
        &events,
        "every event at the limited webhook",
    )
    .await;
    forwarder.stop().await;

    for (fake, key) in [(&keen, "learntrail_id"), (&limited, "id"), (&healthy, "id")] {
        let counts = counts(fake, key);
        assert_eq!(counts.len(), 50);
        assert!(counts.values().all(|n| *n == 1), "no duplicates");
    }
    let limited_requests = limited.state.requests();
    assert_eq!(limited_requests.len(), 2, "one 429, then one delivery");
    let waited = limited_requests[1] - limited_requests[0];
    assert!(
        waited >= Duration::from_secs(2),
        "Retry-After honoured: retried after {waited:?}"
    );
    let keen_requests = keen.state.requests();
    assert_eq!(keen_requests.len(), 3);
    assert!(
        keen_requests[1] - keen_requests[0] >= Duration::from_millis(50),
        "backed off"
    );
}

#[tokio::test]
async fn batches_waiting_for_a_delivery_slot_are_kept_in_progress_not_sent_twice() {
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    let hook = fakes::webhook().await;
    // the first delivery fails for about 3 s (three ack waits) while the other batches wait for
    // the one slot
    hook.state.fail_next(503, None, 12);
    let dir = tempfile::tempdir().unwrap();
    let file = destinations_file(
        dir.path(),
        json!([hook_entry(
            "slow",
            &hook,
            json!({
                "batch_size": 5, "concurrency": 1, "ack_wait": "1s", "max_attempts": 40,
                "retry_min": "250ms", "retry_max": "250ms",
            })
        )]),
    );
    let forwarder = start(config(&nats, &file)).await;
    let events = events(20);
    publish(&bus, &events).await;
    all_stored(&hook, "id", &events, "every event at the webhook").await;
    // long enough for a redelivery of a late batch to be delivered again
    tokio::time::sleep(Duration::from_millis(1500)).await;
    forwarder.stop().await;

    assert!(
        hook.state.requests().len() > 12,
        "the first delivery was retried past the ack wait"
    );
    let counts = counts(&hook, "id");
    assert_eq!(counts.len(), 20);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
}

#[tokio::test]
async fn events_out_of_attempts_are_deadlettered_and_acked() {
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    let hook = fakes::webhook().await;
    hook.state.fail_next(503, None, 100);
    let dir = tempfile::tempdir().unwrap();
    let file = destinations_file(
        dir.path(),
        json!([hook_entry(
            "down",
            &hook,
            json!({"max_attempts": 3, "subjects": "events.shim.>"})
        )]),
    );
    let forwarder = start(config(&nats, &file)).await;
    let events = events(9);
    publish(&bus, &events).await;
    let shim: Vec<&Event> = events.iter().filter(|e| e.source == "shim").collect();
    let letters = eventually(
        Duration::from_secs(20),
        "the shim events dead-lettered",
        || async {
            let letters = deadletters(&bus).await;
            (letters.len() == shim.len()).then_some(letters)
        },
    )
    .await;
    assert_eq!(
        hook.state.requests().len(),
        3,
        "three attempts of one batch"
    );
    for letter in &letters {
        assert_eq!(letter.subject, "deadletter.webhook.down");
        assert!(
            letter
                .reason
                .starts_with("not accepted after 3 attempts: HTTP 503"),
            "{}",
            letter.reason
        );
        assert!(shim.iter().any(|e| **e == letter.event));
    }
    eventually(Duration::from_secs(5), "dead-lettered counted", || async {
        (forwarder
            .metric("learntrail_forward_deadlettered_total{destination=\"webhook.down\"}")
            .await?
            == 3.0)
            .then_some(())
    })
    .await;
    forwarder.stop().await;
    let _ = id::new_id();
}

#[tokio::test]
async fn shutdown_during_a_retry_keeps_the_fate_of_what_keen_already_took() {
    use learntrail_keen_forwarder::{
        destination::{Destination, Tuning},
        forwarder::{Final, deliver_with_retries},
        keen::Keen,
        metrics::Metrics,
        sink::Sink,
    };
    let keen = fakes::keen().await;
    let events = events(4);
    keen.state.busy.lock().unwrap().insert(events[1].id.clone());
    let dest = Destination {
        name: "keen".into(),
        sink: Sink::Keen(Keen::new(
            reqwest::Client::new(),
            &keen.url,
            PROJECT.into(),
            WRITE_KEY.to_string().into(),
            HashMap::new(),
        )),
        tuning: Tuning {
            subjects: "events.>".into(),
            batch_size: 10,
            batch_bytes: 1 << 20,
            linger: Duration::from_millis(50),
            concurrency: 1,
            max_attempts: 5,
            // the second attempt would come long after the test
            retry_min: Duration::from_secs(600),
            retry_max: Duration::from_secs(600),
            ack_wait: Duration::from_secs(30),
        },
    };
    let metrics = Metrics::register(&mut Default::default()).for_destination("keen");
    let token = learntrail_runtime::CancellationToken::new();
    let delivery = tokio::spawn({
        let token = token.clone();
        let events = events.clone();
        async move { deliver_with_retries(&dest, &events, &metrics, &token).await }
    });
    all_stored(
        &keen,
        "learntrail_id",
        &[events[0].clone(), events[2].clone(), events[3].clone()],
        "the events Keen took",
    )
    .await;
    token.cancel();
    let finals = tokio::time::timeout(Duration::from_secs(10), delivery)
        .await
        .expect("shutdown ends the wait for the next attempt")
        .unwrap();
    assert_eq!(
        finals,
        [
            Some(Final::Delivered),
            None,
            Some(Final::Delivered),
            Some(Final::Delivered)
        ],
        "only the event Keen did not take is left for redelivery"
    );
    assert_eq!(keen.state.requests().len(), 1);
}

#[tokio::test]
async fn keens_python_client_speaks_to_the_double() {
    let keen = fakes::keen().await;
    let script = format!(
        r#"
import json, keen
from keen.client import KeenClient
client = KeenClient(project_id="{PROJECT}", write_key="{WRITE_KEY}", base_url="{url}")
answer = client.add_events({{"purchases": [{{"item": "golden gadget", "price": 2550}}, {{"bad.name": 1}}],
                             "transactions": [{{"id": "f029342"}}]}})
print(json.dumps(answer))
try:
    KeenClient(project_id="{PROJECT}", write_key="wrong", base_url="{url}").add_events({{"x": [{{}}]}})
    print("no error")
except Exception as err:
    print(type(err).__name__)
"#,
        url = keen.url
    );
    let python = python().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(["-c", &script])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines();
    let answer: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(answer["purchases"][0], json!({"success": true}));
    assert_eq!(answer["purchases"][1]["success"], false);
    assert_eq!(
        answer["purchases"][1]["error"]["name"],
        "InvalidPropertyNameError"
    );
    assert_eq!(answer["transactions"], json!([{"success": true}]));
    assert_eq!(
        lines.next(),
        Some("KeenApiError"),
        "a wrong key is refused as the client expects"
    );
    assert_eq!(keen.state.stored().len(), 2);
}

#[tokio::test]
async fn backfill_feeds_one_destination_from_the_archive() {
    use std::io::Write as _;
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    let (keen, hook) = (fakes::keen().await, fakes::webhook().await);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    // s3-rotator's layout: events/source=<s>/dt=<d>/hour=<h>/<...>.ndjson.gz, by receipt time
    let store = learntrail_s3_rotator::store::Store::Local(archive.clone());
    let mut events = events(40);
    // a source of a producer's own, archived under it: backfilled too
    events[2].source = "quiz".into();
    let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
    for (i, event) in events.iter_mut().enumerate() {
        let received = if i < 30 {
            format!("2026-11-24T16:{i:02}:00Z")
        } else {
            "2026-11-24T19:05:00Z".into()
        };
        event.received_at = learntrail_proto::time::parse_rfc3339(&received);
        let at = chrono::DateTime::parse_from_rfc3339(&received)
            .unwrap()
            .to_utc();
        let partition = learntrail_s3_rotator::layout::Partition::of(&event.subject(), at);
        let key = format!("{}1-40-test.ndjson.gz", partition.key_prefix("events"));
        by_key
            .entry(key)
            .or_default()
            .push(event.to_json().unwrap());
    }
    for (key, lines) in by_key {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
        store.put(&key, gz.finish().unwrap()).await.unwrap();
    }
    let file = destinations_file(
        dir.path(),
        json!([
            keen_entry(&keen, json!({})),
            hook_entry("other", &hook, json!({"subjects": "events.lms.>"}))
        ]),
    );
    let backfill = |destination: &str| {
        <learntrail_keen_forwarder::Config as clap::Parser>::parse_from([
            "keen-forwarder",
            "--nats-url",
            &nats.url(),
            "--destinations-file",
            file.to_str().unwrap(),
            "backfill",
            "--destination",
            destination,
            "--from",
            "2026-11-24T16:00:00Z",
            "--to",
            "2026-11-24T18:00:00Z",
            "--archive-dir",
            archive.to_str().unwrap(),
        ])
    };
    learntrail_keen_forwarder::run(
        backfill("keen"),
        learntrail_runtime::CancellationToken::new(),
    )
    .await
    .unwrap();

    let counts = counts(&keen, "learntrail_id");
    assert_eq!(counts.len(), 30, "the window's events");
    assert!(events[..30].iter().all(|e| counts.get(&e.id) == Some(&1)));
    assert!(
        hook.state.requests().is_empty(),
        "the other destination untouched"
    );
    assert!(
        learntrail_testkit::stream_events(bus.jetstream(), "EVENTS", "events.>")
            .await
            .is_empty(),
        "nothing republished"
    );
    // a destination that takes only LMS events is backfilled with those alone
    learntrail_keen_forwarder::run(
        backfill("webhook.other"),
        learntrail_runtime::CancellationToken::new(),
    )
    .await
    .unwrap();
    let mut got: Vec<String> = hook
        .state
        .stored()
        .into_iter()
        .map(|(_, e)| e["id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut lms: Vec<String> = events[..30]
        .iter()
        .filter(|e| e.source == "lms")
        .map(|e| e.id.clone())
        .collect();
    lms.sort();
    assert_eq!(lms.len(), 10);
    assert_eq!(got, lms, "the LMS events of the window, no others");
}

#[tokio::test]
async fn a_redirect_is_not_followed_into_a_delivery_that_never_happened() {
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    let hook = fakes::webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let mut entry = hook_entry("moved", &hook, json!({"max_attempts": 2}));
    entry["url"] = json!(hook.url.replace("/hook", "/moved"));
    let file = destinations_file(dir.path(), json!([entry]));
    let forwarder = start(config(&nats, &file)).await;
    let events = events(3);
    publish(&bus, &events).await;
    let letters = eventually(Duration::from_secs(20), "dead-lettered", || async {
        let letters = deadletters(&bus).await;
        (letters.len() == events.len()).then_some(letters)
    })
    .await;
    for letter in &letters {
        assert!(
            letter.reason.contains("HTTP 301") && letter.reason.contains("/landing"),
            "{}",
            letter.reason
        );
    }
    assert!(hook.state.stored().is_empty());
    forwarder.stop().await;
}

#[tokio::test]
async fn lag_is_measured_while_a_destination_is_down() {
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    let hook = fakes::webhook().await;
    hook.state.fail_next(503, None, 10_000);
    let dir = tempfile::tempdir().unwrap();
    let file = destinations_file(
        dir.path(),
        json!([hook_entry(
            "down",
            &hook,
            json!({"max_attempts": 1000, "retry_min": "100ms", "retry_max": "300ms"})
        )]),
    );
    let forwarder = start(config(&nats, &file)).await;
    publish(&bus, &events(30)).await;
    let dest = "{destination=\"webhook.down\"}";
    eventually(
        Duration::from_secs(15),
        "lag and retries reported",
        || async {
            let pending = forwarder
                .metric(&format!("learntrail_forward_pending{dest}"))
                .await?;
            let oldest = forwarder
                .metric(&format!(
                    "learntrail_forward_oldest_undelivered_seconds{dest}"
                ))
                .await?;
            let retried = forwarder
                .metric(&format!("learntrail_forward_retried_total{dest}"))
                .await?;
            (pending == 30.0 && oldest > 0.0 && retried >= 30.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        forwarder
            .metric(&format!("learntrail_forward_delivered_total{dest}"))
            .await,
        Some(0.0)
    );
    assert!(hook.state.stored().is_empty());
    forwarder.stop().await;
}
