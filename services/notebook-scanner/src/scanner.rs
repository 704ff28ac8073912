//! The scanner: decides which files changed (index), snapshots them (store), reports them (bus).
//!
//! Order per changed file, so that nothing is lost and nothing is reported twice:
//! read and hash → store the snapshot → publish the event and wait for the ack → record the
//! version in the index. A crash anywhere before the index line re-does the file on restart
//! with the same event id (see [`crate::event::event_id`]), which the stream deduplicates.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs::Metadata,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use futures_util::StreamExt as _;
use learntrail_proto::{pseudonym, v1::Machine};
use learntrail_runtime::bus::Bus;
use notify::RecursiveMode;
use sha2::{Digest as _, Sha256};

use crate::{
    event::{self, Version},
    index::{Entry, Index},
    metrics::Metrics,
    notebook,
    snapshots::Snapshots,
    users::{self, User},
    walk::{self, Found},
};

/// Files read, hashed, parsed and stored at once.
const CONCURRENCY: usize = 8;

/// What does not change while the scanner runs.
pub struct Settings {
    pub users_csv: PathBuf,
    pub max_file_bytes: u64,
    pub pseudonym_key: Option<String>,
    pub machine: Machine,
}

struct Shared {
    settings: Settings,
    store: Snapshots,
    bus: Bus,
    metrics: Metrics,
}

/// A file that may have changed.
struct Candidate {
    user: Arc<User>,
    path: PathBuf,
    size: u64,
    mtime_ns: i64,
}

/// What came of a changed file.
enum Outcome {
    /// Acknowledged (or unchanged content): record this in the index.
    Done(PathBuf, Entry),
    /// Try again later (bus down, store failing).
    Retry,
    /// Never mind (vanished, unreadable).
    Skipped,
}

pub struct Scanner {
    shared: Arc<Shared>,
    index: Index,
    users: Vec<Arc<User>>,
    users_stamp: Option<(u64, i64)>,
    /// Notebooks directories that are missing (reported once). By directory, not uid: a uid may
    /// be listed with several, some there and some not.
    missing: HashSet<PathBuf>,
    /// Too-large files already reported, so the reason is logged once per version.
    too_large: HashMap<PathBuf, (u64, i64)>,
    /// Files whose last attempt failed: retried before anything else.
    retry: BTreeSet<PathBuf>,
}

impl Scanner {
    pub fn new(
        settings: Settings,
        store: Snapshots,
        index: Index,
        bus: Bus,
        metrics: Metrics,
    ) -> Self {
        metrics.indexed.set(index.len() as i64);
        Self {
            shared: Arc::new(Shared {
                settings,
                store,
                bus,
                metrics,
            }),
            index,
            users: Vec::new(),
            users_stamp: None,
            missing: HashSet::new(),
            too_large: HashMap::new(),
            retry: BTreeSet::new(),
        }
    }

    /// Re-reads the users file if it changed since the last read; returns the notebooks
    /// directories it gained (a new user, or a user's new directory). A bad file keeps the users
    /// read before (and is reported).
    pub fn reload_users(&mut self) -> HashSet<PathBuf> {
        let csv = &self.shared.settings.users_csv;
        let stamp = std::fs::metadata(csv).ok().map(|m| (m.len(), mtime_ns(&m)));
        if stamp == self.users_stamp && self.users_stamp.is_some() {
            return HashSet::new();
        }
        self.users_stamp = stamp;
        match users::load(csv) {
            Ok(users) => {
                tracing::info!(users = users.len(), path = %csv.display(), "users file read");
                let mut users: Vec<Arc<User>> = users.into_iter().map(Arc::new).collect();
                // longest directory first, so a nested directory belongs to its own user
                users.sort_by_key(|u| std::cmp::Reverse(u.dir.as_os_str().len()));
                let added = users
                    .iter()
                    .filter(|u| !self.users.contains(u))
                    .map(|u| u.dir.clone())
                    .collect();
                self.users = users;
                self.missing
                    .retain(|dir| self.users.iter().any(|u| &u.dir == dir));
                added
            }
            Err(err) => {
                tracing::error!(error = %err, "users file not usable; keeping the users read before");
                HashSet::new()
            }
        }
    }

    /// True when a directory reported missing exists now (it appeared before its parent's watch
    /// was in place): call [`Scanner::notified`] to pick it up.
    pub fn missing_appeared(&self) -> bool {
        self.users
            .iter()
            .any(|u| self.missing.contains(&u.dir) && u.dir.is_dir())
    }

    /// Users whose directory exists now; a missing one is reported the first time it is missed.
    fn present_users(&mut self) -> Vec<Arc<User>> {
        let mut present = Vec::new();
        for user in &self.users {
            if user.dir.is_dir() {
                if self.missing.remove(&user.dir) {
                    tracing::info!(uid = %user.uid, dir = %user.dir.display(), "notebooks directory appeared");
                }
                present.push(user.clone());
            } else if self.missing.insert(user.dir.clone()) {
                tracing::warn!(uid = %user.uid, dir = %user.dir.display(), "notebooks directory does not exist; watching for it");
            }
        }
        present
    }

    /// Directories to watch: each existing notebooks directory (recursively), the nearest
    /// existing parent of each missing one, and the users file's directory.
    pub fn watch_plan(&self) -> HashMap<PathBuf, RecursiveMode> {
        let mut plan = HashMap::new();
        for user in &self.users {
            if user.dir.is_dir() {
                plan.insert(user.dir.clone(), RecursiveMode::Recursive);
            }
        }
        for user in &self.users {
            if !user.dir.is_dir()
                && let Some(parent) = user.dir.ancestors().skip(1).find(|a| a.is_dir())
            {
                plan.entry(parent.to_path_buf())
                    .or_insert(RecursiveMode::NonRecursive);
            }
        }
        let csv = std::path::absolute(&self.shared.settings.users_csv)
            .unwrap_or_else(|_| self.shared.settings.users_csv.clone());
        if let Some(dir) = csv.parent() {
            plan.entry(dir.to_path_buf())
                .or_insert(RecursiveMode::NonRecursive);
        }
        plan
    }

    /// Looks at every file of every present user; returns how many events were acknowledged.
    pub async fn full_scan(&mut self) -> usize {
        let started = Instant::now();
        self.reload_users();
        let users = self.present_users();
        let candidates = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            for user in users {
                for (path, meta) in walk::files(&user.dir) {
                    all.push(candidate(&user, path, &meta));
                }
            }
            all
        })
        .await
        .unwrap_or_default();
        self.retry.clear();
        let files = candidates.len();
        let events = self.process(candidates).await;
        let elapsed = started.elapsed();
        self.shared
            .metrics
            .scan_seconds
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            files,
            events,
            elapsed_ms = elapsed.as_millis() as u64,
            "full scan done"
        );
        events
    }

    /// Looks at the paths notifications named (and at directories that appeared).
    pub async fn notified(&mut self, paths: BTreeSet<PathBuf>) -> usize {
        let csv = std::path::absolute(&self.shared.settings.users_csv).ok();
        let mut to_walk = self.missing.clone();
        if paths.iter().any(|p| Some(p) == csv.as_ref()) {
            to_walk.extend(self.reload_users());
        }
        let present = self.present_users();
        let users = self.users.clone();
        let candidates = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            // a directory that appeared, or a user the users file gained: everything in it
            for user in present.iter().filter(|u| to_walk.contains(&u.dir)) {
                for (path, meta) in walk::files(&user.dir) {
                    found.push(candidate(user, path, &meta));
                }
            }
            for path in paths {
                let Some(user) = users.iter().find(|u| path.starts_with(&u.dir)) else {
                    continue;
                };
                match walk::check(&user.dir, &path) {
                    Found::File(meta) => found.push(candidate(user, path, &meta)),
                    Found::Dir => {
                        for (path, meta) in walk::files(&path) {
                            found.push(candidate(user, path, &meta));
                        }
                    }
                    Found::Skip => {}
                }
            }
            found
        })
        .await
        .unwrap_or_default();
        self.process(candidates).await
    }

    /// True when some files failed and wait for [`Scanner::retry_failed`].
    pub fn has_retries(&self) -> bool {
        !self.retry.is_empty()
    }

    /// Tries the files whose last attempt failed.
    pub async fn retry_failed(&mut self) -> usize {
        let paths = std::mem::take(&mut self.retry);
        self.notified(paths).await
    }

    async fn process(&mut self, candidates: Vec<Candidate>) -> usize {
        let mut changed = Vec::new();
        let mut seen = HashSet::new();
        for c in candidates {
            if !seen.insert(c.path.clone()) {
                continue;
            }
            let previous = self.index.get(&c.path);
            if previous.is_some_and(|e| e.size == c.size && e.mtime_ns == c.mtime_ns) {
                continue;
            }
            if c.size > self.shared.settings.max_file_bytes {
                if self.too_large.insert(c.path.clone(), (c.size, c.mtime_ns))
                    != Some((c.size, c.mtime_ns))
                {
                    tracing::warn!(path = %c.path.display(), size = c.size, limit = self.shared.settings.max_file_bytes, "file skipped: over MAX_FILE_BYTES");
                    self.shared.metrics.skip("too_large");
                }
                continue;
            }
            let previous_sha = previous.map(|e| e.sha256.clone());
            changed.push((c, previous_sha));
        }
        if changed.is_empty() {
            return 0;
        }
        let shared = self.shared.clone();
        let mut outcomes = futures_util::stream::iter(changed)
            .map(|(c, previous_sha)| {
                let shared = shared.clone();
                async move {
                    let path = c.path.clone();
                    (path, handle(shared, c, previous_sha).await)
                }
            })
            .buffer_unordered(CONCURRENCY);
        let mut events = 0;
        while let Some((path, outcome)) = outcomes.next().await {
            match outcome {
                Outcome::Done(path, entry) => {
                    if let Err(err) = self.index.record(&path, entry) {
                        tracing::error!(error = %err, "cannot write the index");
                    }
                    events += 1;
                }
                Outcome::Retry => {
                    self.retry.insert(path);
                }
                Outcome::Skipped => {}
            }
        }
        drop(outcomes);
        if let Err(err) = self.index.flush() {
            tracing::error!(error = %err, file = %self.index.file().display(), "cannot write the index");
        }
        self.shared.metrics.indexed.set(self.index.len() as i64);
        events
    }
}

fn candidate(user: &Arc<User>, path: PathBuf, meta: &Metadata) -> Candidate {
    Candidate {
        user: user.clone(),
        path,
        size: meta.len(),
        mtime_ns: mtime_ns(meta),
    }
}

pub fn mtime_ns(meta: &Metadata) -> i64 {
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

/// One changed file, start to ack: read and parse, store, publish.
async fn handle(shared: Arc<Shared>, c: Candidate, previous_sha: Option<String>) -> Outcome {
    let prepared = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || prepare(&shared, c, previous_sha)).await
    };
    let changed = match prepared {
        Ok(Ok(Prepared::Unchanged(path, entry))) => return Outcome::Done(path, entry),
        Ok(Ok(Prepared::Changed(changed))) => changed,
        Ok(Err(outcome)) => return outcome,
        Err(_) => return Outcome::Retry,
    };
    let Changed {
        path,
        entry,
        user,
        bytes,
        parsed,
    } = *changed;
    let rel = path
        .strip_prefix(&user.dir)
        .expect("candidates are under their user's directory");
    let snapshot = match shared
        .store
        .put(&user.uid, rel, bytes, entry.mtime_ns, &entry.sha256)
        .await
    {
        Ok(snapshot) => snapshot,
        Err(err) => {
            tracing::error!(path = %path.display(), error = %err, "cannot store the snapshot; will retry");
            shared.metrics.skip("store");
            return Outcome::Retry;
        }
    };
    let actor = pseudonym::actor(shared.settings.pseudonym_key.as_deref(), &user.uid);
    let version = Version {
        actor: &actor,
        rel,
        size: entry.size,
        mtime_ns: entry.mtime_ns,
        sha256: &entry.sha256,
        snapshot: Path::new(&snapshot),
    };
    let event = event::build(&version, parsed, &shared.settings.machine);
    match shared.bus.publish(&event).await {
        Ok(_) => {
            shared.metrics.events.inc();
            tracing::debug!(path = %path.display(), id = %event.id, "snapshot reported");
            Outcome::Done(path, entry)
        }
        Err(err) if err.is_transient() => {
            tracing::warn!(path = %path.display(), error = %err, "publish failed; will retry");
            shared.metrics.skip("publish");
            Outcome::Retry
        }
        Err(err) => {
            tracing::error!(path = %path.display(), error = %err, "event refused by the bus");
            shared.metrics.skip("publish");
            Outcome::Skipped
        }
    }
}

enum Prepared {
    /// Same content as last reported (a save that changed nothing).
    Unchanged(PathBuf, Entry),
    Changed(Box<Changed>),
}

/// A new version, read and parsed, to be stored and reported.
struct Changed {
    path: PathBuf,
    entry: Entry,
    user: Arc<User>,
    bytes: Vec<u8>,
    parsed: Option<Result<notebook::Summary, notebook::ParseError>>,
}

/// Reads, hashes and parses one file (blocking).
fn prepare(
    shared: &Shared,
    c: Candidate,
    previous_sha: Option<String>,
) -> Result<Prepared, Outcome> {
    let bytes = read_limited(&c.path, shared.settings.max_file_bytes).map_err(|err| {
        tracing::warn!(path = %c.path.display(), error = %err, "file skipped: cannot read");
        shared.metrics.skip("unreadable");
        Outcome::Skipped
    })?;
    let Some(bytes) = bytes else {
        shared.metrics.skip("too_large");
        return Err(Outcome::Skipped);
    };
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let entry = Entry {
        size: bytes.len() as u64,
        mtime_ns: c.mtime_ns,
        sha256,
    };
    if previous_sha.as_deref() == Some(entry.sha256.as_str()) {
        return Ok(Prepared::Unchanged(c.path, entry));
    }
    let parsed = c
        .path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("ipynb"))
        .then(|| notebook::parse(&bytes));
    if let Some(Err(err)) = &parsed {
        tracing::info!(path = %c.path.display(), error = %err, "notebook not parsed");
        shared.metrics.parse_errors.inc();
    }
    Ok(Prepared::Changed(Box::new(Changed {
        path: c.path,
        entry,
        user: c.user,
        bytes,
        parsed,
    })))
}

/// The file's bytes, or `None` when it is (or has grown) over `limit`.
/// Reads at most `limit` bytes of the regular file at `path` (`None` past the limit). The walk
/// saw a regular file, but a learner may swap it since: a link is not followed (it could name a
/// file only the scanner may read) and a FIFO is not waited on.
fn read_limited(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(limit) as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_regular_file_is_read_never_through_a_link_or_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"only the scanner may read this").unwrap();
        let notebook = dir.path().join("a.ipynb");
        std::fs::write(&notebook, b"{}").unwrap();
        assert_eq!(read_limited(&notebook, 10).unwrap(), Some(b"{}".to_vec()));
        assert_eq!(read_limited(&notebook, 1).unwrap(), None, "past the limit");
        // swapped for a link since the walk looked
        let swapped = dir.path().join("b.ipynb");
        std::os::unix::fs::symlink(&secret, &swapped).unwrap();
        assert!(read_limited(&swapped, 1_000).is_err());
        // or for a FIFO, which would block an ordinary open until someone writes
        let fifo = dir.path().join("c.ipynb");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(read_limited(&fifo, 1_000).is_err());
    }
}
