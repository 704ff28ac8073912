//! The on-disk spool: one file per run, written atomically and durably (temp file, fsync,
//! rename: a power loss leaves either the whole record or none, never an empty one), named
//! `<event id>-<size>.pb` so the records sort oldest first and the spool's size is known from
//! the names alone. Over the quota the oldest records go first, counted in `dropped`.
//!
//! Records are `0600`: only their owner (and the root uploader) may read them. A spool the
//! current account does not own is *shared* (the system install's `/var/spool/learntrail`, mode
//! `1733` like `/tmp`): each student creates records there but cannot list, read or delete
//! anyone else's, so the shim leaves the quota and the bookkeeping files to the root uploader.
//! Every file is created with `O_EXCL|O_NOFOLLOW` and bookkeeping is read only from regular
//! files owned by the spool's owner: a link planted in the spool is never written through.
//!
//! Listing a large spool on every run would cost a student a millisecond per `ruby`, so each
//! write adds its size to a running total in `usage`, and the spool is listed only when that
//! total says the quota may be exceeded (and after each upload, which resets the total). The
//! total may drift when runs write at the same instant; it drifts upwards only by what was
//! lost, and a listing corrects it.

use std::{
    fs,
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

const RECORD_EXT: &str = ".pb";
const TMP_PREFIX: &str = ".tmp-";
const DROPPED_FILE: &str = "dropped";
const LAST_UPLOAD_FILE: &str = "last-upload";
const USAGE_FILE: &str = "usage";
/// A temp file older than this is left over from a crash (a write takes milliseconds).
pub const STALE_TMP_AGE: Duration = Duration::from_secs(600);

/// One spooled record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub path: PathBuf,
    pub id: String,
    pub size: u64,
}

/// A spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
}

impl Spool {
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Self {
            dir: dir.into(),
            max_bytes,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one record (`0600`) atomically and durably, then, in a spool of our own, enforces
    /// the quota.
    pub fn write(&self, id: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        let own = self.prepare()?;
        let tmp = self.dir.join(format!("{TMP_PREFIX}{id}"));
        let path = self.dir.join(format!("{id}-{}{RECORD_EXT}", bytes.len()));
        // the data reaches the disk before the name does: a power loss after the rename cannot
        // leave an empty record behind (which the uploader could only dead-letter)
        let written = create_private(&tmp)
            .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_data()))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(err) = written {
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
        if !own {
            return Ok(path); // shared: the uploader keeps the quota (we may not list the spool)
        }
        let usage = self.usage() + bytes.len() as u64;
        if usage > self.max_bytes {
            self.enforce_quota()?;
        } else {
            // best effort: a lost update only means an earlier listing
            let _ = self.store_usage(usage);
        }
        Ok(path)
    }

    /// Creates the spool (`0700`, for this account alone) when it is missing; true when the
    /// spool is this account's own, false when it is shared.
    fn prepare(&self) -> io::Result<bool> {
        let meta = match fs::metadata(&self.dir) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.dir)?;
                fs::metadata(&self.dir)?
            }
            Err(err) => return Err(err),
        };
        Ok(meta.uid() == nix::unistd::geteuid().as_raw())
    }

    /// True when the spool exists and belongs to this account (not a shared spool).
    pub fn is_own(&self) -> bool {
        fs::metadata(&self.dir).is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw())
    }

    /// A bookkeeping file's number (0 when missing, unreadable or not the spool owner's).
    fn read_number(&self, name: &str) -> u64 {
        self.read_small(name)
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A small bookkeeping file: a regular file of the spool's owner, never through a link.
    fn read_small(&self, name: &str) -> Option<String> {
        let owner = fs::metadata(&self.dir).ok()?.uid();
        let file = open_nofollow(&self.dir.join(name)).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.uid() != owner {
            return None;
        }
        let mut text = String::new();
        file.take(4096).read_to_string(&mut text).ok()?;
        Some(text)
    }

    /// The running total of record bytes (0 when unknown).
    fn usage(&self) -> u64 {
        self.read_number(USAGE_FILE)
    }

    /// Records, oldest first.
    pub fn records(&self) -> io::Result<Vec<Record>> {
        let mut records = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(records),
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if let Some(record) = name.to_str().and_then(parse_name) {
                records.push(Record {
                    path: entry.path(),
                    id: record.0.to_string(),
                    size: record.1,
                });
            }
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    /// Deletes the oldest records until the spool fits its quota; returns how many went.
    pub fn enforce_quota(&self) -> io::Result<u64> {
        let records = self.records()?;
        let mut total: u64 = records.iter().map(|r| r.size).sum();
        let mut dropped = 0;
        for record in &records {
            if total <= self.max_bytes {
                break;
            }
            if fs::remove_file(&record.path).is_ok() {
                total -= record.size;
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.add_dropped(dropped)?;
        }
        self.store_usage(total)?;
        Ok(dropped)
    }

    /// Overwrites the running total in place with a fixed-width number: no truncation and no
    /// rename, which on ext4 would each force a flush of the file's data.
    fn store_usage(&self, usage: u64) -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.dir.join(USAGE_FILE))?;
        file.write_all(format!("{usage:020}\n").as_bytes())
    }

    /// Records dropped over the quota, ever.
    pub fn dropped(&self) -> u64 {
        self.read_number(DROPPED_FILE)
    }

    fn add_dropped(&self, more: u64) -> io::Result<()> {
        self.write_small(DROPPED_FILE, &(self.dropped() + more).to_string())
    }

    /// Removes temp files left by a crash mid-write (only ones older than [`STALE_TMP_AGE`], so a
    /// write in progress is never touched). Returns how many went.
    pub fn clean_stale_tmp(&self, now: SystemTime) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(TMP_PREFIX))
            })
            .filter(|e| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_TMP_AGE)
            })
            .filter(|e| fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// Notes a finished upload (for `status`).
    pub fn note_upload(&self, summary: &str) -> io::Result<()> {
        self.write_small(LAST_UPLOAD_FILE, summary)
    }

    pub fn last_upload(&self) -> Option<String> {
        self.read_small(LAST_UPLOAD_FILE)
            .map(|t| t.trim().to_string())
    }

    /// Replaces a bookkeeping file (readable by all: `status` shows it to every account).
    fn write_small(&self, name: &str, text: &str) -> io::Result<()> {
        write_replacing(&self.dir.join(name), text.as_bytes(), 0o644)
    }
}

/// Creates a new `0600` file for writing; fails if anything (a planted link) has the name.
pub(crate) fn create_private(path: &Path) -> io::Result<fs::File> {
    create_new(path, 0o600)
}

fn create_new(path: &Path, mode: u32) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens for reading without following a final symlink and without blocking on a named pipe.
pub(crate) fn open_nofollow(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// Replaces `path` with `bytes` (mode `mode`) through a fresh temp file and a rename: never
/// writes through a link, never shows a half-written file or a wider mode.
pub(crate) fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(
        "{TMP_PREFIX}{name}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
    ));
    let written = create_new(&tmp, mode)
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// `<id>-<size>.pb` → (id, size).
fn parse_name(name: &str) -> Option<(&str, u64)> {
    let stem = name.strip_suffix(RECORD_EXT)?;
    let (id, size) = stem.rsplit_once('-')?;
    Some((id, size.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_lists_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path(), 1 << 20);
        spool.write("01B", b"second").unwrap();
        spool.write("01A", b"first").unwrap();
        let records = spool.records().unwrap();
        assert_eq!(
            records
                .iter()
                .map(|r| (r.id.as_str(), r.size))
                .collect::<Vec<_>>(),
            [("01A", 5), ("01B", 6)]
        );
        assert_eq!(fs::read(&records[0].path).unwrap(), b"first");
        assert!(
            fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with(TMP_PREFIX))
        );
    }

    #[test]
    fn quota_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path(), 25);
        for id in ["01A", "01B", "01C", "01D"] {
            spool.write(id, &[0u8; 10]).unwrap();
        }
        let left: Vec<_> = spool.records().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(left, ["01C", "01D"]);
        assert_eq!(spool.dropped(), 2);
    }

    #[test]
    fn only_stale_temp_files_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path(), 1 << 20);
        fs::write(dir.path().join(".tmp-01X"), b"half").unwrap();
        spool.write("01A", b"whole").unwrap();
        assert_eq!(
            spool.clean_stale_tmp(SystemTime::now()),
            0,
            "a fresh temp file may be a write in progress"
        );
        assert_eq!(
            spool.clean_stale_tmp(SystemTime::now() + STALE_TMP_AGE * 2),
            1
        );
        assert_eq!(spool.records().unwrap().len(), 1);
        assert!(!dir.path().join(".tmp-01X").exists());
    }
}
