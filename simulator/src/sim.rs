//! The deterministic simulation: the real engine and job machine, simulated adapters, seeded
//! faults, and invariant checks after every step.
//!
//! A run has two phases. The *safety* phase injects faults (refused and cut connections,
//! partitions, permanent failures, exhausted queues, full target disks, monitor trips, failing
//! scripts, late reports, store append failures and daemon crashes) while an operator sends
//! random commands; after every step the checkers below must hold. The *liveness* phase turns
//! faults off and nudges jobs the way a patient operator would; every job must then reach
//! Protecting or a terminal state.
//!
//! Checkers:
//! - a job's sequence numbers are contiguous, and the store's head is the engine's;
//! - folding the stored history (from event 1, and from the latest checkpoint) gives exactly
//!   the live job;
//! - no effect reaches the world before the event that caused it is in the store;
//! - a rejected command appends nothing;
//! - terminal states absorb (CutOver leads only to Deleted; Deleted leads nowhere).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use understudy_core::command::{Command, CommandEnvelope, CommandKind};
use understudy_core::effect::{Completion, EffectEnvelope};
use understudy_core::engine::{Folded, fold, fold_from};
use understudy_core::error::{Conflict, EngineError, StoreError};
use understudy_core::event::{Actor, EventEnvelope, EventMetadata};
use understudy_core::ids::{JobId, Position, Seq};
use understudy_core::spec::{
    JobSpec, JobType, MirrorComparison, OrphanPolicy, Script, TargetEndpoint, TargetSpec,
    VerificationSchedule,
};
use understudy_core::status::StateName;
use understudy_core::store::{AppendRequest, Checkpoint, CheckpointStore, EventStore, Flow};
use understudy_core::{Engine, JobMachine};
use understudy_states::{Job, JobSnapshot};

use crate::rng::SimRng;
use crate::world::World;

/// Simulated time starts here: 2026-01-01T00:00:00Z.
pub const SIM_EPOCH_MS: u64 = 1_767_225_600_000;

/// A store the simulator can run on (the in-memory store, or sled through the binary).
pub trait SimStore: EventStore + CheckpointStore<JobSnapshot> {}
impl<T: EventStore + CheckpointStore<JobSnapshot> + ?Sized> SimStore for T {}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The seed: the same seed gives the same history, byte for byte.
    pub seed: u64,
    /// How many jobs exist at once.
    pub jobs: usize,
    /// Steps of the safety phase (with faults).
    pub steps: u64,
    /// Steps the liveness phase may take before a job that has not settled is a failure.
    pub liveness_steps: u64,
    /// Checkpoint every this many events.
    pub checkpoint_every: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions { seed: 0, jobs: 8, steps: 6_000, liveness_steps: 20_000, checkpoint_every: 16 }
    }
}

impl SimOptions {
    /// The command that reproduces this run.
    pub fn reproduce(&self) -> String {
        format!(
            "understudy simulate --seed {} --jobs {} --steps {} --data-dir <empty dir>",
            self.seed, self.jobs, self.steps
        )
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Steps taken, both phases.
    pub steps: u64,
    /// Events stored.
    pub events: u64,
    /// Commands sent (operator, adapters, engine).
    pub commands: u64,
    /// Commands refused.
    pub rejections: u64,
    /// Simulated daemon crashes.
    pub crashes: u64,
    /// Injected store append failures.
    pub store_failures: u64,
    /// Leaf states visited across all jobs.
    pub states: BTreeSet<StateName>,
    /// Transitions (from, to) seen.
    pub transitions: BTreeSet<(StateName, StateName)>,
    /// Each job's final state.
    pub final_states: BTreeMap<JobId, StateName>,
    /// Simulated time elapsed.
    pub sim_time_ms: u64,
}

impl SimReport {
    /// "coverage: 19/19 states, 61 transitions".
    pub fn coverage_line(&self) -> String {
        let leaves: Vec<StateName> = StateName::leaves().collect();
        let missing: Vec<&str> =
            leaves.iter().filter(|s| !self.states.contains(s)).map(|s| s.as_str()).collect();
        let mut line = format!(
            "coverage: {}/{} states, {} transitions",
            leaves.len() - missing.len(),
            leaves.len(),
            self.transitions.len()
        );
        if !missing.is_empty() {
            line.push_str(&format!(" (not visited: {})", missing.join(", ")));
        }
        line
    }
}

/// A broken invariant, with what reproduces it.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The options of the failing run.
    pub options: SimOptions,
    /// The step at which the check failed.
    pub step: u64,
    /// What failed.
    pub message: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulation failed at step {} (seed {}): {}\nreproduce with: {}",
            self.step,
            self.options.seed,
            self.message,
            self.options.reproduce()
        )
    }
}

/// A store that fails appends on purpose: what the daemon sees when its disk does.
struct FaultyStore {
    inner: Box<dyn SimStore>,
    rng: SimRng,
    failing: bool,
    injected: u64,
}

impl EventStore for FaultyStore {
    fn append(
        &self,
        batch: &[AppendRequest],
    ) -> Result<Result<Vec<EventEnvelope>, Conflict>, StoreError> {
        self.inner.append(batch)
    }
    fn head(&self, job: JobId) -> Result<Seq, StoreError> {
        self.inner.head(job)
    }
    fn scan_job(
        &self,
        job: JobId,
        from: Seq,
        visit: &mut dyn FnMut(EventEnvelope) -> Flow,
    ) -> Result<(), StoreError> {
        self.inner.scan_job(job, from, visit)
    }
    fn read_all(&self, after: Position, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        self.inner.read_all(after, limit)
    }
    fn jobs(&self) -> Result<Vec<JobId>, StoreError> {
        self.inner.jobs()
    }
    fn last_position(&self) -> Result<Position, StoreError> {
        self.inner.last_position()
    }
    fn wait_for(&self, after: Position, timeout: Duration) -> Result<bool, StoreError> {
        self.inner.wait_for(after, timeout)
    }
}

impl CheckpointStore<JobSnapshot> for FaultyStore {
    fn save_checkpoint(
        &self,
        job: JobId,
        checkpoint: &Checkpoint<JobSnapshot>,
    ) -> Result<(), StoreError> {
        self.inner.save_checkpoint(job, checkpoint)
    }
    fn load_checkpoint(
        &self,
        job: JobId,
        at_most: Seq,
    ) -> Result<Option<Checkpoint<JobSnapshot>>, StoreError> {
        self.inner.load_checkpoint(job, at_most)
    }
}

impl FaultyStore {
    /// Whether the next append should fail (decided before it reaches the real store, so a
    /// failed append writes nothing, as a failed sled transaction does).
    fn roll_failure(&mut self) -> bool {
        if self.failing && self.rng.chance(2) {
            self.injected += 1;
            true
        } else {
            false
        }
    }
}

/// How the simulation gets a store: `open(None)` at the start, `open(Some(old))` after a
/// simulated crash, which must drop `old` (releasing any lock) and return a new handle on the
/// same underlying history.
pub type Opener<'a> = dyn FnMut(Option<Box<dyn SimStore>>) -> Box<dyn SimStore> + 'a;

/// Runs a simulation on the stores `open` gives.
///
/// # Errors
///
/// The first invariant that breaks, with the command that reproduces it.
pub fn run(options: &SimOptions, open: &mut Opener<'_>) -> Result<SimReport, SimFailure> {
    let mut rng = SimRng::new(options.seed);
    let world = World::new(rng.fork());
    let store = FaultyStore { inner: open(None), rng: rng.fork(), failing: true, injected: 0 };
    let mut sim = Sim {
        options: options.clone(),
        engine: Engine::new(options.checkpoint_every),
        store,
        world,
        operator: rng.fork(),
        chaos: rng.fork(),
        ids: rng.fork(),
        now_ms: SIM_EPOCH_MS,
        step: 0,
        absorbed: BTreeMap::new(),
        report: SimReport::default(),
    };
    let result = sim.run(open);
    result.map(|()| {
        sim.report.steps = sim.step;
        sim.report.store_failures = sim.store.injected;
        sim.report.sim_time_ms = sim.now_ms - SIM_EPOCH_MS;
        sim.report.final_states = sim.engine.jobs().map(|(id, job)| (id, job.state())).collect();
        sim.report
    })
}

struct Sim {
    options: SimOptions,
    engine: Engine<Job>,
    store: FaultyStore,
    world: World,
    operator: SimRng,
    chaos: SimRng,
    ids: SimRng,
    now_ms: u64,
    step: u64,
    absorbed: BTreeMap<JobId, StateName>,
    report: SimReport,
}

/// A state a job must be in, and the command that moves it on from there.
type Step = (StateName, fn() -> Command);

/// What one step of the safety phase does.
enum Action {
    Operator,
    Guided,
    TripMonitor,
    BreakForGood,
    CutConnection,
    Partition,
    Crash,
    World,
}

impl Sim {
    fn fail(&self, message: impl Into<String>) -> SimFailure {
        SimFailure { options: self.options.clone(), step: self.step, message: message.into() }
    }

    fn now(&self) -> DateTime<Utc> {
        let ms = i64::try_from(self.now_ms).expect("simulated time fits in i64");
        DateTime::from_timestamp_millis(ms).expect("simulated time is a valid date")
    }

    fn run(&mut self, open: &mut Opener<'_>) -> Result<(), SimFailure> {
        let creates: Vec<CommandEnvelope> =
            (0..self.options.jobs).map(|_| self.create_command()).collect();
        self.execute(creates, open)?;

        while self.step < self.options.steps {
            self.step += 1;
            let roll = self.chaos.range(0..1000);
            let action = match roll {
                0..50 => Action::Operator,
                50..60 => Action::Guided,
                60..66 => Action::CutConnection,
                66..69 => Action::Partition,
                69..70 => Action::Crash,
                70..72 => Action::TripMonitor,
                72..73 => Action::BreakForGood,
                _ => Action::World,
            };
            match action {
                Action::Operator => {
                    self.now_ms += self.chaos.range(1..2_000);
                    let command = self.random_command();
                    self.execute(vec![command], open)?;
                }
                Action::Guided => {
                    self.now_ms += self.chaos.range(1..2_000);
                    if let Some(command) = self.guided_command() {
                        self.execute(vec![command], open)?;
                    }
                }
                Action::TripMonitor | Action::BreakForGood => {
                    let jobs = match action {
                        Action::TripMonitor => self.world.monitored_jobs(),
                        _ => self.job_ids(),
                    };
                    if jobs.is_empty() {
                        continue;
                    }
                    let job = *self.chaos.pick(&jobs);
                    let report = match action {
                        Action::TripMonitor => self.world.trip_monitor(job),
                        _ => self.world.break_for_good(job),
                    };
                    if let Some(completion) = report {
                        self.execute(vec![adapter_command(completion)], open)?;
                    }
                }
                Action::CutConnection => {
                    let jobs = self.job_ids();
                    let job = *self.chaos.pick(&jobs);
                    if let Some(completion) = self.world.cut_connection(job) {
                        self.execute(vec![adapter_command(completion)], open)?;
                    }
                }
                Action::Partition => {
                    let jobs = self.job_ids();
                    let job = *self.chaos.pick(&jobs);
                    let until = self.now_ms + self.chaos.range(1_000..60_000);
                    self.world.partition(job, until);
                }
                Action::Crash => self.crash(open)?,
                Action::World => self.world_step(open)?,
            }
        }

        self.liveness(open)
    }

    fn world_step(&mut self, open: &mut Opener<'_>) -> Result<(), SimFailure> {
        match self.world.step() {
            Some((at, completion)) => {
                self.now_ms = self.now_ms.max(at);
                if let Some(completion) = completion {
                    self.execute(vec![adapter_command(completion)], open)?;
                }
                Ok(())
            }
            None => {
                self.now_ms += 1_000;
                Ok(())
            }
        }
    }

    fn liveness(&mut self, open: &mut Opener<'_>) -> Result<(), SimFailure> {
        self.store.failing = false;
        let healed: Vec<CommandEnvelope> =
            self.world.heal(self.now_ms).into_iter().map(adapter_command).collect();
        self.execute(healed, open)?;
        let mut next_nudge = self.now_ms;
        for _ in 0..self.options.liveness_steps {
            self.step += 1;
            if self.settled() {
                return Ok(());
            }
            let world_due = self.world.next_due_ms();
            if world_due.is_none_or(|due| due > next_nudge) {
                self.now_ms = self.now_ms.max(next_nudge);
                let nudges = self.nudges();
                self.execute(nudges, open)?;
                next_nudge = self.now_ms + 5_000;
            } else {
                self.world_step(open)?;
            }
        }
        if self.settled() {
            return Ok(());
        }
        let stuck: Vec<String> = self
            .engine
            .jobs()
            .filter(|(_, job)| !is_settled(job.state()))
            .map(|(id, job)| {
                let mut recent = Vec::new();
                let _ = self.store.scan_job(
                    id,
                    Seq(self.engine.head(id).unwrap_or(Seq::ZERO).0.saturating_sub(8)),
                    &mut |e| {
                        recent.push(format!("{} {}", e.seq, e.event.name()));
                        Flow::Continue
                    },
                );
                format!(
                    "{} in {} (activities {:?}; last events: {})",
                    id.short(),
                    job.state(),
                    job.data().activities.keys().collect::<Vec<_>>(),
                    recent.join(", ")
                )
            })
            .collect();
        Err(self.fail(format!("liveness: jobs did not settle: {}", stuck.join("; "))))
    }

    fn settled(&self) -> bool {
        self.engine.jobs().all(|(_, job)| is_settled(job.state()))
    }

    /// What a patient operator does for each job that is not yet protecting.
    fn nudges(&self) -> Vec<CommandEnvelope> {
        self.engine
            .jobs()
            .filter_map(|(id, job)| {
                let command = match job.state() {
                    StateName::Stopped
                    | StateName::Error
                    | StateName::FailoverConditionMet
                    | StateName::Paused => Command::Start,
                    StateName::FailedOver | StateName::TestFailedOver => Command::UndoFailover,
                    StateName::Mirroring if job.data().mirror_paused => Command::ResumeMirror,
                    StateName::Connected => {
                        Command::StartMirror { comparison: None, calculate_size: None }
                    }
                    StateName::Disconnected
                        if !job.spec().is_some_and(|s| s.recovery.auto_reconnect) =>
                    {
                        Command::Start
                    }
                    _ => return None,
                };
                Some(operator_command(id, command))
            })
            .collect()
    }

    /// The jobs the engine knows, in id order.
    fn job_ids(&self) -> Vec<JobId> {
        self.engine.jobs().map(|(id, _)| id).collect()
    }

    fn create_command(&mut self) -> CommandEnvelope {
        let id = JobId::from_parts(self.now_ms, self.ids.entropy());
        let index = usize::try_from(self.ids.range(0..1_000_000)).expect("small");
        let spec = random_spec(&mut self.ids, index);
        operator_command(id, Command::Create { spec: Box::new(spec) })
    }

    fn random_command(&mut self) -> CommandEnvelope {
        let live: Vec<JobId> = self
            .engine
            .jobs()
            .filter(|(_, job)| !job.state().is_terminal())
            .map(|(id, _)| id)
            .collect();
        if live.len() < self.options.jobs && (live.is_empty() || self.operator.chance(300)) {
            return self.create_command();
        }
        let job = *self.operator.pick(&live);
        // Weighted: ordinary controls often, the drastic ones rarely.
        let weights: [(CommandKind, u64); 15] = [
            (CommandKind::Start, 160),
            (CommandKind::Pause, 60),
            (CommandKind::Stop, 60),
            (CommandKind::Delete, 10),
            (CommandKind::StartMirror, 60),
            (CommandKind::PauseMirror, 50),
            (CommandKind::ResumeMirror, 50),
            (CommandKind::StopMirror, 30),
            (CommandKind::Verify, 60),
            (CommandKind::DeleteOrphans, 30),
            (CommandKind::Cutover, 25),
            (CommandKind::Failover, 30),
            (CommandKind::UndoFailover, 40),
            (CommandKind::Reverse, 150),
            (CommandKind::SetBandwidth, 30),
        ];
        let total: u64 = weights.iter().map(|(_, w)| w).sum();
        let mut roll = self.operator.range(0..total);
        let kind = weights
            .iter()
            .find(|(_, w)| {
                if roll < *w {
                    true
                } else {
                    roll -= w;
                    false
                }
            })
            .map_or(CommandKind::Start, |(k, _)| *k);
        let command = match kind {
            CommandKind::Start => Command::Start,
            CommandKind::Pause => Command::Pause,
            CommandKind::Stop => Command::Stop,
            CommandKind::Delete => Command::Delete,
            CommandKind::StartMirror => Command::StartMirror {
                comparison: Some(*self.operator.pick(&MirrorComparison::ALL)),
                calculate_size: Some(self.operator.chance(500)),
            },
            CommandKind::PauseMirror => Command::PauseMirror,
            CommandKind::ResumeMirror => Command::ResumeMirror,
            CommandKind::StopMirror => Command::StopMirror,
            CommandKind::Verify => Command::Verify { remirror: self.operator.chance(500) },
            CommandKind::DeleteOrphans => Command::DeleteOrphans,
            CommandKind::Cutover => Command::Cutover { target_queue: None },
            CommandKind::Failover => {
                Command::Failover { test: self.operator.chance(500), target_queue: None }
            }
            CommandKind::UndoFailover => Command::UndoFailover,
            CommandKind::Reverse => Command::Reverse,
            _ => Command::SetBandwidth {
                limit: understudy_core::spec::BandwidthLimit::Fixed {
                    bytes_per_second: self.operator.range(1_000..10_000_000),
                },
            },
        };
        operator_command(job, command)
    }

    /// A command that leads towards a state no job has visited yet, if one is at hand: the
    /// operator's random walk reaches the rare corners of the machine in every run.
    fn guided_command(&mut self) -> Option<CommandEnvelope> {
        use StateName as S;
        let unvisited: Vec<StateName> =
            StateName::leaves().filter(|s| !self.report.states.contains(s)).collect();
        let jobs: Vec<(JobId, StateName)> =
            self.engine.jobs().map(|(id, job)| (id, job.state())).collect();
        for target in unvisited {
            let wanted: &[Step] = match target {
                S::Paused => {
                    &[(S::Protecting, || Command::Pause), (S::Mirroring, || Command::Pause)]
                }
                S::CutoverPending | S::CuttingOver | S::CutOver => {
                    &[(S::Protecting, || Command::Cutover { target_queue: None })]
                }
                S::FailingOver | S::FailedOver => {
                    &[(S::Protecting, || Command::Failover { test: false, target_queue: None })]
                }
                S::TestFailedOver => {
                    &[(S::Protecting, || Command::Failover { test: true, target_queue: None })]
                }
                S::Reversing => &[(S::FailedOver, || Command::Reverse)],
                S::Deleted => &[(S::Stopped, || Command::Delete)],
                S::Stopped => &[(S::Protecting, || Command::Stop)],
                _ => &[],
            };
            for (from, command) in wanted {
                if let Some((job, _)) = jobs.iter().find(|(_, state)| state == from) {
                    return Some(operator_command(*job, command()));
                }
            }
        }
        None
    }

    fn crash(&mut self, open: &mut Opener<'_>) -> Result<(), SimFailure> {
        self.report.crashes += 1;
        self.world.crash();
        // Everything in memory is gone; only the store survives.
        let old = std::mem::replace(
            &mut self.store.inner,
            Box::new(understudy_core::MemEventStore::new()),
        );
        self.store.inner = open(Some(old));
        self.engine = Engine::new(self.options.checkpoint_every);
        let effects = self
            .engine
            .recover(&self.store)
            .map_err(|e| self.fail(format!("recovery failed: {e}")))?;
        for job in self.store.jobs().map_err(|e| self.fail(e.to_string()))? {
            if let Some(why) = self.engine.quarantine(job) {
                return Err(self.fail(format!("recovery quarantined job {job}: {why}")));
            }
            let stored = self.store.head(job).map_err(|e| self.fail(e.to_string()))?;
            if self.engine.head(job).unwrap_or(Seq::ZERO) != stored {
                return Err(self
                    .fail(format!("job {job}: recovered head differs from the store's {stored}")));
            }
        }
        self.dispatch(&effects)?;
        let recover: Vec<CommandEnvelope> = self
            .job_ids()
            .into_iter()
            .map(|job| CommandEnvelope {
                job,
                command: Command::Recover,
                metadata: EventMetadata::engine(),
            })
            .collect();
        self.execute(recover, open)
    }

    fn dispatch(&mut self, effects: &[EffectEnvelope]) -> Result<(), SimFailure> {
        for effect in effects {
            let durable = self.store.head(effect.id.job).map_err(|e| self.fail(e.to_string()))?;
            if durable < effect.id.seq {
                return Err(self.fail(format!(
                    "effect {} ({}) dispatched before its event was durable (store head {durable})",
                    effect.id,
                    effect.effect.name()
                )));
            }
            self.world.dispatch(self.now_ms, effect);
        }
        Ok(())
    }

    fn execute(
        &mut self,
        commands: Vec<CommandEnvelope>,
        open: &mut Opener<'_>,
    ) -> Result<(), SimFailure> {
        if commands.is_empty() {
            return Ok(());
        }
        self.report.commands += commands.len() as u64;
        let before = self.store.last_position().map_err(|e| self.fail(e.to_string()))?;
        if self.store.roll_failure() {
            // The disk failed under the append: the daemon exits and restarts.
            return self.crash(open);
        }
        let now = self.now();
        let outcomes = self
            .engine
            .execute(&self.store, now, &commands)
            .map_err(|e| self.fail(format!("store failed: {e}")))?;
        let mut touched = BTreeSet::new();
        let mut appended = 0u64;
        for (command, outcome) in commands.iter().zip(outcomes) {
            match outcome {
                Ok(accepted) => {
                    let mut expected = accepted.events.first().map(|e| e.seq);
                    for envelope in &accepted.events {
                        if Some(envelope.seq) != expected {
                            return Err(self.fail(format!(
                                "job {}: sequence gap at {}",
                                command.job, envelope.seq
                            )));
                        }
                        expected = Some(envelope.seq.next());
                    }
                    appended += accepted.events.len() as u64;
                    self.report.events += accepted.events.len() as u64;
                    for (_, line) in &accepted.transitions {
                        self.observe_line(line);
                    }
                    if !accepted.events.is_empty() {
                        touched.insert(command.job);
                    }
                    self.dispatch(&accepted.effects)?;
                }
                Err(EngineError::Rejected(_)) => self.report.rejections += 1,
                Err(error) => {
                    return Err(self.fail(format!(
                        "{:?} on job {}: {error}",
                        command.command.kind(),
                        command.job
                    )));
                }
            }
        }
        let after = self.store.last_position().map_err(|e| self.fail(e.to_string()))?;
        if after.0 - before.0 != appended {
            return Err(self.fail(format!(
                "the store grew by {} events but accepted commands caused {appended}: a rejected command appended",
                after.0 - before.0
            )));
        }
        for job in touched {
            self.check_job(job)?;
        }
        Ok(())
    }

    fn observe_line(&mut self, line: &str) {
        // "Changing to XState from YState in response to …"
        let Some(rest) = line.strip_prefix("Changing to ") else {
            if let Some(state) = line.strip_prefix("Entered ").and_then(StateName::parse)
                && !state.is_superstate()
            {
                self.report.states.insert(state);
            }
            return;
        };
        let mut words = rest.split(' ');
        let to = words.next().and_then(StateName::parse);
        let from = words.nth(1).and_then(StateName::parse);
        if let (Some(from), Some(to)) = (from, to) {
            self.report.states.insert(from);
            self.report.transitions.insert((from, to));
        }
    }

    fn check_job(&mut self, job: JobId) -> Result<(), SimFailure> {
        let live =
            self.engine.job(job).ok_or_else(|| self.fail(format!("job {job} vanished")))?.clone();
        let head = self.store.head(job).map_err(|e| self.fail(e.to_string()))?;
        if self.engine.head(job) != Some(head) {
            return Err(self.fail(format!(
                "job {job}: engine head {:?} but store head {head}",
                self.engine.head(job)
            )));
        }
        let full: Folded<Job> =
            fold_from(&self.store, job, Job::new(job), Seq::ZERO, None, &mut |_, _| {})
                .map_err(|e| self.fail(e.to_string()))?;
        let from_checkpoint: Folded<Job> =
            fold(&self.store, job, None, &mut |_, _| {}).map_err(|e| self.fail(e.to_string()))?;
        for (how, folded) in [("from event 1", &full), ("from its checkpoint", &from_checkpoint)] {
            if let Some(problem) = &folded.problem {
                return Err(self.fail(format!("replaying job {job} {how} failed: {problem}")));
            }
            if folded.head != head || folded.machine != live {
                return Err(self.fail(format!(
                    "replaying job {job} {how} gives {} at seq {}, but the live job is {} at seq {head}",
                    folded.machine.state(),
                    folded.head,
                    live.state()
                )));
            }
        }
        let state = live.state();
        if let Some(terminal) = self.absorbed.get(&job) {
            let allowed = match terminal {
                StateName::CutOver => matches!(state, StateName::CutOver | StateName::Deleted),
                _ => state == StateName::Deleted,
            };
            if !allowed {
                return Err(
                    self.fail(format!("job {job} left terminal state {terminal} for {state}"))
                );
            }
        }
        if state.is_terminal() {
            self.absorbed.insert(job, state);
        }
        Ok(())
    }
}

fn is_settled(state: StateName) -> bool {
    matches!(state, StateName::Protecting | StateName::CutOver | StateName::Deleted)
}

fn operator_command(job: JobId, command: Command) -> CommandEnvelope {
    CommandEnvelope { job, command, metadata: EventMetadata::operator("sim-operator") }
}

fn adapter_command(completion: Completion) -> CommandEnvelope {
    CommandEnvelope {
        job: completion.effect.job,
        metadata: EventMetadata {
            actor: Actor::Adapter { effect: completion.effect },
            correlation_id: None,
            idempotency_key: None,
        },
        command: Command::Complete(completion),
    }
}

fn random_spec(rng: &mut SimRng, index: usize) -> JobSpec {
    let diagnostics = rng.chance(100);
    let mut spec = if diagnostics {
        JobSpec::diagnostics(format!("sim-tdu-{index}"), format!("/sim/source/{index}"))
    } else {
        JobSpec {
            name: format!("sim-job-{index}"),
            job_type: JobType::Files,
            source: format!("/sim/source/{index}"),
            target: TargetSpec {
                endpoint: TargetEndpoint::Local,
                path: format!("/sim/target/{index}"),
            },
            orphans: *rng.pick(&[OrphanPolicy::Off, OrphanPolicy::Report, OrphanPolicy::Delete]),
            ..JobSpec::default()
        }
    };
    spec.mirror.comparison = *rng.pick(&MirrorComparison::ALL);
    spec.mirror.calculate_size = rng.chance(700);
    spec.recovery.auto_reconnect = rng.chance(900);
    spec.recovery.auto_remirror = rng.chance(800);
    if !diagnostics {
        spec.cutover.wait_for_user = rng.chance(800);
        spec.failover_monitor.enabled = rng.chance(400);
        spec.failover_monitor.wait_for_user = rng.chance(600);
        let script = || Script {
            path: "/usr/local/bin/hook".into(),
            args: vec![],
            delay_until_complete: true,
            timeout_secs: 60,
        };
        if rng.chance(300) {
            spec.cutover.pre_script = Some(script());
        }
        if rng.chance(300) {
            spec.cutover.post_script = Some(script());
        }
        if rng.chance(300) {
            spec.verification.schedule =
                Some(VerificationSchedule { interval_secs: 60, begin_at: None });
        }
    }
    spec
}

/// A digest of the whole history (every envelope, in global order), to show that a seed
/// always produces the same history.
///
/// # Errors
///
/// Storage failure.
pub fn history_digest(store: &dyn SimStore) -> Result<String, StoreError> {
    // FNV-1a over the envelopes' debug form: stable for equal values, and independent of the
    // store's byte encoding, so the in-memory and sled stores can be compared too.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut after = Position(0);
    loop {
        let page = store.read_all(after, 1024)?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for envelope in &page {
            let text = format!(
                "{:?}|{:?}|{:?}|{:?}|{:?}",
                envelope.job_id,
                envelope.seq,
                envelope.recorded_at,
                envelope.metadata,
                envelope.event
            );
            for byte in text.bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    Ok(format!("{hash:016x}"))
}
