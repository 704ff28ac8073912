//! Local segment files: each partition's events are appended to an open segment
//! (`<partition>__<first seq>.open`, lines `<seq>\t<ack subject>\t<event JSON>`); a full or
//! finished segment is sealed (renamed `.sealed`), uploaded as one object, and only then are its
//! messages acknowledged and the file deleted. After a crash, open segments keep their whole,
//! well-formed lines and are sealed as they are; what was cut (a torn last line, blocks a power
//! loss left zeroed) was never acked and comes again by redelivery. Nothing is lost or doubled.

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
const DAMAGED: &str = "damaged";

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

    /// Hands buffered lines to the OS, so a crash of the process (not of the machine) keeps them.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
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

    /// After a restart: keeps each open segment's well-formed lines (a torn last line or
    /// zeroed blocks are dropped) and seals it. Returns how many were recovered.
    pub fn recover(&self) -> io::Result<usize> {
        let mut recovered = 0;
        for path in self.files(OPEN)? {
            let data = fs::read(&path)?;
            let mut kept = Vec::with_capacity(data.len());
            let whole = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            for line in data[..whole].split(|&b| b == b'\n') {
                if parse_line(line).is_some_and(|(_, _, json)| is_json_object(json)) {
                    kept.extend_from_slice(line);
                    kept.push(b'\n');
                }
            }
            if kept.is_empty() {
                fs::remove_file(&path)?;
                continue;
            }
            if kept.len() < data.len() {
                let mut file = OpenOptions::new().write(true).truncate(true).open(&path)?;
                file.write_all(&kept)?;
                file.sync_data()?;
            }
            fs::rename(&path, path.with_extension(SEALED))?;
            recovered += 1;
        }
        Ok(recovered)
    }

    /// Renames a sealed segment that cannot be read `.damaged`, out of the upload queue.
    pub fn set_aside(&self, path: &Path) -> io::Result<()> {
        fs::rename(path, path.with_extension(DAMAGED))
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

/// The first sequence in a segment's name (the key of its oldest-age entry).
pub fn first_seq_of(path: &Path) -> u64 {
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
        let (seq, ack, json) = parse_line(line).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad line in {}", path.display()),
            )
        })?;
        sealed.seqs.push(seq);
        sealed
            .ack_subjects
            .push(String::from_utf8_lossy(ack).into_owned());
        sealed.ndjson.extend_from_slice(json);
        sealed.ndjson.push(b'\n');
    }
    Ok(sealed)
}

/// `<seq>\t<ack subject>\t<json>`, split; `None` when the line is not of that shape.
fn parse_line(line: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let mut fields = line.splitn(3, |&b| b == b'\t');
    let (seq, ack, json) = (fields.next()?, fields.next()?, fields.next()?);
    let seq = std::str::from_utf8(seq).ok()?.parse().ok()?;
    ack.starts_with(b"$JS.ACK.").then_some((seq, ack, json))
}

fn is_json_object(json: &[u8]) -> bool {
    json.first() == Some(&b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(json).is_ok()
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

    #[test]
    fn recovery_drops_zeroed_blocks_and_keeps_good_lines() {
        let dir = tempfile::tempdir().unwrap();
        let segments = SegmentDir::new(dir.path()).unwrap();
        let path = dir
            .path()
            .join(format!("{}__{:020}.open", partition().file_stem(), 3));
        let mut data = b"3\t$JS.ACK.a\t{\"id\":\"1\"}\n".to_vec();
        data.extend_from_slice(&[0u8; 4096]);
        data.extend_from_slice(b"\n5\t$JS.ACK.c\t{\"id\":\"3\"\n"); // cut short JSON
        data.extend_from_slice(b"7\t$JS.ACK.d\t{\"id\":\"4\"}\n");
        fs::write(&path, data).unwrap();
        assert_eq!(segments.recover().unwrap(), 1);
        let sealed = read_sealed(&segments.sealed().unwrap()[0]).unwrap();
        assert_eq!(sealed.seqs, [3, 7]);
        assert_eq!(sealed.ndjson, b"{\"id\":\"1\"}\n{\"id\":\"4\"}\n");
    }

    #[test]
    fn unreadable_segments_can_be_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let segments = SegmentDir::new(dir.path()).unwrap();
        let path = dir
            .path()
            .join(format!("{}__{:020}.sealed", partition().file_stem(), 3));
        fs::write(&path, b"\0\0\0\n").unwrap();
        assert!(read_sealed(&path).is_err());
        segments.set_aside(&path).unwrap();
        assert!(segments.sealed().unwrap().is_empty());
        assert!(path.with_extension("damaged").exists());
    }
}
