//! Network end-to-end tests: a files job replicating between two real hosts across a network
//! that is slow, lossy and sometimes cut.
//!
//! Goal: show that what the product promises about the network holds on a real network stack —
//! authentication between the engines, the bandwidth limiter's accuracy, throughput over a
//! long fat link, dead-link detection and automatic reconnection after a cut, the queue
//! exhausted path (auto-disconnect, reconnect, differential remirror), clean and unclean
//! restarts of either daemon, a lossy high-latency link, and a port scan or half-open
//! connections against the replication port — and print the figures measured (limiter
//! accuracy, throughput fraction, time from restore to drained).
//!
//! Method: each test builds its own two hosts from Linux network namespaces (`us-src-<pid>-<n>`,
//! `us-tgt-<pid>-<n>`), joined by a veth pair `vs<n>`/`vt<n>` with 198.51.100.1/24 and
//! 198.51.100.2/24 (TEST-NET-2 only; the machine's own interfaces are never touched), shapes
//! the link with `tc netem` (or, on a kernel without netem, a userspace wire between two TUN
//! devices that does the same: see `netns/mod.rs`), cuts it with `ip link set … down`, and runs
//! a real `understudy serve` in each host (`ip netns exec …`), the target with
//! `--listen 198.51.100.2:6320`, the source with `--listen 198.51.100.1:6320`, both with the
//! same `--secret-file`. Jobs are created and watched through the real command line inside the
//! source host (`understudy job … --json`, `understudy replay … --json`); the target's
//! counters come from its `GET /v1/health`. Both hosts share the file system, so every test
//! ends by comparing the replica with the source byte for byte (names, kinds, bytes, symlink
//! targets). Guards kill the daemons and remove the namespaces on drop, also on panic. The
//! tests run one at a time (they measure). `UNDERSTUDY_LONG_TESTS=1` runs longer cuts and
//! bigger trees.

#![allow(clippy::unwrap_used)] // a test fails by panicking, with the value in the message

#[path = "netns/mod.rs"]
mod netns;

use std::fs;
use std::time::{Duration, Instant};

use netns::{
    Daemon, Dirs, Event, Net, Shape, Side, Writer, compare_trees, connection, describe, long,
    make_tree, number, random_bytes, s, serial, wait_equal, write, write_secret,
};
use serde_json::Value;

const JOB: &str = "net";

/// Creates the job on the source daemon; returns its id.
fn create_job(src: &Daemon, dirs: &Dirs, extra: &[&str]) -> String {
    let target = dirs.target_spec();
    let mut args =
        vec!["create", "--name", JOB, "--source", s(&dirs.source), "--target", target.as_str()];
    args.extend_from_slice(extra);
    let id = src.job(&args).ok().stdout.trim().to_string();
    assert!(!id.is_empty(), "job create printed no id");
    id
}

/// Two hosts, both daemons with the shared secret, and a job mirrored to Protecting.
struct Setup {
    src: Daemon,
    tgt: Daemon,
    net: Net,
    dirs: Dirs,
}

impl Setup {
    fn new(net: Net, dirs: Dirs, job_options: &[&str]) -> Setup {
        let tgt = Daemon::start(&net, Side::Tgt, &dirs.tgt_data, Some(&dirs.secret));
        let src = Daemon::start(&net, Side::Src, &dirs.src_data, Some(&dirs.secret));
        create_job(&src, &dirs, job_options);
        src.job(&["start", JOB]).ok();
        Setup { src, tgt, net, dirs }
    }

    fn protecting(&self, timeout: Duration) -> Value {
        self.src.wait_state(JOB, "Protecting", timeout)
    }

    fn converge(&self, timeout: Duration) -> Duration {
        let took = wait_equal(&self.dirs.source, &self.dirs.target, timeout, &self.src);
        compare_trees(&self.dirs.source, &self.dirs.target).unwrap();
        took
    }

    fn last_seq(&self) -> u64 {
        self.src.history(JOB).iter().map(|e| e.seq).max().unwrap_or(0)
    }

    /// Waits until the job is Protecting on a connection other than `old` with an empty queue;
    /// returns the document and when it reconnected (first seen on a new connection).
    fn reconnected_and_drained(
        &self,
        old: Option<u64>,
        timeout: Duration,
    ) -> (Value, Option<Instant>) {
        let started = Instant::now();
        let mut reconnected = None;
        loop {
            let doc = self.src.show(JOB);
            let fresh = connection(&doc).is_some_and(|c| Some(c) != old);
            if fresh && reconnected.is_none() {
                reconnected = Some(Instant::now());
            }
            if fresh && doc["state"] == "Protecting" && number(&doc, "replication_queue_bytes") == 0
            {
                return (doc, reconnected);
            }
            assert!(
                started.elapsed() < timeout,
                "the job did not reconnect and drain within {} s: {}\n--- source log ---\n{}\n--- target log ---\n{}",
                timeout.as_secs(),
                serde_json::to_string_pretty(&doc).unwrap_or_default(),
                self.src.log_tail(),
                self.tgt.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn events_after(events: &[Event], seq: u64) -> Vec<Event> {
    events.iter().filter(|e| e.seq > seq).cloned().collect()
}

fn mirror_kind(event: &Event) -> (String, String) {
    let mirror = &event.fields()["mirror"];
    (
        mirror["kind"].as_str().unwrap_or_default().to_string(),
        mirror["reason"].as_str().unwrap_or_default().to_string(),
    )
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Removes ANSI colour sequences from a log.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ----------------------------------------------------------------------------------------------
// 1. Authentication

#[test]
fn authentication_refuses_wrong_or_missing_secrets_and_accepts_the_right_one() {
    let _serial = serial();
    let net = Net::new();
    let dirs = Dirs::new("auth");
    make_tree(&dirs.source, 6, 100_000, 11);
    let wrong = dirs.tmp.path().join("wrong-secret");
    write_secret(&wrong, 2);
    assert_ne!(fs::read(&wrong).unwrap(), fs::read(&dirs.secret).unwrap());

    // The target has another secret: the handshake fails, the job never connects.
    let mut tgt = Daemon::start(&net, Side::Tgt, &dirs.tgt_data, Some(&wrong));
    let mut src = Daemon::start(&net, Side::Src, &dirs.src_data, Some(&dirs.secret));
    create_job(&src, &dirs, &[]);
    src.job(&["start", JOB]).ok();
    let refused = |src: &Daemon, tgt: &Daemon, case: &str, wording: &str| {
        let doc =
            src.wait_for(JOB, &format!("the refusal ({case})"), Duration::from_secs(30), |d| {
                !d["fault"].is_null()
            });
        let fault = doc["fault"].as_str().unwrap_or_default().to_string();
        println!("auth, {case}: state {}, fault: {fault}", doc["state"]);
        assert_eq!(doc["state"], "Error", "{case}: {doc}");
        assert!(connection(&doc).is_none(), "{case}: the job did not connect: {doc}");
        assert!(fault.contains(wording), "{case}: the fault says why ({wording:?}): {fault}");
        assert!(
            doc["activity"].as_str().unwrap_or_default().contains(wording),
            "{case}: the activity says why: {doc}"
        );
        let log = src.job(&["log", JOB]).ok().stdout;
        assert!(log.contains("StartFailed") && log.contains(wording), "{case}: job log:\n{log}");
        let health = tgt.health();
        println!("auth, {case}: target health {health}");
        assert!(
            health["target"]["refused"].as_u64().unwrap_or(0) >= 1,
            "{case}: the target counts the refusal: {health}"
        );
        assert_eq!(health["target"]["sessions"], 0, "{case}: no session opened: {health}");
        assert!(
            fs::read_dir(&dirs.target).unwrap().next().is_none(),
            "{case}: nothing reached the replica"
        );
    };
    refused(&src, &tgt, "wrong secret on the target", "shared secret");

    // The target has no secret: it accepts only loopback peers and says how to fix it.
    tgt.sigterm();
    tgt.set_secret(None);
    tgt.restart();
    src.job(&["start", JOB]).ok();
    refused(&src, &tgt, "no secret on the target", "--secret-file");

    // The source has no secret and the target requires one.
    src.sigterm();
    src.set_secret(None);
    src.restart();
    tgt.sigterm();
    tgt.set_secret(Some(&dirs.secret));
    tgt.restart();
    src.job(&["start", JOB]).ok();
    refused(&src, &tgt, "no secret on the source", "shared secret");

    // The same secret on both sides: Protecting.
    src.sigterm();
    src.set_secret(Some(&dirs.secret));
    src.restart();
    src.job(&["start", JOB]).ok();
    let doc = src.wait_state(JOB, "Protecting", Duration::from_secs(60));
    assert!(doc["fault"].is_null(), "{doc}");
    wait_equal(&dirs.source, &dirs.target, Duration::from_secs(30), &src);
    let health = tgt.health();
    assert!(health["target"]["sessions"].as_u64().unwrap_or(0) >= 1, "{health}");
    println!(
        "auth, right secret: Protecting on connection {:?}; target health {health}",
        connection(&doc)
    );
}

// ----------------------------------------------------------------------------------------------
// 2. Bandwidth limiter

/// One reading: seconds since the start, bytes the source sent (after compression), file
/// bytes the target wrote.
#[derive(Clone, Copy, Debug)]
struct Reading {
    at: f64,
    sent: u64,
    written: u64,
}

fn read(setup: &Setup, t0: Instant) -> Reading {
    let doc = setup.src.show(JOB);
    let health = setup.tgt.health();
    Reading {
        at: t0.elapsed().as_secs_f64(),
        sent: number(&doc, "bytes_sent_compressed"),
        written: health["target"]["bytes_written"].as_u64().unwrap_or(0),
    }
}

/// Least-squares slope (bytes per second) of `value` over the readings.
fn slope(readings: &[Reading], value: impl Fn(&Reading) -> u64) -> f64 {
    let n = readings.len() as f64;
    let (mx, my) =
        readings.iter().fold((0.0, 0.0), |(x, y), r| (x + r.at / n, y + value(r) as f64 / n));
    let (mut num, mut den) = (0.0, 0.0);
    for r in readings {
        num += (r.at - mx) * (value(r) as f64 - my);
        den += (r.at - mx) * (r.at - mx);
    }
    num / den
}

/// Samples every second for `window`; returns the readings.
fn sample(setup: &Setup, t0: Instant, window: Duration) -> Vec<Reading> {
    let started = Instant::now();
    let mut readings = vec![read(setup, t0)];
    while started.elapsed() < window {
        let next = Duration::from_secs(readings.len() as u64);
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        readings.push(read(setup, t0));
    }
    readings
}

fn check_rate(what: &str, readings: &[Reading], limit: f64) -> f64 {
    let first = readings.first().unwrap();
    let last = readings.last().unwrap();
    let sent = (last.sent - first.sent) as f64 / (last.at - first.at);
    let written = slope(readings, |r| r.written);
    let sent_slope = slope(readings, |r| r.sent);
    println!(
        "limiter, {what}: limit {:.3} MB/s; over {:.1} s the target wrote {:.3} MB/s ({:+.1} %), the source sent {:.3} MB/s after compression ({:+.1} %; slope {:.3} MB/s)",
        limit / 1e6,
        last.at - first.at,
        written / 1e6,
        (written / limit - 1.0) * 100.0,
        sent / 1e6,
        (sent / limit - 1.0) * 100.0,
        sent_slope / 1e6,
    );
    for (name, rate) in [("target bytes written", written), ("bytes_sent_compressed", sent)] {
        assert!(
            (rate / limit - 1.0).abs() <= 0.10,
            "{what}: {name} ran at {:.3} MB/s, more than 10 % away from {:.3} MB/s; readings: {readings:?}",
            rate / 1e6,
            limit / 1e6
        );
    }
    written
}

#[test]
fn bandwidth_limiter_holds_the_rate_and_follows_a_change() {
    let _serial = serial();
    let (first, second) = if long() {
        (Duration::from_secs(60), Duration::from_secs(20))
    } else {
        (Duration::from_secs(30), Duration::from_secs(8))
    };
    // Enough incompressible data for both windows and the warm-ups: 2 MB/s × (first + 4 s)
    // + 4 MB/s × (second + 3 s), with a margin.
    let needed = 2e6 * (first.as_secs_f64() + 4.0) + 4e6 * (second.as_secs_f64() + 3.0);
    let files = (needed * 1.15 / 4e6).ceil() as usize;
    let net = Net::new();
    let dirs = Dirs::new("limiter");
    let bytes = make_tree(&dirs.source, files, 4_000_000, 21);
    let setup = Setup::new(net, dirs, &["--bandwidth", "2MB"]);
    let t0 = Instant::now();
    setup.src.wait_state(JOB, "Mirroring", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(4));
    let at_two = sample(&setup, t0, first);
    let two = check_rate("--bandwidth 2MB", &at_two, 2e6);

    setup.src.job(&["set-bandwidth", JOB, "--bandwidth", "4MB"]).ok();
    let doc = setup.src.show(JOB);
    assert!(doc["bandwidth_limit"].as_str().unwrap_or_default().contains("4000000"), "{doc}");
    std::thread::sleep(Duration::from_secs(3));
    let at_four = sample(&setup, t0, second);
    let four = check_rate("set-bandwidth 4MB while running", &at_four, 4e6);
    assert_eq!(setup.src.show(JOB)["state"], "Mirroring", "the windows fell inside the mirror");
    println!(
        "limiter: {:.1} MB of incompressible data; the rate followed the change {:.2}x (wanted 2x)",
        bytes as f64 / 1e6,
        four / two
    );

    setup.src.job(&["set-bandwidth", JOB, "--bandwidth", "unlimited"]).ok();
    setup.protecting(Duration::from_secs(120));
    setup.converge(Duration::from_secs(60));
}

// ----------------------------------------------------------------------------------------------
// 3. Throughput

#[test]
fn initial_mirror_fills_a_50ms_100mbit_link() {
    let _serial = serial();
    const RATE: u64 = 100_000_000;
    let shape =
        Shape { delay: Duration::from_millis(50), loss_percent: 0.0, rate_bits: Some(RATE) };
    let net = Net::shaped(shape, shape);
    println!("throughput: link {shape} each way ({:?})", net.emulation);
    let dirs = Dirs::new("throughput");
    let files = if long() { 100 } else { 50 };
    let bytes = make_tree(&dirs.source, files, 4_000_000, 31);
    let tgt = Daemon::start(&net, Side::Tgt, &dirs.tgt_data, Some(&dirs.secret));
    let src = Daemon::start(&net, Side::Src, &dirs.src_data, Some(&dirs.secret));
    create_job(&src, &dirs, &[]);
    let started = chrono::Utc::now();
    src.job(&["start", JOB]).ok();
    let doc = src.wait_state(JOB, "Protecting", Duration::from_secs(300));
    let ended = chrono::DateTime::parse_from_rfc3339(doc["mirror_ended_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let took = (ended - started).num_microseconds().unwrap() as f64 / 1e6;
    let rate = bytes as f64 / took;
    let fraction = rate * 8.0 / RATE as f64;
    println!(
        "throughput: initial mirror of {:.1} MB over {shape}: {took:.2} s from `job start` to mirror_ended_at = {:.2} MB/s = {:.1} % of the link rate (the mirror itself: {} ms)",
        bytes as f64 / 1e6,
        rate / 1e6,
        fraction * 100.0,
        doc["last_mirror_duration_ms"]
    );
    assert!(
        fraction >= 0.8,
        "the initial mirror reached {:.1} % of the link rate",
        fraction * 100.0
    );
    if let Some(raw) = net.raw_tcp(bytes) {
        let raw_rate = bytes as f64 / raw.as_secs_f64();
        println!(
            "throughput: one plain TCP connection over the same link moves the same {:.1} MB in {:.2} s = {:.2} MB/s = {:.1} % of the link rate; the mirror reached {:.1} % of that",
            bytes as f64 / 1e6,
            raw.as_secs_f64(),
            raw_rate / 1e6,
            raw_rate * 8.0 / RATE as f64 * 100.0,
            rate / raw_rate * 100.0
        );
    }
    wait_equal(&dirs.source, &dirs.target, Duration::from_secs(60), &src);
    if let Some(stats) = net.wire_stats() {
        println!("throughput: the wire carried {stats}");
    }
    drop(tgt);
}

// ----------------------------------------------------------------------------------------------
// 4. Link cut

#[test]
fn link_cut_longer_than_dead_link_detection_then_reconnect_and_drain() {
    let _serial = serial();
    let cut_for = Duration::from_secs(if long() { 60 } else { 30 });
    let net = Net::new();
    let dirs = Dirs::new("cut");
    make_tree(&dirs.source, 10, 200_000, 41);
    let setup = Setup::new(net, dirs, &[]);
    setup.protecting(Duration::from_secs(60));
    let mut writer =
        Writer::start(&setup.dirs.source.join("live"), Duration::from_millis(40), 48 * 1024, 42);
    std::thread::sleep(Duration::from_secs(3));
    let before = setup.src.show(JOB);
    let old = connection(&before);
    assert!(old.is_some(), "connected before the cut: {before}");
    let seq_before = setup.last_seq();

    setup.net.cut();
    let cut_at = Instant::now();
    let mut disconnected: Option<(f64, u64)> = None;
    let mut queue_end = 0;
    while cut_at.elapsed() < cut_for {
        let doc = setup.src.show(JOB);
        queue_end = number(&doc, "replication_queue_bytes");
        if doc["state"] == "Disconnected" && disconnected.is_none() {
            disconnected = Some((secs(cut_at.elapsed()), queue_end));
            assert!(connection(&doc).is_none(), "no connection while Disconnected: {doc}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let Some((detected_after, queue_at_disconnect)) = disconnected else {
        panic!(
            "the job never went Disconnected during a {} s cut: {}",
            cut_for.as_secs(),
            setup.src.show(JOB)
        );
    };
    assert!(
        queue_end > queue_at_disconnect,
        "the replication queue grows while disconnected ({queue_at_disconnect} → {queue_end} bytes)"
    );

    setup.net.restore();
    let restored = Instant::now();
    let written = writer.stop();
    let (doc, reconnected) = setup.reconnected_and_drained(old, Duration::from_secs(120));
    let drained = restored.elapsed();
    let reconnected = reconnected.map_or(f64::NAN, |at| secs(at - restored));
    println!(
        "link cut: {} s cut; Disconnected {detected_after:.1} s after the cut (dead-link detection); the queue grew from {queue_at_disconnect} to {queue_end} bytes while disconnected; restore → reconnected {reconnected:.1} s (connection {} → {}); restore → queue drained {:.1} s; writer made {} changes ({} bytes)",
        cut_for.as_secs(),
        old.unwrap(),
        connection(&doc).unwrap(),
        secs(drained),
        written.changes,
        written.bytes
    );
    setup.converge(Duration::from_secs(60));
    let after = events_after(&setup.src.history(JOB), seq_before);
    let names: Vec<&str> = after.iter().map(|e| e.name.as_str()).collect();
    assert!(
        names.contains(&"ConnectionLost") && names.contains(&"Reconnected"),
        "{}",
        describe(&after)
    );
    assert!(
        !names.contains(&"MirrorStarted") && !names.contains(&"QueueExhausted"),
        "nothing was lost, so no remirror:\n{}",
        describe(&after)
    );
}

// ----------------------------------------------------------------------------------------------
// 5. Queue exhausted

#[test]
fn queue_exhausted_during_a_cut_remirrors_differentially_after_reconnect() {
    let _serial = serial();
    let net = Net::new();
    let dirs = Dirs::new("exhausted");
    make_tree(&dirs.source, 10, 100_000, 51);
    let setup = Setup::new(net, dirs, &["--queue-memory", "1MiB", "--disk-queue", "disabled"]);
    let doc = setup.protecting(Duration::from_secs(60));
    let old = connection(&doc);
    let seq_before = setup.last_seq();

    setup.net.cut();
    // 3 MiB of changes while the link is down: two 256 KiB files rewritten again and again.
    // What differs at the end is 512 KiB, so the remirror itself fits in the 1 MiB queue (a
    // remirror that does not fit is `mirror_larger_than_a_memory_only_queue_converges`).
    for i in 0..12 {
        let path = setup.dirs.source.join(format!("burst/b{}.bin", i % 2));
        write(&path, &random_bytes(500 + i, 256 * 1024));
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let exhausted = loop {
        let history = setup.src.history(JOB);
        if let Some(event) =
            history.iter().find(|e| e.seq > seq_before && e.name == "QueueExhausted")
        {
            break event.seq;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no QueueExhausted after writing 3 MiB of changes into a 1 MiB queue:\n{}",
            describe(&events_after(&history, seq_before))
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let doc = setup.src.wait_state(JOB, "Disconnected", Duration::from_secs(60));
    assert!(connection(&doc).is_none(), "auto-disconnected: {doc}");
    println!(
        "queue exhausted: recorded at seq {exhausted}; the job is {} ({})",
        doc["state"], doc["activity"]
    );
    // Changes keep coming while the queue is gone: the remirror must pick them up.
    write(&setup.dirs.source.join("burst/after.txt"), b"written after the queue was exhausted\n");
    fs::remove_file(setup.dirs.source.join("d0/s0/f0000.bin")).unwrap();
    std::thread::sleep(Duration::from_secs(2));

    setup.net.restore();
    let restored = Instant::now();
    let (doc, _) = setup.reconnected_and_drained(old, Duration::from_secs(120));
    setup.converge(Duration::from_secs(60));
    let took = restored.elapsed();
    let after = events_after(&setup.src.history(JOB), exhausted);
    let names: Vec<&str> = after.iter().map(|e| e.name.as_str()).collect();
    let remirrors: Vec<(String, String)> =
        after.iter().filter(|e| e.name == "MirrorStarted").map(mirror_kind).collect();
    assert_eq!(
        remirrors,
        [("Differential".to_string(), "AutoRemirror".to_string())],
        "one differential auto-remirror:\n{}",
        describe(&after)
    );
    let reconnect = names.iter().position(|n| *n == "Reconnected");
    let mirror = names.iter().position(|n| *n == "MirrorStarted");
    assert!(
        reconnect.is_some() && reconnect < mirror,
        "reconnect, then remirror:\n{}",
        describe(&after)
    );
    assert_eq!(
        names.iter().filter(|n| **n == "QueueExhausted").count(),
        0,
        "the remirror fits the queue:\n{}",
        describe(&after)
    );
    println!(
        "queue exhausted: reconnected on connection {} and ran one differential auto-remirror; converged {:.1} s after the restore",
        connection(&doc).unwrap(),
        secs(took)
    );
}

/// A mirror bigger than a memory-only queue: the queue must hold the mirror back (as it does
/// with the default 1 GiB queue), not exhaust, auto-disconnect and remirror over and over.
#[test]
fn mirror_larger_than_a_memory_only_queue_neither_exhausts_nor_diverges() {
    let _serial = serial();
    let net = Net::new();
    let dirs = Dirs::new("small-queue");
    let bytes = make_tree(&dirs.source, 20, 256 * 1024, 55);
    let setup = Setup::new(net, dirs, &["--queue-memory", "1MiB", "--disk-queue", "disabled"]);
    setup.protecting(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    let history = setup.src.history(JOB);
    let exhausted = history.iter().filter(|e| e.name == "QueueExhausted").count();
    let doc = setup.src.show(JOB);
    let diverged = compare_trees(&setup.dirs.source, &setup.dirs.target);
    println!(
        "small queue: a {:.1} MB initial mirror through a 1 MiB memory-only queue: {exhausted} QueueExhausted; the job is {} / {} / target {}; replica: {diverged:?}",
        bytes as f64 / 1e6,
        doc["state"],
        doc["health"],
        doc["target_data_state"],
    );
    assert!(
        diverged.is_ok(),
        "the job says {} / {} / target {}, but the replica differs: {}\n{}",
        doc["state"],
        doc["health"],
        doc["target_data_state"],
        diverged.unwrap_err(),
        describe(&history)
    );
    assert_eq!(
        exhausted,
        0,
        "the mirror's own traffic exhausted the queue {exhausted} times:\n{}",
        describe(&history)
    );
}

// ----------------------------------------------------------------------------------------------
// 6. Clean target restart

#[test]
fn target_restarted_cleanly_resumes_without_remirror() {
    let _serial = serial();
    let net = Net::new();
    let dirs = Dirs::new("tgt-restart");
    make_tree(&dirs.source, 10, 200_000, 61);
    let mut setup = Setup::new(net, dirs, &[]);
    let doc = setup.protecting(Duration::from_secs(60));
    let old = connection(&doc);
    let mut writer =
        Writer::start(&setup.dirs.source.join("live"), Duration::from_millis(40), 32 * 1024, 62);
    std::thread::sleep(Duration::from_secs(3));
    let seq_before = setup.last_seq();
    let status = setup.tgt.sigterm();
    assert!(status.success(), "SIGTERM stops the target cleanly: {status}");
    std::thread::sleep(Duration::from_secs(2));
    setup.tgt.restart();
    std::thread::sleep(Duration::from_secs(2));
    writer.stop();
    let (doc, _) = setup.reconnected_and_drained(old, Duration::from_secs(120));
    setup.converge(Duration::from_secs(60));
    let after = events_after(&setup.src.history(JOB), seq_before);
    assert!(after.iter().any(|e| e.name == "Reconnected"), "{}", describe(&after));
    assert!(
        !after.iter().any(|e| e.name == "MirrorStarted"),
        "a clean target restart needs no remirror:\n{}",
        describe(&after)
    );
    // The target resumed: its new session opened at the sequence it had made durable.
    let log = plain(&setup.tgt.log_text());
    let opened: Vec<&str> =
        log.lines().filter(|l| l.contains("replication session opened")).collect();
    let last = opened.last().expect("the target logs its sessions");
    let field = |name: &str| -> u64 {
        last.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(field("last_applied") > 0, "the restarted target resumed from what it had: {last}");
    assert!(
        field("resume_from") <= field("last_applied") + 1,
        "the source resends from its last acknowledged operation, which the target has: {last}"
    );
    println!(
        "clean target restart: reconnected on connection {}, no remirror; the target reopened at last_applied={} (resume_from={})",
        connection(&doc).unwrap(),
        field("last_applied"),
        field("resume_from")
    );
}

// ----------------------------------------------------------------------------------------------
// 7. SIGKILL

#[test]
fn target_killed_then_restarted_converges() {
    let _serial = serial();
    let net = Net::new();
    let dirs = Dirs::new("tgt-kill");
    make_tree(&dirs.source, 10, 200_000, 71);
    let mut setup = Setup::new(net, dirs, &[]);
    let doc = setup.protecting(Duration::from_secs(60));
    let old = connection(&doc);
    let mut writer =
        Writer::start(&setup.dirs.source.join("live"), Duration::from_millis(40), 32 * 1024, 72);
    std::thread::sleep(Duration::from_secs(3));
    let seq_before = setup.last_seq();
    setup.tgt.sigkill();
    std::thread::sleep(Duration::from_secs(2));
    setup.tgt.restart();
    std::thread::sleep(Duration::from_secs(2));
    writer.stop();
    setup.reconnected_and_drained(old, Duration::from_secs(120));
    setup.converge(Duration::from_secs(90));
    let after = events_after(&setup.src.history(JOB), seq_before);
    let mirrors: Vec<(String, String)> =
        after.iter().filter(|e| e.name == "MirrorStarted").map(mirror_kind).collect();
    assert!(
        mirrors.iter().all(|(kind, _)| kind == "Differential"),
        "at most a differential remirror after the target was killed:\n{}",
        describe(&after)
    );
    println!("target SIGKILL: converged; mirrors after the kill: {mirrors:?}");
}

#[test]
fn source_killed_then_restarted_recovers_with_a_differential_mirror() {
    let _serial = serial();
    let net = Net::new();
    let dirs = Dirs::new("src-kill");
    make_tree(&dirs.source, 10, 200_000, 73);
    let mut setup = Setup::new(net, dirs, &[]);
    setup.protecting(Duration::from_secs(60));
    let mut writer =
        Writer::start(&setup.dirs.source.join("live"), Duration::from_millis(40), 32 * 1024, 74);
    std::thread::sleep(Duration::from_secs(3));
    let seq_before = setup.last_seq();
    setup.src.sigkill();
    std::thread::sleep(Duration::from_secs(2)); // changes made now are seen by nobody
    setup.src.restart();
    std::thread::sleep(Duration::from_secs(2));
    writer.stop();
    setup.reconnected_and_drained(None, Duration::from_secs(120));
    setup.converge(Duration::from_secs(90));
    let after = events_after(&setup.src.history(JOB), seq_before);
    let recovered = after
        .iter()
        .position(|e| e.name == "Recovered")
        .unwrap_or_else(|| panic!("no Recovered after the restart:\n{}", describe(&after)));
    assert_eq!(after[recovered].fields()["remirror"], true, "{}", describe(&after));
    let mirror = after[recovered..]
        .iter()
        .find(|e| e.name == "MirrorStarted")
        .unwrap_or_else(|| panic!("no mirror after Recovered:\n{}", describe(&after)));
    assert_eq!(mirror_kind(mirror).0, "Differential", "{}", describe(&after));
    println!(
        "source SIGKILL: Recovered (remirror) then a {:?} mirror; converged",
        mirror_kind(mirror)
    );
}

/// A connection id names one connection in a job's history: a source restarted cleanly must
/// not number its next connection 1 again.
#[test]
fn connection_ids_stay_unique_across_a_source_restart() {
    let _serial = serial();
    let net = Net::new();
    let dirs = Dirs::new("conn-id");
    make_tree(&dirs.source, 4, 50_000, 75);
    let mut setup = Setup::new(net, dirs, &[]);
    let before = connection(&setup.protecting(Duration::from_secs(60)));
    setup.src.sigterm();
    setup.src.restart();
    let (after, _) = setup.reconnected_and_drained(None, Duration::from_secs(60));
    let ids: Vec<u64> = setup
        .src
        .history(JOB)
        .iter()
        .filter(|e| e.name == "StartSucceeded" || e.name == "Reconnected")
        .filter_map(|e| e.fields()["connection"]["id"].as_u64())
        .collect();
    println!(
        "connection ids: before the restart {before:?}, after {:?}; history: {ids:?}",
        connection(&after)
    );
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a connection id was used twice in one history: {ids:?}");
}

// ----------------------------------------------------------------------------------------------
// 8. Lossy, high-latency link

#[test]
fn mirror_and_replication_converge_over_200ms_with_5_percent_loss() {
    let _serial = serial();
    let lossy = Shape { delay: Duration::from_millis(200), loss_percent: 5.0, rate_bits: None };
    let net = Net::shaped(lossy, Shape::default());
    println!("lossy link: {lossy} from source to target ({:?})", net.emulation);
    let dirs = Dirs::new("lossy");
    let (files, size) = if long() { (60, 500_000) } else { (20, 500_000) };
    let bytes = make_tree(&dirs.source, files, size, 81);
    let started = Instant::now();
    let setup = Setup::new(net, dirs, &[]);
    println!(
        "lossy link: a TCP connect takes {:.0} ms",
        setup.net.connect_time(netns::REPLICATION_PORT).as_secs_f64() * 1000.0
    );
    setup.protecting(Duration::from_secs(600));
    let mirrored = started.elapsed();
    setup.converge(Duration::from_secs(60));
    let mut writer =
        Writer::start(&setup.dirs.source.join("live"), Duration::from_millis(100), 16 * 1024, 82);
    std::thread::sleep(Duration::from_secs(8));
    let written = writer.stop();
    let took = setup.converge(Duration::from_secs(300));
    let doc = setup.src.show(JOB);
    println!(
        "lossy link: mirror of {:.1} MB: Protecting {:.1} s after the daemons started (the mirror itself: {} ms, {:.0} KB/s); replication of {} changes ({} bytes) converged {:.1} s after the writer stopped; state {}",
        bytes as f64 / 1e6,
        secs(mirrored),
        doc["last_mirror_duration_ms"],
        bytes as f64 / doc["last_mirror_duration_ms"].as_f64().unwrap_or(f64::NAN),
        written.changes,
        written.bytes,
        secs(took),
        doc["state"]
    );
    assert_eq!(doc["state"], "Protecting", "{doc}");
    if let Some(stats) = setup.net.wire_stats() {
        println!("lossy link: the wire carried {stats}");
    }
}

// ----------------------------------------------------------------------------------------------
// 9. Port scan, half-open connections

#[test]
fn port_scan_and_half_open_connections_do_not_block_a_real_job() {
    let _serial = serial();
    let net = Net::new();
    let dirs = Dirs::new("scan");
    make_tree(&dirs.source, 6, 100_000, 91);
    let tgt = Daemon::start(&net, Side::Tgt, &dirs.tgt_data, Some(&dirs.secret));
    let src = Daemon::start(&net, Side::Src, &dirs.src_data, Some(&dirs.secret));
    let port = tgt.listen().rsplit_once(':').unwrap().1.to_string();
    let to = format!("/dev/tcp/{}/{port}", netns::TGT_ADDR);
    // Twenty connections that send nothing, one that sends an HTTP request, one that announces
    // a frame and stalls in the middle of it; all stay open.
    net.spawn_bash(
        Side::Src,
        &format!("for i in $(seq 1 20); do exec {{fd}}<>{to} || exit 1; done; sleep 300"),
    );
    net.spawn_bash(
        Side::Src,
        &format!("exec 3<>{to}; printf 'GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3; sleep 300"),
    );
    net.spawn_bash(
        Side::Src,
        &format!("exec 3<>{to}; printf '\\x00\\x00\\x00\\x40abc' >&3; sleep 300"),
    );
    // A connect scan of the ports around it.
    let scan = net.hosts.bash(
        Side::Src,
        &format!(
            "open=0; for p in $(seq 6300 6340); do if timeout 2 bash -c \"exec 3<>/dev/tcp/{}/$p\" 2>/dev/null; then open=$((open+1)); fi; done; echo $open",
            netns::TGT_ADDR
        ),
    );
    println!("port scan: {} port(s) open on the target host", scan.stdout.trim());
    std::thread::sleep(Duration::from_secs(1));
    let established = net.hosts.run(Side::Src, "ss", &["-tn", "state", "established"]);
    let held = established.stdout.lines().filter(|l| l.contains(&format!(":{port}"))).count();
    println!("port scan: {held} idle or garbage connections held open to the replication port");

    let opened = Instant::now();
    create_job(&src, &dirs, &[]);
    src.job(&["start", JOB]).ok();
    src.wait_state(JOB, "Protecting", Duration::from_secs(60));
    let took = opened.elapsed();
    wait_equal(&dirs.source, &dirs.target, Duration::from_secs(30), &src);
    write(&dirs.source.join("after-scan.txt"), b"replicated while the scan's connections hang\n");
    wait_equal(&dirs.source, &dirs.target, Duration::from_secs(30), &src);
    let health = tgt.health();
    println!(
        "port scan: the job was Protecting {:.1} s after its creation; target health {health}",
        secs(took)
    );
    assert!(
        took < Duration::from_secs(9),
        "the job waited on the hanging connections (the target's handshake timeout is 10 s): {:.1} s",
        secs(took)
    );
    assert!(health["target"]["sessions"].as_u64().unwrap_or(0) >= 1, "{health}");
    // The target gives each connection 10 s to finish the handshake: then the silent ones are
    // dropped and counted as refused, and only the job's connection stays.
    let started = Instant::now();
    loop {
        let established = net.hosts.run(Side::Src, "ss", &["-tn", "state", "established"]);
        let left = established.stdout.lines().filter(|l| l.contains(&format!(":{port}"))).count();
        if left <= 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{left} connections to the replication port still open 30 s after the job connected:\n{}",
            established.stdout
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let health = tgt.health();
    println!(
        "port scan: {:.1} s after the job connected only its own connection is left; target health {health}",
        secs(started.elapsed())
    );
    assert!(health["target"]["refused"].as_u64().unwrap_or(0) >= 21, "{health}");
    write(&dirs.source.join("after-timeouts.txt"), b"still replicating\n");
    wait_equal(&dirs.source, &dirs.target, Duration::from_secs(30), &src);
    assert_eq!(src.show(JOB)["state"], "Protecting");
    net.kill_helpers();
}
