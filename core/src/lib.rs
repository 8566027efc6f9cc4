//! understudy's core: the vocabulary every other crate speaks, and the pure engine.
//!
//! A job is an event-sourced state machine. This crate defines what a job is asked to do
//! ([`JobSpec`]), what can be asked of it ([`Command`]), what happened to it ([`JobEvent`] in an
//! [`EventEnvelope`]), what it reports ([`JobStatus`]), what it asks the world to do
//! ([`Effect`]) and how the world answers ([`Completion`]); the [`EventStore`] contract; and the
//! [`Engine`] that runs command → decide → durable append → apply → effects.
//!
//! Layout:
//! - [`ids`]: job ids (UUID v7), sequences, positions, effect ids;
//! - [`spec`]: job specs, options, defaults and validation;
//! - [`command`], [`event`], [`effect`], [`status`]: the vocabulary;
//! - [`store`]: the event store contract; [`mem_store`]: the in-memory store;
//! - [`engine`]: the engine and the [`JobMachine`] trait the states crate implements;
//! - [`error`], the errors.
//!
//! Invariants:
//! - this crate performs no I/O, reads no clock and draws no randomness (time and ids are
//!   arguments; `clippy.toml` forbids the calls);
//! - no effect is returned by the engine before the event that caused it is durable;
//! - a rejected command stores nothing.
#![deny(missing_docs)]

pub mod command;
pub mod effect;
pub mod engine;
pub mod error;
pub mod event;
pub mod ids;
pub mod mem_store;
pub mod spec;
pub mod status;
pub mod store;

pub use command::{Command, CommandEnvelope, CommandKind, Rejection};
pub use effect::{Completion, Effect, EffectEnvelope, Failure, Report, Retry};
pub use engine::{Accepted, Applied, Engine, IllegalEvent, JobMachine};
pub use error::{Conflict, Corruption, EngineError, SpecError, StoreError};
pub use event::{Actor, ChainHash, EventEnvelope, EventMetadata, JobEvent, NewEvent};
pub use ids::{ConnectionId, EffectId, JobId, Position, Seq};
pub use mem_store::MemEventStore;
pub use spec::JobSpec;
pub use status::{JobStatus, StateName};
pub use store::{AppendRequest, Checkpoint, CheckpointStore, EventStore, Flow};
