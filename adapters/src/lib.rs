//! understudy's adapters: what touches the world.
//!
//! The engine (in `understudy-core` and `understudy-states`) is pure: it decides, records
//! events and asks for work as [`Effect`](understudy_core::Effect)s. This crate holds the
//! code that does the work: file I/O (walk, compare, read, apply), change capture, the source
//! queue, the network transport, hypervisors and the null target of the throughput simulator.
//! Adapters are driven by effects and report [`Completion`](understudy_core::Completion)s;
//! they never append events. Their failures are classified for retry
//! ([`Failure`](understudy_core::Failure): temporary, persistent, permanent).
//!
//! Modules (the data plane's leaves so far):
//! - [`fsops`]: relative paths as raw bytes, the wire's file [`Operation`](fsops::Operation)s,
//!   the target jail [`TargetRoot`](fsops::TargetRoot) that applies them strictly inside a
//!   job's root, and the source-side scan, sparse-region, block-hash and attribute helpers;
//! - [`wire`]: the framed protocol between a source and a target engine: length-prefixed
//!   MessagePack frames with a hard size limit, an incremental decoder, optional zstd, the
//!   versioned handshake and HMAC authentication;
//! - [`queue`]: the source queue, memory first then 5 MB disk segments, with items kept in
//!   flight until the target acknowledges them;
//! - [`source`]: the source engine's side of a job: connection, pipe, mirror, verification,
//!   change capture, bandwidth, all driven by effects;
//! - [`target`]: the target engine: accepts replication connections and applies each job's
//!   operations in order, acknowledging only what is durable;
//! - [`tls`]: TLS with mutual certificates between engines;
//! - [`script`]: runs a job's scripts with a timeout, keeping the end of their output;
//! - [`error`]: every error of the crate, each with its retry class.
//!
//! Invariants:
//! - nothing below a target root is reached through a symlink, and nothing outside it at all;
//! - a decoder never allocates from a length it has not checked against the frame limit;
//! - queued items come out in the order they went in, across memory, disk and restarts.
#![deny(missing_docs)]

mod bytes_serde;
pub mod error;
pub mod fsops;
pub mod queue;
pub mod script;
pub mod source;
pub mod target;
pub mod tls;
pub mod wire;

pub use error::{ApplyError, PathError, QueueError, SourceError, WireError};
