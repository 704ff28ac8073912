//! `keen-forwarder backfill --destination X --from --to`: feeds a (new) destination from the
//! archive s3-rotator wrote (S3 or the local directory, the same settings as s3-rotator) without
//! touching the others: events received in `[from, to)` are read from their hourly objects and
//! delivered to that destination alone (those of its subjects), with its retry policy; what it refuses goes to its dead
//! letters as usual. Records carry the event id, so overlapping a window the consumer already
//! delivered costs the receiver only recognisable duplicates.

use std::{collections::HashSet, io::Read};

use chrono::{DateTime, Utc};
use flate2::read::GzDecoder;
use learntrail_proto::{Event, Message as _, subject, time};
use learntrail_runtime::{CancellationToken, bus::Bus};
use learntrail_s3_rotator::{layout::hours_between, store::Store};

use crate::{
    destination::Destination,
    forwarder::{Final, deliver_with_retries, interrupted},
    metrics::DestMetrics,
};

/// What a backfill did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub objects: u64,
    pub delivered: u64,
    pub deadlettered: u64,
    /// Lines that were not events (skipped).
    pub unreadable: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "objects {}, delivered {}, dead-lettered {}, unreadable {}",
            self.objects, self.delivered, self.deadlettered, self.unreadable
        )
    }
}

/// Where the archive is and what to read of it.
pub struct Window<'a> {
    pub store: &'a Store,
    pub prefix: &'a str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

pub async fn backfill(
    window: Window<'_>,
    bus: &Bus,
    dest: &Destination,
    metrics: &DestMetrics,
    token: &CancellationToken,
) -> anyhow::Result<Report> {
    anyhow::ensure!(window.from < window.to, "--from must be before --to");
    let mut report = Report::default();
    let hour = chrono::Duration::hours(1);
    // every source the archive holds; of their events, those the destination takes
    for source in window.store.sources(window.prefix).await? {
        for partition in hours_between(&source, window.from - hour, window.to + hour) {
            let mut seen = HashSet::new();
            for key in window
                .store
                .list(&partition.key_prefix(window.prefix))
                .await?
            {
                let body = window.store.get(&key).await?;
                let mut text = String::new();
                GzDecoder::new(body.as_slice()).read_to_string(&mut text)?;
                report.objects += 1;
                let mut events = Vec::new();
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    match Event::from_json(line) {
                        Ok(event)
                            if in_range(&event, window.from, window.to)
                                && subject::matches(&dest.tuning.subjects, &event.subject())
                                && seen.insert(event.id.clone()) =>
                        {
                            events.push(event)
                        }
                        Ok(_) => {}
                        Err(_) => report.unreadable += 1,
                    }
                }
                for chunk in events.chunks(dest.tuning.batch_size) {
                    deliver(bus, dest, chunk, metrics, token, &mut report).await?;
                }
            }
        }
    }
    Ok(report)
}

async fn deliver(
    bus: &Bus,
    dest: &Destination,
    events: &[Event],
    metrics: &DestMetrics,
    token: &CancellationToken,
    report: &mut Report,
) -> anyhow::Result<()> {
    let finals = deliver_with_retries(dest, events, metrics, token).await;
    let mut open = 0;
    for (event, fate) in events.iter().zip(finals) {
        match fate {
            None => open += 1,
            Some(Final::Delivered) => report.delivered += 1,
            Some(Final::DeadLetter(reason)) => {
                let payload = bytes::Bytes::from(event.encode_to_vec());
                bus.deadletter(&dest.name, "", &reason, payload).await?;
                report.deadlettered += 1;
            }
        }
    }
    interrupted("backfill", open)
}

fn in_range(event: &Event, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
    event
        .received_at
        .as_ref()
        .and_then(time::to_datetime)
        .is_some_and(|received| received >= from && received < to)
}
