//! An in-memory [`EventStore`]: the reference model the sled store is tested against, and the
//! simulator's store.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Conflict, StoreError};
use crate::event::{ChainHash, EventEnvelope, SCHEMA_VERSION};
use crate::ids::{JobId, Position, Seq};
use crate::store::{AppendRequest, Checkpoint, CheckpointStore, EventStore, Flow};

/// Everything in memory, behind one lock. Appends are "durable" as soon as they return.
#[derive(Default)]
pub struct MemEventStore {
    inner: Mutex<Inner>,
    appended: Condvar,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<JobId, Vec<EventEnvelope>>,
    global: Vec<(JobId, Seq)>,
    checkpoints: BTreeMap<(JobId, Seq), Box<dyn Any + Send>>,
}

impl MemEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops checkpoints (as a crash may lose them) so recovery must replay further.
    pub fn forget_checkpoints(&self) {
        self.lock().checkpoints.clear();
    }
}

impl EventStore for MemEventStore {
    fn append(
        &self,
        batch: &[AppendRequest],
    ) -> Result<Result<Vec<EventEnvelope>, Conflict>, StoreError> {
        let mut inner = self.lock();
        // Check every request first: the batch is all or nothing. Several requests for one job
        // chain their expectations.
        let mut heads: BTreeMap<JobId, Seq> = BTreeMap::new();
        for request in batch {
            let actual = match heads.get(&request.job) {
                Some(head) => *head,
                None => inner.jobs.get(&request.job).map_or(Seq::ZERO, |e| Seq(e.len() as u64)),
            };
            if actual != request.expected {
                return Ok(Err(Conflict { job: request.job, expected: request.expected, actual }));
            }
            heads.insert(request.job, Seq(actual.0 + request.events.len() as u64));
        }
        let mut stored = Vec::new();
        for request in batch {
            for new in &request.events {
                let position = Position(inner.global.len() as u64 + 1);
                let events = inner.jobs.entry(request.job).or_default();
                let seq = Seq(events.len() as u64 + 1);
                let envelope = EventEnvelope {
                    job_id: request.job,
                    seq,
                    position,
                    recorded_at: new.recorded_at,
                    schema_version: SCHEMA_VERSION,
                    metadata: new.metadata.clone(),
                    event: new.event.clone(),
                    prev_hash: ChainHash::GENESIS,
                };
                events.push(envelope.clone());
                inner.global.push((request.job, seq));
                stored.push(envelope);
            }
        }
        drop(inner);
        self.appended.notify_all();
        Ok(Ok(stored))
    }

    fn head(&self, job: JobId) -> Result<Seq, StoreError> {
        Ok(self.lock().jobs.get(&job).map_or(Seq::ZERO, |e| Seq(e.len() as u64)))
    }

    fn scan_job(
        &self,
        job: JobId,
        from: Seq,
        visit: &mut dyn FnMut(EventEnvelope) -> Flow,
    ) -> Result<(), StoreError> {
        let events: Vec<EventEnvelope> = {
            let inner = self.lock();
            let Some(all) = inner.jobs.get(&job) else { return Ok(()) };
            let skip = usize::try_from(from.0.saturating_sub(1)).unwrap_or(usize::MAX);
            all.iter().skip(skip).cloned().collect()
        };
        for envelope in events {
            if visit(envelope) == Flow::Stop {
                break;
            }
        }
        Ok(())
    }

    fn read_all(&self, after: Position, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        let inner = self.lock();
        let skip = usize::try_from(after.0).unwrap_or(usize::MAX);
        Ok(inner
            .global
            .iter()
            .skip(skip)
            .take(limit)
            .map(|(job, seq)| {
                let index = usize::try_from(seq.0 - 1).expect("sequence numbers fit in memory");
                inner.jobs[job][index].clone()
            })
            .collect())
    }

    fn jobs(&self) -> Result<Vec<JobId>, StoreError> {
        Ok(self.lock().jobs.keys().copied().collect())
    }

    fn last_position(&self) -> Result<Position, StoreError> {
        Ok(Position(self.lock().global.len() as u64))
    }

    fn wait_for(&self, after: Position, timeout: Duration) -> Result<bool, StoreError> {
        let inner = self.lock();
        let (inner, _) = self
            .appended
            .wait_timeout_while(inner, timeout, |i| i.global.len() as u64 <= after.0)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(inner.global.len() as u64 > after.0)
    }
}

impl<S: Clone + Send + 'static> CheckpointStore<S> for MemEventStore {
    fn save_checkpoint(&self, job: JobId, checkpoint: &Checkpoint<S>) -> Result<(), StoreError> {
        self.lock().checkpoints.insert((job, checkpoint.seq), Box::new(checkpoint.clone()));
        Ok(())
    }

    fn load_checkpoint(
        &self,
        job: JobId,
        at_most: Seq,
    ) -> Result<Option<Checkpoint<S>>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .checkpoints
            .range((job, Seq::ZERO)..=(job, at_most))
            .next_back()
            .and_then(|(_, any)| any.downcast_ref::<Checkpoint<S>>().cloned()))
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;
    use crate::event::{EventMetadata, JobEvent, NewEvent};

    fn new_event(event: JobEvent) -> NewEvent {
        NewEvent { event, recorded_at: DateTime::UNIX_EPOCH, metadata: EventMetadata::engine() }
    }

    #[test]
    fn appends_are_contiguous_and_globally_ordered() {
        let store = MemEventStore::new();
        let a = JobId::from_parts(1, [1; 10]);
        let b = JobId::from_parts(2, [2; 10]);
        let batch = [
            AppendRequest {
                job: a,
                expected: Seq::ZERO,
                events: vec![new_event(JobEvent::Initialized)],
            },
            AppendRequest {
                job: b,
                expected: Seq::ZERO,
                events: vec![new_event(JobEvent::Initialized)],
            },
            AppendRequest { job: a, expected: Seq(1), events: vec![new_event(JobEvent::Stopped)] },
        ];
        let stored = store.append(&batch).unwrap().unwrap();
        assert_eq!(stored.iter().map(|e| e.position.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(store.head(a).unwrap(), Seq(2));
        assert_eq!(store.read_all(Position(1), 10).unwrap().len(), 2);
    }

    #[test]
    fn a_conflict_writes_nothing() {
        let store = MemEventStore::new();
        let a = JobId::from_parts(1, [1; 10]);
        let batch = [AppendRequest {
            job: a,
            expected: Seq(3),
            events: vec![new_event(JobEvent::Initialized)],
        }];
        let conflict = store.append(&batch).unwrap().unwrap_err();
        assert_eq!(conflict.actual, Seq::ZERO);
        assert_eq!(store.last_position().unwrap(), Position(0));
    }

    #[test]
    fn checkpoints_are_found_at_or_before() {
        let store = MemEventStore::new();
        let a = JobId::from_parts(1, [1; 10]);
        for seq in [10, 20] {
            let cp = Checkpoint { seq: Seq(seq), state: seq * 2 };
            store.save_checkpoint(a, &cp).unwrap();
        }
        let found: Option<Checkpoint<u64>> = store.load_checkpoint(a, Seq(15)).unwrap();
        assert_eq!(found.unwrap().state, 20);
        let none: Option<Checkpoint<u64>> = store.load_checkpoint(a, Seq(5)).unwrap();
        assert!(none.is_none());
    }
}
