//! The bus against a real nats-server: several servers in one URL, streams created by services
//! but never changed by them, and `learntrail-admin provision` as their one owner.

use std::{process::Command, time::Duration};

use learntrail_runtime::bus::{Bus, NatsArgs, StreamArgs, StreamState};
use learntrail_testkit::NatsServer;

async fn events_config(bus: &Bus) -> async_nats::jetstream::stream::Config {
    let mut stream = bus.jetstream().get_stream("EVENTS").await.unwrap();
    stream.info().await.unwrap().config.clone()
}

#[tokio::test]
async fn a_url_with_a_down_server_first_still_connects() {
    let nats = NatsServer::start();
    // a port nobody listens on
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("nats://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let args = NatsArgs::with_url(format!("{down},{}", nats.url()));
    let bus = Bus::connect(&args, "test", true)
        .await
        .expect("connects to the server that is up");
    bus.provision(&StreamArgs::default()).await.unwrap();
    assert!(bus.is_ready());
}

#[tokio::test]
async fn services_create_missing_streams_but_never_change_them() {
    let nats = NatsServer::start();
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "test", true)
        .await
        .unwrap();
    let production = StreamArgs {
        events_max_age: Duration::from_secs(7 * 86_400),
        ..Default::default()
    };
    bus.provision(&production).await.unwrap();
    assert_eq!(events_config(&bus).await.max_age, production.events_max_age);

    // a service started with other defaults leaves the existing stream alone
    bus.provision(&StreamArgs::default()).await.unwrap();
    assert_eq!(events_config(&bus).await.max_age, production.events_max_age);

    // the admin's check reports the drift and changes nothing
    let reports = bus.reconcile(&StreamArgs::default(), false).await.unwrap();
    assert_eq!(reports[0].state, StreamState::Drifted);
    assert_eq!(reports[0].drift, ["max_age: 7days -> 30days"]);
    assert_eq!(reports[1].state, StreamState::Unchanged);
    assert_eq!(events_config(&bus).await.max_age, production.events_max_age);

    // applying brings it to the settings
    let reports = bus.reconcile(&StreamArgs::default(), true).await.unwrap();
    assert_eq!(reports[0].state, StreamState::Updated);
    assert_eq!(
        events_config(&bus).await.max_age,
        Duration::from_secs(30 * 86_400)
    );
}

#[tokio::test]
async fn learntrail_admin_provision_creates_and_reports() {
    let nats = NatsServer::start();
    let admin = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_learntrail-admin"))
            .arg("provision")
            .args(extra)
            .env("NATS_URL", nats.url())
            .env("LOG_FORMAT", "json")
            .env_remove("EVENTS_MAX_AGE")
            .output()
            .unwrap()
    };
    let check = admin(&["--check"]);
    assert_eq!(
        check.status.code(),
        Some(1),
        "missing streams fail the check"
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("EVENTS: missing"));

    let created = admin(&[]);
    assert!(created.status.success(), "{created:?}");
    let out = String::from_utf8_lossy(&created.stdout);
    assert!(
        out.contains("EVENTS: created") && out.contains("DEADLETTER: created"),
        "{out}"
    );

    let drift = admin(&["--check", "--events-max-age", "1d"]);
    assert_eq!(drift.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&drift.stdout).contains("max_age: 30days -> 1day"),
        "{drift:?}"
    );
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "test", true)
        .await
        .unwrap();
    assert_eq!(
        events_config(&bus).await.max_age,
        Duration::from_secs(30 * 86_400),
        "--check changes nothing"
    );
}
