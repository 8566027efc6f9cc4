//! What a job is asked to do: [`JobSpec`] and its options, with the seeds' defaults and the
//! validation rules that a spec must pass before a job is created.
//!
//! Every option here is one the vendor guides give a job (see `../shared/reference`); defaults
//! are the seeds' (DESIGN.md §7). All sizes are bytes, all durations carry their unit in the
//! field name. Every field has a serde default so a partial TOML spec file is complete.

use std::fmt;

use chrono::{DateTime, Utc, Weekday};
use serde::{Deserialize, Serialize};

use crate::error::SpecError;

/// The smallest bandwidth limit the seeds allow, in bytes per second.
pub const MIN_BANDWIDTH_BYTES_PER_SECOND: u64 = 3500;
/// The default replication (data) port of an engine.
pub const DEFAULT_REPLICATION_PORT: u16 = 6320;
/// The default management API port of an engine.
pub const DEFAULT_API_PORT: u16 = 6325;
/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;

/// Everything a job needs to know to run, recorded in its `Created` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobSpec {
    /// A unique, human name ("alpha to beta").
    pub name: String,
    /// What kind of workload the job protects or migrates.
    pub job_type: JobType,
    /// The source folder (absolute path on the source server).
    pub source: String,
    /// Where the replica lives.
    pub target: TargetSpec,
    /// Path prefixes, relative to the source, left out of the job (replication rules).
    pub excludes: Vec<String>,
    /// How mirrors compare and what they send.
    pub mirror: MirrorOptions,
    /// What to do with files on the target that the source does not have.
    pub orphans: OrphanPolicy,
    /// Scheduled and on-demand verification.
    pub verification: VerificationOptions,
    /// Compression of data sent to the target.
    pub compression: CompressionLevel,
    /// Bandwidth limit of data sent to the target.
    pub bandwidth: BandwidthLimit,
    /// The source queue: memory first, then disk.
    pub queue: QueueLimits,
    /// What happens when the connection is lost or the queue is exhausted.
    pub recovery: RecoveryOptions,
    /// The target's watch over the source, for failover.
    pub failover_monitor: FailoverMonitor,
    /// Cutover (migration) and failover (protection) options.
    pub cutover: CutoverOptions,
    /// Scripts run on the target around mirrors.
    pub mirror_scripts: MirrorScripts,
    /// Which engine this record of the job lives on.
    pub role: JobRole,
}

/// Which side of a job an engine's record of it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobRole {
    /// The source engine's job: it mirrors and replicates.
    #[default]
    Source,
    /// The target engine's record of a job replicating to it: it watches the source (the
    /// failover monitor) and fails over on this side.
    Replica {
        /// The source engine's replication address, which the monitor checks.
        source_address: String,
    },
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            name: String::new(),
            job_type: JobType::Files,
            source: String::new(),
            target: TargetSpec::default(),
            excludes: Vec::new(),
            mirror: MirrorOptions::default(),
            orphans: OrphanPolicy::Delete,
            verification: VerificationOptions::default(),
            compression: CompressionLevel::None,
            bandwidth: BandwidthLimit::Unlimited,
            queue: QueueLimits::default(),
            recovery: RecoveryOptions::default(),
            failover_monitor: FailoverMonitor::default(),
            cutover: CutoverOptions::default(),
            mirror_scripts: MirrorScripts::default(),
            role: JobRole::Source,
        }
    }
}

/// The workload a job moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobType {
    /// A set of folders ("Files and Folders").
    Files,
    /// A whole server's volumes and system state.
    FullServer,
    /// A whole server to a replica virtual machine on a hypervisor.
    FullServerToHypervisor,
    /// The TDU: a real job against the null target; nothing leaves the source.
    Diagnostics,
}

impl JobType {
    /// The name the seeds' job logs use for replication sets of this type.
    pub fn label(self) -> &'static str {
        match self {
            JobType::Files => "Files and Folders",
            JobType::FullServer => "Full Server",
            JobType::FullServerToHypervisor => "Full Server to Hypervisor",
            JobType::Diagnostics => "Throughput Diagnostics",
        }
    }
}

/// Where a job's replica is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TargetSpec {
    /// Which target engine receives the data.
    pub endpoint: TargetEndpoint,
    /// The replica's root folder on the target (empty for the null target).
    pub path: String,
}

impl Default for TargetSpec {
    fn default() -> Self {
        TargetSpec { endpoint: TargetEndpoint::Local, path: String::new() }
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            TargetEndpoint::Local => write!(f, "{}", self.path),
            TargetEndpoint::Remote { host, port } => write!(f, "{host}:{port}:{}", self.path),
            TargetEndpoint::Null => write!(f, "null"),
        }
    }
}

/// The engine on the other end of a job's connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetEndpoint {
    /// The same daemon, through its own listener (the loopback data path).
    Local,
    /// Another daemon.
    Remote {
        /// Host name or address.
        host: String,
        /// Replication port.
        port: u16,
    },
    /// The null target of the TDU: counts and discards.
    Null,
}

/// The seeds' four mirror options: how files are compared and what is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorComparison {
    /// "Do not compare files. Send the entire file."
    SendEverything,
    /// "Compare file attributes. Send the entire file."
    AttributesSendWhole,
    /// "Compare file attributes. Send the attributes and bytes that differ."
    AttributesSendDifferences,
    /// "Compare file attributes and data. Send the attributes and bytes that differ."
    ChecksumSendDifferences,
}

impl MirrorComparison {
    /// Every option, in the seeds' order.
    pub const ALL: [MirrorComparison; 4] = [
        MirrorComparison::SendEverything,
        MirrorComparison::AttributesSendWhole,
        MirrorComparison::AttributesSendDifferences,
        MirrorComparison::ChecksumSendDifferences,
    ];

    /// The seeds' wording of the option.
    pub fn describe(self) -> &'static str {
        match self {
            MirrorComparison::SendEverything => "Do not compare files. Send the entire file.",
            MirrorComparison::AttributesSendWhole => {
                "Compare file attributes. Send the entire file."
            }
            MirrorComparison::AttributesSendDifferences => {
                "Compare file attributes. Send the attributes and bytes that differ."
            }
            MirrorComparison::ChecksumSendDifferences => {
                "Compare file attributes and data. Send the attributes and bytes that differ."
            }
        }
    }

    /// The short name used on the command line.
    pub fn cli_name(self) -> &'static str {
        match self {
            MirrorComparison::SendEverything => "everything",
            MirrorComparison::AttributesSendWhole => "attributes-whole",
            MirrorComparison::AttributesSendDifferences => "attributes-diff",
            MirrorComparison::ChecksumSendDifferences => "checksum",
        }
    }

    /// Parses a command-line name.
    pub fn from_cli_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.cli_name() == name)
    }

    /// Whether the mirror reads both sides' data to compare (the seeds' "CHECKSUM ENABLED").
    pub fn compares_data(self) -> bool {
        self == MirrorComparison::ChecksumSendDifferences
    }
}

/// Mirror options of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MirrorOptions {
    /// The comparison used by the initial mirror and by remirrors.
    pub comparison: MirrorComparison,
    /// "Calculate size of protected data upon connection": without it the mirror shows no
    /// percentage and no bytes remaining.
    pub calculate_size: bool,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        MirrorOptions {
            comparison: MirrorComparison::AttributesSendDifferences,
            calculate_size: true,
        }
    }
}

/// What to do with orphans: files on the target that the source does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrphanPolicy {
    /// Leave them alone, say nothing.
    Off,
    /// List them in the orphan log.
    Report,
    /// Delete them ("the default setting for most job types").
    Delete,
}

/// Verification options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerificationOptions {
    /// A schedule; `None` runs verification only on demand.
    pub schedule: Option<VerificationSchedule>,
    /// Report only, or report and remirror what differs.
    pub action: VerifyAction,
    /// How verification compares.
    pub comparison: MirrorComparison,
}

impl Default for VerificationOptions {
    fn default() -> Self {
        VerificationOptions {
            schedule: None,
            action: VerifyAction::ReportOnly,
            comparison: MirrorComparison::ChecksumSendDifferences,
        }
    }
}

/// When scheduled verification runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationSchedule {
    /// Time between two verifications, in seconds (the seeds show 1 day).
    pub interval_secs: u64,
    /// When the first one runs: `None` = as soon as the job is established.
    #[serde(default)]
    pub begin_at: Option<DateTime<Utc>>,
}

/// What a verification does with differences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyAction {
    /// Write the verification log, send nothing.
    ReportOnly,
    /// Write the log and remirror the files that differ.
    ReportAndRemirror,
}

/// The seeds' compression levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompressionLevel {
    /// Compression off.
    None,
    /// Least CPU.
    Minimum,
    /// Middle ground.
    Medium,
    /// Smallest output, most CPU.
    Maximum,
}

impl CompressionLevel {
    /// Every level, lowest first.
    pub const ALL: [CompressionLevel; 4] = [
        CompressionLevel::None,
        CompressionLevel::Minimum,
        CompressionLevel::Medium,
        CompressionLevel::Maximum,
    ];

    /// The command-line name.
    pub fn cli_name(self) -> &'static str {
        match self {
            CompressionLevel::None => "none",
            CompressionLevel::Minimum => "minimum",
            CompressionLevel::Medium => "medium",
            CompressionLevel::Maximum => "maximum",
        }
    }

    /// Parses a command-line name.
    pub fn from_cli_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.cli_name() == name)
    }
}

/// A bandwidth limit on what a job sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BandwidthLimit {
    /// "Do not limit bandwidth".
    Unlimited,
    /// "Use a fixed limit", at least 3500 bytes per second.
    Fixed {
        /// The limit.
        bytes_per_second: u64,
    },
    /// "Use scheduled limits": unlimited outside every window.
    Schedule {
        /// The windows; they must not overlap.
        windows: Vec<BandwidthWindow>,
    },
}

impl BandwidthLimit {
    /// The limit in force at a moment of the week, in bytes per second; `None` is unlimited and
    /// `Some(0)` holds transmission (transmit mode Scheduled).
    pub fn limit_at(&self, weekday: Weekday, minute_of_day: u16) -> Option<u64> {
        match self {
            BandwidthLimit::Unlimited => None,
            BandwidthLimit::Fixed { bytes_per_second } => Some(*bytes_per_second),
            BandwidthLimit::Schedule { windows } => {
                let minute = week_minute(weekday, minute_of_day);
                windows
                    .iter()
                    .find(|w| w.week_spans().iter().any(|s| s.contains(minute)))
                    .map(|w| w.bytes_per_second)
            }
        }
    }
}

impl fmt::Display for BandwidthLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BandwidthLimit::Unlimited => write!(f, "Unlimited"),
            BandwidthLimit::Fixed { bytes_per_second } => write!(f, "{bytes_per_second} B/s"),
            BandwidthLimit::Schedule { windows } => {
                write!(f, "scheduled ({} windows)", windows.len())
            }
        }
    }
}

/// Which days a bandwidth window applies to, as the seeds offer them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Days {
    /// Every day of the week.
    EveryDay,
    /// Monday to Friday.
    Weekdays,
    /// Saturday and Sunday.
    Weekends,
    /// One day.
    Day(DayOfWeek),
}

/// A day of the week (serialisable; chrono's `Weekday` spells itself differently in every format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)] // the days are their own documentation
pub enum DayOfWeek {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl DayOfWeek {
    fn index(self) -> u32 {
        self as u32
    }
}

impl Days {
    fn day_indexes(self) -> Vec<u32> {
        match self {
            Days::EveryDay => (0..7).collect(),
            Days::Weekdays => (0..5).collect(),
            Days::Weekends => vec![5, 6],
            Days::Day(d) => vec![d.index()],
        }
    }
}

/// One scheduled bandwidth window. `start_minute > end_minute` is an overnight entry that ends
/// on the next day, as in the seeds' "6:00 PM – 6:00 AM" example.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BandwidthWindow {
    /// Days on which the window starts.
    pub days: Days,
    /// Start, in minutes after midnight (0..1440).
    pub start_minute: u16,
    /// End, in minutes after midnight (0..=1440).
    pub end_minute: u16,
    /// Limit while the window holds: 0 holds transmission, otherwise at least 3500.
    pub bytes_per_second: u64,
}

const MINUTES_PER_DAY: u32 = 24 * 60;
const MINUTES_PER_WEEK: u32 = 7 * MINUTES_PER_DAY;

fn week_minute(weekday: Weekday, minute_of_day: u16) -> u32 {
    weekday.num_days_from_monday() * MINUTES_PER_DAY + u32::from(minute_of_day) % MINUTES_PER_DAY
}

/// A half-open span of minutes of the week, `[start, end)`, never wrapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WeekSpan {
    start: u32,
    end: u32,
}

impl WeekSpan {
    fn contains(self, minute: u32) -> bool {
        self.start <= minute && minute < self.end
    }
    fn overlaps(self, other: WeekSpan) -> bool {
        self.start < other.end && other.start < self.end
    }
}

impl BandwidthWindow {
    /// The spans of the week this window covers, split where it wraps past Sunday midnight.
    fn week_spans(&self) -> Vec<WeekSpan> {
        let start = u32::from(self.start_minute);
        let mut end = u32::from(self.end_minute);
        if end <= start {
            end += MINUTES_PER_DAY; // overnight: ends the next day
        }
        let mut spans = Vec::new();
        for day in self.days.day_indexes() {
            let s = day * MINUTES_PER_DAY + start;
            let e = day * MINUTES_PER_DAY + end;
            if e <= MINUTES_PER_WEEK {
                spans.push(WeekSpan { start: s, end: e });
            } else {
                spans.push(WeekSpan { start: s, end: MINUTES_PER_WEEK });
                spans.push(WeekSpan { start: 0, end: e - MINUTES_PER_WEEK });
            }
        }
        spans
    }
}

/// The source queue's limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueLimits {
    /// Memory used before queuing spills to disk (seeds: 1024 MB).
    pub memory_bytes: u64,
    /// The disk queue.
    pub disk: DiskQueue,
    /// Free space the disk queue must always leave on its volume (seeds: 250 MB).
    pub min_free_bytes: u64,
    /// Disk queue usage that raises an alert, in percent (seeds: 50).
    pub alert_percent: u8,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            memory_bytes: 1024 * MIB,
            disk: DiskQueue::Unlimited,
            min_free_bytes: 250 * MIB,
            alert_percent: 50,
        }
    }
}

/// How the disk queue may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskQueue {
    /// "Do not use disk queue": memory exhausted means auto-disconnect.
    Disabled,
    /// "Unlimited disk queue" (the default): bounded only by free space.
    Unlimited,
    /// "Limit disk space for queue".
    Limited {
        /// The cap.
        bytes: u64,
    },
}

/// What a job does on its own after a disconnect or an exhausted queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecoveryOptions {
    /// Reconnect automatically after the connection is lost.
    pub auto_reconnect: bool,
    /// Remirror automatically (differentially) after an auto-reconnect that lost data.
    pub auto_remirror: bool,
    /// First delay between reconnect attempts, in milliseconds; it doubles up to the maximum.
    pub reconnect_delay_ms: u64,
    /// Longest delay between reconnect attempts.
    pub reconnect_delay_max_ms: u64,
    /// How long Start waits for the target endpoint before giving up (seeds: 10 min).
    pub endpoint_wait_secs: u64,
}

impl Default for RecoveryOptions {
    fn default() -> Self {
        RecoveryOptions {
            auto_reconnect: true,
            auto_remirror: true,
            reconnect_delay_ms: 1_000,
            reconnect_delay_max_ms: 30_000,
            endpoint_wait_secs: 600,
        }
    }
}

/// The failover monitor: the target watching the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FailoverMonitor {
    /// "Monitor for failover".
    pub enabled: bool,
    /// "Monitor on this interval" (seeds: 10 s), measured after each response.
    pub interval_secs: u64,
    /// What counts as a failed source.
    pub trigger: FailureTrigger,
    /// "Wait for user to initiate failover": stop in FailoverConditionMet instead of failing over.
    pub wait_for_user: bool,
}

impl Default for FailoverMonitor {
    fn default() -> Self {
        FailoverMonitor {
            enabled: false,
            interval_secs: 10,
            trigger: FailureTrigger::TotalTime { secs: 300 },
            wait_for_user: true,
        }
    }
}

/// When the monitor declares the source failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureTrigger {
    /// No successful check for this long (seeds: 5 min).
    TotalTime {
        /// The time to failure.
        secs: u64,
    },
    /// This many failed checks in a row (seeds: 20).
    ConsecutiveFailures {
        /// The count.
        count: u32,
    },
}

/// Cutover (migration) and failover options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CutoverOptions {
    /// Stay Protecting after the mirror until the user asks for cutover (the default); off cuts
    /// over as soon as the mirror completes.
    pub wait_for_user: bool,
    /// What cutover does with data still queued on the target when it is not given explicitly.
    pub target_queue: QueuePolicy,
    /// Run on the target at the beginning of cutover.
    pub pre_script: Option<Script>,
    /// Run on the target at the end of cutover.
    pub post_script: Option<Script>,
    /// Shut the source down before cutover if it still runs (full server jobs).
    pub shutdown_source: bool,
}

impl Default for CutoverOptions {
    fn default() -> Self {
        CutoverOptions {
            wait_for_user: true,
            target_queue: QueuePolicy::Apply,
            pre_script: None,
            post_script: None,
            shutdown_source: false,
        }
    }
}

/// Target queue handling at cutover or failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueuePolicy {
    /// "Apply data in target queues before failover or cutover".
    Apply,
    /// "Discard data in the target queues and failover or cutover immediately".
    Discard,
}

/// Scripts run on the target around mirrors.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MirrorScripts {
    /// When the target receives the first mirror operation.
    pub start: Option<Script>,
    /// When the mirror has been completely processed on the target.
    pub complete: Option<Script>,
    /// When a mirror is stopped.
    pub stop: Option<Script>,
}

/// A script to run, with its arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    /// Full path of the program.
    pub path: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// "Delay until script completes": the job waits for it (up to the timeout).
    #[serde(default = "yes")]
    pub delay_until_complete: bool,
    /// The script is stopped after this many seconds.
    #[serde(default = "default_script_timeout_secs")]
    pub timeout_secs: u64,
}

fn yes() -> bool {
    true
}

fn default_script_timeout_secs() -> u64 {
    300
}

impl JobSpec {
    /// Checks the spec for everything that can be checked without touching the world.
    ///
    /// # Errors
    ///
    /// The first rule the spec breaks, with a message that says what to change.
    pub fn validate(&self) -> Result<(), SpecError> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err(SpecError::new("name", "a job needs a name: give --name NAME"));
        }
        if name.len() > 200 || name.chars().any(char::is_control) {
            return Err(SpecError::new(
                "name",
                "the name must be at most 200 characters with no control characters",
            ));
        }
        if self.source.is_empty() {
            return Err(SpecError::new("source", "a job needs a source folder: give --source DIR"));
        }
        if !self.source.starts_with('/') {
            return Err(SpecError::new(
                "source",
                format!("the source must be an absolute path, not {:?}", self.source),
            ));
        }
        self.validate_target()?;
        for exclude in &self.excludes {
            if exclude.is_empty()
                || exclude.starts_with('/')
                || exclude.split('/').any(|c| c == "..")
            {
                return Err(SpecError::new(
                    "excludes",
                    format!("exclude {exclude:?} must be a relative path inside the source"),
                ));
            }
        }
        validate_bandwidth(&self.bandwidth)?;
        self.validate_queue()?;
        if let Some(schedule) = &self.verification.schedule
            && schedule.interval_secs == 0
        {
            return Err(SpecError::new(
                "verification.schedule.interval_secs",
                "the verification interval must be at least one second",
            ));
        }
        self.validate_monitor()?;
        self.validate_recovery()?;
        for (field, script) in [
            ("cutover.pre_script", &self.cutover.pre_script),
            ("cutover.post_script", &self.cutover.post_script),
            ("mirror_scripts.start", &self.mirror_scripts.start),
            ("mirror_scripts.complete", &self.mirror_scripts.complete),
            ("mirror_scripts.stop", &self.mirror_scripts.stop),
        ] {
            if let Some(script) = script {
                validate_script(field, script)?;
            }
        }
        if self.job_type == JobType::Diagnostics {
            self.validate_diagnostics()?;
        }
        Ok(())
    }

    fn validate_target(&self) -> Result<(), SpecError> {
        let null = self.target.endpoint == TargetEndpoint::Null;
        if null != (self.job_type == JobType::Diagnostics) {
            return Err(SpecError::new(
                "target",
                "the null target is for diagnostics jobs only, and a diagnostics job needs the null target (--target null)",
            ));
        }
        if null {
            return Ok(());
        }
        if self.target.path.is_empty() {
            return Err(SpecError::new("target", "a job needs a target folder: give --target DIR"));
        }
        if !self.target.path.starts_with('/') {
            return Err(SpecError::new(
                "target",
                format!("the target must be an absolute path, not {:?}", self.target.path),
            ));
        }
        if let TargetEndpoint::Remote { host, port } = &self.target.endpoint {
            if host.is_empty() {
                return Err(SpecError::new("target", "the target host is empty"));
            }
            if *port == 0 {
                return Err(SpecError::new("target", "the target port must not be 0"));
            }
        }
        // A replica's source is on another machine: its paths cannot overlap the target's.
        if self.target.endpoint == TargetEndpoint::Local && self.role == JobRole::Source {
            let source = normalize(&self.source);
            let target = normalize(&self.target.path);
            if source == target {
                return Err(SpecError::new(
                    "target",
                    "the target is the source: choose a target folder outside the source",
                ));
            }
            if is_within(&target, &source) {
                return Err(SpecError::new(
                    "target",
                    "the target is inside the source, so the job would copy its own output: choose a target outside the source",
                ));
            }
            if is_within(&source, &target) {
                return Err(SpecError::new(
                    "target",
                    "the source is inside the target, so orphan removal would delete it: choose a target outside the source",
                ));
            }
        }
        Ok(())
    }

    fn validate_queue(&self) -> Result<(), SpecError> {
        let q = &self.queue;
        if q.memory_bytes < MIB {
            return Err(SpecError::new(
                "queue.memory_bytes",
                "the memory queue needs at least 1 MiB",
            ));
        }
        if let DiskQueue::Limited { bytes } = q.disk
            && bytes == 0
        {
            return Err(SpecError::new(
                "queue.disk",
                "a limited disk queue needs a limit above 0; use disabled for no disk queue",
            ));
        }
        if q.alert_percent == 0 || q.alert_percent > 100 {
            return Err(SpecError::new(
                "queue.alert_percent",
                "the alert level is a percentage from 1 to 100",
            ));
        }
        Ok(())
    }

    fn validate_monitor(&self) -> Result<(), SpecError> {
        let m = &self.failover_monitor;
        match m.trigger {
            FailureTrigger::TotalTime { secs } => {
                if secs == 0 {
                    return Err(SpecError::new(
                        "failover_monitor.trigger",
                        "the total time to failure must be at least one second",
                    ));
                }
                if m.interval_secs > secs {
                    return Err(SpecError::new(
                        "failover_monitor.interval_secs",
                        "the monitor interval is longer than the total time to failure, so the source would count as failed during every interval: shorten the interval",
                    ));
                }
            }
            FailureTrigger::ConsecutiveFailures { count } => {
                if count == 0 {
                    return Err(SpecError::new(
                        "failover_monitor.trigger",
                        "consecutive failures must be at least 1",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_recovery(&self) -> Result<(), SpecError> {
        let r = &self.recovery;
        if r.reconnect_delay_ms == 0 || r.reconnect_delay_max_ms < r.reconnect_delay_ms {
            return Err(SpecError::new(
                "recovery",
                "reconnect delays must be above 0 and the maximum at least the first delay",
            ));
        }
        Ok(())
    }

    fn validate_diagnostics(&self) -> Result<(), SpecError> {
        // The seeds' TDU offers no target-only options: there is no target to act on.
        if self.orphans != OrphanPolicy::Off {
            return Err(SpecError::new(
                "orphans",
                "a diagnostics job has no target: orphans must be off",
            ));
        }
        if self.verification.schedule.is_some() {
            return Err(SpecError::new(
                "verification",
                "a diagnostics job has no target to verify",
            ));
        }
        if self.failover_monitor.enabled {
            return Err(SpecError::new(
                "failover_monitor",
                "a diagnostics job has no target to monitor from",
            ));
        }
        if self.cutover.pre_script.is_some()
            || self.cutover.post_script.is_some()
            || self.mirror_scripts != MirrorScripts::default()
        {
            return Err(SpecError::new("scripts", "a diagnostics job runs no target scripts"));
        }
        Ok(())
    }

    /// Whether this is a target engine's record of a job (see [`JobRole::Replica`]).
    pub fn is_replica(&self) -> bool {
        matches!(self.role, JobRole::Replica { .. })
    }

    /// A diagnostics spec for `source` with the target-only options off, as the TDU makes it.
    pub fn diagnostics(name: impl Into<String>, source: impl Into<String>) -> JobSpec {
        JobSpec {
            name: name.into(),
            job_type: JobType::Diagnostics,
            source: source.into(),
            target: TargetSpec { endpoint: TargetEndpoint::Null, path: String::new() },
            orphans: OrphanPolicy::Off,
            ..JobSpec::default()
        }
    }
}

/// Checks a bandwidth limit on its own (it can be changed while a job runs).
///
/// # Errors
///
/// A limit under 3500 B/s, a malformed window, or windows that overlap.
pub fn validate_bandwidth(limit: &BandwidthLimit) -> Result<(), SpecError> {
    match limit {
        BandwidthLimit::Unlimited => Ok(()),
        BandwidthLimit::Fixed { bytes_per_second } => {
            if *bytes_per_second < MIN_BANDWIDTH_BYTES_PER_SECOND {
                return Err(SpecError::new(
                    "bandwidth",
                    format!(
                        "a fixed bandwidth limit must be at least {MIN_BANDWIDTH_BYTES_PER_SECOND} bytes per second, not {bytes_per_second}"
                    ),
                ));
            }
            Ok(())
        }
        BandwidthLimit::Schedule { windows } => {
            if windows.is_empty() {
                return Err(SpecError::new(
                    "bandwidth",
                    "a bandwidth schedule needs at least one window",
                ));
            }
            for w in windows {
                if w.start_minute >= 1440 || w.end_minute > 1440 {
                    return Err(SpecError::new(
                        "bandwidth",
                        "window times are minutes after midnight: start below 1440, end at most 1440",
                    ));
                }
                if w.start_minute == w.end_minute {
                    return Err(SpecError::new(
                        "bandwidth",
                        "a window must not start and end at the same time",
                    ));
                }
                if w.bytes_per_second != 0 && w.bytes_per_second < MIN_BANDWIDTH_BYTES_PER_SECOND {
                    return Err(SpecError::new(
                        "bandwidth",
                        format!(
                            "a window's limit must be 0 (hold) or at least {MIN_BANDWIDTH_BYTES_PER_SECOND} bytes per second, not {}",
                            w.bytes_per_second
                        ),
                    ));
                }
            }
            for (i, a) in windows.iter().enumerate() {
                for b in &windows[i + 1..] {
                    let overlap = a
                        .week_spans()
                        .iter()
                        .any(|sa| b.week_spans().iter().any(|sb| sa.overlaps(*sb)));
                    if overlap {
                        return Err(SpecError::new(
                            "bandwidth",
                            format!(
                                "bandwidth windows overlap ({} and {}): give each moment of the week at most one limit",
                                describe_window(a),
                                describe_window(b)
                            ),
                        ));
                    }
                }
            }
            Ok(())
        }
    }
}

fn describe_window(w: &BandwidthWindow) -> String {
    format!(
        "{:?} {:02}:{:02}-{:02}:{:02}",
        w.days,
        w.start_minute / 60,
        w.start_minute % 60,
        w.end_minute / 60,
        w.end_minute % 60
    )
}

fn validate_script(field: &str, script: &Script) -> Result<(), SpecError> {
    if script.path.is_empty() {
        return Err(SpecError::new(field, "a script needs a path"));
    }
    if script.timeout_secs == 0 {
        return Err(SpecError::new(field, "a script's timeout must be at least one second"));
    }
    Ok(())
}

/// Lexically normalises an absolute path: collapses `//`, `.` and `..`, drops a trailing `/`.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Whether normalised `inner` lies strictly inside normalised `outer`.
fn is_within(inner: &str, outer: &str) -> bool {
    if outer == "/" {
        return inner != "/";
    }
    inner.len() > outer.len() && inner.starts_with(outer) && inner.as_bytes()[outer.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_spec() -> JobSpec {
        JobSpec {
            name: "alpha to beta".into(),
            source: "/srv/data".into(),
            target: TargetSpec { endpoint: TargetEndpoint::Local, path: "/replica/data".into() },
            ..JobSpec::default()
        }
    }

    #[test]
    fn the_default_files_spec_is_valid() {
        files_spec().validate().unwrap();
    }

    #[test]
    fn defaults_are_the_seeds() {
        let spec = JobSpec::default();
        assert_eq!(spec.queue.memory_bytes, 1024 * MIB);
        assert_eq!(spec.queue.min_free_bytes, 250 * MIB);
        assert_eq!(spec.queue.alert_percent, 50);
        assert_eq!(spec.queue.disk, DiskQueue::Unlimited);
        assert_eq!(spec.failover_monitor.interval_secs, 10);
        assert_eq!(spec.failover_monitor.trigger, FailureTrigger::TotalTime { secs: 300 });
        assert_eq!(spec.recovery.endpoint_wait_secs, 600);
        assert_eq!(spec.mirror.comparison, MirrorComparison::AttributesSendDifferences);
        assert!(spec.cutover.wait_for_user);
    }

    #[test]
    fn missing_source_is_refused() {
        let spec = JobSpec { source: String::new(), ..files_spec() };
        let err = spec.validate().unwrap_err();
        assert_eq!(err.field, "source");
    }

    #[test]
    fn target_equal_to_or_inside_source_is_refused() {
        for target in ["/srv/data", "/srv/data/", "/srv/data/replica", "/srv/./data/x/.."] {
            let mut spec = files_spec();
            spec.target.path = target.into();
            assert_eq!(spec.validate().unwrap_err().field, "target", "{target}");
        }
        let mut spec = files_spec();
        spec.target.path = "/srv".into();
        assert!(spec.validate().unwrap_err().message.contains("source is inside the target"));
        let mut spec = files_spec();
        spec.target.path = "/srv/data2".into();
        spec.validate().unwrap();
    }

    #[test]
    fn bandwidth_under_3500_is_refused() {
        let spec =
            JobSpec { bandwidth: BandwidthLimit::Fixed { bytes_per_second: 3499 }, ..files_spec() };
        assert!(spec.validate().unwrap_err().message.contains("3500"));
        let spec =
            JobSpec { bandwidth: BandwidthLimit::Fixed { bytes_per_second: 3500 }, ..files_spec() };
        spec.validate().unwrap();
    }

    fn window(days: Days, start: u16, end: u16, bps: u64) -> BandwidthWindow {
        BandwidthWindow { days, start_minute: start, end_minute: end, bytes_per_second: bps }
    }

    #[test]
    fn the_seeds_day_and_night_schedule_is_valid_and_answers_by_time() {
        // "Every day 6:00 AM 6:00 PM 1250000" and "Every day 6:00 PM 6:00 AM 5625000".
        let limit = BandwidthLimit::Schedule {
            windows: vec![
                window(Days::EveryDay, 360, 1080, 1_250_000),
                window(Days::EveryDay, 1080, 360, 5_625_000),
            ],
        };
        validate_bandwidth(&limit).unwrap();
        assert_eq!(limit.limit_at(Weekday::Mon, 12 * 60), Some(1_250_000));
        assert_eq!(limit.limit_at(Weekday::Mon, 23 * 60), Some(5_625_000));
        assert_eq!(limit.limit_at(Weekday::Sun, 2 * 60), Some(5_625_000));
    }

    #[test]
    fn outside_every_window_is_unlimited() {
        let limit =
            BandwidthLimit::Schedule { windows: vec![window(Days::Weekdays, 540, 1020, 10_000)] };
        assert_eq!(limit.limit_at(Weekday::Tue, 600), Some(10_000));
        assert_eq!(limit.limit_at(Weekday::Sat, 600), None);
        assert_eq!(limit.limit_at(Weekday::Tue, 1020), None);
    }

    #[test]
    fn overlapping_windows_are_refused() {
        let overlapping = [
            (
                window(Days::EveryDay, 360, 1080, 5000),
                window(Days::Day(DayOfWeek::Wed), 600, 660, 5000),
            ),
            (
                window(Days::Day(DayOfWeek::Sun), 1320, 120, 5000),
                window(Days::Day(DayOfWeek::Mon), 60, 90, 5000),
            ),
            (window(Days::Weekends, 0, 1440, 5000), window(Days::Day(DayOfWeek::Sat), 10, 20, 0)),
        ];
        for (a, b) in overlapping {
            let limit = BandwidthLimit::Schedule { windows: vec![a.clone(), b.clone()] };
            let err = validate_bandwidth(&limit).unwrap_err();
            assert!(err.message.contains("overlap"), "{a:?} {b:?}");
        }
        let touching = BandwidthLimit::Schedule {
            windows: vec![
                window(Days::EveryDay, 0, 720, 5000),
                window(Days::EveryDay, 720, 1440, 0),
            ],
        };
        validate_bandwidth(&touching).unwrap();
    }

    #[test]
    fn diagnostics_jobs_need_the_null_target_and_no_target_options() {
        let spec = JobSpec::diagnostics("tdu", "/srv/data");
        spec.validate().unwrap();
        let spec = JobSpec { orphans: OrphanPolicy::Delete, ..JobSpec::diagnostics("tdu", "/srv") };
        assert_eq!(spec.validate().unwrap_err().field, "orphans");
        let spec = JobSpec {
            target: TargetSpec { endpoint: TargetEndpoint::Null, path: String::new() },
            ..files_spec()
        };
        assert_eq!(spec.validate().unwrap_err().field, "target");
    }

    #[test]
    fn monitor_interval_longer_than_failure_time_is_refused() {
        let mut spec = files_spec();
        spec.failover_monitor.interval_secs = 600;
        assert_eq!(spec.validate().unwrap_err().field, "failover_monitor.interval_secs");
    }

    #[test]
    fn a_partial_spec_deserialises_with_defaults() {
        let spec: JobSpec = serde_json_like();
        assert_eq!(spec.queue, QueueLimits::default());
    }

    fn serde_json_like() -> JobSpec {
        // Round-trip through serde's own value-less path: an empty map becomes the default spec.
        use serde::de::value::{MapDeserializer, StrDeserializer};
        let empty: Vec<(
            StrDeserializer<'_, serde::de::value::Error>,
            StrDeserializer<'_, serde::de::value::Error>,
        )> = Vec::new();
        JobSpec::deserialize(MapDeserializer::new(empty.into_iter())).unwrap()
    }
}
