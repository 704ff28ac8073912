//! The on-disk index: path → size, mtime and content hash of the version last reported. An
//! append-only JSON-lines log (last line per path wins), compacted when it is loaded, so a
//! restart and an unchanged rescan report nothing. A line is appended only after the path's
//! event was acknowledged by the stream.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, BufWriter, Write},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub size: u64,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub sha256: String,
}

/// One line of the log. A path that is not UTF-8 (a file name in another encoding, say Latin-1
/// from an unpacked archive) is kept as its bytes: JSON strings cannot hold it.
#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path_bytes: Option<Vec<u8>>,
    #[serde(flatten)]
    entry: Entry,
}

impl Line {
    fn new(path: &Path, entry: Entry) -> Self {
        let (path, path_bytes) = match path.to_str() {
            Some(text) => (Some(text.to_string()), None),
            None => (None, Some(path.as_os_str().as_bytes().to_vec())),
        };
        Self {
            path,
            path_bytes,
            entry,
        }
    }

    fn path(&self) -> Option<PathBuf> {
        match (&self.path, &self.path_bytes) {
            (Some(text), _) => Some(PathBuf::from(text)),
            (None, Some(bytes)) => Some(PathBuf::from(OsStr::from_bytes(bytes))),
            (None, None) => None,
        }
    }
}

pub struct Index {
    file: PathBuf,
    entries: HashMap<PathBuf, Entry>,
    log: BufWriter<File>,
}

impl Index {
    /// Loads (or creates) the index at `file`, rewriting it with one line per path.
    pub fn open(file: &Path) -> std::io::Result<Self> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut entries = HashMap::new();
        if let Ok(existing) = File::open(file) {
            for line in BufReader::new(existing).lines() {
                // a torn last line (crash mid-append) is skipped: its event is re-emitted
                if let Ok(line) = serde_json::from_str::<Line>(&line?)
                    && let Some(path) = line.path()
                {
                    entries.insert(path, line.entry);
                }
            }
        }
        let tmp = file.with_extension("compact");
        {
            let mut out = BufWriter::new(File::create(&tmp)?);
            for (path, entry) in &entries {
                write_line(&mut out, path, entry)?;
            }
            out.into_inner()?.sync_all()?;
        }
        std::fs::rename(&tmp, file)?;
        let log = BufWriter::new(OpenOptions::new().append(true).open(file)?);
        Ok(Self {
            file: file.to_path_buf(),
            entries,
            log,
        })
    }

    pub fn get(&self, path: &Path) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records `entry` for `path` (in memory and in the log's buffer; see [`Index::flush`]).
    pub fn record(&mut self, path: &Path, entry: Entry) -> std::io::Result<()> {
        write_line(&mut self.log, path, &entry)?;
        self.entries.insert(path.to_path_buf(), entry);
        Ok(())
    }

    /// Writes buffered lines to the file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.log.flush()
    }

    pub fn file(&self) -> &Path {
        &self.file
    }
}

/// Appends one whole line (built first, so a failure leaves nothing half-written).
fn write_line(out: &mut impl Write, path: &Path, entry: &Entry) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&Line::new(path, entry.clone()))?;
    line.push(b'\n');
    out.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_reopen_and_the_last_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("index.jsonl");
        let entry = |size| Entry {
            size,
            mtime_ns: 1_700_000_000_000_000_000,
            sha256: format!("{size:064}"),
        };
        let mut index = Index::open(&file).unwrap();
        index.record(Path::new("/h/a.ipynb"), entry(1)).unwrap();
        index.record(Path::new("/h/a.ipynb"), entry(2)).unwrap();
        index.record(Path::new("/h/b.ipynb"), entry(3)).unwrap();
        index.flush().unwrap();
        drop(index);
        // a torn line from a crash mid-append
        OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(b"{\"path\":\"/h/c.ip")
            .unwrap();
        let index = Index::open(&file).unwrap();
        assert_eq!(index.len(), 2);
        assert_eq!(index.get(Path::new("/h/a.ipynb")), Some(&entry(2)));
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);
    }

    #[test]
    fn a_path_that_is_not_utf8_is_kept_and_spoils_no_other_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("index.jsonl");
        let entry = Entry {
            size: 1,
            mtime_ns: 1_700_000_000_000_000_000,
            sha256: "0".repeat(64),
        };
        // "résumé.ipynb" in Latin-1
        let latin1 = Path::new(OsStr::from_bytes(b"/h/r\xe9sum\xe9.ipynb"));
        let mut index = Index::open(&file).unwrap();
        index.record(latin1, entry.clone()).unwrap();
        index
            .record(Path::new("/h/b.ipynb"), entry.clone())
            .unwrap();
        index.flush().unwrap();
        drop(index);
        let index = Index::open(&file).unwrap();
        assert_eq!(index.get(latin1), Some(&entry));
        assert_eq!(index.get(Path::new("/h/b.ipynb")), Some(&entry));
        assert_eq!(index.len(), 2);
    }
}
