//! `s3-rotator replay`: reads archived objects back and republishes their events with their own
//! ids, so the stream's duplicate window and every consumer's idempotency hold; an event found
//! in two objects of its hour is published once. For backfilling a
//! new consumer or rebuilding a projection.

use std::{collections::HashSet, io::Read};

use chrono::{DateTime, Utc};
use flate2::read::GzDecoder;
use learntrail_proto::{Event, time};
use learntrail_runtime::bus::Bus;

use crate::{layout::hours_between, store::Store};

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub objects: usize,
    pub published: usize,
    /// Already on the stream within its duplicate window (stored once).
    pub duplicates: usize,
    /// Lines that were not events (reported, skipped).
    pub unreadable: usize,
    /// Events found in more than one object of their hour (published once).
    pub repeated: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} objects, {} events published, {} already on the stream, {} unreadable lines, {} repeated in the archive",
            self.objects, self.published, self.duplicates, self.unreadable, self.repeated
        )
    }
}

/// Replays events received in `[from, to)` for `sources` (every source archived when empty). Objects
/// are partitioned by the hour the stream stored an event, which can differ by moments from the
/// `receivedAt` a producer stamped, so the hours on either side are read too and each event is
/// chosen by its `receivedAt`.
pub async fn replay(
    store: &Store,
    bus: &Bus,
    prefix: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    sources: &[String],
) -> anyhow::Result<Report> {
    anyhow::ensure!(from < to, "--from must be before --to");
    let sources: Vec<String> = if sources.is_empty() {
        // every source the archive holds, not only Learntrail's own: an event a producer
        // published on a subject of its own is archived under its source too
        store.sources(prefix).await?
    } else {
        sources.to_vec()
    };
    let mut report = Report::default();
    for source in &sources {
        let hour = chrono::Duration::hours(1);
        for partition in hours_between(source, from - hour, to + hour) {
            // an event is in one partition; within it, objects should not overlap, and if they
            // ever do, each event is published once
            let mut seen = HashSet::new();
            for key in store.list(&partition.key_prefix(prefix)).await? {
                let body = store.get(&key).await?;
                let mut text = String::new();
                GzDecoder::new(body.as_slice()).read_to_string(&mut text)?;
                report.objects += 1;
                let mut events = Vec::new();
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    match Event::from_json(line) {
                        Ok(event) if !seen.insert(event.id.clone()) => report.repeated += 1,
                        Ok(event) if in_range(&event, from, to) => events.push(event),
                        Ok(_) => {}
                        Err(err) => {
                            report.unreadable += 1;
                            tracing::warn!(key, error = %err, "unreadable archived line");
                        }
                    }
                }
                for chunk in events.chunks(1000) {
                    for result in bus.publish_many(chunk).await {
                        let ack = result?;
                        if ack.duplicate {
                            report.duplicates += 1
                        } else {
                            report.published += 1
                        }
                    }
                }
            }
        }
    }
    Ok(report)
}

fn in_range(event: &Event, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
    event
        .received_at
        .as_ref()
        .and_then(time::to_datetime)
        .is_none_or(|received| received >= from && received < to)
}
