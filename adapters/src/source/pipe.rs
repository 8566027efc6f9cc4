//! A job's outgoing stream: one ordered queue of operations that the mirror, verification and
//! change capture all feed, and that the sender drains to the target.
//!
//! One queue, one order: every producer reads the source *when it enqueues*, under the pipe's
//! lock, so the order of the queue is the order in which the source was read. Whatever the
//! interleaving of a mirror's walk and the changes captured meanwhile, the target applies
//! reads of the source in the order they were made and ends where the source is. (A change
//! seen before the mirror reaches a file is overwritten by the mirror's newer read; one seen
//! after is applied after it.)
//!
//! Sequence numbers are never reused, not even across a crash: they are reserved on disk in
//! blocks ([`SEQ_BLOCK`]), and a clean shutdown records the exact next number. Operations the
//! source drops without sending (an exhausted or discarded queue, a crash) are announced to the
//! target with a `Skip`, so nothing numbered after them can be mistaken for a resend of
//! something the target already applied.
//!
//! The pipe also keeps the *shadow*: what the target holds as far as this source knows (size,
//! mtime and block hashes of each file it sent), so a change to a large file sends only the
//! blocks that differ.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;
use understudy_core::JobId;

use super::link::LinkStats;
use crate::error::QueueError;
use crate::fsops::{BlockHash, Operation, RelPath};
use crate::queue::{DiskLimit, QueueLimits, QueueUsage, SourceQueue};
use crate::wire::EncodedOp;

/// What the target holds for a path, as far as this source knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shadow {
    /// A file of this size and mtime; its block hashes when the source read it whole.
    File {
        /// Size.
        size: u64,
        /// Modification time (ns).
        mtime_ns: i64,
        /// One hash per 64 KiB block, when known.
        hashes: Option<Vec<BlockHash>>,
    },
    /// A directory.
    Dir,
    /// A symlink to this target.
    Symlink(Vec<u8>),
}

/// Who enqueued an operation: replication latency is measured on changes only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Producer {
    /// A mirror or a verification's remirror.
    Mirror,
    /// Change capture.
    Replication,
}

/// Sequence numbers reserved on disk at a time: one small synced write per block.
pub const SEQ_BLOCK: u64 = 1 << 20;

/// The pipe's lock: the queue, the shadow, and the numbering.
#[derive(Debug)]
pub struct PipeState {
    queue: SourceQueue,
    next_seq: u64,
    acked: u64,
    /// Where the numbering is reserved, and up to which number.
    numbering: Numbering,
    /// Operations up to here were dropped unsent: the target must be told before anything else.
    skip_through: Option<u64>,
    /// What the target holds, by path.
    pub shadow: BTreeMap<RelPath, Shadow>,
    /// Enqueue times of replication operations not yet acknowledged.
    stamps: VecDeque<(u64, Instant)>,
    exhausted: bool,
    /// Bytes of file data enqueued by replication (for the TDU and the statistics).
    pub replication_bytes: u64,
    /// Operations enqueued by replication.
    pub replication_operations: u64,
}

/// The queue is exhausted: the job auto-disconnects and a remirror follows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the source queue is exhausted: {0}")]
pub struct Exhausted(pub String);

impl PipeState {
    /// Queues operations read from the source now.
    ///
    /// # Errors
    ///
    /// The queue is (or just became) exhausted; nothing more is queued until a reset.
    pub fn enqueue(
        &mut self,
        ops: impl IntoIterator<Item = Operation>,
        producer: Producer,
    ) -> Result<u64, Exhausted> {
        if self.exhausted {
            return Err(Exhausted("waiting for the auto-disconnect".into()));
        }
        for op in ops {
            let encoded = EncodedOp::encode(&op).map_err(|e| Exhausted(e.to_string()))?;
            let data = match &op {
                Operation::Write { data, .. } => data.len() as u64,
                _ => 0,
            };
            self.push(encoded, data, producer)?;
        }
        Ok(self.next_seq - 1)
    }

    /// Queues a write already encoded (by [`EncodedOp::encode_write`]) with `data` bytes of
    /// file data, after `before` (the file's creation, for its first block).
    ///
    /// # Errors
    ///
    /// As [`PipeState::enqueue`].
    pub fn enqueue_write(
        &mut self,
        before: Option<Operation>,
        write: EncodedOp,
        data: u64,
        producer: Producer,
    ) -> Result<u64, Exhausted> {
        self.enqueue(before, producer)?;
        self.push(write, data, producer)?;
        Ok(self.next_seq - 1)
    }

    fn push(&mut self, op: EncodedOp, data: u64, producer: Producer) -> Result<(), Exhausted> {
        if let Err(error) = self.numbering.reserve(self.next_seq) {
            self.exhausted = true;
            return Err(Exhausted(format!("cannot reserve sequence numbers: {error}")));
        }
        match self.queue.push(self.next_seq, op.0) {
            Ok(()) => {}
            Err(error @ QueueError::Full { .. }) => {
                self.exhausted = true;
                return Err(Exhausted(error.to_string()));
            }
            Err(error) => {
                self.exhausted = true;
                return Err(Exhausted(format!("the queue failed: {error}")));
            }
        }
        if producer == Producer::Replication {
            self.replication_bytes += data;
            self.stamps.push_back((self.next_seq, Instant::now()));
            self.replication_operations += 1;
        }
        self.next_seq += 1;
        Ok(())
    }

    /// The last sequence number enqueued.
    pub fn last_enqueued(&self) -> u64 {
        self.next_seq - 1
    }

    /// Operations waiting or in flight.
    pub fn queued(&self) -> u64 {
        self.queue.len()
    }

    /// Whether a mirror should wait before reading more: at most `max_ops` operations and
    /// `max_bytes` bytes wait in the queue to be sent (the seeds' "pending mirror operations";
    /// the bytes, since that is memory: 1,000 writes of 64 KiB are 64 MiB; what is in flight
    /// is bounded by the sender's windows), and the queue holds at most half of what a
    /// bounded queue can hold, so the mirror alone never exhausts the queue (it can always
    /// read again later; captured changes cannot).
    pub fn mirror_should_wait(&self, max_ops: u64, max_bytes: u64) -> bool {
        let queued = self.queue.len();
        if queued == 0 {
            return false;
        }
        let unsent = queued.saturating_sub(self.queue.in_flight());
        let limits = self.queue.limits();
        let bounded = match limits.disk {
            DiskLimit::Disabled => Some(limits.memory_bytes),
            DiskLimit::Limited(disk) => Some(limits.memory_bytes.saturating_add(disk)),
            DiskLimit::Unlimited => None,
        };
        unsent >= max_ops
            || self.queue.pending_bytes() >= max_bytes
            || bounded.is_some_and(|cap| self.queue.held_bytes() >= cap / 2)
    }
}

/// A job's pipe.
#[derive(Debug)]
pub struct Pipe {
    /// The job.
    pub job: JobId,
    /// The source root.
    pub root: PathBuf,
    /// Relative paths left out of the job.
    pub excludes: Vec<RelPath>,
    state: Mutex<PipeState>,
    /// Signalled (one permit) when operations are enqueued: wakes the sender.
    pub enqueued: Notify,
    /// Signalled (all waiters) when operations are acknowledged or the pipe is reset.
    pub changed: Notify,
    /// The last acknowledged sequence number (readable without the lock).
    pub acked: AtomicU64,
    /// Mirror traffic is held (the target asked, or the job is paused).
    pub paused: AtomicBool,
    /// Bytes out on the wire, before and after compression, across connections.
    pub stats: Arc<LinkStats>,
    /// Replication latencies measured (enqueue → durable on the target), most recent last.
    latencies: Mutex<VecDeque<u64>>,
}

impl Pipe {
    /// Opens the job's pipe with its queue in `queue_dir`.
    ///
    /// # Errors
    ///
    /// The queue cannot be opened.
    pub fn open(
        job: JobId,
        root: PathBuf,
        excludes: Vec<RelPath>,
        queue_dir: &Path,
        limits: QueueLimits,
    ) -> Result<Arc<Pipe>, QueueError> {
        let queue = SourceQueue::open(queue_dir, &job.to_string(), limits)?;
        let numbering =
            Numbering::open(queue_dir.join(format!("{job}.seq"))).map_err(|source| {
                QueueError::Io { op: "reading", path: queue_dir.join(format!("{job}.seq")), source }
            })?;
        // Above every number issued before; exactly after the last one after a clean stop.
        let next_seq = numbering.reserved.max(queue.last_pushed().unwrap_or(0)) + 1;
        let reloaded = !queue.is_empty();
        let state = PipeState {
            queue,
            next_seq,
            acked: next_seq - 1,
            numbering,
            // Without a reloaded queue, whatever was unsent before the stop is gone.
            skip_through: (!reloaded && next_seq > 1).then_some(next_seq - 1),
            shadow: BTreeMap::new(),
            stamps: VecDeque::new(),
            exhausted: false,
            replication_bytes: 0,
            replication_operations: 0,
        };
        Ok(Arc::new(Pipe {
            job,
            root,
            excludes,
            state: Mutex::new(state),
            enqueued: Notify::new(),
            changed: Notify::new(),
            acked: AtomicU64::new(next_seq - 1),
            paused: AtomicBool::new(false),
            stats: Arc::new(LinkStats::default()),
            latencies: Mutex::new(VecDeque::new()),
        }))
    }

    /// Takes the lock: read the source and enqueue while holding it.
    pub fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes the sender after enqueueing (a stored permit: a wake-up is never lost).
    pub fn notify(&self) {
        self.enqueued.notify_one();
    }

    /// Whether `path` is left out of the job.
    pub fn excluded(&self, path: &RelPath) -> bool {
        self.excludes.iter().any(|e| path.starts_with(e))
    }

    /// A session opened: the target has everything up to `last_applied`. Drops what it has
    /// and resends the rest.
    ///
    /// # Errors
    ///
    /// The queue failed.
    pub fn connected(&self, last_applied: u64) -> Result<(), QueueError> {
        let mut state = self.lock();
        if last_applied >= state.next_seq {
            // The target is past every number this source issued: the source's numbering was
            // lost (its queue folder removed). Nothing queued can be told apart from what the
            // target applied, so drop it and remirror.
            tracing::warn!(job = %self.job, last_applied, next_seq = state.next_seq, "the target is ahead of this source's numbering; remirroring");
            state.next_seq = last_applied + 1;
            if !state.queue.is_empty() {
                state.queue.reset()?;
                state.shadow.clear();
                state.exhausted = true;
            }
        }
        state.queue.ack(last_applied)?;
        state.queue.rewind();
        state.acked = last_applied;
        if state.skip_through.is_some_and(|through| through <= last_applied) {
            state.skip_through = None;
        }
        state.stamps.retain(|(seq, _)| *seq > last_applied);
        drop(state);
        self.acked.store(last_applied, Ordering::SeqCst);
        self.notify();
        self.changed.notify_waiters();
        Ok(())
    }

    /// The first sequence number the pipe still holds (for `Open`).
    pub fn resume_from(&self) -> u64 {
        self.lock().acked + 1
    }

    /// Takes the next batch to send: at most `max_bytes` of encoded operations (at least one).
    ///
    /// # Errors
    ///
    /// The queue failed.
    pub fn next_batch(
        &self,
        max_bytes: usize,
        max_ops: usize,
    ) -> Result<Option<(u64, Vec<EncodedOp>)>, QueueError> {
        let mut state = self.lock();
        let mut first = None;
        let mut ops = Vec::new();
        let mut bytes = 0usize;
        while ops.len() < max_ops {
            match state.queue.peek()? {
                Some((_, data)) if !ops.is_empty() && bytes + data.len() > max_bytes => break,
                Some(_) => {}
                None => break,
            }
            let (seq, data) = state.queue.pop()?.expect("peeked above");
            first.get_or_insert(seq);
            bytes += data.len();
            ops.push(EncodedOp(data));
        }
        drop(state);
        if first.is_some() {
            self.changed.notify_waiters(); // a mirror waiting for room may go on
        }
        Ok(first.map(|first| (first, ops)))
    }

    /// The target made everything up to `seq` durable.
    ///
    /// # Errors
    ///
    /// The queue failed.
    pub fn ack(&self, seq: u64) -> Result<(), QueueError> {
        let mut state = self.lock();
        if seq <= state.acked {
            return Ok(());
        }
        state.queue.ack(seq)?;
        state.acked = seq;
        if state.skip_through.is_some_and(|through| through <= seq) {
            state.skip_through = None;
        }
        let now = Instant::now();
        let mut measured = Vec::new();
        while let Some((stamped, at)) = state.stamps.front().copied() {
            if stamped > seq {
                break;
            }
            state.stamps.pop_front();
            measured.push(u64::try_from(now.duration_since(at).as_millis()).unwrap_or(u64::MAX));
        }
        drop(state);
        self.acked.store(seq, Ordering::SeqCst);
        if !measured.is_empty() {
            let mut latencies =
                self.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            latencies.extend(measured);
            while latencies.len() > 10_000 {
                latencies.pop_front();
            }
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// Drops everything queued and everything known about the target: after an exhausted
    /// queue (auto-disconnect), a stop, or a discard at cutover. A remirror follows.
    ///
    /// # Errors
    ///
    /// The queue failed.
    pub fn reset(&self) -> Result<(), QueueError> {
        let mut state = self.lock();
        state.queue.reset()?;
        state.shadow.clear();
        state.stamps.clear();
        state.exhausted = false;
        // Numbers are not reused: the target is told the dropped ones are done.
        let last = state.next_seq - 1;
        if last > state.acked {
            state.skip_through = Some(last);
        }
        drop(state);
        self.notify();
        self.changed.notify_waiters();
        Ok(())
    }

    /// Whether the queue is exhausted (waiting for the auto-disconnect).
    pub fn exhausted(&self) -> bool {
        self.lock().exhausted
    }

    /// Whether everything enqueued is durable on the target.
    pub fn drained(&self) -> bool {
        let state = self.lock();
        state.acked >= state.next_seq - 1
    }

    /// The `Skip` the target must get before any further operation, if one is owed.
    pub fn owed_skip(&self) -> Option<u64> {
        self.lock().skip_through
    }

    /// Waits until everything enqueued up to `seq` is durable on the target.
    pub async fn wait_acked(&self, seq: u64) {
        loop {
            let notified = self.changed.notified();
            if self.acked.load(Ordering::SeqCst) >= seq {
                return;
            }
            notified.await;
        }
    }

    /// Queue usage now.
    ///
    /// # Errors
    ///
    /// The queue failed.
    pub fn usage(&self) -> Result<QueueUsage, QueueError> {
        self.lock().queue.usage()
    }

    /// How far behind the target is: the age of the oldest unacknowledged change, or the last
    /// measured latency when everything is acknowledged.
    pub fn recovery_point_latency_ms(&self) -> Option<u64> {
        let oldest = self.lock().stamps.front().map(|(_, at)| at.elapsed());
        match oldest {
            Some(age) => Some(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            None => self
                .latencies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .back()
                .copied(),
        }
    }

    /// Measured replication latencies, oldest first (at most the last 10,000).
    pub fn latencies_ms(&self) -> Vec<u64> {
        self.latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// Flushes the queue to disk for a clean shutdown.
    ///
    /// # Errors
    ///
    /// The queue failed.
    pub fn flush_to_disk(&self) -> Result<(), QueueError> {
        let mut state = self.lock();
        state.queue.flush_to_disk()?;
        // The exact next number, so a clean restart continues without a gap.
        let last = state.next_seq - 1;
        let path = state.numbering.path.clone();
        state.numbering.record(last).map_err(|source| QueueError::Io {
            op: "writing",
            path,
            source,
        })
    }

    /// Replication's data bytes and operations queued so far.
    pub fn replication_totals(&self) -> (u64, u64) {
        let state = self.lock();
        (state.replication_bytes, state.replication_operations)
    }

    /// Applies new queue limits.
    pub fn set_limits(&self, limits: QueueLimits) {
        self.lock().queue.set_limits(limits);
    }
}

/// The on-disk reservation of sequence numbers: a number is issued only once it is below the
/// recorded reservation, so a crash never leads to a number being issued twice.
#[derive(Debug)]
struct Numbering {
    path: PathBuf,
    /// Every number issued is at most this.
    reserved: u64,
}

impl Numbering {
    fn open(path: PathBuf) -> std::io::Result<Numbering> {
        let reserved = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not hold a sequence number", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(Numbering { path, reserved })
    }

    /// Makes sure `seq` may be issued, reserving the next block when it may not yet.
    fn reserve(&mut self, seq: u64) -> std::io::Result<()> {
        if seq <= self.reserved {
            return Ok(());
        }
        self.record(seq + SEQ_BLOCK)
    }

    /// Records `reserved` durably (write to a side file, sync, rename).
    fn record(&mut self, reserved: u64) -> std::io::Result<()> {
        let tmp = self.path.with_extension("seq.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, reserved.to_string().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        self.reserved = reserved;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The numbering rules of ADR 10, on a real pipe and queue in a temporary folder.
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn remove(name: &str) -> Operation {
        Operation::Remove { path: RelPath::try_from(name).unwrap() }
    }

    fn open(dir: &Path) -> Arc<Pipe> {
        let job = JobId::from_parts(1_700_000_000_000, [7; 10]);
        Pipe::open(job, dir.to_path_buf(), Vec::new(), dir, QueueLimits::default()).unwrap()
    }

    fn enqueue(pipe: &Pipe, names: &[&str]) -> u64 {
        let ops = names.iter().map(|n| remove(n));
        pipe.lock().enqueue(ops, Producer::Mirror).unwrap()
    }

    #[test]
    fn a_reset_never_reuses_numbers_and_owes_the_target_a_skip() {
        let dir = tempfile::tempdir().unwrap();
        let pipe = open(dir.path());
        pipe.connected(0).unwrap();
        assert_eq!(enqueue(&pipe, &["a", "b", "c"]), 3);
        let (first, ops) = pipe.next_batch(1 << 20, 100).unwrap().unwrap();
        assert_eq!((first, ops.len()), (1, 3));
        pipe.ack(1).unwrap();
        // Dropped while 2 and 3 were in flight (the target may have applied them).
        pipe.reset().unwrap();
        assert_eq!(pipe.owed_skip(), Some(3));
        assert_eq!(enqueue(&pipe, &["d"]), 4, "numbers go on, they never restart");
        // A new session: the target had applied 2 and 3; the skip is no longer owed.
        pipe.connected(3).unwrap();
        assert_eq!(pipe.owed_skip(), None);
        let (first, _) = pipe.next_batch(1 << 20, 100).unwrap().unwrap();
        assert_eq!(first, 4, "the operation after the reset is sent, not taken for a resend");
    }

    #[test]
    fn after_a_crash_numbering_resumes_above_everything_issued() {
        let dir = tempfile::tempdir().unwrap();
        {
            let pipe = open(dir.path());
            pipe.connected(0).unwrap();
            enqueue(&pipe, &["a", "b"]);
            // Dropped without a flush: a crash.
        }
        let pipe = open(dir.path());
        let next = enqueue(&pipe, &["c"]);
        assert!(next > 2, "issued {next} again after a crash");
        assert_eq!(pipe.owed_skip(), Some(next - 1));
        pipe.connected(1).unwrap();
        assert_eq!(pipe.owed_skip(), Some(next - 1), "owed until the target has it");
        pipe.ack(next - 1).unwrap();
        assert_eq!(pipe.owed_skip(), None);
    }

    #[test]
    fn after_a_clean_stop_numbering_continues_without_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        {
            let pipe = open(dir.path());
            pipe.connected(0).unwrap();
            enqueue(&pipe, &["a", "b"]);
            pipe.flush_to_disk().unwrap();
        }
        let pipe = open(dir.path());
        assert_eq!(pipe.owed_skip(), None);
        assert_eq!(enqueue(&pipe, &["c"]), 3);
        pipe.connected(0).unwrap();
        let (first, ops) = pipe.next_batch(1 << 20, 100).unwrap().unwrap();
        assert_eq!((first, ops.len()), (1, 3), "the reloaded queue, then the new operation");
    }

    #[test]
    fn a_mirror_waits_for_operations_to_be_sent_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let pipe = open(dir.path());
        pipe.connected(0).unwrap();
        enqueue(&pipe, &["a", "b", "c"]);
        let held = pipe.lock().queue.held_bytes();
        assert!(pipe.lock().mirror_should_wait(3, u64::MAX), "three wait to be sent");
        assert!(!pipe.lock().mirror_should_wait(4, u64::MAX));
        assert!(pipe.lock().mirror_should_wait(4, held), "their bytes wait to be sent");
        assert!(!pipe.lock().mirror_should_wait(4, held + 1));
        let (_, ops) = pipe.next_batch(1 << 20, 2).unwrap().unwrap();
        assert_eq!(ops.len(), 2);
        let sent: u64 = ops.iter().map(|op| op.len() as u64).sum();
        assert!(
            !pipe.lock().mirror_should_wait(3, held - sent + 1),
            "sent and not yet acknowledged is the window's to bound, not the mirror's"
        );
        assert!(pipe.lock().mirror_should_wait(1, u64::MAX), "one still waits to be sent");
        assert!(pipe.lock().mirror_should_wait(4, held - sent), "its bytes wait to be sent");
        pipe.ack(2).unwrap();
        assert!(!pipe.lock().mirror_should_wait(4, held - sent + 1), "acknowledged, gone");
    }

    #[test]
    fn a_target_ahead_of_the_numbering_forces_a_remirror() {
        let dir = tempfile::tempdir().unwrap();
        let pipe = open(dir.path());
        enqueue(&pipe, &["a", "b"]);
        pipe.connected(1_000).unwrap();
        assert!(pipe.exhausted(), "what was queued cannot be told from what was applied");
        pipe.reset().unwrap();
        assert_eq!(enqueue(&pipe, &["c"]), 1_001);
    }
}
