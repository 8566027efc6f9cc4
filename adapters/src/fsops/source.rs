//! Source-side helpers: the deterministic [`scan`], reads, sparse regions, block hashes and
//! their comparison, and attribute comparison.
//!
//! The source is the local, trusted tree, so these use ordinary paths and `std::fs`; what they
//! produce ([`Entry`], [`BlockHashes`]) goes over the wire.

use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::SeekFrom;
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::{Entry, EntryKind, Meta, RelPath};
use crate::error::SourceError;

/// The block size of block hashes and mirror packets: 64 KiB.
pub const BLOCK_SIZE: u32 = 64 * 1024;

/// Walks `root` depth first, in a deterministic order: the root first, then each directory's
/// entries sorted by the raw bytes of their names, a directory immediately followed by its
/// contents. Symlinks are reported, never followed; special files (devices, FIFOs, sockets)
/// are reported with [`EntryKind::Special`] so the caller can skip them.
///
/// Errors (an entry that vanished between listing and `lstat`, an unreadable directory) are
/// yielded as items and the walk goes on; an unreadable directory's contents are skipped.
/// Hard links are recognised by the caller from `(dev, ino)` of entries with `nlink > 1`.
///
/// Memory: one sorted list of names and attributes per directory on the current path.
pub fn scan(root: impl AsRef<Path>) -> Scan {
    Scan {
        root: root.as_ref().to_path_buf(),
        started: false,
        expand: None,
        stack: Vec::new(),
        descend: true,
    }
}

/// The entries of one folder of the tree at `root`, as [`scan`] yields them (sorted, paths
/// relative to `root`) but without the folder itself and without descending: a walk that
/// visits folders one at a time stats each entry once.
///
/// # Errors
///
/// The folder cannot be listed.
pub fn list_folder(root: impl AsRef<Path>, folder: RelPath) -> Result<Scan, SourceError> {
    let mut listing = Scan {
        root: root.as_ref().to_path_buf(),
        started: true,
        expand: None,
        stack: Vec::new(),
        descend: false,
    };
    listing.open_dir(folder)?;
    Ok(listing)
}

/// The iterator returned by [`scan`].
#[derive(Debug)]
pub struct Scan {
    root: PathBuf,
    started: bool,
    /// The directory yielded last, whose contents come next unless skipped.
    expand: Option<RelPath>,
    /// Per open directory: its path and its remaining entries (name and attributes), in
    /// reverse order (pop is next).
    stack: Vec<(RelPath, Vec<Listed>)>,
    /// Whether a directory's contents follow it ([`list_folder`] does not descend).
    descend: bool,
}

/// A name read from a directory and its attributes, read relative to the open directory.
type Listed = (Vec<u8>, io::Result<fs::Metadata>);

impl Scan {
    /// Skips the contents of the directory just yielded (for exclusions). Does nothing if the
    /// last entry was not a directory.
    pub fn skip_dir(&mut self) {
        self.expand = None;
    }

    fn entry(&self, path: RelPath, meta: io::Result<fs::Metadata>) -> Result<Entry, SourceError> {
        let local = || path.to_local(&self.root);
        let meta = meta.map_err(|e| SourceError::from_io("reading its attributes", local(), e))?;
        let link_target = if meta.file_type().is_symlink() {
            let local = local();
            let t = fs::read_link(&local)
                .map_err(|e| SourceError::from_io("reading the symlink", local.clone(), e))?;
            Some(t.into_os_string().into_vec())
        } else {
            None
        };
        Ok(Entry::from_metadata(path, &meta, link_target))
    }

    fn open_dir(&mut self, dir: RelPath) -> Result<(), SourceError> {
        let local = dir.to_local(&self.root);
        let read = fs::read_dir(&local)
            .map_err(|e| SourceError::from_io("listing the folder", local.clone(), e))?;
        let mut names = Vec::new();
        for entry in read {
            let entry =
                entry.map_err(|e| SourceError::from_io("listing the folder", local.clone(), e))?;
            // `DirEntry::metadata` stats relative to the open directory (no walk of the whole
            // path per entry) and does not follow symlinks.
            names.push((entry.file_name().as_bytes().to_vec(), entry.metadata()));
        }
        // Reverse order, so that popping from the end yields ascending names.
        names.sort_unstable_by(|a, b| b.0.cmp(&a.0));
        self.stack.push((dir, names));
        Ok(())
    }
}

impl Iterator for Scan {
    type Item = Result<Entry, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.started {
            self.started = true;
            return Some(match self.entry(RelPath::root(), fs::symlink_metadata(&self.root)) {
                Ok(e) if e.kind == EntryKind::Dir => {
                    self.expand = Some(RelPath::root());
                    Ok(e)
                }
                Ok(_) => Err(SourceError::NotADirectory { path: self.root.clone() }),
                Err(e) => Err(e),
            });
        }
        if let Some(dir) = self.expand.take()
            && let Err(e) = self.open_dir(dir)
        {
            return Some(Err(e));
        }
        loop {
            let (dir, names) = self.stack.last_mut()?;
            let Some((name, meta)) = names.pop() else {
                self.stack.pop();
                continue;
            };
            // Names from readdir are single non-empty components without NUL; join cannot fail
            // for them, but an odd file system is reported rather than trusted.
            let path = match dir.join(&name) {
                Ok(p) => p,
                Err(e) => {
                    return Some(Err(SourceError::Io {
                        op: "naming an entry",
                        path: dir.to_local(&self.root).join(std::ffi::OsStr::from_bytes(&name)),
                        source: io::Error::other(e.to_string()),
                    }));
                }
            };
            let entry = self.entry(path, meta);
            if let Ok(e) = &entry
                && e.kind == EntryKind::Dir
                && self.descend
            {
                self.expand = Some(e.path.clone());
            }
            return Some(entry);
        }
    }
}

/// Reads from `offset` into `buf`'s spare capacity until it is full or the file ends, with no
/// zeroing of the room first; returns the bytes appended.
pub fn append_at(file: &File, buf: &mut Vec<u8>, offset: u64) -> io::Result<usize> {
    let start = buf.len();
    while buf.len() < buf.capacity() {
        let at = offset + (buf.len() - start) as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(buf), at) {
            Ok(0) => break,
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf.len() - start)
}

/// Fills `buf` from `offset`, short only at the end of the file; returns the bytes read.
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The regions of `file` that hold data, ascending, found with `SEEK_DATA`/`SEEK_HOLE`;
/// everything else reads as zeros and needs no transfer (the target gets a hole by extending
/// the file with [`Operation::Truncate`](super::Operation::Truncate)). File systems without
/// hole tracking report the whole file as data.
///
/// The file's offset is moved; use a handle of its own or `read_at`, which ignores it.
pub fn data_ranges(file: &File) -> io::Result<Vec<Range<u64>>> {
    let len = file.metadata()?.len();
    let mut out = Vec::new();
    let mut at = 0;
    while at < len {
        let start = match rustix::fs::seek(file, SeekFrom::Data(at)) {
            Ok(s) => s,
            // No data at or after `at`: the rest is a hole.
            Err(Errno::NXIO) => break,
            // Kernels or file systems without SEEK_DATA: everything is data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) if at == 0 => {
                out.push(0..len);
                return Ok(out);
            }
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(file, SeekFrom::Hole(start)) {
            Ok(e) => e.min(len),
            Err(Errno::NXIO) => len,
            Err(e) => return Err(e.into()),
        };
        if end <= start {
            break;
        }
        out.push(start..end);
        at = end;
    }
    Ok(out)
}

/// A 128-bit xxh3 hash of one block.
///
/// xxh3 is fast (tens of GB/s) but not collision resistant against an adversary who writes
/// crafted blocks to the source; the source's own content is trusted here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockHash(pub u128);

impl BlockHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        BlockHash(xxhash_rust::xxh3::xxh3_128(bytes))
    }
}

/// The block hashes of (a range of blocks of) a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHashes {
    /// Bytes per block (the last block of the file may be shorter).
    pub block_size: u32,
    /// The file's length when hashed.
    pub len: u64,
    /// The index of the first hashed block (0 for the whole file).
    pub first_block: u64,
    /// One hash per block from `first_block`.
    pub hashes: Vec<BlockHash>,
}

impl BlockHashes {
    /// Whether the hashes reach the end of the file.
    pub fn covers_end(&self) -> bool {
        let end = (self.first_block + self.hashes.len() as u64)
            .saturating_mul(u64::from(self.block_size));
        end >= self.len
    }
}

/// Hashes every block of `file` (see [`block_hashes_range`]).
pub fn block_hashes(file: &File, block_size: u32) -> io::Result<BlockHashes> {
    block_hashes_range(file, block_size, 0, u64::MAX)
}

/// Hashes at most `max_blocks` blocks of `file` from block `first_block`. Blocks that lie
/// entirely in a hole are hashed as zeros without reading them.
pub fn block_hashes_range(
    file: &File,
    block_size: u32,
    first_block: u64,
    max_blocks: u64,
) -> io::Result<BlockHashes> {
    if block_size == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "block size 0"));
    }
    let bs = u64::from(block_size);
    let len = file.metadata()?.len();
    let blocks = len.div_ceil(bs);
    let end_block = first_block.saturating_add(max_blocks).min(blocks);
    let mut hasher = RangeHasher::new(file, block_size)?;
    let mut hashes = Vec::with_capacity(
        usize::try_from(end_block.saturating_sub(first_block)).unwrap_or(0).min(1 << 20),
    );
    for i in first_block..end_block {
        let start = i * bs;
        hashes.push(hasher.hash(start, (start + bs).min(len))?);
    }
    Ok(BlockHashes { block_size, len, first_block, hashes })
}

/// Hashes byte ranges of a file, skipping the reads of ranges that lie in holes.
struct RangeHasher<'f> {
    file: &'f File,
    data: Vec<Range<u64>>,
    /// Index of the first data range that may still overlap (ranges are asked in order).
    next: usize,
    buf: Vec<u8>,
}

impl<'f> RangeHasher<'f> {
    fn new(file: &'f File, block_size: u32) -> io::Result<Self> {
        Ok(RangeHasher {
            file,
            data: data_ranges(file)?,
            next: 0,
            buf: vec![0; block_size as usize],
        })
    }

    /// The hash of `start..end` (at most a block), asked in ascending order.
    fn hash(&mut self, start: u64, end: u64) -> io::Result<BlockHash> {
        while self.next < self.data.len() && self.data[self.next].end <= start {
            self.next += 1;
        }
        let n = usize::try_from(end - start).expect("a block fits in memory");
        let in_hole = self.data.get(self.next).is_none_or(|d| d.start >= end);
        let buf = &mut self.buf[..n];
        if in_hole {
            buf.fill(0);
        } else {
            let got = read_at(self.file, buf, start)?;
            // The file shrank meanwhile: hash what is there, as zeros beyond (the difference
            // shows up as a changed block and the caller re-examines the file).
            buf[got..].fill(0);
        }
        Ok(BlockHash::of(buf))
    }
}

/// What differs between a source file and the target's copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockDiff {
    /// Byte ranges of the source, within the length both files share, whose content differs:
    /// ascending, adjacent blocks coalesced. Send each as [`Operation::Write`]s.
    ///
    /// [`Operation::Write`]: super::Operation::Write
    pub changed: Vec<Range<u64>>,
    /// Bytes the source has past the target's end (an append): send them too.
    pub tail: Option<Range<u64>>,
    /// The source's length, when the target is longer: send [`Operation::Truncate`] to it.
    ///
    /// [`Operation::Truncate`]: super::Operation::Truncate
    pub truncate_to: Option<u64>,
}

impl BlockDiff {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.tail.is_none() && self.truncate_to.is_none()
    }

    /// The bytes to send.
    pub fn bytes_to_send(&self) -> u64 {
        self.changed.iter().chain(self.tail.iter()).map(|r| r.end - r.start).sum()
    }

    fn mark(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        match self.changed.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => self.changed.push(range),
        }
    }
}

/// Compares `source` against the target's block hashes, reading the source.
///
/// Precise at the ends: the target's last, partial block is compared against the same number
/// of source bytes, so an append sends only the appended bytes ([`BlockDiff::tail`]), and a
/// file that shrank is truncated ([`BlockDiff::truncate_to`]). When `target` covers only some
/// blocks (a ranged query), only those are compared and no tail or truncation is reported
/// unless it reaches the end.
pub fn diff_blocks(source: &File, target: &BlockHashes) -> io::Result<BlockDiff> {
    let bs = u64::from(target.block_size.max(1));
    let source_len = source.metadata()?.len();
    let mut hasher = RangeHasher::new(source, target.block_size.max(1))?;
    let mut diff = BlockDiff::default();
    for (i, want) in target.hashes.iter().enumerate() {
        let start = (target.first_block + i as u64) * bs;
        let t_end = (start + bs).min(target.len);
        if start >= source_len {
            break;
        }
        if source_len < t_end {
            // The source ends inside this block: its remaining bytes differ by length.
            diff.mark(start..source_len);
            break;
        }
        if hasher.hash(start, t_end)? != *want {
            diff.mark(start..t_end);
        }
    }
    if target.covers_end() {
        if source_len > target.len {
            diff.tail = Some(target.len..source_len);
        } else if source_len < target.len {
            diff.truncate_to = Some(source_len);
        }
    }
    Ok(diff)
}

/// Compares two sets of block hashes of the same geometry (e.g. fresh source hashes against
/// the per-file index of what was last sent), without reading anything. Whole blocks only:
/// a changed last block is sent whole.
pub fn diff_hashes(source: &BlockHashes, target: &BlockHashes) -> BlockDiff {
    let bs = u64::from(source.block_size.max(1));
    let mut diff = BlockDiff::default();
    if source.block_size != target.block_size || source.first_block != target.first_block {
        // Different geometry: nothing can be matched, everything hashed is changed.
        diff.mark(
            source.first_block * bs
                ..((source.first_block + source.hashes.len() as u64) * bs).min(source.len),
        );
        return diff;
    }
    for (i, hash) in source.hashes.iter().enumerate() {
        let start = (source.first_block + i as u64) * bs;
        let end = (start + bs).min(source.len);
        if target.hashes.get(i) != Some(hash) || (end < start + bs && target.len != source.len) {
            diff.mark(start..end);
        }
    }
    if source.covers_end() && target.covers_end() && source.len < target.len {
        diff.truncate_to = Some(source.len);
    }
    diff
}

/// How two sets of attributes differ, for the "compare attributes" mirror modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttrComparison {
    /// Sizes differ.
    pub size_differs: bool,
    /// Modification times differ (compared to the nanosecond).
    pub mtime_differs: bool,
    /// Permission bits differ.
    pub mode_differs: bool,
    /// Owner or group differ.
    pub owner_differs: bool,
}

impl AttrComparison {
    /// Whether the data may differ (size or mtime): the file is sent, whole or by blocks.
    pub fn data_may_differ(&self) -> bool {
        self.size_differs || self.mtime_differs
    }

    /// Whether only mode or owner differ: a [`Operation::SetMeta`](super::Operation::SetMeta)
    /// is enough.
    pub fn only_meta_differs(&self) -> bool {
        !self.data_may_differ() && (self.mode_differs || self.owner_differs)
    }

    /// Whether nothing compared differs.
    pub fn identical(&self) -> bool {
        *self == AttrComparison::default()
    }
}

/// Compares source and target attributes: size and mtime (ns) for the data, mode and owner
/// separately. Access times are never compared (reading changes them).
pub fn compare_attributes(source: &Meta, target: &Meta) -> AttrComparison {
    AttrComparison {
        size_differs: source.size_bytes != target.size_bytes,
        mtime_differs: source.mtime_ns != target.mtime_ns,
        mode_differs: source.mode != target.mode,
        owner_differs: (source.uid, source.gid) != (target.uid, target.gid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_at_fills_the_spare_room_or_stops_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"0123456789").unwrap();
        let file = File::open(&path).unwrap();
        let mut buf = Vec::with_capacity(6);
        buf.extend_from_slice(b"hd");
        assert_eq!(append_at(&file, &mut buf, 3).unwrap(), 4);
        assert_eq!(buf, b"hd3456");
        let mut buf = Vec::with_capacity(8);
        assert_eq!(append_at(&file, &mut buf, 7).unwrap(), 3, "short at the end of the file");
        assert_eq!(buf, b"789");
    }

    #[test]
    fn attribute_comparison_separates_data_from_meta() {
        let a = Meta { mode: 0o644, uid: 1, gid: 1, atime_ns: 5, mtime_ns: 10, size_bytes: 3 };
        assert!(compare_attributes(&a, &a).identical());
        assert!(compare_attributes(&a, &Meta { atime_ns: 99, ..a }).identical());
        assert!(compare_attributes(&a, &Meta { mtime_ns: 11, ..a }).data_may_differ());
        assert!(compare_attributes(&a, &Meta { size_bytes: 4, ..a }).data_may_differ());
        let c = compare_attributes(&a, &Meta { mode: 0o600, uid: 2, ..a });
        assert!(c.only_meta_differs() && c.mode_differs && c.owner_differs);
    }

    #[test]
    fn hash_diff_finds_changed_blocks_and_truncation() {
        let h = |v: &[u128], len| BlockHashes {
            block_size: 4,
            len,
            first_block: 0,
            hashes: v.iter().map(|&x| BlockHash(x)).collect(),
        };
        let d = diff_hashes(&h(&[1, 2, 3, 4], 16), &h(&[1, 9, 9, 4], 16));
        assert_eq!(d.changed, vec![4..12]);
        let d = diff_hashes(&h(&[1, 2], 8), &h(&[1, 2, 3], 12));
        assert!(d.changed.is_empty());
        assert_eq!(d.truncate_to, Some(8));
        let d = diff_hashes(&h(&[1, 2, 3], 10), &h(&[1, 2], 8));
        assert_eq!(d.changed, vec![8..10]);
        assert!(diff_hashes(&h(&[1], 4), &h(&[1], 4)).is_empty());
    }
}
