//! The archiver: a durable pull consumer on EVENTS appends each event to its partition's open
//! segment; segments are sealed after `ROTATE_INTERVAL`, at `ROTATE_MAX_BYTES`, or once their
//! hour is over and drained (the stream has moved past it, or the consumer has caught up); the
//! [`uploader`](crate::uploader) stores each sealed segment as one object and only then
//! acknowledges its messages, awaiting the server's confirmation.
//!
//! Nothing lost, nothing doubled: a sequence is known from the moment it is written to a segment
//! until the hold (at least the ack wait) has passed after its acknowledgement was confirmed, and
//! a redelivery of a known sequence is not written again. A segment set aside unarchived releases
//! its sequences, so their redeliveries are archived without a restart. A failure to write
//! segments (disk full, an I/O error) is fatal: it is logged, `/readyz` turns false, and the
//! process ends with an error so the orchestrator restarts it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use learntrail_proto::{Event, Message as _, subject, time};
use learntrail_runtime::{CancellationToken, bus::Bus, retry::Delays};
use tokio::sync::Notify;

use crate::{
    layout::Partition,
    metrics::Metrics,
    pending::{Pending, Shared},
    segment::{OpenSegment, SegmentDir, first_seq_of, partition_of, scan},
    store::Store,
    uploader::{self, Uploader},
};

/// How the archiver rotates and names.
#[derive(Debug, Clone)]
pub struct Settings {
    pub consumer: String,
    pub rotate_interval: Duration,
    pub rotate_max_bytes: u64,
    pub key_prefix: String,
    pub gzip_level: u32,
    pub fetch_batch: usize,
    pub ack_wait: Duration,
    pub max_pending: i64,
    pub faults: Arc<Faults>,
}

impl Settings {
    /// How long archived sequences stay known: the ack wait (a redelivery can be on its way
    /// for that long before our acknowledgement is confirmed), and at least 30 s.
    pub fn hold(&self) -> Duration {
        self.ack_wait.max(Duration::from_secs(30))
    }
}

/// Faults tests switch on to show what the service does when the world misbehaves.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Faults {
    /// Acknowledgements are lost on their way to the server (never confirmed).
    pub lose_acks: AtomicBool,
}

/// What `/readyz` reports: NATS ready, the consumer consuming, the store answering, and no
/// fatal error.
#[derive(Debug, Default)]
pub struct Readiness {
    consuming: AtomicBool,
    store: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
            && self.store.load(Ordering::Relaxed)
            && self.failure().is_none()
    }

    pub(crate) fn set_consuming(&self, on: bool) {
        self.consuming.store(on, Ordering::Relaxed);
    }

    pub(crate) fn set_store(&self, reachable: bool) {
        self.store.store(reachable, Ordering::Relaxed);
    }

    pub(crate) fn fail(&self, failure: String) {
        *self.failure.lock().expect("lock") = Some(failure);
    }

    /// The fatal error, once there is one.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("lock").clone()
    }
}

/// Runs until `token` is cancelled (then seals what is open and uploads it), or until writing
/// segments fails (then cancels `token` and returns the error).
pub async fn run(
    bus: Bus,
    store: Store,
    segments: SegmentDir,
    settings: Settings,
    metrics: Metrics,
    ready: Arc<Readiness>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let recovered = segments.recover().context("cannot recover open segments")?;
    if recovered > 0 {
        tracing::info!(recovered, "sealed segments left open by the last run");
    }
    let pending = Pending::shared(settings.hold());
    load(&segments, &pending, &metrics)?;
    let wake = Arc::new(Notify::new());
    let finish = CancellationToken::new();
    let uploader = tokio::spawn(
        Uploader {
            bus: bus.clone(),
            store,
            segments: segments.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            pending: pending.clone(),
            ready: ready.clone(),
            wake: wake.clone(),
        }
        .run(finish.clone()),
    );
    let mut consumer = Consumer {
        bus: &bus,
        segments: &segments,
        settings: &settings,
        metrics: &metrics,
        pending: &pending,
        wake: &wake,
        ready: &ready,
        open: HashMap::new(),
        clock: StreamClock::default(),
    };
    let consumed = consumer.consume(&token).await;
    if let Err(err) = &consumed {
        let failure = format!("{err:#}");
        ready.fail(failure.clone());
        tracing::error!(
            error = failure,
            "cannot write segments: archiving stopped; exiting so that the service is restarted"
        );
        token.cancel();
    }
    finish.cancel();
    wake.notify_one();
    uploader.await.context("the uploader panicked")?;
    consumed
}

/// Sealed segments left by the last run: their sequences are pending again.
fn load(segments: &SegmentDir, pending: &Shared, metrics: &Metrics) -> anyhow::Result<()> {
    for path in segments.sealed().context("cannot list SEGMENT_DIR")? {
        let seqs = match scan(&path) {
            Ok(seqs) => seqs,
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                uploader::set_aside(segments, &path, &err.to_string(), metrics);
                continue;
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        let received = partition_of(&path)
            .and_then(|p| p.hour_end())
            .map_or_else(Utc::now, |end| end - chrono::Duration::hours(1));
        pending
            .lock()
            .expect("lock")
            .load(first_seq_of(&path), seqs, received);
    }
    metrics
        .events_pending
        .set(pending.lock().expect("lock").len() as i64);
    Ok(())
}

/// How far the stream has been read: the newest receipt time seen, and whether the last message
/// was the last one pending.
#[derive(Debug, Default, Clone, Copy)]
struct StreamClock {
    newest: Option<DateTime<Utc>>,
    caught_up: bool,
}

/// Whether an open segment is due to be sealed: it is older than the rotation interval, or its
/// hour is over and drained: the stream has moved past the hour, or the consumer has caught up
/// and the hour ended a second ago. While catching up after downtime, a past hour is sealed once,
/// when the stream moves past it, not on every tick.
fn due(
    hour_end: Option<DateTime<Utc>>,
    age: Duration,
    rotate_interval: Duration,
    clock: StreamClock,
    now: DateTime<Utc>,
) -> bool {
    if age >= rotate_interval {
        return true;
    }
    let Some(end) = hour_end else { return false };
    clock.newest.is_some_and(|newest| newest >= end)
        || (clock.caught_up && now >= end + chrono::Duration::seconds(1))
}

struct Consumer<'a> {
    bus: &'a Bus,
    segments: &'a SegmentDir,
    settings: &'a Settings,
    metrics: &'a Metrics,
    pending: &'a Shared,
    wake: &'a Notify,
    ready: &'a Readiness,
    open: HashMap<Partition, OpenSegment>,
    clock: StreamClock,
}

impl Consumer<'_> {
    async fn create(
        &self,
        token: &CancellationToken,
    ) -> Option<jetstream::consumer::Consumer<pull::Config>> {
        let mut delays = Delays::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match self.create_once().await {
                Ok(consumer) => return Some(consumer),
                Err(err) => tracing::warn!(error = %err, "cannot set up the EVENTS consumer yet"),
            }
            if !delays.wait(token).await {
                return None;
            }
        }
    }

    /// Creates the durable consumer, or updates it to the configured settings.
    async fn create_once(
        &self,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, async_nats::Error> {
        let stream = self
            .bus
            .jetstream()
            .get_stream(subject::EVENTS_STREAM)
            .await?;
        Ok(stream
            .create_consumer(consumer_config(self.settings))
            .await?)
    }

    async fn consume(&mut self, token: &CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut delays = Delays::new(Duration::from_millis(200), Duration::from_secs(5));
        'connect: while !token.is_cancelled() {
            self.ready.set_consuming(false);
            let Some(consumer) = self.create(token).await else {
                break;
            };
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(self.settings.fetch_batch)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot start consuming");
                    if !delays.wait(token).await {
                        break;
                    }
                    continue;
                }
            };
            delays.reset();
            self.ready.set_consuming(true);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break 'connect,
                    _ = tick.tick() => self.seal_due()?,
                    next = messages.next() => match next {
                        Some(Ok(message)) => self.handle(message).await?,
                        Some(Err(err)) => tracing::warn!(error = %err, "consumer stream error"),
                        None => continue 'connect,
                    },
                }
            }
        }
        self.ready.set_consuming(false);
        let partitions: Vec<Partition> = self.open.keys().cloned().collect();
        for partition in partitions {
            self.seal(&partition)?;
        }
        Ok(())
    }

    /// Writes one message to its segment (or dead-letters it); an error is fatal.
    async fn handle(&mut self, message: jetstream::Message) -> anyhow::Result<()> {
        let info = match message.info() {
            Ok(info) => info,
            Err(err) => {
                tracing::warn!(error = %err, subject = %message.subject, "not a JetStream message; ignored");
                return Ok(());
            }
        };
        let (seq, received) = (info.stream_sequence, info.published);
        self.clock.newest = self.clock.newest.max(Some(received));
        self.clock.caught_up = info.pending == 0;
        self.metrics.deliveries.inc();
        // a sequence we already hold is not written again, whatever its delivery count: a
        // consumer whose leader died before it recorded a delivery, or a consumer made anew,
        // sends it again as a first delivery
        if self.pending.lock().expect("lock").contains(seq) {
            self.metrics.redeliveries_ignored.inc();
            return Ok(());
        }
        let Some(ack_subject) = message.reply.as_ref().map(|r| r.to_string()) else {
            return Ok(());
        };
        let partition = Partition::of(&message.subject, received);
        let json = match event_json(&message.payload, received) {
            Ok(json) => json,
            Err(problem) => {
                let reason = format!("stream sequence {seq} on {} {problem}", message.subject);
                self.deadletter(&message, &partition, reason).await;
                return Ok(());
            }
        };
        if !self.open.contains_key(&partition) {
            let segment = self
                .segments
                .open(partition.clone(), seq)
                .context("cannot open a segment")?;
            self.pending
                .lock()
                .expect("lock")
                .open(segment.first_seq, received);
            self.open.insert(partition.clone(), segment);
        }
        let segment = self.open.get_mut(&partition).expect("just ensured");
        segment
            .append(seq, &ack_subject, &json)
            .context("cannot append to a segment")?;
        let held = {
            let mut pending = self.pending.lock().expect("lock");
            pending.add(segment.first_seq, seq);
            pending.len()
        };
        self.metrics.events_pending.inc();
        if segment.bytes >= self.settings.rotate_max_bytes {
            self.seal(&partition)?;
        } else if held >= self.settings.max_pending.max(1) as u64 {
            // JetStream sends no more until some are acknowledged, and an event is acknowledged
            // once its segment is uploaded: what is open is sealed now, not when it is due
            let open: Vec<Partition> = self.open.keys().cloned().collect();
            for partition in open {
                self.seal(&partition)?;
            }
        }
        Ok(())
    }

    /// Not acked unless the dead letter is stored: otherwise redelivered after the ack wait.
    async fn deadletter(
        &self,
        message: &jetstream::Message,
        partition: &Partition,
        reason: String,
    ) {
        if let Err(err) = self
            .bus
            .deadletter(&partition.source, "", &reason, message.payload.clone())
            .await
        {
            tracing::warn!(error = %err, reason, "cannot dead-letter; the message stays unacked");
            return;
        }
        if let Err(err) = message.double_ack().await {
            tracing::warn!(error = %err, "cannot ack a dead-lettered message");
        }
        self.metrics.deadlettered.inc();
        tracing::warn!(reason, "dead-lettered");
    }

    fn seal(&mut self, partition: &Partition) -> anyhow::Result<()> {
        if let Some(segment) = self.open.remove(partition) {
            segment.seal().context("cannot seal a segment")?;
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Seals due segments, hands the rest to the OS, updates the oldest-age metric.
    fn seal_due(&mut self) -> anyhow::Result<()> {
        let now = Utc::now();
        let due: Vec<Partition> = self
            .open
            .iter()
            .filter(|(partition, segment)| {
                due(
                    partition.hour_end(),
                    segment.opened.elapsed(),
                    self.settings.rotate_interval,
                    self.clock,
                    now,
                )
            })
            .map(|(p, _)| p.clone())
            .collect();
        for partition in due {
            self.seal(&partition)?;
        }
        for segment in self.open.values_mut() {
            segment.flush().context("cannot write a segment")?;
        }
        let oldest = {
            let mut state = self.pending.lock().expect("lock");
            state.expire(Instant::now());
            state.oldest()
        };
        self.metrics
            .oldest_unarchived_seconds
            .set(oldest.map_or(0.0, |t| (now - t).num_milliseconds() as f64 / 1000.0));
        Ok(())
    }
}

/// The durable consumer's configuration; applied at every start (create or update).
pub fn consumer_config(settings: &Settings) -> pull::Config {
    pull::Config {
        durable_name: Some(settings.consumer.clone()),
        description: Some("s3-rotator: archives every event".into()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: -1,
        max_ack_pending: settings.max_pending,
        filter_subject: subject::EVENTS_SUBJECTS.into(),
        ..Default::default()
    }
}

/// The event's canonical JSON with both clocks, or why it has none.
fn event_json(payload: &bytes::Bytes, received: DateTime<Utc>) -> Result<String, String> {
    let mut event = Event::decode(payload.clone())
        .map_err(|err| format!("is not a learntrail.v1.Event: {err}"))?;
    event
        .received_at
        .get_or_insert_with(|| time::timestamp(received));
    event
        .to_json()
        .map_err(|err| format!("has no JSON form: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_past_hour_is_sealed_once_drained_not_on_every_tick() {
        let end = Some(at("2026-11-24T17:00:00Z"));
        let interval = Duration::from_secs(3600);
        let young = Duration::from_secs(1);
        let now = at("2026-11-25T09:00:00Z"); // catching up after a night down
        let catching_up = StreamClock {
            newest: Some(at("2026-11-24T16:59:00Z")),
            caught_up: false,
        };
        assert!(
            !due(end, young, interval, catching_up, now),
            "the hour's events are still coming"
        );
        let moved_on = StreamClock {
            newest: Some(at("2026-11-24T17:00:00.2Z")),
            ..catching_up
        };
        assert!(
            due(end, young, interval, moved_on, now),
            "the stream left the hour"
        );
        let idle = StreamClock {
            caught_up: true,
            ..catching_up
        };
        assert!(!due(
            end,
            young,
            interval,
            idle,
            at("2026-11-24T17:00:00.5Z")
        ));
        assert!(due(end, young, interval, idle, at("2026-11-24T17:00:01Z")));
        assert!(
            due(end, interval, interval, catching_up, now),
            "rotation interval"
        );
    }
}
