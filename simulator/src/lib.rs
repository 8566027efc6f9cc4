//! understudy's simulator: the deterministic simulation tester, and the TDU.
//!
//! The simulation runs the real engine and the real job machine against simulated adapters
//! (latency, retryable and permanent failures, cut connections, partitions, full disks, store
//! failures, daemon crashes, operator commands at random times) from one seed, checking the
//! engine's invariants after every step; see [`sim`].
//!
//! - [`tdu`]: the Throughput Diagnostics Utility's model: statistics file, mirror and
//!   replication forecasts, report and chart, from what a diagnostics job measured.
//!
//! Invariants of the crate: every source of nondeterminism is the seed (one [`SimRng`] root,
//! forked per component), simulated time, or `BTreeMap` order; nothing reads the clock.
#![deny(missing_docs)]

pub mod rng;
pub mod sim;
pub mod tdu;
pub mod world;

pub use rng::SimRng;
pub use sim::{Opener, SimFailure, SimOptions, SimReport, SimStore, history_digest, run};
