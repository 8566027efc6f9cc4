//! The failover monitor and failover from the target side, between two real daemons.
//!
//! Method: a source daemon and a target daemon (separate data directories, so separate engine
//! ids) on loopback; a files job from the source to the target with the monitor on and short
//! intervals. The target engine keeps its own record of the job (the replica job), whose
//! monitor watches the source; the source daemon is killed with SIGKILL to make it "fail".
//! Every check reads the real folders and the daemons' APIs.

mod support;

use std::fs;
use std::time::Duration;

use support::{Daemon, LONG, tempdir, wait_equal, write};

/// Creates and starts a monitored job from `source` to `target`; returns its id once both
/// engines' records of it are protecting.
fn protected_job(source: &Daemon, target: &Daemon, from: &str, to: &str, extra: &[&str]) -> String {
    let port = target.listen.rsplit(':').next().expect("host:port");
    let target_spec = format!("127.0.0.1:{port}:{to}");
    let mut args = vec![
        "--name",
        "monitored",
        "--source",
        from,
        "--target",
        &target_spec,
        "--monitor",
        "--monitor-interval",
        "1",
        "--failure-count",
        "3",
    ];
    args.extend_from_slice(extra);
    let id = source.create(&args);
    source.job(&["start", &id]).ok();
    source.wait_state(&id, "Protecting", LONG);
    target.wait_state(&id, "Protecting", LONG);
    id
}

#[test]
fn the_monitor_trips_then_the_user_fails_over_and_undoes_it() {
    let dirs = tempdir("failover");
    let (from, to) = (dirs.path().join("source"), dirs.path().join("target"));
    fs::create_dir_all(&from).unwrap();
    write(&from.join("a.txt"), b"first version");
    let mut source = Daemon::start(&dirs.path().join("engine-a"));
    let target = Daemon::start(&dirs.path().join("engine-b"));
    let id = protected_job(&source, &target, from.to_str().unwrap(), to.to_str().unwrap(), &[]);
    let replica = target.show(&id);
    assert!(replica["role"].as_str().unwrap().starts_with("replica"), "{replica}");
    write(&from.join("b.txt"), b"replicated before the failure");
    wait_equal(&from, &to, LONG, Some(&target));

    // Source-side work is refused on the target's record, with where to run it.
    let refused = target.job(&["pause", &id]).code(2);
    assert!(refused.stderr.contains("source engine"), "{}", refused.stderr);

    source.kill9();
    let tripped = target.wait_state(&id, "FailoverConditionMet", LONG);
    assert_eq!(tripped["health"], "Error", "{tripped}");
    let names = target.event_names(&id);
    assert!(names.iter().any(|n| n == "FailoverConditionMet"), "{names:?}");

    target.job(&["failover", &id]).ok();
    target.wait_state(&id, "FailedOver", LONG);
    wait_equal(&from, &to, LONG, Some(&target));

    // The failed-over replica is live: the source coming back must not overwrite it.
    write(&to.join("b.txt"), b"changed on the live replica");
    let source = {
        source.kill9();
        Daemon::start(&source.data_dir)
    };
    let refused = source.wait_state(&id, "Error", LONG);
    assert!(refused["fault"].to_string().contains("undo-failover"), "{refused}");
    assert_eq!(fs::read(to.join("b.txt")).unwrap(), b"changed on the live replica");

    // Undo on the target, start again on the source: the replica is remirrored to the source.
    target.job(&["undo-failover", &id]).ok();
    source.job(&["start", &id]).ok();
    source.wait_state(&id, "Protecting", LONG);
    wait_equal(&from, &to, LONG, Some(&source));
}

#[test]
fn with_wait_for_user_off_the_target_fails_over_on_its_own() {
    let dirs = tempdir("auto-failover");
    let (from, to) = (dirs.path().join("source"), dirs.path().join("target"));
    fs::create_dir_all(&from).unwrap();
    write(&from.join("data.bin"), &support::random_bytes(7, 300_000));
    let script = dirs.path().join("post.sh");
    let marker = dirs.path().join("post-ran");
    write(&script, format!("#!/bin/sh\necho failed over > {}\n", marker.display()).as_bytes());
    support::chmod(&script, 0o755);
    let mut source = Daemon::start(&dirs.path().join("engine-a"));
    let target = Daemon::start(&dirs.path().join("engine-b"));
    let id = protected_job(
        &source,
        &target,
        from.to_str().unwrap(),
        to.to_str().unwrap(),
        &["--auto-failover", "--post-script", script.to_str().unwrap()],
    );
    wait_equal(&from, &to, LONG, Some(&target));
    source.kill9();
    target.wait_state(&id, "FailedOver", LONG);
    let events = target.event_names(&id);
    let order: Vec<&str> =
        ["FailoverConditionMet", "FailoverRequested", "ReplicaActivated", "FailoverCompleted"]
            .into_iter()
            .filter(|name| events.iter().any(|e| e == name))
            .collect();
    assert_eq!(order.len(), 4, "{events:?}");
    assert!(marker.exists(), "the post-failover script ran on the target");
    wait_equal(&from, &to, Duration::from_secs(5), Some(&target));
}
