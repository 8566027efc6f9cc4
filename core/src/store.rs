//! The event store contract: an append-only, per-job, hash-chained log with a global order.
//!
//! The store is synchronous (sled is); the daemon calls it from a blocking-friendly task.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Conflict, StoreError};
use crate::event::{EventEnvelope, NewEvent};
use crate::ids::{JobId, Position, Seq};

/// Events to append to one job, expecting its head to be `expected`.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendRequest {
    /// The job.
    pub job: JobId,
    /// The head the decision was made on.
    pub expected: Seq,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

/// Whether a scan goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Deliver the next envelope.
    Continue,
    /// Stop here.
    Stop,
}

/// The event log.
///
/// Guarantees every implementation gives:
/// - a job's sequence numbers are contiguous from 1;
/// - an append is atomic for its whole batch and durable when it returns `Ok(Ok(_))`;
/// - positions are unique and increase in append order across all jobs;
/// - an envelope's `prev_hash` is the hash of the job's previous envelope (the sled store
///   computes BLAKE3 over the stored bytes; the in-memory store leaves it at genesis).
pub trait EventStore {
    /// Appends the batch atomically and durably, assigning sequences, positions and hashes.
    ///
    /// # Errors
    ///
    /// `Ok(Err(Conflict))` when a job's head is not `expected` (nothing is written);
    /// `Err(StoreError)` when storage fails.
    fn append(
        &self,
        batch: &[AppendRequest],
    ) -> Result<Result<Vec<EventEnvelope>, Conflict>, StoreError>;

    /// The job's last sequence number (`Seq::ZERO` if it has no events).
    ///
    /// # Errors
    ///
    /// Storage failure.
    fn head(&self, job: JobId) -> Result<Seq, StoreError>;

    /// Visits the job's envelopes from `from` on, in order, checking the hash chain.
    ///
    /// # Errors
    ///
    /// `StoreError::Corrupt` at the first envelope that cannot be decoded, is out of place or
    /// breaks the chain, after every envelope before it was visited.
    fn scan_job(
        &self,
        job: JobId,
        from: Seq,
        visit: &mut dyn FnMut(EventEnvelope) -> Flow,
    ) -> Result<(), StoreError>;

    /// Up to `limit` envelopes of all jobs with positions after `after`, in position order.
    ///
    /// # Errors
    ///
    /// Storage failure or an undecodable envelope.
    fn read_all(&self, after: Position, limit: usize) -> Result<Vec<EventEnvelope>, StoreError>;

    /// Every job that has events, in id (creation) order.
    ///
    /// # Errors
    ///
    /// Storage failure.
    fn jobs(&self) -> Result<Vec<JobId>, StoreError>;

    /// The last position assigned (`Position(0)` for an empty store).
    ///
    /// # Errors
    ///
    /// Storage failure.
    fn last_position(&self) -> Result<Position, StoreError>;

    /// Blocks until an event after `after` exists or `timeout` passes; returns whether one does.
    /// This is the live subscription: wait, then `read_all(after, ..)`.
    ///
    /// # Errors
    ///
    /// Storage failure.
    fn wait_for(&self, after: Position, timeout: Duration) -> Result<bool, StoreError>;
}

/// A fold of a job's history up to `seq`, so replay need not start at event 1.
///
/// Checkpoints are a cache: losing one costs replay time, never history. The events stay the
/// only source of truth, and an audit checks their chain from event 1 whatever it folds from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint<S> {
    /// The last event folded in.
    pub seq: Seq,
    /// The folded state.
    pub state: S,
}

/// Where checkpoints of job states of type `S` are kept.
pub trait CheckpointStore<S> {
    /// Stores a checkpoint (not necessarily durably: a lost checkpoint only costs replay time).
    ///
    /// # Errors
    ///
    /// Storage failure.
    fn save_checkpoint(&self, job: JobId, checkpoint: &Checkpoint<S>) -> Result<(), StoreError>;

    /// The latest checkpoint at or before `at_most`, if any can be read. A checkpoint written by
    /// an incompatible version reads as `None` and replay starts further back.
    ///
    /// # Errors
    ///
    /// Storage failure.
    fn load_checkpoint(
        &self,
        job: JobId,
        at_most: Seq,
    ) -> Result<Option<Checkpoint<S>>, StoreError>;
}

/// A shared store is a store: the daemon and its readers hold one `Arc`.
impl<T: EventStore + ?Sized> EventStore for std::sync::Arc<T> {
    fn append(
        &self,
        batch: &[AppendRequest],
    ) -> Result<Result<Vec<EventEnvelope>, Conflict>, StoreError> {
        (**self).append(batch)
    }
    fn head(&self, job: JobId) -> Result<Seq, StoreError> {
        (**self).head(job)
    }
    fn scan_job(
        &self,
        job: JobId,
        from: Seq,
        visit: &mut dyn FnMut(EventEnvelope) -> Flow,
    ) -> Result<(), StoreError> {
        (**self).scan_job(job, from, visit)
    }
    fn read_all(&self, after: Position, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        (**self).read_all(after, limit)
    }
    fn jobs(&self) -> Result<Vec<JobId>, StoreError> {
        (**self).jobs()
    }
    fn last_position(&self) -> Result<Position, StoreError> {
        (**self).last_position()
    }
    fn wait_for(&self, after: Position, timeout: Duration) -> Result<bool, StoreError> {
        (**self).wait_for(after, timeout)
    }
}

impl<S, T: CheckpointStore<S> + ?Sized> CheckpointStore<S> for std::sync::Arc<T> {
    fn save_checkpoint(&self, job: JobId, checkpoint: &Checkpoint<S>) -> Result<(), StoreError> {
        (**self).save_checkpoint(job, checkpoint)
    }
    fn load_checkpoint(
        &self,
        job: JobId,
        at_most: Seq,
    ) -> Result<Option<Checkpoint<S>>, StoreError> {
        (**self).load_checkpoint(job, at_most)
    }
}
