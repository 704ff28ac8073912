//! The forwarder binary SIGKILLed mid-batch and started again: nothing lost at Keen (a duplicate
//! would carry the same `learntrail_id`), and the LRS holds each statement once.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use learntrail_keen_forwarder::xapi::Mapping;
use learntrail_testkit::{NatsServer, eventually};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::json;

use crate::{
    fakes::{self, PROJECT, WRITE_KEY},
    helpers::*,
};

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(nats: &NatsServer, file: &std::path::Path) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_keen-forwarder"))
            .env("NATS_URL", nats.url())
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("DESTINATIONS_FILE", file)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test]
async fn sigkill_mid_batch_loses_nothing_and_the_lrs_holds_each_statement_once() {
    let ralph = Ralph::start().await;
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    let keen = fakes::keen().await;
    *keen.state.delay.lock().unwrap() = Duration::from_millis(100);
    let dir = tempfile::tempdir().unwrap();
    let file = destinations_file(
        dir.path(),
        json!([
            {"type": "keen", "url": keen.url, "project_id": PROJECT, "write_key": WRITE_KEY,
             "batch_size": 20, "linger": "20ms", "concurrency": 2, "ack_wait": "3s"},
            {"type": "lrs", "url": ralph.url, "username": LRS_USER, "password": LRS_PASSWORD,
             "batch_size": 20, "linger": "20ms", "ack_wait": "3s"},
        ]),
    );
    let events = events(600);
    publish(&bus, &events).await;
    let mut forwarder = spawn(&nats, &file);
    eventually(Duration::from_secs(30), "some events at Keen", || async {
        (keen.state.stored().len() >= 100).then_some(())
    })
    .await;
    kill(Pid::from_raw(forwarder.0.id() as i32), Signal::SIGKILL).unwrap();
    forwarder.0.wait().unwrap();
    let at_kill = keen.state.stored().len();
    assert!(
        at_kill < events.len(),
        "killed mid-stream ({at_kill} stored)"
    );

    let _restarted = spawn(&nats, &file);
    let ids = |stored: Vec<(String, serde_json::Value)>| {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (_, record) in stored {
            *counts
                .entry(record["learntrail_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        counts
    };
    let counts = eventually(
        Duration::from_secs(60),
        "every event at Keen after the restart",
        || async {
            let counts = ids(keen.state.stored());
            events
                .iter()
                .all(|e| counts.contains_key(&e.id))
                .then_some(counts)
        },
    )
    .await;
    assert_eq!(counts.len(), events.len(), "only published events");
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!("{duplicates} duplicate record(s) at Keen, each recognisable by its learntrail_id");

    let mapping = Mapping {
        actor_homepage: "https://learntrail.local/learners".into(),
        activity_base: "https://learntrail.local/xapi".into(),
    };
    let expected: usize = events.iter().map(|e| mapping.statements(e).len()).sum();
    assert!(expected > 300);
    let stored = eventually(
        Duration::from_secs(60),
        "every statement in the LRS",
        || async {
            let stored = ralph.statements().await;
            (stored.len() >= expected).then_some(stored)
        },
    )
    .await;
    let mut seen = HashMap::new();
    for statement in &stored {
        *seen
            .entry(statement["id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), expected);
    assert!(
        seen.values().all(|n| *n == 1),
        "the LRS holds each statement once"
    );
}
