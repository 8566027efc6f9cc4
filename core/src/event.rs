//! Events: the facts a job's history is made of, and the envelope each is stored in.
//!
//! Events are past tense and never renamed: their variant and field names are the wire names
//! of the event log (rmp-serde, named). New fields come only with `#[serde(default)]`; a change
//! of meaning gets a new variant and, for old histories, an upcaster in the store.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::effect::{Failure, FaultKind, ScriptResult, ScriptStage, SkippedFile};
use crate::ids::{ConnectionId, EffectId, JobId, Position, Seq};
use crate::spec::{BandwidthLimit, JobSpec, MirrorComparison, QueuePolicy};
use crate::status::{MirrorCounters, ReplicationCounters, VerificationSummary};

/// The schema version written in new envelopes. Readers upcast older versions.
pub const SCHEMA_VERSION: u16 = 1;

/// A fact in a job's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobEvent {
    /// The job was created with this spec (which passed validation).
    Created {
        /// The spec.
        spec: Box<JobSpec>,
    },
    /// The job is ready to run (the seeds' InitializeEvent).
    Initialized,
    /// The user (or an undo of failover) asked the job to start: connect to the target.
    StartRequested {
        /// The mirror to run once connected (a restart always remirrors, per job settings).
        mirror: MirrorPlan,
    },
    /// The connection to the target engine is up (the seeds' StartSucceededEvent).
    StartSucceeded {
        /// The connection.
        connection: ConnectionInfo,
    },
    /// Connecting failed.
    StartFailed {
        /// Why, and whether retrying can help.
        failure: Failure,
    },
    /// A mirror began.
    MirrorStarted {
        /// What kind of mirror, and why.
        mirror: MirrorPlan,
    },
    /// "Calculating" finished: the size of the protected data is known.
    MirrorSizeCalculated {
        /// Bytes to consider.
        total_bytes: u64,
        /// Files to consider.
        total_files: u64,
    },
    /// A progress checkpoint of the mirror (at most every few seconds).
    MirrorProgressed {
        /// Counters so far.
        counters: MirrorCounters,
    },
    /// Files that vanished or could not be read were skipped by the mirror.
    MirrorFilesSkipped {
        /// The files and why.
        files: Vec<SkippedFile>,
    },
    /// The mirror was paused; its pointer is kept.
    MirrorPaused,
    /// The paused mirror continues where it left off.
    MirrorResumed,
    /// The mirror was stopped; its pointer is discarded.
    MirrorStopped,
    /// The mirror finished and the target processed all of it.
    MirrorCompleted {
        /// Final counters.
        counters: MirrorCounters,
    },
    /// Replication drained what queued during the mirror: the target is consistent.
    ReplicationCaughtUp,
    /// A replication progress checkpoint (at most every few seconds).
    ReplicationProgressed {
        /// Counters.
        counters: ReplicationCounters,
    },
    /// The disk queue passed the alert level.
    QueueAlertRaised {
        /// Usage, in percent of its limit.
        percent: u8,
    },
    /// The source queue is exhausted: the job auto-disconnects and will need a remirror.
    QueueExhausted,
    /// The job was paused: the connection is kept, changes queue on the source.
    Paused,
    /// A paused job continues.
    Resumed {
        /// Whether the queue was exhausted while paused, so a remirror follows.
        remirror: bool,
    },
    /// The job was stopped: no connection, nothing queued.
    Stopped,
    /// The connection to the target was lost.
    ConnectionLost {
        /// Why.
        reason: String,
    },
    /// A reconnect attempt failed; another follows.
    ReconnectFailed {
        /// Attempt number, from 1.
        attempt: u32,
        /// Why.
        failure: Failure,
    },
    /// The connection is back.
    Reconnected {
        /// The new connection.
        connection: ConnectionInfo,
    },
    /// A verification began.
    VerificationStarted {
        /// The comparison it uses.
        comparison: MirrorComparison,
        /// Whether it remirrors what differs.
        remirror: bool,
    },
    /// A verification finished.
    VerificationCompleted {
        /// Its counters and log.
        summary: VerificationSummary,
    },
    /// Orphans on the target were reported or deleted.
    OrphansProcessed {
        /// Orphan files found.
        found: u64,
        /// Of which deleted.
        deleted: u64,
        /// Their bytes.
        bytes: u64,
        /// Where the orphan log is.
        log_path: Option<String>,
    },
    /// The bandwidth limit was changed.
    BandwidthChanged {
        /// The new limit.
        limit: BandwidthLimit,
    },
    /// Cutover (migration) was requested.
    CutoverRequested {
        /// What happens to data still queued on the target.
        target_queue: QueuePolicy,
    },
    /// Failover (protection) was requested.
    FailoverRequested {
        /// A test failover leaves the source running.
        test: bool,
        /// What happens to data still queued on the target.
        target_queue: QueuePolicy,
    },
    /// A pre- or post- script finished.
    ScriptCompleted {
        /// Which script.
        stage: ScriptStage,
        /// Its exit and output.
        result: ScriptResult,
    },
    /// The target queue was applied or discarded for cutover or failover.
    TargetQueueSettled {
        /// Applied or discarded.
        policy: QueuePolicy,
        /// Operations applied or discarded.
        operations: u64,
    },
    /// Replication stopped and the target was unblocked for its new role.
    TargetReleased,
    /// Cutover finished: the target is the new home of the data.
    CutoverCompleted,
    /// The failover monitor declared the source failed.
    FailoverConditionMet {
        /// What the monitor saw.
        reason: String,
    },
    /// Failover finished.
    FailoverCompleted {
        /// Whether it was a test failover.
        test: bool,
    },
    /// A failover was undone: the target's changes are discarded, protection restarts.
    FailoverUndone,
    /// Protection was reversed: the target mirrors back to the source.
    ReverseStarted,
    /// The reverse mirror finished; protection runs the other way.
    ReverseCompleted,
    /// The job cannot go on until someone fixes the cause: it stops in Error.
    Failed {
        /// Why.
        failure: Failure,
    },
    /// The engine restarted while the job had work in flight; it picks the work up again.
    Recovered {
        /// Whether changes may have been missed while the engine was down (a source-side
        /// restart misses them), so a differential remirror must follow.
        remirror: bool,
    },
    /// The user asked a disconnected job (auto-reconnect off) to reconnect.
    ReconnectRequested,
    /// A scheduled verification was skipped because a mirror or verification was running.
    VerificationSkipped,
    /// Orphan removal was requested on demand.
    OrphanRemovalStarted,
    /// The replica was brought up for failover.
    ReplicaActivated,
    /// Something went wrong that the job cannot ignore.
    FaultRaised {
        /// What and how bad.
        fault: Fault,
    },
    /// A fault went away.
    FaultCleared {
        /// Which fault.
        kind: FaultKind,
    },
    /// The job was deleted.
    Deleted,
}

impl JobEvent {
    /// The variant name ("MirrorStarted").
    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::Created { .. } => "Created",
            JobEvent::Initialized => "Initialized",
            JobEvent::StartRequested { .. } => "StartRequested",
            JobEvent::StartSucceeded { .. } => "StartSucceeded",
            JobEvent::StartFailed { .. } => "StartFailed",
            JobEvent::MirrorStarted { .. } => "MirrorStarted",
            JobEvent::MirrorSizeCalculated { .. } => "MirrorSizeCalculated",
            JobEvent::MirrorProgressed { .. } => "MirrorProgressed",
            JobEvent::MirrorFilesSkipped { .. } => "MirrorFilesSkipped",
            JobEvent::MirrorPaused => "MirrorPaused",
            JobEvent::MirrorResumed => "MirrorResumed",
            JobEvent::MirrorStopped => "MirrorStopped",
            JobEvent::MirrorCompleted { .. } => "MirrorCompleted",
            JobEvent::ReplicationCaughtUp => "ReplicationCaughtUp",
            JobEvent::ReplicationProgressed { .. } => "ReplicationProgressed",
            JobEvent::QueueAlertRaised { .. } => "QueueAlertRaised",
            JobEvent::QueueExhausted => "QueueExhausted",
            JobEvent::Paused => "Paused",
            JobEvent::Resumed { .. } => "Resumed",
            JobEvent::Stopped => "Stopped",
            JobEvent::ConnectionLost { .. } => "ConnectionLost",
            JobEvent::ReconnectFailed { .. } => "ReconnectFailed",
            JobEvent::Reconnected { .. } => "Reconnected",
            JobEvent::VerificationStarted { .. } => "VerificationStarted",
            JobEvent::VerificationCompleted { .. } => "VerificationCompleted",
            JobEvent::OrphansProcessed { .. } => "OrphansProcessed",
            JobEvent::BandwidthChanged { .. } => "BandwidthChanged",
            JobEvent::CutoverRequested { .. } => "CutoverRequested",
            JobEvent::FailoverRequested { .. } => "FailoverRequested",
            JobEvent::ScriptCompleted { .. } => "ScriptCompleted",
            JobEvent::TargetQueueSettled { .. } => "TargetQueueSettled",
            JobEvent::TargetReleased => "TargetReleased",
            JobEvent::CutoverCompleted => "CutoverCompleted",
            JobEvent::FailoverConditionMet { .. } => "FailoverConditionMet",
            JobEvent::FailoverCompleted { .. } => "FailoverCompleted",
            JobEvent::FailoverUndone => "FailoverUndone",
            JobEvent::ReverseStarted => "ReverseStarted",
            JobEvent::ReverseCompleted => "ReverseCompleted",
            JobEvent::Failed { .. } => "Failed",
            JobEvent::Recovered { .. } => "Recovered",
            JobEvent::ReconnectRequested => "ReconnectRequested",
            JobEvent::VerificationSkipped => "VerificationSkipped",
            JobEvent::OrphanRemovalStarted => "OrphanRemovalStarted",
            JobEvent::ReplicaActivated => "ReplicaActivated",
            JobEvent::FaultRaised { .. } => "FaultRaised",
            JobEvent::FaultCleared { .. } => "FaultCleared",
            JobEvent::Deleted => "Deleted",
        }
    }

    /// The name in the seeds' job log wording ("MirrorStartedEvent").
    pub fn log_name(&self) -> String {
        format!("{}Event", self.name())
    }

    /// A one-line summary for timelines, without the name.
    pub fn summary(&self) -> String {
        match self {
            JobEvent::Created { spec } => {
                format!(
                    "{:?} job {:?}: {} -> {}",
                    spec.job_type, spec.name, spec.source, spec.target
                )
            }
            JobEvent::StartRequested { mirror } | JobEvent::MirrorStarted { mirror } => {
                format!(
                    "{} mirror ({}), {}",
                    mirror.kind,
                    mirror.comparison.cli_name(),
                    mirror.reason
                )
            }
            JobEvent::StartSucceeded { connection } | JobEvent::Reconnected { connection } => {
                format!(
                    "connection {} to {}{}",
                    connection.id,
                    connection.peer,
                    if connection.encrypted { ", encrypted" } else { "" }
                )
            }
            JobEvent::StartFailed { failure } => failure.to_string(),
            JobEvent::ReconnectFailed { attempt, failure } => {
                format!("attempt {attempt}: {failure}")
            }
            JobEvent::MirrorSizeCalculated { total_bytes, total_files } => {
                format!("{total_files} files, {total_bytes} bytes")
            }
            JobEvent::MirrorProgressed { counters } | JobEvent::MirrorCompleted { counters } => {
                format!(
                    "{} files, {} bytes sent, {} bytes skipped{}",
                    counters.files_mirrored,
                    counters.bytes_mirrored,
                    counters.bytes_skipped,
                    counters.percent().map(|p| format!(", {p}%")).unwrap_or_default()
                )
            }
            JobEvent::MirrorFilesSkipped { files } => {
                let names: Vec<_> = files.iter().take(3).map(|f| f.path.as_str()).collect();
                format!(
                    "{} files: {}{}",
                    files.len(),
                    names.join(", "),
                    if files.len() > 3 { ", ..." } else { "" }
                )
            }
            JobEvent::ReplicationProgressed { counters } => format!(
                "queue {} bytes ({} on disk), {} bytes sent, latency {}",
                counters.queue_bytes,
                counters.disk_queue_bytes,
                counters.bytes_sent,
                counters
                    .recovery_point_latency_ms
                    .map(|l| format!("{l} ms"))
                    .unwrap_or_else(|| "-".into())
            ),
            JobEvent::QueueAlertRaised { percent } => format!("disk queue at {percent}%"),
            JobEvent::Resumed { remirror } => {
                if *remirror {
                    "queue was exhausted: remirror".into()
                } else {
                    String::new()
                }
            }
            JobEvent::ConnectionLost { reason } => reason.clone(),
            JobEvent::VerificationStarted { comparison, remirror } => format!(
                "{}{}",
                comparison.cli_name(),
                if *remirror { ", remirror differences" } else { ", report only" }
            ),
            JobEvent::VerificationCompleted { summary } => format!(
                "{} files compared, {} different, {} missing, {} remirrored",
                summary.files_compared,
                summary.files_different,
                summary.files_missing,
                summary.files_remirrored
            ),
            JobEvent::OrphansProcessed { found, deleted, bytes, .. } => {
                format!("{found} orphans ({bytes} bytes), {deleted} deleted")
            }
            JobEvent::BandwidthChanged { limit } => limit.to_string(),
            JobEvent::CutoverRequested { target_queue } => {
                format!("target queue: {target_queue:?}")
            }
            JobEvent::FailoverRequested { test, target_queue } => {
                format!("{}target queue: {target_queue:?}", if *test { "test, " } else { "" })
            }
            JobEvent::ScriptCompleted { stage, result } => format!("{stage:?} script: {result}"),
            JobEvent::TargetQueueSettled { policy, operations } => {
                format!("{policy:?}: {operations} operations")
            }
            JobEvent::FailoverConditionMet { reason } => reason.clone(),
            JobEvent::FailoverCompleted { test } => {
                if *test {
                    "test".into()
                } else {
                    String::new()
                }
            }
            JobEvent::FaultRaised { fault } => fault.to_string(),
            JobEvent::Failed { failure } => failure.to_string(),
            JobEvent::Recovered { remirror } => {
                if *remirror {
                    "changes may have been missed: remirror".into()
                } else {
                    String::new()
                }
            }
            JobEvent::FaultCleared { kind } => format!("{kind:?}"),
            JobEvent::Initialized
            | JobEvent::MirrorPaused
            | JobEvent::MirrorResumed
            | JobEvent::MirrorStopped
            | JobEvent::ReplicationCaughtUp
            | JobEvent::QueueExhausted
            | JobEvent::Paused
            | JobEvent::Stopped
            | JobEvent::TargetReleased
            | JobEvent::CutoverCompleted
            | JobEvent::FailoverUndone
            | JobEvent::ReverseStarted
            | JobEvent::ReverseCompleted
            | JobEvent::ReconnectRequested
            | JobEvent::VerificationSkipped
            | JobEvent::OrphanRemovalStarted
            | JobEvent::ReplicaActivated
            | JobEvent::Deleted => String::new(),
        }
    }
}

/// A mirror: what kind, how it compares, and why it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorPlan {
    /// Full or differential.
    pub kind: MirrorKind,
    /// The comparison.
    pub comparison: MirrorComparison,
    /// Whether the size is calculated first ("Calculating").
    pub calculate_size: bool,
    /// Why this mirror runs.
    pub reason: MirrorReason,
}

/// Full or differential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MirrorKind {
    /// Everything is compared (or sent), the first mirror of a job.
    Full,
    /// Only what may have changed since the target was last consistent.
    Differential,
}

impl fmt::Display for MirrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MirrorKind::Full => "full",
            MirrorKind::Differential => "differential",
        })
    }
}

/// Why a mirror runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MirrorReason {
    /// The job's first mirror.
    Initial,
    /// The user started it.
    Manual,
    /// The job restarted after Stop, which does not queue.
    Restart,
    /// After an auto-reconnect that lost queued data.
    AutoRemirror,
    /// A verification found differences.
    Verification,
    /// Undo of a failover.
    UndoFailover,
    /// Reverse protection.
    Reverse,
}

impl fmt::Display for MirrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MirrorReason::Initial => "initial",
            MirrorReason::Manual => "requested by the user",
            MirrorReason::Restart => "restart",
            MirrorReason::AutoRemirror => "auto-remirror",
            MirrorReason::Verification => "verification found differences",
            MirrorReason::UndoFailover => "undo failover",
            MirrorReason::Reverse => "reverse protection",
        })
    }
}

/// An established connection to a target engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The connection's number.
    pub id: ConnectionId,
    /// The target's address as connected.
    pub peer: String,
    /// Whether the connection is encrypted.
    #[serde(default)]
    pub encrypted: bool,
    /// The target's data changed outside replication (a failover that was undone): only a
    /// remirror makes it match the source again.
    #[serde(default)]
    pub target_diverged: bool,
}

/// A fault the job records: what, how bad, in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What kind.
    pub kind: FaultKind,
    /// Whether it stops the job (Error) or only warns.
    pub severity: FaultSeverity,
    /// What happened and what to do.
    pub message: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({:?}): {}", self.kind, self.severity, self.message)
    }
}

/// How bad a fault is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultSeverity {
    /// Health Warning; the job carries on or retries by itself.
    Warning,
    /// Health Error; the job stops in Error until the user fixes the cause and starts it.
    Error,
}

/// Who or what caused an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// A person, by name.
    Operator {
        /// User name.
        name: String,
    },
    /// Another program, through the API.
    Api {
        /// The client's name as it gave it.
        client: String,
    },
    /// The engine, on its own (auto-cutover, auto-remirror).
    Engine,
    /// An adapter's report of the given effect.
    Adapter {
        /// The effect the report answers.
        effect: EffectId,
    },
    /// The deterministic simulator.
    Simulator,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Operator { name } => write!(f, "operator {name}"),
            Actor::Api { client } => write!(f, "api client {client}"),
            Actor::Engine => write!(f, "engine"),
            Actor::Adapter { effect } => write!(f, "adapter (effect {effect})"),
            Actor::Simulator => write!(f, "simulator"),
        }
    }
}

/// Who asked, and how the request ties to others: stored with every event it caused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Who or what.
    pub actor: Actor,
    /// Ties together the events of one user intent across jobs and components (echoed back).
    #[serde(default)]
    pub correlation_id: Option<Uuid>,
    /// A client's key that makes a retried command harmless (echoed back).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

impl EventMetadata {
    /// Metadata for something the engine did on its own.
    pub fn engine() -> Self {
        EventMetadata { actor: Actor::Engine, correlation_id: None, idempotency_key: None }
    }

    /// Metadata for an operator's command.
    pub fn operator(name: impl Into<String>) -> Self {
        EventMetadata {
            actor: Actor::Operator { name: name.into() },
            correlation_id: None,
            idempotency_key: None,
        }
    }
}

/// The hash of a stored envelope, chaining each job's history (BLAKE3, computed by the store).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The "previous hash" of a job's first event.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({})", &self.to_hex()[..16])
    }
}

impl Serialize for ChainHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChainHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ChainHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ChainHash, E> {
                let bytes: [u8; 32] =
                    v.try_into().map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(ChainHash(bytes))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ChainHash, A::Error> {
                let mut bytes = [0u8; 32];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(ChainHash(bytes))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

/// A stored event: the event with its place in history and who caused it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// The job.
    pub job_id: JobId,
    /// Its sequence number in the job, contiguous from 1.
    pub seq: Seq,
    /// Its position in the store's global order.
    pub position: Position,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The schema version it was written with.
    pub schema_version: u16,
    /// Who caused it.
    pub metadata: EventMetadata,
    /// The event.
    pub event: JobEvent,
    /// The hash of the job's previous envelope.
    pub prev_hash: ChainHash,
}

/// An event decided but not yet stored.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// The event.
    pub event: JobEvent,
    /// When it was decided.
    pub recorded_at: DateTime<Utc>,
    /// Who caused it.
    pub metadata: EventMetadata,
}
