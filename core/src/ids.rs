//! Identifiers: jobs, per-job sequences, global positions, effects, connections.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job's identity: a UUID v7, so ids sort by creation time and cluster in the store's key space.
///
/// Core never draws one: the daemon makes them from the clock and randomness, the simulator from
/// its seed (see [`JobId::from_parts`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    /// Wraps an existing UUID (normally a v7 made by the caller).
    pub fn from_uuid(uuid: Uuid) -> Self {
        JobId(uuid)
    }

    /// Builds a UUID v7 from a millisecond timestamp and ten bytes of entropy supplied by the
    /// caller: deterministic, so the simulator can make the same ids from the same seed.
    pub fn from_parts(unix_ms: u64, entropy: [u8; 10]) -> Self {
        JobId(uuid::Builder::from_unix_timestamp_millis(unix_ms, &entropy).into_uuid())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The 16 bytes that prefix this job's keys in the store.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuilds an id from the 16 bytes of a store key.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        JobId(Uuid::from_bytes(bytes))
    }

    /// The first 8 hex digits: enough to tell jobs apart in a log line.
    pub fn short(&self) -> String {
        self.0.simple().to_string()[..8].to_string()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0.hyphenated())
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(JobId)
    }
}

/// A job's event sequence number: contiguous from 1; `Seq(0)` means "no events yet".
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The head of a job that has no events.
    pub const ZERO: Seq = Seq(0);

    /// The sequence number after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A position in the store's global order of all events of all jobs, from 1.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Names one effect: the event that caused it and its index among that event's effects.
///
/// It is the idempotency key of adapter work: an effect re-issued after a restart carries the
/// same id, so an adapter that already did the work can say so instead of doing it twice.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct EffectId {
    /// The job whose event caused the effect.
    pub job: JobId,
    /// The causing event's sequence number.
    pub seq: Seq,
    /// Index among the effects of that event.
    pub index: u32,
}

impl fmt::Display for EffectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.job.short(), self.seq, self.index)
    }
}

/// The number of a connection between a source and a target engine, as the seeds count them:
/// incremented each time a job's connection is (re)established.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_from_parts_are_v7_and_deterministic() {
        let a = JobId::from_parts(1_700_000_000_000, [7; 10]);
        let b = JobId::from_parts(1_700_000_000_000, [7; 10]);
        assert_eq!(a, b);
        assert_eq!(a.as_uuid().get_version_num(), 7);
        let parsed: JobId = a.to_string().parse().unwrap();
        assert_eq!(parsed, a);
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let a = JobId::from_parts(1_000, [9; 10]);
        let b = JobId::from_parts(2_000, [0; 10]);
        assert!(a < b);
        assert!(a.as_bytes() < b.as_bytes());
    }
}
