//! [`SledEventStore`]: opening a data directory, the append, reads, the live subscription,
//! checkpoints and the forensic helpers.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use understudy_core::event::SCHEMA_VERSION;
use understudy_core::{
    AppendRequest, ChainHash, Checkpoint, CheckpointStore, Conflict, Corruption, EventEnvelope,
    EventStore, Flow, JobId, Position, Seq, StoreError,
};

use crate::codec::{
    chain_hash, decode_checkpoint, decode_envelope, encode_checkpoint, encode_envelope,
};
use crate::error::{io, is_lock_error, locked};
use crate::keys::{
    self, FORMAT_NAME, FORMAT_VERSION, META_FORMAT, META_POSITION, META_VERSION, Run,
    checkpoint_key, event_key, global_key, global_value, head_key, head_value,
};
use crate::scan::{Head, Raw, Records, ends_scan, verify};

/// Data directories this process has opened, by canonical path: `true` while a handle is open,
/// `false` once dropped.
///
/// sled's background I/O threads hold clones of the database's file handle, so its `flock` is
/// released by whichever of them finishes last, a moment *after* the `Db` is dropped. Reopening
/// a directory this process just closed (a restart in a test or the simulator) must wait for
/// that instead of blaming another process; a directory never opened here, or still open,
/// is reported locked at once.
static OPENED_HERE: Mutex<BTreeMap<PathBuf, bool>> = Mutex::new(BTreeMap::new());

/// Scans of at least this many events run as a pipeline (see `scan_job`); shorter ones, like a
/// replay from a recent checkpoint, are not worth the threads.
const PIPELINE_FROM: u64 = 4_096;

/// Items per message between pipeline stages: enough to make the channel's cost negligible.
const PIPELINE_CHUNK: usize = 256;

/// How long a reopen waits for the lingering lock of a handle this process dropped.
const RELEASE_WAIT: Duration = Duration::from_secs(3);

fn opened_here() -> MutexGuard<'static, BTreeMap<PathBuf, bool>> {
    // A map of plain values, never left half-updated.
    OPENED_HERE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The event log in a sled database. See the crate documentation for the layout and the write
/// path.
///
/// One value per data directory and process: sled's file lock refuses a second handle, in this
/// process or another ([`StoreError::Locked`]). Share it between threads by reference or `Arc`.
pub struct SledEventStore {
    /// The database; its default tree holds every record (see [`crate::keys`]).
    db: sled::Db,
    /// The data directory, for messages.
    dir: PathBuf,
    /// Its canonical path, the key in [`OPENED_HERE`].
    canonical: PathBuf,
    /// The single writer: held from the head checks to the batch being applied. It guards the
    /// last position assigned.
    writer: Mutex<Position>,
    /// The last position known durable. The global stream (`read_all`, `last_position`,
    /// `wait_for`) never shows past it, so a subscriber cannot see an event a crash could
    /// still take back.
    durable: Mutex<Position>,
    /// Signalled when `durable` moves.
    appended: Condvar,
}

impl SledEventStore {
    /// Opens the event log in `dir`, creating it if `dir` does not exist or is empty.
    ///
    /// # Errors
    ///
    /// - [`StoreError::NotAStore`]: `dir` is a file, holds other files and no event log, holds a
    ///   sled database that is not an understudy event log, or one of another format version;
    /// - [`StoreError::Locked`]: another process (or another handle in this one) has it open;
    /// - [`StoreError::Io`]: the files cannot be read or sled reports them damaged.
    pub fn open(dir: &Path) -> Result<SledEventStore, StoreError> {
        // Look before sled touches anything: sled would happily create its files in any folder.
        check_directory(dir)?;
        let db = open_sled(dir)?;
        let last = check_marker(&db, dir)?;
        let canonical = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        opened_here().insert(canonical.clone(), true);
        Ok(SledEventStore {
            db,
            dir: dir.to_path_buf(),
            canonical,
            writer: Mutex::new(last),
            durable: Mutex::new(last),
            appended: Condvar::new(),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes every write so far durable (appends already are when they return; this is for
    /// checkpoints and the raw helpers).
    ///
    /// # Errors
    ///
    /// Storage failure.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(|e| io("flushing the event log", &e))
    }

    /// **Forensic / test helper.** The bytes stored for a job's event, exactly as stored.
    ///
    /// # Errors
    ///
    /// Storage failure.
    pub fn raw_event(&self, job: JobId, seq: Seq) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.db.get(event_key(job, seq)).map_err(|e| io("reading an event", &e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// **Forensic / test helper.** Stores `bytes` as a job's event, bypassing the codec, the
    /// chain, the head record and the global index *on purpose*: it simulates tampering (tests,
    /// an operator's tamper-detection drill), which [`EventStore::scan_job`] must then report.
    /// Never use it to write history. Not flushed: call [`SledEventStore::flush`].
    ///
    /// # Errors
    ///
    /// Storage failure.
    pub fn raw_put_event(
        &self,
        job: JobId,
        seq: Seq,
        bytes: impl AsRef<[u8]>,
    ) -> Result<(), StoreError> {
        self.db
            .insert(event_key(job, seq), bytes.as_ref())
            .map(drop)
            .map_err(|e| io("writing a raw event", &e))
    }

    /// **Forensic / test helper.** Removes a job's event, bypassing the chain and the head record
    /// on purpose (see [`SledEventStore::raw_put_event`]); returns the bytes it held. Not
    /// flushed.
    ///
    /// # Errors
    ///
    /// Storage failure.
    pub fn raw_remove_event(&self, job: JobId, seq: Seq) -> Result<Option<Vec<u8>>, StoreError> {
        let old =
            self.db.remove(event_key(job, seq)).map_err(|e| io("removing a raw event", &e))?;
        Ok(old.map(|v| v.to_vec()))
    }

    fn durable(&self) -> MutexGuard<'_, Position> {
        // The guarded value is a plain number that is never left half-written.
        self.durable.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that everything up to `last` is durable and wakes the subscribers.
    fn publish(&self, last: Position) {
        let mut durable = self.durable();
        // Appends flush concurrently: a later batch's flush may return first, and covers this one.
        *durable = (*durable).max(last);
        drop(durable);
        self.appended.notify_all();
    }

    /// The job's head record, `None` if it has no events.
    fn read_head(&self, job: JobId) -> Result<Option<Head>, StoreError> {
        let value = self.db.get(head_key(job)).map_err(|e| io("reading a job's head", &e))?;
        value.map(|v| parse_head(job, &v)).transpose()
    }

    /// Decodes the event a global index entry points at, checking it is the one indexed.
    fn indexed_event(
        &self,
        position: Position,
        job: JobId,
        seq: Seq,
    ) -> Result<EventEnvelope, StoreError> {
        let corrupt = |why: String| StoreError::Corrupt(Corruption { job, seq, why });
        let value = self.db.get(event_key(job, seq)).map_err(|e| io("reading an event", &e))?;
        let value = value.ok_or_else(|| {
            corrupt(format!(
                "event {seq} is missing (the global index lists it at position {position})"
            ))
        })?;
        let envelope = decode_envelope(&value).map_err(|e| corrupt(e.to_string()))?;
        if envelope.job_id != job || envelope.seq != seq || envelope.position != position {
            return Err(corrupt(format!(
                "the global index lists job {job} seq {seq} at position {position}, but the event stored there says \
                 job {} seq {} position {}",
                envelope.job_id, envelope.seq, envelope.position
            )));
        }
        Ok(envelope)
    }
}

impl Drop for SledEventStore {
    fn drop(&mut self) {
        // Appends are flushed already; this keeps checkpoints and raw edits of a clean shutdown.
        // Nothing can be reported from a drop, and losing them costs only replay time.
        let _ = self.db.flush();
        opened_here().insert(self.canonical.clone(), false);
    }
}

fn parse_head(job: JobId, value: &[u8]) -> Result<Head, StoreError> {
    keys::parse_head_value(value).map(|(seq, hash)| Head { seq, hash }).ok_or_else(|| {
        StoreError::Corrupt(Corruption {
            job,
            seq: Seq::ZERO,
            why: format!("the job's head record is damaged ({} bytes, expected 40)", value.len()),
        })
    })
}

/// Opens the sled database, waiting out the lingering lock of a handle this process dropped.
fn open_sled(dir: &Path) -> Result<sled::Db, StoreError> {
    let started = Instant::now();
    loop {
        match open_sled_once(dir) {
            Err(error) if is_lock_error(&error) => {
                let canonical = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
                let released_here = opened_here().get(&canonical) == Some(&false);
                if !released_here || started.elapsed() > RELEASE_WAIT {
                    return Err(locked(dir));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => return Err(open_error(dir, &error)),
            Ok(db) => return Ok(db),
        }
    }
}

/// One attempt at opening the sled database.
fn open_sled_once(dir: &Path) -> Result<sled::Db, sled::Error> {
    let config = sled::Config::new().path(dir);
    // sled 0.34 has known panics on damaged files (issues #1533, #1166); a bad directory must be
    // an error the daemon can report, not a crash.
    catch_unwind(AssertUnwindSafe(|| config.open())).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(sled::Error::ReportableBug(format!("sled panicked while opening: {what}")))
    })
}

/// Names sled leaves in its directory: a folder holding only these is a (perhaps half-created)
/// sled database.
fn is_sled_file(name: &OsString) -> bool {
    let name = name.to_string_lossy();
    matches!(name.as_ref(), "conf" | "db" | "blobs") || name.starts_with("snap.")
}

/// Refuses a path that is not a directory, or a directory that holds something else.
fn check_directory(dir: &Path) -> Result<(), StoreError> {
    let metadata = match fs::metadata(dir) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(StoreError::Io(format!(
                "cannot read data directory {}: {error}",
                dir.display()
            )));
        }
    };
    if !metadata.is_dir() {
        return Err(StoreError::NotAStore(format!(
            "{} is a file, not a directory: give understudy a directory of its own for its event log",
            dir.display()
        )));
    }
    let entries = fs::read_dir(dir)
        .map_err(|e| StoreError::Io(format!("cannot list {}: {e}", dir.display())))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| StoreError::Io(format!("cannot list {}: {e}", dir.display())))?;
        names.push(entry.file_name());
    }
    let has = |wanted: &str| names.iter().any(|n| n == wanted);
    if (has("conf") && has("db")) || names.iter().all(is_sled_file) {
        return Ok(());
    }
    names.sort();
    let shown: Vec<String> =
        names.iter().take(3).map(|n| n.to_string_lossy().into_owned()).collect();
    Err(StoreError::NotAStore(format!(
        "{} holds other files ({}{}) and no understudy event log: give understudy an empty or new directory (it \
         does not write into a directory it does not own)",
        dir.display(),
        shown.join(", "),
        if names.len() > 3 { ", ..." } else { "" }
    )))
}

fn open_error(dir: &Path, error: &sled::Error) -> StoreError {
    match error {
        error if is_lock_error(error) => locked(dir),
        sled::Error::Unsupported(why) => StoreError::NotAStore(format!(
            "{} holds a sled database this build cannot open ({why}): it was not written by understudy, or by an \
             incompatible version",
            dir.display()
        )),
        sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => StoreError::Io(format!(
            "the event log in {} is damaged ({error}): restore the directory from a backup, or move it aside to \
             start an empty log",
            dir.display()
        )),
        other => io(&format!("opening the event log in {}", dir.display()), other),
    }
}

/// Checks the format marker (writing it into a new, empty database) and returns the last
/// position assigned.
fn check_marker(db: &sled::Db, dir: &Path) -> Result<Position, StoreError> {
    let read = |key: &[u8]| db.get(key).map_err(|e| io("reading the format marker", &e));
    match read(META_FORMAT)? {
        Some(format) if format == FORMAT_NAME => {}
        Some(format) => {
            return Err(StoreError::NotAStore(format!(
                "{} holds a sled database of something else (format {:?}), not an understudy event log: point \
                 understudy at an empty or new directory",
                dir.display(),
                String::from_utf8_lossy(&format)
            )));
        }
        None => {
            // A brand-new database (or one whose creation a crash interrupted before the marker was
            // flushed) is empty: make it ours. One with data is someone else's.
            let only_default_tree = db.tree_names().len() == 1;
            if !(db.is_empty() && only_default_tree) {
                return Err(StoreError::NotAStore(format!(
                    "{} holds a sled database that is not an understudy event log (it has data but no format \
                     marker): point understudy at an empty or new directory, or at an understudy data directory",
                    dir.display()
                )));
            }
            let mut batch = sled::Batch::default();
            batch.insert(META_FORMAT, FORMAT_NAME);
            batch.insert(META_VERSION, &FORMAT_VERSION.to_be_bytes());
            db.apply_batch(batch).map_err(|e| io("writing the format marker", &e))?;
            db.flush().map_err(|e| io("writing the format marker", &e))?;
            return Ok(Position(0));
        }
    }
    let version = read(META_VERSION)?.and_then(|v| keys::parse_u32(&v));
    if version != Some(FORMAT_VERSION) {
        let version = version.map_or_else(|| "unreadable".to_string(), |v| v.to_string());
        return Err(StoreError::NotAStore(format!(
            "{} holds an understudy event log of format version {version}; this build reads version {FORMAT_VERSION}: \
             use the understudy version that wrote it (a newer log needs a newer build)",
            dir.display()
        )));
    }
    let counted = read(META_POSITION)?.and_then(|v| keys::parse_u64(&v)).unwrap_or(0);
    // The counter and the index are written in the same batch, so they agree; should they not
    // (an edited database), never hand out a position the index already holds.
    let last_record = db
        .scan_prefix([keys::GLOBAL])
        .next_back()
        .transpose()
        .map_err(|e| io("reading the global index", &e))?;
    let indexed = last_record
        .and_then(|(key, value)| {
            let first = keys::position_of_global_key(&key)?;
            let count = keys::positions_in(&keys::parse_global_value(&value)?);
            Some(first.0.saturating_add(count).saturating_sub(1))
        })
        .unwrap_or(0);
    if indexed > counted {
        db.insert(META_POSITION, &indexed.to_be_bytes())
            .map_err(|e| io("repairing the position counter", &e))?;
        db.flush().map_err(|e| io("repairing the position counter", &e))?;
    }
    Ok(Position(counted.max(indexed)))
}

/// An append ready to apply.
struct Built {
    /// Every write of the append.
    writes: sled::Batch,
    /// The envelopes, in batch order.
    stored: Vec<EventEnvelope>,
    /// The last position assigned.
    last: Position,
}

/// Checks every expectation and builds the whole append as one sled batch: events, the index
/// record, heads and the position counter. `Ok(Err(_))` is a conflict: the batch is dropped
/// unapplied, so nothing is written. `last` is the last position assigned so far.
fn build_batch(
    store: &SledEventStore,
    last: Position,
    requests: &[AppendRequest],
) -> Result<Result<Built, Conflict>, StoreError> {
    let mut writes = sled::Batch::default();
    let mut position = last.0;
    let mut stored = Vec::with_capacity(requests.iter().map(|r| r.events.len()).sum());
    let mut runs = Vec::with_capacity(requests.len());
    // Heads as this batch leaves them: several requests for one job chain their expectations.
    let mut heads: BTreeMap<JobId, Head> = BTreeMap::new();
    for request in requests {
        let job = request.job;
        let mut head = match heads.get(&job) {
            Some(head) => *head,
            None => {
                store.read_head(job)?.unwrap_or(Head { seq: Seq::ZERO, hash: ChainHash::GENESIS })
            }
        };
        if head.seq != request.expected {
            return Ok(Err(Conflict { job, expected: request.expected, actual: head.seq }));
        }
        for new in &request.events {
            // Only a damaged head record or counter can be this close to the end of u64.
            let (Some(next_position), Some(seq)) =
                (position.checked_add(1), head.seq.0.checked_add(1))
            else {
                let why = format!(
                    "the job's head record ({}) or the position counter ({position}) is damaged",
                    head.seq
                );
                return Err(StoreError::Corrupt(Corruption { job, seq: head.seq, why }));
            };
            position = next_position;
            let envelope = EventEnvelope {
                job_id: job,
                seq: Seq(seq),
                position: Position(position),
                recorded_at: new.recorded_at,
                schema_version: SCHEMA_VERSION,
                metadata: new.metadata.clone(),
                event: new.event.clone(),
                prev_hash: head.hash,
            };
            let bytes = encode_envelope(&envelope)
                .map_err(|e| StoreError::Io(format!("event {} of job {job}: {e}", envelope.seq)))?;
            head = Head { seq: envelope.seq, hash: chain_hash(&bytes) };
            writes.insert(&event_key(job, head.seq)[..], bytes);
            stored.push(envelope);
        }
        if !request.events.is_empty() {
            // A later request for the same job overwrites this within the batch.
            writes.insert(&head_key(job)[..], &head_value(head.seq, head.hash)[..]);
            runs.push(Run {
                job,
                first_seq: request.expected.next(),
                count: request.events.len() as u64,
            });
        }
        heads.insert(job, head);
    }
    if !runs.is_empty() {
        writes.insert(&global_key(Position(last.0 + 1))[..], global_value(&runs));
        writes.insert(META_POSITION, &position.to_be_bytes()[..]);
    }
    Ok(Ok(Built { writes, stored, last: Position(position) }))
}

impl EventStore for SledEventStore {
    fn append(
        &self,
        batch: &[AppendRequest],
    ) -> Result<Result<Vec<EventEnvelope>, Conflict>, StoreError> {
        // The guarded value is a plain number, and a batch is applied whole or not at all, so a
        // panic elsewhere cannot leave it half-changed.
        let mut last = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let Built { writes, stored, last: new_last } = match build_batch(self, *last, batch)? {
            Ok(built) => built,
            Err(conflict) => return Ok(Err(conflict)),
        };
        if stored.is_empty() {
            return Ok(Ok(stored));
        }
        // Atomic in memory (under sled's write lock) and in sled's log (one sealed batch).
        self.db.apply_batch(writes).map_err(|e| io("appending events", &e))?;
        *last = new_last;
        drop(last);
        // The flush makes it durable. It runs outside the writer lock, so the next append can be
        // built meanwhile and concurrent appenders share fsyncs.
        self.db.flush().map_err(|e| io("flushing appended events", &e))?;
        self.publish(new_last);
        Ok(Ok(stored))
    }

    fn head(&self, job: JobId) -> Result<Seq, StoreError> {
        Ok(self.read_head(job)?.map_or(Seq::ZERO, |h| h.seq))
    }

    fn scan_job(
        &self,
        job: JobId,
        from: Seq,
        visit: &mut dyn FnMut(EventEnvelope) -> Flow,
    ) -> Result<(), StoreError> {
        let from = from.max(Seq(1));
        let head =
            self.read_head(job)?.unwrap_or(Head { seq: Seq::ZERO, hash: ChainHash::GENESIS });
        if from.0 > head.seq.0.saturating_add(1) {
            return Ok(());
        }
        // The first envelope links to the value before it: read that value's hash.
        let base = if from == Seq(1) {
            ChainHash::GENESIS
        } else {
            let previous = Seq(from.0 - 1);
            match self.db.get(event_key(job, previous)).map_err(|e| io("reading an event", &e))? {
                Some(value) => chain_hash(&value),
                None => {
                    let why = format!("event {previous} is missing");
                    return Err(StoreError::Corrupt(Corruption { job, seq: previous, why }));
                }
            }
        };
        // Up to the head read above: an append landing during the scan is past it.
        let range = || self.db.range(event_key(job, from)..=event_key(job, head.seq));
        let flow = if head.seq.0.saturating_sub(from.0) < PIPELINE_FROM {
            let records = Records::new(job, from, range().map(|item| item.map(Raw::hashed)));
            verify(job, head, from, base, records, visit)?
        } else {
            // A long scan runs as a pipeline on three threads: one reads and hashes, one decodes
            // and checks each record, this one checks the links and visits, in order.
            std::thread::scope(|scope| {
                let raws = ahead(scope, range().map(|item| item.map(Raw::hashed)), Result::is_err);
                let records = ahead(scope, Records::new(job, from, raws), ends_scan);
                verify(job, head, from, base, records, visit)
            })?
        };
        if flow == Flow::Stop {
            return Ok(());
        }
        // Verified to the head. An event stored past it was either appended meanwhile (the head
        // has moved on) or put there behind the chain's back.
        let past = Seq(head.seq.0.saturating_add(1));
        if self.db.contains_key(event_key(job, past)).map_err(|e| io("reading an event", &e))?
            && self.read_head(job)?.is_none_or(|now| now.seq < past)
        {
            let why = format!(
                "event {past} is stored beyond the job's head record, which says the job has {} events",
                head.seq
            );
            return Err(StoreError::Corrupt(Corruption { job, seq: past, why }));
        }
        Ok(())
    }

    fn read_all(&self, after: Position, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        let durable = *self.durable();
        if after >= durable || limit == 0 {
            return Ok(Vec::new());
        }
        let wanted = limit.min(usize::try_from(durable.0 - after.0).unwrap_or(usize::MAX));
        let mut envelopes = Vec::with_capacity(wanted);
        // The record holding the first position wanted is the last one keyed at or before it.
        let first = Position(after.0 + 1);
        let start = self
            .db
            .range(global_key(Position(0))..=global_key(first))
            .keys()
            .next_back()
            .transpose()
            .map_err(|e| io("reading the global index", &e))?
            .map_or_else(|| global_key(first).to_vec(), |key| key.to_vec());
        for item in self.db.range(start..=global_key(durable).to_vec()) {
            let (key, value) = item.map_err(|e| io("reading the global index", &e))?;
            let damaged =
                || StoreError::Io(format!("a global index record is damaged (key {key:02x?})"));
            let mut position = keys::position_of_global_key(&key).ok_or_else(damaged)?;
            for run in keys::parse_global_value(&value).ok_or_else(damaged)? {
                // Saturating and checked: a damaged record must not overflow.
                let end = position.0.saturating_add(run.count);
                // The run's positions up to `after` are skipped without touching their events.
                for i in first.0.saturating_sub(position.0)..run.count {
                    let at = Position(position.0.saturating_add(i));
                    if at > durable || envelopes.len() == wanted {
                        return Ok(envelopes);
                    }
                    let seq = run.first_seq.0.checked_add(i).ok_or_else(damaged)?;
                    envelopes.push(self.indexed_event(at, run.job, Seq(seq))?);
                }
                position = Position(end);
            }
        }
        Ok(envelopes)
    }

    fn jobs(&self) -> Result<Vec<JobId>, StoreError> {
        self.db
            .scan_prefix([keys::HEAD])
            .keys()
            .map(|key| {
                let key = key.map_err(|e| io("listing jobs", &e))?;
                keys::job_of_head_key(&key).ok_or_else(|| {
                    StoreError::Io(format!(
                        "a head key is damaged ({} bytes, expected 17)",
                        key.len()
                    ))
                })
            })
            .collect()
    }

    fn last_position(&self) -> Result<Position, StoreError> {
        Ok(*self.durable())
    }

    fn wait_for(&self, after: Position, timeout: Duration) -> Result<bool, StoreError> {
        // `publish` moves `durable` under this same lock before notifying, so an append between
        // the check and the wait cannot be missed.
        let durable = self.durable();
        let (durable, _) = self
            .appended
            .wait_timeout_while(durable, timeout, |durable| *durable <= after)
            .unwrap_or_else(PoisonError::into_inner);
        Ok(*durable > after)
    }
}

impl<S: Serialize + DeserializeOwned> CheckpointStore<S> for SledEventStore {
    fn save_checkpoint(&self, job: JobId, checkpoint: &Checkpoint<S>) -> Result<(), StoreError> {
        let bytes = encode_checkpoint(checkpoint).map_err(|e| {
            StoreError::Io(format!("checkpoint of job {job} at seq {}: {e}", checkpoint.seq))
        })?;
        // Not flushed: a checkpoint lost in a crash only costs replay time.
        self.db
            .insert(checkpoint_key(job, checkpoint.seq), bytes)
            .map(drop)
            .map_err(|e| io("writing a checkpoint", &e))
    }

    fn load_checkpoint(
        &self,
        job: JobId,
        at_most: Seq,
    ) -> Result<Option<Checkpoint<S>>, StoreError> {
        let range = self.db.range(checkpoint_key(job, Seq::ZERO)..=checkpoint_key(job, at_most));
        for item in range.rev() {
            let (key, value) = item.map_err(|e| io("reading checkpoints", &e))?;
            // One written by an incompatible version (or for another state type) is skipped:
            // the next older one, or a replay from the start, does the same job more slowly.
            if let Some(checkpoint) = decode_checkpoint::<S>(&value)
                && keys::seq_of_checkpoint_key(&key) == Some(checkpoint.seq)
            {
                return Ok(Some(checkpoint));
            }
        }
        Ok(None)
    }
}

/// Runs `items` on a scoped helper thread, a chunk ahead of the returned iterator, which yields
/// them in order. The helper stops after an item for which `last` holds, at the end, or once
/// the returned iterator is dropped (its sends then fail).
fn ahead<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    items: impl Iterator<Item = T> + Send + 'scope,
    last: fn(&T) -> bool,
) -> impl Iterator<Item = T> + Send + 'scope {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<T>>(4);
    scope.spawn(move || {
        let mut chunk = Vec::with_capacity(PIPELINE_CHUNK);
        for item in items {
            let stop = last(&item);
            chunk.push(item);
            if stop || chunk.len() == PIPELINE_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(PIPELINE_CHUNK));
                if sender.send(full).is_err() || stop {
                    return;
                }
            }
        }
        let _ = sender.send(chunk);
    });
    receiver.into_iter().flatten()
}
