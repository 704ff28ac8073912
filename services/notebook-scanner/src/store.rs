//! The snapshot store: the latest copy of every file at `<dir>/<uid>/<path in the user's
//! directory>`, and each copy it replaced kept beside it as `<name>~<UTC time of the backup>`
//! (rsync's `--backup --suffix`), so every version a student saved can be looked at later.
//! Retention bounds the backups of each file by count and, optionally, by age.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use chrono::{DateTime, Utc};

/// Separates a file's name from its backup's timestamp.
pub const BACKUP_MARK: char = '~';

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// Backups kept per file (the newest ones).
    keep: usize,
    /// Backups older than this are removed (`None`: no age limit).
    max_age: Option<Duration>,
}

impl Store {
    pub fn new(dir: PathBuf, keep: usize, max_age: Option<Duration>) -> Self {
        Self { dir, keep, max_age }
    }

    /// Stores `bytes` as the latest copy of `rel` for `uid` and returns the copy's path relative
    /// to the store. Storing the content the latest copy already has changes nothing (a restart
    /// after a crash between storing and publishing).
    pub fn put(&self, uid: &str, rel: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let stored = Path::new(uid).join(rel);
        let target = self.dir.join(&stored);
        let dir = target.parent().expect("a file path has a parent");
        std::fs::create_dir_all(dir)?;
        match std::fs::metadata(&target) {
            Ok(meta) if meta.len() == bytes.len() as u64 && std::fs::read(&target)? == bytes => {
                return Ok(stored);
            }
            Ok(_) => {
                let backup = backup_name(&target, Utc::now());
                std::fs::rename(&target, &backup)?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let name = target.file_name().expect("a file name").to_string_lossy();
        let tmp = dir.join(format!(".{name}.part"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        drop(file);
        std::fs::rename(&tmp, &target)?;
        self.prune(&target)?;
        Ok(stored)
    }

    /// Backups of `stored` (a path relative to the store), oldest first.
    pub fn backups(&self, stored: &Path) -> std::io::Result<Vec<PathBuf>> {
        backups(&self.dir.join(stored))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn prune(&self, target: &Path) -> std::io::Result<()> {
        let backups = backups(target)?;
        let over = backups.len().saturating_sub(self.keep);
        let now = SystemTime::now();
        for (i, backup) in backups.iter().enumerate() {
            let too_old = self.max_age.is_some_and(|age| {
                std::fs::symlink_metadata(backup)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > age)
            });
            if i < over || too_old {
                std::fs::remove_file(backup)?;
            }
        }
        Ok(())
    }
}

/// `<target>~<time>`: the timestamp sorts in time order (`20261126T010203.456789Z`).
fn backup_name(target: &Path, at: DateTime<Utc>) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(format!("{BACKUP_MARK}{}", at.format("%Y%m%dT%H%M%S%.6fZ")));
    PathBuf::from(name)
}

fn backups(target: &Path) -> std::io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{}{BACKUP_MARK}", name.to_string_lossy());
    let mut found: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(err),
    };
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_replaced_version_is_kept_as_a_timestamped_backup_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().into(), 2, None);
        let rel = Path::new("ps1/problem1.ipynb");
        let stored = store.put("ann", rel, b"v1").unwrap();
        assert_eq!(stored, Path::new("ann/ps1/problem1.ipynb"));
        // the same content again (a re-emit after a crash) makes no backup
        store.put("ann", rel, b"v1").unwrap();
        assert!(store.backups(&stored).unwrap().is_empty());
        for v in ["v2", "v3", "v4"] {
            store.put("ann", rel, v.as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read(dir.path().join(&stored)).unwrap(), b"v4");
        let backups = store.backups(&stored).unwrap();
        let contents: Vec<Vec<u8>> = backups.iter().map(|b| std::fs::read(b).unwrap()).collect();
        assert_eq!(contents, vec![b"v2".to_vec(), b"v3".to_vec()]);
        assert!(backups[0].to_string_lossy().contains("problem1.ipynb~20"));
    }

    #[test]
    fn backups_past_the_age_limit_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().into(), 100, Some(Duration::from_secs(3600)));
        let rel = Path::new("a.ipynb");
        store.put("bob", rel, b"old").unwrap();
        store.put("bob", rel, b"newer").unwrap();
        let backup = &store.backups(Path::new("bob/a.ipynb")).unwrap()[0];
        let file = std::fs::File::options().write(true).open(backup).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        store.put("bob", rel, b"newest").unwrap();
        let left = store.backups(Path::new("bob/a.ipynb")).unwrap();
        assert_eq!(left.len(), 1, "the two-hour-old backup is gone: {left:?}");
        assert_eq!(std::fs::read(&left[0]).unwrap(), b"newer");
    }
}
