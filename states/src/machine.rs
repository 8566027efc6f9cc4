//! The job machine in statig: every state of DESIGN.md §4, nested as shown there.
//!
//! One handler per state takes both kinds of input:
//! - [`Input::Decide`]: a command. The handler returns the events it causes (or a refusal)
//!   through the context and never transitions: deciding runs on a clone of the machine that is
//!   thrown away, so a decision cannot change the job.
//! - [`Input::Apply`]: a stored event. The handler updates the job's data, transitions, and
//!   emits effects through the context.
//!
//! A command no state handles reaches the top and is refused as not allowed; an event no state
//! handles is illegal in the current state (corruption, or code that disagrees with history).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use statig::prelude::*;

use understudy_core::command::{Command, Rejection};
use understudy_core::effect::{
    Completion, Effect, EffectEnvelope, Failure, FaultKind, Report, Retry, ScriptStage, Timer,
};
use understudy_core::event::{
    ConnectionInfo, EventEnvelope, Fault, FaultSeverity, JobEvent, MirrorKind, MirrorPlan,
    MirrorReason,
};
use understudy_core::ids::JobId;
use understudy_core::spec::{
    JobSpec, JobType, MirrorComparison, OrphanPolicy, QueuePolicy, VerifyAction, validate_bandwidth,
};
use understudy_core::status::{ReplicationCounters, StateName};
use understudy_core::{Applied, CommandKind};

/// Progress (mirror and replication counters) is recorded at most this often.
pub const PROGRESS_INTERVAL_MS: i64 = 2_000;

/// What the machine is handed: a command to decide, or a stored event to apply.
#[derive(Debug)]
pub enum Input<'a> {
    /// Decide what a command means.
    Decide(&'a Command),
    /// Fold a stored event in.
    Apply(&'a EventEnvelope),
}

/// The context of one dispatch: where decisions, effects and log lines go.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The time of the decision (the event's time when applying).
    pub now: DateTime<Utc>,
    decision: Option<Result<Vec<JobEvent>, Rejection>>,
    applied: Option<&'a mut Applied>,
    handled: bool,
    lines: Vec<String>,
    event: Option<&'a JobEvent>,
}

impl<'a> Ctx<'a> {
    /// A context for deciding a command.
    pub fn deciding(now: DateTime<Utc>) -> Self {
        Ctx { now, decision: None, applied: None, handled: false, lines: Vec::new(), event: None }
    }

    /// A context for applying `envelope`, collecting into `applied`.
    pub fn applying(envelope: &'a EventEnvelope, applied: &'a mut Applied) -> Self {
        Ctx {
            now: envelope.recorded_at,
            decision: None,
            applied: Some(applied),
            handled: false,
            lines: Vec::new(),
            event: Some(&envelope.event),
        }
    }

    /// A context whose output is thrown away (initialising a restored machine).
    pub fn discarding() -> Self {
        Ctx::deciding(DateTime::UNIX_EPOCH)
    }

    /// The decision made, if a state made one.
    pub fn take_decision(&mut self) -> Option<Result<Vec<JobEvent>, Rejection>> {
        self.decision.take()
    }

    /// Whether some state took the applied event.
    pub fn was_handled(&self) -> bool {
        self.handled
    }

    fn decide(&mut self, decision: Result<Vec<JobEvent>, Rejection>) -> Outcome<State> {
        self.decision = Some(decision);
        Handled
    }

    fn accept(&mut self, events: Vec<JobEvent>) -> Outcome<State> {
        self.decide(Ok(events))
    }

    fn effect(&mut self, effect: Effect) -> Option<EffectEnvelope> {
        let applied = self.applied.as_deref_mut()?;
        let id = applied.effect(effect.clone());
        Some(EffectEnvelope { id, effect })
    }

    fn done(&mut self) -> Outcome<State> {
        self.handled = true;
        Handled
    }

    fn go(&mut self, state: State) -> Outcome<State> {
        self.handled = true;
        Transition(state)
    }

    fn entered(&mut self, state: StateName) {
        self.lines.push(format!("Entered {}", state.log_name()));
    }

    fn exited(&mut self, state: StateName) {
        self.lines.push(format!("Exited {}", state.log_name()));
    }
}

/// Work the job has in flight, each with the effect that started it: completions for any other
/// effect are stale and ignored; after a restart these are what may need doing again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Activity {
    /// The connection to the target.
    Connection,
    /// Change capture and the source queue (replication).
    Capture,
    /// The running mirror.
    Mirror,
    /// A verification.
    Verification,
    /// Orphan processing on demand.
    Orphans,
    /// A cutover or failover script.
    Script,
    /// Settling the target queue.
    TargetQueue,
    /// Releasing the target.
    Release,
    /// Activating or deactivating the replica.
    Replica,
    /// The scheduled-verification timer.
    Timer,
    /// The failover monitor.
    Monitor,
}

impl Activity {
    /// The activity a report belongs to; `None` for reports any activity may send (faults).
    fn of(report: &Report) -> Option<Activity> {
        Some(match report {
            Report::Connected { .. }
            | Report::ConnectFailed { .. }
            | Report::ConnectionLost { .. } => Activity::Connection,
            Report::MirrorSized { .. }
            | Report::MirrorProgress { .. }
            | Report::MirrorFilesSkipped { .. }
            | Report::MirrorFinished { .. } => Activity::Mirror,
            Report::ReplicationProgress { .. }
            | Report::ReplicationCaughtUp
            | Report::QueueAlert { .. }
            | Report::QueueExhausted => Activity::Capture,
            Report::VerificationFinished { .. } => Activity::Verification,
            Report::OrphansProcessed { .. } => Activity::Orphans,
            Report::ScriptFinished { .. } => Activity::Script,
            Report::TargetQueueSettled { .. } => Activity::TargetQueue,
            Report::TargetReleased => Activity::Release,
            Report::ReplicaActivated | Report::ReplicaDeactivated | Report::DirectionReversed => {
                Activity::Replica
            }
            Report::TimerFired { .. } => Activity::Timer,
            Report::SourceFailed { .. } => Activity::Monitor,
            Report::Fault { .. } | Report::FaultCleared { .. } => return None,
        })
    }
}

/// A cutover or failover in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// Cutover (migration) or failover (protection).
    pub kind: HandoverKind,
    /// Apply or discard the target queue.
    pub target_queue: QueuePolicy,
}

/// Cutover or failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandoverKind {
    /// Migration: ends in CutOver.
    Cutover,
    /// Protection: ends in FailedOver or TestFailedOver.
    Failover {
        /// Test failover.
        test: bool,
    },
}

/// The job's data: the statig machine's shared storage. Everything decisions depend on lives
/// here; display-only projections live in `JobStatus`, outside the machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobData {
    /// The job's id.
    pub id: JobId,
    /// The spec, once created.
    pub spec: Option<JobSpec>,
    /// Work in flight, by activity.
    pub activities: BTreeMap<Activity, EffectEnvelope>,
    /// The mirror to run once connected.
    pub next_mirror: Option<MirrorPlan>,
    /// The mirror running (or the last one).
    pub mirror: Option<MirrorPlan>,
    /// Whether the running mirror is paused (it keeps its pointer).
    pub mirror_paused: bool,
    /// A mirror has completed at least once: later mirrors are differential.
    pub mirrored_once: bool,
    /// Data may have been lost (queue exhausted, engine restarted): the next connection remirrors.
    pub remirror_needed: bool,
    /// The target held the source's data (as of replication) when the connection was lost.
    pub target_consistent: bool,
    /// Where Start returns a paused job.
    pub resume_to: Option<StateName>,
    /// When the current start began (for the endpoint wait).
    pub start_requested_at: Option<DateTime<Utc>>,
    /// Failed reconnect attempts since the connection was lost.
    pub reconnect_attempts: u32,
    /// The cutover or failover in progress.
    pub handover: Option<Handover>,
    /// Protection runs from the original target back to the original source.
    pub reversed: bool,
    /// The connection to the target is up (not merely being attempted).
    pub connected: bool,
    /// When mirror progress was last recorded.
    pub mirror_progress_at: Option<DateTime<Utc>>,
    /// When replication progress was last recorded, and what it was.
    pub replication_progress_at: Option<DateTime<Utc>>,
    /// The last replication counters recorded.
    pub replication: ReplicationCounters,
    /// Faults present now.
    pub faults: BTreeMap<FaultKind, Fault>,
}

impl JobData {
    /// A job that exists only as an id.
    pub fn new(id: JobId) -> Self {
        JobData {
            id,
            spec: None,
            activities: BTreeMap::new(),
            next_mirror: None,
            mirror: None,
            mirror_paused: false,
            mirrored_once: false,
            remirror_needed: false,
            target_consistent: false,
            resume_to: None,
            start_requested_at: None,
            reconnect_attempts: 0,
            handover: None,
            reversed: false,
            connected: false,
            mirror_progress_at: None,
            replication_progress_at: None,
            replication: ReplicationCounters::default(),
            faults: BTreeMap::new(),
        }
    }

    fn spec(&self) -> &JobSpec {
        self.spec.as_ref().expect("an initialized job has its spec: Created precedes Initialized")
    }

    /// Whether a completion answers work the job still has in flight.
    pub fn is_current(&self, completion: &Completion) -> bool {
        match Activity::of(&completion.report) {
            Some(Activity::Orphans) => [Activity::Orphans, Activity::Mirror]
                .iter()
                .any(|a| self.activities.get(a).is_some_and(|e| e.id == completion.effect)),
            Some(activity) => {
                self.activities.get(&activity).is_some_and(|e| e.id == completion.effect)
            }
            None => self.activities.values().any(|e| e.id == completion.effect),
        }
    }

    /// Emits an effect for an activity and remembers it as that activity's current work.
    fn start(&mut self, ctx: &mut Ctx<'_>, activity: Activity, effect: Effect) {
        if let Some(envelope) = ctx.effect(effect) {
            self.activities.insert(activity, envelope);
        } else {
            // Deciding, not applying: nothing to remember.
        }
    }

    /// Emits an effect that ends an activity.
    fn end(&mut self, ctx: &mut Ctx<'_>, activity: Activity, effect: Option<Effect>) {
        if self.activities.remove(&activity).is_some()
            && let Some(effect) = effect
        {
            ctx.effect(effect);
        }
    }

    /// Stops everything that touches the data path: mirror, capture, connection.
    fn stop_data_path(&mut self, ctx: &mut Ctx<'_>) {
        self.end(ctx, Activity::Mirror, Some(Effect::StopMirror));
        self.end(ctx, Activity::Verification, None);
        self.end(ctx, Activity::Orphans, None);
        self.end(ctx, Activity::Connection, Some(Effect::Disconnect));
        self.end(ctx, Activity::Capture, Some(Effect::StopChangeCapture));
        self.end(ctx, Activity::Timer, None);
        self.mirror_paused = false;
        self.connected = false;
    }

    /// The mirror a (re)start runs: the job's comparison; full the first time, then differential.
    fn restart_mirror(&self, reason: MirrorReason) -> MirrorPlan {
        let spec = self.spec();
        let kind = if self.mirrored_once { MirrorKind::Differential } else { MirrorKind::Full };
        let reason = if self.mirrored_once { reason } else { MirrorReason::Initial };
        MirrorPlan {
            kind,
            comparison: spec.mirror.comparison,
            calculate_size: spec.mirror.calculate_size,
            reason,
        }
    }

    fn connect(&mut self, ctx: &mut Ctx<'_>) {
        let attempt = self.reconnect_attempts;
        self.start(ctx, Activity::Connection, Effect::Connect { attempt });
    }

    fn handle_progress(&mut self, now: DateTime<Utc>, report: &Report) -> Vec<JobEvent> {
        let due = |last: Option<DateTime<Utc>>| {
            last.is_none_or(|at| (now - at).num_milliseconds() >= PROGRESS_INTERVAL_MS)
        };
        match report {
            Report::MirrorProgress { counters } if due(self.mirror_progress_at) => {
                vec![JobEvent::MirrorProgressed { counters: counters.clone() }]
            }
            Report::ReplicationProgress { counters } => {
                // Record at the interval, and whenever the queue empties or starts filling, so
                // the history shows when the target caught up.
                let edge = (counters.queue_bytes == 0) != (self.replication.queue_bytes == 0);
                if (due(self.replication_progress_at) && counters.moved_since(&self.replication))
                    || edge
                {
                    vec![JobEvent::ReplicationProgressed { counters: counters.clone() }]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    fn verification_plan(&self, remirror: Option<bool>) -> (MirrorComparison, bool) {
        let v = &self.spec().verification;
        (v.comparison, remirror.unwrap_or(v.action == VerifyAction::ReportAndRemirror))
    }

    fn schedule_verification(&mut self, ctx: &mut Ctx<'_>) {
        let Some(schedule) = self.spec().verification.schedule.clone() else { return };
        if self.activities.contains_key(&Activity::Timer) {
            return;
        }
        let first =
            schedule.begin_at.map(|at| (at - ctx.now).num_milliseconds()).filter(|ms| *ms > 0);
        let after_ms =
            first.map_or(schedule.interval_secs.saturating_mul(1000), |ms| ms.unsigned_abs());
        self.start(
            ctx,
            Activity::Timer,
            Effect::StartTimer { timer: Timer::Verification, after_ms },
        );
    }

    fn fault_events(&self, kind: FaultKind, failure: &Failure) -> Vec<JobEvent> {
        let severity = match failure.retry {
            Retry::Temporary => FaultSeverity::Warning,
            Retry::Persistent | Retry::Permanent => FaultSeverity::Error,
        };
        let fault = Fault { kind, severity, message: failure.message.clone() };
        if self.faults.get(&kind) == Some(&fault) {
            return Vec::new(); // already recorded
        }
        let mut events = vec![JobEvent::FaultRaised { fault }];
        if failure.retry == Retry::Permanent {
            events.push(JobEvent::Failed { failure: failure.clone() });
        }
        events
    }

    fn refuse(
        state: StateName,
        command: &Command,
        reason: impl Into<String>,
    ) -> Result<Vec<JobEvent>, Rejection> {
        Err(Rejection::Refused { command: command.kind(), state, reason: reason.into() })
    }

    fn is_diagnostics(&self) -> bool {
        self.spec().job_type == JobType::Diagnostics
    }

    /// The events a Cutover or Failover command causes.
    fn handover(&self, state: StateName, command: &Command) -> Result<Vec<JobEvent>, Rejection> {
        if self.is_diagnostics() {
            return Self::refuse(
                state,
                command,
                "a diagnostics job has a null target: there is nothing to cut over or fail over to",
            );
        }
        let default_queue = self.spec().cutover.target_queue;
        match command {
            Command::Cutover { target_queue } => Ok(vec![JobEvent::CutoverRequested {
                target_queue: target_queue.unwrap_or(default_queue),
            }]),
            Command::Failover { test, target_queue } => Ok(vec![JobEvent::FailoverRequested {
                test: *test,
                target_queue: target_queue.unwrap_or(default_queue),
            }]),
            _ => unreachable!("handover is only called for Cutover and Failover"),
        }
    }

    /// Starts a cutover or failover: the pre-script first, then the target queue.
    fn begin_handover(&mut self, ctx: &mut Ctx<'_>, handover: Handover) {
        self.handover = Some(handover);
        self.end(ctx, Activity::Mirror, Some(Effect::StopMirror));
        self.end(ctx, Activity::Verification, None);
        self.end(ctx, Activity::Orphans, None);
        self.end(ctx, Activity::Timer, None);
        match self.spec().cutover.pre_script.clone() {
            Some(script) => self.start(
                ctx,
                Activity::Script,
                Effect::RunScript { stage: ScriptStage::PreCutover, script },
            ),
            None => self.start(
                ctx,
                Activity::TargetQueue,
                Effect::SettleTargetQueue { policy: handover.target_queue },
            ),
        }
    }
}

/// The state enum statig generates, by name.
pub(crate) fn state_name(state: &State) -> StateName {
    match state {
        State::Uninitialized {} => StateName::Uninitialized,
        State::Stopped {} => StateName::Stopped,
        State::Starting {} => StateName::Starting,
        State::Connected {} => StateName::Connected,
        State::Mirroring {} => StateName::Mirroring,
        State::Synchronized {} => StateName::Synchronized,
        State::Protecting {} => StateName::Protecting,
        State::Paused {} => StateName::Paused,
        State::Disconnected {} => StateName::Disconnected,
        State::FailoverConditionMet {} => StateName::FailoverConditionMet,
        State::CutoverPending {} => StateName::CutoverPending,
        State::CuttingOver {} => StateName::CuttingOver,
        State::FailingOver {} => StateName::FailingOver,
        State::CutOver {} => StateName::CutOver,
        State::FailedOver {} => StateName::FailedOver,
        State::TestFailedOver {} => StateName::TestFailedOver,
        State::Reversing {} => StateName::Reversing,
        State::Error {} => StateName::Error,
        State::Deleted {} => StateName::Deleted,
    }
}

/// The statig state for a running sub-state name (where a paused job returns).
fn running_state(name: StateName) -> State {
    match name {
        StateName::Mirroring => State::mirroring(),
        StateName::Synchronized => State::synchronized(),
        StateName::Protecting => State::protecting(),
        _ => State::connected(),
    }
}

#[state_machine(
    initial = "State::uninitialized()",
    state(derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)),
    superstate(derive(Debug)),
    after_transition = "Self::after_transition",
    event_identifier = "input",
    context_identifier = "ctx"
)]
impl JobData {
    // ----- top level -------------------------------------------------------------------------

    #[state(entry_action = "enter_uninitialized", exit_action = "exit_uninitialized")]
    fn uninitialized(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(command @ Command::Create { spec }) => {
                let _ = command;
                match spec.validate() {
                    Ok(()) => ctx.accept(vec![
                        JobEvent::Created { spec: spec.clone() },
                        JobEvent::Initialized,
                    ]),
                    Err(error) => ctx.decide(Err(Rejection::InvalidSpec(error))),
                }
            }
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::Created { spec } if self.spec.is_none() => {
                    self.spec = Some((**spec).clone());
                    ctx.done()
                }
                JobEvent::Initialized if self.spec.is_some() => ctx.go(State::stopped()),
                _ => Super,
            },
            _ => Super,
        }
    }

    #[state(entry_action = "enter_deleted")]
    fn deleted(input: &Input<'_>) -> Outcome<State> {
        let _ = input;
        Super
    }

    // ----- Initialized ---------------------------------------------------------------------

    #[superstate(entry_action = "enter_initialized", exit_action = "exit_initialized")]
    fn initialized(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(command) => match command {
                Command::Delete => ctx.accept(vec![JobEvent::Deleted]),
                Command::Recover => {
                    // Only a job with work in flight when the engine stopped has anything to
                    // pick up; the monitor and timers are simply re-issued (see `resume`).
                    let in_flight = self
                        .activities
                        .keys()
                        .any(|a| !matches!(a, Activity::Monitor | Activity::Timer));
                    ctx.accept(if in_flight {
                        vec![JobEvent::Recovered { remirror: true }]
                    } else {
                        Vec::new()
                    })
                }
                Command::SetBandwidth { limit } => match validate_bandwidth(limit) {
                    Ok(()) => ctx.accept(vec![JobEvent::BandwidthChanged { limit: limit.clone() }]),
                    Err(error) => ctx.decide(Err(Rejection::InvalidSpec(error))),
                },
                Command::Complete(Completion { report, .. }) => match report {
                    Report::Fault { kind, failure } => {
                        ctx.accept(self.fault_events(*kind, failure))
                    }
                    Report::FaultCleared { kind } if self.faults.contains_key(kind) => {
                        ctx.accept(vec![JobEvent::FaultCleared { kind: *kind }])
                    }
                    // Late reports of work that ended with the state it belonged to.
                    _ => ctx.accept(Vec::new()),
                },
                _ => Super,
            },
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::Deleted => {
                    self.stop_data_path(ctx);
                    self.end(ctx, Activity::Monitor, Some(Effect::StopFailoverMonitor));
                    self.activities.clear();
                    ctx.effect(Effect::ReleaseJob);
                    ctx.go(State::deleted())
                }
                JobEvent::BandwidthChanged { limit } => {
                    if let Some(spec) = self.spec.as_mut() {
                        spec.bandwidth = limit.clone();
                    }
                    ctx.effect(Effect::SetBandwidth { limit: limit.clone() });
                    ctx.done()
                }
                JobEvent::FaultRaised { fault } => {
                    self.faults.insert(fault.kind, fault.clone());
                    if fault.kind == FaultKind::TargetDiskFull {
                        // The target dropped what it could not write: only a remirror repairs it.
                        self.target_consistent = false;
                        self.remirror_needed = true;
                    }
                    ctx.done()
                }
                JobEvent::FaultCleared { kind } => {
                    self.faults.remove(kind);
                    ctx.done()
                }
                JobEvent::Failed { .. } => {
                    self.stop_data_path(ctx);
                    ctx.go(State::error())
                }
                // States with a connection or a handover in flight take this themselves.
                JobEvent::Recovered { .. } => ctx.done(),
                _ => Super,
            },
        }
    }

    #[state(
        superstate = "initialized",
        entry_action = "enter_stopped",
        exit_action = "exit_stopped"
    )]
    fn stopped(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(Command::Start) => ctx.accept(vec![JobEvent::StartRequested {
                mirror: self.restart_mirror(MirrorReason::Restart),
            }]),
            Input::Decide(Command::Failover { .. }) => {
                let command = match input {
                    Input::Decide(c) => *c,
                    Input::Apply(_) => unreachable!(),
                };
                ctx.decide(self.handover(StateName::Stopped, command))
            }
            Input::Decide(Command::Complete(Completion {
                report: Report::SourceFailed { reason },
                ..
            })) => ctx.accept(self.source_failed(reason)),
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::StartRequested { mirror } => {
                    self.begin_start(ctx, mirror.clone());
                    ctx.go(State::starting())
                }
                JobEvent::FailoverConditionMet { .. } => ctx.go(State::failover_condition_met()),
                JobEvent::FailoverRequested { test, target_queue } => {
                    self.begin_handover(
                        ctx,
                        Handover {
                            kind: HandoverKind::Failover { test: *test },
                            target_queue: *target_queue,
                        },
                    );
                    ctx.go(State::cutover_pending())
                }
                _ => Super,
            },
            _ => Super,
        }
    }

    #[state(
        superstate = "initialized",
        entry_action = "enter_starting",
        exit_action = "exit_starting"
    )]
    fn starting(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(command) => match command {
                Command::Stop => ctx.accept(vec![JobEvent::Stopped]),
                Command::Complete(Completion { report, .. }) => match report {
                    Report::Connected { connection } => {
                        let mirror = self
                            .next_mirror
                            .clone()
                            .unwrap_or_else(|| self.restart_mirror(MirrorReason::Restart));
                        ctx.accept(vec![
                            JobEvent::StartSucceeded { connection: connection.clone() },
                            JobEvent::MirrorStarted { mirror },
                        ])
                    }
                    Report::ConnectFailed { failure } => {
                        let mut events = vec![JobEvent::StartFailed { failure: failure.clone() }];
                        let waited_secs =
                            self.start_requested_at.map_or(0, |at| (ctx.now - at).num_seconds());
                        let limit = i64::try_from(self.spec().recovery.endpoint_wait_secs)
                            .unwrap_or(i64::MAX);
                        if failure.retry == Retry::Permanent {
                            events.push(JobEvent::Failed { failure: failure.clone() });
                        } else if waited_secs >= limit {
                            events.push(JobEvent::Failed {
                                failure: Failure::persistent(format!(
                                    "the target endpoint was not reached within {limit} s ({}): check that the target daemon runs and is reachable, then start the job again",
                                    failure.message
                                )),
                            });
                        }
                        ctx.accept(events)
                    }
                    Report::SourceFailed { reason } => ctx.accept(self.source_failed(reason)),
                    _ => Super,
                },
                Command::Failover { .. } => ctx.decide(self.handover(StateName::Starting, command)),
                _ => Super,
            },
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::StartSucceeded { .. } => {
                    self.reconnect_attempts = 0;
                    self.connected = true;
                    ctx.go(State::connected())
                }
                JobEvent::StartFailed { .. } => ctx.done(),
                JobEvent::Stopped => {
                    self.stop_data_path(ctx);
                    ctx.go(State::stopped())
                }
                JobEvent::Recovered { .. } => {
                    // The engine restarted while connecting: connect again.
                    self.connect(ctx);
                    ctx.done()
                }
                JobEvent::FailoverConditionMet { .. } => {
                    self.stop_data_path(ctx);
                    ctx.go(State::failover_condition_met())
                }
                JobEvent::FailoverRequested { test, target_queue } => {
                    self.stop_data_path(ctx);
                    self.begin_handover(
                        ctx,
                        Handover {
                            kind: HandoverKind::Failover { test: *test },
                            target_queue: *target_queue,
                        },
                    );
                    ctx.go(State::cutover_pending())
                }
                _ => Super,
            },
        }
    }

    // ----- Running ---------------------------------------------------------------------------

    #[superstate(
        superstate = "initialized",
        entry_action = "enter_running",
        exit_action = "exit_running"
    )]
    fn running(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(command) => {
                let state = StateName::Running;
                match command {
                    Command::Pause => ctx.accept(vec![JobEvent::Paused]),
                    Command::Stop => ctx.accept(vec![JobEvent::Stopped]),
                    Command::Verify { remirror } => {
                        if self.is_diagnostics() {
                            return ctx.decide(Self::refuse(
                                state,
                                command,
                                "a diagnostics job has a null target: there is nothing to verify",
                            ));
                        }
                        if self.activities.contains_key(&Activity::Verification) {
                            return ctx.decide(Self::refuse(
                                state,
                                command,
                                "a verification is already running",
                            ));
                        }
                        let (comparison, remirror) = self.verification_plan(Some(*remirror));
                        ctx.accept(vec![JobEvent::VerificationStarted { comparison, remirror }])
                    }
                    Command::DeleteOrphans => {
                        if self.is_diagnostics() {
                            return ctx.decide(Self::refuse(
                                state,
                                command,
                                "a diagnostics job has a null target: it has no orphans",
                            ));
                        }
                        if self.activities.contains_key(&Activity::Orphans) {
                            return ctx.decide(Self::refuse(
                                state,
                                command,
                                "orphans are already being processed",
                            ));
                        }
                        ctx.accept(vec![JobEvent::OrphanRemovalStarted])
                    }
                    Command::Failover { .. } => ctx.decide(self.handover(state, command)),
                    Command::Complete(Completion { report, .. }) => match report {
                        Report::ConnectionLost { reason } => {
                            ctx.accept(vec![JobEvent::ConnectionLost { reason: reason.clone() }])
                        }
                        Report::QueueExhausted => ctx.accept(vec![JobEvent::QueueExhausted]),
                        Report::QueueAlert { percent } => {
                            ctx.accept(vec![JobEvent::QueueAlertRaised { percent: *percent }])
                        }
                        Report::ReplicationProgress { .. } => {
                            let events = self.handle_progress(ctx.now, report);
                            ctx.accept(events)
                        }
                        Report::ReplicationCaughtUp => ctx.accept(Vec::new()),
                        Report::VerificationFinished { summary } => {
                            ctx.accept(vec![JobEvent::VerificationCompleted {
                                summary: summary.clone(),
                            }])
                        }
                        Report::OrphansProcessed { found, deleted, bytes, log_path } => {
                            ctx.accept(vec![JobEvent::OrphansProcessed {
                                found: *found,
                                deleted: *deleted,
                                bytes: *bytes,
                                log_path: log_path.clone(),
                            }])
                        }
                        Report::TimerFired { timer: Timer::Verification } => {
                            if self.activities.contains_key(&Activity::Verification)
                                || self.activities.contains_key(&Activity::Mirror)
                            {
                                // Busy: skip this round; the next interval comes around again.
                                ctx.accept(vec![JobEvent::VerificationSkipped])
                            } else {
                                let (comparison, remirror) = self.verification_plan(None);
                                ctx.accept(vec![JobEvent::VerificationStarted {
                                    comparison,
                                    remirror,
                                }])
                            }
                        }
                        Report::SourceFailed { reason } => ctx.accept(self.source_failed(reason)),
                        Report::Connected { .. } => ctx.accept(Vec::new()),
                        _ => Super,
                    },
                    _ => Super,
                }
            }
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::Paused => {
                    self.resume_to = Some(match self.activities.contains_key(&Activity::Mirror) {
                        true => StateName::Mirroring,
                        false if self.target_consistent => StateName::Protecting,
                        false => StateName::Connected,
                    });
                    if self.activities.contains_key(&Activity::Mirror) && !self.mirror_paused {
                        ctx.effect(Effect::PauseMirror);
                    }
                    ctx.effect(Effect::PauseTransmission);
                    ctx.go(State::paused())
                }
                JobEvent::Stopped => {
                    self.stop_data_path(ctx);
                    ctx.go(State::stopped())
                }
                JobEvent::ConnectionLost { .. } | JobEvent::Recovered { .. } => {
                    if let JobEvent::Recovered { remirror } = &envelope.event {
                        self.remirror_needed |= *remirror;
                    }
                    self.lose_connection(ctx);
                    ctx.go(State::disconnected())
                }
                JobEvent::QueueExhausted => {
                    // Auto-disconnect: drop the connection and the queue; a remirror follows.
                    self.remirror_needed = true;
                    self.lose_connection(ctx);
                    self.end(ctx, Activity::Connection, Some(Effect::Disconnect));
                    ctx.go(State::disconnected())
                }
                JobEvent::QueueAlertRaised { .. } => ctx.done(),
                JobEvent::ReplicationProgressed { counters } => {
                    self.replication = counters.clone();
                    self.replication_progress_at = Some(envelope.recorded_at);
                    ctx.done()
                }
                JobEvent::VerificationStarted { comparison, remirror } => {
                    self.start(
                        ctx,
                        Activity::Verification,
                        Effect::Verify { comparison: *comparison, remirror: *remirror },
                    );
                    ctx.done()
                }
                JobEvent::VerificationSkipped => {
                    self.activities.remove(&Activity::Timer);
                    self.schedule_verification(ctx);
                    ctx.done()
                }
                JobEvent::VerificationCompleted { .. } => {
                    self.activities.remove(&Activity::Verification);
                    if self.activities.remove(&Activity::Timer).is_some() {
                        self.schedule_verification(ctx);
                    }
                    ctx.done()
                }
                JobEvent::OrphanRemovalStarted => {
                    let delete = true;
                    self.start(ctx, Activity::Orphans, Effect::ProcessOrphans { delete });
                    ctx.done()
                }
                JobEvent::OrphansProcessed { .. } => {
                    self.activities.remove(&Activity::Orphans);
                    ctx.done()
                }
                JobEvent::FailoverConditionMet { .. } => {
                    self.stop_data_path(ctx);
                    ctx.go(State::failover_condition_met())
                }
                JobEvent::FailoverRequested { test, target_queue } => {
                    self.begin_handover(
                        ctx,
                        Handover {
                            kind: HandoverKind::Failover { test: *test },
                            target_queue: *target_queue,
                        },
                    );
                    ctx.go(State::cutover_pending())
                }
                _ => Super,
            },
        }
    }

    #[state(
        superstate = "running",
        entry_action = "enter_connected",
        exit_action = "exit_connected"
    )]
    fn connected(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(command @ Command::StartMirror { .. }) => ctx.decide(self.manual_mirror(command)),
            Input::Decide(command @ Command::Cutover { .. }) => ctx.decide(Self::refuse(
                StateName::Connected,
                command,
                "the target does not hold the source's data yet: start a mirror and wait for Protecting (`understudy job wait JOB --state Protecting`)",
            )),
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::MirrorStarted { mirror } => {
                    self.begin_mirror(ctx, mirror.clone());
                    ctx.go(State::mirroring())
                }
                _ => Super,
            },
            _ => Super,
        }
    }

    #[state(
        superstate = "running",
        entry_action = "enter_mirroring",
        exit_action = "exit_mirroring"
    )]
    fn mirroring(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        let state = StateName::Mirroring;
        match input {
            Input::Decide(command) => match command {
                Command::PauseMirror if self.mirror_paused => {
                    ctx.decide(Self::refuse(state, command, "the mirror is already paused"))
                }
                Command::PauseMirror => ctx.accept(vec![JobEvent::MirrorPaused]),
                Command::ResumeMirror if !self.mirror_paused => {
                    ctx.decide(Self::refuse(state, command, "the mirror is not paused"))
                }
                Command::ResumeMirror => ctx.accept(vec![JobEvent::MirrorResumed]),
                Command::StopMirror => ctx.accept(vec![JobEvent::MirrorStopped]),
                Command::StartMirror { .. } => ctx.decide(Self::refuse(state, command, "a mirror is already running")),
                Command::Verify { .. } => ctx.decide(Self::refuse(
                    state,
                    command,
                    "a mirror is in progress: verify once it completes",
                )),
                Command::Cutover { .. } => ctx.decide(Self::refuse(
                    state,
                    command,
                    "the mirror has not completed: wait for Protecting (`understudy job wait JOB --state Protecting`)",
                )),
                Command::Complete(Completion { report, .. }) => match report {
                    Report::MirrorSized { total_bytes, total_files } => ctx.accept(vec![JobEvent::MirrorSizeCalculated {
                        total_bytes: *total_bytes,
                        total_files: *total_files,
                    }]),
                    Report::MirrorProgress { .. } => {
                        let events = self.handle_progress(ctx.now, report);
                        ctx.accept(events)
                    }
                    Report::MirrorFilesSkipped { files } => {
                        ctx.accept(vec![JobEvent::MirrorFilesSkipped { files: files.clone() }])
                    }
                    Report::MirrorFinished { counters } => {
                        let mut events = vec![JobEvent::MirrorCompleted { counters: counters.clone() }];
                        let migrating = !self.spec().cutover.wait_for_user && !self.is_diagnostics();
                        if migrating && !self.faults.values().any(|f| f.severity == FaultSeverity::Error) {
                            events.push(JobEvent::CutoverRequested { target_queue: self.spec().cutover.target_queue });
                        }
                        ctx.accept(events)
                    }
                    _ => Super,
                },
                _ => Super,
            },
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::MirrorSizeCalculated { .. } | JobEvent::MirrorFilesSkipped { .. } => ctx.done(),
                JobEvent::MirrorProgressed { .. } => {
                    self.mirror_progress_at = Some(envelope.recorded_at);
                    ctx.done()
                }
                JobEvent::MirrorPaused => {
                    self.mirror_paused = true;
                    ctx.effect(Effect::PauseMirror);
                    ctx.done()
                }
                JobEvent::MirrorResumed => {
                    self.mirror_paused = false;
                    ctx.effect(Effect::ResumeMirror);
                    ctx.done()
                }
                JobEvent::MirrorStopped => {
                    self.end(ctx, Activity::Mirror, Some(Effect::StopMirror));
                    self.mirror_paused = false;
                    self.target_consistent = false;
                    if let Some(script) = self.spec().mirror_scripts.stop.clone() {
                        ctx.effect(Effect::RunScript { stage: ScriptStage::MirrorStop, script });
                    }
                    ctx.go(State::connected())
                }
                JobEvent::MirrorCompleted { .. } => {
                    self.activities.remove(&Activity::Mirror);
                    self.mirror_paused = false;
                    self.mirrored_once = true;
                    self.remirror_needed = false;
                    if let Some(script) = self.spec().mirror_scripts.complete.clone() {
                        ctx.effect(Effect::RunScript { stage: ScriptStage::MirrorComplete, script });
                    }
                    ctx.go(State::synchronized())
                }
                _ => Super,
            },
        }
    }

    #[state(
        superstate = "running",
        entry_action = "enter_synchronized",
        exit_action = "exit_synchronized"
    )]
    fn synchronized(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(command) => match command {
                Command::StartMirror { .. } => ctx.decide(self.manual_mirror(command)),
                Command::Cutover { .. } => {
                    ctx.decide(self.handover(StateName::Synchronized, command))
                }
                Command::Complete(Completion { report: Report::ReplicationCaughtUp, .. }) => {
                    ctx.accept(vec![JobEvent::ReplicationCaughtUp])
                }
                _ => Super,
            },
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::ReplicationCaughtUp => {
                    self.target_consistent = true;
                    self.schedule_verification(ctx);
                    ctx.go(State::protecting())
                }
                JobEvent::MirrorStarted { mirror } => {
                    self.begin_mirror(ctx, mirror.clone());
                    ctx.go(State::mirroring())
                }
                JobEvent::CutoverRequested { target_queue } => {
                    self.begin_handover(
                        ctx,
                        Handover { kind: HandoverKind::Cutover, target_queue: *target_queue },
                    );
                    ctx.go(State::cutover_pending())
                }
                _ => Super,
            },
        }
    }

    #[state(
        superstate = "running",
        entry_action = "enter_protecting",
        exit_action = "exit_protecting"
    )]
    fn protecting(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(command) => match command {
                Command::StartMirror { .. } => ctx.decide(self.manual_mirror(command)),
                Command::Cutover { .. } => {
                    ctx.decide(self.handover(StateName::Protecting, command))
                }
                _ => Super,
            },
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::MirrorStarted { mirror } => {
                    self.begin_mirror(ctx, mirror.clone());
                    ctx.go(State::mirroring())
                }
                JobEvent::CutoverRequested { target_queue } => {
                    self.begin_handover(
                        ctx,
                        Handover { kind: HandoverKind::Cutover, target_queue: *target_queue },
                    );
                    ctx.go(State::cutover_pending())
                }
                _ => Super,
            },
        }
    }

    // ----- Paused, Disconnected, FailoverConditionMet -----------------------------------------

    #[state(superstate = "initialized", entry_action = "enter_paused", exit_action = "exit_paused")]
    fn paused(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(command) => match command {
                Command::Start => {
                    let remirror = self.remirror_needed;
                    let mut events = vec![JobEvent::Resumed { remirror }];
                    // Without a connection the remirror follows the reconnect instead.
                    if remirror && self.connected {
                        events.push(JobEvent::MirrorStarted {
                            mirror: self.restart_mirror(MirrorReason::AutoRemirror),
                        });
                    }
                    ctx.accept(events)
                }
                Command::Stop => ctx.accept(vec![JobEvent::Stopped]),
                Command::Failover { .. } => ctx.decide(self.handover(StateName::Paused, command)),
                Command::Complete(Completion { report, .. }) => match report {
                    Report::QueueExhausted => ctx.accept(vec![JobEvent::QueueExhausted]),
                    Report::QueueAlert { percent } => {
                        ctx.accept(vec![JobEvent::QueueAlertRaised { percent: *percent }])
                    }
                    Report::ReplicationProgress { .. } => {
                        let events = self.handle_progress(ctx.now, report);
                        ctx.accept(events)
                    }
                    Report::ConnectionLost { reason } => {
                        ctx.accept(vec![JobEvent::ConnectionLost { reason: reason.clone() }])
                    }
                    Report::Connected { connection } => {
                        ctx.accept(vec![JobEvent::Reconnected { connection: connection.clone() }])
                    }
                    Report::ConnectFailed { failure } => ctx.accept(self.reconnect_failed(failure)),
                    Report::SourceFailed { reason } => ctx.accept(self.source_failed(reason)),
                    _ => Super,
                },
                _ => Super,
            },
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::Resumed { remirror } => {
                    let back = self.resume_to.take().unwrap_or(StateName::Connected);
                    ctx.effect(Effect::ResumeTransmission);
                    if !self.connected {
                        // The connection broke while paused and is not back yet.
                        self.end(ctx, Activity::Mirror, Some(Effect::StopMirror));
                        self.mirror_paused = false;
                        ctx.go(State::disconnected())
                    } else if *remirror {
                        // What was mirroring restarts as the remirror that follows.
                        self.end(ctx, Activity::Mirror, Some(Effect::StopMirror));
                        self.mirror_paused = false;
                        ctx.go(State::connected())
                    } else {
                        if back == StateName::Mirroring && !self.mirror_paused {
                            ctx.effect(Effect::ResumeMirror);
                        }
                        ctx.go(running_state(back))
                    }
                }
                JobEvent::Stopped => {
                    self.stop_data_path(ctx);
                    ctx.go(State::stopped())
                }
                JobEvent::QueueExhausted => {
                    self.remirror_needed = true;
                    ctx.done()
                }
                JobEvent::QueueAlertRaised { .. } => ctx.done(),
                JobEvent::ReplicationProgressed { counters } => {
                    self.replication = counters.clone();
                    self.replication_progress_at = Some(envelope.recorded_at);
                    ctx.done()
                }
                JobEvent::ConnectionLost { .. } | JobEvent::Recovered { .. } => {
                    // Paused keeps its connection: get it back in the background. A mirror
                    // that was running is interrupted and reruns as a differential.
                    if let JobEvent::Recovered { remirror } = &envelope.event {
                        self.remirror_needed |= *remirror;
                    }
                    if self.resume_to == Some(StateName::Mirroring) {
                        self.resume_to = Some(StateName::Connected);
                    }
                    self.lose_connection(ctx);
                    self.connect(ctx);
                    ctx.done()
                }
                JobEvent::Reconnected { connection } => {
                    self.reconnect_attempts = 0;
                    self.connected = true;
                    // A failover undone on the target while we were away: its data moved on.
                    self.remirror_needed |= connection.target_diverged;
                    ctx.done()
                }
                JobEvent::ReconnectFailed { attempt, .. } => {
                    self.reconnect_attempts = *attempt;
                    ctx.done()
                }
                JobEvent::FailoverConditionMet { .. } => {
                    self.stop_data_path(ctx);
                    ctx.go(State::failover_condition_met())
                }
                JobEvent::FailoverRequested { test, target_queue } => {
                    self.stop_data_path(ctx);
                    self.begin_handover(
                        ctx,
                        Handover {
                            kind: HandoverKind::Failover { test: *test },
                            target_queue: *target_queue,
                        },
                    );
                    ctx.go(State::cutover_pending())
                }
                _ => Super,
            },
        }
    }

    #[state(
        superstate = "initialized",
        entry_action = "enter_disconnected",
        exit_action = "exit_disconnected"
    )]
    fn disconnected(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(command) => match command {
                Command::Stop => ctx.accept(vec![JobEvent::Stopped]),
                Command::Start if self.spec().recovery.auto_reconnect => ctx.decide(Self::refuse(
                    StateName::Disconnected,
                    command,
                    "the job is already reconnecting on its own (auto-reconnect is on)",
                )),
                Command::Start => ctx.accept(vec![JobEvent::ReconnectRequested]),
                Command::Failover { .. } => {
                    ctx.decide(self.handover(StateName::Disconnected, command))
                }
                Command::Complete(Completion { report, .. }) => match report {
                    Report::Connected { connection } => {
                        let mut events =
                            vec![JobEvent::Reconnected { connection: connection.clone() }];
                        if let Some(mirror) = self.mirror_after_reconnect(connection) {
                            events.push(JobEvent::MirrorStarted { mirror });
                        }
                        ctx.accept(events)
                    }
                    Report::ConnectFailed { failure } => ctx.accept(self.reconnect_failed(failure)),
                    Report::QueueExhausted if !self.remirror_needed => {
                        ctx.accept(vec![JobEvent::QueueExhausted])
                    }
                    Report::QueueAlert { percent } => {
                        ctx.accept(vec![JobEvent::QueueAlertRaised { percent: *percent }])
                    }
                    Report::ReplicationProgress { .. } => {
                        let events = self.handle_progress(ctx.now, report);
                        ctx.accept(events)
                    }
                    Report::SourceFailed { reason } => ctx.accept(self.source_failed(reason)),
                    _ => Super,
                },
                _ => Super,
            },
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::Reconnected { connection } => {
                    self.reconnect_attempts = 0;
                    self.connected = true;
                    // A failover undone on the target while we were away: its data moved on.
                    self.remirror_needed |= connection.target_diverged;
                    if self.remirror_needed || !self.target_consistent {
                        ctx.go(State::connected())
                    } else {
                        // The queue survived: replication drains what queued while cut off.
                        ctx.go(State::synchronized())
                    }
                }
                JobEvent::ReconnectFailed { attempt, .. } => {
                    self.reconnect_attempts = *attempt;
                    ctx.done()
                }
                JobEvent::ReconnectRequested => {
                    self.connect(ctx);
                    ctx.done()
                }
                JobEvent::Recovered { remirror } => {
                    self.remirror_needed |= *remirror;
                    if self.spec().recovery.auto_reconnect {
                        self.connect(ctx);
                    }
                    ctx.done()
                }
                JobEvent::QueueExhausted => {
                    self.remirror_needed = true;
                    ctx.done()
                }
                JobEvent::QueueAlertRaised { .. } => ctx.done(),
                JobEvent::ReplicationProgressed { counters } => {
                    self.replication = counters.clone();
                    self.replication_progress_at = Some(envelope.recorded_at);
                    ctx.done()
                }
                JobEvent::Stopped => {
                    self.stop_data_path(ctx);
                    ctx.go(State::stopped())
                }
                JobEvent::FailoverConditionMet { .. } => {
                    self.stop_data_path(ctx);
                    ctx.go(State::failover_condition_met())
                }
                JobEvent::FailoverRequested { test, target_queue } => {
                    self.stop_data_path(ctx);
                    self.begin_handover(
                        ctx,
                        Handover {
                            kind: HandoverKind::Failover { test: *test },
                            target_queue: *target_queue,
                        },
                    );
                    ctx.go(State::cutover_pending())
                }
                _ => Super,
            },
        }
    }

    #[state(
        superstate = "initialized",
        entry_action = "enter_failover_condition_met",
        exit_action = "exit_failover_condition_met"
    )]
    fn failover_condition_met(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(command @ Command::Failover { .. }) => {
                ctx.decide(self.handover(StateName::FailoverConditionMet, command))
            }
            Input::Decide(Command::Stop) => ctx.accept(vec![JobEvent::Stopped]),
            Input::Decide(Command::Start) => {
                // The user dismisses the condition: protect again (the source is back).
                ctx.accept(vec![JobEvent::StartRequested {
                    mirror: self.restart_mirror(MirrorReason::Restart),
                }])
            }
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::FailoverRequested { test, target_queue } => {
                    self.begin_handover(
                        ctx,
                        Handover {
                            kind: HandoverKind::Failover { test: *test },
                            target_queue: *target_queue,
                        },
                    );
                    ctx.go(State::cutover_pending())
                }
                JobEvent::Stopped => ctx.go(State::stopped()),
                JobEvent::StartRequested { mirror } => {
                    self.begin_start(ctx, mirror.clone());
                    ctx.go(State::starting())
                }
                _ => Super,
            },
            _ => Super,
        }
    }

    // ----- Cutover and failover ------------------------------------------------------------

    #[state(
        superstate = "initialized",
        entry_action = "enter_cutover_pending",
        exit_action = "exit_cutover_pending"
    )]
    fn cutover_pending(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(command) => match command {
                Command::Delete | Command::Stop | Command::Pause | Command::SetBandwidth { .. } => {
                    ctx.decide(Self::refuse(
                        StateName::CutoverPending,
                        command,
                        "a cutover or failover is in progress: wait for it to finish",
                    ))
                }
                Command::Complete(Completion { report, .. }) => match report {
                    Report::ScriptFinished { stage: ScriptStage::PreCutover, result } => ctx
                        .accept(vec![JobEvent::ScriptCompleted {
                            stage: ScriptStage::PreCutover,
                            result: result.clone(),
                        }]),
                    Report::TargetQueueSettled { policy, operations } => {
                        ctx.accept(vec![JobEvent::TargetQueueSettled {
                            policy: *policy,
                            operations: *operations,
                        }])
                    }
                    _ => Super,
                },
                _ => Super,
            },
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::ScriptCompleted { stage: ScriptStage::PreCutover, .. } => {
                    self.activities.remove(&Activity::Script);
                    let policy = self.handover.map_or(QueuePolicy::Apply, |h| h.target_queue);
                    self.start(ctx, Activity::TargetQueue, Effect::SettleTargetQueue { policy });
                    ctx.done()
                }
                JobEvent::TargetQueueSettled { .. } => {
                    self.activities.remove(&Activity::TargetQueue);
                    self.end(ctx, Activity::Capture, Some(Effect::StopChangeCapture));
                    self.activities.remove(&Activity::Connection);
                    self.start(ctx, Activity::Release, Effect::ReleaseTarget);
                    match self.handover.map(|h| h.kind) {
                        Some(HandoverKind::Failover { .. }) => ctx.go(State::failing_over()),
                        _ => ctx.go(State::cutting_over()),
                    }
                }
                JobEvent::Recovered { .. } => {
                    // The engine restarted mid-handover: do the pending step again.
                    self.redo_step(ctx);
                    ctx.done()
                }
                _ => Super,
            },
        }
    }

    #[state(
        superstate = "initialized",
        entry_action = "enter_cutting_over",
        exit_action = "exit_cutting_over"
    )]
    fn cutting_over(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(command) => match command {
                Command::Complete(Completion { report, .. }) => match report {
                    Report::TargetReleased => {
                        let mut events = vec![JobEvent::TargetReleased];
                        if self.spec().cutover.post_script.is_none() {
                            events.push(JobEvent::CutoverCompleted);
                        }
                        ctx.accept(events)
                    }
                    Report::ScriptFinished { stage: ScriptStage::PostCutover, result } => ctx
                        .accept(vec![
                            JobEvent::ScriptCompleted {
                                stage: ScriptStage::PostCutover,
                                result: result.clone(),
                            },
                            JobEvent::CutoverCompleted,
                        ]),
                    _ => Super,
                },
                Command::Pause | Command::Stop | Command::Delete | Command::SetBandwidth { .. } => {
                    ctx.decide(Self::refuse(
                        StateName::CuttingOver,
                        command,
                        "the cutover is finishing: wait for CutOver",
                    ))
                }
                _ => Super,
            },
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::TargetReleased => {
                    self.activities.remove(&Activity::Release);
                    if let Some(script) = self.spec().cutover.post_script.clone() {
                        self.start(
                            ctx,
                            Activity::Script,
                            Effect::RunScript { stage: ScriptStage::PostCutover, script },
                        );
                    }
                    ctx.done()
                }
                JobEvent::ScriptCompleted { stage: ScriptStage::PostCutover, .. } => {
                    self.activities.remove(&Activity::Script);
                    ctx.done()
                }
                JobEvent::CutoverCompleted => ctx.go(State::cut_over()),
                JobEvent::Recovered { .. } => {
                    self.redo_step(ctx);
                    ctx.done()
                }
                _ => Super,
            },
        }
    }

    #[state(
        superstate = "initialized",
        entry_action = "enter_failing_over",
        exit_action = "exit_failing_over"
    )]
    fn failing_over(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        let test =
            matches!(self.handover.map(|h| h.kind), Some(HandoverKind::Failover { test: true }));
        match input {
            Input::Decide(command) => match command {
                Command::Complete(Completion { report, .. }) => match report {
                    Report::TargetReleased => ctx.accept(vec![JobEvent::TargetReleased]),
                    Report::ReplicaActivated => {
                        let mut events = vec![JobEvent::ReplicaActivated];
                        if self.spec().cutover.post_script.is_none() {
                            events.push(JobEvent::FailoverCompleted { test });
                        }
                        ctx.accept(events)
                    }
                    Report::ScriptFinished { stage: ScriptStage::PostCutover, result } => ctx
                        .accept(vec![
                            JobEvent::ScriptCompleted {
                                stage: ScriptStage::PostCutover,
                                result: result.clone(),
                            },
                            JobEvent::FailoverCompleted { test },
                        ]),
                    _ => Super,
                },
                Command::Pause | Command::Stop | Command::Delete | Command::SetBandwidth { .. } => {
                    ctx.decide(Self::refuse(
                        StateName::FailingOver,
                        command,
                        "the failover is finishing: wait for FailedOver",
                    ))
                }
                _ => Super,
            },
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::TargetReleased => {
                    self.activities.remove(&Activity::Release);
                    self.start(ctx, Activity::Replica, Effect::ActivateReplica { test });
                    ctx.done()
                }
                JobEvent::ReplicaActivated => {
                    self.activities.remove(&Activity::Replica);
                    if let Some(script) = self.spec().cutover.post_script.clone() {
                        self.start(
                            ctx,
                            Activity::Script,
                            Effect::RunScript { stage: ScriptStage::PostCutover, script },
                        );
                    }
                    ctx.done()
                }
                JobEvent::ScriptCompleted { stage: ScriptStage::PostCutover, .. } => {
                    self.activities.remove(&Activity::Script);
                    ctx.done()
                }
                JobEvent::FailoverCompleted { test } => {
                    self.target_consistent = false;
                    if *test {
                        ctx.go(State::test_failed_over())
                    } else {
                        ctx.go(State::failed_over())
                    }
                }
                JobEvent::Recovered { .. } => {
                    self.redo_step(ctx);
                    ctx.done()
                }
                _ => Super,
            },
        }
    }

    #[state(
        superstate = "initialized",
        entry_action = "enter_cut_over",
        exit_action = "exit_cut_over"
    )]
    fn cut_over(ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            // Nothing is sent any more: a bandwidth limit has nothing to limit.
            Input::Decide(command @ Command::SetBandwidth { .. }) => {
                ctx.decide(Err(Rejection::NotAllowed {
                    command: command.kind(),
                    state: StateName::CutOver,
                    allowed: Vec::new(),
                }))
            }
            _ => Super,
        }
    }

    #[state(
        superstate = "initialized",
        entry_action = "enter_failed_over",
        exit_action = "exit_failed_over"
    )]
    fn failed_over(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(Command::UndoFailover) => ctx.accept(vec![JobEvent::FailoverUndone]),
            Input::Decide(Command::Reverse) => ctx.accept(vec![JobEvent::ReverseStarted]),
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::FailoverUndone => {
                    self.undo_failover(ctx);
                    ctx.go(State::starting())
                }
                JobEvent::ReverseStarted => {
                    self.handover = None;
                    self.reversed = !self.reversed;
                    ctx.effect(Effect::ReverseDirection);
                    self.reconnect_attempts = 0;
                    self.connect(ctx);
                    ctx.go(State::reversing())
                }
                _ => Super,
            },
            _ => Super,
        }
    }

    #[state(
        superstate = "initialized",
        entry_action = "enter_test_failed_over",
        exit_action = "exit_test_failed_over"
    )]
    fn test_failed_over(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(Command::UndoFailover) => ctx.accept(vec![JobEvent::FailoverUndone]),
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::FailoverUndone => {
                    self.undo_failover(ctx);
                    ctx.go(State::starting())
                }
                _ => Super,
            },
            _ => Super,
        }
    }

    #[state(
        superstate = "initialized",
        entry_action = "enter_reversing",
        exit_action = "exit_reversing"
    )]
    fn reversing(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(command) => match command {
                Command::Stop => ctx.accept(vec![JobEvent::Stopped]),
                Command::Complete(Completion { report, .. }) => match report {
                    Report::Connected { connection }
                        if !self.activities.contains_key(&Activity::Mirror) =>
                    {
                        let mirror = MirrorPlan {
                            kind: MirrorKind::Differential,
                            comparison: self.spec().mirror.comparison,
                            calculate_size: self.spec().mirror.calculate_size,
                            reason: MirrorReason::Reverse,
                        };
                        ctx.accept(vec![
                            JobEvent::Reconnected { connection: connection.clone() },
                            JobEvent::MirrorStarted { mirror },
                        ])
                    }
                    Report::ConnectFailed { failure } => ctx.accept(self.reconnect_failed(failure)),
                    Report::MirrorProgress { .. } => {
                        let events = self.handle_progress(ctx.now, report);
                        ctx.accept(events)
                    }
                    Report::MirrorSized { total_bytes, total_files } => {
                        ctx.accept(vec![JobEvent::MirrorSizeCalculated {
                            total_bytes: *total_bytes,
                            total_files: *total_files,
                        }])
                    }
                    Report::MirrorFilesSkipped { files } => {
                        ctx.accept(vec![JobEvent::MirrorFilesSkipped { files: files.clone() }])
                    }
                    Report::MirrorFinished { counters } => ctx.accept(vec![
                        JobEvent::MirrorCompleted { counters: counters.clone() },
                        JobEvent::ReverseCompleted,
                    ]),
                    Report::ConnectionLost { reason } => {
                        ctx.accept(vec![JobEvent::ConnectionLost { reason: reason.clone() }])
                    }
                    _ => Super,
                },
                _ => Super,
            },
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::Reconnected { .. } => {
                    self.reconnect_attempts = 0;
                    self.connected = true;
                    ctx.done()
                }
                JobEvent::ReconnectFailed { attempt, .. } => {
                    self.reconnect_attempts = *attempt;
                    ctx.done()
                }
                JobEvent::MirrorStarted { mirror } => {
                    self.begin_mirror(ctx, mirror.clone());
                    ctx.done()
                }
                JobEvent::MirrorSizeCalculated { .. } | JobEvent::MirrorFilesSkipped { .. } => {
                    ctx.done()
                }
                JobEvent::MirrorProgressed { .. } => {
                    self.mirror_progress_at = Some(envelope.recorded_at);
                    ctx.done()
                }
                JobEvent::MirrorCompleted { .. } => {
                    self.activities.remove(&Activity::Mirror);
                    self.mirrored_once = true;
                    self.remirror_needed = false;
                    ctx.done()
                }
                JobEvent::ReverseCompleted => ctx.go(State::synchronized()),
                JobEvent::ConnectionLost { .. } | JobEvent::Recovered { .. } => {
                    // Start the reverse mirror over once the connection is back.
                    self.end(ctx, Activity::Mirror, Some(Effect::StopMirror));
                    self.activities.remove(&Activity::Connection);
                    self.connect(ctx);
                    ctx.done()
                }
                JobEvent::Stopped => {
                    self.stop_data_path(ctx);
                    ctx.go(State::stopped())
                }
                _ => Super,
            },
        }
    }

    #[state(superstate = "initialized", entry_action = "enter_error", exit_action = "exit_error")]
    fn error(&mut self, ctx: &mut Ctx<'_>, input: &Input<'_>) -> Outcome<State> {
        match input {
            Input::Decide(command) => match command {
                Command::Start => ctx.accept(vec![JobEvent::StartRequested {
                    mirror: self.restart_mirror(MirrorReason::Restart),
                }]),
                Command::Stop => ctx.accept(vec![JobEvent::Stopped]),
                Command::Failover { .. } => ctx.decide(self.handover(StateName::Error, command)),
                Command::Complete(Completion {
                    report: Report::SourceFailed { reason }, ..
                }) => ctx.accept(self.source_failed(reason)),
                _ => Super,
            },
            Input::Apply(envelope) => match &envelope.event {
                JobEvent::StartRequested { mirror } => {
                    self.faults.clear();
                    self.begin_start(ctx, mirror.clone());
                    ctx.go(State::starting())
                }
                JobEvent::Stopped => ctx.go(State::stopped()),
                JobEvent::FailoverConditionMet { .. } => ctx.go(State::failover_condition_met()),
                JobEvent::FailoverRequested { test, target_queue } => {
                    self.begin_handover(
                        ctx,
                        Handover {
                            kind: HandoverKind::Failover { test: *test },
                            target_queue: *target_queue,
                        },
                    );
                    ctx.go(State::cutover_pending())
                }
                _ => Super,
            },
        }
    }

    // ----- entry and exit actions: the seeds' "Entered …" / "Exited …" lines ------------------

    #[action]
    fn enter_uninitialized(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::Uninitialized);
    }
    #[action]
    fn exit_uninitialized(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::Uninitialized);
    }
    #[action]
    fn enter_deleted(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::Deleted);
    }
    #[action]
    fn enter_initialized(&mut self, ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::Initialized);
        if self.spec.as_ref().is_some_and(|s| s.failover_monitor.enabled) {
            self.start(ctx, Activity::Monitor, Effect::StartFailoverMonitor);
        }
    }
    #[action]
    fn exit_initialized(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::Initialized);
    }
    #[action]
    fn enter_stopped(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::Stopped);
    }
    #[action]
    fn exit_stopped(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::Stopped);
    }
    #[action]
    fn enter_starting(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::Starting);
    }
    #[action]
    fn exit_starting(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::Starting);
    }
    #[action]
    fn enter_running(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::Running);
    }
    #[action]
    fn exit_running(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::Running);
    }
    #[action]
    fn enter_connected(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::Connected);
    }
    #[action]
    fn exit_connected(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::Connected);
    }
    #[action]
    fn enter_mirroring(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::Mirroring);
    }
    #[action]
    fn exit_mirroring(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::Mirroring);
    }
    #[action]
    fn enter_synchronized(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::Synchronized);
    }
    #[action]
    fn exit_synchronized(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::Synchronized);
    }
    #[action]
    fn enter_protecting(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::Protecting);
    }
    #[action]
    fn exit_protecting(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::Protecting);
    }
    #[action]
    fn enter_paused(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::Paused);
    }
    #[action]
    fn exit_paused(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::Paused);
    }
    #[action]
    fn enter_disconnected(&mut self, ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::Disconnected);
        if self.spec().recovery.auto_reconnect {
            self.connect(ctx);
        }
    }
    #[action]
    fn exit_disconnected(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::Disconnected);
    }
    #[action]
    fn enter_failover_condition_met(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::FailoverConditionMet);
    }
    #[action]
    fn exit_failover_condition_met(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::FailoverConditionMet);
    }
    #[action]
    fn enter_cutover_pending(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::CutoverPending);
    }
    #[action]
    fn exit_cutover_pending(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::CutoverPending);
    }
    #[action]
    fn enter_cutting_over(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::CuttingOver);
    }
    #[action]
    fn exit_cutting_over(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::CuttingOver);
    }
    #[action]
    fn enter_failing_over(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::FailingOver);
    }
    #[action]
    fn exit_failing_over(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::FailingOver);
    }
    #[action]
    fn enter_cut_over(&mut self, ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::CutOver);
        // The migration is done: nothing watches the old source any more.
        self.end(ctx, Activity::Monitor, Some(Effect::StopFailoverMonitor));
        self.handover = None;
    }
    #[action]
    fn exit_cut_over(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::CutOver);
    }
    #[action]
    fn enter_failed_over(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::FailedOver);
    }
    #[action]
    fn exit_failed_over(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::FailedOver);
    }
    #[action]
    fn enter_test_failed_over(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::TestFailedOver);
    }
    #[action]
    fn exit_test_failed_over(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::TestFailedOver);
    }
    #[action]
    fn enter_reversing(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::Reversing);
    }
    #[action]
    fn exit_reversing(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::Reversing);
    }
    #[action]
    fn enter_error(ctx: &mut Ctx<'_>) {
        ctx.entered(StateName::Error);
    }
    #[action]
    fn exit_error(ctx: &mut Ctx<'_>) {
        ctx.exited(StateName::Error);
    }
}

impl JobData {
    /// statig calls this after the exits and entries of a transition ran, with source and
    /// target the right way round (0.4.1's `before_transition` swaps them in the blocking
    /// machine). The seeds' log puts "Changing to …" first, so it goes before the collected
    /// "Exited"/"Entered" lines.
    fn after_transition(&mut self, source: &State, target: &State, ctx: &mut Ctx<'_>) {
        let mut lines = vec![format!(
            "Changing to {} from {} in response to {}",
            state_name(target).log_name(),
            state_name(source).log_name(),
            ctx.event.map(JobEvent::log_name).unwrap_or_default()
        )];
        lines.append(&mut ctx.lines);
        if let Some(applied) = ctx.applied.as_deref_mut() {
            for line in lines {
                applied.transition(line);
            }
        }
    }

    fn begin_start(&mut self, ctx: &mut Ctx<'_>, mirror: MirrorPlan) {
        self.next_mirror = Some(mirror);
        self.start_requested_at = Some(ctx.now);
        self.reconnect_attempts = 0;
        self.handover = None;
        self.connect(ctx);
    }

    fn begin_mirror(&mut self, ctx: &mut Ctx<'_>, mirror: MirrorPlan) {
        self.next_mirror = None;
        self.mirror = Some(mirror.clone());
        self.mirror_paused = false;
        self.mirror_progress_at = None;
        self.target_consistent = false;
        // Change capture starts before the mirror, which watches each folder before it lists
        // it (one walk), so no change slips between them.
        if !self.activities.contains_key(&Activity::Capture) {
            self.start(ctx, Activity::Capture, Effect::StartChangeCapture);
        }
        if let Some(script) = self.spec().mirror_scripts.start.clone() {
            ctx.effect(Effect::RunScript { stage: ScriptStage::MirrorStart, script });
        }
        self.start(ctx, Activity::Mirror, Effect::StartMirror { plan: mirror });
        if self.spec().orphans != OrphanPolicy::Off {
            // Orphans are processed as part of the mirror (its "Removing Orphans" phase).
        }
    }

    fn lose_connection(&mut self, ctx: &mut Ctx<'_>) {
        if self.activities.contains_key(&Activity::Mirror) {
            // The interrupted mirror reruns as a differential once reconnected.
            self.end(ctx, Activity::Mirror, Some(Effect::StopMirror));
            self.remirror_needed = true;
        }
        self.end(ctx, Activity::Verification, None);
        self.end(ctx, Activity::Orphans, None);
        self.activities.remove(&Activity::Connection);
        self.mirror_paused = false;
        self.connected = false;
    }

    /// The mirror to run after a reconnect, if data may be missing on the target.
    fn mirror_after_reconnect(&self, connection: &ConnectionInfo) -> Option<MirrorPlan> {
        let recovery = &self.spec().recovery;
        if (self.remirror_needed || connection.target_diverged) && recovery.auto_remirror {
            Some(self.restart_mirror(MirrorReason::AutoRemirror))
        } else if !self.mirrored_once {
            Some(self.restart_mirror(MirrorReason::Initial))
        } else {
            None
        }
    }

    fn reconnect_failed(&self, failure: &Failure) -> Vec<JobEvent> {
        let mut events = vec![JobEvent::ReconnectFailed {
            attempt: self.reconnect_attempts + 1,
            failure: failure.clone(),
        }];
        if failure.retry == Retry::Permanent {
            events.push(JobEvent::Failed { failure: failure.clone() });
        }
        events
    }

    fn source_failed(&self, reason: &str) -> Vec<JobEvent> {
        let mut events = vec![JobEvent::FailoverConditionMet { reason: reason.to_string() }];
        if !self.spec().failover_monitor.wait_for_user {
            events.push(JobEvent::FailoverRequested {
                test: false,
                target_queue: self.spec().cutover.target_queue,
            });
        }
        events
    }

    fn manual_mirror(&self, command: &Command) -> Result<Vec<JobEvent>, Rejection> {
        let Command::StartMirror { comparison, calculate_size } = command else {
            unreachable!("manual_mirror is only called for StartMirror")
        };
        let spec = self.spec();
        let mirror = MirrorPlan {
            kind: if self.mirrored_once { MirrorKind::Differential } else { MirrorKind::Full },
            comparison: comparison.unwrap_or(spec.mirror.comparison),
            calculate_size: calculate_size.unwrap_or(spec.mirror.calculate_size),
            reason: MirrorReason::Manual,
        };
        Ok(vec![JobEvent::MirrorStarted { mirror }])
    }

    fn undo_failover(&mut self, ctx: &mut Ctx<'_>) {
        let mirror = MirrorPlan {
            kind: MirrorKind::Differential,
            comparison: self.spec().mirror.comparison,
            calculate_size: self.spec().mirror.calculate_size,
            reason: MirrorReason::UndoFailover,
        };
        self.handover = None;
        ctx.effect(Effect::DeactivateReplica);
        self.begin_start(ctx, mirror);
    }

    /// Re-issues the pending step of a cutover or failover after an engine restart.
    fn redo_step(&mut self, ctx: &mut Ctx<'_>) {
        let pending: Vec<(Activity, Effect)> =
            [Activity::Script, Activity::TargetQueue, Activity::Release, Activity::Replica]
                .into_iter()
                .filter_map(|a| self.activities.get(&a).map(|e| (a, e.effect.clone())))
                .collect();
        for (activity, effect) in pending {
            self.start(ctx, activity, effect);
        }
    }
}

/// Kinds of commands used to probe what a state allows.
pub(crate) fn probe(kind: CommandKind) -> Command {
    use understudy_core::spec::BandwidthLimit;
    match kind {
        CommandKind::Create => Command::Create {
            spec: Box::new(JobSpec {
                name: "probe".into(),
                source: "/probe/source".into(),
                target: understudy_core::spec::TargetSpec {
                    endpoint: understudy_core::spec::TargetEndpoint::Local,
                    path: "/probe/target".into(),
                },
                ..JobSpec::default()
            }),
        },
        CommandKind::Start => Command::Start,
        CommandKind::Pause => Command::Pause,
        CommandKind::Stop => Command::Stop,
        CommandKind::Delete => Command::Delete,
        CommandKind::StartMirror => Command::StartMirror { comparison: None, calculate_size: None },
        CommandKind::PauseMirror => Command::PauseMirror,
        CommandKind::ResumeMirror => Command::ResumeMirror,
        CommandKind::StopMirror => Command::StopMirror,
        CommandKind::Verify => Command::Verify { remirror: false },
        CommandKind::DeleteOrphans => Command::DeleteOrphans,
        CommandKind::Cutover => Command::Cutover { target_queue: None },
        CommandKind::Failover => Command::Failover { test: false, target_queue: None },
        CommandKind::UndoFailover => Command::UndoFailover,
        CommandKind::Reverse => Command::Reverse,
        CommandKind::SetBandwidth => Command::SetBandwidth { limit: BandwidthLimit::Unlimited },
        CommandKind::Recover => Command::Recover,
        CommandKind::Complete => unreachable!("completions are not probed"),
    }
}
