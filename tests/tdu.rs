//! The TDU end to end: `understudy tdu` measures a tree and forecasts, `--watch` records the
//! churn into a statistics file and a chart, `understudy tdu forecast` replays a recording
//! without the source, bad input is refused in one line, and the forecasts are honest: a
//! real files job at the forecast's limit mirrors in the forecast time, and a recorded churn
//! replayed into a real job at a limit below it queues as high as forecast.
//!
//! Method: generated trees under temporary folders; every step through the real binary
//! (`understudy tdu …`, `understudy job …`) and real daemons on loopback. Churn is written by a
//! thread of the test on a fixed schedule (new files of fresh random bytes, so compression
//! and coalescing change nothing). Bounds on rates are generous: the machine may be a loaded
//! 2-core one, and the engine records replication counters every 2 s, so a short watch is
//! measured with that granularity.

#![allow(clippy::unwrap_used)] // a test fails by panicking, with the value in the message

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Daemon, LONG, Out, bad_input, is_root, random_bytes, understudy, write};

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `understudy tdu ARGS…`.
fn tdu(args: &[&str]) -> Out {
    let mut all = vec!["tdu"];
    all.extend_from_slice(args);
    understudy(&all)
}

/// `understudy tdu forecast ARGS…`.
fn tdu_forecast(args: &[&str]) -> Out {
    let mut all = vec!["tdu", "forecast"];
    all.extend_from_slice(args);
    understudy(&all)
}

/// Files, folders (the root included) and file bytes of a tree.
fn census(root: &Path) -> (u64, u64, u64) {
    let (mut files, mut folders, mut bytes) = (0, 1, 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                folders += 1;
                stack.push(entry.path());
            } else if kind.is_file() {
                files += 1;
                bytes += entry.metadata().unwrap().len();
            }
        }
    }
    (files, folders, bytes)
}

fn num(value: &Value, what: &str) -> f64 {
    value.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {value}"))
}

/// The forecast entry for a link or limit of `bits` bit/s.
fn forecast_for(report: &Value, bits: f64) -> Value {
    report["forecasts"]
        .as_array()
        .expect("`forecasts` is a list")
        .iter()
        .find(|f| f["link_bits_per_second"].as_f64() == Some(bits))
        .unwrap_or_else(|| panic!("no forecast for {bits} bit/s in {}", report["forecasts"]))
        .clone()
}

/// Asserts a forecast's mirror time agrees with the mirror's wire bytes over `bytes_per_second`
/// of payload: never faster than the link's raw rate, no slower than the link with 10 % of it
/// lost to the network's own headers, unless the measured source itself was slower.
#[track_caller]
fn assert_consistent(report: &Value, bits: f64, payload_floor: f64) {
    let wire = num(&report["mirror"]["bytes_compressed"], "mirror.bytes_compressed");
    let source_seconds = num(&report["mirror"]["seconds"], "mirror.seconds");
    let forecast = forecast_for(report, bits);
    let seconds = num(&forecast["mirror_seconds"], "mirror_seconds");
    let raw = wire / (bits / 8.0);
    let slowest = (raw / payload_floor).max(source_seconds) * 1.001 + 1e-9;
    assert!(
        seconds >= raw * 0.999 && seconds <= slowest,
        "{bits} bit/s: mirror_seconds {seconds} for {wire} wire bytes (raw {raw} s, at most {slowest} s): {forecast}"
    );
}

/// Writes `chunk` fresh random bytes into a new file of `dir` every `period` until stopped.
struct Churn {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, Duration)>>,
}

impl Churn {
    fn start(dir: &Path, chunk: usize, period: Duration) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, dir) = (Arc::clone(&stop), dir.to_path_buf());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut written = 0u64;
            let mut n = 0u32;
            while !flag.load(Ordering::Relaxed) {
                let due = started + period * n;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                write(
                    &dir.join(format!("churn-{n:05}.bin")),
                    &random_bytes(1000 + u64::from(n), chunk),
                );
                written += chunk as u64;
                n += 1;
            }
            (written, started.elapsed())
        });
        Churn { stop, thread: Some(thread) }
    }

    /// Stops the writer; returns the bytes written and over how long.
    fn finish(mut self) -> (u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The rows of a statistics file, each as its 7 numbers.
fn csv_rows(text: &str) -> Vec<Vec<f64>> {
    let mut lines = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let header = lines.next().expect("a header row");
    assert_eq!(
        header,
        "at_secs,seconds,bytes_read,bytes_compressed,operations,queue_bytes,send_rate_bytes_per_second"
    );
    lines
        .map(|l| {
            let fields: Vec<f64> = l
                .split(',')
                .map(|f| f.parse().unwrap_or_else(|_| panic!("{f:?} in {l:?} is not a number")))
                .collect();
            assert_eq!(fields.len(), 7, "a row has 7 fields: {l:?}");
            fields
        })
        .collect()
}

#[test]
fn json_report_has_the_mirror_and_forecasts() {
    let dir = support::tempdir("tdu-json");
    let source = dir.path().join("source");
    support::make_bulk_tree(&source, 60, 3_000_000, 11);
    write(&source.join("empty.txt"), b"");
    fs::create_dir_all(source.join("empty folder")).unwrap();
    let (files, folders, bytes) = census(&source);

    let out = tdu(&["--source", s(&source), "--json", "--bandwidth", "5MB"]).ok();
    let report = out.json();
    let mirror = &report["mirror"];
    assert_eq!(mirror["files"].as_u64(), Some(files), "files: {mirror}");
    assert_eq!(mirror["bytes"].as_u64(), Some(bytes), "bytes: {mirror}");
    let folders_reported = mirror["folders"].as_u64();
    assert!(
        folders_reported == Some(folders) || folders_reported == Some(folders - 1),
        "folders: {mirror}, the tree has {folders} with its root"
    );
    let wire = num(&mirror["bytes_compressed"], "bytes_compressed");
    #[allow(clippy::cast_precision_loss)]
    let data = bytes as f64;
    assert!(
        wire >= data && wire <= data * 1.05 + 100_000.0,
        "compression none: the wire carries the data and its framing: {mirror}"
    );
    let seconds = num(&mirror["seconds"], "seconds");
    assert!(seconds > 0.0 && seconds < 30.0, "the mirror's seconds: {mirror}");

    for bits in [10e6, 100e6, 1e9] {
        assert_consistent(&report, bits, 0.90);
    }
    // The job's own limit: 5 MB/s of frames, nothing taken by a network.
    assert_consistent(&report, 40e6, 1.0);
    assert!(
        forecast_for(&report, 40e6)["label"].as_str().unwrap_or_default().contains("limit"),
        "the job's own limit is labelled as such: {}",
        report["forecasts"]
    );
    assert!(report.get("replication").is_none(), "no `replication` without --watch: {report}");

    // Without --bandwidth the job's own forecast is still there (unlimited: the source's pace).
    let text = tdu(&["--source", s(&source)]).ok();
    for link in ["10 Mbit/s", "100 Mbit/s", "1 Gbit/s", "job limit"] {
        assert!(text.stdout.contains(link), "the text report names {link}:\n{}", text.stdout);
    }

    // Compression is measured: a text tree at medium compression shrinks on the wire.
    let texts = dir.path().join("texts");
    for i in 0..20 {
        write(
            &texts.join(format!("t{i:02}.txt")),
            &b"The quick brown fox jumps over the lazy dog. ".repeat(2000 + i * 50),
        );
    }
    let (_, _, text_bytes) = census(&texts);
    let report = tdu(&["--source", s(&texts), "--json", "--compression", "medium"]).ok().json();
    assert_eq!(report["mirror"]["bytes"].as_u64(), Some(text_bytes));
    #[allow(clippy::cast_precision_loss)]
    let half = text_bytes as f64 / 2.0;
    assert!(
        num(&report["mirror"]["bytes_compressed"], "bytes_compressed") < half,
        "medium compression of repeated text: {}",
        report["mirror"]
    );
}

#[test]
fn watch_records_the_churn_and_forecast_replays_it_without_the_source() {
    let dir = support::tempdir("tdu-watch");
    let source = dir.path().join("source");
    support::make_bulk_tree(&source, 20, 1_000_000, 21);
    let (stats, plot) = (dir.path().join("stats.csv"), dir.path().join("churn.svg"));

    // 50 kB every 100 ms: 500 kB/s while the TDU mirrors and then watches for 6 s.
    let rate = 500_000.0;
    let churn = Churn::start(&source, 50_000, Duration::from_millis(100));
    let out = tdu(&[
        "--source",
        s(&source),
        "--watch",
        "6s",
        "--interval",
        "1s",
        "--bandwidth",
        "200kB",
        "--json",
        "--stats",
        s(&stats),
        "--plot",
        s(&plot),
    ])
    .ok();
    let (written, over) = churn.finish();
    assert!(
        written > 0 && over > Duration::from_secs(6),
        "the writer ran: {written} B in {over:?}"
    );
    let report = out.json();
    let replication = &report["replication"];
    assert!(replication.is_object(), "--watch gives a `replication` section: {report}");
    let intervals = replication["intervals"].as_u64().expect("replication.intervals");
    assert!((6..=7).contains(&intervals), "6 s in 1 s intervals: {replication}");
    let read = num(&replication["read_bytes_per_second"]["mean"], "read mean");
    let wire = num(&replication["wire_bytes_per_second"]["mean"], "wire mean");
    assert!(
        read > rate * 0.4 && read < rate * 1.6,
        "the measured change rate {read} B/s is far from the {rate} B/s written: {replication}"
    );
    assert!(wire >= read * 0.99 && wire < read * 1.1 + 10_000.0, "wire vs read: {replication}");
    let peak = num(&replication["wire_bytes_per_second"]["peak"], "peak");
    assert!(peak >= wire, "the peak is at least the mean: {replication}");
    let needed = replication["needed"].as_array().expect("replication.needed");
    let rpos: Vec<f64> = needed.iter().map(|n| num(&n["rpo_seconds"], "rpo_seconds")).collect();
    assert_eq!(rpos, vec![60.0, 300.0, 900.0], "{replication}");
    assert!(
        replication["at_limit"]["queue_high_water_bytes"].as_u64().unwrap_or(0) > 0,
        "500 kB/s of churn queues at 200 kB/s: {replication}"
    );

    // The statistics file: metadata, the header, one row per interval.
    let text = fs::read_to_string(&stats).unwrap();
    assert!(text.starts_with("# understudy-tdu-stats: 1"), "{text}");
    let rows = csv_rows(&text);
    assert_eq!(rows.len() as u64, intervals, "one row per interval:\n{text}");
    let recorded: f64 = rows.iter().map(|r| r[2]).sum();
    let summed = read * num(&replication["recorded_seconds"], "recorded_seconds");
    assert!(
        (recorded - summed).abs() <= summed * 0.01 + 1.0,
        "the rows' bytes_read ({recorded}) make the report's mean ({summed}):\n{text}"
    );
    for pair in rows.windows(2) {
        assert!(pair[1][0] >= pair[0][0] + pair[0][1] - 1e-3, "rows in time order:\n{text}");
    }

    // The chart.
    let svg = fs::read_to_string(&plot).unwrap();
    let head = svg.trim_start();
    assert!(head.starts_with("<svg") || head.starts_with("<?xml"), "an SVG: {}", &svg[..200]);
    assert!(svg.trim_end().ends_with("</svg>"), "a whole SVG document");
    assert!(svg.len() > 2000, "the chart draws something ({} bytes)", svg.len());

    // "What if", with the source gone: another bandwidth, from the file alone.
    fs::remove_dir_all(&source).unwrap();
    let what_if = tdu_forecast(&["--stats", s(&stats), "--bandwidth", "1MB", "--json"]).ok();
    let again = what_if.json();
    for key in ["files", "bytes", "bytes_compressed", "seconds"] {
        assert_eq!(again["mirror"][key], report["mirror"][key], "mirror.{key} comes from the file");
    }
    for bits in [10e6, 100e6, 1e9] {
        assert_consistent(&again, bits, 0.90);
    }
    assert_consistent(&again, 8e6, 1.0);
    assert!(
        again["forecasts"].as_array().unwrap().iter().all(|f| f["link_bits_per_second"] != 1.6e6),
        "the recorded 200 kB/s limit is replaced: {}",
        again["forecasts"]
    );
    let at_1mb = &again["replication"];
    assert_eq!(at_1mb["intervals"].as_u64(), Some(intervals), "{at_1mb}");
    assert_eq!(
        at_1mb["wire_bytes_per_second"], replication["wire_bytes_per_second"],
        "the churn is the recorded one"
    );
    assert!(
        at_1mb["at_limit"]["queue_high_water_bytes"].as_u64().unwrap()
            < replication["at_limit"]["queue_high_water_bytes"].as_u64().unwrap(),
        "a faster limit queues less: 1 MB/s {} vs 200 kB/s {}",
        at_1mb["at_limit"],
        replication["at_limit"]
    );
    // Same bandwidth as recorded: the same replication forecast.
    let same = tdu_forecast(&["--stats", s(&stats), "--json"]).ok().json();
    assert_eq!(same["replication"], report["replication"], "a replay at the recorded settings");
    // Text, another compression, and a chart of the "what if".
    let plot2 = dir.path().join("what-if.svg");
    let text = tdu_forecast(&[
        "--stats",
        s(&stats),
        "--bandwidth",
        "1MB",
        "--compression",
        "maximum",
        "--plot",
        s(&plot2),
    ])
    .ok();
    assert!(text.stdout.contains("1 Gbit/s"), "{}", text.stdout);
    assert!(fs::read_to_string(&plot2).unwrap().contains("</svg>"));
}

/// `understudy ARGS…` as the unprivileged user `nobody` when the tests run as root (root reads
/// files whatever their mode), through util-linux's `setpriv`; `None` if that is not possible.
fn unprivileged(args: &[&str]) -> Option<Out> {
    if !is_root() {
        return Some(understudy(args));
    }
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", support::BIN])
        .args(args)
        .env_remove("RUST_LOG")
        .env("TMPDIR", "/tmp")
        .stdin(std::process::Stdio::null());
    let output = cmd.output().ok()?;
    let out = Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        command: format!("setpriv --reuid=65534 understudy {}", args.join(" ")),
    };
    // setpriv itself failing (no such user namespace rights, say) is not the product's answer.
    (!out.stderr.starts_with("setpriv:")).then_some(out)
}

/// A folder `nobody` can walk into (the temporary folder is 0700).
fn open_to_all(dir: &Path) -> PathBuf {
    support::chmod(dir, 0o755);
    dir.to_path_buf()
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let dir = support::tempdir("tdu-bad");
    let base = open_to_all(dir.path());
    let source = base.join("source");
    write(&source.join("a.txt"), b"some data\n");

    let missing = base.join("no such folder");
    let line = bad_input(&tdu(&["--source", s(&missing), "--json"]));
    assert!(line.contains("no such folder"), "names the source: {line}");

    let a_file = source.join("a.txt");
    let line = bad_input(&tdu(&["--source", s(&a_file)]));
    assert!(line.contains("a.txt"), "names the source: {line}");

    let line = bad_input(&tdu(&["--json"]));
    assert!(line.contains("--source"), "says what is missing: {line}");

    // A source that cannot be read: mode 000, as a user that is not root.
    let locked = base.join("locked");
    write(&locked.join("inside.txt"), b"cannot be listed\n");
    support::chmod(&locked, 0o000);
    match unprivileged(&["tdu", "--source", s(&locked)]) {
        Some(out) => {
            let line = bad_input(&out);
            assert!(line.contains("locked") && line.contains("cannot be read"), "{line}");
        }
        None => eprintln!("note: cannot run as another user than root: unreadable source skipped"),
    }
    support::chmod(&locked, 0o755);

    for bandwidth in ["3499", "100", "3KB"] {
        let line = bad_input(&tdu(&["--source", s(&source), "--bandwidth", bandwidth]));
        assert!(line.contains("3500") || line.contains("3.5"), "says the minimum: {line}");
    }

    // Statistics files: a real one first, then broken copies of it.
    let stats = base.join("stats.csv");
    tdu(&["--source", s(&source), "--stats", s(&stats)]).ok();
    let good = fs::read_to_string(&stats).unwrap();
    let line = bad_input(&tdu_forecast(&["--stats", s(&stats), "--bandwidth", "3000"]));
    assert!(line.contains("3500") || line.contains("3.5"), "says the minimum: {line}");
    let broken: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("not-stats", "time,bytes\n0,100\n".to_string()),
        ("no-header-row", good.lines().take(5).collect::<Vec<_>>().join("\n")),
        ("bad-number", format!("{good}0,1,12x,0,0,0,0\n")),
        ("short-row", format!("{good}0,1,2\n")),
        ("bad-metadata", good.replace("# compression: none", "# compression: lots")),
        ("overlap", format!("{good}0,10,5,5,1,0,0\n5,10,5,5,1,0,0\n")),
        ("binary", "\u{0}\u{1}\u{2}garbage".to_string()),
    ];
    for (name, text) in &broken {
        let file = base.join(format!("{name}.csv"));
        fs::write(&file, text).unwrap();
        let line = bad_input(&tdu_forecast(&["--stats", s(&file), "--json"]));
        assert!(line.contains(&format!("{name}.csv")), "names the file: {line}");
    }
    let line = bad_input(&tdu_forecast(&["--stats", s(&base.join("absent.csv"))]));
    assert!(line.contains("absent.csv"), "{line}");
    // And the good one still reads.
    tdu_forecast(&["--stats", s(&stats), "--json"]).ok().json();
}

/// Files the mirror cannot read are skipped and named on stderr; the run goes on.
fn skipped_run() -> Option<(Out, u64)> {
    let dir = support::tempdir("tdu-skip");
    let base = open_to_all(dir.path());
    let source = base.join("source");
    write(&source.join("readable.txt"), b"readable\n");
    write(&source.join("sub/also readable.txt"), b"also readable\n");
    write(&source.join("sub/secret.txt"), b"mode 000\n");
    support::chmod(&source.join("sub/secret.txt"), 0o000);
    // A FIFO is skipped too (not a file the mirror copies), even for root.
    let fifo = source.join("sub/pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    let fifo_made = made.is_ok_and(|s| s.success());
    if !fifo_made {
        eprintln!("note: mkfifo failed: the FIFO sub-check is skipped");
    }
    let out = unprivileged(&["tdu", "--source", s(&source), "--json"])?;
    let out = out.ok();
    let report = out.json();
    assert_eq!(report["mirror"]["files"].as_u64(), Some(2), "only the readable files: {report}");
    let skipped: Vec<&str> =
        out.stderr_lines().into_iter().filter(|l| l.contains("skipped")).collect();
    assert!(
        skipped.iter().any(|l| l.contains("sub/secret.txt")),
        "the unreadable file is named:\n{}",
        out.stderr
    );
    if fifo_made {
        assert!(
            skipped.iter().any(|l| l.contains("sub/pipe")),
            "the FIFO is named:\n{}",
            out.stderr
        );
    }
    let expected = if fifo_made { 2 } else { 1 };
    Some((out, expected))
}

#[test]
fn unreadable_files_are_skipped_and_named_not_fatal() {
    if skipped_run().is_none() {
        eprintln!("note: cannot run as another user than root: unreadable files not checked");
    }
}

#[test]
fn unreadable_files_are_counted_in_the_report() {
    let Some((out, expected)) = skipped_run() else {
        eprintln!("note: cannot run as another user than root");
        return;
    };
    let report = out.json();
    let counted = report["mirror"].as_object().unwrap().iter().any(|(key, value)| {
        key.contains("skipped")
            && (value.as_u64() == Some(expected)
                || value.as_array().is_some_and(|a| a.len() as u64 == expected))
    });
    assert!(counted, "the report counts the {expected} skipped files: {}", report["mirror"]);
}

/// Seconds between two RFC 3339 times.
fn seconds_between(from: &Value, to: &Value) -> f64 {
    let parse = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a time: {v}")))
            .unwrap_or_else(|e| panic!("{v}: {e}"))
    };
    let millis = (parse(to) - parse(from)).num_microseconds().expect("a short duration");
    #[allow(clippy::cast_precision_loss)]
    let seconds = millis as f64 / 1e6;
    seconds
}

#[test]
fn mirror_forecast_is_honest() {
    let dir = support::tempdir("tdu-honest-mirror");
    let (source, target, data) =
        (dir.path().join("source"), dir.path().join("target"), dir.path().join("data"));
    support::make_bulk_tree(&source, 150, 15_000_000, 31);
    let limit = "2MB";
    let report = tdu(&["--source", s(&source), "--bandwidth", limit, "--json"]).ok().json();
    let forecast = num(&forecast_for(&report, 16e6)["mirror_seconds"], "mirror_seconds");
    assert!(forecast > 5.0, "15 MB at 2 MB/s: {}", report["forecasts"]);

    let daemon = Daemon::start(&data);
    daemon.create(&[
        "--name",
        "honest",
        "--source",
        s(&source),
        "--target",
        s(&target),
        "--bandwidth",
        limit,
    ]);
    daemon.job(&["start", "honest"]).ok();
    let doc = daemon.wait_show("honest", "the mirror to end", LONG * 2, |d| {
        !d["mirror_ended_at"].is_null()
            && matches!(d["state"].as_str(), Some("Protecting" | "Synchronized"))
    });
    let actual = seconds_between(&doc["mirror_started_at"], &doc["mirror_ended_at"]);
    assert_eq!(doc["bytes_mirrored"], report["mirror"]["bytes"], "the same tree: {doc}");
    assert_honest(&format!("mirror seconds at {limit}/s"), actual, forecast, 0.85..=1.15, "");
    support::wait_equal(&source, &target, LONG, Some(&daemon));
}

/// Writes each interval's bytes into new files of `dir`, spread evenly over the interval, on
/// the recording's own timetable; returns the bytes written.
fn replay_churn(dir: &Path, rows: &[Vec<f64>]) -> u64 {
    const PIECES_PER_SECOND: f64 = 10.0;
    let started = Instant::now();
    let origin = rows.first().map_or(0.0, |r| r[0]);
    let mut written = 0u64;
    let mut n = 0u64;
    for row in rows {
        let (at, seconds, bytes) = (row[0] - origin, row[1], row[2]);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let pieces = ((seconds * PIECES_PER_SECOND).round() as u64).max(1);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let total = bytes as u64;
        for k in 0..pieces {
            #[allow(clippy::cast_precision_loss)]
            let due = started + Duration::from_secs_f64(at + seconds * k as f64 / pieces as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let size = total * (k + 1) / pieces - total * k / pieces;
            if size > 0 {
                #[allow(clippy::cast_possible_truncation)]
                write(
                    &dir.join(format!("replay-{n:05}.bin")),
                    &random_bytes(5000 + n, size as usize),
                );
                written += size;
                n += 1;
            }
        }
    }
    written
}

#[test]
fn replication_forecast_is_honest() {
    let dir = support::tempdir("tdu-honest-replication");
    let (recorded, source, target, data) = (
        dir.path().join("recorded"),
        dir.path().join("source"),
        dir.path().join("target"),
        dir.path().join("data"),
    );
    write(&recorded.join("seed.bin"), &random_bytes(41, 100_000));
    write(&source.join("seed.bin"), &random_bytes(42, 100_000));
    let stats = dir.path().join("churn.csv");

    // Record 8 s of churn at about 500 kB/s.
    let churn = Churn::start(&recorded, 50_000, Duration::from_millis(100));
    tdu(&["--source", s(&recorded), "--watch", "8s", "--interval", "2s", "--stats", s(&stats)])
        .ok();
    drop(churn);
    let rows = csv_rows(&fs::read_to_string(&stats).unwrap());
    let churned: f64 = rows.iter().map(|r| r[2]).sum();
    assert!(churned > 2_000_000.0, "the recording caught the churn: {rows:?}");

    // The forecast at a limit well below the churn rate.
    let limit = "60000";
    let forecast =
        tdu_forecast(&["--stats", s(&stats), "--bandwidth", limit, "--json"]).ok().json();
    let projected = num(
        &forecast["replication"]["at_limit"]["queue_high_water_bytes"],
        "queue_high_water_bytes",
    );
    assert!(
        projected > 1_000_000.0,
        "the churn queues at {limit} B/s: {}",
        forecast["replication"]
    );

    // A real job at that limit, fed the recorded churn.
    let daemon = Daemon::start(&data);
    daemon.create(&[
        "--name",
        "replayed",
        "--source",
        s(&source),
        "--target",
        s(&target),
        "--bandwidth",
        limit,
    ]);
    daemon.job(&["start", "replayed"]).ok();
    daemon.wait_state("replayed", "Protecting", LONG);
    let writer = {
        let (source, rows) = (source.clone(), rows.clone());
        std::thread::spawn(move || replay_churn(&source, &rows))
    };
    let mut high_water = 0u64;
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut finished_at: Option<Instant> = None;
    loop {
        let doc = daemon.show("replayed");
        let queue = doc["replication_queue_bytes"].as_u64().unwrap_or(0);
        samples.push((started.elapsed().as_secs_f64(), queue));
        high_water = high_water.max(queue);
        if finished_at.is_none() && writer.is_finished() {
            finished_at = Some(Instant::now());
        }
        // Past the end of the replay the queue only drains: one more record (every 2 s)
        // catches the top, and a falling queue says it was passed.
        if let Some(at) = finished_at
            && (at.elapsed() > Duration::from_secs(5)
                || (at.elapsed() > Duration::from_millis(2500) && queue < high_water))
        {
            break;
        }
        assert!(started.elapsed() < LONG, "the replay did not finish: {samples:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let written = writer.join().unwrap();
    #[allow(clippy::cast_precision_loss)]
    let (observed, written) = (high_water as f64, written as f64);
    assert_honest(
        &format!("queue high-water bytes at {limit} B/s"),
        observed,
        projected,
        0.8..=1.2,
        &format!("{written} B replayed; samples (s, bytes): {samples:?}"),
    );
}

/// Prints and checks a measurement against the TDU's forecast of it.
fn assert_honest(
    what: &str,
    actual: f64,
    forecast: f64,
    within: std::ops::RangeInclusive<f64>,
    detail: &str,
) {
    let ratio = actual / forecast;
    eprintln!("{what}: forecast {forecast:.2}, actual {actual:.2}, ratio {ratio:.3} {detail}");
    assert!(
        within.contains(&ratio),
        "{what}: actual {actual:.2}, forecast {forecast:.2}, ratio {ratio:.3} outside {within:?} {detail}"
    );
}

/// A null-target job's `show` document once its mirror is done and its counters (recorded
/// every 2 s) stop moving.
fn settled_null_job(daemon: &Daemon, name: &str, source: &Path) -> Value {
    daemon.create(&["--name", name, "--source", s(source), "--target", "null"]);
    daemon.job(&["start", name]).ok();
    daemon.wait_state(name, "Protecting", LONG);
    // Counters are recorded every 2 s: wait for two equal readings 2.5 s apart.
    let mut last = u64::MAX;
    support::poll(
        "the counters to settle",
        LONG,
        Duration::from_millis(2500),
        || {
            let now = daemon.show(name)["bytes_sent_compressed"].as_u64().unwrap_or(0);
            let settled = now == last && now > 0;
            last = now;
            settled.then_some(())
        },
        String::new,
    );
    daemon.show(name)
}

#[test]
fn wire_bytes_cover_the_whole_mirror() {
    let dir = support::tempdir("tdu-wire");
    let (source, data) = (dir.path().join("source"), dir.path().join("data"));
    // Framing outweighs the data: 40,000 files of 50 bytes.
    for i in 0..40_000u64 {
        write(&source.join(format!("d{:02}/f{i:05}.txt", i % 100)), &random_bytes(i, 50));
    }
    let daemon = Daemon::start(&data);
    let reference = settled_null_job(&daemon, "reference", &source);
    drop(daemon);
    assert_eq!(
        reference["replication_data_bytes"].as_u64(),
        Some(0),
        "the reference job sent files twice (see a_mirror_of_many_folders_sends_each_file_once): {reference}"
    );
    let truth = reference["bytes_sent_compressed"].as_u64().unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let report = tdu(&["--source", s(&source), "--json"]).ok().json();
        seen.push(report["mirror"]["bytes_compressed"].as_u64().unwrap());
    }
    #[allow(clippy::cast_precision_loss)]
    let off = |w: u64| (w as f64 / truth as f64 - 1.0).abs();
    assert!(
        seen.iter().all(|w| off(*w) < 0.03),
        "a null-target job of the same tree sends {truth} wire bytes; three TDU runs reported {seen:?}"
    );
}

#[test]
fn a_mirror_of_many_folders_sends_each_file_once() {
    let dir = support::tempdir("tdu-overflow");
    let (source, data) = (dir.path().join("source"), dir.path().join("data"));
    // The shape of ../shared/tools/mktree.py's tree: about as many folders as files.
    for i in 0..20_000u64 {
        let path = format!("a{:02}/b{:02}/c{:03}/file {i:05}.dat", i % 17, (i / 17) % 29, i / 493);
        #[allow(clippy::cast_possible_truncation)]
        write(&source.join(path), &random_bytes(i, 1000 + (i as usize * 37) % 3000));
    }
    let (_, folders, bytes) = census(&source);
    assert!(folders > 10_000, "{folders} folders");
    let daemon = Daemon::start(&data);
    let doc = settled_null_job(&daemon, "many-folders", &source);
    let wire = doc["bytes_sent_compressed"].as_u64().unwrap_or(0);
    let replicated = doc["replication_data_bytes"].as_u64().unwrap_or(0);
    assert_eq!(
        replicated,
        0,
        "nothing changed in the source, yet replication sent {replicated} bytes of file data besides the mirror's {bytes} ({wire} wire bytes in all); daemon log:\n{}",
        daemon.log_tail(5)
    );
}

#[test]
fn replication_at_a_limit_reaches_the_target_at_the_limit() {
    let dir = support::tempdir("tdu-pacing");
    let (source, target, data) =
        (dir.path().join("source"), dir.path().join("target"), dir.path().join("data"));
    write(&source.join("seed.txt"), b"seed\n");
    let daemon = Daemon::start(&data);
    daemon.create(&[
        "--name",
        "paced",
        "--source",
        s(&source),
        "--target",
        s(&target),
        "--bandwidth",
        "60000",
    ]);
    daemon.job(&["start", "paced"]).ok();
    daemon.wait_state("paced", "Protecting", LONG);
    // Let the limiter's bucket fill (70 kB), then write 10 files of 40 kB, 50 ms apart.
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let contents: Vec<Vec<u8>> = (0..10).map(|i| random_bytes(700 + i, 40_000)).collect();
    for (i, content) in contents.iter().enumerate() {
        write(&source.join(format!("f{i}.bin")), content);
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut arrived = vec![None; contents.len()];
    while arrived.iter().any(Option::is_none) && started.elapsed() < LONG {
        for (i, content) in contents.iter().enumerate() {
            if arrived[i].is_none()
                && fs::read(target.join(format!("f{i}.bin"))).is_ok_and(|c| &c == content)
            {
                arrived[i] = Some(started.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // At 60 kB/s after a 70 kB burst, file i can go once 40 kB × (i + 1) - 70 kB have been
    // earned; allow 1.5 s for capture, the target's writes and a loaded machine.
    for (i, at) in arrived.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let due = (0.05 * i as f64).max((40_000.0 * (i as f64 + 1.0) - 70_000.0) / 60_000.0);
        let at = at.unwrap_or(f64::INFINITY);
        assert!(
            at <= due + 1.5,
            "file {i} reached the target after {at:.2} s; at 60 kB/s it was due by {due:.2} s; arrivals (s): {arrived:?}"
        );
    }
}
