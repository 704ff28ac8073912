//! The uploader: stores each sealed segment as one gzip NDJSON object, streamed a part at a
//! time; then acknowledges its messages, awaiting the server's confirmation of each (double
//! ack); then deletes the segment and retires its sequences. A segment whose acknowledgements
//! are not all confirmed stays, and is acknowledged again later (its object is found in place).
//!
//! Failures, told apart: the store unreachable or slow (every request has a time limit) stops
//! the pass and is retried with backoff; a request the store refuses outright (403, 400) sets the
//! segment aside for [`REJECTED_RETRY`] with a metric and an error, while the others keep
//! flowing; a damaged segment is renamed `.damaged` and its sequences released, so their
//! redeliveries are archived; a local read error (EMFILE, EIO) is retried.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::StreamExt;
use learntrail_runtime::{CancellationToken, bus::Bus, retry::Delays};
use tokio::sync::{Notify, mpsc};

use crate::{
    archiver::{Readiness, Settings},
    metrics::Metrics,
    pending::Shared,
    segment::{SegmentDir, ack_subjects, compress, first_seq_of, partition_of, scan},
    store::{Store, StoreError},
};

/// How long a segment the store refused waits before it is tried again.
pub const REJECTED_RETRY: Duration = Duration::from_secs(600);

/// Acknowledgements in flight at once.
const ACKS_IN_FLIGHT: usize = 256;

/// Why one segment was not archived.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error("damaged segment: {0}")]
    Damaged(String),
    #[error("store refused the object: {0}")]
    Rejected(StoreError),
    #[error("store unavailable: {0}")]
    Store(StoreError),
    #[error("cannot read the segment: {0}")]
    Local(std::io::Error),
    #[error("acknowledgements not confirmed: {0}")]
    Ack(String),
}

impl From<StoreError> for UploadError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Body(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                Self::Damaged(err.to_string())
            }
            StoreError::Body(err) => Self::Local(err),
            err if err.is_permanent() => Self::Rejected(err),
            err => Self::Store(err),
        }
    }
}

pub(crate) struct Uploader {
    pub bus: Bus,
    pub store: Store,
    pub segments: SegmentDir,
    pub settings: Settings,
    pub metrics: Metrics,
    pub pending: Shared,
    pub ready: Arc<Readiness>,
    pub wake: Arc<Notify>,
}

impl Uploader {
    /// Uploads until `finish` is cancelled, then makes one last pass.
    pub async fn run(self, finish: CancellationToken) {
        let mut delays = Delays::new(Duration::from_millis(250), Duration::from_secs(60));
        let mut refused: HashMap<PathBuf, Instant> = HashMap::new();
        self.probe().await;
        loop {
            let failed = self.pass(&mut refused).await;
            if finish.is_cancelled() {
                return;
            }
            let wait = if failed {
                delays.next_delay()
            } else {
                delays.reset();
                Duration::from_secs(5)
            };
            tokio::select! {
                _ = self.wake.notified(), if !failed => {}
                _ = tokio::time::sleep(wait) => {}
                _ = finish.cancelled() => {
                    // one last pass for what was sealed at shutdown
                    self.pass(&mut refused).await;
                    return;
                }
            }
            if failed {
                self.probe().await;
            }
        }
    }

    /// Asks the store whether it answers (for `/readyz`).
    async fn probe(&self) {
        match self.store.check().await {
            Ok(()) => self.ready.set_store(true),
            Err(err) if err.is_permanent() => {
                self.ready.set_store(false);
                tracing::error!(error = %err, "the store refuses access");
            }
            Err(err) => {
                self.ready.set_store(false);
                tracing::warn!(error = %err, "the store does not answer");
            }
        }
    }

    /// One pass over the sealed segments, oldest first; true when something failed.
    async fn pass(&self, refused: &mut HashMap<PathBuf, Instant>) -> bool {
        let sealed = match self.segments.sealed() {
            Ok(sealed) => sealed,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list the segment directory; will retry");
                return true;
            }
        };
        let now = Instant::now();
        refused.retain(|path, until| *until > now && sealed.contains(path));
        let mut failed = false;
        for path in &sealed {
            if refused.contains_key(path) {
                continue;
            }
            let started = Instant::now();
            match self.upload(path).await {
                Ok(()) => {
                    self.ready.set_store(true);
                    self.metrics
                        .upload_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                Err(UploadError::Damaged(err)) => {
                    set_aside(&self.segments, path, &err, &self.metrics);
                    let released = self
                        .pending
                        .lock()
                        .expect("lock")
                        .release(first_seq_of(path));
                    self.metrics.events_pending.dec_by(released as i64);
                }
                Err(UploadError::Rejected(err)) => {
                    self.ready.set_store(true);
                    self.metrics.segments_rejected.inc();
                    tracing::error!(error = %err, segment = %path.display(), retry_in_s = REJECTED_RETRY.as_secs(), "the store refused the segment; set aside, the others go on");
                    refused.insert(path.clone(), Instant::now() + REJECTED_RETRY);
                }
                Err(UploadError::Local(err)) => {
                    failed = true;
                    tracing::warn!(error = %err, segment = %path.display(), "cannot read the segment; will retry");
                }
                Err(err @ UploadError::Store(_)) => {
                    self.ready.set_store(false);
                    self.metrics.upload_failures.inc();
                    tracing::warn!(error = %err, segment = %path.display(), "upload failed; will retry");
                    return true;
                }
                Err(err @ UploadError::Ack(_)) => {
                    // the object is stored; the others may still be stored meanwhile
                    failed = true;
                    self.metrics.ack_failures.inc();
                    tracing::warn!(error = %err, segment = %path.display(), "stored, not yet acknowledged; will retry");
                }
            }
        }
        failed
    }

    /// Stores one sealed segment (unless its object is already there), acknowledges its
    /// messages, deletes it, retires its sequences.
    async fn upload(&self, path: &Path) -> Result<(), UploadError> {
        let id = first_seq_of(path);
        let partition = partition_of(path)
            .ok_or_else(|| UploadError::Damaged("unrecognised segment name".into()))?;
        let known = self.pending.lock().expect("lock").segment(id).cloned();
        let seqs = match known {
            Some(seqs) if !seqs.is_empty() => seqs,
            _ => {
                let path = path.to_path_buf();
                blocking(move || scan(&path)).await?
            }
        };
        let key = partition.object_key(&self.settings.key_prefix, &seqs);
        let size = match self.put(path, &key).await {
            Err(UploadError::Store(StoreError::Exists)) => {
                tracing::info!(key, "object already stored; acknowledging");
                0
            }
            other => other?,
        };
        self.acknowledge(path).await?;
        std::fs::remove_file(path).map_err(UploadError::Local)?;
        let count = self
            .pending
            .lock()
            .expect("lock")
            .retire(id, Instant::now());
        self.metrics.events_archived.inc_by(count);
        self.metrics.events_pending.dec_by(count as i64);
        self.metrics.bytes_uploaded.inc_by(size);
        self.metrics.objects_uploaded.inc();
        tracing::info!(key, events = count, bytes = size, "archived");
        Ok(())
    }

    async fn put(&self, path: &Path, key: &str) -> Result<u64, UploadError> {
        Ok(store_segment(&self.store, path, key, self.settings.gzip_level).await?)
    }

    /// Acknowledges every message of the segment and waits for the server to confirm each.
    async fn acknowledge(&self, path: &Path) -> Result<(), UploadError> {
        let (tx, mut rx) = mpsc::channel(4);
        let owned = path.to_path_buf();
        let reader = tokio::task::spawn_blocking(move || ack_subjects(&owned, 1024, &tx));
        let mut outcome = Ok(());
        while let Some(batch) = rx.recv().await {
            let failures: Vec<String> = futures_util::stream::iter(batch)
                .map(|subject| self.double_ack(subject))
                .buffer_unordered(ACKS_IN_FLIGHT)
                .filter_map(|r| async move { r.err() })
                .collect()
                .await;
            if let Some(first) = failures.first() {
                outcome = Err(UploadError::Ack(format!(
                    "{} failed: {first}",
                    failures.len()
                )));
                break;
            }
        }
        drop(rx);
        let read = reader
            .await
            .map_err(|e| UploadError::Local(std::io::Error::other(e)))?;
        outcome?;
        read.map_err(UploadError::Local)
    }

    /// `+ACK` as a request: the server's reply confirms the acknowledgement is recorded.
    async fn double_ack(&self, subject: String) -> Result<(), String> {
        if self.settings.faults.lose_acks.load(Ordering::Relaxed) {
            return Err("acknowledgement lost (fault injected)".into());
        }
        self.bus
            .client()
            .request(subject, Bytes::from_static(b"+ACK"))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Compresses a sealed segment into the store under `key`, a part at a time: memory stays near
/// three parts ([`Store::part_bytes`]) whatever the segment's size. Returns the object's size.
pub async fn store_segment(
    store: &Store,
    path: &Path,
    key: &str,
    level: u32,
) -> Result<u64, StoreError> {
    let (tx, rx) = mpsc::channel(1);
    let (path, part) = (path.to_path_buf(), store.part_bytes());
    let producer = tokio::task::spawn_blocking(move || {
        if let Err(err) = compress(&path, level, part, &tx) {
            // the store sees the error in place of the rest of the body
            let _ = tx.blocking_send(Err(err));
        }
    });
    let stored = store.put_parts(key, rx).await;
    producer
        .await
        .map_err(|e| StoreError::Body(std::io::Error::other(e)))?;
    stored
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, UploadError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::InvalidData => {
            Err(UploadError::Damaged(err.to_string()))
        }
        Ok(Err(err)) => Err(UploadError::Local(err)),
        Err(err) => Err(UploadError::Local(std::io::Error::other(err))),
    }
}

/// Moves a damaged segment out of the upload queue (renamed `.damaged`, kept for inspection).
/// Its messages were never acked; the caller releases its sequences, so JetStream's redeliveries
/// are archived: nothing is lost.
pub(crate) fn set_aside(segments: &SegmentDir, path: &Path, err: &str, metrics: &Metrics) {
    metrics.segments_damaged.inc();
    tracing::error!(error = err, segment = %path.display(), "damaged segment set aside; its events come again by redelivery");
    if let Err(err) = segments.set_aside(path) {
        tracing::error!(error = %err, segment = %path.display(), "cannot set the damaged segment aside");
    }
}
