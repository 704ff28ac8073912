//! The projection consumer: a durable pull consumer (`analytics-query` by default) on EVENTS.
//! Pulled events are gathered into a write, folded ([`crate::fold`]) and written to Redis in one
//! round trip ([`Store::apply`]); their messages are acknowledged only after the write. A write
//! closes as soon as the stream has nothing more waiting (so a quiet stream is projected at
//! once), or when it holds `PROJECTION_WRITE_MAX` events, or `PROJECTION_LINGER` after its first
//! event, whichever comes first; while a backlog waits, writes therefore grow and a learner's
//! events merge into fewer Redis commands. Up to `PROJECTION_CONCURRENCY` writes are in hand at
//! once (their effects commute). Several replicas may share the consumer: every write commutes
//! and is applied once per event id.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Mutex,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use futures_util::{StreamExt, stream::FuturesUnordered};
use learntrail_proto::{Event, Message as _, subject};
use learntrail_runtime::{CancellationToken, bus::Bus, retry::Delays};

use crate::{
    fold::{FoldSettings, fold},
    metrics::Metrics,
    store::Store,
};

/// How the projection consumes.
#[derive(Debug, Clone)]
pub struct Settings {
    pub consumer: String,
    /// Events per pull request.
    pub batch: usize,
    /// Most events in one write.
    pub write_max: usize,
    /// Longest a write stays open for more events while a backlog waits.
    pub linger: Duration,
    /// Writes in hand at once.
    pub concurrency: usize,
    pub ack_wait: Duration,
    pub fold: FoldSettings,
}

/// Runs until `token` is cancelled; the batches in hand are finished first.
pub async fn run(
    bus: Bus,
    store: Store,
    settings: Settings,
    metrics: Metrics,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let mut delays = Delays::new(Duration::from_millis(200), Duration::from_secs(5));
    while !token.is_cancelled() {
        let messages = match consumer(&bus, &settings).await {
            Ok(consumer) => consumer
                .stream()
                .max_messages_per_batch(settings.batch)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(async_nats::Error::from),
            Err(err) => Err(err),
        };
        let messages = match messages {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(error = %err, "cannot consume EVENTS yet");
                if !delays.wait(&token).await {
                    break;
                }
                continue;
            }
        };
        delays.reset();
        let mut chunks = messages.ready_chunks(settings.batch);
        // writes in hand: Redis applies one while the next ones are gathered, decoded and folded
        let lag = std::sync::Mutex::new(InHand::default());
        let mut in_hand = FuturesUnordered::new();
        let mut open: Vec<jetstream::Message> = Vec::new();
        let mut caught_up = false;
        let mut deadline = Instant::now();
        let ended = loop {
            let room = in_hand.len() < settings.concurrency;
            if room && !open.is_empty() && (caught_up || open.len() >= settings.write_max) {
                let messages = std::mem::take(&mut open);
                in_hand.push(project(
                    &bus, &store, &settings, &metrics, &token, &lag, messages,
                ));
                continue;
            }
            tokio::select! {
                _ = token.cancelled() => break true,
                Some(()) = in_hand.next(), if !in_hand.is_empty() => {}
                _ = tokio::time::sleep_until(deadline), if room && !open.is_empty() => {
                    caught_up = true;
                }
                next = chunks.next(), if open.len() < settings.write_max => match next {
                    Some(chunk) => {
                        if open.is_empty() {
                            deadline = Instant::now() + settings.linger;
                        }
                        for message in chunk {
                            match message {
                                Ok(message) => {
                                    caught_up = message.info().is_ok_and(|i| i.pending == 0);
                                    open.push(message);
                                }
                                Err(err) => tracing::warn!(error = %err, "consumer stream error"),
                            }
                        }
                    }
                    None => break false,
                },
            }
        };
        if !open.is_empty() && !token.is_cancelled() {
            in_hand.push(project(
                &bus, &store, &settings, &metrics, &token, &lag, open,
            ));
        }
        // what is in hand is finished (written and acknowledged, or left for redelivery)
        while in_hand.next().await.is_some() {}
        if ended {
            break;
        }
    }
    Ok(())
}

async fn consumer(
    bus: &Bus,
    settings: &Settings,
) -> Result<jetstream::consumer::Consumer<pull::Config>, async_nats::Error> {
    let stream = bus.jetstream().get_stream(subject::EVENTS_STREAM).await?;
    Ok(stream
        .get_or_create_consumer(
            &settings.consumer,
            pull::Config {
                durable_name: Some(settings.consumer.clone()),
                description: Some("analytics-query: the Redis projection".into()),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                max_deliver: -1,
                // every write in hand, the one being gathered, and a pull on its way
                max_ack_pending: (settings.write_max * (settings.concurrency + 1) + settings.batch)
                    as i64,
                filter_subject: subject::EVENTS_SUBJECTS.into(),
                ..Default::default()
            },
        )
        .await?)
}

/// Folds and writes one batch, retrying the write until it succeeds (or shutdown: then the
/// messages stay unacknowledged and come again), then acknowledges it.
async fn project(
    bus: &Bus,
    store: &Store,
    settings: &Settings,
    metrics: &Metrics,
    token: &CancellationToken,
    lag: &Mutex<InHand>,
    messages: Vec<jetstream::Message>,
) {
    let Some(oldest) = messages
        .iter()
        .filter_map(|m| m.info().ok())
        .map(|info| info.published)
        .min()
    else {
        return;
    };
    if let Some(info) = messages.last().and_then(|m| m.info().ok()) {
        metrics.pending.set(info.pending as i64);
    }
    let write = {
        let mut lag = lag.lock().unwrap_or_else(|e| e.into_inner());
        let write = lag.start(SystemTime::from(oldest));
        metrics
            .oldest_unprojected_seconds
            .set(lag.age(SystemTime::now()).as_secs_f64());
        write
    };

    let received = messages.len();
    // past decoding only the events and the ack subjects are kept: a write holds thousands
    let acks: Vec<async_nats::Subject> = messages.iter().filter_map(|m| m.reply.clone()).collect();
    let mut ids = HashSet::new();
    let mut events = Vec::with_capacity(messages.len());
    for message in &messages {
        match Event::decode(message.payload.clone()) {
            Ok(event) => {
                if ids.insert(event.id.clone()) {
                    events.push(event);
                }
            }
            Err(err) => deadletter(bus, metrics, message, &err.to_string()).await,
        }
    }
    drop((messages, ids));
    let folded = || {
        events
            .iter()
            .map(|event| (event.id.clone(), fold(event, &settings.fold)))
            .collect::<Vec<_>>()
    };
    let mut delays = Delays::new(Duration::from_millis(100), Duration::from_secs(5));
    let already = loop {
        match store.apply(folded).await {
            Ok(already) => break already,
            Err(err) => {
                metrics.write_failures.inc();
                tracing::warn!(error = %err, events = events.len(), "cannot write the projection; retrying");
                if !delays.wait(token).await {
                    return;
                }
            }
        }
    };
    metrics.redeliveries_ignored.inc_by(already.len() as u64);
    for reply in acks {
        // what `jetstream::Message::ack` sends
        if let Err(err) = bus.client().publish(reply, AckKind::Ack.into()).await {
            tracing::warn!(error = %err, "ack failed; the event will come again (no effect)");
        }
    }
    metrics.projected.inc_by(events.len() as u64);
    metrics.write_events.observe(received as f64);
    let mut lag = lag.lock().unwrap_or_else(|e| e.into_inner());
    lag.finish(write);
    metrics
        .oldest_unprojected_seconds
        .set(lag.age(SystemTime::now()).as_secs_f64());
}

/// The writes in hand and the publish time of each one's oldest event. The age of the oldest
/// unprojected event is that of the oldest among them, so a write that finishes does not reset
/// it while an older one is still in hand.
#[derive(Debug, Default)]
struct InHand {
    next: u64,
    oldest: BTreeMap<u64, SystemTime>,
}

impl InHand {
    fn start(&mut self, oldest: SystemTime) -> u64 {
        self.next += 1;
        self.oldest.insert(self.next, oldest);
        self.next
    }

    fn finish(&mut self, write: u64) {
        self.oldest.remove(&write);
    }

    /// 0 when nothing is in hand.
    fn age(&self, now: SystemTime) -> Duration {
        self.oldest
            .values()
            .min()
            .and_then(|oldest| now.duration_since(*oldest).ok())
            .unwrap_or_default()
    }
}

async fn deadletter(bus: &Bus, metrics: &Metrics, message: &jetstream::Message, reason: &str) {
    let source = subject::parse_event_subject(&message.subject)
        .map_or("unknown", |(source, _)| source)
        .to_string();
    let id = message
        .info()
        .map(|i| format!("seq-{}", i.stream_sequence))
        .unwrap_or_default();
    let reason = format!("analytics-query: not an event: {reason}");
    match bus
        .deadletter(&source, &id, &reason, message.payload.clone())
        .await
    {
        Ok(_) => {
            metrics.deadlettered.inc();
        }
        Err(err) => tracing::warn!(error = %err, "cannot dead-letter a bad message"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_is_the_oldest_write_in_hand() {
        let now = SystemTime::now();
        let mut lag = InHand::default();
        let older = lag.start(now - Duration::from_secs(10));
        let newer = lag.start(now - Duration::from_secs(5));
        assert_eq!(lag.age(now), Duration::from_secs(10));
        lag.finish(newer);
        assert_eq!(
            lag.age(now),
            Duration::from_secs(10),
            "the older one is still in hand"
        );
        lag.finish(older);
        assert_eq!(lag.age(now), Duration::ZERO);
    }
}
