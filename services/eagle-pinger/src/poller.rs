//! The poller: one task per meter this replica owns ([`Shard`]), each asleep until its slot —
//! a stable offset inside the poll interval ([`schedule`]) — so meters never fire at once and a
//! slow, refusing or broken meter holds back only itself.
//!
//! After a poll a meter's next time depends on what happened:
//! - a reading (published as an `EnergyReading` on `events.energy.reading`, counters updated in
//!   Redis) or a well-formed reply without a value: its next slot;
//! - refused credentials: `AUTH_BACKOFF` (15 min), or sooner when its record is updated;
//! - timeout, connection error, 5xx, an Eagle-200 without an electric meter (`no_meter`):
//!   exponential backoff with jitter up to `MAX_BACKOFF`;
//! - a malformed reply: the same backoff, and a dead letter on `deadletter.energy` with the raw
//!   body (bounded) and the reason.
//!
//! The registry is re-read when its version changes (checked twice an interval, at most every
//! second), so additions, updates and deletions take effect within one interval.
//!
//! An Eagle-200's meter address (from `device_list`) is kept per meter and registration
//! revision, shared by its scheduled polls and `GET /api/event` on this replica, so a poll is one
//! `device_query`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use learntrail_proto::{
    Event, Payload, id, subject,
    time::timestamp,
    v1::{Context, EnergyReading},
};
use learntrail_runtime::{CancellationToken, bus::Bus, retry::Delays};
use tokio::time::Instant;

use crate::{
    client::{EagleClient, Meter, MeterCache, PollError},
    decode::Reading,
    metrics::Metrics,
    record::{Api, StoredRecord},
    registry::Registry,
    schedule::{self, Shard},
};

/// The most of a malformed reply kept in its dead letter.
pub const DEADLETTER_BODY_BYTES: usize = 4096;

/// How the poller paces itself.
#[derive(Debug, Clone)]
pub struct Pacing {
    pub interval: Duration,
    pub auth_backoff: Duration,
    pub max_backoff: Duration,
    pub shard: Shard,
    /// A full re-read of the registry even when its version did not change.
    pub full_reload: Duration,
}

impl Pacing {
    fn check_every(&self) -> Duration {
        (self.interval / 2).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// What one poll gave.
pub enum Outcome {
    /// A reading; `event_id` when the bus stored it.
    Reading {
        reading: Reading,
        event_id: Option<String>,
    },
    Failed(PollError),
}

/// Everything the meter tasks share.
pub struct Poller {
    pub registry: Registry,
    pub client: EagleClient,
    pub bus: Bus,
    pub metrics: Metrics,
    pub pacing: Pacing,
    base: Instant,
    loaded: AtomicBool,
    /// Eagle-200 meter addresses by cloud id, with the record revision they were learned under
    /// (a new registration starts over). Entries of meters this replica does not poll go at
    /// the next registry reload.
    caches: Mutex<HashMap<String, (u64, MeterCache)>>,
    /// True after a reading the bus did not store, until one is stored again: the first
    /// failure of an outage is a warning, the rest are debug.
    publish_failing: AtomicBool,
}

impl Poller {
    pub fn new(
        registry: Registry,
        client: EagleClient,
        bus: Bus,
        metrics: Metrics,
        pacing: Pacing,
    ) -> Self {
        Self {
            registry,
            client,
            bus,
            metrics,
            pacing,
            base: Instant::now(),
            loaded: AtomicBool::new(false),
            caches: Mutex::default(),
            publish_failing: AtomicBool::new(false),
        }
    }

    /// True once the registry has been read.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Runs until `token` is cancelled, keeping one task per owned meter.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let mut tasks: HashMap<String, Task> = HashMap::new();
        let mut seen: Option<u64> = None;
        let mut last_full = Instant::now();
        // readings polled before the streams exist would be lost
        while !self.bus.is_ready() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = token.cancelled() => return,
            }
        }
        loop {
            match self.registry.version().await {
                Ok(version)
                    if seen != Some(version) || last_full.elapsed() >= self.pacing.full_reload =>
                {
                    match self.reconcile(&mut tasks).await {
                        Ok(()) => {
                            seen = Some(version);
                            last_full = Instant::now();
                            self.loaded.store(true, Ordering::Relaxed);
                        }
                        Err(err) => tracing::warn!(error = %err, "cannot read the meter registry"),
                    }
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "cannot read the registry version"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.pacing.check_every()) => {}
                _ = token.cancelled() => break,
            }
        }
        tracing::info!(meters = tasks.len(), "poller stopped");
    }

    async fn reconcile(
        self: &Arc<Self>,
        tasks: &mut HashMap<String, Task>,
    ) -> Result<(), crate::registry::RegistryError> {
        let ids: Vec<String> = self
            .registry
            .all_ids()
            .await?
            .into_iter()
            .filter(|id| self.pacing.shard.owns(id))
            .collect();
        let records = self.registry.get_many(&ids).await?;
        let before = tasks.len();
        let mut wanted: HashMap<String, StoredRecord> = records
            .into_iter()
            .map(|r| (r.cloud_id.clone(), r))
            .collect();
        tasks.retain(|id, task| wanted.get(id).is_some_and(|r| r.rev == task.rev));
        self.lock_caches()
            .retain(|id, (rev, _)| wanted.get(id).is_some_and(|r| r.rev == *rev));
        for (id, record) in wanted.drain() {
            if tasks.contains_key(&id) {
                continue;
            }
            let rev = record.rev;
            let handle = tokio::spawn(Arc::clone(self).meter_loop(record));
            tasks.insert(id, Task { rev, handle });
        }
        tracing::debug!(before, after = tasks.len(), "registry reloaded");
        Ok(())
    }

    /// One meter, forever: sleep until due, poll, record, pick the next time.
    async fn meter_loop(self: Arc<Self>, record: StoredRecord) {
        let mut state = StateGuard::new(self.metrics.clone());
        let mut status = record.poll.clone().unwrap_or_default();
        let meter = match self.meter(&record) {
            Ok(meter) => meter,
            Err(err) => {
                tracing::error!(cloud_id = %record.cloud_id, error = %err, "cannot decrypt the meter's password");
                state.set("undecryptable");
                status.state = "undecryptable".into();
                status.last_error = Some(err.to_string());
                let _ = self
                    .registry
                    .record_poll(&record.cloud_id, record.rev, Some(&status), None)
                    .await;
                return std::future::pending().await;
            }
        };
        let pacing = &self.pacing;
        let offset = schedule::offset(&record.cloud_id, pacing.interval);
        let mut delays = Delays::new(pacing.interval, pacing.max_backoff);
        let mut due = schedule::next_slot(self.base, offset, pacing.interval, Instant::now());
        loop {
            tokio::time::sleep_until(due).await;
            let started = Instant::now();
            self.metrics
                .drift_seconds
                .observe(started.saturating_duration_since(due).as_secs_f64());
            let outcome = self.poll_once(&record, &meter).await;
            let now = Instant::now();
            let (next, logged) = match &outcome {
                Outcome::Reading { reading, event_id } => {
                    delays.reset();
                    let logged = event_id.as_ref().map(|_| meter_time(reading));
                    (
                        schedule::next_slot(
                            self.base,
                            offset,
                            pacing.interval,
                            now + Duration::from_millis(1),
                        ),
                        logged,
                    )
                }
                Outcome::Failed(PollError::Empty(_)) => {
                    delays.reset();
                    (
                        schedule::next_slot(
                            self.base,
                            offset,
                            pacing.interval,
                            now + Duration::from_millis(1),
                        ),
                        None,
                    )
                }
                Outcome::Failed(PollError::Auth(_)) => (now + pacing.auth_backoff, None),
                Outcome::Failed(_) => (now + delays.next_delay().min(pacing.max_backoff), None),
            };
            let new_state = match &outcome {
                Outcome::Reading { .. } => "ok",
                Outcome::Failed(err) => err.state(),
            };
            if state.get() != Some(new_state) {
                log_transition(&record.cloud_id, new_state, &outcome, next - now);
            }
            state.set(new_state);
            status.state = new_state.into();
            status.latency_ms = Some((now - started).as_secs_f64() * 1000.0);
            status.last_poll_at = Some(rfc3339(Utc::now()));
            status.next_poll_at = Some(rfc3339(Utc::now() + (next - now)));
            match &outcome {
                Outcome::Reading { .. } => {
                    status.failures = 0;
                    status.last_error = None;
                    status.last_ok_at.clone_from(&status.last_poll_at);
                }
                Outcome::Failed(PollError::Empty(reason)) => {
                    status.failures = 0;
                    status.last_error = Some(format!("no value: {reason}"));
                }
                Outcome::Failed(err) => {
                    status.failures += 1;
                    status.last_error = Some(err.to_string());
                }
            }
            if let Err(err) = self
                .registry
                .record_poll(
                    &record.cloud_id,
                    record.rev,
                    Some(&status),
                    logged.as_deref(),
                )
                .await
            {
                // counted, and logged at debug: with Redis down this would be every poll
                self.metrics.registry_failures.inc();
                tracing::debug!(cloud_id = %record.cloud_id, error = %err, "cannot store the poll's outcome");
            }
            due = next;
        }
    }

    /// The credentials of a record, decrypted.
    pub fn meter(&self, record: &StoredRecord) -> Result<Meter, crate::crypto::CryptoError> {
        Ok(Meter {
            cloud_id: record.cloud_id.clone(),
            api: record.api,
            address: record.address.clone(),
            user_email: record.user_email.clone(),
            password: self.registry.password(record)?,
        })
    }

    /// Polls once and publishes what came of it: the reading as an event, or a dead letter for
    /// a malformed reply.
    pub async fn poll_once(&self, record: &StoredRecord, meter: &Meter) -> Outcome {
        let started = Instant::now();
        let mut cache = self.cached(record);
        let result = self.client.poll(meter, &mut cache).await;
        self.keep(record, cache);
        self.metrics
            .poll_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(reading) => {
                self.metrics.poll("ok");
                let event = reading_event(record, &reading);
                let event_id = match self.bus.publish(&event).await {
                    Ok(_) => {
                        self.metrics.events.inc();
                        if self.publish_failing.load(Ordering::Relaxed)
                            && self.publish_failing.swap(false, Ordering::Relaxed)
                        {
                            tracing::info!(cloud_id = %record.cloud_id, "readings are stored on the bus again");
                        }
                        Some(event.id)
                    }
                    Err(err) => {
                        self.metrics.publish_failures.inc();
                        // the first failure since a reading was stored warns; the rest of an
                        // outage is counted (eagle_publish_failures) and logged at debug
                        if self.publish_failing.swap(true, Ordering::Relaxed) {
                            tracing::debug!(cloud_id = %record.cloud_id, error = %err, "reading not stored on the bus");
                        } else {
                            tracing::warn!(cloud_id = %record.cloud_id, error = %err, "reading not stored on the bus");
                        }
                        None
                    }
                };
                Outcome::Reading { reading, event_id }
            }
            Err(err) => {
                self.metrics.poll(match &err {
                    PollError::Empty(_) => "empty",
                    other => other.state(),
                });
                if let PollError::Malformed { reason, body } = &err {
                    self.deadletter(record, reason, body).await;
                }
                Outcome::Failed(err)
            }
        }
    }

    fn lock_caches(&self) -> MutexGuard<'_, HashMap<String, (u64, MeterCache)>> {
        self.caches.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the polls of this registration of `record` learned so far (only an Eagle-200 has
    /// anything to remember).
    fn cached(&self, record: &StoredRecord) -> MeterCache {
        if record.api != Api::Local200 {
            return MeterCache::default();
        }
        match self.lock_caches().get(&record.cloud_id) {
            Some((rev, cache)) if *rev == record.rev => cache.clone(),
            _ => MeterCache::default(),
        }
    }

    /// Keeps what a poll of `record` learned, unless a newer registration's polls already did.
    fn keep(&self, record: &StoredRecord, cache: MeterCache) {
        if record.api != Api::Local200 {
            return;
        }
        let mut caches = self.lock_caches();
        let newer = caches
            .get(&record.cloud_id)
            .is_some_and(|(rev, _)| *rev > record.rev);
        if !newer {
            caches.insert(record.cloud_id.clone(), (record.rev, cache));
        }
    }

    async fn deadletter(&self, record: &StoredRecord, reason: &str, body: &Bytes) {
        let bounded = body.slice(..body.len().min(DEADLETTER_BODY_BYTES));
        let reason = format!(
            "cloud_id={} api={} malformed reply: {reason} ({} bytes)",
            record.cloud_id,
            record.api.as_str(),
            body.len()
        );
        match self
            .bus
            .deadletter(subject::source::ENERGY, &id::new_id(), &reason, bounded)
            .await
        {
            Ok(_) => {
                self.metrics.deadletters.inc();
            }
            Err(err) => {
                tracing::warn!(cloud_id = %record.cloud_id, error = %err, "cannot store the dead letter")
            }
        }
    }

    /// `GET /api/event`: polls a meter now (outside its schedule) and counts the reading.
    pub async fn poll_now(
        &self,
        record: &StoredRecord,
    ) -> Result<Outcome, crate::crypto::CryptoError> {
        let meter = self.meter(record)?;
        let outcome = self.poll_once(record, &meter).await;
        if let Outcome::Reading {
            reading,
            event_id: Some(_),
        } = &outcome
        {
            let time = meter_time(reading);
            if let Err(err) = self
                .registry
                .record_poll(&record.cloud_id, record.rev, None, Some(&time))
                .await
            {
                tracing::warn!(cloud_id = %record.cloud_id, error = %err, "cannot count the reading");
            }
        }
        Ok(outcome)
    }
}

fn log_transition(cloud_id: &str, state: &str, outcome: &Outcome, next_in: Duration) {
    let next_in_secs = next_in.as_secs_f64();
    match outcome {
        Outcome::Failed(err) if state != "ok" => {
            tracing::warn!(%cloud_id, state, error = %err, next_in_secs, "meter poll failed")
        }
        _ => tracing::info!(%cloud_id, state, "meter polled"),
    }
}

/// A reading as an `events.energy.reading` event.
pub fn reading_event(record: &StoredRecord, reading: &Reading) -> Event {
    let now = Utc::now();
    Event {
        id: id::new_id(),
        occurred_at: Some(timestamp(reading.meter_time.unwrap_or(now))),
        received_at: Some(timestamp(now)),
        source: subject::source::ENERGY.into(),
        kind: subject::kind::READING.into(),
        actor: record.actor.clone().unwrap_or_default(),
        context: Some(Context {
            course: record.course.clone().unwrap_or_default(),
            ..Context::default()
        }),
        payload: Some(Payload::EnergyReading(EnergyReading {
            cloud_id: record.cloud_id.clone(),
            device_mac: reading.device_mac.clone(),
            meter_mac: reading.meter_mac.clone(),
            demand_kw: reading.demand_kw,
            summation_delivered_kwh: reading.summation_delivered_kwh.unwrap_or_default(),
            summation_received_kwh: reading.summation_received_kwh.unwrap_or_default(),
            meter_timestamp: reading.meter_time.map(timestamp),
            api: record.api.as_str().into(),
        })),
    }
}

fn meter_time(reading: &Reading) -> String {
    rfc3339(reading.meter_time.unwrap_or_else(Utc::now))
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A running meter task; dropping it stops the task.
struct Task {
    rev: u64,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A meter's state in the per-state gauge; leaves it when the task ends or is aborted.
struct StateGuard {
    metrics: Metrics,
    state: Option<&'static str>,
}

impl StateGuard {
    fn new(metrics: Metrics) -> Self {
        metrics.transition(None, Some("pending"));
        Self {
            metrics,
            state: Some("pending"),
        }
    }

    fn get(&self) -> Option<&'static str> {
        self.state.filter(|s| *s != "pending")
    }

    fn set(&mut self, state: &'static str) {
        self.metrics.transition(self.state, Some(state));
        self.state = Some(state);
    }
}

impl Drop for StateGuard {
    fn drop(&mut self) {
        self.metrics.transition(self.state, None);
    }
}
