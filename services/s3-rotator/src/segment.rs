//! Local segment files: each partition's events are appended to an open segment
//! (`<partition>__<first seq>.open`, lines `<seq>\t<ack subject>\t<event JSON>`); a full or
//! finished segment is sealed (renamed `.sealed`), uploaded as one object, and only then are its
//! messages acknowledged and the file deleted. After a crash, open segments are cut back to their
//! last whole line and sealed as they are, so nothing that was written is lost or doubled.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    time::Instant,
};

use flate2::{Compression, write::GzEncoder};

use crate::layout::Partition;

const OPEN: &str = "open";
const SEALED: &str = "sealed";

/// A segment being written.
#[derive(Debug)]
pub struct OpenSegment {
    pub partition: Partition,
    path: PathBuf,
    writer: BufWriter<File>,
    pub bytes: u64,
    pub count: u64,
    pub opened: Instant,
}

impl OpenSegment {
    /// Appends one event.
    pub fn append(&mut self, seq: u64, ack_subject: &str, json: &str) -> io::Result<()> {
        write!(self.writer, "{seq}\t{ack_subject}\t")?;
        self.writer.write_all(json.as_bytes())?;
        self.writer.write_all(b"\n")?;
        self.bytes += json.len() as u64 + 1;
        self.count += 1;
        Ok(())
    }

    /// Flushes to disk and renames the segment `.sealed`; it is then ready for upload.
    pub fn seal(self) -> io::Result<PathBuf> {
        let file = self.writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        let sealed = self.path.with_extension(SEALED);
        fs::rename(&self.path, &sealed)?;
        Ok(sealed)
    }
}

/// A sealed segment read back for upload.
#[derive(Debug, Default)]
pub struct Sealed {
    pub seqs: Vec<u64>,
    pub ack_subjects: Vec<String>,
    /// The NDJSON body: one event per line.
    pub ndjson: Vec<u8>,
}

impl Sealed {
    pub fn first(&self) -> u64 {
        self.seqs.iter().copied().min().unwrap_or(0)
    }

    pub fn last(&self) -> u64 {
        self.seqs.iter().copied().max().unwrap_or(0)
    }
}

/// The directory of segments.
#[derive(Debug, Clone)]
pub struct SegmentDir {
    dir: PathBuf,
}

impl SegmentDir {
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Opens a new segment for `partition` starting at stream sequence `first_seq`.
    pub fn open(&self, partition: Partition, first_seq: u64) -> io::Result<OpenSegment> {
        let path = self
            .dir
            .join(format!("{}__{first_seq:020}.{OPEN}", partition.file_stem()));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(OpenSegment {
            partition,
            path,
            writer: BufWriter::with_capacity(256 * 1024, file),
            bytes: 0,
            count: 0,
            opened: Instant::now(),
        })
    }

    /// After a restart: cuts each open segment back to its last whole line and seals it.
    /// Returns how many were recovered.
    pub fn recover(&self) -> io::Result<usize> {
        let mut recovered = 0;
        for path in self.files(OPEN)? {
            let data = fs::read(&path)?;
            let whole = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if whole < data.len() {
                OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(whole as u64)?;
            }
            if whole == 0 {
                fs::remove_file(&path)?;
                continue;
            }
            fs::rename(&path, path.with_extension(SEALED))?;
            recovered += 1;
        }
        Ok(recovered)
    }

    /// Sealed segments, oldest first (by partition, then first sequence).
    pub fn sealed(&self) -> io::Result<Vec<PathBuf>> {
        self.files(SEALED)
    }

    fn files(&self, extension: &str) -> io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == extension))
            .collect();
        files.sort_by_key(|p| first_seq_of(p));
        Ok(files)
    }
}

/// The partition a segment file belongs to.
pub fn partition_of(path: &Path) -> Option<Partition> {
    let stem = path.file_stem()?.to_str()?;
    let (partition, _) = stem.rsplit_once("__")?;
    Partition::from_file_stem(partition)
}

fn first_seq_of(path: &Path) -> u64 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.rsplit_once("__"))
        .and_then(|(_, seq)| seq.parse().ok())
        .unwrap_or(0)
}

/// Reads a sealed segment.
pub fn read_sealed(path: &Path) -> io::Result<Sealed> {
    let data = fs::read(path)?;
    let mut sealed = Sealed {
        ndjson: Vec::with_capacity(data.len()),
        ..Default::default()
    };
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut fields = line.splitn(3, |&b| b == b'\t');
        let (Some(seq), Some(ack), Some(json)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad line in {}", path.display()),
            ));
        };
        let seq = std::str::from_utf8(seq)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad sequence"))?;
        sealed.seqs.push(seq);
        sealed
            .ack_subjects
            .push(String::from_utf8_lossy(ack).into_owned());
        sealed.ndjson.extend_from_slice(json);
        sealed.ndjson.push(b'\n');
    }
    Ok(sealed)
}

/// Gzips a body.
pub fn gzip(body: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::new(level));
    encoder.write_all(body)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition() -> Partition {
        Partition {
            source: "lms".into(),
            date: "2026-11-24".into(),
            hour: "16".into(),
        }
    }

    #[test]
    fn segments_seal_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let segments = SegmentDir::new(dir.path()).unwrap();
        let mut open = segments.open(partition(), 5).unwrap();
        open.append(5, "$JS.ACK.a", "{\"id\":\"1\"}").unwrap();
        open.append(9, "$JS.ACK.b", "{\"id\":\"2\"}").unwrap();
        let path = open.seal().unwrap();
        assert_eq!(segments.sealed().unwrap(), std::slice::from_ref(&path));
        assert_eq!(partition_of(&path), Some(partition()));
        let sealed = read_sealed(&path).unwrap();
        assert_eq!((sealed.first(), sealed.last()), (5, 9));
        assert_eq!(sealed.ack_subjects, ["$JS.ACK.a", "$JS.ACK.b"]);
        assert_eq!(sealed.ndjson, b"{\"id\":\"1\"}\n{\"id\":\"2\"}\n");
    }

    #[test]
    fn recovery_cuts_torn_lines_and_seals() {
        let dir = tempfile::tempdir().unwrap();
        let segments = SegmentDir::new(dir.path()).unwrap();
        let torn = dir
            .path()
            .join(format!("{}__{:020}.open", partition().file_stem(), 3));
        fs::write(
            &torn,
            "3\t$JS.ACK.a\t{\"id\":\"1\"}\n4\t$JS.ACK.b\t{\"id\":",
        )
        .unwrap();
        let empty = dir
            .path()
            .join(format!("{}__{:020}.open", partition().file_stem(), 8));
        fs::write(&empty, "8\t$JS.A").unwrap();
        assert_eq!(segments.recover().unwrap(), 1);
        let sealed = segments.sealed().unwrap();
        assert_eq!(sealed.len(), 1);
        assert_eq!(read_sealed(&sealed[0]).unwrap().seqs, [3]);
        assert!(!empty.exists());
    }
}
