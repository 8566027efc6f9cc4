//! Goal: `SledEventStore` behaves exactly like core's `MemEventStore` (the reference model),
//! across restarts, and keeps an intact hash chain.
//!
//! Method: proptest generates random operation sequences (append batches over three jobs with
//! right and wrong expectations, several requests per job in one batch, empty requests, head,
//! scans from random seqs, read_all with random after/limit, jobs, last_position, checkpoint
//! save/load, and Restart = drop and reopen the sled store from the same directory), runs them
//! against both stores and compares every answer. Envelopes are compared field by field except
//! `prev_hash` (the model leaves it at genesis); at the end each job's sled chain is checked
//! independently from the raw stored bytes.

mod common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use understudy_core::{
    AppendRequest, ChainHash, Checkpoint, CheckpointStore, EventEnvelope, EventMetadata,
    EventStore, JobEvent, JobId, MemEventStore, NewEvent, Position, Seq,
};
use understudy_store::{SledEventStore, chain_hash};

const JOBS: usize = 3;

#[derive(Clone, Debug)]
struct Req {
    job: usize,
    /// `None`: the right expectation; `Some(d)`: off by `d` (below when it can be, else above).
    wrong_by: Option<u64>,
    events: usize,
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<Req>),
    Head(usize),
    Scan { job: usize, from: u64 },
    ReadAll { after: u64, limit: usize },
    Jobs,
    LastPosition,
    SaveCheckpoint { job: usize, seq: u64, state: u32 },
    LoadCheckpoint { job: usize, at_most: u64 },
    Restart,
}

fn req() -> impl Strategy<Value = Req> {
    (0..JOBS, prop::option::weighted(0.15, 1u64..3), 0usize..4)
        .prop_map(|(job, wrong_by, events)| Req { job, wrong_by, events })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(req(), 1..4).prop_map(Op::Append),
        1 => (0..JOBS).prop_map(Op::Head),
        2 => (0..JOBS, 0u64..12).prop_map(|(job, from)| Op::Scan { job, from }),
        2 => (0u64..30, 0usize..8).prop_map(|(after, limit)| Op::ReadAll { after, limit }),
        1 => Just(Op::Jobs),
        1 => Just(Op::LastPosition),
        1 => (0..JOBS, 0u64..10, any::<u32>()).prop_map(|(job, seq, state)| Op::SaveCheckpoint { job, seq, state }),
        1 => (0..JOBS, 0u64..12).prop_map(|(job, at_most)| Op::LoadCheckpoint { job, at_most }),
        1 => Just(Op::Restart),
    ]
}

fn job_id(index: usize) -> JobId {
    // Ids out of creation order on purpose, so `jobs()` must sort.
    common::job([5, 2, 9][index])
}

fn event(label: String, n: u32) -> NewEvent {
    let event = match n % 3 {
        0 => JobEvent::ConnectionLost { reason: label },
        1 => JobEvent::MirrorSizeCalculated {
            total_bytes: u64::from(n) * 1000,
            total_files: u64::from(n),
        },
        _ => JobEvent::Stopped,
    };
    let metadata = if n.is_multiple_of(2) {
        EventMetadata::engine()
    } else {
        EventMetadata::operator(format!("op{n}"))
    };
    NewEvent { event, recorded_at: common::at(i64::from(n)), metadata }
}

/// The envelope with the model's `prev_hash`, for comparing everything else.
fn without_hash(mut envelope: EventEnvelope) -> EventEnvelope {
    envelope.prev_hash = ChainHash::GENESIS;
    envelope
}

fn same_envelopes(sled: Vec<EventEnvelope>, mem: &[EventEnvelope]) -> Result<(), TestCaseError> {
    let sled: Vec<_> = sled.into_iter().map(without_hash).collect();
    prop_assert_eq!(&sled[..], mem);
    Ok(())
}

/// Checks each job's chain straight from the stored bytes, independently of `scan_job`.
fn chain_is_intact(store: &SledEventStore, job: JobId) -> Result<(), TestCaseError> {
    let head = store.head(job).expect("head");
    let mut link = ChainHash::GENESIS;
    for seq in 1..=head.0 {
        let bytes = store
            .raw_event(job, Seq(seq))
            .expect("raw")
            .expect("every event up to the head is stored");
        let envelope = understudy_store::decode_envelope(&bytes).expect("decodes");
        prop_assert_eq!(envelope.prev_hash, link, "job {} seq {}", job, seq);
        link = chain_hash(&bytes);
    }
    prop_assert!(
        store.raw_event(job, head.next()).expect("raw").is_none(),
        "nothing past the head"
    );
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = common::temp_dir();
    let mut sled = Some(SledEventStore::open(dir.path()).expect("open"));
    let mem = MemEventStore::new();
    let mut labels = 0u32;
    for op in ops {
        let store = sled.as_ref().expect("reopened after every restart");
        match op {
            Op::Append(reqs) => {
                let mut planned: BTreeMap<usize, u64> = BTreeMap::new();
                let mut batch = Vec::new();
                for req in reqs {
                    let right = match planned.get(&req.job) {
                        Some(seq) => *seq,
                        None => mem.head(job_id(req.job)).expect("head").0,
                    };
                    let expected = match req.wrong_by {
                        None => right,
                        Some(by) if right >= by => right - by,
                        Some(by) => right + by,
                    };
                    planned.insert(req.job, right + req.events as u64);
                    let events = (0..req.events)
                        .map(|_| {
                            labels += 1;
                            event(format!("event {labels}"), labels)
                        })
                        .collect();
                    batch.push(AppendRequest {
                        job: job_id(req.job),
                        expected: Seq(expected),
                        events,
                    });
                }
                let from_mem = mem.append(&batch).expect("mem append");
                let from_sled = store.append(&batch).expect("sled append");
                match (from_sled, from_mem) {
                    (Ok(sled), Ok(mem)) => same_envelopes(sled, &mem)?,
                    (Err(sled), Err(mem)) => prop_assert_eq!(sled, mem),
                    (sled, mem) => prop_assert!(false, "sled {:?} but mem {:?}", sled, mem),
                }
            }
            Op::Head(job) => prop_assert_eq!(
                store.head(job_id(job)).expect("head"),
                mem.head(job_id(job)).expect("head")
            ),
            Op::Scan { job, from } => {
                let (sled_seen, sled_result) = common::scan(store, job_id(job), from);
                let (mem_seen, mem_result) = common::scan(&mem, job_id(job), from);
                prop_assert!(sled_result.is_ok(), "sled scan failed: {:?}", sled_result);
                prop_assert!(mem_result.is_ok());
                same_envelopes(sled_seen, &mem_seen)?;
            }
            Op::ReadAll { after, limit } => {
                let sled_read = store.read_all(Position(after), limit).expect("sled read_all");
                let mem_read = mem.read_all(Position(after), limit).expect("mem read_all");
                same_envelopes(sled_read, &mem_read)?;
            }
            Op::Jobs => prop_assert_eq!(store.jobs().expect("jobs"), mem.jobs().expect("jobs")),
            Op::LastPosition => {
                prop_assert_eq!(
                    store.last_position().expect("position"),
                    mem.last_position().expect("position")
                );
            }
            Op::SaveCheckpoint { job, seq, state } => {
                let checkpoint = Checkpoint { seq: Seq(seq), state };
                store.save_checkpoint(job_id(job), &checkpoint).expect("sled save");
                mem.save_checkpoint(job_id(job), &checkpoint).expect("mem save");
            }
            Op::LoadCheckpoint { job, at_most } => {
                let from_sled: Option<Checkpoint<u32>> =
                    store.load_checkpoint(job_id(job), Seq(at_most)).expect("load");
                let from_mem: Option<Checkpoint<u32>> =
                    mem.load_checkpoint(job_id(job), Seq(at_most)).expect("load");
                prop_assert_eq!(from_sled, from_mem);
            }
            Op::Restart => {
                drop(sled.take());
                sled = Some(SledEventStore::open(dir.path()).expect("reopen"));
            }
        }
    }
    let store = sled.as_ref().expect("open");
    for job in 0..JOBS {
        chain_is_intact(store, job_id(job))?;
    }
    Ok(())
}

proptest! {
    // Each case opens a sled database and fsyncs every append: keep the count modest.
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn sled_store_behaves_like_the_memory_store(ops in prop::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
