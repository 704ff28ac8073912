//! Draining the spool to NATS: each record is published with its event id as `Nats-Msg-Id` and
//! deleted only after JetStream acknowledged it, so a crash between publish and delete republishes
//! the same id, which the stream stores once. A record that does not decode goes to
//! `deadletter.shim` with the reason, then leaves the spool. What a record may say, and who it is
//! taken to be from, is [`crate::record`]'s to decide: the uploader publishes Ruby runs only, as
//! their file's owner.

use std::{fs, time::Duration};

use bytes::Bytes;
use learntrail_proto::Message;
use learntrail_runtime::{
    CancellationToken,
    bus::{Bus, NatsArgs, PendingAck, PublishError},
    retry::Delays,
};

use crate::{
    cli::say,
    record::{self, Reader, Refused},
    spool::{Record, Spool},
};

/// Publishes in flight at once.
const WINDOW: usize = 256;

/// What one upload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Newly stored on the stream.
    pub sent: usize,
    /// Already on the stream (an earlier upload published them, then stopped before deleting).
    pub duplicates: usize,
    /// Records that can never be sent (undecodable, invalid, too large), moved to the
    /// dead-letter stream.
    pub dead_lettered: usize,
    /// Still in the spool.
    pub left: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sent, {} already stored, {} dead-lettered, {} left in the spool",
            self.sent, self.duplicates, self.dead_lettered, self.left
        )
    }
}

/// How much of a record that cannot be sent goes to the dead-letter stream.
const DEADLETTER_HEAD: usize = 256 * 1024;

/// Uploads every record, oldest first, as its file's owner with the deployment's pseudonym
/// `key`. Stops at the first publish failure (the bus went away), keeping that record and the
/// rest.
pub async fn upload(
    spool: &Spool,
    bus: &Bus,
    key: Option<&str>,
) -> Result<Report, (Report, PublishError)> {
    spool.clean_stale_tmp(std::time::SystemTime::now());
    let records = spool
        .records()
        .map_err(|e| (Report::default(), PublishError::Other(e.to_string())))?;
    let total = records.len();
    let mut report = Report::default();
    let mut reader = Reader::current();
    for chunk in records.chunks(WINDOW) {
        let mut pending: Vec<(&Record, PendingAck)> = Vec::with_capacity(chunk.len());
        let mut failure = None;
        for record in chunk {
            let (bytes, accepted) = match reader.read(&record.path) {
                Ok(opened) => {
                    let accepted = record::accept(&opened.bytes, &opened.owner, key);
                    (Bytes::from(opened.bytes), accepted)
                }
                Err(Refused::Gone) => continue,
                // never the content of what is not a record its owner wrote
                Err(Refused::Forged(reason)) => (Bytes::new(), Err(reason)),
            };
            let problem = match accepted {
                Ok(event) => match bus
                    .send(
                        event.subject(),
                        &event.id,
                        Bytes::from(event.encode_to_vec()),
                    )
                    .await
                {
                    Ok(ack) => {
                        pending.push((record, ack));
                        None
                    }
                    // a record the bus can never take must not hold up the ones after it
                    Err(err) if !err.is_transient() => Some(err.to_string()),
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                },
                Err(problem) => Some(problem),
            };
            if let Some(problem) = problem {
                let reason = format!("spool record {}: {problem}", record.id);
                // the record itself when it fits, else its head: the reason says the rest
                let head = bytes.slice(..bytes.len().min(DEADLETTER_HEAD));
                match bus.deadletter("shim", &record.id, &reason, head).await {
                    Ok(_) => {
                        let _ = fs::remove_file(&record.path);
                        report.dead_lettered += 1;
                    }
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                }
            }
        }
        for (record, ack) in pending {
            match ack.wait().await {
                Ok(ack) => {
                    let _ = fs::remove_file(&record.path);
                    if ack.duplicate {
                        report.duplicates += 1
                    } else {
                        report.sent += 1
                    }
                }
                Err(err) => {
                    failure.get_or_insert(err);
                }
            }
        }
        if let Some(err) = failure {
            // a shared spool has no other keeper: the quota holds however the upload ends
            let _ = spool.enforce_quota();
            report.left = spool
                .records()
                .map(|r| r.len())
                .unwrap_or(total - report.sent - report.duplicates - report.dead_lettered);
            return Err((report, err));
        }
    }
    report.left = spool.records().map(|r| r.len()).unwrap_or(0);
    let _ = spool.enforce_quota(); // also recounts the running total
    Ok(report)
}

/// One upload run for the CLI: connects (offline is not an error: the spool stays as it is).
pub async fn upload_once(
    spool: &Spool,
    nats: &NatsArgs,
    key: Option<&str>,
) -> anyhow::Result<Report> {
    let pending = spool.records()?.len();
    let bus = match Bus::connect(nats, "shim-agent", true).await {
        Ok(bus) => bus,
        Err(err) => {
            let _ = spool.enforce_quota(); // a shared spool has no other keeper
            say(&format!(
                "offline ({err}); {pending} record(s) kept in {}",
                spool.dir().display()
            ));
            return Ok(Report {
                left: pending,
                ..Default::default()
            });
        }
    };
    let outcome = upload(spool, &bus, key).await;
    bus.close(Duration::from_secs(2)).await;
    let report = match outcome {
        Ok(report) => report,
        Err((report, err)) => {
            say(&format!("upload stopped: {err}; {report}"));
            return Ok(report);
        }
    };
    let _ = spool.note_upload(&format!(
        "{} {}",
        learntrail_proto::time::rfc3339(&learntrail_proto::time::now()),
        report
    ));
    say(&report.to_string());
    Ok(report)
}

/// Uploads every `interval` until `token` is cancelled; after a failure waits longer each time
/// (up to 10 minutes), and goes back to `interval` after a success.
pub async fn daemon(
    spool: &Spool,
    nats: &NatsArgs,
    key: Option<&str>,
    interval: Duration,
    token: CancellationToken,
) {
    let bus = match Bus::connect(nats, "shim-agent", false).await {
        Ok(bus) => bus,
        Err(err) => {
            tracing::error!(error = %err, "cannot set up the NATS connection");
            return;
        }
    };
    let mut delays = retry_delays(interval);
    loop {
        let wait = if !bus.is_connected() {
            let _ = spool.enforce_quota(); // as an offline `upload` does
            delays.next_delay()
        } else {
            match upload(spool, &bus, key).await {
                Ok(report) => {
                    delays.reset();
                    if report.sent + report.duplicates + report.dead_lettered > 0 {
                        tracing::info!(%report, "uploaded");
                        let _ = spool.note_upload(&format!(
                            "{} {}",
                            learntrail_proto::time::rfc3339(&learntrail_proto::time::now()),
                            report
                        ));
                    }
                    interval
                }
                Err((report, err)) => {
                    tracing::warn!(%report, error = %err, "upload stopped");
                    delays.next_delay()
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = token.cancelled() => break,
        }
    }
    bus.close(Duration::from_secs(2)).await;
}

/// Delays between attempts while NATS is unreachable: from a few seconds (at most the interval)
/// doubling with jitter up to 10 minutes.
fn retry_delays(interval: Duration) -> Delays {
    Delays::new(
        interval.min(Duration::from_secs(5)),
        Duration::from_secs(600),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_grow_and_stay_near_the_cap() {
        let mut delays = retry_delays(Duration::from_secs(60));
        let first = delays.next_delay();
        assert!(
            first >= Duration::from_secs(5) && first < Duration::from_secs(15),
            "{first:?}"
        );
        let late: Vec<Duration> = (0..20).map(|_| delays.next_delay()).collect();
        assert!(
            late.iter().all(|d| *d <= Duration::from_secs(1200)),
            "{late:?}"
        );
        assert!(
            late.iter().any(|d| *d >= Duration::from_secs(600)),
            "{late:?}"
        );
    }
}
