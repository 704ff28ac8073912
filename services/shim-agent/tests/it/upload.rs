use std::{process::Stdio, time::Duration};

use learntrail_proto::{Message, Payload, subject};
use learntrail_runtime::bus::{Bus, NatsArgs, StreamArgs};
use learntrail_testkit::{NatsServer, eventually, try_stream_events};

use crate::helpers::Lab;

async fn bus(nats: &NatsServer) -> Bus {
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "test", true)
        .await
        .unwrap();
    bus.provision(&StreamArgs::default()).await.unwrap();
    bus
}

async fn stored_ids(bus: &Bus) -> Vec<String> {
    // right after a restart JetStream may need a moment before it answers
    let stored = eventually(Duration::from_secs(20), "the stream to answer", || async {
        try_stream_events(bus.jetstream(), subject::EVENTS_STREAM, "events.shim.>")
            .await
            .ok()
    })
    .await;
    stored.into_iter().map(|(_, e)| e.id).collect()
}

fn upload(lab: &Lab, nats_url: &str) -> String {
    let output = lab
        .agent(&["upload"])
        .env("NATS_URL", nats_url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "upload exits 0: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn offline_runs_spool_then_upload_delivers_each_once() {
    let lab = Lab::new();
    let mut nats = NatsServer::start();
    let url = nats.url();
    let bus = bus(&nats).await;
    nats.stop();
    for i in 0..5 {
        lab.run(true, &["-e", &format!("warn 'run {i}'")], b"");
    }
    let spooled: Vec<String> = lab.records().into_iter().map(|e| e.id).collect();
    assert_eq!(spooled.len(), 5);

    let said = upload(&lab, &url);
    assert!(said.contains("offline"), "{said}");
    assert_eq!(
        lab.records().len(),
        5,
        "offline: the spool is left as it was"
    );

    nats.restart();
    eventually(Duration::from_secs(10), "test connection back", || async {
        bus.is_connected().then_some(())
    })
    .await;
    let said = upload(&lab, &url);
    assert!(said.contains("5 sent"), "{said}");
    assert!(lab.records().is_empty(), "uploaded records leave the spool");
    assert_eq!(
        stored_ids(&bus).await,
        spooled,
        "each run once, in order, with its id"
    );

    let said = upload(&lab, &url);
    assert!(said.contains("0 sent"), "{said}");
    assert_eq!(stored_ids(&bus).await.len(), 5);
    let status = String::from_utf8(lab.agent(&["status"]).output().unwrap().stdout).unwrap();
    assert!(status.contains("(0 records"), "{status}");
    assert!(
        status.contains("5 sent") || status.contains("0 sent"),
        "{status}"
    );
}

#[tokio::test]
async fn a_crash_between_publish_and_delete_does_not_duplicate() {
    let lab = Lab::new();
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    for i in 0..3 {
        lab.run(true, &["-e", &format!("exit {i}")], b"");
    }
    // keep copies of the records, as if the agent died after publishing and before deleting
    let saved = lab.dir.path().join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    for entry in std::fs::read_dir(lab.spool()).unwrap().flatten() {
        std::fs::copy(entry.path(), saved.join(entry.file_name())).unwrap();
    }
    upload(&lab, &nats.url());
    for entry in std::fs::read_dir(&saved).unwrap().flatten() {
        std::fs::copy(entry.path(), lab.spool().join(entry.file_name())).unwrap();
    }
    assert_eq!(lab.records().len(), 3);
    let said = upload(&lab, &nats.url());
    assert!(said.contains("0 sent, 3 already stored"), "{said}");
    assert!(lab.records().is_empty());
    assert_eq!(stored_ids(&bus).await.len(), 3, "stored once");
}

#[tokio::test]
async fn broken_records_go_to_the_dead_letter_stream_and_temp_files_are_cleaned() {
    let lab = Lab::new();
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    lab.run(true, &["-e", "exit 0"], b"");
    let (mut big, _) = lab.only_run();
    std::fs::write(
        lab.spool().join("01JBQ0Z6W00000000000000BAD-9.pb"),
        b"\xff\xff not protobuf",
    )
    .unwrap();
    let stale = lab.spool().join(".tmp-01JBQ0Z6W0000000000000TMP");
    std::fs::write(&stale, b"half a record").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();

    // an empty record (a power loss before the data reached the disk) and one over the bus's
    // message limit, both older than the good run: neither may hold it up
    std::fs::write(lab.spool().join("01JBQ0Z6W0000000000000EMPT-0.pb"), b"").unwrap();
    big.id = "01JBQ0Z6W00000000000000B1G".into();
    if let Some(Payload::RubyRun(run)) = big.payload.as_mut() {
        run.stderr = "x".repeat(2 << 20);
    }
    let big = big.encode_to_vec();
    std::fs::write(
        lab.spool()
            .join(format!("01JBQ0Z6W00000000000000B1G-{}.pb", big.len())),
        &big,
    )
    .unwrap();

    let said = upload(&lab, &nats.url());
    assert!(
        said.contains("1 sent") && said.contains("3 dead-lettered"),
        "{said}"
    );
    assert!(lab.records().is_empty());
    assert!(!stale.exists(), "a stale temp file from a crash is removed");
    assert_eq!(stored_ids(&bus).await.len(), 1);
    let dead = bus
        .jetstream()
        .get_stream(subject::DEADLETTER_STREAM)
        .await
        .unwrap();
    let mut letters = Vec::new();
    for seq in 1..=3 {
        let message = dead.get_raw_message(seq).await.unwrap();
        let reason = message
            .headers
            .get(subject::DEADLETTER_REASON_HEADER)
            .unwrap()
            .to_string();
        letters.push((reason, message.payload.len()));
    }
    letters.sort();
    let find = |needle: &str| {
        letters
            .iter()
            .find(|(reason, _)| reason.contains(needle))
            .unwrap_or_else(|| panic!("no dead letter says {needle}: {letters:?}"))
    };
    assert_eq!(find("undecodable").1, b"\xff\xff not protobuf".len());
    assert_eq!(find("not a valid event").1, 0);
    assert_eq!(find("too large").1, 256 * 1024, "the head of the record");
}

#[tokio::test]
async fn the_daemon_keeps_the_spool_drained() {
    let lab = Lab::new();
    let mut nats = NatsServer::start();
    let bus = bus(&nats).await;
    nats.stop();
    let mut daemon = KillOnDrop(
        lab.agent(&["daemon", "--interval", "200ms"])
            .env("NATS_URL", nats.url())
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    lab.run(true, &["-e", "warn 'while offline'"], b"");
    nats.restart();
    lab.run(true, &["-e", "warn 'while online'"], b"");
    eventually(
        Duration::from_secs(30),
        "both runs uploaded by the daemon",
        || async {
            let stored =
                try_stream_events(bus.jetstream(), subject::EVENTS_STREAM, "events.shim.>")
                    .await
                    .ok()?;
            (stored.len() == 2 && lab.records().is_empty()).then_some(())
        },
    )
    .await;
    // SAFETY: signalling our own child process.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(daemon.0.id() as i32, libc::SIGTERM)
    };
    let status = daemon.0.wait().unwrap();
    assert!(
        status.success(),
        "the daemon stops cleanly on SIGTERM: {status:?}"
    );
}

/// Kills a spawned agent if the test fails before stopping it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
