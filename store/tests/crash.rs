//! Goal: a process killed with SIGKILL in the middle of appending leaves a log that is a clean
//! prefix: every acknowledged append is there, no batch is partly there, seqs are contiguous and
//! the hash chain verifies end to end.
//!
//! Method: the test re-runs its own binary (`current_exe`, filtered to this test, with an env
//! var naming the data directory) as a child that appends batches in a loop (each batch spans
//! two jobs, with a varying number of events) and prints `ACK <batch>` after each `append`
//! returns. The parent reads a few hundred acks, kills the child with SIGKILL
//! (`Child::kill`), reopens the store and checks it. Several rounds run on the same directory,
//! so later rounds also recover on top of earlier crashes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use understudy_core::{AppendRequest, EventStore, JobEvent, JobId, Seq};
use understudy_store::SledEventStore;

const TEST_NAME: &str = "sigkill_during_appends_leaves_a_clean_prefix";
const CHILD_DIR: &str = "UNDERSTUDY_CRASH_CHILD_DIR";
const CHILD_ROUND: &str = "UNDERSTUDY_CRASH_CHILD_ROUND";
const ROUNDS: u64 = 4;

fn jobs() -> [JobId; 2] {
    [common::job(1), common::job(2)]
}

/// The label of event `k` (from 0) of `n` in batch `batch`.
fn label(batch: u64, k: usize, n: usize) -> String {
    format!("batch {batch} event {k} of {n}")
}

fn parse_label(text: &str) -> Option<(u64, usize, usize)> {
    let mut words = text.split(' ');
    let (Some("batch"), Some(batch), Some("event"), Some(k), Some("of"), Some(n)) =
        (words.next(), words.next(), words.next(), words.next(), words.next(), words.next())
    else {
        return None;
    };
    Some((batch.parse().ok()?, k.parse().ok()?, n.parse().ok()?))
}

/// The child: append until killed (or, should the parent be gone, for at most 30 s).
fn child(dir: &Path, round: u64) {
    let store = SledEventStore::open(dir).expect("the child opens the store");
    let [a, b] = jobs();
    let started = Instant::now();
    let mut stdout = std::io::stdout().lock();
    for i in 0u64.. {
        if started.elapsed() > Duration::from_secs(30) {
            return;
        }
        let batch = round * 1_000_000 + i;
        // 1 to 4 events for job a, 0 to 2 for job b: batches of varying size over two jobs.
        let (na, nb) = (1 + (i % 4) as usize, (i % 3) as usize);
        let n = na + nb;
        let requests = [
            AppendRequest {
                job: a,
                expected: store.head(a).expect("head"),
                events: (0..na).map(|k| common::lost(label(batch, k, n))).collect(),
            },
            AppendRequest {
                job: b,
                expected: store.head(b).expect("head"),
                events: (na..n).map(|k| common::lost(label(batch, k, n))).collect(),
            },
        ];
        store.append(&requests).expect("append").expect("the child is the only writer");
        // A closed pipe (the parent is gone) ends the child here.
        writeln!(stdout, "ACK {batch}")
            .and_then(|()| stdout.flush())
            .expect("the parent is reading");
    }
}

/// Checks the reopened store: chain, contiguity, every acked batch present, no partial batch.
fn check(dir: &Path, acked: &BTreeSet<u64>) -> usize {
    let store = SledEventStore::open(dir).expect("the store reopens after SIGKILL");
    let mut parts: BTreeMap<u64, (usize, BTreeSet<usize>)> = BTreeMap::new();
    for job in jobs() {
        let (seen, result) = common::scan(&store, job, 1);
        result.unwrap_or_else(|e| panic!("job {job} does not verify after a crash: {e}"));
        assert_eq!(
            seen.len() as u64,
            store.head(job).expect("head").0,
            "job {job}: scan and head disagree"
        );
        for (i, envelope) in seen.iter().enumerate() {
            assert_eq!(envelope.seq, Seq(i as u64 + 1), "job {job}: seqs are contiguous");
            let JobEvent::ConnectionLost { reason } = &envelope.event else {
                panic!("unexpected {:?}", envelope.event)
            };
            let (batch, k, n) =
                parse_label(reason).unwrap_or_else(|| panic!("unexpected label {reason:?}"));
            let entry = parts.entry(batch).or_insert((n, BTreeSet::new()));
            assert!(entry.1.insert(k), "batch {batch} event {k} stored twice");
        }
    }
    for (batch, (n, got)) in &parts {
        assert_eq!(got.len(), *n, "batch {batch} is partly stored: {got:?} of {n}");
    }
    let missing: Vec<_> = acked.iter().filter(|b| !parts.contains_key(b)).collect();
    assert!(missing.is_empty(), "acknowledged batches lost in the crash: {missing:?}");
    // Positions: one per event, contiguous from 1 in the global order.
    let all = store.read_all(understudy_core::Position(0), usize::MAX).expect("read_all");
    assert!(
        all.iter().enumerate().all(|(i, e)| e.position.0 == i as u64 + 1),
        "positions are contiguous"
    );
    parts.len()
}

#[test]
fn sigkill_during_appends_leaves_a_clean_prefix() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let round = std::env::var(CHILD_ROUND).ok().and_then(|r| r.parse().ok()).unwrap_or(0);
        child(Path::new(&dir), round);
        return;
    }
    let dir = common::temp_dir();
    let mut acked = BTreeSet::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_ROUND, round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()) // a failing child says why
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("piped stdout");
        let wanted = 200 + 100 * round;
        let mut count = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read the child's output");
            // libtest prints its own lines too, and "test <name> ... " before the first ack.
            if let Some((_, batch)) = line.split_once("ACK ") {
                acked.insert(batch.parse::<u64>().expect("a batch number"));
                count += 1;
                if count >= wanted {
                    break;
                }
            }
        }
        assert_eq!(count, wanted, "the child stopped early (round {round})");
        // SIGKILL: no destructor, no flush, mid-append or between appends.
        child.kill().expect("kill the child");
        child.wait().expect("reap the child");
        let stored = check(dir.path(), &acked);
        assert!(stored >= acked.len());
    }
}
