//! Reading one job's history back and checking that it holds together.
//!
//! Two layers. [`Records`] walks the job's event keys in order, up to the head record read
//! when the scan began (appends that land meanwhile are past it and not this scan's business),
//! and checks each record on its own: it sits where the next one should (no gap), it decodes,
//! and it names the job and seq it is stored under. [`verify`] then checks the links: each
//! envelope's `prev_hash` against the hash of the value before it, and the last value against
//! the head record. The caller then looks for an event stored past the head.
//!
//! An envelope is handed to the visitor only once something *after* it vouches for its hash
//! (the next envelope's link, or the head record), so a scan never delivers an edited event:
//! when a link breaks, the store knows which of the two sides was edited by looking one
//! further. A structural problem (a gap, an undecodable or misplaced record) says nothing
//! against the envelope before it, which is delivered before the error.

use sled::IVec;
use understudy_core::{ChainHash, Corruption, EventEnvelope, Flow, JobId, Seq, StoreError};

use crate::codec::{chain_hash, decode_envelope};
use crate::error::io;
use crate::keys::seq_of_event_key;

/// A stored event as read: its key, its value and the value's chain hash.
pub(crate) struct Raw {
    pub(crate) key: IVec,
    pub(crate) value: IVec,
    pub(crate) hash: ChainHash,
}

impl Raw {
    /// Hashes a key-value pair read from sled.
    pub(crate) fn hashed((key, value): (IVec, IVec)) -> Raw {
        let hash = chain_hash(&value);
        Raw { key, value, hash }
    }
}

/// One stored event that passed the per-record checks.
pub(crate) struct Stored {
    pub(crate) seq: Seq,
    pub(crate) envelope: EventEnvelope,
    pub(crate) hash: ChainHash,
}

/// The job's stored events in key order, each checked on its own.
pub(crate) struct Records<I> {
    job: JobId,
    expected: Seq,
    iter: I,
}

/// One record as read: storage failures are the outer `Err`, data problems the inner one.
pub(crate) type Record = Result<Result<Stored, Corruption>, StoreError>;

/// Whether a record ends the scan: after a storage failure or a bad record nothing further is
/// read (so a reader ahead of [`verify`], on another thread, stops there too).
pub(crate) fn ends_scan(record: &Record) -> bool {
    !matches!(record, Ok(Ok(_)))
}

impl<I: Iterator<Item = sled::Result<Raw>>> Iterator for Records<I> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        let item = self.iter.next()?;
        Some(item.map_err(|e| io("reading events", &e)).map(|raw| self.check(raw)))
    }
}

impl<I: Iterator<Item = sled::Result<Raw>>> Records<I> {
    /// Reads from `from` on (`iter` must start there).
    pub(crate) fn new(job: JobId, from: Seq, iter: I) -> Self {
        Records { job, expected: from, iter }
    }

    fn corrupt(&self, seq: Seq, why: String) -> Corruption {
        Corruption { job: self.job, seq, why }
    }

    /// The checks on one record alone; decoding is the costly part.
    fn check(&mut self, Raw { key, value, hash }: Raw) -> Result<Stored, Corruption> {
        let expected = self.expected;
        let Some(seq) = seq_of_event_key(&key) else {
            return Err(self.corrupt(
                expected,
                format!("a malformed key ({} bytes) is stored among its events", key.len()),
            ));
        };
        if seq != expected {
            return Err(self.corrupt(
                expected,
                format!("event {expected} is missing (the next stored event is {seq})"),
            ));
        }
        let envelope = match decode_envelope(&value) {
            Ok(envelope) => envelope,
            Err(error) => return Err(self.corrupt(seq, error.to_string())),
        };
        if envelope.job_id != self.job {
            let why = format!(
                "event stored under seq {seq} belongs to job {} (moved from another job)",
                envelope.job_id
            );
            return Err(self.corrupt(seq, why));
        }
        if envelope.seq != seq {
            let why =
                format!("event stored under seq {seq} says it is seq {} (reordered)", envelope.seq);
            return Err(self.corrupt(seq, why));
        }
        // Saturating: a key at u64::MAX is the end either way, and must not overflow.
        self.expected = Seq(seq.0.saturating_add(1));
        Ok(Stored { seq, envelope, hash })
    }
}

/// The job's head record as read: its last seq and the hash of its last value.
#[derive(Clone, Copy)]
pub(crate) struct Head {
    pub(crate) seq: Seq,
    pub(crate) hash: ChainHash,
}

/// Checks the chain of `records`, which start at `from`, and delivers the verified envelopes.
///
/// `base` is the hash the first record must link to: genesis at seq 1, otherwise the hash of
/// the value at `from - 1`. Returns `Flow::Stop` if the visitor stopped the scan,
/// `Flow::Continue` if it verified everything up to the head.
pub(crate) fn verify(
    job: JobId,
    head: Head,
    from: Seq,
    base: ChainHash,
    mut records: impl Iterator<Item = Record>,
    visit: &mut dyn FnMut(EventEnvelope) -> Flow,
) -> Result<Flow, StoreError> {
    let corrupt = |seq: Seq, why: String| Err(StoreError::Corrupt(Corruption { job, seq, why }));
    // The last envelope whose own link checked out but whose hash nothing has vouched for yet.
    let mut pending: Option<Stored> = None;
    loop {
        let current = match records.next().transpose()? {
            None => break,
            Some(Err(corruption)) => {
                // Nothing in a gap or a misplaced record speaks against the one before it.
                if deliver(pending, visit) {
                    return Ok(Flow::Stop);
                }
                return Err(StoreError::Corrupt(corruption));
            }
            Some(Ok(current)) => current,
        };
        let link = pending.as_ref().map_or(base, |p| p.hash);
        if current.envelope.prev_hash == link {
            if deliver(pending.replace(current), visit) {
                return Ok(Flow::Stop);
            }
            continue;
        }

        // The link between `current` and the value before it is broken: either that value was
        // edited (its hash changed) or `current` was (its `prev_hash` bytes changed, and then its
        // own hash no longer matches what follows). Look one further to tell which.
        let seq = current.seq;
        if seq == Seq(1) {
            return corrupt(
                seq,
                "event 1 was edited: it does not start from the genesis link".into(),
            );
        }
        let previous = Seq(seq.0 - 1);
        let vouched = match records.next().transpose()? {
            None if seq == head.seq => Some(current.hash == head.hash),
            None => None,
            Some(Ok(next)) => Some(next.envelope.prev_hash == current.hash),
            Some(Err(_)) => None,
        };
        return match vouched {
            Some(true) => corrupt(
                previous,
                format!(
                    "event {previous} was edited: its hash does not match the next event's link"
                ),
            ),
            Some(false) => {
                if deliver(pending, visit) {
                    return Ok(Flow::Stop);
                }
                corrupt(
                    seq,
                    format!(
                        "event {seq} was edited: its link does not match event {previous}'s hash, and its own hash \
                         does not match what follows it"
                    ),
                )
            }
            None => corrupt(
                previous,
                format!(
                    "event {previous} or event {seq} was edited: the link between them is broken"
                ),
            ),
        };
    }

    // The end of the stored events: it must be where the head record says, with its hash.
    match pending {
        Some(last) if last.seq < head.seq => {
            let missing = last.seq.next();
            if deliver(Some(last), visit) {
                return Ok(Flow::Stop);
            }
            corrupt(
                missing,
                format!(
                    "event {missing} is missing (the job's head record says it has {} events)",
                    head.seq
                ),
            )
        }
        Some(last) if last.hash != head.hash => corrupt(
            last.seq,
            format!("event {} was edited: its hash does not match the job's head record", last.seq),
        ),
        Some(last) => Ok(if deliver(Some(last), visit) { Flow::Stop } else { Flow::Continue }),
        None if from <= head.seq => corrupt(
            from,
            format!(
                "event {from} is missing (the job's head record says it has {} events)",
                head.seq
            ),
        ),
        // Nothing after `from - 1`, which is the head: its value must be the one the head names.
        None if from.0 > 1 && from.0 - 1 == head.seq.0 && base != head.hash => corrupt(
            head.seq,
            format!("event {} was edited: its hash does not match the job's head record", head.seq),
        ),
        None => Ok(Flow::Continue),
    }
}

/// Hands `stored` (if any) to the visitor; whether it asked to stop.
fn deliver(stored: Option<Stored>, visit: &mut dyn FnMut(EventEnvelope) -> Flow) -> bool {
    stored.is_some_and(|stored| visit(stored.envelope) == Flow::Stop)
}
