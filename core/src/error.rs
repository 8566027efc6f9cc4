//! Errors of the core: invalid specs, store failures, engine failures.
//!
//! Expected outcomes (a command refused, a concurrent append) are values nested inside
//! `Result`s, not these errors, so `?` cannot swallow them.

use serde::{Deserialize, Serialize};

use crate::command::Rejection;
use crate::ids::{JobId, Seq};

/// A rule a job spec breaks.
///
/// Handling: show it to the user as is; it names the field and what to change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The offending field (dotted path).
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl SpecError {
    /// Builds one.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError { field: field.into(), message: message.into() }
    }
}

/// An append found the job's head somewhere other than expected: another writer got there
/// first. With one daemon owning a store this is a bug detector.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("append to job {job} conflicts: expected head {expected}, found {actual}")]
pub struct Conflict {
    /// The job.
    pub job: JobId,
    /// The head the writer expected.
    pub expected: Seq,
    /// The head in the store.
    pub actual: Seq,
}

/// A stored history that does not hold together.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("history of job {job} is corrupt at seq {seq}: {why}")]
pub struct Corruption {
    /// The job.
    pub job: JobId,
    /// The first sequence number that is wrong.
    pub seq: Seq,
    /// What is wrong.
    pub why: String,
}

/// The store failed. The caller cannot fix this by retrying the same call.
///
/// Handling: stop acting on the affected job(s); report; the daemon exits on `Io` because it
/// can no longer promise durability.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The underlying storage failed.
    #[error("event store I/O failed: {0}")]
    Io(String),
    /// A stored record could not be decoded or breaks the chain.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// The directory is not an event store, or one of another version.
    #[error("{0}")]
    NotAStore(String),
    /// Another process holds the store.
    #[error("{0}")]
    Locked(String),
}

/// The engine could not carry out a command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No job has this id.
    #[error("no job {0}: list jobs with `understudy job list`")]
    UnknownJob(JobId),
    /// A job with this id already exists (on `Create`).
    #[error("job {0} already exists")]
    JobExists(JobId),
    /// The command was refused; nothing was stored.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The job's history is corrupt or holds an event its state cannot take: the job is
    /// quarantined (it accepts no commands) until someone looks at it.
    #[error("job {job} is quarantined: {why}")]
    Quarantined {
        /// The job.
        job: JobId,
        /// Why.
        why: String,
    },
    /// The append found another writer's events.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
