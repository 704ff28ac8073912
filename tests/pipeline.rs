//! The first seed's whole path, with real servers: a student's `ruby` run goes through the shim
//! into the spool, `shim-agent upload` ships it to JetStream, tracking-api adds an LMS event, and
//! s3-rotator archives both to S3 (Garage) as gzip NDJSON objects.

use std::{io::Read, path::PathBuf, process::Command, time::Duration};

use clap::Parser;
use flate2::read::GzDecoder;
use learntrail_proto::{Event, Payload};
use learntrail_runtime::{
    CancellationToken,
    auth::{self, Claims, Role},
};
use learntrail_testkit::{GarageServer, NatsServer, eventually, garage};
use tokio::net::TcpListener;

/// The shim-agent binary of this workspace, built if needed.
fn shim_agent() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "learntrail-shim-agent",
            "--bin",
            "shim-agent",
        ])
        .status()
        .expect("cargo build shim-agent");
    assert!(status.success());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/shim-agent")
}

#[tokio::test]
async fn a_ruby_run_and_an_lms_event_reach_the_s3_archive() {
    let nats = NatsServer::start();
    let s3 = GarageServer::start();
    s3.create_bucket("archive");
    let work = tempfile::tempdir().unwrap();
    let secret = "e2e-secret-e2e-secret-e2e-secret-e2e";

    // tracking-api and s3-rotator, in-process on port 0
    let token = CancellationToken::new();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", api.local_addr().unwrap());
    let tracking = learntrail_tracking_api::Config::parse_from([
        "tracking-api",
        "--jwt-secret",
        secret,
        "--nats-url",
        &nats.url(),
    ]);
    tokio::spawn(learntrail_tracking_api::serve(
        tracking,
        api,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        token.clone(),
    ));
    let segments = work.path().join("segments").display().to_string();
    let rotator = learntrail_s3_rotator::Config::parse_from([
        "s3-rotator",
        "--nats-url",
        &nats.url(),
        "--segment-dir",
        &segments,
        "--rotate-interval",
        "1s",
        "--s3-bucket",
        "archive",
        "--s3-endpoint",
        &s3.endpoint(),
        "--s3-region",
        garage::REGION,
        "--s3-path-style",
        "--aws-access-key-id",
        garage::ACCESS_KEY_ID,
        "--aws-secret-access-key",
        garage::SECRET_ACCESS_KEY,
    ]);
    let store = learntrail_s3_rotator::store::Store::from_args(&rotator.store).unwrap();
    tokio::spawn(learntrail_s3_rotator::serve(
        rotator,
        store.clone(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        token.clone(),
    ));

    // the services provision the streams as they start; wait for that
    let bus = learntrail_runtime::bus::Bus::connect(
        &learntrail_runtime::bus::NatsArgs::with_url(nats.url()),
        "e2e",
        true,
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(20), "streams provisioned", || async {
        bus.jetstream().get_stream("EVENTS").await.ok().map(|_| ())
    })
    .await;

    // a student runs a failing script through the shim
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(shim_agent(), bin.join("ruby")).unwrap();
    let spool = work.path().join("spool");
    std::fs::write(work.path().join("hw.rb"), "puts 'working'\nnil.upcase\n").unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let run = Command::new("ruby")
        .arg("hw.rb")
        .current_dir(work.path())
        .env("PATH", &path)
        .env("SPOOL_DIR", &spool)
        .env("PSEUDONYM_KEY", "e2e")
        .env("LEARNTRAIL_SHIM_CONFIG", work.path().join("none"))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(run.stdout, b"working\n");
    let upload = Command::new(shim_agent())
        .arg("upload")
        .env("SPOOL_DIR", &spool)
        .env("NATS_URL", nats.url())
        .env("LEARNTRAIL_SHIM_CONFIG", work.path().join("none"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&upload.stdout).contains("1 sent"),
        "{upload:?}"
    );

    // the LMS reports a video play
    let bearer = auth::sign(
        secret.as_bytes(),
        &Claims {
            sub: "anon-7".into(),
            role: Role::Student,
            exp: Some(auth::now() + 600),
            nbf: None,
            iat: None,
            courses: None,
        },
    );
    let answer = reqwest::Client::new()
        .post(format!("{api_url}/api/tracking"))
        .bearer_auth(bearer)
        .body(r#"{"tracking_event_type":"video_play","node_id":"u1","course_slug":"ruby-101","event_data":{"video_id":"intro","current_time":1}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 202);

    // both are archived
    let events: Vec<Event> = eventually(Duration::from_secs(60), "both events in S3", || async {
        let mut events = Vec::new();
        for key in store.list("events/").await.ok()? {
            let body = store.get(&key).await.ok()?;
            let mut text = String::new();
            GzDecoder::new(body.as_slice())
                .read_to_string(&mut text)
                .ok()?;
            events.extend(text.lines().filter_map(|l| Event::from_json(l).ok()));
        }
        (events.len() == 2).then_some(events)
    })
    .await;
    let ruby = events
        .iter()
        .find(|e| e.source == "shim")
        .expect("the ruby run");
    let Some(Payload::RubyRun(run)) = &ruby.payload else {
        panic!("a RubyRun")
    };
    let error = run.error.as_ref().expect("parsed error");
    assert_eq!(
        (error.class_name.as_str(), error.line),
        ("NoMethodError", 2)
    );
    assert!(
        events
            .iter()
            .any(|e| e.source == "lms" && e.actor == "anon-7")
    );
    token.cancel();
}
