//! Local segment files: each partition's events are appended to an open segment
//! (`<partition>__<first seq>.open`, lines `<seq>\t<ack subject>\t<event JSON>`); a full or
//! finished segment is sealed (renamed `.sealed`), uploaded as one object, and only then are its
//! messages acknowledged and the file deleted. After a crash, open segments keep their whole,
//! well-formed lines and are sealed as they are; what was cut (a torn last line, blocks a power
//! loss left zeroed) was never acked and comes again by redelivery. Nothing is lost or doubled.
//! Segments are read line by line (scanning, compressing, acknowledging), never whole.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    time::Instant,
};

use bytes::Bytes;
use flate2::{Compression, write::GzEncoder};

use crate::{layout::Partition, seqs::SeqSet};

const OPEN: &str = "open";
const SEALED: &str = "sealed";
const DAMAGED: &str = "damaged";

/// A segment being written.
#[derive(Debug)]
pub struct OpenSegment {
    pub partition: Partition,
    /// The stream sequence of its first event, in its file name: the segment's id.
    pub first_seq: u64,
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
            first_seq,
            path,
            writer: BufWriter::with_capacity(256 * 1024, file),
            bytes: 0,
            count: 0,
            opened: Instant::now(),
        })
    }

    /// After a restart: keeps each open segment's well-formed lines (a torn last line or
    /// zeroed blocks are dropped) and seals it. Returns how many were recovered. Reads line by
    /// line: memory does not grow with the segment.
    pub fn recover(&self) -> io::Result<usize> {
        let mut recovered = 0;
        for path in self.files(OPEN)? {
            let kept_path = path.with_extension("recovering");
            let (mut kept, mut dropped) = (0u64, false);
            {
                let mut reader = BufReader::new(File::open(&path)?);
                let mut out = BufWriter::new(File::create(&kept_path)?);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line)? == 0 {
                        break;
                    }
                    let whole = line.last() == Some(&b'\n');
                    let body = line.strip_suffix(b"\n").unwrap_or(&line);
                    if whole && parse_line(body).is_some_and(|(_, _, json)| is_json_object(json)) {
                        out.write_all(&line)?;
                        kept += 1;
                    } else if !body.is_empty() || !whole {
                        dropped = true;
                    }
                }
                out.into_inner().map_err(|e| e.into_error())?.sync_data()?;
            }
            if kept == 0 {
                fs::remove_file(&kept_path)?;
                fs::remove_file(&path)?;
                continue;
            }
            if dropped {
                fs::rename(&kept_path, &path)?;
            } else {
                fs::remove_file(&kept_path)?;
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

/// Reads a segment line by line: `each(seq, ack subject, event JSON)`. A line not of that shape
/// is an `InvalidData` error (the segment is damaged); other errors are the disk's.
pub fn for_each_line(
    path: &Path,
    mut each: impl FnMut(u64, &[u8], &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        if body.is_empty() {
            continue;
        }
        let (seq, ack, json) = parse_line(body).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad line in {}", path.display()),
            )
        })?;
        each(seq, ack, json)?;
    }
}

/// The sequences in a segment.
pub fn scan(path: &Path) -> io::Result<SeqSet> {
    let mut seqs = SeqSet::default();
    for_each_line(path, |seq, _, _| {
        seqs.insert(seq);
        Ok(())
    })?;
    Ok(seqs)
}

/// Streams a segment's events as gzip NDJSON into `parts`, in pieces of at least `part_bytes`
/// (the last may be smaller). Blocking: run it on a blocking thread. Memory stays near
/// `part_bytes` whatever the segment's size.
pub fn compress(
    path: &Path,
    level: u32,
    part_bytes: usize,
    parts: &tokio::sync::mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<()> {
    let mut gz = GzEncoder::new(
        Vec::with_capacity(part_bytes + (64 << 10)),
        Compression::new(level),
    );
    let send = |chunk: Vec<u8>| {
        parts
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::other("upload ended"))
    };
    for_each_line(path, |_, _, json| {
        gz.write_all(json)?;
        gz.write_all(b"\n")?;
        if gz.get_ref().len() >= part_bytes {
            let chunk =
                std::mem::replace(gz.get_mut(), Vec::with_capacity(part_bytes + (64 << 10)));
            send(chunk)?;
        }
        Ok(())
    })?;
    let rest = gz.finish()?;
    if !rest.is_empty() {
        send(rest)?;
    }
    Ok(())
}

/// Streams a segment's ack subjects into `acks`, `batch` at a time. Blocking.
pub fn ack_subjects(
    path: &Path,
    batch: usize,
    acks: &tokio::sync::mpsc::Sender<Vec<String>>,
) -> io::Result<()> {
    let mut current = Vec::with_capacity(batch);
    let send = |subjects: Vec<String>| {
        acks.blocking_send(subjects)
            .map_err(|_| io::Error::other("acknowledging ended"))
    };
    for_each_line(path, |_, ack, _| {
        current.push(String::from_utf8_lossy(ack).into_owned());
        if current.len() >= batch {
            send(std::mem::replace(&mut current, Vec::with_capacity(batch)))?;
        }
        Ok(())
    })?;
    if !current.is_empty() {
        send(current)?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The gzip NDJSON body `compress` streams, decompressed.
    fn ndjson(path: &Path) -> Vec<u8> {
        use std::io::Read;
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        compress(path, 1, 5, &tx).unwrap();
        drop(tx);
        let mut gz = Vec::new();
        let mut parts = 0;
        while let Ok(part) = rx.try_recv() {
            gz.extend_from_slice(&part.unwrap());
            parts += 1;
        }
        assert!(parts >= 2, "small parts: the body comes in pieces");
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn acks(path: &Path) -> Vec<String> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        ack_subjects(path, 1, &tx).unwrap();
        drop(tx);
        std::iter::from_fn(|| rx.try_recv().ok())
            .flatten()
            .collect()
    }

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
        let seqs = scan(&path).unwrap();
        assert_eq!((seqs.first(), seqs.last()), (Some(5), Some(9)));
        assert_eq!(acks(&path), ["$JS.ACK.a", "$JS.ACK.b"]);
        assert_eq!(ndjson(&path), b"{\"id\":\"1\"}\n{\"id\":\"2\"}\n");
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
        assert_eq!(scan(&sealed[0]).unwrap().iter().collect::<Vec<_>>(), [3]);
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
        let sealed = &segments.sealed().unwrap()[0];
        assert_eq!(scan(sealed).unwrap().iter().collect::<Vec<_>>(), [3, 7]);
        assert_eq!(ndjson(sealed), b"{\"id\":\"1\"}\n{\"id\":\"4\"}\n");
    }

    #[test]
    fn unreadable_segments_can_be_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let segments = SegmentDir::new(dir.path()).unwrap();
        let path = dir
            .path()
            .join(format!("{}__{:020}.sealed", partition().file_stem(), 3));
        fs::write(&path, b"\0\0\0\n").unwrap();
        assert_eq!(
            scan(&path).unwrap_err().kind(),
            io::ErrorKind::InvalidData,
            "damage, not a disk error"
        );
        segments.set_aside(&path).unwrap();
        assert!(segments.sealed().unwrap().is_empty());
        assert!(path.with_extension("damaged").exists());
    }
}
