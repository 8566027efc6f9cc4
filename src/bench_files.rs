//! `understudy bench files`: a files job against `rsync -a` to an rsync daemon on loopback,
//! measured in the same run on the same tree and the same disk.
//!
//! - initial mirror into an empty target;
//! - differential remirror after 1 % of the files changed, and with nothing changed;
//! - replication latency: files written at a fixed rate, each timed from the write returning on
//!   the source to identical bytes readable on the target;
//! - the daemon's peak resident memory.
//!
//! The daemon runs as its own process (this binary's `serve`), so its memory is its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench_support::{BenchDaemon, Census, free_port, gib, make_tree, settle, walk, warm};
use crate::client::Client;

/// What to measure.
#[derive(Debug, Clone)]
pub struct FilesBench {
    /// Files in the tree.
    pub files: u64,
    /// Total size of the tree in MiB.
    pub total_mb: u64,
    /// Replication: writes per second.
    pub rate: u64,
    /// Replication: seconds of writing.
    pub seconds: u64,
    /// Scratch folder (default: a temporary one).
    pub dir: Option<PathBuf>,
    /// How many times each mirror is measured (the best run counts).
    pub runs: u32,
}

/// How long ext4 without a journal passes over a freed inode each time it allocates one in
/// its group: 60 s (`RECENTCY_MIN`) plus 300 s while the inode's table block is dirty
/// (`RECENTCY_DIRTY`), which any file created near it makes it again. Plus a margin.
const FREED_INODES_SETTLE: Duration = Duration::from_secs(362);

/// When a bench run last deleted its trees (seconds since the Unix epoch), for the next run.
fn deletion_marker() -> PathBuf {
    std::env::temp_dir().join("understudy-bench-files.deleted-at")
}

/// Deletes `dir` and its trees, syncs, and records when.
fn delete_trees(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir)?;
    settle();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    std::fs::write(deletion_marker(), now.to_string())?;
    Ok(())
}

/// How much longer until the trees an earlier run deleted (as `marker` says) no longer slow
/// file creation.
fn freed_inodes_wait(marker: &Path) -> Option<Duration> {
    let deleted: u64 = std::fs::read_to_string(marker).ok()?.trim().parse().ok()?;
    let since = SystemTime::now().duration_since(UNIX_EPOCH + Duration::from_secs(deleted)).ok()?;
    FREED_INODES_SETTLE.checked_sub(since)
}

struct RsyncDaemon {
    child: Child,
    port: u16,
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the benchmark and prints its figures.
///
/// # Errors
///
/// rsync is missing, a daemon does not start, or a job fails.
pub async fn run(options: FilesBench) -> Result<()> {
    if Command::new("rsync").arg("--version").stdout(Stdio::null()).status().is_err() {
        bail!(
            "rsync is not installed: run .ci/setup (it installs what the benchmarks compare against)"
        );
    }
    let base = options.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("understudy-bench-files-{}", std::process::id()))
    });
    // What an earlier run left is deleted now, and the runs wait until the inodes of what
    // any run deleted are six minutes old: ext4 without a journal passes over every inode
    // freed since then each time it allocates one, so a mirror right after a large deletion
    // measures that (the same mirror took 3 to 15 s).
    if base.exists() {
        delete_trees(&base)?;
    }
    let source = base.join("source");
    std::fs::create_dir_all(&source)?;
    let how = make_tree(&source, options.files, options.total_mb)?;
    let Census { files, bytes, .. } = Census::of(&source)?;
    println!("tree: {files} files, {:.2} GiB in {} (made by {how})", gib(bytes), source.display());
    warm(&source)?;
    if let Some(wait) = freed_inodes_wait(&deletion_marker()) {
        println!(
            "waiting {:.0} s until the files an earlier run deleted are six minutes old (ext4 without a journal slows every file creation until then)",
            wait.as_secs_f64()
        );
        std::thread::sleep(wait);
    }

    let rsync = start_rsync(&base)?;
    let daemon = BenchDaemon::start(&base.join("daemon"))?;

    // Initial mirror: the best of `runs`, each into an empty target. Who goes first
    // alternates: the file system's state (page cache, inodes freed moments ago, which ext4
    // without a journal skips while allocating) favours neither side.
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut job = String::new();
    for run in 0..options.runs.max(1) {
        let rsync_target = base.join(format!("rsync-target-{run}"));
        let target = base.join(format!("understudy-target-{run}"));
        job = format!("bench-{run}");
        if run % 2 == 0 {
            theirs.push(time_rsync(&rsync, &source, &rsync_target)?);
            ours.push(initial_mirror(&daemon.client, &job, &source, &target).await?);
        } else {
            ours.push(initial_mirror(&daemon.client, &job, &source, &target).await?);
            theirs.push(time_rsync(&rsync, &source, &rsync_target)?);
        }
        // The earlier targets stay until the end: deleting one here would make the next
        // run allocate among freshly freed inodes.
        if run + 1 < options.runs {
            command(&daemon.client, &job, "delete").await?;
        }
    }
    let theirs_best = RsyncTime {
        plain: best(&theirs.iter().map(|t| t.plain).collect::<Vec<_>>()),
        durable: best(&theirs.iter().map(|t| t.durable).collect::<Vec<_>>()),
    };
    row("initial mirror", best(&ours), theirs_best);
    let rsync_target = base.join(format!("rsync-target-{}", options.runs.max(1) - 1));
    let target = base.join(format!("understudy-target-{}", options.runs.max(1) - 1));
    check_equal(&source, &target)?;

    // 1 % of the files change: a block in the middle rewritten.
    let changed = change_files(&source, files / 100)?;
    let theirs = time_rsync(&rsync, &source, &rsync_target)?;
    let ours = remirror(&daemon.client, &job).await?;
    row(&format!("remirror, {changed} files changed"), ours, theirs);
    check_equal(&source, &target)?;

    let theirs = time_rsync(&rsync, &source, &rsync_target)?;
    let ours = remirror(&daemon.client, &job).await?;
    row("remirror, nothing changed", ours, theirs);

    // Replication latency at a fixed write rate.
    let latencies = replication(&source, &target, options.rate, options.seconds)?;
    let pass = time_rsync(&rsync, &source, &rsync_target)?;
    let (p50, p99, max) =
        (percentile(&latencies, 50.0), percentile(&latencies, 99.0), percentile(&latencies, 100.0));
    println!(
        "replication, {} writes/s for {} s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} writes); one rsync -a pass takes {:.0} ms (p99 / pass = {:.2})",
        options.rate,
        options.seconds,
        p50,
        p99,
        max,
        latencies.len(),
        pass.plain.as_secs_f64() * 1000.0,
        p99 / (pass.plain.as_secs_f64() * 1000.0)
    );
    check_equal(&source, &target)?;
    println!("daemon peak resident memory: {} MB", peak_rss_mb(daemon.child.id())?);
    drop(daemon);
    drop(rsync);
    if options.dir.is_none() {
        delete_trees(&base)?;
    }
    Ok(())
}

/// One rsync pass: until rsync returns, and until what it wrote is on disk (`sync` after it),
/// which is what understudy's figure includes: its target acknowledges only durable data.
#[derive(Clone, Copy)]
struct RsyncTime {
    plain: Duration,
    durable: Duration,
}

fn row(what: &str, ours: Duration, theirs: RsyncTime) {
    let ours = ours.as_secs_f64();
    let (plain, durable) = (theirs.plain.as_secs_f64(), theirs.durable.as_secs_f64());
    println!(
        "{what:<28} understudy {ours:>6.2} s | rsync -a (daemon) {plain:>6.2} s, ratio {:.2} | rsync -a + sync {durable:>6.2} s, ratio {:.2}",
        ours / plain,
        ours / durable
    );
}

fn best(runs: &[Duration]) -> Duration {
    runs.iter().min().copied().unwrap_or_default()
}

fn start_rsync(base: &Path) -> Result<RsyncDaemon> {
    let port = free_port()?;
    let config = base.join("rsyncd.conf");
    let mut text = format!(
        "use chroot = no\npid file = {}\n[bench]\npath = {}\nread only = no\n",
        base.join("rsyncd.pid").display(),
        base.display()
    );
    if crate::datadir::is_root() {
        text.push_str("uid = root\ngid = root\n");
    }
    std::fs::write(&config, text)?;
    let child = Command::new("rsync")
        .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
        .arg(format!("--config={}", config.display()))
        .arg(format!("--port={port}"))
        .stderr(Stdio::null())
        .spawn()
        .context("starting the rsync daemon")?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the rsync daemon did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(RsyncDaemon { child, port })
}

fn time_rsync(rsync: &RsyncDaemon, source: &Path, target: &Path) -> Result<RsyncTime> {
    let name = target.file_name().and_then(|n| n.to_str()).context("target name")?;
    std::fs::create_dir_all(target)?;
    settle();
    let started = Instant::now();
    let status = Command::new("rsync")
        .arg("-a")
        .arg("--delete")
        .arg(format!("{}/", source.display()))
        .arg(format!("rsync://127.0.0.1:{}/bench/{name}/", rsync.port))
        .status()
        .context("running rsync")?;
    let plain = started.elapsed();
    if !status.success() {
        bail!("rsync failed: {status}");
    }
    settle();
    Ok(RsyncTime { plain, durable: started.elapsed() })
}

async fn command(client: &Client, job: &str, name: &str) -> Result<()> {
    client.post(&format!("/v1/jobs/{job}/commands"), &json!({ "command": name })).await?;
    Ok(())
}

async fn show(client: &Client, job: &str) -> Result<Value> {
    client.get(&format!("/v1/jobs/{job}")).await
}

/// From the start command to the mirror's completion (all of it durable on the target).
async fn initial_mirror(
    client: &Client,
    job: &str,
    source: &Path,
    target: &Path,
) -> Result<Duration> {
    let spec = json!({
        "name": job,
        "source": source.display().to_string(),
        "target": { "endpoint": "local", "path": target.display().to_string() },
    });
    client.post("/v1/jobs", &json!({ "spec": spec })).await?;
    settle();
    let started = Instant::now();
    command(client, job, "start").await?;
    wait_mirror_done(client, job, None, started).await
}

async fn remirror(client: &Client, job: &str) -> Result<Duration> {
    let before = show(client, job).await?["mirror_ended_at"].clone();
    settle();
    let started = Instant::now();
    client.post(&format!("/v1/jobs/{job}/commands"), &json!({ "command": "start-mirror" })).await?;
    wait_mirror_done(client, job, Some(before), started).await
}

async fn wait_mirror_done(
    client: &Client,
    job: &str,
    previous_end: Option<Value>,
    started: Instant,
) -> Result<Duration> {
    loop {
        let doc = show(client, job).await?;
        let ended = &doc["mirror_ended_at"];
        let state = doc["state"].as_str().unwrap_or_default();
        if !ended.is_null()
            && Some(ended) != previous_end.as_ref()
            && matches!(state, "Synchronized" | "Protecting")
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the mirror did not finish: {doc}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn check_equal(source: &Path, target: &Path) -> Result<()> {
    let started = Instant::now();
    while !crate::demo::trees_equal(source, target)? {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the target does not equal the source");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Rewrites 4 KiB in the middle of `count` files (and moves their mtimes).
fn change_files(root: &Path, count: u64) -> Result<u64> {
    let files = walk(root)?;
    let step = (files.len() as u64 / count.max(1)).max(1);
    let mut changed = 0;
    for path in files
        .iter()
        .step_by(usize::try_from(step).unwrap_or(1))
        .take(usize::try_from(count).unwrap_or(0))
    {
        let len = std::fs::metadata(path)?.len();
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        let offset = len / 2;
        std::os::unix::fs::FileExt::write_all_at(&file, &[0xA5; 4096], offset)?;
        changed += 1;
    }
    // Make sure mtimes move past the granularity of the file system.
    std::thread::sleep(Duration::from_millis(20));
    Ok(changed)
}

/// Writes `rate` files per second for `seconds`; returns each write's latency in ms.
fn replication(source: &Path, target: &Path, rate: u64, seconds: u64) -> Result<Vec<f64>> {
    let dir = source.join("replication-bench");
    std::fs::create_dir_all(&dir)?;
    // Let the new folder reach the target first.
    let started = Instant::now();
    while !target.join("replication-bench").is_dir() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the replication folder never reached the target");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, Vec<u8>, Instant)>();
    let target_dir = target.join("replication-bench");
    let checker = std::thread::spawn(move || {
        let mut pending: Vec<(PathBuf, Vec<u8>, Instant)> = Vec::new();
        let mut latencies = Vec::new();
        let mut open = true;
        while open || !pending.is_empty() {
            loop {
                match rx.try_recv() {
                    Ok(item) => pending.push(item),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            pending.retain(|(path, content, at)| {
                if std::fs::read(path).is_ok_and(|c| &c == content) {
                    latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                    false
                } else {
                    at.elapsed() < Duration::from_secs(60)
                }
            });
            std::thread::sleep(Duration::from_micros(500));
        }
        latencies
    });
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = Instant::now();
    let total = rate * seconds;
    for i in 0..total {
        let due = started + interval * u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Files are reused, so some writes overwrite what the target already has.
        let name = format!("w{:04}.dat", i % 2000);
        let content = format!("write {i} {:?}\n", Instant::now()).repeat(64).into_bytes();
        std::fs::write(dir.join(&name), &content)?;
        let _ = tx.send((target_dir.join(&name), content, Instant::now()));
    }
    drop(tx);
    let latencies = checker.join().map_err(|_| anyhow::anyhow!("the latency checker failed"))?;
    if latencies.len() as u64 != total {
        bail!("only {} of {total} writes reached the target within 60 s", latencies.len());
    }
    Ok(latencies)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let index = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn peak_rss_mb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(kb / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_waits_out_six_minutes_after_the_last_deletion_only() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("deleted-at");
        assert_eq!(freed_inodes_wait(&marker), None, "nothing deleted yet");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        std::fs::write(&marker, (now - 10).to_string()).unwrap();
        let wait = freed_inodes_wait(&marker).expect("deleted 10 s ago");
        assert!(wait <= FREED_INODES_SETTLE - Duration::from_secs(9), "{wait:?}");
        assert!(wait >= FREED_INODES_SETTLE - Duration::from_secs(12), "{wait:?}");
        std::fs::write(&marker, (now - 400).to_string()).unwrap();
        assert_eq!(freed_inodes_wait(&marker), None, "deleted long enough ago");
        std::fs::write(&marker, "garbage").unwrap();
        assert_eq!(freed_inodes_wait(&marker), None, "an unreadable record does not hold a run");
    }
}
