//! The archiver: a durable pull consumer on EVENTS appends each event to its partition's open
//! segment; segments are sealed at the end of their hour, after `ROTATE_INTERVAL`, or at
//! `ROTATE_MAX_BYTES`; the uploader puts each sealed segment into the store as one gzip NDJSON
//! object and only then acknowledges its messages. While the store is down, segments pile up
//! locally and are retried with backoff; nothing is acknowledged early.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use learntrail_proto::{Event, Message as _, subject, time};
use learntrail_runtime::{CancellationToken, bus::Bus};
use tokio::sync::Notify;

use crate::{
    layout::Partition,
    metrics::Metrics,
    segment::{OpenSegment, SegmentDir, first_seq_of, gzip, partition_of, read_sealed},
    store::Store,
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
}

/// How long sequences stay known after their object is stored and acked. A redelivery that the
/// server sent just before our ack reached it is already in the client's buffer when the acks'
/// flush returns, and is handled within moments; holding the sequences this long keeps such a
/// late copy from starting a second object.
const RETIRED_HOLD: Duration = Duration::from_secs(30);

/// Sequences received and not yet archived, or archived moments ago (so a redelivery is not
/// written twice), and the receipt time of each open or sealed segment's first event (for the
/// oldest-age metric), keyed by the segment's first sequence.
#[derive(Debug, Default)]
struct Pending {
    seqs: HashSet<u64, BuildHasherDefault<SeqHasher>>,
    oldest: BTreeMap<u64, DateTime<Utc>>,
    retired: std::collections::VecDeque<(Instant, Vec<u64>)>,
}

impl Pending {
    /// An archived segment's sequences: still known for `RETIRED_HOLD`.
    fn retire(&mut self, seqs: Vec<u64>, now: Instant) {
        self.retired.push_back((now, seqs));
        self.expire(now);
    }

    /// Forgets sequences archived more than `RETIRED_HOLD` ago.
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.retired.front() {
            if now.duration_since(*at) < RETIRED_HOLD {
                break;
            }
            let (_, seqs) = self.retired.pop_front().expect("just seen");
            for seq in seqs {
                self.seqs.remove(&seq);
            }
        }
    }
}

/// Stream sequences are already well spread integers: a multiply is hash enough (SipHash showed
/// up in profiles at 50k events/s).
#[derive(Debug, Default)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Shared = Arc<Mutex<Pending>>;

/// Runs until `token` is cancelled; then seals what is open and finishes the upload in progress.
pub async fn run(
    bus: Bus,
    store: Store,
    segments: SegmentDir,
    settings: Settings,
    metrics: Metrics,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let recovered = segments.recover()?;
    let pending: Shared = Arc::default();
    for path in segments.sealed()? {
        let sealed = match read_sealed(&path) {
            Ok(sealed) => sealed,
            Err(err) => {
                quarantine(&segments, &path, &err.into());
                continue;
            }
        };
        let mut state = pending.lock().expect("lock");
        state.oldest.insert(
            first_seq_of(&path),
            partition_of(&path)
                .and_then(|p| p.hour_end())
                .map_or_else(Utc::now, |end| end - chrono::Duration::hours(1)),
        );
        state.seqs.extend(sealed.seqs);
    }
    metrics
        .events_pending
        .set(pending.lock().expect("lock").seqs.len() as i64);
    if recovered > 0 {
        tracing::info!(recovered, "sealed segments left open by the last run");
    }
    let wake = Arc::new(Notify::new());
    let uploader = tokio::spawn(upload_loop(
        bus.clone(),
        store,
        segments.clone(),
        settings.clone(),
        metrics.clone(),
        pending.clone(),
        wake.clone(),
        token.clone(),
    ));
    let consumed = consume(
        &bus, &segments, &settings, &metrics, &pending, &wake, &token,
    )
    .await;
    wake.notify_one();
    uploader.await??;
    consumed
}

async fn consumer(
    bus: &Bus,
    settings: &Settings,
    token: &CancellationToken,
) -> Option<jetstream::consumer::Consumer<pull::Config>> {
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            let stream = bus.jetstream().get_stream(subject::EVENTS_STREAM).await?;
            let consumer = stream
                .get_or_create_consumer(
                    &settings.consumer,
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
                    },
                )
                .await?;
            Ok::<_, async_nats::Error>(consumer)
        };
        match attempt.await {
            Ok(consumer) => return Some(consumer),
            Err(err) => tracing::warn!(error = %err, "cannot set up the EVENTS consumer yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = token.cancelled() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn consume(
    bus: &Bus,
    segments: &SegmentDir,
    settings: &Settings,
    metrics: &Metrics,
    pending: &Shared,
    wake: &Notify,
    token: &CancellationToken,
) -> anyhow::Result<()> {
    let mut open: HashMap<Partition, OpenSegment> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    'connect: while !token.is_cancelled() {
        let Some(consumer) = consumer(bus, settings, token).await else {
            break;
        };
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(settings.fetch_batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(error = %err, "cannot start consuming");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                _ = token.cancelled() => break 'connect,
                _ = tick.tick() => seal_due(&mut open, settings, metrics, pending, wake)?,
                next = messages.next() => match next {
                    Some(Ok(message)) => {
                        if let Some(full) = handle(bus, segments, &mut open, settings, metrics, pending, message).await? {
                            seal(&mut open, &full, wake)?;
                        }
                    }
                    Some(Err(err)) => tracing::warn!(error = %err, "consumer stream error"),
                    None => continue 'connect,
                },
            }
        }
    }
    let partitions: Vec<Partition> = open.keys().cloned().collect();
    for partition in partitions {
        seal(&mut open, &partition, wake)?;
    }
    Ok(())
}

/// Writes one message to its segment; returns the partition when the segment is now full.
async fn handle(
    bus: &Bus,
    segments: &SegmentDir,
    open: &mut HashMap<Partition, OpenSegment>,
    settings: &Settings,
    metrics: &Metrics,
    pending: &Shared,
    message: jetstream::Message,
) -> anyhow::Result<Option<Partition>> {
    let info = message
        .info()
        .map_err(|e| anyhow::anyhow!("not a JetStream message: {e}"))?;
    let (seq, received) = (info.stream_sequence, info.published);
    if pending.lock().expect("lock").seqs.contains(&seq) {
        return Ok(None); // a redelivery of an event already in a segment
    }
    // (checked and inserted under separate locks: only this task inserts)
    let Some(ack_subject) = message.reply.as_ref().map(|r| r.to_string()) else {
        return Ok(None);
    };
    let partition = Partition::of(&message.subject, received);
    let decoded = Event::decode(message.payload.clone())
        .map_err(|err| format!("is not a learntrail.v1.Event: {err}"))
        .and_then(|mut event| {
            // both clocks: the source's occurred_at, and when the bus received it
            event
                .received_at
                .get_or_insert_with(|| time::timestamp(received));
            let json = event
                .to_json()
                .map_err(|err| format!("has no JSON form: {err}"))?;
            Ok(json)
        });
    let json = match decoded {
        Ok(json) => json,
        Err(problem) => {
            let reason = format!("stream sequence {seq} on {} {problem}", message.subject);
            // Not acked unless the dead letter is stored: redelivered after the ack wait.
            if let Err(err) = bus
                .deadletter(&partition.source, "", &reason, message.payload.clone())
                .await
            {
                tracing::warn!(error = %err, reason, "cannot dead-letter; the message stays unacked");
                return Ok(None);
            }
            if let Err(err) = message.ack().await {
                tracing::warn!(error = %err, "cannot ack a dead-lettered message");
            }
            metrics.deadlettered.inc();
            tracing::warn!(reason, "dead-lettered");
            return Ok(None);
        }
    };
    if !open.contains_key(&partition) {
        let segment = segments.open(partition.clone(), seq)?;
        pending.lock().expect("lock").oldest.insert(seq, received);
        open.insert(partition.clone(), segment);
    }
    let segment = open.get_mut(&partition).expect("just ensured");
    segment.append(seq, &ack_subject, &json)?;
    pending.lock().expect("lock").seqs.insert(seq);
    metrics.events_pending.inc();
    Ok((segment.bytes >= settings.rotate_max_bytes).then_some(partition))
}

fn seal(
    open: &mut HashMap<Partition, OpenSegment>,
    partition: &Partition,
    wake: &Notify,
) -> anyhow::Result<()> {
    if let Some(segment) = open.remove(partition) {
        segment.seal()?;
        wake.notify_one();
    }
    Ok(())
}

/// Seals segments whose hour is over or that are older than the rotation interval.
fn seal_due(
    open: &mut HashMap<Partition, OpenSegment>,
    settings: &Settings,
    metrics: &Metrics,
    pending: &Shared,
    wake: &Notify,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let due: Vec<Partition> = open
        .iter()
        .filter(|(partition, segment)| {
            segment.opened.elapsed() >= settings.rotate_interval
                || partition
                    .hour_end()
                    .is_some_and(|end| now >= end + chrono::Duration::seconds(1))
        })
        .map(|(p, _)| p.clone())
        .collect();
    for partition in due {
        seal(open, &partition, wake)?;
    }
    for segment in open.values_mut() {
        segment.flush()?;
    }
    let oldest = {
        let mut state = pending.lock().expect("lock");
        state.expire(Instant::now());
        state.oldest.values().min().copied()
    };
    metrics
        .oldest_unarchived_seconds
        .set(oldest.map_or(0.0, |t| (now - t).num_milliseconds() as f64 / 1000.0));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn upload_loop(
    bus: Bus,
    store: Store,
    segments: SegmentDir,
    settings: Settings,
    metrics: Metrics,
    pending: Shared,
    wake: Arc<Notify>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let mut failures = 0u32;
    loop {
        let mut failed = false;
        let sealed = segments.sealed().unwrap_or_else(|err| {
            tracing::warn!(error = %err, "cannot list the segment directory; will retry");
            failed = true;
            Vec::new()
        });
        for path in sealed {
            match upload_one(&bus, &store, &settings, &metrics, &pending, &path).await {
                Ok(()) => failures = 0,
                Err(err) if err.is::<UnreadableSegment>() => {
                    quarantine(&segments, &path, &err);
                }
                Err(err) => {
                    failures += 1;
                    failed = true;
                    metrics.upload_failures.inc();
                    tracing::warn!(error = %err, segment = %path.display(), failures, "upload failed; will retry");
                    break;
                }
            }
        }
        if token.is_cancelled() {
            return Ok(());
        }
        let wait = if failed {
            Duration::from_millis(250 * 2u64.pow(failures.min(8))).min(Duration::from_secs(60))
        } else {
            Duration::from_secs(5)
        };
        tokio::select! {
            _ = wake.notified(), if !failed => {}
            _ = tokio::time::sleep(wait) => {}
            _ = token.cancelled() => {
                // one last pass for what was sealed at shutdown
                for path in segments.sealed().unwrap_or_default() {
                    if upload_one(&bus, &store, &settings, &metrics, &pending, &path).await.is_err() {
                        break;
                    }
                }
                return Ok(());
            }
        }
    }
}

/// A sealed segment that cannot be read back (damaged on disk): set aside, not retried.
#[derive(Debug, thiserror::Error)]
#[error("unreadable segment: {0}")]
struct UnreadableSegment(String);

/// Moves a damaged segment out of the upload queue (renamed `.damaged`, kept for inspection).
/// Its messages were never acked, so JetStream redelivers them after the ack wait and they are
/// archived from there: nothing is lost.
fn quarantine(segments: &SegmentDir, path: &std::path::Path, err: &anyhow::Error) {
    tracing::error!(error = %err, segment = %path.display(), "damaged segment set aside; its events come again by redelivery");
    if let Err(err) = segments.set_aside(path) {
        tracing::error!(error = %err, segment = %path.display(), "cannot set the damaged segment aside");
    }
}

/// Uploads one sealed segment, acknowledges its messages, deletes it.
async fn upload_one(
    bus: &Bus,
    store: &Store,
    settings: &Settings,
    metrics: &Metrics,
    pending: &Shared,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let mut sealed = read_sealed(path).map_err(|e| UnreadableSegment(e.to_string()))?;
    let partition =
        partition_of(path).ok_or_else(|| UnreadableSegment("unrecognised segment name".into()))?;
    let key = partition.object_key(&settings.key_prefix, sealed.first(), sealed.last());
    let body = {
        let level = settings.gzip_level;
        let ndjson = std::mem::take(&mut sealed.ndjson);
        tokio::task::spawn_blocking(move || gzip(&ndjson, level)).await??
    };
    let size = body.len() as u64;
    let started = Instant::now();
    store.put(&key, body).await?;
    metrics
        .upload_seconds
        .observe(started.elapsed().as_secs_f64());
    for ack in &sealed.ack_subjects {
        bus.client().publish(ack.clone(), "+ACK".into()).await?;
    }
    tokio::time::timeout(Duration::from_secs(10), bus.client().flush())
        .await
        .map_err(|_| anyhow::anyhow!("acks not confirmed by NATS in time"))??;
    std::fs::remove_file(path)?;
    let count = sealed.seqs.len() as u64;
    {
        let mut state = pending.lock().expect("lock");
        state.oldest.remove(&first_seq_of(path));
        state.retire(sealed.seqs, Instant::now());
    }
    metrics.events_archived.inc_by(count);
    metrics.events_pending.dec_by(count as i64);
    metrics.bytes_uploaded.inc_by(size);
    metrics.objects_uploaded.inc();
    tracing::info!(key, events = count, bytes = size, "archived");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archived_sequences_stay_known_for_the_hold_then_go() {
        let mut pending = Pending::default();
        pending.seqs.extend([1, 2, 3]);
        let t0 = Instant::now();
        pending.retire(vec![1, 2], t0);
        assert!(
            pending.seqs.contains(&1),
            "a late redelivery of 1 is still recognised"
        );
        pending.expire(t0 + RETIRED_HOLD - Duration::from_millis(1));
        assert!(pending.seqs.contains(&2));
        pending.expire(t0 + RETIRED_HOLD);
        assert!(!pending.seqs.contains(&1) && !pending.seqs.contains(&2));
        assert!(pending.seqs.contains(&3), "not yet archived");
        assert!(pending.retired.is_empty());
    }
}
