//! Helpers shared by the store's integration tests: fixed job ids, events, batches and scans.
#![allow(dead_code)] // each test binary uses its own subset

use chrono::{DateTime, Utc};
use understudy_core::{
    AppendRequest, EventEnvelope, EventMetadata, EventStore, Flow, JobEvent, JobId, NewEvent, Seq,
    StoreError,
};
use understudy_store::SledEventStore;

/// A fixed job id; `n` orders them.
pub fn job(n: u8) -> JobId {
    JobId::from_parts(1_700_000_000_000 + u64::from(n), [n; 10])
}

/// A fixed instant `secs` after 2026-01-01T00:00:00Z.
pub fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600 + secs, 0).expect("a timestamp in range")
}

/// An event with a recognisable payload.
pub fn lost(reason: impl Into<String>) -> NewEvent {
    NewEvent {
        event: JobEvent::ConnectionLost { reason: reason.into() },
        recorded_at: at(0),
        metadata: EventMetadata::operator("tester"),
    }
}

/// A request for `job` expecting `expected`, with `count` events labelled `label-i`.
pub fn request(job: JobId, expected: u64, count: usize, label: &str) -> AppendRequest {
    AppendRequest {
        job,
        expected: Seq(expected),
        events: (0..count).map(|i| lost(format!("{label}-{i}"))).collect(),
    }
}

/// Appends `count` events to `job` on top of its current head and returns them.
pub fn append_n(store: &SledEventStore, job: JobId, count: usize) -> Vec<EventEnvelope> {
    let head = store.head(job).expect("head");
    store
        .append(&[request(job, head.0, count, &format!("{job}"))])
        .expect("append")
        .expect("no conflict")
}

/// Scans `job` from `from`: every envelope visited and how the scan ended.
pub fn scan(
    store: &dyn EventStore,
    job: JobId,
    from: u64,
) -> (Vec<EventEnvelope>, Result<(), StoreError>) {
    let mut seen = Vec::new();
    let result = store.scan_job(job, Seq(from), &mut |envelope| {
        seen.push(envelope);
        Flow::Continue
    });
    (seen, result)
}

/// A fresh temporary directory (removed when dropped).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("understudy-store-test")
        .tempdir()
        .expect("a temporary directory")
}
