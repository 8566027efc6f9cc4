//! understudy's job state machine.
//!
//! The machine is written with statig (blocking flavour, so it is `Send` and runs inside tokio
//! tasks) and is pure: it reads no clock and does no I/O. It has two jobs:
//! - *decide*: a command → the events it causes, or a [`Rejection`](understudy_core::Rejection)
//!   naming the state and the commands it allows;
//! - *apply*: a stored event → the next state, the effects adapters must carry out, and the
//!   transition lines of the job log in the seeds' wording
//!   (`Changing to MirroringState from ConnectedState in response to MirrorStartedEvent`).
//!
//! Replay is apply with the effects thrown away: the same code runs live and in an audit, so an
//! audit sees exactly the state the engine had.
//!
//! Layout:
//! - `machine`: the statig machine ([`JobData`] is its shared storage), every state of
//!   DESIGN.md §4 nested as shown there;
//! - `projection`: the status projections (`JobStatus`) derived from events;
//! - `job`: [`Job`], which implements the core's `JobMachine` for the engine.
//!
//! Invariants:
//! - deciding never changes the job (it runs on a clone that is dropped);
//! - an event the current state cannot take is an error, never silently skipped;
//! - every effect carries the id of the event that caused it, and completions for any other
//!   effect of the same activity are ignored as stale.
#![deny(missing_docs)]

mod job;
mod machine;
mod projection;

pub use job::{Job, JobSnapshot};
pub use machine::{Activity, Handover, HandoverKind, JobData, PROGRESS_INTERVAL_MS};
