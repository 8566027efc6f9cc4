//! Goal: opening refuses what is not an event log (`NotAStore`) or is held by someone else
//! (`Locked`) with messages that say what to do, creates a new log in a new or empty
//! directory, keeps everything across a reopen, and `wait_for` wakes on an append and times out
//! otherwise.
//!
//! Method: directories prepared by hand (another file, a file instead of a directory, a plain
//! sled database, an event log of another format version); a second process that holds the
//! store (this test binary re-run with an env var, waiting on its stdin) and a second handle in
//! this process; a reopen compared field by field; `wait_for` against an append from another
//! thread.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use understudy_core::{Checkpoint, CheckpointStore, EventStore, Position, Seq, StoreError};
use understudy_store::SledEventStore;

const HOLDER_TEST: &str = "a_store_held_by_another_process_is_locked";
const HOLDER_DIR: &str = "UNDERSTUDY_LOCK_HOLDER_DIR";

fn not_a_store(dir: &Path) -> String {
    match SledEventStore::open(dir) {
        Err(StoreError::NotAStore(message)) => message,
        Err(other) => panic!("expected NotAStore, got {other:?}"),
        Ok(_) => panic!("{} opened as a store", dir.display()),
    }
}

#[test]
fn a_new_or_empty_directory_becomes_a_store() {
    let dir = common::temp_dir();
    let nested = dir.path().join("a/b/events");
    let store = SledEventStore::open(&nested).expect("a missing directory is created");
    assert_eq!(store.last_position().expect("position"), Position(0));
    assert!(store.jobs().expect("jobs").is_empty());
    let empty = common::temp_dir();
    SledEventStore::open(empty.path()).expect("an empty directory becomes a store");
}

#[test]
fn a_directory_with_other_files_is_not_a_store_and_is_left_alone() {
    let dir = common::temp_dir();
    std::fs::write(dir.path().join("notes.txt"), "mine").expect("write");
    let message = not_a_store(dir.path());
    assert!(message.contains(&dir.path().display().to_string()), "{message}");
    assert!(
        message.contains("notes.txt") && message.contains("empty or new directory"),
        "{message}"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["notes.txt"], "nothing was written into the directory");
}

#[test]
fn a_file_is_not_a_store() {
    let dir = common::temp_dir();
    let file = dir.path().join("events");
    std::fs::write(&file, "").expect("write");
    assert!(not_a_store(&file).contains("is a file, not a directory"));
}

#[test]
fn a_sled_database_of_something_else_is_not_a_store() {
    let dir = common::temp_dir();
    {
        let db = sled::open(dir.path()).expect("sled");
        db.insert("foo", "bar").expect("insert");
        db.flush().expect("flush");
    }
    let message = not_a_store(dir.path());
    assert!(message.contains("not an understudy event log"), "{message}");
}

#[test]
fn an_empty_sled_database_is_a_store_whose_creation_was_interrupted() {
    let dir = common::temp_dir();
    drop(sled::open(dir.path()).expect("sled"));
    SledEventStore::open(dir.path()).expect("an empty sled database is taken over");
    SledEventStore::open(dir.path()).expect("and reopens with its marker");
}

#[test]
fn a_log_of_another_format_version_is_refused() {
    let dir = common::temp_dir();
    drop(SledEventStore::open(dir.path()).expect("open"));
    {
        let db = sled::open(dir.path()).expect("sled");
        db.insert("mversion", &2u32.to_be_bytes()).expect("insert");
        db.flush().expect("flush");
    }
    let message = not_a_store(dir.path());
    assert!(
        message.contains("format version 2") && message.contains("reads version 1"),
        "{message}"
    );
}

fn expect_locked(dir: &Path) {
    match SledEventStore::open(dir) {
        Err(StoreError::Locked(message)) => {
            assert!(message.contains(&dir.display().to_string()), "{message}");
            assert!(message.contains("in use by another understudy process"), "{message}");
        }
        Err(other) => panic!("expected Locked, got {other:?}"),
        Ok(_) => panic!("opened a store another handle holds"),
    }
}

#[test]
fn a_store_held_by_another_process_is_locked() {
    if let Ok(dir) = std::env::var(HOLDER_DIR) {
        // The holder: open, say so, and keep the store until the parent closes our stdin.
        let _store = SledEventStore::open(Path::new(&dir)).expect("the holder opens the store");
        println!("HOLDING");
        let _ = std::io::stdin().lines().count();
        return;
    }
    let dir = common::temp_dir();
    let mut holder = Command::new(std::env::current_exe().expect("the test binary"))
        .args([HOLDER_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(HOLDER_DIR, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit()) // a failing holder says why
        .spawn()
        .expect("spawn the holder");
    let stdout = holder.stdout.take().expect("piped");
    // libtest writes "test <name> ... " before the test's own output, on the same line.
    let holding =
        BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line.ends_with("HOLDING"));
    assert!(holding, "the holder did not open the store");
    expect_locked(dir.path());
    drop(holder.stdin.take());
    holder.wait().expect("the holder exits");
    SledEventStore::open(dir.path()).expect("free again once the holder is gone");
}

#[test]
fn a_second_handle_in_the_same_process_is_locked() {
    let dir = common::temp_dir();
    let store = SledEventStore::open(dir.path()).expect("open");
    expect_locked(dir.path());
    drop(store);
    SledEventStore::open(dir.path()).expect("reopens once dropped");
}

#[test]
fn a_reopen_right_after_a_drop_is_not_locked() {
    // sled's I/O threads let go of the lock a moment after the handle is dropped; a restart in
    // the same process must not mistake that for another process. Larger appends and unflushed
    // checkpoints make sled leave background writes behind, which is when it shows.
    let dir = common::temp_dir();
    let a = common::job(1);
    let mut head = 0;
    for round in 0..150u64 {
        let store =
            SledEventStore::open(dir.path()).unwrap_or_else(|e| panic!("reopen {round}: {e}"));
        let count = 1 + (round % 7) * 20;
        common::append_n(&store, a, count as usize);
        head += count;
        store.save_checkpoint(a, &Checkpoint { seq: Seq(head), state: round }).expect("checkpoint");
    }
    let store = SledEventStore::open(dir.path()).expect("reopen");
    assert_eq!(store.head(a).expect("head"), Seq(head));
}

#[test]
fn a_reopen_keeps_everything() {
    let dir = common::temp_dir();
    let (a, b) = (common::job(1), common::job(2));
    let (all, heads, scans) = {
        let store = SledEventStore::open(dir.path()).expect("open");
        common::append_n(&store, b, 3);
        common::append_n(&store, a, 2);
        common::append_n(&store, b, 1);
        store
            .save_checkpoint(a, &Checkpoint { seq: Seq(2), state: "folded".to_string() })
            .expect("checkpoint");
        let all = store.read_all(Position(0), 100).expect("read_all");
        let heads = (store.head(a).expect("head"), store.head(b).expect("head"));
        let scans = (common::scan(&store, a, 1).0, common::scan(&store, b, 1).0);
        (all, heads, scans)
    };
    let store = SledEventStore::open(dir.path()).expect("reopen");
    assert_eq!(store.read_all(Position(0), 100).expect("read_all"), all);
    assert_eq!((store.head(a).expect("head"), store.head(b).expect("head")), heads);
    assert_eq!((common::scan(&store, a, 1).0, common::scan(&store, b, 1).0), scans);
    assert_eq!(store.jobs().expect("jobs"), [a, b]);
    assert_eq!(store.last_position().expect("position"), Position(6));
    let checkpoint: Option<Checkpoint<String>> = store.load_checkpoint(a, Seq(10)).expect("load");
    assert_eq!(checkpoint.map(|c| c.state).as_deref(), Some("folded"));
    // Positions and seqs carry on where they were.
    let next = common::append_n(&store, a, 1);
    assert_eq!((next[0].position, next[0].seq), (Position(7), Seq(3)));
    let before = store.raw_event(a, Seq(2)).expect("raw").expect("stored");
    assert_eq!(
        next[0].prev_hash,
        understudy_store::chain_hash(&before),
        "the chain carries on too"
    );
}

#[test]
fn an_unreadable_checkpoint_is_skipped_for_an_older_one() {
    let dir = common::temp_dir();
    let store = SledEventStore::open(dir.path()).expect("open");
    let a = common::job(1);
    store.save_checkpoint(a, &Checkpoint { seq: Seq(5), state: 5u64 }).expect("save");
    // A newer checkpoint of a state type this reader cannot decode.
    store
        .save_checkpoint(a, &Checkpoint { seq: Seq(9), state: "not a number".to_string() })
        .expect("save");
    let found: Option<Checkpoint<u64>> = store.load_checkpoint(a, Seq(20)).expect("load");
    assert_eq!(found, Some(Checkpoint { seq: Seq(5), state: 5 }));
    let none: Option<Checkpoint<u64>> = store.load_checkpoint(a, Seq(4)).expect("load");
    assert_eq!(none, None);
}

#[test]
fn wait_for_wakes_on_an_append_from_another_thread() {
    let dir = common::temp_dir();
    let store = Arc::new(SledEventStore::open(dir.path()).expect("open"));
    let writer = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            common::append_n(&store, common::job(1), 2);
        })
    };
    let started = Instant::now();
    assert!(store.wait_for(Position(0), Duration::from_secs(20)).expect("wait"));
    assert!(started.elapsed() < Duration::from_secs(20), "woken by the append, not the timeout");
    writer.join().expect("the writer");
    assert_eq!(store.read_all(Position(0), 10).expect("read").len(), 2);
    // Already there: no waiting at all.
    assert!(store.wait_for(Position(1), Duration::from_secs(20)).expect("wait"));
}

#[test]
fn wait_for_times_out_without_an_append() {
    let dir = common::temp_dir();
    let store = SledEventStore::open(dir.path()).expect("open");
    common::append_n(&store, common::job(1), 1);
    let started = Instant::now();
    assert!(!store.wait_for(Position(1), Duration::from_millis(150)).expect("wait"));
    assert!(started.elapsed() >= Duration::from_millis(150));
}
