//! `understudy job …` and `understudy events`: the command line over the daemon's API.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use understudy_core::spec::{
    BandwidthLimit, BandwidthWindow, CompressionLevel, DayOfWeek, Days, DiskQueue, FailureTrigger,
    JobSpec, JobType, MirrorComparison, OrphanPolicy, QueuePolicy, Script, TargetEndpoint,
    TargetSpec, VerificationSchedule, VerifyAction,
};
use understudy_core::status::StateName;

use crate::client::Client;
use crate::{CheckFailed, UserError};

/// The job commands.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Create a job; prints its id.
    Create(Box<CreateArgs>),
    /// Start a stopped job, resume a paused one, or retry one in Error.
    Start {
        /// Job id or unique name.
        job: String,
    },
    /// Pause: keep the connection, queue changes on the source.
    Pause {
        /// Job id or unique name.
        job: String,
    },
    /// Stop: no connection, nothing queued; a remirror follows the next start.
    Stop {
        /// Job id or unique name.
        job: String,
    },
    /// Stop (if running) and delete the job.
    Delete {
        /// Job id or unique name.
        job: String,
    },
    /// Every job, a line each.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One job's state and status.
    Show {
        /// Job id or unique name.
        job: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until the job reaches a state (exit 1 if it does not in time).
    Wait {
        /// Job id or unique name.
        job: String,
        /// The state to wait for (Protecting, CutOver, …).
        #[arg(long)]
        state: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Verify the target against the source now.
    Verify {
        /// Job id or unique name.
        job: String,
        /// Also remirror what differs.
        #[arg(long)]
        remirror: bool,
    },
    /// Cut over (migration): the target becomes the live copy.
    Cutover {
        /// Job id or unique name.
        job: String,
        /// Discard what the target has not applied instead of applying it.
        #[arg(long)]
        discard_queue: bool,
    },
    /// Fail over (protection).
    Failover {
        /// Job id or unique name.
        job: String,
        /// A test failover: the source stays up.
        #[arg(long)]
        test: bool,
        /// Apply the target queue first (the default).
        #[arg(long, conflicts_with = "discard_queue")]
        apply_queue: bool,
        /// Discard the target queue and fail over at once.
        #[arg(long)]
        discard_queue: bool,
    },
    /// Undo a failover or test failover.
    UndoFailover {
        /// Job id or unique name.
        job: String,
    },
    /// Reverse protection after a failover.
    Reverse {
        /// Job id or unique name.
        job: String,
    },
    /// Start, pause, resume or stop the job's mirror.
    Mirror {
        /// Job id or unique name.
        job: String,
        /// What to do.
        action: MirrorAction,
        /// The comparison for `start`.
        #[arg(long)]
        comparison: Option<Comparison>,
    },
    /// Find and delete orphans on the target now.
    DeleteOrphans {
        /// Job id or unique name.
        job: String,
    },
    /// Change the bandwidth limit while the job runs.
    SetBandwidth {
        /// Job id or unique name.
        job: String,
        #[command(flatten)]
        bandwidth: BandwidthArgs,
    },
    /// The job log: state transitions in the seeds' wording, and what happened.
    Log {
        /// Job id or unique name.
        job: String,
    },
}

/// Mirror actions.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MirrorAction {
    /// Start a mirror.
    Start,
    /// Pause it (keeps its place).
    Pause,
    /// Resume it.
    Resume,
    /// Stop it (a new mirror starts over).
    Stop,
}

/// The seeds' four mirror options.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Comparison {
    /// Do not compare files; send the entire file.
    Everything,
    /// Compare attributes; send the entire file.
    AttributesWhole,
    /// Compare attributes; send the bytes that differ (the default).
    AttributesDiff,
    /// Compare attributes and data; send the bytes that differ.
    Checksum,
}

impl From<Comparison> for MirrorComparison {
    fn from(c: Comparison) -> Self {
        match c {
            Comparison::Everything => MirrorComparison::SendEverything,
            Comparison::AttributesWhole => MirrorComparison::AttributesSendWhole,
            Comparison::AttributesDiff => MirrorComparison::AttributesSendDifferences,
            Comparison::Checksum => MirrorComparison::ChecksumSendDifferences,
        }
    }
}

/// Bandwidth options.
#[derive(Debug, Clone, Args)]
pub struct BandwidthArgs {
    /// `unlimited`, a fixed limit in bytes per second (at least 3500; `5MB` works), or
    /// `schedule` with --bandwidth-window.
    #[arg(long)]
    pub bandwidth: Option<String>,
    /// A schedule window: "DAYS HH:MM-HH:MM RATE" (DAYS: everyday, weekdays, weekends, mon…sun;
    /// RATE: bytes per second, 0 holds transmission). Repeat for several; outside every window
    /// transmission is unlimited.
    #[arg(long = "bandwidth-window")]
    pub windows: Vec<String>,
}

/// Options of `job create`: every option of a job spec.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A TOML file with the whole spec (flags given as well override it).
    #[arg(long)]
    spec: Option<PathBuf>,
    /// A unique name.
    #[arg(long)]
    name: Option<String>,
    /// The source folder.
    #[arg(long)]
    source: Option<PathBuf>,
    /// The target: DIR (this daemon), HOST[:PORT]:DIR (another daemon), or `null` (TDU).
    #[arg(long)]
    target: Option<String>,
    /// Leave a path (relative to the source) out of the job; repeatable.
    #[arg(long = "exclude")]
    excludes: Vec<String>,
    /// How mirrors compare.
    #[arg(long)]
    comparison: Option<Comparison>,
    /// Do not calculate the size before mirroring (no percentage then).
    #[arg(long)]
    no_calculate_size: bool,
    /// Orphans on the target: off, report, delete.
    #[arg(long)]
    orphans: Option<Orphans>,
    /// Verify on a schedule, every N seconds.
    #[arg(long)]
    verify_every: Option<u64>,
    /// First scheduled verification at this time (RFC 3339); default: once protecting.
    #[arg(long)]
    verify_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Scheduled verifications remirror what differs.
    #[arg(long)]
    verify_remirror: bool,
    /// The comparison verifications use.
    #[arg(long)]
    verify_comparison: Option<Comparison>,
    /// Compression: none, minimum, medium, maximum. Like bandwidth, it is shared by every job
    /// from this engine to the same target address: the job that connects last sets it.
    #[arg(long)]
    compression: Option<Compression>,
    #[command(flatten)]
    bandwidth: BandwidthArgs,
    /// Memory for the source queue before it spills to disk (e.g. 1024MiB).
    #[arg(long)]
    queue_memory: Option<String>,
    /// The disk queue: unlimited, disabled, or a size.
    #[arg(long)]
    disk_queue: Option<String>,
    /// Free space the disk queue leaves (e.g. 250MiB).
    #[arg(long)]
    queue_min_free: Option<String>,
    /// Disk queue usage that raises an alert, in percent.
    #[arg(long)]
    queue_alert: Option<u8>,
    /// Do not reconnect automatically.
    #[arg(long)]
    no_auto_reconnect: bool,
    /// Do not remirror automatically after a reconnect that lost data.
    #[arg(long)]
    no_auto_remirror: bool,
    /// Run the failover monitor.
    #[arg(long)]
    monitor: bool,
    /// Seconds between monitor checks.
    #[arg(long)]
    monitor_interval: Option<u64>,
    /// Seconds without an answer before the source counts as failed.
    #[arg(long, conflicts_with = "failure_count")]
    failure_time: Option<u64>,
    /// Failed checks in a row before the source counts as failed.
    #[arg(long)]
    failure_count: Option<u32>,
    /// Fail over by itself when the monitor trips (default: wait for the user).
    #[arg(long)]
    auto_failover: bool,
    /// Cut over as soon as the mirror completes (default: wait for `job cutover`).
    #[arg(long)]
    auto_cutover: bool,
    /// At cutover, discard the target queue by default.
    #[arg(long)]
    cutover_discard_queue: bool,
    /// A script run on the target at the beginning of cutover.
    #[arg(long)]
    pre_script: Option<String>,
    /// An argument for the pre-cutover script; repeatable.
    #[arg(long = "pre-script-arg", allow_hyphen_values = true)]
    pre_script_args: Vec<String>,
    /// A script run on the target at the end of cutover.
    #[arg(long)]
    post_script: Option<String>,
    /// An argument for the post-cutover script; repeatable.
    #[arg(long = "post-script-arg", allow_hyphen_values = true)]
    post_script_args: Vec<String>,
    /// Seconds a script may run.
    #[arg(long, default_value_t = 300)]
    script_timeout: u64,
}

/// Orphan policies.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Orphans {
    /// Leave them.
    Off,
    /// Report them in the orphan log.
    Report,
    /// Delete them.
    Delete,
}

/// Compression levels.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Compression {
    /// Off.
    None,
    /// Least CPU.
    Minimum,
    /// Middle.
    Medium,
    /// Smallest.
    Maximum,
}

impl From<Compression> for CompressionLevel {
    fn from(c: Compression) -> Self {
        match c {
            Compression::None => CompressionLevel::None,
            Compression::Minimum => CompressionLevel::Minimum,
            Compression::Medium => CompressionLevel::Medium,
            Compression::Maximum => CompressionLevel::Maximum,
        }
    }
}

/// Parses "5MB", "64KiB", "3500", "1.5GB".
///
/// # Errors
///
/// Not a size.
pub fn parse_size(text: &str) -> Result<u64, UserError> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| UserError(format!("{text:?} is not a size (e.g. 3500, 64KiB, 5MB)")))?;
    let unit = unit.trim().trim_end_matches("/s").to_ascii_lowercase();
    let factor: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(UserError(format!(
                "unknown size unit {other:?} in {text:?} (use B, KB, KiB, MB, MiB, GB, GiB)"
            )));
        }
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    // sizes are positive and far below 2^53
    Ok((number * factor).round() as u64)
}

fn parse_window(text: &str) -> Result<BandwidthWindow, UserError> {
    let bad = || {
        UserError(format!(
            "bandwidth window {text:?} must look like \"weekdays 09:00-17:00 1000000\""
        ))
    };
    let mut parts = text.split_whitespace();
    let days = match parts.next().ok_or_else(bad)?.to_ascii_lowercase().as_str() {
        "everyday" | "every-day" | "daily" => Days::EveryDay,
        "weekdays" => Days::Weekdays,
        "weekends" => Days::Weekends,
        "mon" => Days::Day(DayOfWeek::Mon),
        "tue" => Days::Day(DayOfWeek::Tue),
        "wed" => Days::Day(DayOfWeek::Wed),
        "thu" => Days::Day(DayOfWeek::Thu),
        "fri" => Days::Day(DayOfWeek::Fri),
        "sat" => Days::Day(DayOfWeek::Sat),
        "sun" => Days::Day(DayOfWeek::Sun),
        _ => return Err(bad()),
    };
    let (start, end) = parts.next().ok_or_else(bad)?.split_once('-').ok_or_else(bad)?;
    let minute = |t: &str| -> Result<u16, UserError> {
        let (h, m) = t.split_once(':').ok_or_else(bad)?;
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 24 || m > 59 || (h == 24 && m > 0) {
            return Err(bad());
        }
        Ok(h * 60 + m)
    };
    let bytes_per_second = parse_size(parts.next().ok_or_else(bad)?)?;
    Ok(BandwidthWindow {
        days,
        start_minute: minute(start)?,
        end_minute: minute(end)?,
        bytes_per_second,
    })
}

/// The bandwidth limit the flags describe, if any.
///
/// # Errors
///
/// A malformed value.
pub fn bandwidth_limit(args: &BandwidthArgs) -> Result<Option<BandwidthLimit>, UserError> {
    let windows: Vec<BandwidthWindow> =
        args.windows.iter().map(|w| parse_window(w)).collect::<Result<_, _>>()?;
    match args.bandwidth.as_deref() {
        None if windows.is_empty() => Ok(None),
        None | Some("schedule") => {
            if windows.is_empty() {
                return Err(UserError(
                    "--bandwidth schedule needs at least one --bandwidth-window".into(),
                ));
            }
            Ok(Some(BandwidthLimit::Schedule { windows }))
        }
        Some("unlimited" | "none") => Ok(Some(BandwidthLimit::Unlimited)),
        Some(fixed) => Ok(Some(BandwidthLimit::Fixed { bytes_per_second: parse_size(fixed)? })),
    }
}

/// Parses `--target`: `null`, `DIR`, or `HOST[:PORT]:DIR`.
///
/// # Errors
///
/// A malformed target.
pub fn parse_target(text: &str) -> Result<TargetSpec, UserError> {
    if text == "null" {
        return Ok(TargetSpec { endpoint: TargetEndpoint::Null, path: String::new() });
    }
    if text.starts_with('/') {
        return Ok(TargetSpec { endpoint: TargetEndpoint::Local, path: text.to_string() });
    }
    let slash = text.find(":/").ok_or_else(|| {
        UserError(format!("target {text:?} must be an absolute DIR, HOST[:PORT]:DIR, or null"))
    })?;
    let (address, path) = (&text[..slash], &text[slash + 1..]);
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse()
                .map_err(|_| UserError(format!("{port:?} in target {text:?} is not a port")))?,
        ),
        None => (address, understudy_core::spec::DEFAULT_REPLICATION_PORT),
    };
    Ok(TargetSpec {
        endpoint: TargetEndpoint::Remote { host: host.to_string(), port },
        path: path.to_string(),
    })
}

fn script(path: Option<&String>, args: &[String], timeout: u64) -> Option<Script> {
    path.map(|path| Script {
        path: path.clone(),
        args: args.to_vec(),
        delay_until_complete: true,
        timeout_secs: timeout,
    })
}

/// The spec `job create`'s flags describe.
///
/// # Errors
///
/// A flag value that cannot be understood, or a source that does not exist.
pub fn build_spec(args: &CreateArgs) -> Result<JobSpec> {
    let mut spec = match &args.spec {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| UserError(format!("cannot read {}: {e}", path.display())))?;
            toml::from_str::<JobSpec>(&text).map_err(|e| {
                UserError(format!("{} is not a valid job spec: {e}", path.display()))
            })?
        }
        None => JobSpec::default(),
    };
    if let Some(name) = &args.name {
        spec.name = name.clone();
    }
    if let Some(source) = &args.source {
        let absolute = std::fs::canonicalize(source).map_err(|e| {
            UserError(format!(
                "the source {} cannot be used: {e}: give an existing folder",
                source.display()
            ))
        })?;
        spec.source = absolute.to_string_lossy().into_owned();
    }
    if let Some(target) = &args.target {
        spec.target = parse_target(target)?;
        if spec.target.endpoint == TargetEndpoint::Null {
            spec.job_type = JobType::Diagnostics;
            spec.orphans = OrphanPolicy::Off;
        } else if spec.target.endpoint == TargetEndpoint::Local {
            spec.target.path = absolute_lexical(&spec.target.path);
        }
    }
    spec.excludes.extend(args.excludes.iter().cloned());
    if let Some(c) = args.comparison {
        spec.mirror.comparison = c.into();
    }
    if args.no_calculate_size {
        spec.mirror.calculate_size = false;
    }
    if let Some(o) = args.orphans {
        spec.orphans = match o {
            Orphans::Off => OrphanPolicy::Off,
            Orphans::Report => OrphanPolicy::Report,
            Orphans::Delete => OrphanPolicy::Delete,
        };
    }
    if let Some(every) = args.verify_every {
        spec.verification.schedule =
            Some(VerificationSchedule { interval_secs: every, begin_at: args.verify_at });
    }
    if args.verify_remirror {
        spec.verification.action = VerifyAction::ReportAndRemirror;
    }
    if let Some(c) = args.verify_comparison {
        spec.verification.comparison = c.into();
    }
    if let Some(c) = args.compression {
        spec.compression = c.into();
    }
    if let Some(limit) = bandwidth_limit(&args.bandwidth)? {
        spec.bandwidth = limit;
    }
    if let Some(memory) = &args.queue_memory {
        spec.queue.memory_bytes = parse_size(memory)?;
    }
    if let Some(disk) = &args.disk_queue {
        spec.queue.disk = match disk.as_str() {
            "unlimited" => DiskQueue::Unlimited,
            "disabled" | "off" => DiskQueue::Disabled,
            size => DiskQueue::Limited { bytes: parse_size(size)? },
        };
    }
    if let Some(min_free) = &args.queue_min_free {
        spec.queue.min_free_bytes = parse_size(min_free)?;
    }
    if let Some(alert) = args.queue_alert {
        spec.queue.alert_percent = alert;
    }
    spec.recovery.auto_reconnect &= !args.no_auto_reconnect;
    spec.recovery.auto_remirror &= !args.no_auto_remirror;
    spec.failover_monitor.enabled |= args.monitor;
    if let Some(interval) = args.monitor_interval {
        spec.failover_monitor.interval_secs = interval;
    }
    if let Some(secs) = args.failure_time {
        spec.failover_monitor.trigger = FailureTrigger::TotalTime { secs };
    }
    if let Some(count) = args.failure_count {
        spec.failover_monitor.trigger = FailureTrigger::ConsecutiveFailures { count };
    }
    if args.auto_failover {
        spec.failover_monitor.wait_for_user = false;
    }
    if args.auto_cutover {
        spec.cutover.wait_for_user = false;
    }
    if args.cutover_discard_queue {
        spec.cutover.target_queue = QueuePolicy::Discard;
    }
    if let Some(pre) = script(args.pre_script.as_ref(), &args.pre_script_args, args.script_timeout)
    {
        spec.cutover.pre_script = Some(pre);
    }
    if let Some(post) =
        script(args.post_script.as_ref(), &args.post_script_args, args.script_timeout)
    {
        spec.cutover.post_script = Some(post);
    }
    spec.validate().map_err(|e| UserError(format!("invalid job spec: {e}")))?;
    Ok(spec)
}

fn absolute_lexical(path: &str) -> String {
    understudy_core::spec::normalize(path)
}

/// Runs a job command.
///
/// # Errors
///
/// What the daemon or the arguments say.
pub async fn run(client: &Client, command: JobCommand) -> Result<()> {
    match command {
        JobCommand::Create(args) => {
            let spec = build_spec(&args)?;
            let answer =
                client.post("/v1/jobs", &json!({ "spec": spec, "operator": operator() })).await?;
            println!("{}", answer["job"].as_str().unwrap_or_default());
        }
        JobCommand::Start { job } => send(client, &job, json!({ "command": "start" })).await?,
        JobCommand::Pause { job } => send(client, &job, json!({ "command": "pause" })).await?,
        JobCommand::Stop { job } => send(client, &job, json!({ "command": "stop" })).await?,
        JobCommand::Delete { job } => send(client, &job, json!({ "command": "delete" })).await?,
        JobCommand::Verify { job, remirror } => {
            send(client, &job, json!({ "command": "verify", "remirror": remirror })).await?
        }
        JobCommand::Cutover { job, discard_queue } => {
            let queue = if discard_queue { Some("discard") } else { None };
            send(client, &job, json!({ "command": "cutover", "target_queue": queue })).await?;
        }
        JobCommand::Failover { job, test, apply_queue, discard_queue } => {
            let queue = match (apply_queue, discard_queue) {
                (_, true) => Some("discard"),
                (true, _) => Some("apply"),
                _ => None,
            };
            send(
                client,
                &job,
                json!({ "command": "failover", "test": test, "target_queue": queue }),
            )
            .await?;
        }
        JobCommand::UndoFailover { job } => {
            send(client, &job, json!({ "command": "undo-failover" })).await?
        }
        JobCommand::Reverse { job } => send(client, &job, json!({ "command": "reverse" })).await?,
        JobCommand::DeleteOrphans { job } => {
            send(client, &job, json!({ "command": "delete-orphans" })).await?
        }
        JobCommand::Mirror { job, action, comparison } => {
            let body = match action {
                MirrorAction::Start => json!({
                    "command": "start-mirror",
                    "comparison": comparison.map(MirrorComparison::from),
                }),
                MirrorAction::Pause => json!({ "command": "pause-mirror" }),
                MirrorAction::Resume => json!({ "command": "resume-mirror" }),
                MirrorAction::Stop => json!({ "command": "stop-mirror" }),
            };
            send(client, &job, body).await?;
        }
        JobCommand::SetBandwidth { job, bandwidth } => {
            let limit = bandwidth_limit(&bandwidth)?
                .ok_or_else(|| UserError("give --bandwidth or --bandwidth-window".into()))?;
            understudy_core::spec::validate_bandwidth(&limit)
                .map_err(|e| UserError(e.to_string()))?;
            send(client, &job, json!({ "command": "set-bandwidth", "limit": limit })).await?;
        }
        JobCommand::List { json } => {
            let jobs = client.get("/v1/jobs").await?;
            let jobs = jobs.as_array().cloned().unwrap_or_default();
            if json {
                let shown: Vec<Value> = jobs.iter().map(show_doc).collect();
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else if jobs.is_empty() {
                println!(
                    "no jobs: create one with `understudy job create --name NAME --source DIR --target DIR`"
                );
            } else {
                println!(
                    "{:<36}  {:<20}  {:<14}  {:<8}  {:<12}  {:<12}  {:<8}",
                    "JOB", "NAME", "STATE", "HEALTH", "MIRROR", "REPLICATION", "TRANSMIT"
                );
                for job in &jobs {
                    let s = &job["status"];
                    println!(
                        "{:<36}  {:<20}  {:<14}  {:<8}  {:<12}  {:<12}  {:<8}",
                        text(&job["id"]),
                        text(&job["name"]),
                        text(&job["state"]),
                        text(&s["health"]),
                        text(&s["mirror_status"]),
                        text(&s["replication_status"]),
                        text(&s["transmit_mode"])
                    );
                }
            }
        }
        JobCommand::Show { job, json } => {
            let doc = client.get(&format!("/v1/jobs/{}", encode(&job))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print_show(&doc);
            }
        }
        JobCommand::Wait { job, state, timeout } => {
            wait(client, &job, &state, Duration::from_secs(timeout)).await?
        }
        JobCommand::Log { job } => {
            print!("{}", client.get_text(&format!("/v1/jobs/{}/log", encode(&job))).await?)
        }
    }
    Ok(())
}

fn operator() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "cli".into())
}

/// URL-encodes a path segment (job names may have spaces).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The `job show` document of a list entry (the list has views; show has the flat form).
fn show_doc(view: &Value) -> Value {
    let mut doc = view["status"].clone();
    if let Some(map) = doc.as_object_mut() {
        for key in ["id", "name", "state", "allowed", "seq", "quarantine"] {
            map.insert(key.into(), view[key].clone());
        }
    }
    doc
}

async fn send(client: &Client, job: &str, mut body: Value) -> Result<()> {
    body["operator"] = json!(operator());
    let answer = client.post(&format!("/v1/jobs/{}/commands", encode(job)), &body).await?;
    let events: Vec<String> = answer["events"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| {
                    e["event"]
                        .as_object()
                        .and_then(|o| o.keys().next().cloned())
                        .or_else(|| e["event"].as_str().map(str::to_string))
                })
                .collect()
        })
        .unwrap_or_default();
    if answer["duplicate_of"].is_array() {
        println!("already done (same idempotency key)");
    } else if events.is_empty() {
        println!("nothing to do");
    } else {
        println!("{} → {}", events.join(", "), text(&answer["state"]));
    }
    Ok(())
}

fn print_show(doc: &Value) {
    println!("{} ({})", text(&doc["name"]), text(&doc["id"]));
    let rows = [
        ("state", "state"),
        ("health", "health"),
        ("activity", "activity"),
        ("role", "role"),
        ("source", "source"),
        ("target", "target"),
        ("mirror status", "mirror_status"),
        ("replication status", "replication_status"),
        ("transmit mode", "transmit_mode"),
        ("target data state", "target_data_state"),
        ("connection id", "connection_id"),
        ("connected since", "connected_since"),
        ("encryption", "encryption"),
        ("compression", "compression"),
        ("bandwidth limit", "bandwidth_limit"),
        ("mirror percent", "mirror_percent"),
        ("mirror remaining", "mirror_remaining_bytes"),
        ("mirror skipped", "mirror_skipped_bytes"),
        ("replication queue", "replication_queue_bytes"),
        ("disk queue", "disk_queue_bytes"),
        ("bytes sent", "bytes_sent"),
        ("bytes sent compressed", "bytes_sent_compressed"),
        ("recovery point latency", "recovery_point_latency_ms"),
        ("mirror start time", "mirror_started_at"),
        ("mirror end time", "mirror_ended_at"),
        ("last mirror (ms)", "last_mirror_duration_ms"),
        ("fault", "fault"),
    ];
    for (label, key) in rows {
        println!("  {label:<24}{}", text(&doc[key]));
    }
    let allowed: Vec<String> =
        doc["allowed"].as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default();
    println!("  {:<24}{}", "allowed commands", allowed.join(", ").to_lowercase());
}

async fn wait(client: &Client, job: &str, wanted: &str, timeout: Duration) -> Result<()> {
    let wanted = StateName::parse(wanted).ok_or_else(|| {
        UserError(format!(
            "{wanted:?} is not a state: use one of {}",
            StateName::leaves().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ))
    })?;
    let started = Instant::now();
    let bar = std::io::stdout().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}%")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    loop {
        let doc = client.get(&format!("/v1/jobs/{}", encode(job))).await?;
        let state = doc["state"].as_str().and_then(StateName::parse);
        if let Some(bar) = &bar {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a percentage
            bar.set_position(doc["mirror_percent"].as_f64().unwrap_or(0.0) as u64);
            bar.set_message(format!("{} ({})", text(&doc["state"]), text(&doc["mirror_status"])));
            bar.tick();
        }
        if state == Some(wanted) {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            println!("{} is {wanted}", text(&doc["name"]));
            return Ok(());
        }
        if started.elapsed() >= timeout {
            if let Some(bar) = bar {
                bar.abandon();
            }
            return Err(CheckFailed(format!(
                "job {} did not reach {wanted} within {} s: it is {} ({})",
                text(&doc["name"]),
                timeout.as_secs(),
                text(&doc["state"]),
                text(&doc["activity"])
            ))
            .into());
        }
        if state.is_some_and(|s| s.is_terminal()) {
            return Err(CheckFailed(format!(
                "job {} ended in {} and will not reach {wanted}",
                text(&doc["name"]),
                text(&doc["state"])
            ))
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `understudy events [--job JOB] [--follow]`: NDJSON, one envelope per line.
///
/// # Errors
///
/// The daemon is unreachable.
pub async fn events(client: &Client, job: Option<&str>, follow: bool) -> Result<()> {
    let mut path = format!("/v1/events?follow={follow}");
    if let Some(job) = job {
        path.push_str(&format!("&job={}", encode(job)));
    }
    use std::io::Write as _;
    let stdout = std::io::stdout();
    client
        .stream_lines(&path, |line| {
            let mut out = stdout.lock();
            // A closed pipe (`| head`) ends the stream quietly.
            writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
        })
        .await
        .context("reading the event stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_every_unit() {
        assert_eq!(parse_size("3500").unwrap(), 3500);
        assert_eq!(parse_size("5MB").unwrap(), 5_000_000);
        assert_eq!(parse_size("64KiB").unwrap(), 65_536);
        assert_eq!(parse_size("2MB/s").unwrap(), 2_000_000);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn targets_parse() {
        assert_eq!(parse_target("/srv/r").unwrap().endpoint, TargetEndpoint::Local);
        let remote = parse_target("198.51.100.2:7000:/srv/r").unwrap();
        assert_eq!(
            remote.endpoint,
            TargetEndpoint::Remote { host: "198.51.100.2".into(), port: 7000 }
        );
        assert_eq!(remote.path, "/srv/r");
        let default_port = parse_target("beta:/srv/r").unwrap();
        assert_eq!(
            default_port.endpoint,
            TargetEndpoint::Remote { host: "beta".into(), port: 6320 }
        );
        assert_eq!(parse_target("null").unwrap().endpoint, TargetEndpoint::Null);
        assert!(parse_target("relative/dir").is_err());
    }

    #[test]
    fn windows_parse() {
        let w = parse_window("weekdays 09:00-17:30 1MB").unwrap();
        assert_eq!((w.start_minute, w.end_minute, w.bytes_per_second), (540, 1050, 1_000_000));
        assert!(parse_window("someday 9-5 1").is_err());
    }
}
