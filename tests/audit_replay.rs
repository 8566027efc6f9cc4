//! The audit (`understudy replay`) over histories the deterministic simulation writes: job
//! lists, timelines in the seeds' wording, JSON, `--at SEQ`, determinism of `simulate`, and
//! tamper detection (an edited, removed, reordered or truncated-at-the-end history is reported
//! as corrupt at the right seq, while untouched jobs still audit cleanly).
//!
//! Method: `understudy simulate --seed 3` writes a real sled history; a pristine copy is kept,
//! and each tampering runs on a fresh copy, opened with `understudy_store::SledEventStore`
//! (no daemon runs) and changed with its forensic helpers (`raw_event`, `raw_put_event`,
//! `raw_remove_event`); then the real binary audits it.

#![allow(clippy::unwrap_used)] // a test fails by panicking, with the value in the message

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Out, understudy};
use understudy_core::{JobId, Seq};
use understudy_store::SledEventStore;

const SEED: &str = "3";
const STEPS: &str = "1500";

fn simulate(seed: &str, dir: &Path) -> Out {
    understudy(&["simulate", "--seed", seed, "--steps", STEPS, "--data-dir", dir.to_str().unwrap()])
}

fn digest(out: &Out) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("history digest: "))
        .unwrap_or_else(|| panic!("no `history digest:` line in:\n{}", out.stdout))
        .trim()
        .to_string()
}

/// Runs `understudy replay --data-dir DIR ARGS…` with no daemon. sled releases its file lock a
/// moment after the tampering handle is dropped; a replay that meets the lock (and then tries
/// the API of a daemon that does not exist) is run again.
fn replay(dir: &Path, args: &[&str]) -> Out {
    let api = format!("127.0.0.1:{}", support::free_port());
    let mut all = vec!["replay", "--data-dir", dir.to_str().unwrap(), "--api", &api];
    all.extend_from_slice(args);
    let started = Instant::now();
    loop {
        let out = understudy(&all);
        let locked = out.stderr.contains("in use by another")
            || out.stderr.contains("cannot reach the understudy daemon");
        if !locked || started.elapsed() > Duration::from_secs(20) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The jobs of a history: (id, name, events), most events first.
fn jobs(dir: &Path) -> Vec<(String, String, u64)> {
    let list = replay(dir, &["--json"]).ok().json();
    let mut jobs: Vec<(String, String, u64)> = list
        .as_array()
        .expect("a JSON list")
        .iter()
        .map(|j| {
            assert!(j["corrupt"].is_null(), "a fresh simulation has no corrupt job: {j}");
            (
                j["id"].as_str().unwrap().to_string(),
                j["name"].as_str().unwrap().to_string(),
                j["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(j.2));
    jobs
}

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

/// A simulated history, written once per test that needs one.
fn simulated(label: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = support::tempdir(label);
    let data = dir.path().join("pristine");
    let out = simulate(SEED, &data).ok();
    assert!(
        out.stdout.lines().any(|l| l.starts_with("coverage: ")),
        "simulate should print a coverage line:\n{}",
        out.stdout
    );
    (dir, data)
}

#[test]
fn replay_lists_jobs_prints_timelines_json_and_the_state_at_a_seq() {
    let (_dir, data) = simulated("replay");
    let list = replay(&data, &[]).ok();
    let jobs = jobs(&data);
    assert!(jobs.len() >= 2, "the simulation makes several jobs: {}", list.stdout);
    assert!(list.stdout.starts_with("JOB"), "a header line: {}", list.stdout);
    for (id, name, events) in &jobs {
        let line = list.stdout.lines().find(|l| l.starts_with(id.as_str())).unwrap_or_else(|| {
            panic!("job {id} is not listed:\n{}", list.stdout);
        });
        assert!(
            line.contains(name.as_str()) && line.trim_end().ends_with(&events.to_string()),
            "{line}"
        );
    }

    // Timelines in the seeds' wording, by id and by name.
    let mut seen_mirror_line = false;
    for (id, name, events) in &jobs {
        let text = replay(&data, &[id]).ok().stdout;
        assert!(text.starts_with(&format!("job {id} ({name})")), "{text}");
        assert!(text.contains(&format!("state at seq {events}: ")), "{text}");
        seen_mirror_line |= text.lines().any(|l| {
            l.trim() == "Changing to MirroringState from ConnectedState in response to MirrorStartedEvent"
        });
        let by_name = replay(&data, &[name]).ok().stdout;
        assert_eq!(text, by_name, "replay by id and by name print the same");
    }
    assert!(
        seen_mirror_line,
        "some timeline shows the transition into mirroring in the seeds' wording"
    );

    // JSON, and the state at an earlier seq.
    let (id, _, events) = &jobs[0];
    let audit = replay(&data, &[id, "--json"]).ok().json();
    assert_eq!(audit["job"], id.as_str());
    assert!(audit["corrupt"].is_null());
    assert_eq!(audit["seq"].as_u64(), Some(*events));
    let timeline = audit["timeline"].as_array().expect("a timeline");
    assert_eq!(timeline.len() as u64, *events, "one timeline entry per event");
    for (i, entry) in timeline.iter().enumerate() {
        assert_eq!(
            entry["envelope"]["seq"].as_u64(),
            Some(i as u64 + 1),
            "the timeline is in seq order"
        );
    }
    // The state after each event, from the transition lines.
    let mut states = Vec::new();
    let mut current = String::from("Uninitialized");
    for entry in timeline {
        for line in entry["transitions"].as_array().unwrap() {
            let line = line.as_str().unwrap();
            if let Some(rest) = line.strip_prefix("Changing to ") {
                current =
                    rest.split_whitespace().next().unwrap().trim_end_matches("State").to_string();
            }
        }
        states.push(current.clone());
    }
    assert_eq!(audit["state"].as_str(), Some(states.last().unwrap().as_str()), "the final state");
    // Every seq where the state differs from the final one (a few of them).
    let final_state = states.last().unwrap().clone();
    let picks: Vec<usize> =
        (0..states.len()).filter(|&i| states[i] != final_state).step_by(7).take(4).collect();
    assert!(!picks.is_empty(), "the job changed state during its life");
    for i in picks {
        let seq = (i + 1).to_string();
        let text = replay(&data, &[id, "--at", &seq]).ok().stdout;
        assert!(
            text.contains(&format!("state at seq {seq}: {}\n", states[i])),
            "--at {seq} should show {}:\n{}",
            states[i],
            text.lines().rev().take(25).collect::<Vec<_>>().join("\n")
        );
        let at = replay(&data, &[id, "--at", &seq, "--json"]).ok().json();
        assert_eq!(at["seq"].as_u64(), Some(i as u64 + 1));
        assert_eq!(at["state"].as_str(), Some(states[i].as_str()));
        assert_eq!(at["timeline"].as_array().unwrap().len(), i + 1);
    }
}

#[test]
fn the_same_seed_writes_the_same_history() {
    let dir = support::tempdir("digest");
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    let first = simulate(SEED, &a).ok();
    let second = simulate(SEED, &b).ok();
    let other = simulate("5", &c).ok();
    assert_eq!(digest(&first), digest(&second), "seed {SEED} twice gives the same digest");
    assert_ne!(digest(&first), digest(&other), "another seed gives another digest");
    // The audits agree too, line for line (ids and times come from the seed).
    assert_eq!(replay(&a, &[]).ok().stdout, replay(&b, &[]).ok().stdout);
    // A directory that already holds a history is refused: the seed alone decides.
    let again = simulate(SEED, &a).code(2);
    assert!(again.stderr.contains("already holds a history"), "{}", again.stderr);
    assert_eq!(
        replay(&a, &[]).ok().stdout,
        replay(&b, &[]).ok().stdout,
        "the refused run wrote nothing"
    );
}

/// A fresh copy of the pristine history, with `tamper` applied to job `job` through the
/// store's forensic helpers.
fn tampered(
    pristine: &Path,
    root: &Path,
    label: &str,
    job: &str,
    tamper: impl FnOnce(&SledEventStore, JobId),
) -> PathBuf {
    let copy = root.join(label);
    copy_dir(pristine, &copy);
    {
        let store = SledEventStore::open(&copy.join("events")).expect("opening the copied store");
        tamper(&store, job.parse().expect("a job id"));
        store.flush().expect("flushing the tampering");
    }
    copy
}

/// Flips one digit of the envelope's `recorded_at` seconds: the value still decodes, only its
/// bytes (and so its hash) change.
fn edit_one_byte(bytes: &mut [u8]) {
    let key = bytes.windows(11).position(|w| w == b"recorded_at").expect("a recorded_at field");
    let t = key
        + bytes[key..]
            .windows(3)
            .position(|w| w[0].is_ascii_digit() && w[1] == b'T' && w[2].is_ascii_digit())
            .expect("an RFC 3339 time")
        + 1;
    let digit = t + 8; // THH:MM:SS: the seconds' units
    assert!(bytes[digit].is_ascii_digit(), "{:?}", String::from_utf8_lossy(&bytes[t..t + 12]));
    bytes[digit] = b'0' + (bytes[digit] - b'0' + 1) % 10;
}

#[track_caller]
fn assert_corrupt_at(out: &Out, job: &str, seq: u64, why: &str) {
    assert_eq!(
        out.code, 1,
        "`{}` should exit 1 for a corrupt history\nstdout: {}\nstderr: {}",
        out.command, out.stdout, out.stderr
    );
    let prefix = format!("understudy: history of job {job} is corrupt at seq {seq}: ");
    let line = out.stderr.lines().find(|l| l.starts_with("understudy: ")).unwrap_or_default();
    assert!(
        line.starts_with(&prefix),
        "`{}` should say {prefix:?}…, said: {}",
        out.command,
        out.stderr
    );
    assert!(line.len() > prefix.len(), "the message says why");
    assert!(line.contains(why), "the reason should mention {why:?}: {line}");
}

#[test]
fn tampering_is_detected_at_the_right_seq() {
    let (dir, pristine) = simulated("tamper");
    let jobs = jobs(&pristine);
    let (job, _, events) = jobs[0].clone();
    assert!(events >= 8, "the busiest job has enough events to tamper in the middle: {events}");
    let (other, _, other_events) = jobs[1].clone();
    let middle = events / 2;
    let before = replay(&pristine, &[&other]).ok().stdout;

    let check = |copy: &Path, seq: u64, why: &str| {
        let out = replay(copy, &[&job]);
        assert_corrupt_at(&out, &job, seq, why);
        let out = replay(copy, &[&job, "--json"]);
        assert_eq!(out.code, 1, "{}", out.stderr);
        let audit = out.json();
        let corrupt = audit["corrupt"].as_str().expect("the JSON audit says it is corrupt");
        assert!(
            corrupt.starts_with(&format!("history of job {job} is corrupt at seq {seq}: ")),
            "{corrupt}"
        );
        // The timeline shows what was verified before the break, never past it.
        assert!(
            audit["seq"].as_u64().unwrap() < seq,
            "the audit stops before seq {seq}: {}",
            audit["seq"]
        );
        // The listing marks the job and fails; the untouched job still audits cleanly.
        let list = replay(copy, &[]);
        assert_eq!(list.code, 1, "the listing fails on a corrupt history: {}", list.stdout);
        let row = list.stdout.lines().find(|l| l.starts_with(job.as_str())).unwrap();
        assert!(row.contains("CORRUPT"), "{row}");
        let clean = replay(copy, &[&other]).ok();
        assert_eq!(clean.stdout, before, "the untouched job {other} audits as before");
        assert!(clean.stdout.contains(&format!("state at seq {other_events}: ")));
    };

    // One byte of a middle event edited.
    let copy = tampered(&pristine, dir.path(), "edited", &job, |store, id| {
        let mut bytes = store.raw_event(id, Seq(middle)).unwrap().expect("the event");
        edit_one_byte(&mut bytes);
        store.raw_put_event(id, Seq(middle), bytes).unwrap();
    });
    check(&copy, middle, "edited");

    // A middle event removed.
    let copy = tampered(&pristine, dir.path(), "removed", &job, |store, id| {
        store.raw_remove_event(id, Seq(middle)).unwrap().expect("the event");
    });
    check(&copy, middle, "missing");

    // Two events swapped (reordered).
    let copy = tampered(&pristine, dir.path(), "swapped", &job, |store, id| {
        let a = store.raw_event(id, Seq(middle)).unwrap().unwrap();
        let b = store.raw_event(id, Seq(middle + 1)).unwrap().unwrap();
        store.raw_put_event(id, Seq(middle), b).unwrap();
        store.raw_put_event(id, Seq(middle + 1), a).unwrap();
    });
    check(&copy, middle, "reordered");

    // The last event edited: only the head record vouches for it.
    let copy = tampered(&pristine, dir.path(), "last", &job, |store, id| {
        let mut bytes = store.raw_event(id, Seq(events)).unwrap().unwrap();
        edit_one_byte(&mut bytes);
        store.raw_put_event(id, Seq(events), bytes).unwrap();
    });
    check(&copy, events, "edited");

    // The first event edited.
    let copy = tampered(&pristine, dir.path(), "first", &job, |store, id| {
        let mut bytes = store.raw_event(id, Seq(1)).unwrap().unwrap();
        edit_one_byte(&mut bytes);
        store.raw_put_event(id, Seq(1), bytes).unwrap();
    });
    check(&copy, 1, "edited");

    // The last event removed (a truncated history).
    let copy = tampered(&pristine, dir.path(), "truncated", &job, |store, id| {
        store.raw_remove_event(id, Seq(events)).unwrap().unwrap();
    });
    check(&copy, events, "missing");

    // Garbage instead of a middle event.
    let copy = tampered(&pristine, dir.path(), "garbage", &job, |store, id| {
        store.raw_put_event(id, Seq(middle), b"\xc1 not MessagePack").unwrap();
    });
    let out = replay(&copy, &[&job]);
    assert_corrupt_at(&out, &job, middle, "");

    // The pristine copy was never touched.
    let pristine_list: Value = replay(&pristine, &["--json"]).ok().json();
    assert!(pristine_list.as_array().unwrap().iter().all(|j| j["corrupt"].is_null()));
}

#[test]
fn a_daemon_quarantines_a_tampered_job_and_runs_the_others() {
    let dir = support::tempdir("quarantine");
    let data = dir.path().join("data");
    let mut daemon = support::Daemon::start(&data);
    let mut ids = Vec::new();
    for name in ["victim", "bystander"] {
        let source = dir.path().join(format!("source-{name}"));
        support::write(&source.join("a.txt"), name.as_bytes());
        let target = dir.path().join(format!("target-{name}"));
        ids.push(daemon.create(&[
            "--name",
            name,
            "--source",
            source.to_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ]));
        daemon.job(&["start", name]).ok();
    }
    for name in ["victim", "bystander"] {
        daemon.wait_state(name, "Protecting", support::LONG);
    }
    assert!(daemon.terminate().success());
    let events = jobs(&data).iter().find(|j| j.0 == ids[0]).unwrap().2;
    let middle = events / 2;
    {
        let store = SledEventStore::open(&data.join("events")).unwrap();
        let id: JobId = ids[0].parse().unwrap();
        let mut bytes = store.raw_event(id, Seq(middle)).unwrap().unwrap();
        edit_one_byte(&mut bytes);
        store.raw_put_event(id, Seq(middle), bytes).unwrap();
        store.flush().unwrap();
    }
    let offline = replay(&data, &[&ids[0]]);
    assert_corrupt_at(&offline, &ids[0], middle, "edited");

    // The daemon starts, sets the victim aside, and runs the bystander.
    let daemon = support::Daemon::start(&data);
    let victim = daemon.show(&ids[0]);
    assert!(victim["quarantine"].is_string(), "the tampered job is quarantined: {victim}");
    let refused = daemon.job(&["start", &ids[0]]);
    assert_eq!(refused.code, 2, "a quarantined job takes no command: {}", refused.stdout);
    daemon.wait_state("bystander", "Protecting", support::LONG);
    let source = dir.path().join("source-bystander");
    support::write(&source.join("b.txt"), b"after the restart");
    support::wait_equal(
        &source,
        &dir.path().join("target-bystander"),
        support::LONG,
        Some(&daemon),
    );
    // The audit through the daemon reports the same corruption.
    let online = daemon.replay(&[&ids[0]]);
    assert_corrupt_at(&online, &ids[0], middle, "edited");
    daemon.replay(&["bystander"]).ok();
}
