//! A files job end to end through the command line and a real daemon: mirror, replication of
//! every kind of change, `job show --json`, verification and its log, orphans, cutover, the
//! job log, and the audit online (through the daemon) and offline; then pause/resume,
//! stop/start, each mirror comparison, auto-cutover, and cutover scripts.
//!
//! Method: a generated source tree with the awkward cases (nested folders, unicode and space
//! names, a symlink, a hard link pair, an empty folder, a sparse file, mode 0640, a 5 MB file);
//! a real `understudy serve` on temporary folders and loopback ports; every step through the
//! real binary (`understudy job …`, `understudy replay …`); convergence checked by polling a
//! byte-for-byte comparison of the trees (names, kinds, modes, hard links, symlink targets,
//! bytes), then with `diff -r` and `rsync -anci --delete` when they are installed.

#![allow(clippy::unwrap_used)] // a test fails by panicking, with the value in the message

mod support;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::Duration;

use support::{Daemon, LONG, chmod, compare_trees, random_bytes, wait_equal, write};

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn files_job_end_to_end() {
    let dir = support::tempdir("files-e2e");
    let (source, target, data) =
        (dir.path().join("source"), dir.path().join("target"), dir.path().join("data"));
    support::make_rich_tree(&source);
    let mut daemon = Daemon::start(&data);

    let id = daemon.create(&["--name", "e2e", "--source", s(&source), "--target", s(&target)]);
    assert!(id.parse::<understudy_core::JobId>().is_ok(), "`job create` prints the id: {id:?}");
    daemon.job(&["start", "e2e"]).ok();
    let waited = daemon.job(&["wait", "e2e", "--state", "Protecting", "--timeout", "60"]).ok();
    assert!(waited.stdout.contains("e2e is Protecting"), "{}", waited.stdout);
    wait_equal(&source, &target, LONG, Some(&daemon));
    support::external_compare(&source, &target);
    let sparse = support::allocated_bytes(&target.join("sparse.img"));
    assert!(
        sparse < 4 * 1024 * 1024,
        "the 20 MB sparse file stays sparse on the target ({sparse} bytes allocated)"
    );

    // Every kind of change, each replicated before the next.
    type Change = Box<dyn Fn(&Path)>;
    let changes: Vec<(&str, Change)> = vec![
        (
            "create a file",
            Box::new(|s: &Path| write(&s.join("new/created.txt"), b"created after the mirror\n")),
        ),
        (
            "append to a file",
            Box::new(|s: &Path| {
                let mut f =
                    fs::OpenOptions::new().append(true).open(s.join("docs/readme.md")).unwrap();
                f.write_all(b"one more line\n").unwrap();
            }),
        ),
        (
            "overwrite the middle of the 5 MB file",
            Box::new(|s: &Path| {
                let f = fs::OpenOptions::new().write(true).open(s.join("big.bin")).unwrap();
                f.write_all_at(&random_bytes(99, 1_000_000), 2_000_000).unwrap();
            }),
        ),
        (
            "truncate a file",
            Box::new(|s: &Path| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(s.join("data/small-05.dat"))
                    .unwrap()
                    .set_len(10)
                    .unwrap()
            }),
        ),
        (
            "rename a file",
            Box::new(|s: &Path| {
                fs::rename(s.join("my docs/read me.txt"), s.join("my docs/renamed.txt")).unwrap()
            }),
        ),
        (
            "rename a folder with contents",
            Box::new(|s: &Path| fs::rename(s.join("a"), s.join("a-renamed")).unwrap()),
        ),
        (
            "delete a file",
            Box::new(|s: &Path| fs::remove_file(s.join("data/small-01.dat")).unwrap()),
        ),
        ("delete a folder", Box::new(|s: &Path| fs::remove_dir_all(s.join("photos")).unwrap())),
        (
            "chmod a file and a folder",
            Box::new(|s: &Path| {
                chmod(&s.join("secret.txt"), 0o600);
                chmod(&s.join("docs"), 0o750);
            }),
        ),
        (
            "write through one name of a hard link pair",
            Box::new(|s: &Path| {
                let f = fs::OpenOptions::new().write(true).open(s.join("links/one")).unwrap();
                f.write_all_at(b"HARD", 0).unwrap();
            }),
        ),
        (
            "replace a symlink",
            Box::new(|s: &Path| {
                fs::remove_file(s.join("link to readme")).unwrap();
                std::os::unix::fs::symlink("docs/readme.md", s.join("link to readme")).unwrap();
            }),
        ),
    ];
    for (what, change) in &changes {
        change(&source);
        let last = std::cell::RefCell::new(String::new());
        support::poll(
            &format!("the target to follow: {what}"),
            LONG,
            Duration::from_millis(100),
            || match compare_trees(&source, &target) {
                Ok(()) => Some(()),
                Err(why) => {
                    *last.borrow_mut() = why;
                    None
                }
            },
            || format!("{}\n{}", last.borrow(), daemon.log_tail(20)),
        );
    }
    support::external_compare(&source, &target);

    // `job show --json`: every status field.
    let shown = daemon.job(&["show", "e2e", "--json"]).ok().json();
    for field in [
        "id",
        "name",
        "state",
        "activity",
        "health",
        "mirror_status",
        "replication_status",
        "transmit_mode",
        "target_data_state",
        "mirror_percent",
        "mirror_remaining_bytes",
        "mirror_skipped_bytes",
        "replication_queue_bytes",
        "disk_queue_bytes",
        "bytes_sent",
        "bytes_sent_compressed",
        "recovery_point_latency_ms",
        "connected_since",
        "mirror_started_at",
        "mirror_ended_at",
    ] {
        assert!(shown.get(field).is_some(), "`job show --json` lacks {field}: {shown}");
    }
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["name"], "e2e");
    assert_eq!(shown["state"], "Protecting");
    assert_eq!(shown["health"], "Healthy", "{shown}");
    assert_eq!(shown["target_data_state"], "OK", "{shown}");
    assert_eq!(shown["mirror_percent"].as_f64(), Some(100.0), "{shown}");
    assert!(shown["bytes_sent"].as_u64().unwrap() >= 5_000_000, "{shown}");
    assert!(
        shown["connected_since"].is_string() && shown["mirror_started_at"].is_string(),
        "{shown}"
    );
    assert!(shown["mirror_ended_at"].is_string(), "{shown}");
    let text = daemon.job(&["show", "e2e"]).ok().stdout;
    assert!(text.contains("Protecting") && text.contains("allowed commands"), "{text}");
    let listed = daemon.job(&["list"]).ok().stdout;
    assert!(listed.contains("e2e") && listed.contains("Protecting"), "{listed}");

    // Verification.
    daemon.job(&["verify", "e2e"]).ok();
    let shown = daemon.wait_show("e2e", "a verification result", LONG, |d| {
        d["mirror_status"] != "Verifying" && !d["last_verification"].is_null()
    });
    let report = &shown["last_verification"];
    assert_eq!(report["files_different"], 0, "{report}");
    assert_eq!(report["files_missing"], 0, "{report}");
    assert!(report["files_compared"].as_u64().unwrap() >= 20, "{report}");
    let log_path = report["log_path"].as_str().expect("the verification log's path");
    let log = fs::read_to_string(log_path)
        .unwrap_or_else(|e| panic!("the verification log {log_path}: {e}"));
    assert!(log.contains("--- VERIFICATION OF CONNECTION"), "{log}");
    for counter in [
        "Total Directories Compared:",
        "Total Directories Missing:",
        "Total Directories Remirrored:",
        "Total Files Compared:",
        "Total Files Missing:",
        "Total Files Different:",
        "Total Files Encrypted:",
        "Total Files Remirrored:",
        "Total Bytes Skipped:",
        "Total Bytes Compared:",
        "Total Bytes Missing:",
        "Total Bytes Different:",
        "Total Bytes Remirrored:",
    ] {
        assert!(log.contains(counter), "the verification log lacks {counter:?}:\n{log}");
    }
    assert!(log.contains("Total Files Different: 0"), "{log}");

    // Orphans.
    write(&target.join("orphan.txt"), b"only on the target");
    write(&target.join("orphan dir/inside.txt"), b"only on the target too");
    daemon.job(&["delete-orphans", "e2e"]).ok();
    support::poll(
        "the orphans to be deleted",
        LONG,
        Duration::from_millis(100),
        || {
            (!target.join("orphan.txt").exists() && !target.join("orphan dir").exists())
                .then_some(())
        },
        || daemon.log_tail(20),
    );
    // The orphan log is written as the orphans are processed: wait for it.
    let orphan_text = support::poll(
        "an orphan log naming orphan.txt in DATA_DIR/logs",
        LONG,
        Duration::from_millis(100),
        || {
            fs::read_dir(data.join("logs"))
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().contains("orphan"))
                .filter_map(|p| fs::read_to_string(p).ok())
                .find(|text| text.contains("orphan.txt"))
        },
        || format!("{:?}", fs::read_dir(data.join("logs")).map(|d| d.count())),
    );
    assert!(orphan_text.contains("orphan dir"), "{orphan_text}");
    wait_equal(&source, &target, LONG, Some(&daemon));

    // Cutover.
    daemon.job(&["cutover", "e2e"]).ok();
    daemon.job(&["wait", "e2e", "--state", "CutOver", "--timeout", "60"]).ok();
    compare_trees(&source, &target).unwrap();
    support::external_compare(&source, &target);

    let log = daemon.job(&["log", "e2e"]).ok().stdout;
    for line in [
        "Changing to StoppedState from UninitializedState in response to InitializedEvent",
        "Changing to StartingState from StoppedState in response to StartRequestedEvent",
        "Changing to MirroringState from ConnectedState in response to MirrorStartedEvent",
        "Changing to ProtectingState from SynchronizedState in response to ReplicationCaughtUpEvent",
        "Changing to CutoverPendingState from ProtectingState in response to CutoverRequestedEvent",
        "Changing to CutOverState from CuttingOverState in response to CutoverCompletedEvent",
        "VerificationCompleted",
        "OrphansProcessed",
    ] {
        assert!(log.contains(line), "`job log` lacks {line:?}:\n{log}");
    }

    // The audit: through the running daemon, then offline; the same text.
    let online = daemon.replay(&["e2e"]).ok().stdout;
    let online_list = daemon.replay(&[]).ok().stdout;
    let online_at = daemon.replay(&["e2e", "--at", "6", "--json"]).ok().json();
    assert_eq!(online_at["seq"], 6, "{online_at}");
    assert!(online.contains("state at seq") && online.contains(": CutOver\n"), "{online}");
    assert!(online.contains(
        "Changing to MirroringState from ConnectedState in response to MirrorStartedEvent"
    ));
    let status = daemon.terminate();
    assert!(
        status.success(),
        "SIGTERM stops the daemon cleanly: {status}\n{}",
        daemon.log_tail(20)
    );
    let api = format!("127.0.0.1:{}", support::free_port());
    let offline =
        support::understudy(&["replay", "--data-dir", s(&data), "--api", &api, "e2e"]).ok().stdout;
    assert_eq!(online, offline, "replay through the daemon and offline print the same timeline");
    let offline_list =
        support::understudy(&["replay", "--data-dir", s(&data), "--api", &api]).ok().stdout;
    assert_eq!(online_list, offline_list);
    let offline_at = support::understudy(&[
        "replay",
        "--data-dir",
        s(&data),
        "--api",
        &api,
        "e2e",
        "--at",
        "6",
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(online_at, offline_at, "`--at` through the daemon and offline agree");
    let by_id =
        support::understudy(&["replay", "--data-dir", s(&data), "--api", &api, &id]).ok().stdout;
    assert_eq!(by_id, offline);
}

/// A small tree for the shorter scenarios.
fn small_tree(root: &Path, seed: u64) {
    for i in 0..30 {
        write(
            &root.join(format!("dir-{}/file-{i}.txt", i % 4)),
            &random_bytes(seed + i, 1000 + 300 * i as usize),
        );
    }
    write(&root.join("big.bin"), &random_bytes(seed, 1_500_000));
}

fn event_count(daemon: &Daemon, job: &str, name: &str) -> usize {
    daemon.event_names(job).iter().filter(|n| *n == name).count()
}

#[test]
fn pause_then_start_resumes_and_converges() {
    let dir = support::tempdir("files-pause");
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    small_tree(&source, 1);
    let daemon = Daemon::start(&dir.path().join("data"));
    daemon.create(&["--name", "p", "--source", s(&source), "--target", s(&target)]);
    daemon.job(&["start", "p"]).ok();
    daemon.wait_state("p", "Protecting", LONG);
    wait_equal(&source, &target, LONG, Some(&daemon));
    let mirrors = event_count(&daemon, "p", "MirrorStarted");

    daemon.job(&["pause", "p"]).ok();
    daemon.wait_state("p", "Paused", LONG);
    write(&source.join("while-paused.txt"), b"written while paused\n");
    fs::remove_file(source.join("dir-1/file-1.txt")).unwrap();
    write(&source.join("dir-2/file-2.txt"), b"rewritten while paused\n");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !target.join("while-paused.txt").exists(),
        "a paused job queues changes on the source: nothing reaches the target"
    );
    let shown = daemon.show("p");
    assert_eq!(shown["transmit_mode"], "Paused", "{shown}");

    daemon.job(&["start", "p"]).ok();
    daemon.wait_state("p", "Protecting", LONG);
    wait_equal(&source, &target, LONG, Some(&daemon));
    assert_eq!(
        event_count(&daemon, "p", "MirrorStarted"),
        mirrors,
        "resuming a pause needs no remirror"
    );
    // Still replicating after the resume.
    write(&source.join("after-resume.txt"), b"after\n");
    wait_equal(&source, &target, LONG, Some(&daemon));
}

#[test]
fn stop_then_start_remirrors_and_converges() {
    let dir = support::tempdir("files-stop");
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    small_tree(&source, 2);
    let daemon = Daemon::start(&dir.path().join("data"));
    daemon.create(&["--name", "st", "--source", s(&source), "--target", s(&target)]);
    daemon.job(&["start", "st"]).ok();
    daemon.wait_state("st", "Protecting", LONG);
    wait_equal(&source, &target, LONG, Some(&daemon));
    let mirrors = event_count(&daemon, "st", "MirrorStarted");

    daemon.job(&["stop", "st"]).ok();
    daemon.wait_state("st", "Stopped", LONG);
    write(&source.join("while-stopped.txt"), b"written while stopped\n");
    fs::remove_dir_all(source.join("dir-3")).unwrap();
    let f = fs::OpenOptions::new().write(true).open(source.join("big.bin")).unwrap();
    f.write_all_at(b"changed while stopped", 700_000).unwrap();
    drop(f);

    daemon.job(&["start", "st"]).ok();
    daemon.wait_state("st", "Protecting", LONG);
    wait_equal(&source, &target, LONG, Some(&daemon));
    assert!(
        event_count(&daemon, "st", "MirrorStarted") > mirrors,
        "a start after a stop remirrors"
    );
    write(&source.join("after-restart.txt"), b"after\n");
    wait_equal(&source, &target, LONG, Some(&daemon));
}

#[test]
fn a_remirror_sets_only_the_folders_whose_attributes_differ() {
    use std::os::unix::fs::MetadataExt;
    let dir = support::tempdir("files-folder-attrs");
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    small_tree(&source, 5);
    let daemon = Daemon::start(&dir.path().join("data"));
    daemon.create(&["--name", "fa", "--source", s(&source), "--target", s(&target)]);
    daemon.job(&["start", "fa"]).ok();
    daemon.wait_state("fa", "Protecting", LONG);
    wait_equal(&source, &target, LONG, Some(&daemon));

    // On the target only: a folder's mode and another's mtime drift.
    chmod(&target.join("dir-1"), 0o700);
    let epoch = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::open(target.join("dir-2")).unwrap().set_modified(epoch).unwrap();
    let untouched = fs::metadata(target.join("dir-3")).unwrap();
    std::thread::sleep(Duration::from_millis(50));

    let mirrors = event_count(&daemon, "fa", "MirrorCompleted");
    daemon.job(&["mirror", "fa", "start"]).ok();
    support::poll(
        "the remirror to complete",
        LONG,
        Duration::from_millis(100),
        || (event_count(&daemon, "fa", "MirrorCompleted") > mirrors).then_some(()),
        || daemon.log_tail(20),
    );
    daemon.wait_state("fa", "Protecting", LONG);

    let (src, tgt) = (
        |p: &str| fs::metadata(source.join(p)).unwrap(),
        |p: &str| fs::metadata(target.join(p)).unwrap(),
    );
    assert_eq!(tgt("dir-1").mode(), src("dir-1").mode(), "a folder's mode is set again");
    assert_eq!(
        (tgt("dir-2").mtime(), tgt("dir-2").mtime_nsec()),
        (src("dir-2").mtime(), src("dir-2").mtime_nsec()),
        "a folder's mtime is set again"
    );
    let after = tgt("dir-3");
    assert_eq!(
        (after.ctime(), after.ctime_nsec()),
        (untouched.ctime(), untouched.ctime_nsec()),
        "a folder already in step is not set again (its ctime would move)"
    );
}

#[test]
fn every_mirror_comparison_converges() {
    let dir = support::tempdir("files-comparisons");
    let daemon = Daemon::start(&dir.path().join("data"));
    let options = ["everything", "attributes-whole", "attributes-diff", "checksum"];
    let mut pairs = Vec::new();
    for (i, option) in options.iter().enumerate() {
        let (source, target) = (
            dir.path().join(format!("source-{option}")),
            dir.path().join(format!("target-{option}")),
        );
        small_tree(&source, 10 + i as u64);
        // The target already holds part of the data: an identical copy, a stale file of another
        // size, a file the source does not have.
        write(
            &target.join("dir-0/file-0.txt"),
            &fs::read(source.join("dir-0/file-0.txt")).unwrap(),
        );
        let touch = std::process::Command::new("touch")
            .arg("-r")
            .arg(source.join("dir-0/file-0.txt"))
            .arg(target.join("dir-0/file-0.txt"))
            .status()
            .unwrap();
        assert!(touch.success());
        write(&target.join("dir-1/file-1.txt"), b"stale");
        write(&target.join("big.bin"), &random_bytes(0, 1_400_000));
        if matches!(*option, "everything" | "checksum") {
            // Same size and time, other bytes: only reading the data finds it.
            let mut bytes = fs::read(source.join("dir-2/file-2.txt")).unwrap();
            bytes[10] ^= 0xff;
            write(&target.join("dir-2/file-2.txt"), &bytes);
            let touch = std::process::Command::new("touch")
                .arg("-r")
                .arg(source.join("dir-2/file-2.txt"))
                .arg(target.join("dir-2/file-2.txt"))
                .status()
                .unwrap();
            assert!(touch.success());
        }
        let name = format!("cmp-{option}");
        daemon.create(&[
            "--name",
            &name,
            "--source",
            s(&source),
            "--target",
            s(&target),
            "--comparison",
            option,
            "--orphans",
            "delete",
        ]);
        daemon.job(&["start", &name]).ok();
        pairs.push((name, source, target));
    }
    for (name, source, target) in &pairs {
        daemon.wait_state(name, "Protecting", LONG);
        // Orphans are deleted by the mirror (orphans: delete), so the trees end equal.
        wait_equal(source, target, LONG, Some(&daemon));
        write(&source.join("after-mirror.txt"), name.as_bytes());
    }
    for (name, source, target) in &pairs {
        wait_equal(source, target, LONG, Some(&daemon));
        let shown = daemon.show(name);
        assert_eq!(shown["health"], "Healthy", "{name}: {shown}");
    }
}

#[test]
fn auto_cutover_ends_in_cutover_by_itself() {
    let dir = support::tempdir("files-autocut");
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    small_tree(&source, 3);
    let daemon = Daemon::start(&dir.path().join("data"));
    daemon.create(&[
        "--name",
        "auto",
        "--source",
        s(&source),
        "--target",
        s(&target),
        "--auto-cutover",
    ]);
    daemon.job(&["start", "auto"]).ok();
    daemon.job(&["wait", "auto", "--state", "CutOver", "--timeout", "60"]).ok();
    compare_trees(&source, &target).unwrap();
    let log = daemon.job(&["log", "auto"]).ok().stdout;
    assert!(log.contains("Changing to CutOverState"), "{log}");
}

#[test]
fn cutover_scripts_output_is_in_the_job_log() {
    let dir = support::tempdir("files-scripts");
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    small_tree(&source, 4);
    let daemon = Daemon::start(&dir.path().join("data"));
    daemon.create(&[
        "--name",
        "scripted",
        "--source",
        s(&source),
        "--target",
        s(&target),
        "--pre-script",
        "/bin/sh",
        "--pre-script-arg=-c",
        "--pre-script-arg",
        "echo pre-ran",
        "--post-script",
        "/bin/sh",
        "--post-script-arg=-c",
        "--post-script-arg",
        "echo post-ran; echo second line",
    ]);
    daemon.job(&["start", "scripted"]).ok();
    daemon.wait_state("scripted", "Protecting", LONG);
    daemon.job(&["cutover", "scripted"]).ok();
    daemon.job(&["wait", "scripted", "--state", "CutOver", "--timeout", "60"]).ok();
    let log = daemon.job(&["log", "scripted"]).ok().stdout;
    for words in ["| pre-ran", "| post-ran", "| second line"] {
        assert!(log.contains(words), "`job log` should show the scripts' output {words:?}:\n{log}");
    }
    let pre = log.find("| pre-ran").unwrap();
    let post = log.find("| post-ran").unwrap();
    assert!(pre < post, "the pre-cutover script runs before the post-cutover one");
    compare_trees(&source, &target).unwrap();
}

/// `--pre-script-arg -c` (the natural way to write a shell script's argument) is refused by
/// the argument parser: only `--pre-script-arg=-c` works.
#[test]
fn script_arguments_may_start_with_a_hyphen() {
    let dir = support::tempdir("files-hyphen");
    fs::create_dir_all(dir.path().join("source")).unwrap();
    let daemon = Daemon::start(&dir.path().join("data"));
    let source = dir.path().join("source");
    let target = dir.path().join("target");
    let out = daemon.job(&[
        "create",
        "--name",
        "hyphen",
        "--source",
        s(&source),
        "--target",
        s(&target),
        "--pre-script",
        "/bin/sh",
        "--pre-script-arg",
        "-c",
        "--pre-script-arg",
        "echo pre-ran",
    ]);
    assert_eq!(out.code, 0, "`{}`:\n{}", out.command, out.stderr);
}

#[test]
fn verification_finds_differences_and_remirror_repairs_them() {
    let dir = support::tempdir("files-verify");
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    small_tree(&source, 5);
    let daemon = Daemon::start(&dir.path().join("data"));
    daemon.create(&["--name", "v", "--source", s(&source), "--target", s(&target)]);
    daemon.job(&["start", "v"]).ok();
    daemon.wait_state("v", "Protecting", LONG);
    wait_equal(&source, &target, LONG, Some(&daemon));

    // Damage the replica behind the job's back: one file's bytes (same size), one file gone.
    let damaged = target.join("dir-0/file-4.txt");
    let mut bytes = fs::read(&damaged).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&damaged, &bytes).unwrap();
    fs::remove_file(target.join("dir-1/file-5.txt")).unwrap();

    let verified = |remirror: bool| {
        let before = daemon.show("v")["last_verification"].clone();
        let mut args = vec!["verify", "v"];
        if remirror {
            args.push("--remirror");
        }
        daemon.job(&args).ok();
        daemon.wait_show("v", "a new verification result", LONG, |d| {
            d["mirror_status"] != "Verifying"
                && !d["last_verification"].is_null()
                && d["last_verification"] != before
        })["last_verification"]
            .clone()
    };
    let report = verified(false);
    assert_eq!(report["files_different"], 1, "{report}");
    assert_eq!(report["files_missing"], 1, "{report}");
    assert!(compare_trees(&source, &target).is_err(), "a report-only verification changes nothing");
    let report = verified(true);
    assert!(report["files_remirrored"].as_u64().unwrap() >= 2, "{report}");
    wait_equal(&source, &target, LONG, Some(&daemon));
    let report = verified(false);
    assert_eq!(
        (report["files_different"].as_u64(), report["files_missing"].as_u64()),
        (Some(0), Some(0)),
        "{report}"
    );
}

#[test]
fn a_storm_of_quick_changes_converges() {
    let dir = support::tempdir("files-storm");
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    small_tree(&source, 6);
    let daemon = Daemon::start(&dir.path().join("data"));
    daemon.create(&["--name", "storm", "--source", s(&source), "--target", s(&target)]);
    daemon.job(&["start", "storm"]).ok();
    daemon.wait_state("storm", "Protecting", LONG);
    wait_equal(&source, &target, LONG, Some(&daemon));

    for round in 0..40u64 {
        let name = source.join(format!("storm/f-{}.txt", round % 7));
        write(&name, &random_bytes(round, 500 + (round as usize * 37) % 3000));
        if round % 3 == 0 {
            let _ = fs::rename(&name, source.join(format!("storm/renamed-{}.txt", round % 5)));
        }
        if round % 4 == 0 {
            let _ = fs::remove_file(source.join(format!("storm/f-{}.txt", (round + 3) % 7)));
        }
        if round % 5 == 0 {
            let sub = source.join(format!("storm/dir-{}", round % 3));
            let _ = fs::remove_dir_all(&sub);
            write(&sub.join("inside.txt"), &random_bytes(round + 1000, 200));
        }
        if round % 6 == 0 {
            let _ = fs::rename(source.join("storm/dir-0"), source.join("storm/dir-moved"));
            let _ = fs::remove_dir_all(source.join("storm/dir-moved"));
        }
        if round % 8 == 0 {
            let f = fs::OpenOptions::new().write(true).open(source.join("big.bin")).unwrap();
            f.write_all_at(&random_bytes(round, 64 * 1024), round * 20_000).unwrap();
        }
    }
    wait_equal(&source, &target, LONG, Some(&daemon));
    support::external_compare(&source, &target);
}

#[test]
fn odd_names_special_files_and_excludes() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt as _;
    let dir = support::tempdir("files-odd");
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    small_tree(&source, 7);
    // Names that are not UTF-8, or hold a newline, a backslash, a leading dash or dot.
    let odd: Vec<&[u8]> = vec![
        b"latin1-\xe9t\xe9.txt",
        b"new\nline.txt",
        b"back\\slash",
        b"-dash",
        b".hidden",
        b" lead space",
    ];
    for (i, name) in odd.iter().enumerate() {
        write(
            &source.join("odd").join(OsStr::from_bytes(name)),
            &random_bytes(200 + i as u64, 100),
        );
    }
    // A named pipe: reported and skipped, never read (reading it would block forever).
    let status = std::process::Command::new("mkfifo").arg(source.join("a-fifo")).status().unwrap();
    assert!(status.success(), "mkfifo");
    // An excluded folder.
    write(&source.join("cache/tmp.bin"), &random_bytes(300, 5000));
    let daemon = Daemon::start(&dir.path().join("data"));
    daemon.create(&[
        "--name",
        "odd",
        "--source",
        s(&source),
        "--target",
        s(&target),
        "--exclude",
        "cache",
    ]);
    daemon.job(&["start", "odd"]).ok();
    daemon.wait_state("odd", "Protecting", LONG);

    // The target is the source without the pipe and the excluded folder.
    let expected = dir.path().join("expected");
    let copy =
        std::process::Command::new("cp").arg("-a").arg(&source).arg(&expected).status().unwrap();
    assert!(copy.success());
    fs::remove_file(expected.join("a-fifo")).unwrap();
    fs::remove_dir_all(expected.join("cache")).unwrap();
    let same_as_expected = |daemon: &Daemon| {
        let last = std::cell::RefCell::new(String::new());
        support::poll(
            "the target to hold everything but the pipe and the excluded folder",
            LONG,
            Duration::from_millis(150),
            || match compare_trees(&expected, &target) {
                Ok(()) => Some(()),
                Err(why) => {
                    *last.borrow_mut() = why;
                    None
                }
            },
            || format!("{}\n{}", last.borrow(), daemon.log_tail(20)),
        );
    };
    same_as_expected(&daemon);

    // Changes to odd names replicate; changes in the excluded folder do not.
    for (i, name) in odd.iter().enumerate() {
        let bytes = random_bytes(400 + i as u64, 222);
        write(&source.join("odd").join(OsStr::from_bytes(name)), &bytes);
        write(&expected.join("odd").join(OsStr::from_bytes(name)), &bytes);
    }
    fs::rename(source.join("odd/new\nline.txt"), source.join("odd/renamed\nagain.txt")).unwrap();
    fs::rename(expected.join("odd/new\nline.txt"), expected.join("odd/renamed\nagain.txt"))
        .unwrap();
    write(&source.join("cache/more.bin"), b"excluded");
    same_as_expected(&daemon);
    assert!(!target.join("cache").exists(), "the excluded folder stays off the target");
    assert_eq!(daemon.show("odd")["health"], "Healthy");
}

#[test]
fn a_deleted_job_frees_its_name_and_stays_in_the_audit() {
    let dir = support::tempdir("files-delete");
    let source = dir.path().join("source");
    small_tree(&source, 8);
    let daemon = Daemon::start(&dir.path().join("data"));
    let first = daemon.create(&[
        "--name",
        "mon job \u{e9}t\u{e9}",
        "--source",
        s(&source),
        "--target",
        s(&dir.path().join("t1")),
    ]);
    daemon.job(&["start", "mon job \u{e9}t\u{e9}"]).ok();
    daemon.wait_state(&first, "Protecting", LONG);
    daemon.job(&["delete", "mon job \u{e9}t\u{e9}"]).ok();
    let list = daemon.job(&["list", "--json"]).ok().json();
    assert!(list.as_array().unwrap().is_empty(), "a deleted job is not listed: {list}");
    let gone = daemon.job(&["show", "mon job \u{e9}t\u{e9}"]);
    assert_eq!(gone.code, 2, "{}", gone.stdout);
    // The name is free again.
    let second = daemon.create(&[
        "--name",
        "mon job \u{e9}t\u{e9}",
        "--source",
        s(&source),
        "--target",
        s(&dir.path().join("t2")),
    ]);
    assert_ne!(first, second);
    assert_eq!(daemon.show("mon job \u{e9}t\u{e9}")["id"], second.as_str());
    // The audit keeps the deleted job's history.
    let audit = daemon.replay(&[&first]).ok().stdout;
    assert!(audit.contains(": Deleted\n"), "{audit}");
}

/// A mirror, then a burst of changes, bigger than the source queue (1 MiB in memory, no disk
/// queue): the queue is exhausted, the job auto-disconnects and remirrors, and must end with
/// the target equal to the source.
///
/// What happens instead, already in the initial mirror of 2 MB: after `QueueExhausted` and the
/// reconnection, the job reaches Protecting (health Healthy, target data state OK, mirror 100%,
/// `ReplicationCaughtUp`) while half the files are missing on the target and the replication
/// queue stays at about 1 MB forever (ReplicationProgressed every 3 s, nothing sent).
/// Suspected cause: `Pipe::reset` numbers the next operations from the last acknowledged
/// seq + 1, while operations in flight at the reset were already applied by the target under
/// those numbers; the target skips the new ones as resends (`seq <= last_applied`).
#[test]
fn an_exhausted_queue_remirrors_to_an_equal_target() {
    let dir = support::tempdir("files-exhaust");
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    for i in 0..20 {
        write(&source.join(format!("base-{i}.bin")), &random_bytes(i, 100_000));
    }
    let daemon = Daemon::start(&dir.path().join("data"));
    daemon.create(&[
        "--name",
        "ex",
        "--source",
        s(&source),
        "--target",
        s(&target),
        "--queue-memory",
        "1MiB",
        "--disk-queue",
        "disabled",
        "--bandwidth",
        "2MB",
    ]);
    daemon.job(&["start", "ex"]).ok();
    daemon.wait_state("ex", "Protecting", LONG);
    wait_equal(&source, &target, LONG, Some(&daemon));
    // 8 MB of changes against a 1 MiB queue drained at 2 MB/s.
    for i in 0..40u64 {
        write(&source.join(format!("burst-{}/f-{i}.bin", i % 5)), &random_bytes(1000 + i, 200_000));
    }
    daemon.wait_show("ex", "the queue to be exhausted", LONG, |_| {
        daemon.event_names("ex").iter().any(|n| n == "QueueExhausted")
    });
    wait_equal(&source, &target, Duration::from_secs(90), Some(&daemon));
    let shown = daemon.wait_state("ex", "Protecting", LONG);
    assert_eq!(shown["target_data_state"], "OK", "{shown}");
}
