//! Goal: tampering with stored events is detected by `scan_job`, at the right seq, with a
//! `why` an operator can act on; the good prefix is still delivered and other jobs stay clean.
//!
//! Method: a store with job A (10 events) and job B (5 events); each test tampers with A
//! through the forensic helpers (edit a byte, remove, swap, edit or remove the last event,
//! garbage, an event moved from B, an event past the head), scans A from the start and checks
//! the error's seq and text and the envelopes visited before it, then scans B in full.

mod common;

use understudy_core::{EventStore, Flow, JobId, Position, Seq, StoreError};
use understudy_store::{SledEventStore, chain_hash};

struct Fixture {
    _dir: tempfile::TempDir,
    store: SledEventStore,
    a: JobId,
    b: JobId,
}

fn fixture() -> Fixture {
    let dir = common::temp_dir();
    let store = SledEventStore::open(dir.path()).expect("open");
    let (a, b) = (common::job(1), common::job(2));
    // Interleaved, so the jobs' events are neighbours in the global order.
    for _ in 0..5 {
        common::append_n(&store, a, 2);
        common::append_n(&store, b, 1);
    }
    Fixture { _dir: dir, store, a, b }
}

/// Job A with 6,000 events: long enough that `scan_job` reads and hashes on a helper thread.
fn long_fixture() -> Fixture {
    let f = fixture();
    common::append_n(&f.store, f.a, 990);
    for _ in 0..5 {
        common::append_n(&f.store, f.a, 1_000);
    }
    assert_eq!(f.store.head(f.a).expect("head"), Seq(6_000));
    f
}

impl Fixture {
    fn raw(&self, seq: u64) -> Vec<u8> {
        self.store.raw_event(self.a, Seq(seq)).expect("raw read").expect("the event is stored")
    }

    fn put(&self, seq: u64, bytes: &[u8]) {
        self.store.raw_put_event(self.a, Seq(seq), bytes).expect("raw write");
    }

    /// Scans A from `from` and expects corruption at `seq` whose why contains `why`, after
    /// exactly the envelopes `from..seq` were visited; then checks B is clean.
    fn expect_corrupt_at(&self, from: u64, seq: u64, why: &str) {
        let (seen, result) = common::scan(&self.store, self.a, from);
        match result {
            Err(StoreError::Corrupt(corruption)) => {
                assert_eq!(corruption.job, self.a);
                assert_eq!(corruption.seq, Seq(seq), "wrong seq; why: {}", corruption.why);
                assert!(
                    corruption.why.contains(why),
                    "why {:?} does not say {why:?}",
                    corruption.why
                );
            }
            other => panic!("expected corruption at {seq}, got {other:?}"),
        }
        let visited: Vec<u64> = seen.iter().map(|e| e.seq.0).collect();
        let prefix: Vec<u64> = (from.max(1)..seq.max(from)).collect();
        assert_eq!(visited, prefix, "the good prefix is delivered, nothing after");
        let (b_seen, b_result) = common::scan(&self.store, self.b, 1);
        assert!(b_result.is_ok(), "job B is untouched: {b_result:?}");
        assert_eq!(b_seen.len(), 5);
    }

    fn edit(&self, seq: u64) {
        let mut value = self.raw(seq);
        flip_inside(&mut value, b"tester");
        self.put(seq, &value);
    }
}

/// Flips one byte inside the first occurrence of `needle` in `bytes`.
fn flip_inside(bytes: &mut [u8], needle: &[u8]) {
    let at =
        bytes.windows(needle.len()).position(|w| w == needle).expect("the needle is in the value");
    bytes[at + needle.len() / 2] ^= 0x01;
}

#[test]
fn a_clean_store_scans_clean() {
    let f = fixture();
    let (seen, result) = common::scan(&f.store, f.a, 1);
    assert!(result.is_ok());
    assert_eq!(seen.len(), 10);
}

#[test]
fn an_edited_byte_in_a_middle_event_is_found_at_that_event() {
    let f = fixture();
    let mut value = f.raw(5);
    // The operator name: the value still decodes, only its hash changes.
    flip_inside(&mut value, b"tester");
    f.put(5, &value);
    f.expect_corrupt_at(1, 5, "event 5 was edited: its hash does not match the next event's link");
}

#[test]
fn an_edited_link_is_blamed_on_the_event_holding_it() {
    let f = fixture();
    let mut value = f.raw(5);
    flip_inside(&mut value, &chain_hash(&f.raw(4)).0);
    f.put(5, &value);
    f.expect_corrupt_at(1, 5, "event 5 was edited");
}

#[test]
fn a_removed_middle_event_is_missing() {
    let f = fixture();
    f.store.raw_remove_event(f.a, Seq(5)).expect("remove");
    f.expect_corrupt_at(1, 5, "event 5 is missing");
}

#[test]
fn swapped_events_are_reordered() {
    let f = fixture();
    let (five, six) = (f.raw(5), f.raw(6));
    f.put(5, &six);
    f.put(6, &five);
    f.expect_corrupt_at(1, 5, "event stored under seq 5 says it is seq 6 (reordered)");
}

#[test]
fn an_edited_last_event_does_not_match_the_head() {
    let f = fixture();
    let mut value = f.raw(10);
    flip_inside(&mut value, b"tester");
    f.put(10, &value);
    f.expect_corrupt_at(
        1,
        10,
        "event 10 was edited: its hash does not match the job's head record",
    );
    // Also when the scan starts at the head or just past it.
    f.expect_corrupt_at(10, 10, "event 10 was edited");
    f.expect_corrupt_at(11, 10, "event 10 was edited");
}

#[test]
fn a_removed_last_event_is_missing() {
    let f = fixture();
    f.store.raw_remove_event(f.a, Seq(10)).expect("remove");
    f.expect_corrupt_at(1, 10, "event 10 is missing");
}

#[test]
fn garbage_cannot_be_decoded() {
    let f = fixture();
    f.put(5, b"\xc1 not messagepack");
    f.expect_corrupt_at(1, 5, "cannot decode");
    // The global stream reports it too rather than skipping it.
    match f.store.read_all(Position(0), 100) {
        Err(StoreError::Corrupt(corruption)) => assert_eq!(corruption.seq, Seq(5)),
        other => panic!("read_all should report the undecodable event: {other:?}"),
    }
}

#[test]
fn an_event_moved_from_another_job_is_named() {
    let f = fixture();
    let from_b = f.store.raw_event(f.b, Seq(3)).expect("raw").expect("stored");
    f.put(3, &from_b);
    f.expect_corrupt_at(1, 3, "belongs to job");
}

#[test]
fn an_event_past_the_head_is_reported() {
    let f = fixture();
    let last = f.raw(10);
    f.put(11, &last);
    f.expect_corrupt_at(1, 11, "beyond the job's head record");
}

#[test]
fn a_scan_from_the_middle_checks_its_first_link() {
    let f = fixture();
    let mut value = f.raw(5);
    flip_inside(&mut value, b"tester");
    f.put(5, &value);
    // Starting at 6, the store reads 5 only for its hash: the edit still shows.
    f.expect_corrupt_at(6, 5, "event 5 was edited");
    // Starting past the damage, the rest is verified and clean.
    let (seen, result) = common::scan(&f.store, f.a, 7);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(seen.len(), 4);
}

#[test]
fn a_scan_stopped_before_the_damage_succeeds() {
    let f = fixture();
    f.store.raw_remove_event(f.a, Seq(8)).expect("remove");
    let mut seen = Vec::new();
    let result = f.store.scan_job(f.a, Seq(1), &mut |envelope| {
        seen.push(envelope.seq.0);
        if seen.len() == 3 { Flow::Stop } else { Flow::Continue }
    });
    assert!(result.is_ok());
    assert_eq!(seen, [1, 2, 3]);
}

#[test]
fn restoring_the_original_bytes_heals_the_chain() {
    let f = fixture();
    let original = f.raw(5);
    let mut edited = original.clone();
    flip_inside(&mut edited, b"tester");
    f.put(5, &edited);
    assert!(common::scan(&f.store, f.a, 1).1.is_err());
    f.put(5, &original);
    assert!(common::scan(&f.store, f.a, 1).1.is_ok());
}

#[test]
fn appends_during_a_scan_are_not_mistaken_for_tampering() {
    let f = fixture();
    let store = std::sync::Arc::new(f.store);
    let a = f.a;
    let writer = {
        let store = std::sync::Arc::clone(&store);
        std::thread::spawn(move || {
            for i in 0..300 {
                common::append_n(&store, a, 1 + i % 3);
            }
        })
    };
    let mut scans = 0;
    while !writer.is_finished() || scans == 0 {
        let (seen, result) = common::scan(&*store, a, 1 + scans % 7);
        assert!(result.is_ok(), "scan {scans} during appends: {result:?}");
        assert!(seen.windows(2).all(|w| w[1].seq == w[0].seq.next()), "contiguous");
        let all = store.read_all(Position(0), usize::MAX).expect("read_all during appends");
        assert!(all.iter().enumerate().all(|(i, e)| e.position.0 == i as u64 + 1));
        scans += 1;
    }
    writer.join().expect("the writer");
}

#[test]
fn a_long_job_scans_clean_and_in_order() {
    let f = long_fixture();
    let (seen, result) = common::scan(&f.store, f.a, 1);
    assert!(result.is_ok(), "{result:?}");
    assert!(seen.iter().enumerate().all(|(i, e)| e.seq == Seq(i as u64 + 1)));
    assert_eq!(seen.len(), 6_000);
}

#[test]
fn tampering_in_a_long_job_is_found_like_in_a_short_one() {
    let f = long_fixture();
    let original = f.raw(3_000);
    f.edit(3_000);
    f.expect_corrupt_at(
        1,
        3_000,
        "event 3000 was edited: its hash does not match the next event's link",
    );
    f.put(3_000, &original);
    f.store.raw_remove_event(f.a, Seq(4_500)).expect("remove");
    f.expect_corrupt_at(1, 4_500, "event 4500 is missing");
    f.expect_corrupt_at(2, 4_500, "event 4500 is missing");
}

#[test]
fn an_edited_or_removed_last_event_of_a_long_job_is_found() {
    let f = long_fixture();
    f.edit(6_000);
    f.expect_corrupt_at(1, 6_000, "does not match the job's head record");
    f.store.raw_remove_event(f.a, Seq(6_000)).expect("remove");
    f.expect_corrupt_at(1, 6_000, "event 6000 is missing");
}

#[test]
fn swapped_events_in_a_long_job_are_reordered() {
    let f = long_fixture();
    let (x, y) = (f.raw(5_000), f.raw(5_001));
    f.put(5_000, &y);
    f.put(5_001, &x);
    f.expect_corrupt_at(1, 5_000, "says it is seq 5001 (reordered)");
}

#[test]
fn a_long_scan_stopped_early_returns_at_once() {
    let f = long_fixture();
    let mut seen = 0;
    let result = f.store.scan_job(f.a, Seq(1), &mut |_| {
        seen += 1;
        if seen == 100 { Flow::Stop } else { Flow::Continue }
    });
    assert!(result.is_ok());
    assert_eq!(seen, 100);
}
