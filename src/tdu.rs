//! `understudy tdu`: run a real diagnostics job against the null target on an in-process
//! engine, measure the mirror (and, with `--watch`, the source's churn), and forecast what a
//! real job would need. `understudy tdu forecast` answers "what if" from a statistics file.
//!
//! The diagnostics job runs unthrottled: its mirror time is the source's own pace, and the
//! model applies the job's bandwidth limit or schedule (see `understudy_simulator::tdu`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Local;
use serde_json::{Value, json};
use understudy_core::spec::{BandwidthLimit, CompressionLevel, JobSpec, validate_bandwidth};
use understudy_simulator::tdu::stats::{Interval, MirrorTotals, Stats, read_csv_file, write_csv};
use understudy_simulator::tdu::{Scenario, analyse, chart, report};

use crate::UserError;
use crate::client::Client;
use crate::daemon::{Daemon, ServeOptions};

/// What `understudy tdu` was asked.
#[derive(Debug, Clone)]
pub struct TduRun {
    /// The folder to measure.
    pub source: PathBuf,
    /// The compression level to measure with.
    pub compression: CompressionLevel,
    /// The bandwidth limit or schedule to forecast for.
    pub limit: BandwidthLimit,
    /// How long to watch the source's churn after the mirror.
    pub watch: Option<Duration>,
    /// The length of one recorded interval.
    pub interval: Duration,
    /// JSON instead of text.
    pub json: bool,
    /// Where to write the statistics file.
    pub stats: Option<PathBuf>,
    /// Where to write the chart.
    pub plot: Option<PathBuf>,
}

/// Runs the TDU.
///
/// # Errors
///
/// Bad input (a user error: exit 2) or a failure of the job.
pub async fn run(options: TduRun) -> Result<()> {
    let source = std::fs::canonicalize(&options.source).map_err(|e| {
        UserError(format!("the source {} cannot be used: {e}", options.source.display()))
    })?;
    std::fs::read_dir(&source)
        .map_err(|e| UserError(format!("the source {} cannot be read: {e}", source.display())))?;
    validate_bandwidth(&options.limit).map_err(|e| UserError(e.to_string()))?;

    let scratch = std::env::temp_dir().join(format!("understudy-tdu-{}", std::process::id()));
    let serve = ServeOptions {
        data_dir: scratch.join("data"),
        listen: "127.0.0.1:0".parse()?,
        api: "127.0.0.1:0".parse()?,
        secret_file: None,
        tls: None,
    };
    let mut daemon = Daemon::start(&serve).await?;
    let client =
        Client::with_token(&daemon.api_addr.to_string(), crate::datadir::token(&serve.data_dir)?);
    let measured = measure(&client, &source, &options).await;
    daemon.stop().await;
    std::fs::remove_dir_all(&scratch).ok();
    let mut stats = measured?;
    let scenario = Scenario::recorded(&stats, Local::now().naive_local());
    report_and_write(&mut stats, &scenario, &options.stats, &options.plot, options.json)
}

async fn measure(client: &Client, source: &Path, options: &TduRun) -> Result<Stats> {
    let mut spec = JobSpec::diagnostics("tdu", source.display().to_string());
    spec.compression = options.compression;
    client.post("/v1/jobs", &json!({ "spec": spec, "operator": "tdu" })).await?;
    let started_at = Local::now().fixed_offset();
    client.post("/v1/jobs/tdu/commands", &json!({ "command": "start" })).await?;

    let bar = progress_bar("mirroring");
    let mirror_done = loop {
        let doc = client.get("/v1/jobs/tdu").await?;
        if let Some(bar) = &bar {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a percentage
            bar.set_position(doc["mirror_percent"].as_f64().unwrap_or(0.0) as u64);
            bar.set_message(format!(
                "mirroring {} ({})",
                source.display(),
                doc["mirror_status"].as_str().unwrap_or("")
            ));
        }
        if matches!(doc["state"].as_str(), Some("Synchronized" | "Protecting")) {
            break doc;
        }
        if matches!(doc["state"].as_str(), Some("Error" | "Stopped")) {
            anyhow::bail!("the diagnostics job stopped: {}", doc["fault"]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // The wire counters come with the next replication record (every 2 s).
    let (wire, skipped) = mirror_record(client).await?;
    for (path, reason) in &skipped {
        eprintln!("skipped {path}: {reason}");
    }
    let mirror = MirrorTotals {
        files: mirror_done["files_mirrored"].as_u64().unwrap_or(0),
        folders: mirror_done["directories_mirrored"].as_u64().unwrap_or(0),
        bytes: mirror_done["bytes_mirrored"].as_u64().unwrap_or(0),
        bytes_compressed: wire.wire,
        seconds: mirror_done["last_mirror_duration_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        skipped_files: skipped.len() as u64,
    };
    #[allow(clippy::cast_precision_loss)] // ratios of byte counts
    let framing_overhead =
        if mirror.bytes > 0 { wire.raw as f64 / mirror.bytes as f64 } else { 1.0 };

    let mut intervals = Vec::new();
    if let Some(watch) = options.watch {
        let bar = progress_bar("watching");
        let began = Instant::now();
        let mut last = wire;
        let mut at = 0.0;
        while began.elapsed() < watch {
            let left = watch.saturating_sub(began.elapsed());
            let step = options.interval.min(left).max(Duration::from_millis(100));
            tokio::time::sleep(step).await;
            let doc = client.get("/v1/jobs/tdu").await?;
            let now = Counters::from(&doc);
            let seconds = step.as_secs_f64();
            intervals.push(Interval {
                at_secs: at,
                seconds,
                bytes_read: now.data.saturating_sub(last.data),
                bytes_compressed: now.wire.saturating_sub(last.wire),
                operations: now.operations.saturating_sub(last.operations),
                queue_bytes: doc["replication_queue_bytes"].as_u64().unwrap_or(0),
                send_rate_bytes_per_second: now.wire.saturating_sub(last.wire) as f64 / seconds,
            });
            at += seconds;
            last = now;
            if let Some(bar) = &bar {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                bar.set_position(
                    (began.elapsed().as_secs_f64() / watch.as_secs_f64() * 100.0) as u64,
                );
                bar.set_message(format!("watching the source: {} changes so far", last.operations));
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }
    Ok(Stats {
        started_at,
        compression: options.compression,
        limit: options.limit.clone(),
        framing_overhead,
        mirror,
        intervals,
    })
}

#[derive(Clone, Copy, Debug)]
struct Counters {
    raw: u64,
    wire: u64,
    data: u64,
    operations: u64,
}

impl Counters {
    fn from(doc: &Value) -> Counters {
        Counters {
            raw: doc["bytes_sent"].as_u64().unwrap_or(0),
            wire: doc["bytes_sent_compressed"].as_u64().unwrap_or(0),
            data: doc["replication_data_bytes"].as_u64().unwrap_or(0),
            operations: doc["replication_operations"].as_u64().unwrap_or(0),
        }
    }
}

/// From the job's history: its counters once they cover the whole mirror, and the files the
/// mirror skipped. The counters are the first recorded after `MirrorCompleted` (they are
/// recorded every 2 s while anything moves); if none comes within two periods, nothing moved
/// since the last record, so the counters shown are final.
async fn mirror_record(client: &Client) -> Result<(Counters, Vec<(String, String)>)> {
    let started = Instant::now();
    loop {
        let audit = client.get("/v1/jobs/tdu/replay").await?;
        let mut skipped = Vec::new();
        let mut mirror_ended = false;
        let mut after: Option<Counters> = None;
        for entry in audit["timeline"].as_array().into_iter().flatten() {
            let event = &entry["envelope"]["event"];
            if let Some(files) = event["MirrorFilesSkipped"]["files"].as_array() {
                skipped.extend(files.iter().map(|file| {
                    (
                        file["path"].as_str().unwrap_or_default().to_string(),
                        file["reason"].as_str().unwrap_or_default().to_string(),
                    )
                }));
            } else if event.get("MirrorCompleted").is_some() {
                mirror_ended = true;
            } else if mirror_ended
                && after.is_none()
                && let Some(progress) = event.get("ReplicationProgressed")
            {
                after = Some(Counters::from(&progress["counters"]));
            }
        }
        if let Some(counters) = after {
            return Ok((counters, skipped));
        }
        if started.elapsed() > Duration::from_secs(5) {
            return Ok((Counters::from(&client.get("/v1/jobs/tdu").await?), skipped));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn progress_bar(what: &str) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(100),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}%")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(what.to_string());
        bar
    })
}

fn report_and_write(
    stats: &mut Stats,
    scenario: &Scenario,
    stats_path: &Option<PathBuf>,
    plot: &Option<PathBuf>,
    json: bool,
) -> Result<()> {
    let analysis = analyse(stats, scenario);
    if let Some(forecast) = &analysis.replication {
        stats.apply_projection(&forecast.projected_queue);
        if let Some(plot) = plot {
            chart::write_svg(stats, forecast, plot)
                .with_context(|| format!("writing the chart {}", plot.display()))?;
        }
    } else if plot.is_some() {
        eprintln!("no chart: it shows the churn, which needs --watch");
    }
    if let Some(path) = stats_path {
        let mut file = std::fs::File::create(path)
            .map_err(|e| UserError(format!("cannot write {}: {e}", path.display())))?;
        write_csv(stats, &mut file).with_context(|| format!("writing {}", path.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&analysis.report)?);
    } else {
        print!("{}", report::render_text(&analysis.report));
        if let Some(path) = stats_path {
            println!("statistics: {}", path.display());
        }
        if let (Some(path), Some(_)) = (plot, &analysis.replication) {
            println!("chart: {}", path.display());
        }
    }
    Ok(())
}

/// `understudy tdu forecast`: "what if" from a statistics file.
///
/// # Errors
///
/// A malformed statistics file or bandwidth (a user error: exit 2).
pub fn forecast(
    stats_path: &Path,
    compression: Option<CompressionLevel>,
    limit: Option<BandwidthLimit>,
    json: bool,
    plot: &Option<PathBuf>,
) -> Result<()> {
    let mut stats = read_csv_file(stats_path).map_err(|e| UserError(e.to_string()))?;
    let mut scenario = Scenario::recorded(&stats, Local::now().naive_local());
    if let Some(limit) = limit {
        validate_bandwidth(&limit).map_err(|e| UserError(e.to_string()))?;
        scenario.limit = limit;
    }
    if let Some(level) = compression {
        scenario.compression = level;
    }
    report_and_write(&mut stats, &scenario, &None, plot, json)
}
