//! Bad input on the command line gets a clear one-line error, exit status 2, and changes
//! nothing: no event is appended, no file is written.
//!
//! Method: a real daemon on a temporary data directory; each bad command runs the real binary;
//! the number of events is read before and after through the events API and through
//! `understudy replay` (which asks the running daemon), and must not move. `replay` on folders
//! that are not data directories runs with no daemon at all.

#![allow(clippy::unwrap_used)] // a test fails by panicking, with the value in the message

mod support;

use std::path::Path;

use support::{Daemon, bad_input, understudy};

/// Total events according to `understudy replay --data-dir D` (the EVENTS column).
fn replay_event_total(daemon: &Daemon) -> u64 {
    let out = daemon.replay(&["--json"]).ok();
    out.json()
        .as_array()
        .expect("a list of jobs")
        .iter()
        .map(|j| j["seq"].as_u64().expect("a seq"))
        .sum()
}

/// Runs `check` and asserts no event was appended meanwhile.
#[track_caller]
fn appends_nothing(daemon: &Daemon, what: &str, check: impl FnOnce()) {
    let (before, before_replay) = (daemon.event_count(), replay_event_total(daemon));
    check();
    let (after, after_replay) = (daemon.event_count(), replay_event_total(daemon));
    assert_eq!(before, after, "{what}: the events API shows {before} events before, {after} after");
    assert_eq!(
        before_replay, after_replay,
        "{what}: `understudy replay` shows {before_replay} events before, {after_replay} after"
    );
}

#[test]
fn unknown_jobs_and_commands_the_state_does_not_allow() {
    let dir = support::tempdir("bad-jobs");
    let source = dir.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("a.txt"), b"a").unwrap();
    let daemon = Daemon::start(&dir.path().join("data"));
    let id = daemon.create(&[
        "--name",
        "idle",
        "--source",
        source.to_str().unwrap(),
        "--target",
        dir.path().join("target").to_str().unwrap(),
    ]);
    let shown = daemon.show("idle");
    assert_eq!(shown["state"], "Stopped");
    let allowed: Vec<String> = shown["allowed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_ascii_lowercase())
        .collect();

    appends_nothing(&daemon, "unknown jobs", || {
        let line = bad_input(&daemon.job(&["pause", "no-such-job"]));
        assert!(line.contains("no-such-job"), "the message should name the job: {line}");
        let line = bad_input(&daemon.job(&["show", "no-such-job"]));
        assert!(line.contains("no-such-job"), "{line}");
        let line = bad_input(&daemon.job(&["start", "no-such-job"]));
        assert!(line.contains("no-such-job"), "{line}");
        // A well-formed id of no job.
        let ghost = "01a2089c-0000-7000-8000-000000000000";
        let line = bad_input(&daemon.job(&["stop", ghost]));
        assert!(line.contains(ghost), "the message should name the id: {line}");
        let line = bad_input(&daemon.job(&["log", ghost]));
        assert!(line.contains(ghost), "{line}");
        bad_input(&daemon.events(&["--job", "no-such-job"]));
    });

    appends_nothing(&daemon, "commands a stopped job does not take", || {
        for command in ["pause", "cutover", "verify", "delete-orphans", "undo-failover", "reverse"]
        {
            let line = bad_input(&daemon.job(&[command, "idle"]));
            assert!(
                line.contains("Stopped"),
                "`job {command}` on a stopped job should name the state: {line}"
            );
            for a in &allowed {
                assert!(
                    line.to_ascii_lowercase().replace('-', "").contains(a.as_str()),
                    "`job {command}` on a stopped job should list the allowed commands ({allowed:?}): {line}"
                );
            }
        }
        let line = bad_input(&daemon.job(&["mirror", &id, "pause"]));
        assert!(line.contains("Stopped"), "{line}");
    });

    appends_nothing(&daemon, "a wait for a state that does not exist", || {
        let line =
            bad_input(&daemon.job(&["wait", "idle", "--state", "Sleeping", "--timeout", "1"]));
        assert!(line.contains("Sleeping"), "{line}");
    });
    // A wait that times out is a failed check (exit 1), not bad input.
    let out = daemon.job(&["wait", "idle", "--state", "Protecting", "--timeout", "1"]);
    assert_eq!(out.code, 1, "`{}`: {}", out.command, out.stderr);
    assert!(out.stderr.contains("did not reach Protecting"), "{}", out.stderr);
    // Everything refused: the job is where it was.
    assert_eq!(daemon.show("idle")["state"], "Stopped");
    assert_eq!(daemon.show(&id)["seq"], shown["seq"]);
}

#[test]
fn invalid_specs_are_refused_at_create() {
    let dir = support::tempdir("bad-specs");
    let source = dir.path().join("source");
    std::fs::create_dir_all(source.join("inner")).unwrap();
    std::fs::write(source.join("a.txt"), b"a").unwrap();
    let daemon = Daemon::start(&dir.path().join("data"));
    let s = source.to_str().unwrap().to_string();
    let t = dir.path().join("target").to_str().unwrap().to_string();
    daemon.create(&["--name", "taken", "--source", &s, "--target", &t]);
    let inside = format!("{s}/inner/replica");
    let (t2, t3) = (format!("{t}2"), format!("{t}3"));
    let missing = dir.path().join("does-not-exist");
    let missing = missing.to_str().unwrap();

    // (what, arguments, words the one-line message must contain)
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        ("a missing source", vec!["--name", "x", "--target", &t], vec!["source"]),
        (
            "the source as the target",
            vec!["--name", "x", "--source", &s, "--target", &s],
            vec!["target is the source"],
        ),
        (
            "a target inside the source",
            vec!["--name", "x", "--source", &s, "--target", &inside],
            vec!["inside the source"],
        ),
        (
            "a bandwidth under 3500",
            vec!["--name", "x", "--source", &s, "--target", &t, "--bandwidth", "3499"],
            vec!["3500", "3499"],
        ),
        (
            "overlapping bandwidth windows",
            vec![
                "--name",
                "x",
                "--source",
                &s,
                "--target",
                &t,
                "--bandwidth-window",
                "everyday 06:00-18:00 5000",
                "--bandwidth-window",
                "weekdays 09:00-10:00 5000",
            ],
            vec!["overlap"],
        ),
        (
            "a source that does not exist",
            vec!["--name", "x", "--source", missing, "--target", &t],
            vec!["does-not-exist"],
        ),
        (
            "a relative target",
            vec!["--name", "x", "--source", &s, "--target", "relative/dir"],
            vec!["relative/dir"],
        ),
        (
            "a malformed window",
            vec![
                "--name",
                "x",
                "--source",
                &s,
                "--target",
                &t,
                "--bandwidth-window",
                "someday 9-5 1",
            ],
            vec!["someday 9-5 1"],
        ),
        (
            "a name already taken",
            vec!["--name", "taken", "--source", &s, "--target", &t2],
            vec!["taken"],
        ),
        ("no name", vec!["--source", &s, "--target", &t3], vec!["name"]),
    ];
    appends_nothing(&daemon, "invalid specs", || {
        for (what, args, words) in &cases {
            let mut all = vec!["create"];
            all.extend_from_slice(args);
            let line = bad_input(&daemon.job(&all));
            for word in words {
                assert!(line.contains(word), "{what}: the message should mention {word:?}: {line}");
            }
        }
    });
    let list = daemon.job(&["list", "--json"]).ok().json();
    let names: Vec<&str> =
        list.as_array().unwrap().iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["taken"], "only the valid job exists");
    assert!(!Path::new(&inside).exists(), "a refused job must not create its target");
}

/// Lists a directory tree: paths and sizes, to see that nothing was written.
fn listing(root: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.push((entry.path().display().to_string(), meta.len()));
        }
    }
    out.sort();
    out
}

#[test]
fn replay_refuses_what_is_not_a_data_directory() {
    let dir = support::tempdir("bad-replay");
    // A folder with other files.
    let other = dir.path().join("photos");
    std::fs::create_dir_all(other.join("2024")).unwrap();
    std::fs::write(other.join("cat.jpg"), b"not a store").unwrap();
    std::fs::write(other.join("2024/dog.jpg"), b"not a store either").unwrap();
    // A folder whose events/ holds other files.
    let fake = dir.path().join("fake");
    std::fs::create_dir_all(fake.join("events")).unwrap();
    std::fs::write(fake.join("events/notes.txt"), b"hello").unwrap();
    // A folder whose events is a file.
    let file = dir.path().join("file");
    std::fs::create_dir_all(&file).unwrap();
    std::fs::write(file.join("events"), b"hello").unwrap();
    // A folder whose events/ is empty.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("events")).unwrap();

    for folder in [&other, &fake, &file, &empty] {
        let before = listing(folder);
        let out = understudy(&["replay", "--data-dir", folder.to_str().unwrap()]);
        let line = bad_input(&out);
        assert!(
            line.contains(folder.to_str().unwrap()),
            "the message should name the folder: {line}"
        );
        let out =
            understudy(&["replay", "--data-dir", folder.to_str().unwrap(), "some-job", "--json"]);
        bad_input(&out);
        assert_eq!(before, listing(folder), "replay must not write into {}", folder.display());
    }

    let missing = dir.path().join("missing");
    let line = bad_input(&understudy(&["replay", "--data-dir", missing.to_str().unwrap()]));
    assert!(line.contains("missing"), "{line}");
    assert!(!missing.exists(), "replay must not create the missing directory");
    // A file given as the data directory.
    let line =
        bad_input(&understudy(&["replay", "--data-dir", other.join("cat.jpg").to_str().unwrap()]));
    assert!(line.contains("cat.jpg"), "{line}");

    // A seq past the end of a job's history.
    let data = dir.path().join("simulated");
    let data = data.to_str().unwrap();
    understudy(&["simulate", "--seed", "1", "--jobs", "1", "--steps", "40", "--data-dir", data])
        .ok();
    let list = understudy(&["replay", "--data-dir", data, "--json"]).ok().json();
    let job = list[0]["id"].as_str().unwrap().to_string();
    let line = bad_input(&understudy(&["replay", "--data-dir", data, &job, "--at", "999999"]));
    assert!(line.contains("past its end"), "{line}");
}

#[test]
fn job_commands_without_a_daemon_say_how_to_reach_one() {
    let dir = support::tempdir("bad-nodaemon");
    std::fs::write(dir.path().join("token"), "x").unwrap();
    let api = format!("127.0.0.1:{}", support::free_port());
    let out =
        understudy(&["job", "--api", &api, "--data-dir", dir.path().to_str().unwrap(), "list"]);
    let line = bad_input(&out);
    assert!(line.contains(&api) && line.contains("understudy serve"), "{line}");
    // No token anywhere.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = understudy(&["job", "--api", &api, "--data-dir", empty.to_str().unwrap(), "list"]);
    let line = bad_input(&out);
    assert!(line.contains("token"), "{line}");
}

/// Usability: `--api` and `--data-dir` are documented as options of the job commands, but they
/// are accepted only between `job` and the subcommand (`understudy job --api A show X`), not
/// after it (`understudy job show X --api A`), which is where people write them.
#[test]
fn api_options_are_accepted_after_the_job_subcommand() {
    let dir = support::tempdir("bad-order");
    let daemon = Daemon::start(&dir.path().join("data"));
    let out = understudy(&[
        "job",
        "list",
        "--api",
        &daemon.api,
        "--data-dir",
        daemon.data_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "`{}`: {}", out.command, out.stderr);
}
