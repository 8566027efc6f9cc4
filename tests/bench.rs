//! The benchmark commands, in short versions: each runs end to end (its peer included: an
//! rsync daemon, plain writes with `fdatasync`) and prints its figures as ratios. The full
//! runs are the README's commands; their figures are not asserted here (a timed assertion
//! would measure the CI machine, not the code).

mod support;

use std::path::Path;

use support::{tempdir, understudy};

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// The numbers printed right after each `label` in `text`, in order.
fn numbers_after(text: &str, label: &str) -> Vec<f64> {
    text.split(label)
        .skip(1)
        .map(|rest| {
            let number: String =
                rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            number.parse().unwrap_or_else(|_| panic!("no number after {label:?} in {rest:?}"))
        })
        .collect()
}

/// The ratios printed on lines containing `label`, in order.
fn ratios(stdout: &str, label: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter(|line| line.contains(label))
        .flat_map(|line| numbers_after(line, "ratio "))
        .collect()
}

#[test]
fn bench_files_compares_every_figure_with_rsync_in_the_same_run() {
    let dir = tempdir("bench-files");
    let scratch = dir.path().join("scratch");
    let out = support::command(&[
        "bench",
        "files",
        "--files",
        "300",
        "--total-mb",
        "8",
        "--runs",
        "1",
        "--rate",
        "50",
        "--seconds",
        "2",
        "--dir",
        s(&scratch),
    ])
    // The record of the last deletion goes here, not where other runs would wait on it.
    .env("TMPDIR", dir.path())
    .output()
    .expect("the understudy binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for row in ["initial mirror", "remirror, 3 files changed", "remirror, nothing changed"] {
        let found = ratios(&stdout, row);
        assert_eq!(found.len(), 2, "{row}: against rsync and rsync + sync: {stdout}");
        assert!(found.iter().all(|r| *r > 0.0), "{row}: {found:?}");
    }
    assert!(stdout.contains("replication, 50 writes/s for 2 s: p50"), "{stdout}");
    assert!(stdout.contains("daemon peak resident memory:"), "{stdout}");
    assert!(!stdout.contains("waiting"), "nothing was deleted before this run: {stdout}");
}

#[test]
fn bench_event_log_compares_appends_with_plain_durable_writes() {
    let dir = tempdir("bench-event-log");
    let out = understudy(&["bench", "event-log", "--events", "2000", "--dir", s(dir.path())]).ok();
    let appends = ratios(&out.stdout, "durable appends");
    assert_eq!(appends.len(), 2, "single and batched: {}", out.stdout);
    assert!(appends.iter().all(|r| *r > 0.0), "{appends:?}");
}

#[test]
fn bench_tdu_measures_against_reading_the_tree_and_checks_its_forecasts() {
    let dir = tempdir("bench-tdu");
    let out = support::command(&["bench", "tdu", "--files", "200", "--total-mb", "4"])
        .current_dir(dir.path())
        .env("TMPDIR", dir.path())
        .output()
        .expect("the understudy binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for section in [
        "1. null-target mirror",
        "2. compression levels",
        "3. forecast against reality",
        "4. replication forecast against reality",
    ] {
        assert!(stdout.contains(section), "{section}: {stdout}");
    }
    let speeds: Vec<f64> = ["tdu speed / tar speed = ", "tdu speed / read speed = "]
        .iter()
        .flat_map(|label| numbers_after(&stdout, label))
        .collect();
    assert_eq!(speeds.len(), 2, "{stdout}");
    assert!(speeds.iter().all(|r| *r > 0.0), "{speeds:?}");
    assert_eq!(numbers_after(&stdout, "actual / forecast = ").len(), 2, "{stdout}");
}
