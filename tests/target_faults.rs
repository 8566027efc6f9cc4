//! Target faults: a target volume that fills up (the job shows health Error and target data
//! state "Mirror Required", the daemon stays up, and the job recovers once there is room), an
//! operation whose path escapes the target root through a symlink (refused with a `Nack`,
//! nothing written outside), a malformed frame (only its connection is closed; a real job
//! keeps replicating), and a target's acknowledgements keeping pace with a full window.
//!
//! Method: the full volume is a 2 MB tmpfs mounted as the target root (needs root; the test
//! says so and skips otherwise), watched with `understudy job show --json`. The hostile peer
//! speaks the real wire protocol (`understudy_adapters::wire`) to a real daemon's replication
//! port as a source would, with operations built by `understudy_adapters::fsops`.

#![allow(clippy::unwrap_used)] // a test fails by panicking, with the value in the message

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Daemon, LONG, compare_trees, is_root, random_bytes, wait_equal, write};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use understudy_adapters::fsops::{Meta, Operation, RelPath};
use understudy_adapters::wire::{
    Compression, EncodedOp, HandshakeConfig, Message, Role, SYNC_SHARE_OF_WINDOW,
    UNSYNCED_WINDOW_OPS, connect_handshake, read_message, write_message,
};
use understudy_core::{ConnectionId, JobId};

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", s(path)])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(path.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}"), s(&self.0)])
            .status()
            .unwrap();
        assert!(status.success(), "remounting the tmpfs at {size}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `job show JOB --json` through the command line.
fn show_cli(daemon: &Daemon, job: &str) -> serde_json::Value {
    daemon.job(&["show", job, "--json"]).ok().json()
}

/// A job whose 3 MB mirror meets a 2 MB tmpfs target, started; `None` (with a message) when
/// this machine cannot mount one.
struct FullTarget {
    daemon: Daemon,
    // Dropped after the daemon (fields drop in order), then the folders.
    tmpfs: Tmpfs,
    source: PathBuf,
    target: PathBuf,
    _dir: tempfile::TempDir,
}

fn full_target(label: &str) -> Option<FullTarget> {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs as the target needs root");
        return None;
    }
    let dir = support::tempdir(label);
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    let tmpfs = match Tmpfs::mount(&target, "2m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs here: {why}");
            return None;
        }
    };
    for i in 0..10 {
        write(&source.join(format!("small-{i}.txt")), &random_bytes(i, 2000));
    }
    write(&source.join("big.bin"), &random_bytes(99, 3_000_000));
    let daemon = Daemon::start(&dir.path().join("data"));
    daemon.create(&["--name", "full", "--source", s(&source), "--target", s(&target)]);
    daemon.job(&["start", "full"]).ok();
    Some(FullTarget { daemon, tmpfs, source, target, _dir: dir })
}

#[test]
fn a_full_target_volume_shows_an_error_and_recovers_once_there_is_room() {
    let Some(mut full) = full_target("fault-full") else { return };
    let daemon = &full.daemon;
    let (source, target) = (&full.source, &full.target);

    // The mirror does not fit: health Error, target data state Mirror Required (polled through
    // `job show --json`). Because of the bug below, this shows only after the source's link
    // times out (20 s) and reconnects; hence the long poll.
    let last = std::cell::RefCell::new(serde_json::Value::Null);
    support::poll(
        "health Error and target data state Mirror Required",
        LONG,
        Duration::from_millis(200),
        || {
            let doc = show_cli(daemon, "full");
            let hit = doc["health"] == "Error" && doc["target_data_state"] == "Mirror Required";
            *last.borrow_mut() = doc;
            hit.then_some(())
        },
        || format!("{}\nevents: {:?}", last.borrow(), daemon.event_names("full")),
    );
    assert!(full.daemon.running(), "the daemon survives a full target");
    let daemon = &full.daemon;

    // Room again: the big file leaves the source and the volume grows.
    std::fs::remove_file(source.join("big.bin")).unwrap();
    full.tmpfs.resize("20m");
    let last = std::cell::RefCell::new(serde_json::Value::Null);
    support::poll(
        "the job to recover (Protecting, Healthy, OK)",
        LONG,
        Duration::from_millis(200),
        || {
            let doc = show_cli(daemon, "full");
            let hit = doc["state"] == "Protecting"
                && doc["health"] == "Healthy"
                && doc["target_data_state"] == "OK";
            *last.borrow_mut() = doc;
            hit.then_some(())
        },
        || format!("{}\n{}", last.borrow(), daemon.log_tail(20)),
    );
    wait_equal(source, target, LONG, Some(daemon));
    // And it replicates again.
    write(&source.join("after.txt"), b"room again\n");
    wait_equal(source, target, LONG, Some(daemon));
    assert!(full.daemon.running(), "the daemon is still up");
}

/// The target, blocked on a full volume, sends `Nack{disk_full}` and then acknowledges the
/// operations before the blocked one; the source takes any `Ack` after a fault as "the fault is
/// gone" and clears it at once. The job then shows Healthy / Mirroring with a full target until
/// its link times out 20 s later.
#[test]
fn the_disk_full_fault_shows_at_once_and_stays_while_the_target_is_full() {
    let Some(full) = full_target("fault-full-stays") else { return };
    let daemon = &full.daemon;
    let names = support::poll(
        "a FaultRaised event",
        LONG,
        Duration::from_millis(100),
        || {
            let names = daemon.event_names("full");
            names.iter().any(|n| n == "FaultRaised").then_some(names)
        },
        || format!("{:?}", daemon.event_names("full")),
    );
    assert!(names.iter().all(|n| n != "ConnectionLost"), "{names:?}");
    // For the next 5 s the volume stays full: the job must say so all along.
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(5) {
        let doc = daemon.show("full");
        assert!(
            doc["health"] == "Error" && doc["target_data_state"] == "Mirror Required",
            "the target volume is still full, but the job shows health {} and target data state {}; events: {:?}",
            doc["health"],
            doc["target_data_state"],
            daemon.event_names("full")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Connects to the daemon's replication port as a source engine and opens a session for a
/// made-up job on `root`; returns the stream and the target's last applied seq.
async fn open_session(listen: &str, root: &Path) -> (TcpStream, u64) {
    let mut stream = TcpStream::connect(listen).await.expect("connecting to the replication port");
    let config = HandshakeConfig {
        engine_id: "e2e-hostile-source".into(),
        role: Role::Source,
        secret: None,
    };
    connect_handshake(&mut stream, &config).await.expect("the handshake");
    // Built through serde so that fields the protocol adds later (with defaults) need no
    // change here.
    let open: Message = serde_json::from_value(serde_json::json!({"Open": {
        "job_id": JobId::from_uuid(uuid::Uuid::now_v7()),
        "root": s(root),
        "session": ConnectionId(1),
        "resume_from_seq": 1,
    }}))
    .expect("an Open message");
    write_message(&mut stream, &open, Compression::None).await.unwrap();
    let last = match tokio::time::timeout(LONG, read_message(&mut stream))
        .await
        .expect("an answer to Open")
    {
        Ok(Message::Opened { last_applied_seq, .. }) => last_applied_seq,
        other => panic!("wanted Opened, got {other:?}"),
    };
    (stream, last)
}

fn rel(path: &str) -> RelPath {
    RelPath::new(path.as_bytes().to_vec()).expect("a valid relative path")
}

fn file_meta() -> Meta {
    Meta { mode: 0o644, ..Meta::default() }
}

#[test]
fn operations_escaping_the_target_root_through_a_symlink_are_refused() {
    let dir = support::tempdir("fault-escape");
    let (target, outside) = (dir.path().join("target"), dir.path().join("outside"));
    std::fs::create_dir_all(&target).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious.txt"), b"must stay as it is").unwrap();
    std::os::unix::fs::symlink(&outside, target.join("evil")).unwrap();
    write(&target.join("inside.txt"), b"inside");
    let daemon = Daemon::start(&dir.path().join("data"));
    let refused_before =
        daemon.get("/v1/health").json()["target"]["operations_refused"].as_u64().unwrap();

    let hostile = vec![
        Operation::CreateFile { path: rel("evil/pwned"), meta: file_meta() },
        Operation::Write { path: rel("evil/pwned"), offset: 0, data: b"pwned".to_vec().into() },
        Operation::Write {
            path: rel("evil/precious.txt"),
            offset: 0,
            data: b"PWNED".to_vec().into(),
        },
        Operation::Truncate { path: rel("evil/precious.txt"), len: 0 },
        Operation::MakeDir {
            path: rel("evil/newdir"),
            meta: Meta { mode: 0o755, ..Meta::default() },
        },
        Operation::Symlink { path: rel("evil/link"), target: b"/etc/passwd".to_vec() },
        Operation::HardLink { path: rel("evil/hard"), existing: rel("inside.txt") },
        Operation::Rename { from: rel("inside.txt"), to: rel("evil/moved.txt") },
        Operation::Remove { path: rel("evil/precious.txt") },
        Operation::SetMeta {
            path: rel("evil/precious.txt"),
            meta: Meta { mode: 0o777, ..Meta::default() },
        },
    ];
    let legit = vec![
        Operation::CreateFile { path: rel("legit.txt"), meta: file_meta() },
        Operation::Write { path: rel("legit.txt"), offset: 0, data: b"legit".to_vec().into() },
    ];
    let hostile_count = hostile.len() as u64;
    let all: Vec<EncodedOp> =
        hostile.iter().chain(&legit).map(|op| EncodedOp::encode(op).unwrap()).collect();
    let last_seq = all.len() as u64;

    let (nacks, acked) = runtime().block_on(async {
        let (mut stream, last) = open_session(&daemon.listen, &target).await;
        assert_eq!(last, 0, "a new job starts at seq 0");
        write_message(&mut stream, &Message::Ops { first_seq: 1, ops: all }, Compression::None)
            .await
            .unwrap();
        let mut nacks = Vec::new();
        let mut acked = 0;
        let deadline = Instant::now() + LONG;
        while acked < last_seq && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), read_message(&mut stream)).await {
                Ok(Ok(Message::Nack { seq, error, .. })) => nacks.push((seq, error.message)),
                Ok(Ok(Message::Ack { seq, .. })) => acked = seq,
                Ok(Ok(_)) => {}
                Ok(Err(error)) => panic!("the target closed the session: {error}"),
                Err(_) => {}
            }
        }
        let _ = write_message(
            &mut stream,
            &Message::Close { reason: "done".into() },
            Compression::None,
        )
        .await;
        (nacks, acked)
    });

    // Nothing outside the root changed.
    let outside_now: Vec<String> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(outside_now, ["precious.txt"], "nothing was created outside the target root");
    assert_eq!(std::fs::read(outside.join("precious.txt")).unwrap(), b"must stay as it is");
    use std::os::unix::fs::PermissionsExt as _;
    let mode =
        std::fs::metadata(outside.join("precious.txt")).unwrap().permissions().mode() & 0o777;
    assert_ne!(mode, 0o777, "the mode of a file outside the root was changed");
    assert!(
        std::fs::symlink_metadata(target.join("evil")).unwrap().file_type().is_symlink(),
        "the symlink is left alone"
    );
    assert_eq!(
        std::fs::read(target.join("inside.txt")).unwrap(),
        b"inside",
        "the refused rename moved nothing"
    );

    // Each hostile operation was answered with a Nack; the legitimate ones were applied.
    let nacked: Vec<u64> = nacks.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        nacked,
        (1..=hostile_count).collect::<Vec<_>>(),
        "one Nack per hostile operation: {nacks:?}"
    );
    assert_eq!(acked, last_seq, "the session acknowledged everything after the refusals");
    assert_eq!(std::fs::read(target.join("legit.txt")).unwrap(), b"legit");
    let refused_after =
        daemon.get("/v1/health").json()["target"]["operations_refused"].as_u64().unwrap();
    assert!(
        refused_after >= refused_before + hostile_count,
        "the target counts refusals: {refused_before} -> {refused_after}"
    );
}

#[test]
fn a_malformed_frame_closes_only_its_connection() {
    let dir = support::tempdir("fault-frame");
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    for i in 0..20 {
        write(&source.join(format!("f-{i}.txt")), &random_bytes(i, 5000));
    }
    let daemon = Daemon::start(&dir.path().join("data"));
    daemon.create(&["--name", "steady", "--source", s(&source), "--target", s(&target)]);
    daemon.job(&["start", "steady"]).ok();
    daemon.wait_state("steady", "Protecting", LONG);
    wait_equal(&source, &target, LONG, Some(&daemon));
    let lost_before =
        daemon.event_names("steady").iter().filter(|n| *n == "ConnectionLost").count();
    let errors_before =
        daemon.get("/v1/health").json()["target"]["protocol_errors"].as_u64().unwrap();
    let scratch = dir.path().join("scratch");

    runtime().block_on(async {
        // Garbage after Open: a frame of junk bytes.
        let (mut stream, _) = open_session(&daemon.listen, &scratch).await;
        let mut junk = 40u32.to_be_bytes().to_vec();
        junk.extend_from_slice(&[0xc1; 40]);
        stream.write_all(&junk).await.unwrap();
        assert_closed(&mut stream, "junk after Open").await;

        // An oversized length prefix after Open.
        let (mut stream, _) = open_session(&daemon.listen, &scratch).await;
        stream.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        stream.write_all(&[0u8; 64]).await.unwrap();
        assert_closed(&mut stream, "an oversized frame").await;

        // Garbage right after the handshake, instead of Open.
        let mut stream = TcpStream::connect(&daemon.listen).await.unwrap();
        let config =
            HandshakeConfig { engine_id: "e2e-junk".into(), role: Role::Source, secret: None };
        connect_handshake(&mut stream, &config).await.unwrap();
        stream
            .write_all(&[0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef])
            .await
            .unwrap();
        assert_closed(&mut stream, "junk instead of Open").await;

        // Garbage instead of a handshake.
        let mut stream = TcpStream::connect(&daemon.listen).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_closed(&mut stream, "HTTP instead of a handshake").await;
    });

    // The real job did not notice.
    write(&source.join("after-garbage.txt"), b"still replicating\n");
    std::fs::remove_file(source.join("f-3.txt")).unwrap();
    wait_equal(&source, &target, LONG, Some(&daemon));
    let shown = daemon.show("steady");
    assert_eq!(shown["state"], "Protecting", "{shown}");
    assert_eq!(shown["health"], "Healthy", "{shown}");
    let lost_after = daemon.event_names("steady").iter().filter(|n| *n == "ConnectionLost").count();
    assert_eq!(lost_before, lost_after, "the job's own connection was not dropped");
    let errors_after =
        daemon.get("/v1/health").json()["target"]["protocol_errors"].as_u64().unwrap();
    assert!(
        errors_after >= errors_before + 2,
        "the target counts protocol errors: {errors_before} -> {errors_after}"
    );
    assert!(compare_trees(&source, &target).is_ok());
}

/// A target says what it applied after each batch, before it is durable (ADR 18), and
/// acknowledges a share of the sender's unsynced window once it has applied it, while more
/// input is waiting (ADR 17): without that the first acknowledgement came only when the input
/// ran dry, and a sender whose window was full waited for the target's whole sync each time.
#[test]
fn a_target_says_what_it_applied_and_acknowledges_a_share_before_its_input_runs_dry() {
    let dir = support::tempdir("early-sync");
    let target = dir.path().join("target");
    std::fs::create_dir_all(&target).unwrap();
    let daemon = Daemon::start(&dir.path().join("data"));
    let share = UNSYNCED_WINDOW_OPS / SYNC_SHARE_OF_WINDOW;
    // Small writes to one file: a batch is applied in moments, inside the sync interval.
    let write = |i: u64| Operation::Write {
        path: rel("f"),
        offset: i * 8,
        data: i.to_be_bytes().to_vec().into(),
    };
    let create = Operation::CreateFile { path: rel("f"), meta: file_meta() };
    let encode = |op: Operation| EncodedOp::encode(&op).unwrap();
    let first: Vec<EncodedOp> =
        std::iter::once(create).chain((1..share).map(write)).map(encode).collect();
    let second: Vec<EncodedOp> = (share..2 * share).map(write).map(encode).collect();

    let (applied, acks) = runtime().block_on(async {
        let (mut stream, _) = open_session(&daemon.listen, &target).await;
        // Both batches in one write: the second is waiting before the first is applied.
        let mut both = Vec::new();
        write_message(&mut both, &Message::Ops { first_seq: 1, ops: first }, Compression::None)
            .await
            .unwrap();
        let second = Message::Ops { first_seq: share + 1, ops: second };
        write_message(&mut both, &second, Compression::None).await.unwrap();
        stream.write_all(&both).await.unwrap();
        let (mut applied, mut acks) = (Vec::new(), Vec::new());
        while acks.last() != Some(&(2 * share)) {
            match tokio::time::timeout(LONG, read_message(&mut stream)).await {
                Ok(Ok(Message::Applied { seq })) => applied.push(seq),
                Ok(Ok(Message::Ack { seq })) => acks.push(seq),
                Ok(Ok(Message::Nack { seq, error, .. })) => panic!("operation {seq}: {error}"),
                Ok(Ok(_)) => {}
                other => panic!("no acknowledgement of everything: {other:?} after {acks:?}"),
            }
        }
        (applied, acks)
    });
    assert_eq!(applied, [share, 2 * share], "each batch is reported applied");
    assert_eq!(acks.first(), Some(&share), "the first batch was acknowledged by itself: {acks:?}");
    let written = std::fs::read(target.join("f")).unwrap();
    assert_eq!(written.len() as u64, 2 * share * 8);
}

/// Asserts the peer closes the connection (end of stream or reset) within 30 s; whatever it
/// sends first (a `Refused`, a `Nack`) is read and ignored.
async fn assert_closed(stream: &mut TcpStream, what: &str) {
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the target kept the connection open after {what}"),
        }
    }
}
