//! The pure engine: command → decide → durable append → apply → effects.
//!
//! ```text
//! command ──► decide(state, command) ──► events ──► append durably ──► apply(state, event) ──► effects
//!                                        (or Rejection: returned, not stored)
//! ```
//!
//! The engine owns the folded state of every job and nothing else: it reads no clock (time is
//! an argument), touches no file or socket (the store is handed in), and draws no randomness.
//! The one rule it exists to keep: no effect leaves the engine before the event that caused it
//! is durable.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use chrono::{DateTime, Utc};

use crate::command::{Command, CommandEnvelope, CommandKind, Rejection};
use crate::effect::{Effect, EffectEnvelope};
use crate::error::{EngineError, StoreError};
use crate::event::{EventEnvelope, JobEvent, NewEvent};
use crate::ids::{EffectId, JobId, Seq};
use crate::spec::JobSpec;
use crate::status::{JobStatus, StateName};
use crate::store::{AppendRequest, Checkpoint, CheckpointStore, EventStore, Flow};

/// How many idempotency keys the engine remembers per job.
const IDEMPOTENCY_KEYS_PER_JOB: usize = 1024;

/// A job's state machine, as the engine drives it. Implemented in `understudy-states`.
pub trait JobMachine: Clone + fmt::Debug {
    /// What a checkpoint holds.
    type Snapshot: Clone + fmt::Debug;

    /// A job that exists only as an id: Uninitialized.
    fn new(job: JobId) -> Self;

    /// The current (leaf) state.
    fn state(&self) -> StateName;

    /// The status projections, as of the last event applied. Owned: a machine may put parts
    /// of it into words only when asked, not for every event it folds.
    fn status(&self) -> JobStatus;

    /// The spec, once created.
    fn spec(&self) -> Option<&JobSpec>;

    /// Decides what a command means now: the events it causes, or why it is refused.
    /// Never changes the machine.
    ///
    /// # Errors
    ///
    /// A [`Rejection`] naming the state and what it allows.
    fn decide(&self, now: DateTime<Utc>, command: &Command) -> Result<Vec<JobEvent>, Rejection>;

    /// Folds a stored event into the machine, emitting effects and transition log lines.
    ///
    /// # Errors
    ///
    /// [`IllegalEvent`] when the current state cannot take this event: the history is corrupt
    /// or the code that wrote it disagrees with this code. The machine is unchanged.
    fn apply(&mut self, envelope: &EventEnvelope, out: &mut Applied) -> Result<(), IllegalEvent>;

    /// The effects the current state needs again after a restart, with their original ids.
    fn resume(&self) -> Vec<EffectEnvelope>;

    /// The commands an operator may send now.
    fn allowed(&self) -> Vec<CommandKind>;

    /// A checkpoint of the whole machine.
    fn snapshot(&self) -> Self::Snapshot;

    /// The machine a checkpoint holds.
    fn restore(snapshot: Self::Snapshot) -> Self;
}

/// What applying one event produced.
#[derive(Debug)]
pub struct Applied {
    job: JobId,
    seq: Seq,
    /// Effects, in order, with ids derived from the event.
    pub effects: Vec<EffectEnvelope>,
    /// Transition lines in the seeds' wording.
    pub transitions: Vec<String>,
}

impl Applied {
    /// Collects the output of applying event `seq` of `job`.
    pub fn new(job: JobId, seq: Seq) -> Self {
        Applied { job, seq, effects: Vec::new(), transitions: Vec::new() }
    }

    /// The id the next effect will get.
    pub fn next_effect_id(&self) -> EffectId {
        let index = u32::try_from(self.effects.len()).expect("an event causes few effects");
        EffectId { job: self.job, seq: self.seq, index }
    }

    /// Emits an effect; returns its id so the machine can remember it.
    pub fn effect(&mut self, effect: Effect) -> EffectId {
        let id = self.next_effect_id();
        self.effects.push(EffectEnvelope { id, effect });
        id
    }

    /// Records a transition line.
    pub fn transition(&mut self, line: String) {
        self.transitions.push(line);
    }
}

/// A stored event the job's current state cannot take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{event} is not possible in {state}")]
pub struct IllegalEvent {
    /// The state.
    pub state: StateName,
    /// The event's name.
    pub event: &'static str,
}

/// What an accepted command did.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    /// The job.
    pub job: JobId,
    /// The events it caused, as stored (empty if it changed nothing).
    pub events: Vec<EventEnvelope>,
    /// The effects to dispatch, all caused by durable events.
    pub effects: Vec<EffectEnvelope>,
    /// Transition lines, in the seeds' wording, per event.
    pub transitions: Vec<(Seq, String)>,
    /// Set when the command repeated an earlier one's idempotency key: nothing new happened,
    /// and this is the sequence range the first one caused.
    pub duplicate_of: Option<(Seq, Seq)>,
}

/// The engine.
#[derive(Debug)]
pub struct Engine<M: JobMachine> {
    jobs: BTreeMap<JobId, Slot<M>>,
    checkpoint_every: u64,
}

#[derive(Clone, Debug)]
struct Slot<M> {
    machine: M,
    head: Seq,
    quarantine: Option<String>,
    idempotency: IdempotencyKeys,
}

/// Recently seen idempotency keys and the events they caused.
#[derive(Clone, Debug, Default)]
struct IdempotencyKeys {
    ranges: BTreeMap<String, (Seq, Seq)>,
    order: VecDeque<String>,
}

impl IdempotencyKeys {
    fn observe(&mut self, key: &str, seq: Seq) {
        match self.ranges.get_mut(key) {
            Some(range) => range.1 = seq,
            None => {
                self.ranges.insert(key.to_string(), (seq, seq));
                self.order.push_back(key.to_string());
                if self.order.len() > IDEMPOTENCY_KEYS_PER_JOB
                    && let Some(old) = self.order.pop_front()
                {
                    self.ranges.remove(&old);
                }
            }
        }
    }
}

impl<M: JobMachine> Engine<M> {
    /// An engine with no jobs that checkpoints every `checkpoint_every` events (0: never).
    pub fn new(checkpoint_every: u64) -> Self {
        Engine { jobs: BTreeMap::new(), checkpoint_every }
    }

    /// A job's machine.
    pub fn job(&self, job: JobId) -> Option<&M> {
        self.jobs.get(&job).map(|s| &s.machine)
    }

    /// All jobs, in id order.
    pub fn jobs(&self) -> impl Iterator<Item = (JobId, &M)> {
        self.jobs.iter().map(|(id, s)| (*id, &s.machine))
    }

    /// A job's head sequence.
    pub fn head(&self, job: JobId) -> Option<Seq> {
        self.jobs.get(&job).map(|s| s.head)
    }

    /// Why a job is quarantined, if it is.
    pub fn quarantine(&self, job: JobId) -> Option<&str> {
        self.jobs.get(&job).and_then(|s| s.quarantine.as_deref())
    }

    /// Runs a batch of commands: decides each (seeing the events decided before it in the
    /// batch), appends all events in one durable append, applies them, and returns what each
    /// command did, in order. Rejected commands store nothing and do not disturb the others.
    ///
    /// # Errors
    ///
    /// A store failure: nothing of the batch was applied and no effect was issued.
    pub fn execute<S>(
        &mut self,
        store: &S,
        now: DateTime<Utc>,
        commands: &[CommandEnvelope],
    ) -> Result<Vec<Result<Accepted, EngineError>>, StoreError>
    where
        S: EventStore + CheckpointStore<M::Snapshot> + ?Sized,
    {
        let mut scratch: BTreeMap<JobId, Slot<M>> = BTreeMap::new();
        let mut decided: Vec<Result<Decided, EngineError>> = Vec::with_capacity(commands.len());
        for command in commands {
            decided.push(self.decide_in_batch(&mut scratch, now, command));
        }

        let requests: Vec<AppendRequest> = decided
            .iter()
            .filter_map(|d| match d {
                Ok(Decided::Events(request)) => Some(request.clone()),
                _ => None,
            })
            .collect();
        let stored = if requests.is_empty() {
            Vec::new()
        } else {
            match store.append(&requests)? {
                Ok(stored) => stored,
                Err(conflict) => {
                    // Another writer: every command that wanted to write fails, none applied.
                    return Ok(decided
                        .into_iter()
                        .map(|d| match d {
                            Ok(Decided::Events(_)) => Err(EngineError::Conflict(conflict.clone())),
                            Ok(Decided::Nothing(job)) => Ok(empty_accepted(job, None)),
                            Ok(Decided::Duplicate(job, range)) => {
                                Ok(empty_accepted(job, Some(range)))
                            }
                            Err(e) => Err(e),
                        })
                        .collect());
                }
            }
        };

        let mut stored = stored.into_iter();
        let mut outcomes = Vec::with_capacity(decided.len());
        for d in decided {
            outcomes.push(match d {
                Err(e) => Err(e),
                Ok(Decided::Nothing(job)) => Ok(empty_accepted(job, None)),
                Ok(Decided::Duplicate(job, range)) => Ok(empty_accepted(job, Some(range))),
                Ok(Decided::Events(request)) => {
                    let envelopes: Vec<EventEnvelope> =
                        stored.by_ref().take(request.events.len()).collect();
                    Ok(self.commit(store, request.job, envelopes))
                }
            });
        }
        Ok(outcomes)
    }

    fn decide_in_batch(
        &self,
        scratch: &mut BTreeMap<JobId, Slot<M>>,
        now: DateTime<Utc>,
        command: &CommandEnvelope,
    ) -> Result<Decided, EngineError> {
        let job = command.job;
        let slot = match scratch.get(&job).or_else(|| self.jobs.get(&job)) {
            Some(slot) => {
                if matches!(command.command, Command::Create { .. }) {
                    return Err(EngineError::JobExists(job));
                }
                slot.clone()
            }
            None if matches!(command.command, Command::Create { .. }) => Slot {
                machine: M::new(job),
                head: Seq::ZERO,
                quarantine: None,
                idempotency: IdempotencyKeys::default(),
            },
            None => return Err(EngineError::UnknownJob(job)),
        };
        if let Some(why) = &slot.quarantine {
            return Err(EngineError::Quarantined { job, why: why.clone() });
        }
        if let Some(key) = &command.metadata.idempotency_key
            && let Some(range) = slot.idempotency.ranges.get(key)
        {
            return Ok(Decided::Duplicate(job, *range));
        }
        let events = slot.machine.decide(now, &command.command)?;
        if events.is_empty() {
            return Ok(Decided::Nothing(job));
        }
        let new_events: Vec<NewEvent> = events
            .into_iter()
            .map(|event| NewEvent { event, recorded_at: now, metadata: command.metadata.clone() })
            .collect();
        let request = AppendRequest { job, expected: slot.head, events: new_events };

        // Fold the decided events into a scratch copy so later commands of the batch see them.
        let mut next = slot;
        for (i, new) in request.events.iter().enumerate() {
            let seq = Seq(request.expected.0 + 1 + i as u64);
            let provisional = provisional_envelope(job, seq, new);
            let mut discard = Applied::new(job, seq);
            if let Err(illegal) = next.machine.apply(&provisional, &mut discard) {
                // decide produced an event apply refuses: a bug in the machine. Refuse the
                // command rather than store a history that cannot be replayed.
                return Err(EngineError::Quarantined {
                    job,
                    why: format!("the machine decided an event it cannot apply: {illegal}"),
                });
            }
            if let Some(key) = &new.metadata.idempotency_key {
                next.idempotency.observe(key, seq);
            }
        }
        next.head = Seq(request.expected.0 + request.events.len() as u64);
        scratch.insert(job, next);
        Ok(Decided::Events(request))
    }

    /// Applies envelopes that are durable in the store to the live machine.
    fn commit<S>(&mut self, store: &S, job: JobId, envelopes: Vec<EventEnvelope>) -> Accepted
    where
        S: CheckpointStore<M::Snapshot> + ?Sized,
    {
        let slot = self.jobs.entry(job).or_insert_with(|| Slot {
            machine: M::new(job),
            head: Seq::ZERO,
            quarantine: None,
            idempotency: IdempotencyKeys::default(),
        });
        let mut effects = Vec::new();
        let mut transitions = Vec::new();
        for envelope in &envelopes {
            assert_eq!(
                envelope.seq,
                slot.head.next(),
                "the store returned job {job} out of sequence"
            );
            let mut out = Applied::new(job, envelope.seq);
            if let Err(illegal) = slot.machine.apply(envelope, &mut out) {
                slot.quarantine = Some(format!(
                    "event {} at seq {}: {illegal}",
                    envelope.event.name(),
                    envelope.seq
                ));
                break;
            }
            slot.head = envelope.seq;
            if let Some(key) = &envelope.metadata.idempotency_key {
                slot.idempotency.observe(key, envelope.seq);
            }
            effects.extend(out.effects);
            transitions.extend(out.transitions.into_iter().map(|t| (envelope.seq, t)));
            if self.checkpoint_every > 0 && envelope.seq.0 % self.checkpoint_every == 0 {
                let checkpoint = Checkpoint { seq: envelope.seq, state: slot.machine.snapshot() };
                // A checkpoint is a cache; failing to write one costs only replay time later.
                if let Err(error) = store.save_checkpoint(job, &checkpoint) {
                    transitions.push((envelope.seq, format!("checkpoint not written: {error}")));
                }
            }
        }
        Accepted { job, events: envelopes, effects, transitions, duplicate_of: None }
    }

    /// Rebuilds every job from the store and returns the effects their states need again.
    ///
    /// A job whose history is corrupt or cannot be folded is quarantined, not fatal.
    ///
    /// # Errors
    ///
    /// A store failure other than corruption.
    pub fn recover<S>(&mut self, store: &S) -> Result<Vec<EffectEnvelope>, StoreError>
    where
        S: EventStore + CheckpointStore<M::Snapshot> + ?Sized,
    {
        let mut effects = Vec::new();
        for job in store.jobs()? {
            let folded: Folded<M> = fold(store, job, None, &mut |_, _| {})?;
            let quarantine = folded.problem.clone();
            if quarantine.is_none() {
                effects.extend(folded.machine.resume());
            }
            let mut idempotency = IdempotencyKeys::default();
            for (key, seq) in folded.idempotency_keys {
                idempotency.observe(&key, seq);
            }
            self.jobs.insert(
                job,
                Slot { machine: folded.machine, head: folded.head, quarantine, idempotency },
            );
        }
        Ok(effects)
    }
}

enum Decided {
    Events(AppendRequest),
    Nothing(JobId),
    Duplicate(JobId, (Seq, Seq)),
}

fn empty_accepted(job: JobId, duplicate_of: Option<(Seq, Seq)>) -> Accepted {
    Accepted { job, events: Vec::new(), effects: Vec::new(), transitions: Vec::new(), duplicate_of }
}

fn provisional_envelope(job: JobId, seq: Seq, new: &NewEvent) -> EventEnvelope {
    EventEnvelope {
        job_id: job,
        seq,
        position: crate::ids::Position(0),
        recorded_at: new.recorded_at,
        schema_version: crate::event::SCHEMA_VERSION,
        metadata: new.metadata.clone(),
        event: new.event.clone(),
        prev_hash: crate::event::ChainHash::GENESIS,
    }
}

/// A job folded from the store.
#[derive(Debug)]
pub struct Folded<M> {
    /// The machine after the last good event.
    pub machine: M,
    /// The last event folded in.
    pub head: Seq,
    /// Where folding started (0: from the beginning; otherwise a checkpoint's seq).
    pub from_checkpoint: Seq,
    /// Why folding stopped early, if it did: corruption or an illegal event.
    pub problem: Option<String>,
    /// Idempotency keys seen while folding (only after the checkpoint).
    pub idempotency_keys: Vec<(String, Seq)>,
}

/// Folds a job's history, from its latest checkpoint at or before `until` (or the end), calling
/// `observe` with each envelope and the transition lines it produced. Corruption and illegal
/// events end the fold and are reported in [`Folded::problem`], not as errors: the good
/// prefix stays readable.
///
/// # Errors
///
/// A store failure other than corruption.
pub fn fold<M, S>(
    store: &S,
    job: JobId,
    until: Option<Seq>,
    observe: &mut dyn FnMut(&EventEnvelope, &Applied),
) -> Result<Folded<M>, StoreError>
where
    M: JobMachine,
    S: EventStore + CheckpointStore<M::Snapshot> + ?Sized,
{
    let limit = until.unwrap_or(Seq(u64::MAX));
    let checkpoint = store.load_checkpoint(job, limit)?;
    let (machine, start) = match checkpoint {
        Some(cp) => (M::restore(cp.state), cp.seq),
        None => (M::new(job), Seq::ZERO),
    };
    fold_from(store, job, machine, start, until, observe)
}

/// Folds from a given machine and head (use `M::new` and `Seq::ZERO` for a full replay).
///
/// # Errors
///
/// A store failure other than corruption.
pub fn fold_from<M, S>(
    store: &S,
    job: JobId,
    mut machine: M,
    start: Seq,
    until: Option<Seq>,
    observe: &mut dyn FnMut(&EventEnvelope, &Applied),
) -> Result<Folded<M>, StoreError>
where
    M: JobMachine,
    S: EventStore + ?Sized,
{
    let limit = until.unwrap_or(Seq(u64::MAX));
    let mut head = start;
    let mut problem = None;
    let mut idempotency_keys = Vec::new();
    let scanned = store.scan_job(job, start.next(), &mut |envelope| {
        if envelope.seq > limit {
            return Flow::Stop;
        }
        if envelope.seq != head.next() {
            problem = Some(format!(
                "history of job {job} is corrupt at seq {}: out of sequence",
                head.next()
            ));
            return Flow::Stop;
        }
        let mut out = Applied::new(job, envelope.seq);
        if let Err(illegal) = machine.apply(&envelope, &mut out) {
            problem =
                Some(format!("history of job {job} is corrupt at seq {}: {illegal}", envelope.seq));
            return Flow::Stop;
        }
        observe(&envelope, &out);
        if let Some(key) = &envelope.metadata.idempotency_key {
            idempotency_keys.push((key.clone(), envelope.seq));
        }
        head = envelope.seq;
        Flow::Continue
    });
    match scanned {
        Ok(()) => {}
        Err(StoreError::Corrupt(corruption)) => problem = Some(corruption.to_string()),
        Err(other) => return Err(other),
    }
    Ok(Folded { machine, head, from_checkpoint: start, problem, idempotency_keys })
}

#[cfg(test)]
mod tests {
    //! The engine with a tiny counter machine: batches, rejections, idempotency, recovery,
    //! checkpoints, quarantine.
    use super::*;
    use crate::event::EventMetadata;
    use crate::mem_store::MemEventStore;

    /// Uninitialized → (Create) Stopped ⇄ (Start/Stop) Running; every Start emits one effect.
    #[derive(Clone, Debug, PartialEq)]
    struct Counter {
        state: StateName,
        starts: u64,
        status: JobStatus,
    }

    impl JobMachine for Counter {
        type Snapshot = (StateName, u64);
        fn new(_job: JobId) -> Self {
            Counter { state: StateName::Uninitialized, starts: 0, status: JobStatus::default() }
        }
        fn state(&self) -> StateName {
            self.state
        }
        fn status(&self) -> JobStatus {
            self.status.clone()
        }
        fn spec(&self) -> Option<&JobSpec> {
            None
        }
        fn decide(
            &self,
            _now: DateTime<Utc>,
            command: &Command,
        ) -> Result<Vec<JobEvent>, Rejection> {
            match (self.state, command) {
                (StateName::Uninitialized, Command::Create { .. }) => {
                    Ok(vec![JobEvent::Initialized])
                }
                (StateName::Stopped, Command::Start) => {
                    Ok(vec![JobEvent::Resumed { remirror: false }])
                }
                (StateName::Running, Command::Stop) => Ok(vec![JobEvent::Stopped]),
                (StateName::Running, Command::Pause) => Ok(vec![]),
                (state, command) => Err(Rejection::NotAllowed {
                    command: command.kind(),
                    state,
                    allowed: self.allowed(),
                }),
            }
        }
        fn apply(
            &mut self,
            envelope: &EventEnvelope,
            out: &mut Applied,
        ) -> Result<(), IllegalEvent> {
            let illegal = IllegalEvent { state: self.state, event: envelope.event.name() };
            self.state = match (self.state, &envelope.event) {
                (StateName::Uninitialized, JobEvent::Initialized) => StateName::Stopped,
                (StateName::Stopped, JobEvent::Resumed { .. }) => {
                    self.starts += 1;
                    out.effect(Effect::Connect { attempt: 0 });
                    StateName::Running
                }
                (StateName::Running, JobEvent::Stopped) => StateName::Stopped,
                _ => return Err(illegal),
            };
            Ok(())
        }
        fn resume(&self) -> Vec<EffectEnvelope> {
            Vec::new()
        }
        fn allowed(&self) -> Vec<CommandKind> {
            match self.state {
                StateName::Stopped => vec![CommandKind::Start],
                StateName::Running => vec![CommandKind::Stop, CommandKind::Pause],
                _ => vec![CommandKind::Create],
            }
        }
        fn snapshot(&self) -> (StateName, u64) {
            (self.state, self.starts)
        }
        fn restore((state, starts): (StateName, u64)) -> Self {
            Counter { state, starts, status: JobStatus::default() }
        }
    }

    fn cmd(job: JobId, command: Command) -> CommandEnvelope {
        CommandEnvelope { job, command, metadata: EventMetadata::operator("test") }
    }

    fn create(job: JobId) -> CommandEnvelope {
        cmd(job, Command::Create { spec: Box::default() })
    }

    fn now() -> DateTime<Utc> {
        DateTime::UNIX_EPOCH
    }

    #[test]
    fn a_batch_sees_its_own_earlier_decisions() {
        let store = MemEventStore::new();
        let mut engine: Engine<Counter> = Engine::new(0);
        let job = JobId::from_parts(1, [1; 10]);
        let out = engine
            .execute(
                &store,
                now(),
                &[create(job), cmd(job, Command::Start), cmd(job, Command::Stop)],
            )
            .unwrap();
        assert!(out.iter().all(Result::is_ok));
        assert_eq!(store.head(job).unwrap(), Seq(3));
        assert_eq!(engine.job(job).unwrap().state, StateName::Stopped);
        let effects = &out[1].as_ref().unwrap().effects;
        assert_eq!(effects[0].id, EffectId { job, seq: Seq(2), index: 0 });
    }

    #[test]
    fn a_rejected_command_stores_nothing_and_names_the_state() {
        let store = MemEventStore::new();
        let mut engine: Engine<Counter> = Engine::new(0);
        let job = JobId::from_parts(1, [1; 10]);
        engine.execute(&store, now(), &[create(job)]).unwrap();
        let out = engine.execute(&store, now(), &[cmd(job, Command::Stop)]).unwrap();
        let err = out[0].as_ref().unwrap_err().to_string();
        assert_eq!(err, "cannot stop in Stopped: it allows start");
        assert_eq!(store.head(job).unwrap(), Seq(1));
    }

    #[test]
    fn unknown_jobs_and_duplicate_creates_are_errors() {
        let store = MemEventStore::new();
        let mut engine: Engine<Counter> = Engine::new(0);
        let job = JobId::from_parts(1, [1; 10]);
        let out = engine.execute(&store, now(), &[cmd(job, Command::Start)]).unwrap();
        assert!(matches!(out[0], Err(EngineError::UnknownJob(_))));
        let out = engine.execute(&store, now(), &[create(job), create(job)]).unwrap();
        assert!(matches!(out[1], Err(EngineError::JobExists(_))));
        assert_eq!(store.last_position().unwrap().0, 1);
    }

    #[test]
    fn a_repeated_idempotency_key_does_nothing_new() {
        let store = MemEventStore::new();
        let mut engine: Engine<Counter> = Engine::new(0);
        let job = JobId::from_parts(1, [1; 10]);
        engine.execute(&store, now(), &[create(job)]).unwrap();
        let mut start = cmd(job, Command::Start);
        start.metadata.idempotency_key = Some("k1".into());
        engine.execute(&store, now(), std::slice::from_ref(&start)).unwrap();
        let again = engine.execute(&store, now(), &[start]).unwrap();
        assert_eq!(again[0].as_ref().unwrap().duplicate_of, Some((Seq(2), Seq(2))));
        assert_eq!(store.head(job).unwrap(), Seq(2));
    }

    #[test]
    fn recovery_with_and_without_checkpoints_gives_the_live_state() {
        let store = MemEventStore::new();
        let mut engine: Engine<Counter> = Engine::new(4);
        let job = JobId::from_parts(1, [1; 10]);
        engine.execute(&store, now(), &[create(job)]).unwrap();
        for _ in 0..5 {
            engine
                .execute(&store, now(), &[cmd(job, Command::Start), cmd(job, Command::Stop)])
                .unwrap();
        }
        let live = engine.job(job).unwrap().clone();
        let mut recovered: Engine<Counter> = Engine::new(4);
        recovered.recover(&store).unwrap();
        assert_eq!(recovered.job(job).unwrap().snapshot(), live.snapshot());
        store.forget_checkpoints();
        let mut replayed: Engine<Counter> = Engine::new(4);
        replayed.recover(&store).unwrap();
        assert_eq!(replayed.job(job).unwrap().snapshot(), live.snapshot());
        assert_eq!(replayed.head(job), Some(Seq(11)));
    }

    #[test]
    fn an_illegal_stored_event_quarantines_the_job_not_the_engine() {
        let store = MemEventStore::new();
        let good = JobId::from_parts(1, [1; 10]);
        let bad = JobId::from_parts(2, [2; 10]);
        let mut engine: Engine<Counter> = Engine::new(0);
        engine.execute(&store, now(), &[create(good), create(bad)]).unwrap();
        // Forge an event Stopped cannot take.
        let forged = NewEvent {
            event: JobEvent::Stopped,
            recorded_at: now(),
            metadata: EventMetadata::engine(),
        };
        store
            .append(&[AppendRequest { job: bad, expected: Seq(1), events: vec![forged] }])
            .unwrap()
            .unwrap();
        let mut recovered: Engine<Counter> = Engine::new(0);
        recovered.recover(&store).unwrap();
        assert!(recovered.quarantine(bad).unwrap().contains("corrupt at seq 2"));
        assert!(recovered.quarantine(good).is_none());
        let out = recovered.execute(&store, now(), &[cmd(bad, Command::Start)]).unwrap();
        assert!(matches!(out[0], Err(EngineError::Quarantined { .. })));
    }
}
