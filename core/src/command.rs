//! Commands: requests to a job, from people, programs, adapters and timers. A command may be
//! refused ([`Rejection`]); an accepted command becomes zero or more events.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::effect::Completion;
use crate::event::EventMetadata;
use crate::ids::JobId;
use crate::spec::{BandwidthLimit, JobSpec, MirrorComparison, QueuePolicy};
use crate::status::StateName;

/// A request to a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create the job with this spec.
    Create {
        /// The spec; it must pass validation.
        spec: Box<JobSpec>,
    },
    /// Start a stopped job, resume a paused one, or retry one in Error.
    Start,
    /// Pause: keep the connection, queue changes on the source.
    Pause,
    /// Stop: no connection, nothing queued; a remirror follows the next start.
    Stop,
    /// Stop (if running) and delete the job.
    Delete,
    /// Start a mirror on a running job.
    StartMirror {
        /// The comparison, or the job's own.
        comparison: Option<MirrorComparison>,
        /// Calculate the size first, or the job's own setting.
        calculate_size: Option<bool>,
    },
    /// Pause the running mirror, keeping its pointer.
    PauseMirror,
    /// Resume a paused mirror.
    ResumeMirror,
    /// Stop the running mirror, discarding its pointer.
    StopMirror,
    /// Verify now ("any time a mirror is not in progress").
    Verify {
        /// Remirror what differs.
        remirror: bool,
    },
    /// Find and delete orphans on the target now.
    DeleteOrphans,
    /// Cut over (migration): the target becomes the live copy.
    Cutover {
        /// What to do with the target queue, or the job's own setting.
        target_queue: Option<QueuePolicy>,
    },
    /// Fail over (protection), from the target side.
    Failover {
        /// Leave the source running and keep the replica off the network.
        test: bool,
        /// What to do with the target queue, or the job's own setting.
        target_queue: Option<QueuePolicy>,
    },
    /// Undo a failover or a test failover: discard the replica's changes, protect again.
    UndoFailover,
    /// Reverse protection after a failover: mirror the target back to the source.
    Reverse,
    /// Change the bandwidth limit, any time.
    SetBandwidth {
        /// The new limit.
        limit: BandwidthLimit,
    },
    /// An adapter's report about an effect.
    Complete(Completion),
    /// Sent by the engine to every job after it restarted: pick up work that was in flight.
    Recover,
}

/// The kinds of command, for rejections and help texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[allow(missing_docs)] // one per `Command` variant
pub enum CommandKind {
    Create,
    Start,
    Pause,
    Stop,
    Delete,
    StartMirror,
    PauseMirror,
    ResumeMirror,
    StopMirror,
    Verify,
    DeleteOrphans,
    Cutover,
    Failover,
    UndoFailover,
    Reverse,
    SetBandwidth,
    Complete,
    Recover,
}

impl CommandKind {
    /// Every kind a person or program can send (everything but adapter completions and the
    /// engine's own recovery).
    pub const OPERATOR: [CommandKind; 16] = [
        CommandKind::Create,
        CommandKind::Start,
        CommandKind::Pause,
        CommandKind::Stop,
        CommandKind::Delete,
        CommandKind::StartMirror,
        CommandKind::PauseMirror,
        CommandKind::ResumeMirror,
        CommandKind::StopMirror,
        CommandKind::Verify,
        CommandKind::DeleteOrphans,
        CommandKind::Cutover,
        CommandKind::Failover,
        CommandKind::UndoFailover,
        CommandKind::Reverse,
        CommandKind::SetBandwidth,
    ];

    /// The command-line spelling ("start-mirror").
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Create => "create",
            CommandKind::Start => "start",
            CommandKind::Pause => "pause",
            CommandKind::Stop => "stop",
            CommandKind::Delete => "delete",
            CommandKind::StartMirror => "start-mirror",
            CommandKind::PauseMirror => "pause-mirror",
            CommandKind::ResumeMirror => "resume-mirror",
            CommandKind::StopMirror => "stop-mirror",
            CommandKind::Verify => "verify",
            CommandKind::DeleteOrphans => "delete-orphans",
            CommandKind::Cutover => "cutover",
            CommandKind::Failover => "failover",
            CommandKind::UndoFailover => "undo-failover",
            CommandKind::Reverse => "reverse",
            CommandKind::SetBandwidth => "set-bandwidth",
            CommandKind::Complete => "complete",
            CommandKind::Recover => "recover",
        }
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Command {
    /// This command's kind.
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::Create { .. } => CommandKind::Create,
            Command::Start => CommandKind::Start,
            Command::Pause => CommandKind::Pause,
            Command::Stop => CommandKind::Stop,
            Command::Delete => CommandKind::Delete,
            Command::StartMirror { .. } => CommandKind::StartMirror,
            Command::PauseMirror => CommandKind::PauseMirror,
            Command::ResumeMirror => CommandKind::ResumeMirror,
            Command::StopMirror => CommandKind::StopMirror,
            Command::Verify { .. } => CommandKind::Verify,
            Command::DeleteOrphans => CommandKind::DeleteOrphans,
            Command::Cutover { .. } => CommandKind::Cutover,
            Command::Failover { .. } => CommandKind::Failover,
            Command::UndoFailover => CommandKind::UndoFailover,
            Command::Reverse => CommandKind::Reverse,
            Command::SetBandwidth { .. } => CommandKind::SetBandwidth,
            Command::Complete(_) => CommandKind::Complete,
            Command::Recover => CommandKind::Recover,
        }
    }
}

/// A command addressed to a job, with who sent it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandEnvelope {
    /// The job (for `Create`, the id the new job gets).
    pub job: JobId,
    /// The command.
    pub command: Command,
    /// Who sent it; copied into every event it causes.
    pub metadata: EventMetadata,
}

/// Why a command was refused. Nothing was stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The command is not allowed in the job's current state.
    #[error("cannot {command} in {state}: it allows {}", list(allowed))]
    NotAllowed {
        /// The command.
        command: CommandKind,
        /// The job's state.
        state: StateName,
        /// What it does allow.
        allowed: Vec<CommandKind>,
    },
    /// The command is allowed in this state but not for this job or with these arguments.
    #[error("cannot {command} in {state}: {reason}")]
    Refused {
        /// The command.
        command: CommandKind,
        /// The job's state.
        state: StateName,
        /// Why.
        reason: String,
    },
    /// The spec is invalid.
    #[error("invalid job spec: {0}")]
    InvalidSpec(#[from] crate::error::SpecError),
}

fn list(kinds: &[CommandKind]) -> String {
    if kinds.is_empty() {
        return "no commands".into();
    }
    kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
}
