//! `understudy bench tdu`: the TDU's figures, each against a peer measured in the same run on
//! the same tree.
//!
//! 1. The null-target mirror with compression none (`understudy tdu`, unthrottled) against
//!    just reading the tree: `tar cf - DIR` into a pipe that discards it, and a plain read of
//!    every file. (`tar cf - DIR > /dev/null` is timed too, but GNU tar does not read file
//!    data when its archive is `/dev/null`, so it is shown and not used as the peer.)
//! 2. Each compression level on the same tree: data bytes, wire bytes (the ratio), the
//!    mirror's elapsed time and the CPU time of the whole `understudy tdu` process.
//! 3. Forecast against reality: the TDU's forecast of the mirror over a fixed limit, then a
//!    real files job with that limit to a target on this machine (a local daemon), timed from
//!    its `mirror_started_at` to its `mirror_ended_at`.
//! 4. The replication forecast against reality: churn recorded with `understudy tdu --watch`
//!    on a copy of the tree, forecast at a limit, replayed into a real files job at that limit
//!    ([`replication`]).
//!
//! The default tree is `../shared/tools/mktree.py`'s (20,000 files, 1 GiB, heavy-tailed sizes,
//! nested folders with spaces and non-ASCII names, half the data compressible), made by that
//! script when it and python3 are there, else by the same recipe in Rust. Every measurement
//! runs on a warm page cache (the tree is read once first).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use understudy_core::spec::{BandwidthLimit, JobSpec, TargetEndpoint, TargetSpec};

use crate::bench_support::{BenchDaemon, Census, gib, make_tree, time_plain_read, warm};

mod replication;

/// What to measure.
#[derive(Debug, Clone)]
pub struct TduBench {
    /// An existing tree to measure (left as it is); without it one is generated.
    pub tree: Option<PathBuf>,
    /// Files in the generated tree.
    pub files: u64,
    /// Size of the generated tree, in MiB.
    pub total_mb: u64,
    /// The bandwidth limit of the mirror forecast-against-reality figure, in MB/s (10^6 bytes).
    pub limit_mb: u64,
    /// The bandwidth limit of the replication forecast-against-reality figure, in kB/s.
    pub replication_limit_kb: u64,
}

/// The levels, in the order they are measured.
const LEVELS: [&str; 4] = ["none", "minimum", "medium", "maximum"];

/// Each throughput is measured this many times, interleaved; the best counts.
const RUNS: usize = 2;

/// Runs the benchmark and prints its figures.
///
/// # Errors
///
/// The tree cannot be made or read, tar is missing, a daemon does not start, or a job fails.
pub fn run(options: &TduBench) -> Result<()> {
    if options.limit_mb == 0 {
        return Err(crate::UserError("--limit-mb must be at least 1".into()).into());
    }
    if options.replication_limit_kb < 4 {
        return Err(crate::UserError(
            "--replication-limit-kb must be at least 4 (a limit is at least 3500 B/s)".into(),
        )
        .into());
    }
    let base = std::env::temp_dir().join(format!("understudy-bench-tdu-{}", std::process::id()));
    if base.exists() {
        std::fs::remove_dir_all(&base)?;
    }
    std::fs::create_dir_all(&base)?;
    let result = measure(options, &base);
    std::fs::remove_dir_all(&base).ok();
    result
}

fn measure(options: &TduBench, base: &Path) -> Result<()> {
    let tree = match &options.tree {
        Some(tree) => {
            let tree = std::fs::canonicalize(tree).map_err(|e| {
                crate::UserError(format!("the tree {} cannot be used: {e}", tree.display()))
            })?;
            println!("tree: {}", tree.display());
            tree
        }
        None => {
            let tree = base.join("tree");
            let how = make_tree(&tree, options.files, options.total_mb)?;
            println!("tree: made by {how} in {}", tree.display());
            tree
        }
    };
    let census = Census::of(&tree)?;
    println!(
        "      {} files, {} folders, {:.3} GiB; warm page cache (read once before measuring)",
        census.files,
        census.folders,
        gib(census.bytes)
    );
    let limit_bytes = options.limit_mb * 1_000_000;
    let ticks = clock_ticks();

    // 1. The null-target mirror against reading the tree.
    warm(&tree)?;
    let mut tar_pipe = Vec::new();
    let mut plain = Vec::new();
    let mut ours: Vec<TduRun> = Vec::new();
    let tar_devnull = time_tar_devnull(&tree)?;
    for _ in 0..RUNS {
        tar_pipe.push(time_tar_pipe(&tree)?);
        ours.push(tdu(&tree, "none", Some(limit_bytes), ticks)?);
        plain.push(time_plain_read(&tree)?);
    }
    let best_ours = ours
        .iter()
        .min_by(|a, b| a.mirror_seconds.total_cmp(&b.mirror_seconds))
        .context("no TDU run")?
        .clone();
    if best_ours.files != census.files || best_ours.bytes != census.bytes {
        bail!(
            "the TDU mirrored {} files, {} bytes; the tree has {} files, {} bytes",
            best_ours.files,
            best_ours.bytes,
            census.files,
            census.bytes
        );
    }
    let tar_best = best(&tar_pipe);
    let plain_best = best(&plain);
    let rate = |seconds: f64| census.bytes as f64 / seconds / 1e6;
    println!();
    println!(
        "1. null-target mirror, compression none, against reading the tree (best of {RUNS}, same run)"
    );
    println!(
        "   understudy tdu (mirror)            {:>8.2} s  {:>8.1} MB/s",
        best_ours.mirror_seconds,
        rate(best_ours.mirror_seconds)
    );
    println!(
        "   tar cf - DIR | (discard)           {:>8.2} s  {:>8.1} MB/s   tdu speed / tar speed = {:.2}",
        tar_best,
        rate(tar_best),
        tar_best / best_ours.mirror_seconds
    );
    println!(
        "   plain read of every file (1 MiB)   {:>8.2} s  {:>8.1} MB/s   tdu speed / read speed = {:.2}",
        plain_best,
        rate(plain_best),
        plain_best / best_ours.mirror_seconds
    );
    println!(
        "   (tar cf - DIR > /dev/null          {:>8.2} s: GNU tar skips reading file data when its archive is /dev/null, so it is no peer)",
        tar_devnull
    );
    println!(
        "   runs: tdu {} (wire bytes {}); tar {}; read {}",
        list(&ours.iter().map(|r| r.mirror_seconds).collect::<Vec<_>>()),
        ours.iter().map(|r| r.bytes_compressed.to_string()).collect::<Vec<_>>().join(", "),
        list(&tar_pipe),
        list(&plain)
    );

    // 2. Compression levels.
    println!();
    println!("2. compression levels (understudy tdu, unthrottled, null target)");
    println!(
        "   {:<8} {:>14} {:>14} {:>7} {:>10} {:>10} {:>10}",
        "level", "data bytes", "wire bytes", "ratio", "mirror s", "CPU s", "MB/s"
    );
    for level in LEVELS {
        let run = if level == "none" { best_ours.clone() } else { tdu(&tree, level, None, ticks)? };
        println!(
            "   {:<8} {:>14} {:>14} {:>7.3} {:>10.2} {:>10.2} {:>10.1}",
            level,
            run.bytes,
            run.bytes_compressed,
            run.bytes_compressed as f64 / run.bytes.max(1) as f64,
            run.mirror_seconds,
            run.cpu_seconds,
            rate(run.mirror_seconds)
        );
    }
    println!(
        "   (ratio: wire bytes per data byte, framing included; CPU: user + system time of the whole `understudy tdu` process, its in-process engine included)"
    );

    // 3. Forecast against a real files job at the limit.
    let forecast = best_ours.limit_forecast.context("the TDU gave no forecast for the limit")?;
    println!();
    println!(
        "3. forecast against reality: a files job limited to {} MB/s, to a target on this machine",
        options.limit_mb
    );
    let actual = real_mirror(base, &tree, limit_bytes)?;
    println!(
        "   forecast {forecast:.2} s   actual {:.2} s (mirror_started_at to mirror_ended_at; {:.2} s from the start command)   actual / forecast = {:.3}",
        actual.mirror_seconds,
        actual.from_start_seconds,
        actual.mirror_seconds / forecast
    );
    println!(
        "   wire bytes: the TDU measured {}, the files job sent {} (ratio {:.3}); the job's replication sent {} bytes of file data although nothing changed",
        best_ours.bytes_compressed,
        actual.wire_bytes,
        actual.wire_bytes as f64 / best_ours.bytes_compressed.max(1) as f64,
        actual.replication_data_bytes
    );

    // 4. The replication forecast against a real job fed the recorded churn.
    let limit = options.replication_limit_kb * 1000;
    println!();
    println!(
        "4. replication forecast against reality: churn recorded with tdu --watch on a copy of the tree, replayed into a files job limited to {} kB/s",
        options.replication_limit_kb
    );
    let churn = replication::measure(base, &tree, limit)?;
    println!(
        "   recorded {:.1} MB of changes: mean {:.0} kB/s, peak interval {:.0} kB/s",
        churn.recorded_bytes / 1e6,
        churn.recorded_mean / 1e3,
        churn.recorded_peak / 1e3
    );
    println!(
        "   queue high-water mark: forecast {:.2} MB   actual {:.2} MB (at {:.0} s of the replay; {:.1} MB replayed)   actual / forecast = {:.3}",
        churn.forecast / 1e6,
        churn.actual / 1e6,
        churn.peak_at,
        churn.replayed as f64 / 1e6,
        churn.actual / churn.forecast
    );
    Ok(())
}

fn best(runs: &[f64]) -> f64 {
    runs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn list(runs: &[f64]) -> String {
    runs.iter().map(|r| format!("{r:.2} s")).collect::<Vec<_>>().join(", ")
}

/// `tar cf - DIR` into a pipe whose reader discards what it gets; seconds.
fn time_tar_pipe(root: &Path) -> Result<f64> {
    let started = Instant::now();
    let mut tar = Command::new("tar")
        .arg("cf")
        .arg("-")
        .arg("-C")
        .arg(root)
        .arg(".")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running tar (is it installed?)")?;
    let mut out = tar.stdout.take().context("tar's output")?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut archived = 0u64;
    loop {
        let n = out.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        archived += n as u64;
    }
    let status = tar.wait()?;
    let elapsed = started.elapsed().as_secs_f64();
    if !status.success() || archived == 0 {
        bail!("tar cf - {} failed: {status}", root.display());
    }
    Ok(elapsed)
}

/// `tar cf - DIR > /dev/null`, literally; seconds.
fn time_tar_devnull(root: &Path) -> Result<f64> {
    let started = Instant::now();
    let devnull = std::fs::File::create("/dev/null")?;
    let status = Command::new("tar")
        .arg("cf")
        .arg("-")
        .arg("-C")
        .arg(root)
        .arg(".")
        .stdout(devnull)
        .status()
        .context("running tar (is it installed?)")?;
    if !status.success() {
        bail!("tar cf - {} > /dev/null failed: {status}", root.display());
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Clock ticks per second, the unit of `/proc/self/stat`'s times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU seconds of this process's waited-for children so far.
fn children_cpu_seconds(ticks: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which may hold spaces) start at field 3 (state);
    // cutime and cstime are fields 16 and 17.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (field(16) + field(17)) / ticks
}

/// What one `understudy tdu --json` run reported.
#[derive(Clone, Debug)]
struct TduRun {
    files: u64,
    bytes: u64,
    bytes_compressed: u64,
    mirror_seconds: f64,
    cpu_seconds: f64,
    /// The forecast of the mirror over the `--bandwidth` given, if one was.
    limit_forecast: Option<f64>,
}

/// Runs this binary's `tdu` on `tree` and reads its report.
fn tdu(tree: &Path, level: &str, limit: Option<u64>, ticks: f64) -> Result<TduRun> {
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("tdu").arg("--source").arg(tree).arg("--compression").arg(level).arg("--json");
    if let Some(limit) = limit {
        command.arg("--bandwidth").arg(limit.to_string());
    }
    let cpu_before = children_cpu_seconds(ticks);
    let output = command.stdin(Stdio::null()).output().context("running understudy tdu")?;
    let cpu_seconds = children_cpu_seconds(ticks) - cpu_before;
    if !output.status.success() {
        bail!(
            "understudy tdu --compression {level} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let report: Value = serde_json::from_slice(&output.stdout).context("reading tdu's JSON")?;
    let mirror = &report["mirror"];
    let limit_forecast = limit.and_then(|limit| {
        report["forecasts"].as_array()?.iter().find_map(|f| {
            (f["link_bits_per_second"].as_f64() == Some(limit as f64 * 8.0))
                .then(|| f["mirror_seconds"].as_f64())
                .flatten()
        })
    });
    Ok(TduRun {
        files: mirror["files"].as_u64().unwrap_or(0),
        bytes: mirror["bytes"].as_u64().unwrap_or(0),
        bytes_compressed: mirror["bytes_compressed"].as_u64().unwrap_or(0),
        mirror_seconds: mirror["seconds"].as_f64().unwrap_or(f64::NAN),
        cpu_seconds,
        limit_forecast,
    })
}

struct Actual {
    mirror_seconds: f64,
    from_start_seconds: f64,
    /// Wire bytes the job sent in all, once its counters settled.
    wire_bytes: u64,
    /// File data sent by replication although nothing changed (files sent twice).
    replication_data_bytes: u64,
}

/// A files job from `tree` to a local target with a fixed limit: its mirror's duration.
fn real_mirror(base: &Path, tree: &Path, limit: u64) -> Result<Actual> {
    let target = base.join("target");
    let daemon = BenchDaemon::start(&base.join("daemon"))?;
    let spec = JobSpec {
        name: "bench-tdu".into(),
        source: tree.display().to_string(),
        target: TargetSpec { endpoint: TargetEndpoint::Local, path: target.display().to_string() },
        bandwidth: BandwidthLimit::Fixed { bytes_per_second: limit },
        ..JobSpec::default()
    };
    // Dirty pages of earlier steps are written back before the clock starts.
    crate::bench_support::settle();
    let runtime = crate::cli::runtime()?;
    let actual = runtime.block_on(async {
        let client = &daemon.client;
        client.post("/v1/jobs", &json!({ "spec": spec, "operator": "bench" })).await?;
        let started = Instant::now();
        client.post("/v1/jobs/bench-tdu/commands", &json!({ "command": "start" })).await?;
        loop {
            let doc = client.get("/v1/jobs/bench-tdu").await?;
            let state = doc["state"].as_str().unwrap_or_default();
            if !doc["mirror_ended_at"].is_null() && matches!(state, "Synchronized" | "Protecting") {
                let from_start_seconds = started.elapsed().as_secs_f64();
                let mirror_seconds =
                    seconds_between(&doc["mirror_started_at"], &doc["mirror_ended_at"])?;
                // Counters are recorded every 2 s: wait until two readings agree.
                let mut last = Value::Null;
                let doc = loop {
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    let doc = client.get("/v1/jobs/bench-tdu").await?;
                    if doc["bytes_sent_compressed"] == last["bytes_sent_compressed"] {
                        break doc;
                    }
                    last = doc;
                };
                return Ok::<_, anyhow::Error>(Actual {
                    mirror_seconds,
                    from_start_seconds,
                    wire_bytes: doc["bytes_sent_compressed"].as_u64().unwrap_or(0),
                    replication_data_bytes: doc["replication_data_bytes"].as_u64().unwrap_or(0),
                });
            }
            if matches!(state, "Error" | "Stopped") {
                bail!("the files job stopped: {}", doc["fault"]);
            }
            if started.elapsed() > Duration::from_secs(24 * 3600) {
                bail!("the files job's mirror did not end: {doc}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })?;
    drop(daemon);
    Ok(actual)
}

fn seconds_between(from: &Value, to: &Value) -> Result<f64> {
    let parse = |v: &Value| -> Result<chrono::DateTime<chrono::FixedOffset>> {
        let text = v.as_str().with_context(|| format!("not a time: {v}"))?;
        Ok(chrono::DateTime::parse_from_rfc3339(text)?)
    };
    let micros = (parse(to)? - parse(from)?).num_microseconds().context("a long mirror")?;
    Ok(micros as f64 / 1e6)
}
