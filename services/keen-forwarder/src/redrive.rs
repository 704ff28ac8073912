//! `keen-forwarder redrive --destination X [--from --to]`: once the cause of a destination's
//! dead letters is fixed, delivers them again to that destination alone (the others already
//! have those events) with its usual retries, and removes each delivered one from DEADLETTER.
//! What still fails stays there, with its first reason. `--from`/`--to` bound the time the
//! records were dead-lettered.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use learntrail_proto::{Event, Message as _, subject};
use learntrail_runtime::{CancellationToken, bus::Bus};

use crate::{
    destination::Destination,
    forwarder::{Final, deliver_with_retries, interrupted},
    metrics::DestMetrics,
};

/// What a redrive did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Delivered and removed from DEADLETTER.
    pub redriven: u64,
    /// Refused again (left in DEADLETTER).
    pub still_failing: u64,
    /// Records that are not events (left in DEADLETTER).
    pub unreadable: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "redriven {}, still failing {}, unreadable {}",
            self.redriven, self.still_failing, self.unreadable
        )
    }
}

/// One dead letter: its DEADLETTER sequence and event.
struct Letter {
    seq: u64,
    event: Event,
}

pub async fn redrive(
    bus: &Bus,
    dest: &Destination,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    metrics: &DestMetrics,
    token: &CancellationToken,
) -> anyhow::Result<Report> {
    let stream = bus
        .jetstream()
        .get_stream(subject::DEADLETTER_STREAM)
        .await?;
    let mut report = Report::default();
    let mut info = stream.clone();
    if info.info().await?.state.messages == 0 {
        return Ok(report);
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject::deadletter_subject(&dest.name),
            deliver_policy: from.map_or(DeliverPolicy::All, |start_time| {
                DeliverPolicy::ByStartTime { start_time }
            }),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut batch: Vec<Letter> = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(1), messages.next()).await;
        let Ok(Some(Ok(message))) = next else { break };
        let info = message.info().map_err(|e| anyhow::anyhow!(e))?;
        let (seq, at, remaining) = (info.stream_sequence, info.published, info.pending);
        if to.is_some_and(|to| at >= to) {
            break;
        }
        match Event::decode(message.payload.clone()) {
            Ok(event) => batch.push(Letter { seq, event }),
            Err(_) => report.unreadable += 1,
        }
        if batch.len() >= dest.tuning.batch_size || remaining == 0 {
            deliver(
                &stream,
                dest,
                std::mem::take(&mut batch),
                metrics,
                token,
                &mut report,
            )
            .await?;
        }
        if remaining == 0 {
            break;
        }
    }
    deliver(&stream, dest, batch, metrics, token, &mut report).await?;
    Ok(report)
}

async fn deliver(
    stream: &async_nats::jetstream::stream::Stream,
    dest: &Destination,
    letters: Vec<Letter>,
    metrics: &DestMetrics,
    token: &CancellationToken,
    report: &mut Report,
) -> anyhow::Result<()> {
    if letters.is_empty() {
        return Ok(());
    }
    let (seqs, events): (Vec<u64>, Vec<Event>) =
        letters.into_iter().map(|l| (l.seq, l.event)).unzip();
    let finals = deliver_with_retries(dest, &events, metrics, token).await;
    let mut open = 0;
    for (seq, fate) in seqs.into_iter().zip(finals) {
        match fate {
            // left in DEADLETTER for the next redrive
            None => open += 1,
            Some(Final::Delivered) => {
                stream.delete_message(seq).await?;
                metrics.delivered.inc();
                report.redriven += 1;
            }
            Some(Final::DeadLetter(reason)) => {
                tracing::warn!(destination = %dest.name, seq, %reason, "still refused, left in DEADLETTER");
                report.still_failing += 1;
            }
        }
    }
    interrupted("redrive", open)
}
