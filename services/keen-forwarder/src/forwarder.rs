//! One destination's forwarding: a durable pull consumer on EVENTS with the destination's subject
//! filter feeds batches (closed at `batch_size` events, `batch_bytes` bytes or `linger` after the
//! first event) to at most `concurrency` deliveries at once. A delivery retries the events not
//! accepted, with exponential backoff and jitter (never sooner than a `Retry-After`), keeping
//! them in progress meanwhile; an event is acknowledged only once the destination accepted it,
//! or once it is in DEADLETTER (`deadletter.<destination>`, the original event with the reason)
//! after a refusal or `max_attempts` attempts. Destinations never share a consumer, so a slow or
//! failing one holds back nobody else.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use learntrail_proto::{Event, Message as _, subject};
use learntrail_runtime::{CancellationToken, bus::Bus, retry::Delays};
use tokio::{sync::Semaphore, task::JoinSet};

use crate::{destination::Destination, metrics::DestMetrics, sink::Outcome};

/// Where an event ends after all its attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    Delivered,
    DeadLetter(String),
}

/// Delivers `events` to `dest`, retrying what was not accepted: each event's fate, in order.
/// When `token` is cancelled during a retry's wait, the events still waiting have none (`None`:
/// the caller leaves them for redelivery) while those already accepted or refused keep theirs,
/// so an event the destination holds is not sent to it again.
pub async fn deliver_with_retries(
    dest: &Destination,
    events: &[Event],
    metrics: &DestMetrics,
    token: &CancellationToken,
) -> Vec<Option<Final>> {
    let tuning = &dest.tuning;
    let mut finals: Vec<Option<Final>> = vec![None; events.len()];
    let mut todo: Vec<usize> = (0..events.len()).collect();
    let mut delays = Delays::new(tuning.retry_min, tuning.retry_max);
    for attempt in 1..=tuning.max_attempts {
        let outcomes = if todo.len() == events.len() {
            dest.sink.deliver(events).await
        } else {
            let retry: Vec<Event> = todo.iter().map(|&i| events[i].clone()).collect();
            dest.sink.deliver(&retry).await
        };
        let mut again = Vec::new();
        let mut wait = Duration::ZERO;
        let mut reason = String::new();
        for (&i, outcome) in todo.iter().zip(outcomes) {
            match outcome {
                Outcome::Delivered => finals[i] = Some(Final::Delivered),
                Outcome::Rejected(why) => finals[i] = Some(Final::DeadLetter(why)),
                Outcome::Failed {
                    reason: why,
                    retry_after,
                } => {
                    again.push(i);
                    wait = wait.max(retry_after.unwrap_or_default());
                    reason = why;
                }
            }
        }
        if again.is_empty() {
            break;
        }
        metrics.requests_failed.inc();
        if attempt == tuning.max_attempts {
            let why = format!("not accepted after {attempt} attempts: {reason}");
            for i in again {
                finals[i] = Some(Final::DeadLetter(why.clone()));
            }
            break;
        }
        metrics.retried.inc_by(again.len() as u64);
        let delay = delays.next_delay().max(wait);
        tracing::warn!(destination = %dest.name, events = again.len(), attempt, ?delay, %reason, "delivery failed, retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = token.cancelled() => break,
        }
        todo = again;
    }
    finals
}

/// The error for a backfill or redrive that shutdown interrupted (after what was final was
/// recorded).
pub fn interrupted(what: &str, open: usize) -> anyhow::Result<()> {
    if open > 0 {
        anyhow::bail!("{what} interrupted with {open} events not yet delivered");
    }
    Ok(())
}

/// The durable consumer's configuration; applied at every start (create or update).
pub fn consumer_config(dest: &Destination) -> pull::Config {
    let t = &dest.tuning;
    pull::Config {
        durable_name: Some(dest.consumer()),
        description: Some(format!(
            "keen-forwarder: delivers {} to {}",
            t.subjects, dest.name
        )),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: t.ack_wait,
        max_deliver: -1,
        max_ack_pending: (t.batch_size * (t.concurrency + 1)).max(1000) as i64,
        filter_subject: t.subjects.clone(),
        ..Default::default()
    }
}

/// Stream sequences in flight with their publish time, for the oldest-undelivered gauge.
type InFlight = Arc<Mutex<BTreeMap<u64, DateTime<Utc>>>>;

/// Forwards to `dest` until `token` is cancelled; deliveries under way finish first.
pub async fn run(bus: Bus, dest: Arc<Destination>, metrics: DestMetrics, token: CancellationToken) {
    let in_flight: InFlight = Arc::default();
    let lag = tokio::spawn(watch_lag(
        bus.clone(),
        dest.clone(),
        metrics.clone(),
        in_flight.clone(),
        token.clone(),
    ));
    let slots = Arc::new(Semaphore::new(dest.tuning.concurrency));
    let mut tasks = JoinSet::new();
    let mut delays = Delays::new(Duration::from_millis(200), Duration::from_secs(5));
    'connect: while !token.is_cancelled() {
        let consumer = match create(&bus, &dest).await {
            Ok(consumer) => consumer,
            Err(err) => {
                tracing::warn!(destination = %dest.name, error = %err, "cannot set up the consumer yet");
                if !delays.wait(&token).await {
                    break;
                }
                continue;
            }
        };
        let messages = consumer
            .stream()
            .max_messages_per_batch(dest.tuning.batch_size.min(10_000))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(destination = %dest.name, error = %err, "cannot start consuming");
                if !delays.wait(&token).await {
                    break;
                }
                continue;
            }
        };
        delays.reset();
        tracing::info!(destination = %dest.name, consumer = %dest.consumer(), subjects = %dest.tuning.subjects, "forwarding");
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let at = deadline;
            let linger = async move {
                match at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let full = tokio::select! {
                _ = token.cancelled() => {
                    nak(&batch).await;
                    break 'connect;
                }
                _ = linger => true,
                next = messages.next() => match next {
                    Some(Ok(message)) => {
                        bytes += message.payload.len() as u64;
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + dest.tuning.linger);
                        batch.push(message);
                        batch.len() >= dest.tuning.batch_size || bytes >= dest.tuning.batch_bytes
                    }
                    Some(Err(err)) => {
                        tracing::warn!(destination = %dest.name, error = %err, "consumer stream error");
                        false
                    }
                    None => {
                        nak(&batch).await;
                        continue 'connect;
                    }
                },
            };
            if full && !batch.is_empty() {
                // the batch waits for a delivery slot in its own task, kept in progress there:
                // waiting here would leave it (and what the stream holds) to be redelivered
                // after the ack wait, and delivered twice. What waits is bounded by the
                // consumer's max_ack_pending.
                let work = Delivery {
                    bus: bus.clone(),
                    dest: dest.clone(),
                    metrics: metrics.clone(),
                    in_flight: in_flight.clone(),
                    token: token.clone(),
                    slots: slots.clone(),
                };
                let messages = std::mem::take(&mut batch);
                tasks.spawn(async move { work.handle(messages).await });
                (bytes, deadline) = (0, None);
            }
            while tasks.try_join_next().is_some() {}
        }
    }
    while tasks.join_next().await.is_some() {}
    lag.abort();
}

async fn create(
    bus: &Bus,
    dest: &Destination,
) -> Result<jetstream::consumer::Consumer<pull::Config>, async_nats::Error> {
    let stream = bus.jetstream().get_stream(subject::EVENTS_STREAM).await?;
    Ok(stream.create_consumer(consumer_config(dest)).await?)
}

/// Hands messages straight back for redelivery (at shutdown, or when the stream broke).
async fn nak(messages: &[jetstream::Message]) {
    for message in messages {
        let _ = message.ack_with(AckKind::Nak(None)).await;
    }
}

struct Delivery {
    bus: Bus,
    dest: Arc<Destination>,
    metrics: DestMetrics,
    in_flight: InFlight,
    token: CancellationToken,
    /// Deliveries in flight at once (`concurrency`).
    slots: Arc<Semaphore>,
}

impl Delivery {
    async fn handle(&self, messages: Vec<jetstream::Message>) {
        let mut kept = Vec::with_capacity(messages.len());
        let mut events = Vec::with_capacity(messages.len());
        for message in messages {
            match Event::decode(message.payload.clone()) {
                Ok(event) => {
                    events.push(event);
                    kept.push(message);
                }
                Err(err) => {
                    let reason = format!("is not a learntrail.v1.Event: {err}");
                    self.deadletter(&message, &reason).await;
                }
            }
        }
        if kept.is_empty() {
            return;
        }
        let published: Vec<Option<(u64, DateTime<Utc>)>> = kept
            .iter()
            .map(|m| m.info().ok().map(|i| (i.stream_sequence, i.published)))
            .collect();
        {
            let mut in_flight = self.in_flight.lock().expect("not poisoned");
            in_flight.extend(published.iter().flatten().copied());
        }
        self.metrics.batch_size.observe(kept.len() as f64);
        let Some(finals) = self.deliver_keeping_in_progress(&kept, &events).await else {
            nak(&kept).await;
            self.forget(&published);
            return;
        };
        for ((message, fate), published) in kept.iter().zip(finals).zip(&published) {
            match fate {
                // shutdown came while it waited for another attempt: it comes again
                None => {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
                Some(Final::Delivered) => {
                    if message.ack().await.is_ok() {
                        self.metrics.delivered.inc();
                        if let Some((_, at)) = published {
                            let age = (Utc::now() - *at).num_milliseconds().max(0) as f64 / 1000.0;
                            self.metrics.delivery_seconds.observe(age);
                        }
                    }
                }
                Some(Final::DeadLetter(reason)) => self.deadletter(message, &reason).await,
            }
        }
        self.forget(&published);
    }

    /// Waits for a delivery slot, then delivers with retries, telling JetStream all the while
    /// that the messages are still being worked on. `None` at shutdown before the first
    /// attempt.
    async fn deliver_keeping_in_progress(
        &self,
        messages: &[jetstream::Message],
        events: &[Event],
    ) -> Option<Vec<Option<Final>>> {
        let period = (self.dest.tuning.ack_wait / 3).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let delivery = async {
            let _slot = tokio::select! {
                slot = self.slots.clone().acquire_owned() => slot.ok()?,
                _ = self.token.cancelled() => return None,
            };
            Some(deliver_with_retries(&self.dest, events, &self.metrics, &self.token).await)
        };
        tokio::pin!(delivery);
        loop {
            tokio::select! {
                finals = &mut delivery => return finals,
                _ = tick.tick() => {
                    for message in messages {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                }
            }
        }
    }

    /// Puts the original message on `deadletter.<destination>` with the reason, then acks it;
    /// when DEADLETTER cannot take it the message is left for redelivery.
    async fn deadletter(&self, message: &jetstream::Message, reason: &str) {
        tracing::warn!(destination = %self.dest.name, %reason, "dead-lettering an event");
        match self
            .bus
            .deadletter(&self.dest.name, "", reason, message.payload.clone())
            .await
        {
            Ok(_) => {
                self.metrics.deadlettered.inc();
                let _ = message.ack().await;
            }
            Err(err) => {
                tracing::warn!(destination = %self.dest.name, error = %err, "cannot dead-letter, left for redelivery")
            }
        }
    }

    fn forget(&self, published: &[Option<(u64, DateTime<Utc>)>]) {
        let mut in_flight = self.in_flight.lock().expect("not poisoned");
        for (seq, _) in published.iter().flatten() {
            in_flight.remove(seq);
        }
    }
}

/// Every 2 s: events pending for the destination (in the stream and in flight) and the age of
/// the oldest not yet delivered: the oldest in flight, or, with none in flight but some pending,
/// the next message after the consumer's last delivery (exact for the default `events.>` filter,
/// an upper bound of the age otherwise).
async fn watch_lag(
    bus: Bus,
    dest: Arc<Destination>,
    metrics: DestMetrics,
    in_flight: InFlight,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    while !token.is_cancelled() {
        tick.tick().await;
        let Ok(stream) = bus.jetstream().get_stream(subject::EVENTS_STREAM).await else {
            continue;
        };
        let Ok(info) = stream.consumer_info(dest.consumer()).await else {
            continue;
        };
        metrics
            .pending
            .set((info.num_pending + info.num_ack_pending as u64) as i64);
        let mut oldest = in_flight
            .lock()
            .expect("not poisoned")
            .values()
            .min()
            .copied();
        if oldest.is_none() && info.num_pending > 0 {
            let next = stream
                .get_raw_message(info.delivered.stream_sequence + 1)
                .await;
            oldest = next.ok().map(|message| message.time);
        }
        let age = oldest.map_or(0.0, |t| {
            (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
        });
        metrics.oldest_undelivered_seconds.set(age);
    }
}
