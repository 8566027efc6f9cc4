//! [`Job`]: the statig machine plus its status projection, as the engine drives it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use statig::blocking::{InitializedStateMachine, IntoStateMachineExt, UninitializedStateMachine};

use understudy_core::command::{Command, CommandKind, Rejection};
use understudy_core::effect::EffectEnvelope;
use understudy_core::event::{EventEnvelope, JobEvent};
use understudy_core::ids::JobId;
use understudy_core::spec::{JobSpec, TargetEndpoint};
use understudy_core::status::{JobStatus, StateName};
use understudy_core::{Applied, IllegalEvent, JobMachine};

use crate::machine::{Activity, Ctx, Input, JobData, probe, state_name};
use crate::projection;

/// A job: its state machine (decisions) and its status (reporting).
#[derive(Clone, Debug)]
pub struct Job {
    machine: InitializedStateMachine<JobData>,
    /// The status, except its activity while `last` is set.
    status: JobStatus,
    /// The last event applied and the state it left the job in: the activity, put into words
    /// only when the status is read. A replay folds a million events and reads the status once.
    last: Option<(StateName, JobEvent)>,
}

impl PartialEq for Job {
    fn eq(&self, other: &Self) -> bool {
        self.state() == other.state()
            && *self.machine == *other.machine
            && self.status() == other.status()
    }
}

impl Job {
    /// The job's data (what decisions depend on).
    pub fn data(&self) -> &JobData {
        &self.machine
    }

    fn decide_raw(
        &self,
        now: DateTime<Utc>,
        command: &Command,
    ) -> Result<Vec<JobEvent>, Rejection> {
        if let Command::Complete(completion) = command
            && !self.machine.is_current(completion)
        {
            // A late report of work the job has since stopped or replaced: nothing to record.
            return Ok(Vec::new());
        }
        if let Some(reason) = self.machine.spec.as_ref().and_then(|spec| refusal_for(spec, command))
        {
            return Err(Rejection::Refused {
                command: command.kind(),
                state: self.state(),
                reason,
            });
        }
        // Decide on a copy: whatever a handler does, the job itself stays as it is.
        let mut scratch = self.machine.clone();
        let mut ctx = Ctx::deciding(now);
        scratch.handle_with_context(&Input::Decide(command), &mut ctx);
        ctx.take_decision().unwrap_or_else(|| {
            Err(Rejection::NotAllowed {
                command: command.kind(),
                state: self.state(),
                allowed: Vec::new(),
            })
        })
    }
}

/// Commands this kind of job never takes, whatever its state.
fn refusal_for(spec: &JobSpec, command: &Command) -> Option<String> {
    use CommandKind as K;
    let kind = command.kind();
    if spec.is_replica() {
        let source_only = [
            K::Pause,
            K::StartMirror,
            K::PauseMirror,
            K::ResumeMirror,
            K::StopMirror,
            K::Verify,
            K::DeleteOrphans,
            K::Cutover,
            K::Reverse,
            K::SetBandwidth,
        ];
        return source_only.contains(&kind).then(|| {
            "this is the target engine's record of a job replicating here: run it on the source engine, or use failover / undo-failover here".to_string()
        });
    }
    let remote = matches!(spec.target.endpoint, TargetEndpoint::Remote { .. });
    (kind == K::Reverse && remote).then(|| {
        "reversing a job between two engines is not supported yet: create a job on the failed-over engine whose target is this one".to_string()
    })
}

impl JobMachine for Job {
    type Snapshot = JobSnapshot;

    fn new(job: JobId) -> Self {
        let machine = JobData::new(job)
            .uninitialized_state_machine()
            .init_with_context(&mut Ctx::discarding());
        Job { machine, status: JobStatus::default(), last: None }
    }

    fn state(&self) -> StateName {
        state_name(self.machine.state())
    }

    fn status(&self) -> JobStatus {
        let mut status = self.status.clone();
        if let Some((state, event)) = &self.last {
            status.activity = projection::activity(event, *state);
        }
        status
    }

    fn spec(&self) -> Option<&JobSpec> {
        self.machine.spec.as_ref()
    }

    fn decide(&self, now: DateTime<Utc>, command: &Command) -> Result<Vec<JobEvent>, Rejection> {
        match self.decide_raw(now, command) {
            Err(Rejection::NotAllowed { command, state, .. }) => {
                Err(Rejection::NotAllowed { command, state, allowed: self.allowed() })
            }
            other => other,
        }
    }

    fn apply(&mut self, envelope: &EventEnvelope, out: &mut Applied) -> Result<(), IllegalEvent> {
        if matches!(envelope.event, JobEvent::Created { .. }) {
            out.transition("Entered TopState".into());
            out.transition("Entered UninitializedState".into());
        }
        let mut ctx = Ctx::applying(envelope, out);
        self.machine.handle_with_context(&Input::Apply(envelope), &mut ctx);
        if !ctx.was_handled() {
            // No handler took the event, and handlers change nothing unless they take it:
            // the job is as it was.
            return Err(IllegalEvent { state: self.state(), event: envelope.event.name() });
        }
        let state = self.state();
        projection::observe(&mut self.status, &self.machine, state, envelope);
        self.last = Some((state, envelope.event.clone()));
        Ok(())
    }

    fn resume(&self) -> Vec<EffectEnvelope> {
        // The monitor, change capture and the verification timer only need re-issuing; work
        // that needs a new connection is picked up by the `Recover` command's events.
        [Activity::Monitor, Activity::Capture, Activity::Timer]
            .iter()
            .filter_map(|a| self.machine.activities.get(a).cloned())
            .collect()
    }

    /// The operator commands the job would accept now, probed through `decide` itself so the
    /// list can never disagree with the handlers.
    fn allowed(&self) -> Vec<CommandKind> {
        let now = DateTime::UNIX_EPOCH;
        CommandKind::OPERATOR
            .into_iter()
            .filter(|kind| self.decide_raw(now, &probe(*kind)).is_ok())
            .collect()
    }

    fn snapshot(&self) -> JobSnapshot {
        JobSnapshot { machine: SnapshotMachine::Live(self.machine.clone()), status: self.status() }
    }

    fn restore(snapshot: JobSnapshot) -> Self {
        let machine = match snapshot.machine {
            SnapshotMachine::Live(machine) => machine,
            // Entry actions run again on init; their output is thrown away.
            SnapshotMachine::Stored(machine) => machine.init_with_context(&mut Ctx::discarding()),
        };
        Job { machine, status: snapshot.status, last: None }
    }
}

/// A checkpoint of a [`Job`]. It serialises the statig machine; deserialised, it is an
/// uninitialised machine that [`Job::restore`] initialises.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSnapshot {
    machine: SnapshotMachine,
    status: JobStatus,
}

#[derive(Clone, Debug)]
enum SnapshotMachine {
    Live(InitializedStateMachine<JobData>),
    Stored(UninitializedStateMachine<JobData>),
}

impl Serialize for SnapshotMachine {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SnapshotMachine::Live(machine) => machine.serialize(serializer),
            SnapshotMachine::Stored(machine) => machine.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for SnapshotMachine {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        UninitializedStateMachine::deserialize(deserializer).map(SnapshotMachine::Stored)
    }
}
