use std::{process::Stdio, time::Duration};

use learntrail_proto::{Message, Payload, subject};
use learntrail_runtime::bus::{Bus, NatsArgs, StreamArgs};
use learntrail_testkit::{NatsServer, eventually, try_stream_events};

use crate::helpers::{Lab, NOBODY};

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
        .env("PSEUDONYM_KEY", "lab-key")
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

/// A valid event of another source, as a student could write one into the spool.
fn forged_lms_event() -> learntrail_proto::Event {
    learntrail_proto::Event {
        id: learntrail_proto::id::new_id(),
        occurred_at: Some(learntrail_proto::time::now()),
        source: "lms".into(),
        kind: "assessment_submitted".into(),
        actor: "victim".into(),
        payload: Some(Payload::LmsEvent(Default::default())),
        ..Default::default()
    }
}

/// Writes `bytes` into the spool as a record of `uid`'s.
fn plant(lab: &Lab, bytes: &[u8], uid: u32) -> std::path::PathBuf {
    let id = learntrail_proto::id::new_id();
    let path = lab.spool().join(format!("{id}-{}.pb", bytes.len()));
    std::fs::write(&path, bytes).unwrap();
    std::os::unix::fs::chown(&path, Some(uid), Some(uid)).unwrap();
    path
}

#[tokio::test]
async fn a_forged_record_is_never_published_as_such() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let lab = Lab::new();
    lab.share_spool();
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    // a student's real run, with $USER claiming to be someone else
    let output = lab
        .command_as(NOBODY, &["-e", "warn 'mine'"])
        .env("USER", "root")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let (genuine, _) = lab.only_run();
    let record = std::fs::read_dir(lab.spool())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".pb"))
        .unwrap()
        .metadata()
        .unwrap();
    assert_eq!(
        (record.uid(), record.permissions().mode() & 0o777),
        (NOBODY, 0o600)
    );

    // the same student forges: an LMS event for a victim, a run claiming root's actor, a link
    // to root's record, a hard link to it, and a named pipe
    plant(&lab, &forged_lms_event().encode_to_vec(), NOBODY);
    let mut claimed = genuine.clone();
    claimed.id = learntrail_proto::id::new_id();
    claimed.actor = learntrail_shim_agent::meta::pseudonym("lab-key", "root");
    plant(&lab, &claimed.encode_to_vec(), NOBODY);
    let roots = lab.dir.path().join("roots-record.pb");
    let mut root_run = genuine.clone();
    root_run.id = learntrail_proto::id::new_id();
    std::fs::write(&roots, root_run.encode_to_vec()).unwrap();
    std::os::unix::fs::symlink(
        &roots,
        lab.spool()
            .join(format!("{}-9.pb", learntrail_proto::id::new_id())),
    )
    .unwrap();
    std::fs::hard_link(
        &roots,
        lab.spool()
            .join(format!("{}-8.pb", learntrail_proto::id::new_id())),
    )
    .unwrap();
    nix::unistd::mkfifo(
        &lab.spool()
            .join(format!("{}-7.pb", learntrail_proto::id::new_id())),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    )
    .unwrap();

    let said = upload(&lab, &nats.url());
    assert!(
        said.contains("2 sent") && said.contains("4 dead-lettered"),
        "{said}"
    );
    let events = try_stream_events(bus.jetstream(), subject::EVENTS_STREAM, "events.>")
        .await
        .unwrap();
    let students = learntrail_shim_agent::meta::pseudonym("lab-key", "nobody");
    assert_eq!(events.len(), 2, "no LMS event, no root run: {events:?}");
    for (_, event) in &events {
        assert_eq!(event.subject(), "events.shim.ruby_run");
        assert_eq!(event.actor, students, "the learner is the file's owner");
        assert_eq!(
            event
                .context
                .as_ref()
                .unwrap()
                .machine
                .as_ref()
                .unwrap()
                .user,
            students
        );
    }
    let dead = bus
        .jetstream()
        .get_stream(subject::DEADLETTER_STREAM)
        .await
        .unwrap();
    let mut letters = Vec::new();
    for seq in 1..=4 {
        let message = dead.get_raw_message(seq).await.unwrap();
        let reason = message
            .headers
            .get(subject::DEADLETTER_REASON_HEADER)
            .unwrap()
            .to_string();
        letters.push((reason, message.payload.len()));
    }
    for (needle, content) in [
        ("not a Ruby run", true),
        ("symbolic link", false),
        ("hard links", false),
        ("named pipe", false),
    ] {
        let (reason, len) = letters
            .iter()
            .find(|(reason, _)| reason.contains(needle))
            .unwrap_or_else(|| panic!("no dead letter says {needle}: {letters:?}"));
        assert_eq!(*len > 0, content, "{reason}");
    }
    assert!(lab.records().is_empty(), "every record left the spool");
    assert!(roots.exists(), "a link's target is never touched");
}

#[tokio::test]
async fn an_uploader_that_is_not_root_takes_only_its_own_accounts_records() {
    let lab = Lab::new();
    lab.share_spool();
    let nats = NatsServer::start();
    let bus = bus(&nats).await;
    lab.run(true, &["-e", "warn 'roots run'"], b"");
    std::os::unix::fs::chown(lab.spool(), Some(NOBODY), Some(NOBODY)).unwrap();
    let mut settings = lab.agent(&["upload"]);
    settings
        .env("NATS_URL", nats.url())
        .env("PSEUDONYM_KEY", "lab-key");
    let mut as_nobody = std::process::Command::new("setpriv");
    as_nobody
        .args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".into(),
            "--".into(),
            crate::helpers::AGENT.into(),
            "upload".into(),
        ])
        .env_clear()
        .envs(settings.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let output = as_nobody.output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains("0 sent") && said.contains("1 dead-lettered"),
        "{said} {output:?}"
    );
    let dead = bus
        .jetstream()
        .get_stream(subject::DEADLETTER_STREAM)
        .await
        .unwrap();
    let message = dead.get_raw_message(1).await.unwrap();
    let reason = message
        .headers
        .get(subject::DEADLETTER_REASON_HEADER)
        .unwrap();
    assert!(
        reason.to_string().contains("not by the account uploading"),
        "{reason}"
    );
}

#[tokio::test]
async fn the_spool_quota_holds_when_an_upload_fails() {
    let lab = Lab::new();
    // NATS answers but has no EVENTS stream: every publish fails, and is worth retrying
    let nats = NatsServer::start();
    for i in 0..5 {
        lab.run(true, &["-e", &format!("warn 'run {i}'")], b"");
    }
    let files = lab.record_files();
    assert_eq!(files.len(), 5);
    // room for the newest two
    let quota: u64 = files[3..]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let output = lab
        .agent(&["upload"])
        .env("NATS_URL", nats.url())
        .env("PSEUDONYM_KEY", "lab-key")
        .env("SPOOL_MAX_BYTES", quota.to_string())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("upload stopped"), "{said}");
    assert_eq!(
        lab.record_files(),
        files[3..],
        "the oldest records went, the newest two stay"
    );
}
