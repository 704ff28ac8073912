//! The on-disk spool: one file per run, written atomically (temp file + rename), named
//! `<event id>-<size>.pb` so the records sort oldest first and the spool's size is known from
//! the names alone. Over the quota the oldest records go first, counted in `dropped`.
//!
//! Listing a large spool on every run would cost a student a millisecond per `ruby`, so each
//! write adds its size to a running total in `usage`, and the spool is listed only when that
//! total says the quota may be exceeded (and after each upload, which resets the total). The
//! total may drift when runs write at the same instant; it drifts upwards only by what was
//! lost, and a listing corrects it.

use std::{
    fs,
    io::{self, Write},
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

    /// Writes one record atomically, then enforces the quota.
    pub fn write(&self, id: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!("{TMP_PREFIX}{id}"));
        let path = self.dir.join(format!("{id}-{}{RECORD_EXT}", bytes.len()));
        let mut file = fs::File::create(&tmp)?;
        let written = file.write_all(bytes).and_then(|()| fs::rename(&tmp, &path));
        if let Err(err) = written {
            let _ = fs::remove_file(&tmp);
            return Err(err);
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

    /// The running total of record bytes (0 when unknown).
    fn usage(&self) -> u64 {
        fs::read_to_string(self.dir.join(USAGE_FILE))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
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
            .open(self.dir.join(USAGE_FILE))?;
        file.write_all(format!("{usage:020}\n").as_bytes())
    }

    /// Records dropped over the quota, ever.
    pub fn dropped(&self) -> u64 {
        fs::read_to_string(self.dir.join(DROPPED_FILE))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
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
        fs::read_to_string(self.dir.join(LAST_UPLOAD_FILE))
            .ok()
            .map(|t| t.trim().to_string())
    }

    fn write_small(&self, name: &str, text: &str) -> io::Result<()> {
        let tmp = self.dir.join(format!("{TMP_PREFIX}{name}"));
        fs::write(&tmp, text)?;
        fs::rename(tmp, self.dir.join(name))
    }
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
