//! The source queue: what change capture and the mirror produced and the target has not yet
//! acknowledged.
//!
//! # Shape
//!
//! Items are opaque bytes (serialized operations) with increasing sequence numbers. In queue
//! order they are:
//!
//! ```text
//!   acknowledged (gone) | in flight (sent, kept)   | pending (not yet sent)
//!                       | memory ...................................... | disk segments ...
//! ```
//!
//! - **Memory holds the oldest items**, up to [`QueueLimits::memory_bytes`]. When memory is
//!   full, new items spill to **disk segments** of at most [`QueueLimits::segment_bytes`]
//!   (5 MB), never splitting an item (an item larger than a segment gets a segment of its
//!   own). While any segment exists, new items go to disk too, so order holds; once the
//!   segments are drained, new items go to memory again.
//! - [`SourceQueue::pop`] hands out the next pending item and keeps it **in flight**: the
//!   source must be able to resend everything the target has not made durable. Segments are
//!   read back oldest first; a segment's items move to memory as a whole when it is reached
//!   and the file is deleted then. In-flight items always stay in memory, so memory holds at
//!   most the in-flight items plus the larger of the memory limit and one segment: the
//!   transport's window of unacknowledged operations bounds the first term.
//! - [`SourceQueue::ack`] drops everything up to a sequence number: it is called for each
//!   `Ack` from the target, and after a reconnect with the target's `last_applied_seq`
//!   (which may reach past what this queue believes was sent, e.g. after a restart).
//! - [`SourceQueue::rewind`] puts every in-flight item back to pending: after a reconnect,
//!   call `ack(last_applied_seq)` then `rewind()`, and `pop` resends the rest in order.
//!
//! # Exhaustion
//!
//! [`SourceQueue::push`] fails with [`QueueError::Full`] when memory is full and the disk
//! queue is disabled, would pass its limit, or would leave less than
//! [`QueueLimits::min_free_bytes`] on the queue's volume (checked with `statvfs` whenever a
//! segment is started, reserving a whole segment). The caller then disconnects the job; the
//! queue stays usable.
//!
//! # Restarts
//!
//! The queue is not a write-ahead log: a crash loses what it held (the engine's durable dirty
//! set and a remirror of what changed cover that). On a clean shutdown,
//! [`SourceQueue::flush_to_disk`] writes memory to segments, syncs them and leaves a manifest
//! (`{label}.flushed`); [`SourceQueue::open`] on a directory with a manifest reloads every
//! segment in order, all items pending, without reading them (each segment's records are
//! checked when it is read back). Segments found *without* a marker are the tail of a queue whose head died
//! in memory: they are deleted rather than sent with a gap before them, and
//! [`SourceQueue::recovery`] says so.
//!
//! Everything here is synchronous file I/O: call it from a blocking thread.

mod segment;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

use segment::{HEADER_BYTES, Segment, SegmentWriter, list_segments, read_segment, record_len};

use crate::error::{FullReason, QueueError};

/// The disk part of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskLimit {
    /// No disk queue: when memory is full, the queue is exhausted.
    Disabled,
    /// As much disk as the volume allows, keeping the minimum free space.
    Unlimited,
    /// At most this many bytes of segments.
    Limited(u64),
}

/// The queue's limits. The defaults are the seeds' (memory 1024 MB, disk unlimited, minimum
/// free space 250 MB, alert at 50 %, 5 MB segments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Bytes of item data held in memory before spilling to disk.
    pub memory_bytes: u64,
    /// The disk queue.
    pub disk: DiskLimit,
    /// Free space to keep on the queue's volume.
    pub min_free_bytes: u64,
    /// Disk usage (percent of what the disk queue may use) at which to alert.
    pub alert_percent: u8,
    /// Maximum size of one segment file (an item larger than this gets a segment of its own).
    pub segment_bytes: u64,
}

/// 1 MiB.
const MIB: u64 = 1024 * 1024;

/// The default segment size: 5 MB.
pub const SEGMENT_BYTES: u64 = 5 * MIB;

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            memory_bytes: 1024 * MIB,
            disk: DiskLimit::Unlimited,
            min_free_bytes: 250 * MIB,
            alert_percent: 50,
            segment_bytes: SEGMENT_BYTES,
        }
    }
}

/// How full the queue is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueUsage {
    /// Items held (in flight and pending).
    pub items: u64,
    /// Of which in flight.
    pub in_flight: u64,
    /// Item bytes in memory.
    pub memory_bytes: u64,
    /// Segment file bytes on disk.
    pub disk_bytes: u64,
    /// Disk bytes as a percentage of what the disk queue may use: of its limit, or with an
    /// unlimited disk queue of what the free space allows (keeping the minimum free); 0 when
    /// disabled.
    pub disk_percent: u8,
    /// Whether `disk_percent` reached the alert threshold.
    pub alert: bool,
}

/// What [`SourceQueue::open`] found in its directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Items reloaded from a clean shutdown.
    pub reloaded_items: u64,
    /// Segments deleted because the queue was not flushed before it stopped (the items before
    /// them were lost with the process's memory): the job must remirror what changed.
    pub discarded_segments: u64,
}

/// The source queue of one job connection. See the module documentation.
#[derive(Debug)]
pub struct SourceQueue {
    dir: PathBuf,
    label: String,
    limits: QueueLimits,
    /// The oldest items: in flight first (`sent` of them), then pending.
    mem: VecDeque<(u64, Bytes)>,
    mem_bytes: u64,
    sent: usize,
    /// Bytes of the `sent` items.
    sent_bytes: u64,
    /// Newer items on disk, oldest first; the last may be open for writing.
    segments: VecDeque<Segment>,
    writer: Option<SegmentWriter>,
    disk_bytes: u64,
    last_pushed: Option<u64>,
    recovery: Recovery,
    /// A manifest from `flush_to_disk` describes the disk exactly; any change invalidates it.
    flushed: bool,
    /// Held for the queue's lifetime: an exclusive lock so two engines never share a queue.
    _lock: File,
}

/// How long [`SourceQueue::open`] waits for the queue's lock. The holder may be this engine's
/// previous queue for the same job, still dropped by a stopping task (a reversed job opens its
/// queue again at once); it lets go within moments. Another engine holds it for good.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);

/// Takes an exclusive `flock` on `file`, trying again while it is held, for up to `patience`.
fn lock_within(file: &File, patience: Duration) -> std::io::Result<()> {
    let started = Instant::now();
    loop {
        match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK && started.elapsed() < patience => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl SourceQueue {
    /// Opens the queue `label` (letters, digits, `-`, `_`, `.`; e.g. the job id and
    /// connection) in `dir`, creating the directory if needed, reloading what a clean
    /// shutdown flushed and discarding what a crash left (see [`SourceQueue::recovery`]).
    pub fn open(
        dir: impl AsRef<Path>,
        label: &str,
        limits: QueueLimits,
    ) -> Result<Self, QueueError> {
        let dir = dir.as_ref().to_path_buf();
        let label_ok = !label.is_empty()
            && label.len() <= 128
            && !label.starts_with('.')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !label_ok {
            return Err(QueueError::InvalidLabel { label: label.to_string() });
        }
        fs::create_dir_all(&dir).map_err(|source| QueueError::Io {
            op: "creating",
            path: dir.clone(),
            source,
        })?;
        let lock_path = dir.join(format!("{label}.lock"));
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(
                |source| QueueError::Io { op: "creating", path: lock_path.clone(), source },
            )?;
        lock_within(&lock, LOCK_PATIENCE).map_err(|source| QueueError::Io {
            op: "locking (is another engine using this queue?)",
            path: lock_path.clone(),
            source,
        })?;

        let mut queue = SourceQueue {
            dir,
            label: label.to_string(),
            limits,
            mem: VecDeque::new(),
            mem_bytes: 0,
            sent: 0,
            sent_bytes: 0,
            segments: VecDeque::new(),
            writer: None,
            disk_bytes: 0,
            last_pushed: None,
            recovery: Recovery::default(),
            flushed: false,
            _lock: lock,
        };
        queue.recover()?;
        Ok(queue)
    }

    fn marker_path(&self) -> PathBuf {
        self.dir.join(format!("{}.flushed", self.label))
    }

    fn recover(&mut self) -> Result<(), QueueError> {
        let found = list_segments(&self.dir, &self.label)?;
        let marker = self.marker_path();
        let manifest = match fs::read_to_string(&marker) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(QueueError::Io { op: "reading", path: marker, source }),
        };
        match manifest.as_deref().map(|m| self.check_manifest(m, &found)) {
            Some(Ok(segments)) => {
                self.recovery.reloaded_items = segments.iter().map(|s| s.items).sum();
                self.disk_bytes = segments.iter().map(|s| s.bytes).sum();
                self.last_pushed = segments.back().map(|s| s.last_seq);
                self.segments = segments;
            }
            outcome => {
                if !found.is_empty() {
                    let why = match outcome {
                        Some(Err(reason)) => reason,
                        _ => "the queue was not flushed before the engine stopped".to_string(),
                    };
                    tracing::warn!(queue = %self.label, segments = found.len(), %why, "discarding the disk queue");
                }
                for (_, path) in &found {
                    remove(path)?;
                }
                self.recovery.discarded_segments = found.len() as u64;
            }
        }
        // From here the state is live again: a crash must not reuse the manifest.
        remove(&marker)?;
        Ok(())
    }

    /// The manifest (one `first last items bytes` line per segment, in order) checked against
    /// the segment files present. Records are checked when each segment is read back.
    fn check_manifest(
        &self,
        manifest: &str,
        found: &[(u64, PathBuf)],
    ) -> Result<VecDeque<Segment>, String> {
        let mut segments = VecDeque::new();
        let mut lines = manifest.lines();
        for (seq, path) in found {
            let line =
                lines.next().ok_or_else(|| format!("{} is not in the manifest", path.display()))?;
            let fields: Vec<u64> = line
                .split(' ')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| format!("bad manifest line {line:?}"))?;
            let &[first_seq, last_seq, items, bytes] = fields.as_slice() else {
                return Err(format!("bad manifest line {line:?}"));
            };
            let size = fs::metadata(path).map(|m| m.len()).map_err(|e| e.to_string())?;
            if first_seq != *seq || size != bytes || last_seq < first_seq {
                return Err(format!("{} does not match the manifest", path.display()));
            }
            if segments.back().is_some_and(|s: &Segment| s.last_seq >= first_seq) {
                return Err("the manifest's segments overlap".into());
            }
            segments.push_back(Segment { path: path.clone(), first_seq, last_seq, items, bytes });
        }
        if lines.next().is_some() {
            return Err("a segment in the manifest is missing".into());
        }
        Ok(segments)
    }

    /// Called before anything that may change the segments: a manifest left by
    /// `flush_to_disk` no longer describes them, and a stop from here on is not clean.
    fn unflush(&mut self) -> Result<(), QueueError> {
        if self.flushed {
            self.flushed = false;
            remove(&self.marker_path())?;
        }
        Ok(())
    }

    /// What opening found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The sequence number of the last item pushed, while the queue remembers one.
    pub fn last_pushed(&self) -> Option<u64> {
        self.last_pushed
    }

    /// The limits.
    pub fn limits(&self) -> &QueueLimits {
        &self.limits
    }

    /// Changes the limits (they apply to the next pushes; nothing already queued moves).
    pub fn set_limits(&mut self, limits: QueueLimits) {
        self.limits = limits;
    }

    /// Queues an item. `seq` must be greater than every sequence number pushed before.
    ///
    /// Fails with [`QueueError::Full`] when the queue is exhausted (nothing is queued then).
    pub fn push(&mut self, seq: u64, data: impl Into<Bytes>) -> Result<(), QueueError> {
        let data = data.into();
        if let Some(last) = self.last_pushed
            && seq <= last
        {
            return Err(QueueError::OutOfOrder { seq, last });
        }
        self.unflush()?;
        let len = data.len() as u64;
        if self.segments.is_empty() && self.mem_bytes + len <= self.limits.memory_bytes {
            self.mem_bytes += len;
            self.mem.push_back((seq, data));
        } else {
            self.push_to_disk(seq, &data)?;
        }
        self.last_pushed = Some(seq);
        Ok(())
    }

    fn push_to_disk(&mut self, seq: u64, data: &[u8]) -> Result<(), QueueError> {
        let record = record_len(data.len());
        let needs_new_segment = match (self.segments.back(), &self.writer) {
            (Some(seg), Some(_)) => seg.items > 0 && seg.bytes + record > self.limits.segment_bytes,
            _ => true,
        };
        let added = record + if needs_new_segment { HEADER_BYTES } else { 0 };
        match self.limits.disk {
            DiskLimit::Disabled => {
                return Err(QueueError::Full {
                    reason: FullReason::MemoryFullDiskDisabled {
                        memory_limit_bytes: self.limits.memory_bytes,
                    },
                });
            }
            DiskLimit::Limited(limit) if self.disk_bytes + added > limit => {
                return Err(QueueError::Full {
                    reason: FullReason::DiskLimit { disk_limit_bytes: limit },
                });
            }
            _ => {}
        }
        if needs_new_segment {
            // Reserve a whole segment (or this item's own) against the minimum free space.
            let free = self.free_bytes()?;
            let reserve = added.max(self.limits.segment_bytes);
            if free < self.limits.min_free_bytes.saturating_add(reserve) {
                return Err(QueueError::Full {
                    reason: FullReason::MinFree {
                        free_bytes: free,
                        min_free_bytes: self.limits.min_free_bytes,
                    },
                });
            }
            self.close_writer(false)?;
            let (writer, segment) = SegmentWriter::create(&self.dir, &self.label, seq)?;
            self.disk_bytes += segment.bytes;
            self.writer = Some(writer);
            self.segments.push_back(segment);
        }
        let segment = self.segments.back_mut().expect("a segment was ensured above");
        let writer = self.writer.as_mut().expect("a writer was ensured above");
        writer.append(segment, seq, data)?;
        self.disk_bytes += record;
        Ok(())
    }

    fn close_writer(&mut self, durable: bool) -> Result<(), QueueError> {
        if let Some(writer) = self.writer.take() {
            let segment = self.segments.back().expect("the writer belongs to the last segment");
            writer.finish(segment, durable)?;
        }
        Ok(())
    }

    fn free_bytes(&self) -> Result<u64, QueueError> {
        let st = rustix::fs::statvfs(&self.dir).map_err(|e| QueueError::Io {
            op: "measuring free space on",
            path: self.dir.clone(),
            source: e.into(),
        })?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Moves the oldest segment's items into memory and deletes its file.
    fn load_oldest_segment(&mut self) -> Result<bool, QueueError> {
        if self.segments.is_empty() {
            return Ok(false);
        }
        self.unflush()?;
        if self.segments.len() == 1 {
            self.close_writer(false)?;
        }
        let front = self.segments.front().expect("checked non-empty above");
        let items = read_segment(&front.path)?;
        let segment = self.segments.pop_front().expect("checked non-empty above");
        remove(&segment.path)?;
        self.disk_bytes -= segment.bytes;
        for (seq, data) in items {
            self.mem_bytes += data.len() as u64;
            self.mem.push_back((seq, Bytes::from(data)));
        }
        Ok(true)
    }

    /// The next pending item without taking it (loading a segment if needed).
    pub fn peek(&mut self) -> Result<Option<(u64, &Bytes)>, QueueError> {
        while self.sent >= self.mem.len() {
            if !self.load_oldest_segment()? {
                return Ok(None);
            }
        }
        let (seq, data) = &self.mem[self.sent];
        Ok(Some((*seq, data)))
    }

    /// Takes the next pending item to send; it stays in the queue, in flight, until
    /// [`SourceQueue::ack`]ed (what is returned shares its bytes, it does not copy them).
    pub fn pop(&mut self) -> Result<Option<(u64, Bytes)>, QueueError> {
        let item = self.peek()?.map(|(seq, data)| (seq, data.clone()));
        if let Some((_, data)) = &item {
            self.sent += 1;
            self.sent_bytes += data.len() as u64;
        }
        Ok(item)
    }

    /// Drops every item with a sequence number up to `seq` (in flight, pending or on disk);
    /// returns how many.
    pub fn ack(&mut self, seq: u64) -> Result<u64, QueueError> {
        let mut dropped = 0;
        loop {
            while let Some((front, _)) = self.mem.front() {
                if *front > seq {
                    return Ok(dropped);
                }
                let (_, data) = self.mem.pop_front().expect("front exists");
                self.mem_bytes -= data.len() as u64;
                if self.sent > 0 {
                    self.sent -= 1;
                    self.sent_bytes -= data.len() as u64;
                }
                dropped += 1;
            }
            let Some(segment) = self.segments.front() else { return Ok(dropped) };
            if segment.first_seq > seq {
                return Ok(dropped);
            }
            if segment.last_seq <= seq {
                self.unflush()?;
                // Wholly acknowledged: delete without reading.
                if self.segments.len() == 1 {
                    self.close_writer(false)?;
                }
                let segment = self.segments.pop_front().expect("front exists");
                remove(&segment.path)?;
                self.disk_bytes -= segment.bytes;
                dropped += segment.items;
            } else {
                self.load_oldest_segment()?;
            }
        }
    }

    /// Drops everything and forgets the numbering, so the next push may start anywhere: what
    /// auto-disconnect does with an exhausted queue, and what discarding it at cutover does.
    pub fn reset(&mut self) -> Result<(), QueueError> {
        self.unflush()?;
        self.close_writer(false)?;
        while let Some(segment) = self.segments.pop_front() {
            remove(&segment.path)?;
        }
        self.mem.clear();
        self.mem_bytes = 0;
        self.sent = 0;
        self.sent_bytes = 0;
        self.disk_bytes = 0;
        self.last_pushed = None;
        Ok(())
    }

    /// Puts every in-flight item back to pending (after a reconnect: call
    /// [`SourceQueue::ack`] with the target's `last_applied_seq` first).
    pub fn rewind(&mut self) {
        self.sent = 0;
        self.sent_bytes = 0;
    }

    /// Item bytes held, in memory and on disk.
    pub fn held_bytes(&self) -> u64 {
        self.mem_bytes + self.disk_bytes
    }

    /// Item bytes not yet sent, in memory and on disk.
    pub fn pending_bytes(&self) -> u64 {
        self.held_bytes() - self.sent_bytes
    }

    /// Items held, in flight and pending.
    pub fn len(&self) -> u64 {
        self.mem.len() as u64 + self.segments.iter().map(|s| s.items).sum::<u64>()
    }

    /// Whether the queue holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.sent as u64
    }

    /// How full the queue is (measures free space for an unlimited disk queue).
    pub fn usage(&self) -> Result<QueueUsage, QueueError> {
        let disk_percent = match self.limits.disk {
            DiskLimit::Disabled => 0,
            DiskLimit::Limited(0) => 100,
            DiskLimit::Limited(limit) => percent(self.disk_bytes, limit),
            DiskLimit::Unlimited => {
                let allowed =
                    self.disk_bytes + self.free_bytes()?.saturating_sub(self.limits.min_free_bytes);
                if allowed == 0 { 100 } else { percent(self.disk_bytes, allowed) }
            }
        };
        Ok(QueueUsage {
            items: self.len(),
            in_flight: self.in_flight(),
            memory_bytes: self.mem_bytes,
            disk_bytes: self.disk_bytes,
            disk_percent,
            alert: self.limits.disk != DiskLimit::Disabled
                && disk_percent >= self.limits.alert_percent,
        })
    }

    /// For a clean shutdown ("queues flushed to disk"): writes every item held in memory, in
    /// flight or pending, to segments, syncs all segments and the directory, and leaves the
    /// manifest that lets [`SourceQueue::open`] reload them. Ignores the disk limit and the
    /// minimum free space (shutdown is the one time memory must go somewhere); fails only when
    /// the disk queue is disabled or the writes fail.
    ///
    /// The queue stays usable, with every item pending (in-flight items will be sent again),
    /// but the flush holds only until the queue changes: anything that touches the segments
    /// afterwards (a push, a pop that reads a segment back, an ack that deletes one) withdraws
    /// the manifest, and a stop after that is not clean. Flush last.
    pub fn flush_to_disk(&mut self) -> Result<(), QueueError> {
        if self.limits.disk == DiskLimit::Disabled {
            return Err(QueueError::DiskDisabled);
        }
        self.close_writer(true)?;
        let mut flushed = VecDeque::new();
        let mut current: Option<(SegmentWriter, Segment)> = None;
        for (seq, data) in &self.mem {
            let record = record_len(data.len());
            if let Some((_, seg)) = &current
                && seg.items > 0
                && seg.bytes + record > self.limits.segment_bytes
            {
                let (writer, seg) = current.take().expect("matched Some above");
                writer.finish(&seg, true)?;
                flushed.push_back(seg);
            }
            let (writer, seg) = match &mut current {
                Some(c) => c,
                None => current.insert(SegmentWriter::create(&self.dir, &self.label, *seq)?),
            };
            writer.append(seg, *seq, data)?;
        }
        if let Some((writer, seg)) = current {
            writer.finish(&seg, true)?;
            flushed.push_back(seg);
        }
        // Older items go in front of the segments already on disk.
        for seg in flushed.into_iter().rev() {
            self.disk_bytes += seg.bytes;
            self.segments.push_front(seg);
        }
        self.mem.clear();
        self.mem_bytes = 0;
        self.sent = 0;
        self.sent_bytes = 0;
        sync_dir(&self.dir)?;
        let manifest: String = self
            .segments
            .iter()
            .map(|s| format!("{} {} {} {}\n", s.first_seq, s.last_seq, s.items, s.bytes))
            .collect();
        let marker = self.marker_path();
        let tmp = self.dir.join(format!("{}.flushed.tmp", self.label));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(manifest.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &marker)
        };
        write().map_err(|source| QueueError::Io { op: "writing", path: marker.clone(), source })?;
        sync_dir(&self.dir)?;
        self.flushed = true;
        Ok(())
    }
}

fn percent(part: u64, whole: u64) -> u8 {
    u8::try_from((u128::from(part) * 100 / u128::from(whole)).min(100)).expect("clamped to 100")
}

fn remove(path: &Path) -> Result<(), QueueError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(QueueError::Io { op: "deleting", path: path.to_path_buf(), source }),
    }
}

fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| QueueError::Io {
        op: "syncing",
        path: dir.to_path_buf(),
        source,
    })
}
