//! Effects (work the machine asks adapters to do) and completions (what adapters report back).
//!
//! Effects are imperative and carry an [`EffectId`]: the event that caused them. Adapters never
//! append events; they report [`Completion`]s, which come back into the engine as commands and
//! are turned into events by the machine (or ignored when they answer an effect that is no
//! longer current).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::{ConnectionInfo, MirrorPlan};
use crate::ids::EffectId;
use crate::spec::{BandwidthLimit, MirrorComparison, QueuePolicy, Script};
use crate::status::{MirrorCounters, ReplicationCounters, VerificationSummary};

/// Work for an adapter, with the id of the event that caused it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EffectEnvelope {
    /// The effect's id (its causing event and index).
    pub id: EffectId,
    /// The work.
    pub effect: Effect,
}

/// Work for an adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Effect {
    /// Connect to the target engine (handshake, authentication).
    Connect {
        /// Attempt number, from 1 (0 for the first connection of a start).
        attempt: u32,
    },
    /// Close the connection; queued data is dropped (Stop).
    Disconnect,
    /// Watch the source for changes and queue them. Installed before a mirror's walk.
    StartChangeCapture,
    /// Stop watching the source and drop the queue.
    StopChangeCapture,
    /// Run a mirror.
    StartMirror {
        /// What kind of mirror.
        plan: MirrorPlan,
    },
    /// Pause the running mirror, keeping its pointer.
    PauseMirror,
    /// Resume the paused mirror from its pointer.
    ResumeMirror,
    /// Stop the running mirror, discarding its pointer.
    StopMirror,
    /// Hold transmission (changes keep queuing on the source).
    PauseTransmission,
    /// Transmit again.
    ResumeTransmission,
    /// Compare source and target and write the verification log.
    Verify {
        /// The comparison.
        comparison: MirrorComparison,
        /// Remirror the files that differ.
        remirror: bool,
    },
    /// Find orphans on the target; delete them or only report them.
    ProcessOrphans {
        /// Delete, or report only.
        delete: bool,
    },
    /// Apply a new bandwidth limit.
    SetBandwidth {
        /// The limit.
        limit: BandwidthLimit,
    },
    /// Run a script on the target.
    RunScript {
        /// Which one.
        stage: ScriptStage,
        /// The script.
        script: Script,
    },
    /// Apply or discard what the target still has queued (cutover, failover).
    SettleTargetQueue {
        /// Apply or discard.
        policy: QueuePolicy,
    },
    /// Stop replication and release the target for its new role (unblock it).
    ReleaseTarget,
    /// Bring the replica up on the target (replica VM power-on for hypervisor jobs; for files
    /// jobs the released replica folder is the live copy).
    ActivateReplica {
        /// A test failover keeps the replica off the network.
        test: bool,
    },
    /// Discard the replica's changes and hand the target back to protection (undo failover).
    DeactivateReplica,
    /// Swap source and target for reverse protection.
    ReverseDirection,
    /// Start the failover monitor (on the target, watching the source).
    StartFailoverMonitor,
    /// Stop the failover monitor.
    StopFailoverMonitor,
    /// Fire a timer.
    StartTimer {
        /// Which timer.
        timer: Timer,
        /// After how long.
        after_ms: u64,
    },
    /// Forget everything about the job (queues, indexes): it was deleted.
    ReleaseJob,
}

impl Effect {
    /// The variant name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Effect::Connect { .. } => "Connect",
            Effect::Disconnect => "Disconnect",
            Effect::StartChangeCapture => "StartChangeCapture",
            Effect::StopChangeCapture => "StopChangeCapture",
            Effect::StartMirror { .. } => "StartMirror",
            Effect::PauseMirror => "PauseMirror",
            Effect::ResumeMirror => "ResumeMirror",
            Effect::StopMirror => "StopMirror",
            Effect::PauseTransmission => "PauseTransmission",
            Effect::ResumeTransmission => "ResumeTransmission",
            Effect::Verify { .. } => "Verify",
            Effect::ProcessOrphans { .. } => "ProcessOrphans",
            Effect::SetBandwidth { .. } => "SetBandwidth",
            Effect::RunScript { .. } => "RunScript",
            Effect::SettleTargetQueue { .. } => "SettleTargetQueue",
            Effect::ReleaseTarget => "ReleaseTarget",
            Effect::ActivateReplica { .. } => "ActivateReplica",
            Effect::DeactivateReplica => "DeactivateReplica",
            Effect::ReverseDirection => "ReverseDirection",
            Effect::StartFailoverMonitor => "StartFailoverMonitor",
            Effect::StopFailoverMonitor => "StopFailoverMonitor",
            Effect::StartTimer { .. } => "StartTimer",
            Effect::ReleaseJob => "ReleaseJob",
        }
    }
}

/// The job's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Timer {
    /// Try connecting again after a failure while starting.
    StartRetry {
        /// The attempt it leads to.
        attempt: u32,
    },
    /// Try reconnecting after a lost connection.
    Reconnect {
        /// The attempt it leads to.
        attempt: u32,
    },
    /// The next scheduled verification.
    Verification,
}

/// Which script.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ScriptStage {
    /// Beginning of cutover or failover.
    PreCutover,
    /// End of cutover or failover.
    PostCutover,
    /// First mirror operation on the target.
    MirrorStart,
    /// Mirror completely processed on the target.
    MirrorComplete,
    /// Mirror stopped.
    MirrorStop,
}

/// How a script ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptResult {
    /// Exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Whether it was stopped at its timeout.
    pub timed_out: bool,
    /// The end of its output (stdout and stderr), at most a few KiB.
    pub output: String,
    /// Whether it could not be started at all (with the reason in `output`).
    #[serde(default)]
    pub failed_to_start: bool,
}

impl ScriptResult {
    /// Whether the script ran and exited 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && !self.failed_to_start
    }
}

impl fmt::Display for ScriptResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failed_to_start {
            write!(f, "could not start: {}", self.output.trim())
        } else if self.timed_out {
            write!(f, "stopped at its timeout")
        } else {
            match self.exit_code {
                Some(code) => write!(f, "exit code {code}"),
                None => write!(f, "killed by a signal"),
            }
        }
    }
}

/// A file the mirror skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// Path relative to the source root.
    pub path: String,
    /// Why ("vanished", "permission denied", ...).
    pub reason: String,
}

/// What kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FaultKind {
    /// The target's disk is full.
    TargetDiskFull,
    /// The target refused or could not apply an operation.
    TargetApply,
    /// The source could not be read.
    SourceUnreadable,
    /// The source queue could not be written or read.
    Queue,
    /// Change capture failed (watch limit, overflow).
    ChangeCapture,
    /// A script failed.
    Script,
    /// Authentication with the peer failed.
    Authentication,
    /// Anything else.
    Other,
}

/// Whether retrying can help (rustic's classification).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Retry {
    /// Soon: a blip (connection refused, timeout).
    Temporary,
    /// Only after the world changes (disk full, permission): keep trying slowly, tell the user.
    Persistent,
    /// Never (bad configuration, protocol mismatch).
    Permanent,
}

/// An adapter's failure, classified for retry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Whether retrying can help.
    pub retry: Retry,
    /// What happened and, where it can, what to do.
    pub message: String,
}

impl Failure {
    /// A failure that retrying soon may fix.
    pub fn temporary(message: impl Into<String>) -> Self {
        Failure { retry: Retry::Temporary, message: message.into() }
    }
    /// A failure that needs the world to change.
    pub fn persistent(message: impl Into<String>) -> Self {
        Failure { retry: Retry::Persistent, message: message.into() }
    }
    /// A failure no retry fixes.
    pub fn permanent(message: impl Into<String>) -> Self {
        Failure { retry: Retry::Permanent, message: message.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.message, self.retry)
    }
}

/// An adapter's report about one effect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The effect it answers.
    pub effect: EffectId,
    /// What happened.
    pub report: Report,
}

/// What an adapter reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Report {
    /// `Connect` succeeded.
    Connected {
        /// The connection.
        connection: ConnectionInfo,
    },
    /// `Connect` failed.
    ConnectFailed {
        /// Why.
        failure: Failure,
    },
    /// The mirror's size is known.
    MirrorSized {
        /// Bytes.
        total_bytes: u64,
        /// Files.
        total_files: u64,
    },
    /// Mirror progress (reported often; recorded at most every few seconds).
    MirrorProgress {
        /// Counters so far.
        counters: MirrorCounters,
    },
    /// Files skipped by the mirror.
    MirrorFilesSkipped {
        /// Which and why.
        files: Vec<SkippedFile>,
    },
    /// The mirror is complete and processed on the target.
    MirrorFinished {
        /// Final counters.
        counters: MirrorCounters,
    },
    /// Replication progress (reported often; recorded at most every few seconds).
    ReplicationProgress {
        /// Counters.
        counters: ReplicationCounters,
    },
    /// Everything queued has been applied on the target.
    ReplicationCaughtUp,
    /// The disk queue passed its alert level.
    QueueAlert {
        /// Percent of the limit.
        percent: u8,
    },
    /// The source queue is exhausted.
    QueueExhausted,
    /// The connection broke.
    ConnectionLost {
        /// Why.
        reason: String,
    },
    /// A verification finished.
    VerificationFinished {
        /// Counters and log.
        summary: VerificationSummary,
    },
    /// Orphan processing finished.
    OrphansProcessed {
        /// Found.
        found: u64,
        /// Deleted.
        deleted: u64,
        /// Bytes.
        bytes: u64,
        /// Orphan log.
        log_path: Option<String>,
    },
    /// A script ended.
    ScriptFinished {
        /// Which.
        stage: ScriptStage,
        /// How.
        result: ScriptResult,
    },
    /// The target queue was applied or discarded.
    TargetQueueSettled {
        /// Which.
        policy: QueuePolicy,
        /// How many operations.
        operations: u64,
    },
    /// The target was released.
    TargetReleased,
    /// The replica was activated.
    ReplicaActivated,
    /// The replica was handed back to protection.
    ReplicaDeactivated,
    /// Source and target were swapped.
    DirectionReversed,
    /// A timer fired.
    TimerFired {
        /// Which.
        timer: Timer,
    },
    /// The failover monitor considers the source failed.
    SourceFailed {
        /// What it saw.
        reason: String,
    },
    /// A fault appeared.
    Fault {
        /// Which kind.
        kind: FaultKind,
        /// How bad and whether retrying helps.
        failure: Failure,
    },
    /// A fault went away.
    FaultCleared {
        /// Which kind.
        kind: FaultKind,
    },
}

impl Report {
    /// The variant name, for logs and rejections.
    pub fn name(&self) -> &'static str {
        match self {
            Report::Connected { .. } => "Connected",
            Report::ConnectFailed { .. } => "ConnectFailed",
            Report::MirrorSized { .. } => "MirrorSized",
            Report::MirrorProgress { .. } => "MirrorProgress",
            Report::MirrorFilesSkipped { .. } => "MirrorFilesSkipped",
            Report::MirrorFinished { .. } => "MirrorFinished",
            Report::ReplicationProgress { .. } => "ReplicationProgress",
            Report::ReplicationCaughtUp => "ReplicationCaughtUp",
            Report::QueueAlert { .. } => "QueueAlert",
            Report::QueueExhausted => "QueueExhausted",
            Report::ConnectionLost { .. } => "ConnectionLost",
            Report::VerificationFinished { .. } => "VerificationFinished",
            Report::OrphansProcessed { .. } => "OrphansProcessed",
            Report::ScriptFinished { .. } => "ScriptFinished",
            Report::TargetQueueSettled { .. } => "TargetQueueSettled",
            Report::TargetReleased => "TargetReleased",
            Report::ReplicaActivated => "ReplicaActivated",
            Report::ReplicaDeactivated => "ReplicaDeactivated",
            Report::DirectionReversed => "DirectionReversed",
            Report::TimerFired { .. } => "TimerFired",
            Report::SourceFailed { .. } => "SourceFailed",
            Report::Fault { .. } => "Fault",
            Report::FaultCleared { .. } => "FaultCleared",
        }
    }
}
