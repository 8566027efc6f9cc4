//! Shared helpers for the states tests: build jobs from event histories, reach every state.
#![allow(dead_code)] // each test file uses its own subset

use chrono::{DateTime, TimeZone, Utc};
use understudy_core::effect::{Completion, Report};
use understudy_core::event::{
    ChainHash, ConnectionInfo, EventEnvelope, EventMetadata, JobEvent, MirrorKind, MirrorPlan,
    MirrorReason,
};
use understudy_core::ids::{ConnectionId, JobId, Position, Seq};
use understudy_core::spec::{JobSpec, MirrorComparison, QueuePolicy, TargetEndpoint, TargetSpec};
use understudy_core::status::{MirrorCounters, StateName};
use understudy_core::{Applied, Command, JobMachine};
use understudy_states::{Activity, Job};

pub fn job_id() -> JobId {
    JobId::from_parts(1_700_000_000_000, [42; 10])
}

pub fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0).single().expect("a valid time")
}

pub fn spec() -> JobSpec {
    JobSpec {
        name: "alpha to beta".into(),
        source: "/srv/alpha".into(),
        target: TargetSpec { endpoint: TargetEndpoint::Local, path: "/srv/beta".into() },
        ..JobSpec::default()
    }
}

pub fn connection(id: u64) -> ConnectionInfo {
    ConnectionInfo {
        id: ConnectionId(id),
        peer: "127.0.0.1:6320".into(),
        encrypted: false,
        target_diverged: false,
    }
}

pub fn full_mirror() -> MirrorPlan {
    MirrorPlan {
        kind: MirrorKind::Full,
        comparison: MirrorComparison::AttributesSendDifferences,
        calculate_size: true,
        reason: MirrorReason::Initial,
    }
}

/// A job and the envelopes it was built from.
pub struct Given {
    pub job: Job,
    pub history: Vec<EventEnvelope>,
    pub transitions: Vec<String>,
}

impl Given {
    pub fn new() -> Self {
        Given { job: Job::new(job_id()), history: Vec::new(), transitions: Vec::new() }
    }

    pub fn with_spec(spec: JobSpec) -> Self {
        let mut given = Given::new();
        given.apply(JobEvent::Created { spec: Box::new(spec) });
        given.apply(JobEvent::Initialized);
        given
    }

    /// Applies an event, panicking if the state refuses it.
    pub fn apply(&mut self, event: JobEvent) -> Applied {
        let seq = Seq(self.history.len() as u64 + 1);
        let envelope = EventEnvelope {
            job_id: job_id(),
            seq,
            position: Position(seq.0),
            recorded_at: at(seq.0 as i64),
            schema_version: 1,
            metadata: EventMetadata::engine(),
            event,
            prev_hash: ChainHash::GENESIS,
        };
        let mut out = Applied::new(job_id(), seq);
        self.job
            .apply(&envelope, &mut out)
            .unwrap_or_else(|e| panic!("{} refused: {e}", envelope.event.name()));
        self.transitions.extend(out.transitions.iter().cloned());
        self.history.push(envelope);
        out
    }

    pub fn then(mut self, event: JobEvent) -> Self {
        self.apply(event);
        self
    }

    /// Decides a command at the time of the last event.
    pub fn when(&self, command: Command) -> Result<Vec<JobEvent>, understudy_core::Rejection> {
        let now = self.history.last().map_or(at(0), |e| e.recorded_at);
        self.job.decide(now, &command)
    }

    /// Decides and applies; panics if refused.
    pub fn command(&mut self, command: Command) -> Vec<JobEvent> {
        let events =
            self.when(command.clone()).unwrap_or_else(|e| panic!("{command:?} refused: {e}"));
        for event in &events {
            self.apply(event.clone());
        }
        events
    }

    /// A completion for the job's current work of `activity`.
    pub fn report(&self, activity: Activity, report: Report) -> Command {
        let effect = self
            .job
            .data()
            .activities
            .get(&activity)
            .map(|e| e.id)
            .unwrap_or_else(|| panic!("no {activity:?} in flight in {}", self.job.state()));
        Command::Complete(Completion { effect, report })
    }
}

/// A job brought to `state` by the shortest ordinary path.
pub fn in_state(state: StateName) -> Given {
    use StateName as S;
    let stopped = || Given::with_spec(spec());
    let protecting = || {
        stopped()
            .then(JobEvent::StartRequested { mirror: full_mirror() })
            .then(JobEvent::StartSucceeded { connection: connection(1) })
            .then(JobEvent::MirrorStarted { mirror: full_mirror() })
            .then(JobEvent::MirrorCompleted { counters: MirrorCounters::default() })
            .then(JobEvent::ReplicationCaughtUp)
    };
    let failed_over = |test: bool| {
        protecting()
            .then(JobEvent::FailoverRequested { test, target_queue: QueuePolicy::Apply })
            .then(JobEvent::TargetQueueSettled { policy: QueuePolicy::Apply, operations: 0 })
            .then(JobEvent::TargetReleased)
            .then(JobEvent::ReplicaActivated)
            .then(JobEvent::FailoverCompleted { test })
    };
    let given = match state {
        S::Uninitialized => Given::new(),
        S::Stopped => stopped(),
        S::Starting => stopped().then(JobEvent::StartRequested { mirror: full_mirror() }),
        S::Connected => stopped()
            .then(JobEvent::StartRequested { mirror: full_mirror() })
            .then(JobEvent::StartSucceeded { connection: connection(1) }),
        S::Mirroring => stopped()
            .then(JobEvent::StartRequested { mirror: full_mirror() })
            .then(JobEvent::StartSucceeded { connection: connection(1) })
            .then(JobEvent::MirrorStarted { mirror: full_mirror() }),
        S::Synchronized => stopped()
            .then(JobEvent::StartRequested { mirror: full_mirror() })
            .then(JobEvent::StartSucceeded { connection: connection(1) })
            .then(JobEvent::MirrorStarted { mirror: full_mirror() })
            .then(JobEvent::MirrorCompleted { counters: MirrorCounters::default() }),
        S::Protecting => protecting(),
        S::Paused => protecting().then(JobEvent::Paused),
        S::Disconnected => {
            protecting().then(JobEvent::ConnectionLost { reason: "cable pulled".into() })
        }
        S::FailoverConditionMet => {
            protecting().then(JobEvent::FailoverConditionMet { reason: "no answer".into() })
        }
        S::CutoverPending => {
            protecting().then(JobEvent::CutoverRequested { target_queue: QueuePolicy::Apply })
        }
        S::CuttingOver => protecting()
            .then(JobEvent::CutoverRequested { target_queue: QueuePolicy::Apply })
            .then(JobEvent::TargetQueueSettled { policy: QueuePolicy::Apply, operations: 3 }),
        S::CutOver => protecting()
            .then(JobEvent::CutoverRequested { target_queue: QueuePolicy::Apply })
            .then(JobEvent::TargetQueueSettled { policy: QueuePolicy::Apply, operations: 3 })
            .then(JobEvent::TargetReleased)
            .then(JobEvent::CutoverCompleted),
        S::FailingOver => protecting()
            .then(JobEvent::FailoverRequested { test: false, target_queue: QueuePolicy::Apply })
            .then(JobEvent::TargetQueueSettled { policy: QueuePolicy::Apply, operations: 0 }),
        S::FailedOver => failed_over(false),
        S::TestFailedOver => failed_over(true),
        S::Reversing => failed_over(false).then(JobEvent::ReverseStarted),
        S::Error => stopped().then(JobEvent::StartRequested { mirror: full_mirror() }).then(
            JobEvent::Failed { failure: understudy_core::Failure::permanent("protocol mismatch") },
        ),
        S::Deleted => stopped().then(JobEvent::Deleted),
        S::Top | S::Initialized | S::Running => panic!("{state} is a superstate"),
    };
    assert_eq!(given.job.state(), state, "the path to {state} ends elsewhere");
    given
}
