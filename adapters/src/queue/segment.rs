//! Disk segment files of the source queue.
//!
//! ```text
//! header:  "USQSEG1\n"                                   8 bytes
//! record:  seq u64 BE | len u32 BE | data (len bytes) | xxh3-64 of (seq BE, len BE, data) u64 BE
//! ```
//!
//! A segment is named `{label}-{first seq, 20 digits}.seg`, so names sort in queue order even
//! when older items are flushed after newer ones already spilled. An item is never split
//! across segments.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::QueueError;

pub(crate) const MAGIC: &[u8; 8] = b"USQSEG1\n";
pub(crate) const HEADER_BYTES: u64 = MAGIC.len() as u64;
/// seq + len + checksum.
pub(crate) const RECORD_OVERHEAD_BYTES: u64 = 8 + 4 + 8;

/// The on-disk size of an item's record.
pub(crate) fn record_len(data_len: usize) -> u64 {
    data_len as u64 + RECORD_OVERHEAD_BYTES
}

fn checksum(seq: u64, data: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&seq.to_be_bytes());
    h.update(&(data.len() as u32).to_be_bytes());
    h.update(data);
    h.digest()
}

pub(crate) fn segment_name(label: &str, first_seq: u64) -> String {
    format!("{label}-{first_seq:020}.seg")
}

/// The first sequence number encoded in a segment's name, if it is one of `label`'s.
pub(crate) fn parse_segment_name(label: &str, name: &str) -> Option<u64> {
    let digits = name.strip_prefix(label)?.strip_prefix('-')?.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What the queue knows of one segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) path: PathBuf,
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    pub(crate) items: u64,
    /// File size, header included.
    pub(crate) bytes: u64,
}

/// An open segment being appended to.
#[derive(Debug)]
pub(crate) struct SegmentWriter {
    out: BufWriter<File>,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> QueueError {
    let path = path.to_path_buf();
    move |source| QueueError::Io { op, path, source }
}

impl SegmentWriter {
    /// Creates a new segment file (failing if it exists: names are unique by first seq).
    pub(crate) fn create(
        dir: &Path,
        label: &str,
        first_seq: u64,
    ) -> Result<(Self, Segment), QueueError> {
        let path = dir.join(segment_name(label, first_seq));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("creating", &path))?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        out.write_all(MAGIC).map_err(io_err("writing", &path))?;
        let segment =
            Segment { path, first_seq, last_seq: first_seq, items: 0, bytes: HEADER_BYTES };
        Ok((SegmentWriter { out }, segment))
    }

    pub(crate) fn append(
        &mut self,
        segment: &mut Segment,
        seq: u64,
        data: &[u8],
    ) -> Result<(), QueueError> {
        let len = u32::try_from(data.len()).map_err(|_| QueueError::Corrupt {
            path: segment.path.clone(),
            reason: format!("an item of {} bytes exceeds the 4 GiB record limit", data.len()),
        })?;
        let write = |out: &mut BufWriter<File>| -> io::Result<()> {
            out.write_all(&seq.to_be_bytes())?;
            out.write_all(&len.to_be_bytes())?;
            out.write_all(data)?;
            out.write_all(&checksum(seq, data).to_be_bytes())
        };
        write(&mut self.out).map_err(io_err("writing", &segment.path))?;
        if segment.items == 0 {
            segment.first_seq = seq;
        }
        segment.last_seq = seq;
        segment.items += 1;
        segment.bytes += record_len(data.len());
        Ok(())
    }

    /// Flushes the buffer, optionally fsyncs, and closes the file.
    pub(crate) fn finish(mut self, segment: &Segment, durable: bool) -> Result<(), QueueError> {
        self.out.flush().map_err(io_err("writing", &segment.path))?;
        if durable {
            self.out.get_ref().sync_all().map_err(io_err("syncing", &segment.path))?;
        }
        Ok(())
    }
}

/// Reads a segment's items, checking every record.
pub(crate) fn read_segment(path: &Path) -> Result<Vec<(u64, Vec<u8>)>, QueueError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err("reading", path))?;
    let corrupt = |reason: String| QueueError::Corrupt { path: path.to_path_buf(), reason };
    let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Err(corrupt("it does not start with the segment header".into()));
    };
    let mut items = Vec::new();
    let mut at = rest;
    while !at.is_empty() {
        let Some((head, tail)) = at.split_first_chunk::<12>() else {
            return Err(corrupt(format!(
                "a record header is cut short after {} items",
                items.len()
            )));
        };
        let seq = u64::from_be_bytes(head[..8].try_into().expect("8 of 12 bytes"));
        let len = u32::from_be_bytes(head[8..].try_into().expect("4 of 12 bytes")) as usize;
        if tail.len() < len + 8 {
            return Err(corrupt(format!("record {seq} is cut short")));
        }
        let (data, tail) = tail.split_at(len);
        let (sum, tail) = tail.split_at(8);
        if u64::from_be_bytes(sum.try_into().expect("8 bytes")) != checksum(seq, data) {
            return Err(corrupt(format!("record {seq} fails its checksum")));
        }
        items.push((seq, data.to_vec()));
        at = tail;
    }
    Ok(items)
}

/// Scans `dir` for `label`'s segments: (first seq, path), in queue order.
pub(crate) fn list_segments(dir: &Path, label: &str) -> Result<Vec<(u64, PathBuf)>, QueueError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        if let Some(seq) = entry.file_name().to_str().and_then(|n| parse_segment_name(label, n)) {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_numerically() {
        let a = segment_name("job-1", 9);
        let b = segment_name("job-1", 10);
        assert!(a < b);
        assert_eq!(parse_segment_name("job-1", &a), Some(9));
        assert_eq!(parse_segment_name("job-2", &a), None);
        assert_eq!(parse_segment_name("job", &a), None);
        assert_eq!(parse_segment_name("job-1", "job-1-123.seg"), None);
    }

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut seg) = SegmentWriter::create(dir.path(), "q", 5).unwrap();
        for (seq, data) in [(5, &b"five"[..]), (6, b""), (9, &[0xff; 1000])] {
            w.append(&mut seg, seq, data).unwrap();
        }
        w.finish(&seg, true).unwrap();
        assert_eq!(fs::metadata(&seg.path).unwrap().len(), seg.bytes);
        assert_eq!((seg.first_seq, seg.last_seq, seg.items), (5, 9, 3));
        let items = read_segment(&seg.path).unwrap();
        assert_eq!(items, vec![(5, b"five".to_vec()), (6, vec![]), (9, vec![0xff; 1000])]);

        let mut bytes = fs::read(&seg.path).unwrap();
        bytes[30] ^= 1;
        fs::write(&seg.path, &bytes).unwrap();
        assert!(matches!(read_segment(&seg.path), Err(QueueError::Corrupt { .. })));
        fs::write(&seg.path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(read_segment(&seg.path), Err(QueueError::Corrupt { .. })));
    }
}
