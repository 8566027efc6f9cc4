//! `understudy demo`: the whole life of a files job on this machine, end to end, through the
//! real daemon, the real loopback connection and the real event log.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::client::Client;
use crate::daemon::{Daemon, ServeOptions};
use crate::replay;

/// Runs the demo in a fresh temporary folder.
///
/// # Errors
///
/// Any step failing; the message says which.
pub async fn demo(keep: Option<PathBuf>) -> Result<()> {
    let base = keep.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("understudy-demo-{}", std::process::id()))
    });
    if base.exists() {
        std::fs::remove_dir_all(&base)
            .with_context(|| format!("cannot clear {}", base.display()))?;
    }
    let (data_dir, source, target) = (base.join("data"), base.join("source"), base.join("target"));
    std::fs::create_dir_all(&source)?;
    step("generating a small source tree");
    let (files, bytes) = make_tree(&source)?;
    println!("  {files} files, {} in {}", human(bytes), source.display());

    step("starting an in-process daemon (replication and API on loopback)");
    let options = ServeOptions {
        data_dir: data_dir.clone(),
        listen: "127.0.0.1:0".parse()?,
        api: "127.0.0.1:0".parse()?,
        secret_file: None,
        tls: None,
    };
    let mut daemon = Daemon::start(&options).await?;
    let token = crate::datadir::token(&data_dir)?;
    let client = Client::with_token(&daemon.api_addr.to_string(), token);
    println!("  replication on {}, API on {}", daemon.listen_addr, daemon.api_addr);

    let result = run(&client, &source, &target).await;
    let audit = match &result {
        Ok(_) => {
            step("audit: replaying the job's history from the event log");
            let audit: replay::Audit =
                serde_json::from_value(client.get("/v1/jobs/demo/replay").await?)?;
            print!("{}", replay::render(&audit));
            Some(audit)
        }
        Err(_) => None,
    };
    daemon.stop().await;
    let job_id = result?;
    if let Some(why) = audit.and_then(|a| a.corrupt) {
        anyhow::bail!("the audit found a corrupt history: {why}");
    }

    println!();
    println!("Everything the demo made is in {}:", base.display());
    println!("  source      {}", source.display());
    println!("  target      {}", target.display());
    println!("  event log   {}", crate::datadir::events_dir(&data_dir).display());
    println!("  logs        {}", data_dir.join("logs").display());
    println!("Audit it again with: understudy replay --data-dir {} {job_id}", data_dir.display());
    Ok(())
}

async fn run(client: &Client, source: &Path, target: &Path) -> Result<understudy_core::JobId> {
    step("creating the job");
    let spec = json!({
        "name": "demo",
        "source": source.display().to_string(),
        "target": { "endpoint": "local", "path": target.display().to_string() },
        "verification": { "comparison": "checksum-send-differences" },
    });
    let created = client.post("/v1/jobs", &json!({ "spec": spec, "operator": "demo" })).await?;
    let job: understudy_core::JobId =
        created["job"].as_str().unwrap_or_default().parse().context("the new job's id")?;
    println!("  job {job}");

    step("starting it: full mirror, then continuous replication");
    command(client, "start", json!({})).await?;
    let started = Instant::now();
    let mut last_line = String::new();
    loop {
        let doc = client.get("/v1/jobs/demo").await?;
        let line = format!(
            "  {:<13} mirror {:<12} {:>6}  sent {}",
            doc["state"].as_str().unwrap_or("?"),
            doc["mirror_status"].as_str().unwrap_or("?"),
            doc["mirror_percent"].as_f64().map_or("-".into(), |p| format!("{p:.0}%")),
            human(doc["bytes_sent"].as_u64().unwrap_or(0)),
        );
        if line != last_line {
            println!("{line}");
            last_line = line;
        }
        if doc["state"] == "Protecting" {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the mirror did not finish in 2 minutes: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("  protecting after {:.1} s", started.elapsed().as_secs_f64());

    step("changing the source: each change must reach the target");
    let changes: Vec<(&str, Change)> = vec![
        (
            "create notes.txt",
            Box::new({
                let s = source.to_path_buf();
                move || std::fs::write(s.join("notes.txt"), b"written after the mirror\n")
            }),
        ),
        (
            "append to logs/app.log",
            Box::new({
                let s = source.to_path_buf();
                move || {
                    let mut f =
                        std::fs::OpenOptions::new().append(true).open(s.join("logs/app.log"))?;
                    f.write_all(b"a new line, replicated as a tail write\n")
                }
            }),
        ),
        (
            "rename docs/readme.md",
            Box::new({
                let s = source.to_path_buf();
                move || std::fs::rename(s.join("docs/readme.md"), s.join("docs/README.md"))
            }),
        ),
        (
            "delete data/file-4.bin",
            Box::new({
                let s = source.to_path_buf();
                move || std::fs::remove_file(s.join("data/file-4.bin"))
            }),
        ),
    ];
    for (what, change) in changes {
        let at = Instant::now();
        change()?;
        wait_equal(source, target, Duration::from_secs(10))
            .await
            .with_context(|| format!("after {what}"))?;
        println!(
            "  {what:<28} on the target after {:>5.1} ms",
            at.elapsed().as_secs_f64() * 1000.0
        );
    }
    // The job records replication progress every two seconds: wait for the next record.
    let waited = Instant::now();
    loop {
        let doc = client.get("/v1/jobs/demo").await?;
        if let Some(latency) = doc["recovery_point_latency_ms"].as_u64() {
            println!("  recovery point latency recorded by the job: {latency} ms");
            break;
        }
        if waited.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    step("verifying: source and target compared block by block");
    command(client, "verify", json!({})).await?;
    let summary = loop {
        let doc = client.get("/v1/jobs/demo").await?;
        if doc["mirror_status"] != "Verifying" && !doc["last_verification"].is_null() {
            break doc["last_verification"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "  {} files compared, {} different, {} missing; log: {}",
        summary["files_compared"],
        summary["files_different"],
        summary["files_missing"],
        summary["log_path"].as_str().unwrap_or("-")
    );

    step("cutting over: the target becomes the live copy");
    command(client, "cutover", json!({})).await?;
    wait_state(client, "CutOver").await?;
    let same = trees_equal(source, target)?;
    anyhow::ensure!(same, "after cutover the target differs from the source");
    println!("  CutOver; the target equals the source byte for byte");
    Ok(job)
}

/// One change the demo makes to the source.
type Change = Box<dyn Fn() -> std::io::Result<()>>;

async fn command(client: &Client, name: &str, mut extra: Value) -> Result<()> {
    extra["command"] = json!(name);
    extra["operator"] = json!("demo");
    client.post("/v1/jobs/demo/commands", &extra).await?;
    Ok(())
}

async fn wait_state(client: &Client, state: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let doc = client.get("/v1/jobs/demo").await?;
        if doc["state"] == state {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the job did not reach {state}: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_equal(source: &Path, target: &Path, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        if trees_equal(source, target)? {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "the target did not catch up in {} s",
            timeout.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether two trees hold the same names, kinds and bytes.
pub fn trees_equal(a: &Path, b: &Path) -> Result<bool> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let path = entry.path();
            let rel = path.strip_prefix(root).map(Path::to_path_buf).unwrap_or_default();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                out.push((rel, b"/".to_vec()));
                walk(root, &path, out)?;
            } else if kind.is_symlink() {
                out.push((rel, std::fs::read_link(&path)?.into_os_string().into_encoded_bytes()));
            } else {
                out.push((rel, std::fs::read(&path)?));
            }
        }
        Ok(())
    }
    let (mut left, mut right) = (Vec::new(), Vec::new());
    // Either tree may change under the walk (that is what replication does): a file gone
    // between listing and reading means "not equal yet".
    if walk(a, a, &mut left).is_err() || walk(b, b, &mut right).is_err() {
        return Ok(false);
    }
    Ok(left == right)
}

fn make_tree(root: &Path) -> Result<(u64, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    let mut seed: u64 = 0x5eed;
    let mut next = || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        seed >> 33
    };
    for dir in ["docs", "data", "logs", "data/archive/2025", "photos/été"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    let text = b"The quick brown fox jumps over the lazy dog.\n".repeat(40);
    std::fs::write(root.join("docs/readme.md"), &text)?;
    std::fs::write(root.join("logs/app.log"), b"started\n")?;
    files += 2;
    bytes += text.len() as u64 + 8;
    for i in 0..120 {
        let size = usize::try_from(next() % 200_000).unwrap_or(0);
        let content: Vec<u8> =
            (0..size).map(|j| u8::try_from((j as u64 ^ next()) & 0xff).unwrap_or(0)).collect();
        let dir = ["data", "data/archive/2025", "photos/été", "docs"][i % 4];
        std::fs::write(root.join(format!("{dir}/file-{i}.bin")), &content)?;
        files += 1;
        bytes += size as u64;
    }
    std::os::unix::fs::symlink("docs/readme.md", root.join("readme-link"))?;
    Ok((files, bytes))
}

fn step(what: &str) {
    println!("\n== {what}");
}

fn human(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)] // display only
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}
