//! The TDU's statistics file: what a diagnostics run measured, in a CSV a person can open in a
//! spreadsheet and `understudy tdu forecast` can replay without touching the source.
//!
//! # Format (version 1)
//!
//! ```text
//! # understudy-tdu-stats: 1
//! # started_at: 2026-03-02T08:00:00+01:00
//! # compression: medium
//! # framing_overhead: 1.01
//! # bandwidth: schedule
//! # bandwidth_window: weekdays 08:00-18:00 1000000
//! # mirror_files: 1200
//! # mirror_folders: 30
//! # mirror_bytes: 5000000000
//! # mirror_bytes_compressed: 2600000000
//! # mirror_seconds: 95.5
//! # mirror_skipped_files: 0
//! at_secs,seconds,bytes_read,bytes_compressed,operations,queue_bytes,send_rate_bytes_per_second
//! 0,10,1048576,550000,42,0,55000
//! ```
//!
//! - Metadata comes first, one `# key: value` line each, the format line first; every key but
//!   `bandwidth_window` appears exactly once. `bandwidth` is `unlimited`, a fixed limit in
//!   bytes per second, or `schedule` followed by one `bandwidth_window` line per window
//!   (`DAYS HH:MM-HH:MM BYTES_PER_SECOND`, as `--bandwidth-window` takes it).
//! - `started_at` is RFC 3339 with the recording machine's UTC offset: bandwidth schedules
//!   are wall-clock times, so a replay must know the wall clock of every interval.
//! - Then a header row, then one row per interval, in time order, not overlapping. `at_secs`
//!   is when the interval *starts*, in seconds after `started_at`.
//! - `bytes_read`: file data the changes of the interval made the job read.
//!   `bytes_compressed`: what the job put on the wire for them, framing included (the unit
//!   the bandwidth limiter meters). `operations`: operations after coalescing.
//! - `queue_bytes` and `send_rate_bytes_per_second` are the *projection* at the job's limit
//!   (the null target never queues): the queue at the end of the interval and the average
//!   send rate over it (see [`Stats::apply_projection`]). A replay recomputes them, so
//!   reading ignores their values (but still checks that they are numbers).
//! - `framing_overhead` is encoded frame bytes before compression per byte of file data
//!   (message framing and field names, about 1.01): it lets a "what if another compression"
//!   forecast undo the recorded compression.
//!
//! Numbers are written with Rust's shortest round-trip formatting, so a file read back gives
//! exactly the values written.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use chrono::{DateTime, FixedOffset};
use serde::Serialize;
use understudy_core::spec::{
    BandwidthLimit, BandwidthWindow, CompressionLevel, DayOfWeek, Days, validate_bandwidth,
};

use super::forecast::QueuePoint;

/// The format version this module writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The first line's key: what makes a file a TDU statistics file.
const FORMAT_KEY: &str = "understudy-tdu-stats";

/// The header row, in column order.
pub const HEADER: &str =
    "at_secs,seconds,bytes_read,bytes_compressed,operations,queue_bytes,send_rate_bytes_per_second";

/// How far an interval may start before the previous one ends (clock jitter between two
/// measurements of the same instant) before the file counts as overlapping.
const OVERLAP_TOLERANCE_SECONDS: f64 = 1e-3;

/// One interval of the `--watch` recording.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Interval {
    /// When the interval starts, in seconds after [`Stats::started_at`].
    pub at_secs: f64,
    /// How long it lasts, in seconds (more than zero).
    pub seconds: f64,
    /// File data the interval's changes made the job read.
    pub bytes_read: u64,
    /// What the job put on the wire for them: frames after compression, framing included.
    pub bytes_compressed: u64,
    /// Operations after coalescing.
    pub operations: u64,
    /// The projected source queue at the end of the interval, in queue bytes (uncompressed).
    pub queue_bytes: u64,
    /// The projected average send rate over the interval, in wire bytes per second.
    pub send_rate_bytes_per_second: f64,
}

/// What the diagnostics job's mirror measured (unthrottled, against the null target).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MirrorTotals {
    /// Files mirrored.
    pub files: u64,
    /// Folders mirrored.
    pub folders: u64,
    /// File data bytes read.
    pub bytes: u64,
    /// Wire bytes sent: frames after compression, framing included.
    pub bytes_compressed: u64,
    /// Elapsed time of the mirror, in seconds.
    pub seconds: f64,
    /// Files the mirror could not read and skipped.
    pub skipped_files: u64,
}

/// A whole statistics file.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// When the recording started, with the recording machine's UTC offset (schedules are
    /// wall-clock times).
    pub started_at: DateTime<FixedOffset>,
    /// The compression level the job ran with.
    pub compression: CompressionLevel,
    /// The job's bandwidth limit (the diagnostics job itself runs unthrottled; the limit is
    /// applied by the model).
    pub limit: BandwidthLimit,
    /// Encoded frame bytes before compression per byte of file data (about 1.01).
    pub framing_overhead: f64,
    /// What the mirror measured.
    pub mirror: MirrorTotals,
    /// The `--watch` recording, in time order; empty without `--watch`.
    pub intervals: Vec<Interval>,
}

impl Stats {
    /// Writes a projection's queue and send rate into the intervals' `queue_bytes` and
    /// `send_rate_bytes_per_second` columns (the projection has one point per interval, in
    /// order, as [`super::forecast::ReplicationForecast`] makes it).
    pub fn apply_projection(&mut self, projection: &[QueuePoint]) {
        for (interval, point) in self.intervals.iter_mut().zip(projection) {
            interval.queue_bytes = round_to_u64(point.queue_bytes);
            interval.send_rate_bytes_per_second = point.send_rate_bytes_per_second;
        }
    }
}

/// Rounds a non-negative byte count to an integer (negative and NaN give 0).
pub(crate) fn round_to_u64(value: f64) -> u64 {
    if value.is_nan() || value <= 0.0 {
        return 0;
    }
    // Saturating by design: `as` clamps values past u64::MAX, far past any real byte count.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rounded = value.round() as u64;
    rounded
}

/// Why a statistics file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The file could not be opened or read.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// What the system said.
        source: io::Error,
    },
    /// The file is not a valid statistics file.
    #[error("{file}:{line}: {problem}")]
    Malformed {
        /// The file.
        file: String,
        /// The 1-based line the problem is on (for a missing key: the header row, or the
        /// last line when there is none).
        line: usize,
        /// What is wrong, in a sentence.
        problem: String,
    },
}

/// Writes `stats` as a statistics file.
///
/// # Errors
///
/// What `out` returns.
pub fn write_csv(stats: &Stats, out: &mut impl Write) -> io::Result<()> {
    let mut text = String::new();
    // `fmt::Write` into a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(text, "# {FORMAT_KEY}: {FORMAT_VERSION}");
    let _ = writeln!(text, "# started_at: {}", stats.started_at.to_rfc3339());
    let _ = writeln!(text, "# compression: {}", stats.compression.cli_name());
    let _ = writeln!(text, "# framing_overhead: {}", stats.framing_overhead);
    match &stats.limit {
        BandwidthLimit::Unlimited => {
            let _ = writeln!(text, "# bandwidth: unlimited");
        }
        BandwidthLimit::Fixed { bytes_per_second } => {
            let _ = writeln!(text, "# bandwidth: {bytes_per_second}");
        }
        BandwidthLimit::Schedule { windows } => {
            let _ = writeln!(text, "# bandwidth: schedule");
            for window in windows {
                let _ = writeln!(text, "# bandwidth_window: {}", format_window(window));
            }
        }
    }
    let mirror = &stats.mirror;
    let _ = writeln!(text, "# mirror_files: {}", mirror.files);
    let _ = writeln!(text, "# mirror_folders: {}", mirror.folders);
    let _ = writeln!(text, "# mirror_bytes: {}", mirror.bytes);
    let _ = writeln!(text, "# mirror_bytes_compressed: {}", mirror.bytes_compressed);
    let _ = writeln!(text, "# mirror_seconds: {}", mirror.seconds);
    let _ = writeln!(text, "# mirror_skipped_files: {}", mirror.skipped_files);
    let _ = writeln!(text, "{HEADER}");
    out.write_all(text.as_bytes())?;
    // Rows go out in chunks so a multi-day recording does not sit in memory twice.
    let mut rows = String::new();
    for interval in &stats.intervals {
        let _ = writeln!(
            rows,
            "{},{},{},{},{},{},{}",
            interval.at_secs,
            interval.seconds,
            interval.bytes_read,
            interval.bytes_compressed,
            interval.operations,
            interval.queue_bytes,
            interval.send_rate_bytes_per_second
        );
        if rows.len() > 64 * 1024 {
            out.write_all(rows.as_bytes())?;
            rows.clear();
        }
    }
    out.write_all(rows.as_bytes())?;
    out.flush()
}

/// Reads the statistics file at `path`.
///
/// # Errors
///
/// The file cannot be read, or is malformed: the error names the file, the line and what is
/// wrong with it.
pub fn read_csv_file(path: &Path) -> Result<Stats, StatsError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| StatsError::Io { file: name.clone(), source })?;
    read_csv(BufReader::new(file), &name)
}

/// Reads a statistics file from `reader`; `file_name` names it in errors.
///
/// # Errors
///
/// As [`read_csv_file`].
pub fn read_csv(reader: impl BufRead, file_name: &str) -> Result<Stats, StatsError> {
    let mut parser = Parser::new(file_name);
    let mut last_line = 0;
    for (index, line) in reader.lines().enumerate() {
        last_line = index + 1;
        let line = match line {
            Ok(line) => line,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(parser.error(last_line, "this line is not UTF-8 text"));
            }
            Err(source) => return Err(StatsError::Io { file: file_name.to_string(), source }),
        };
        // A spreadsheet that saved the file may have put a byte-order mark in front.
        let line = if index == 0 { line.trim_start_matches('\u{feff}') } else { &line };
        parser.line(last_line, line)?;
    }
    parser.finish(last_line)
}

/// The metadata keys, in the order they are written.
const KEYS: [&str; 12] = [
    FORMAT_KEY,
    "started_at",
    "compression",
    "framing_overhead",
    "bandwidth",
    "bandwidth_window",
    "mirror_files",
    "mirror_folders",
    "mirror_bytes",
    "mirror_bytes_compressed",
    "mirror_seconds",
    "mirror_skipped_files",
];

/// Metadata read so far; every field is `None` until its line is seen.
#[derive(Default)]
struct Header {
    started_at: Option<DateTime<FixedOffset>>,
    compression: Option<CompressionLevel>,
    framing_overhead: Option<f64>,
    /// `Some(None)` is `bandwidth: schedule`, whose windows follow.
    bandwidth: Option<Option<BandwidthLimit>>,
    windows: Vec<BandwidthWindow>,
    /// The line of `bandwidth:`, for errors about the limit as a whole.
    bandwidth_line: usize,
    mirror_files: Option<u64>,
    mirror_folders: Option<u64>,
    mirror_bytes: Option<u64>,
    mirror_bytes_compressed: Option<u64>,
    mirror_seconds: Option<f64>,
    mirror_skipped_files: Option<u64>,
}

struct Parser<'a> {
    file: &'a str,
    /// Whether the format line has been seen (it must be the first).
    identified: bool,
    header: Header,
    /// The header row's line once seen, and the metadata it closed.
    metadata: Option<(usize, Metadata)>,
    intervals: Vec<Interval>,
}

/// The checked metadata.
struct Metadata {
    started_at: DateTime<FixedOffset>,
    compression: CompressionLevel,
    limit: BandwidthLimit,
    framing_overhead: f64,
    mirror: MirrorTotals,
}

impl<'a> Parser<'a> {
    fn new(file: &'a str) -> Self {
        Parser {
            file,
            identified: false,
            header: Header::default(),
            metadata: None,
            intervals: Vec::new(),
        }
    }

    fn error(&self, line: usize, problem: impl Into<String>) -> StatsError {
        StatsError::Malformed { file: self.file.to_string(), line, problem: problem.into() }
    }

    fn line(&mut self, number: usize, line: &str) -> Result<(), StatsError> {
        let line = line.trim_end_matches('\r');
        if !self.identified {
            return self.format_line(number, line);
        }
        if self.metadata.is_none() {
            if let Some(comment) = line.strip_prefix('#') {
                return self.metadata_line(number, comment);
            }
            if line.trim() == HEADER {
                let metadata = self.close_header(number)?;
                self.metadata = Some((number, metadata));
                return Ok(());
            }
            return Err(self.error(
                number,
                format!("expected a `# key: value` line or the header row `{HEADER}`"),
            ));
        }
        if line.trim().is_empty() {
            return Ok(()); // a trailing blank line, as editors leave them
        }
        let interval = self.row(number, line)?;
        if let Some(previous) = self.intervals.last() {
            let previous_end = previous.at_secs + previous.seconds;
            if interval.at_secs < previous_end - OVERLAP_TOLERANCE_SECONDS {
                return Err(self.error(
                    number,
                    format!(
                        "this interval starts at {} s, before the previous one ends at {previous_end} s: rows must be in time order and must not overlap",
                        interval.at_secs
                    ),
                ));
            }
        }
        self.intervals.push(interval);
        Ok(())
    }

    fn format_line(&mut self, number: usize, line: &str) -> Result<(), StatsError> {
        let not_stats = || {
            self.error(
                number,
                format!(
                    "not a TDU statistics file: the first line must be `# {FORMAT_KEY}: {FORMAT_VERSION}`"
                ),
            )
        };
        let (key, value) =
            line.strip_prefix('#').and_then(split_key_value).ok_or_else(not_stats)?;
        if key != FORMAT_KEY {
            return Err(not_stats());
        }
        if value != FORMAT_VERSION.to_string() {
            return Err(self.error(
                number,
                format!(
                    "statistics format {value:?} is not one this version reads (it reads {FORMAT_VERSION})"
                ),
            ));
        }
        self.identified = true;
        Ok(())
    }

    fn metadata_line(&mut self, number: usize, comment: &str) -> Result<(), StatsError> {
        let Some((key, value)) = split_key_value(comment) else {
            return Err(self.error(number, "a metadata line must look like `# key: value`"));
        };
        let duplicate = || self.error(number, format!("`{key}` appears twice"));
        let header = &self.header;
        let seen = match key {
            "started_at" => header.started_at.is_some(),
            "compression" => header.compression.is_some(),
            "framing_overhead" => header.framing_overhead.is_some(),
            "bandwidth" => header.bandwidth.is_some(),
            "mirror_files" => header.mirror_files.is_some(),
            "mirror_folders" => header.mirror_folders.is_some(),
            "mirror_bytes" => header.mirror_bytes.is_some(),
            "mirror_bytes_compressed" => header.mirror_bytes_compressed.is_some(),
            "mirror_seconds" => header.mirror_seconds.is_some(),
            "mirror_skipped_files" => header.mirror_skipped_files.is_some(),
            FORMAT_KEY => true,
            "bandwidth_window" => false,
            _ => {
                return Err(self.error(
                    number,
                    format!("unknown metadata key `{key}` (known: {})", KEYS.join(", ")),
                ));
            }
        };
        if seen {
            return Err(duplicate());
        }
        match key {
            "started_at" => {
                let at = DateTime::parse_from_rfc3339(value).map_err(|e| {
                    self.error(
                        number,
                        format!(
                            "started_at {value:?} is not an RFC 3339 time with an offset (e.g. 2026-03-02T08:00:00+01:00): {e}"
                        ),
                    )
                })?;
                self.header.started_at = Some(at);
            }
            "compression" => {
                let level = CompressionLevel::from_cli_name(value).ok_or_else(|| {
                    self.error(
                        number,
                        format!(
                            "compression {value:?} is not one of none, minimum, medium, maximum"
                        ),
                    )
                })?;
                self.header.compression = Some(level);
            }
            "framing_overhead" => {
                let overhead = self.number(number, key, value)?;
                if overhead < 1.0 {
                    return Err(self.error(
                        number,
                        format!(
                            "framing_overhead {value} is below 1: frames carry the data and more"
                        ),
                    ));
                }
                self.header.framing_overhead = Some(overhead);
            }
            "bandwidth" => {
                let limit = match value {
                    "unlimited" => Some(BandwidthLimit::Unlimited),
                    "schedule" => None,
                    fixed => {
                        let bytes_per_second = fixed.parse::<u64>().map_err(|_| {
                            self.error(
                                number,
                                format!(
                                    "bandwidth {fixed:?} is not `unlimited`, `schedule` or a whole number of bytes per second"
                                ),
                            )
                        })?;
                        Some(BandwidthLimit::Fixed { bytes_per_second })
                    }
                };
                self.header.bandwidth = Some(limit);
                self.header.bandwidth_line = number;
            }
            "bandwidth_window" => {
                if !matches!(self.header.bandwidth, Some(None)) {
                    return Err(self.error(
                        number,
                        "a bandwidth_window line must follow `# bandwidth: schedule`",
                    ));
                }
                let window = parse_window(value).map_err(|problem| self.error(number, problem))?;
                // Checked alone here so a bad window is reported on its own line; overlaps
                // between windows are checked with the whole schedule.
                let alone = BandwidthLimit::Schedule { windows: vec![window.clone()] };
                validate_bandwidth(&alone)
                    .map_err(|e| self.error(number, format!("bandwidth_window: {}", e.message)))?;
                self.header.windows.push(window);
            }
            "mirror_files" => self.header.mirror_files = Some(self.count(number, key, value)?),
            "mirror_folders" => self.header.mirror_folders = Some(self.count(number, key, value)?),
            "mirror_bytes" => self.header.mirror_bytes = Some(self.count(number, key, value)?),
            "mirror_bytes_compressed" => {
                self.header.mirror_bytes_compressed = Some(self.count(number, key, value)?);
            }
            "mirror_seconds" => {
                self.header.mirror_seconds = Some(self.number(number, key, value)?);
            }
            "mirror_skipped_files" => {
                self.header.mirror_skipped_files = Some(self.count(number, key, value)?);
            }
            _ => {} // the match above refused every other key
        }
        Ok(())
    }

    /// Checks the metadata is complete when the header row arrives on line `number`.
    fn close_header(&mut self, number: usize) -> Result<Metadata, StatsError> {
        let header = std::mem::take(&mut self.header);
        let missing = |key: &str| {
            self.error(number, format!("the metadata has no `# {key}:` line before the header row"))
        };
        let limit = match header.bandwidth {
            None => return Err(missing("bandwidth")),
            Some(Some(limit)) => limit,
            Some(None) => BandwidthLimit::Schedule { windows: header.windows },
        };
        validate_bandwidth(&limit)
            .map_err(|e| self.error(header.bandwidth_line, format!("bandwidth: {}", e.message)))?;
        Ok(Metadata {
            started_at: header.started_at.ok_or_else(|| missing("started_at"))?,
            compression: header.compression.ok_or_else(|| missing("compression"))?,
            limit,
            framing_overhead: header.framing_overhead.ok_or_else(|| missing("framing_overhead"))?,
            mirror: MirrorTotals {
                files: header.mirror_files.ok_or_else(|| missing("mirror_files"))?,
                folders: header.mirror_folders.ok_or_else(|| missing("mirror_folders"))?,
                bytes: header.mirror_bytes.ok_or_else(|| missing("mirror_bytes"))?,
                bytes_compressed: header
                    .mirror_bytes_compressed
                    .ok_or_else(|| missing("mirror_bytes_compressed"))?,
                seconds: header.mirror_seconds.ok_or_else(|| missing("mirror_seconds"))?,
                // Optional: files written before it was recorded read as nothing skipped.
                skipped_files: header.mirror_skipped_files.unwrap_or(0),
            },
        })
    }

    fn row(&self, number: usize, line: &str) -> Result<Interval, StatsError> {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [at_secs, seconds, bytes_read, bytes_compressed, operations, queue_bytes, send_rate] =
            fields.as_slice()
        else {
            return Err(self.error(
                number,
                format!(
                    "a row needs 7 comma-separated fields ({HEADER}), this one has {}",
                    fields.len()
                ),
            ));
        };
        let interval = Interval {
            at_secs: self.number(number, "at_secs", at_secs)?,
            seconds: self.number(number, "seconds", seconds)?,
            bytes_read: self.count(number, "bytes_read", bytes_read)?,
            bytes_compressed: self.count(number, "bytes_compressed", bytes_compressed)?,
            operations: self.count(number, "operations", operations)?,
            queue_bytes: self.count(number, "queue_bytes", queue_bytes)?,
            send_rate_bytes_per_second: self.number(
                number,
                "send_rate_bytes_per_second",
                send_rate,
            )?,
        };
        if interval.seconds <= 0.0 {
            return Err(self.error(number, "an interval must last more than 0 seconds"));
        }
        Ok(interval)
    }

    /// A finite, non-negative decimal number.
    fn number(&self, line: usize, field: &str, text: &str) -> Result<f64, StatsError> {
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
            _ => {
                Err(self
                    .error(line, format!("{field} {text:?} is not a finite, non-negative number")))
            }
        }
    }

    /// A whole, non-negative number.
    fn count(&self, line: usize, field: &str, text: &str) -> Result<u64, StatsError> {
        text.parse::<u64>().map_err(|_| {
            self.error(line, format!("{field} {text:?} is not a whole, non-negative number"))
        })
    }

    fn finish(self, last_line: usize) -> Result<Stats, StatsError> {
        if !self.identified {
            return Err(self.error(last_line.max(1), "the file is empty"));
        }
        let Some((_, metadata)) = self.metadata else {
            return Err(
                self.error(last_line, format!("the file ends before the header row `{HEADER}`"))
            );
        };
        Ok(Stats {
            started_at: metadata.started_at,
            compression: metadata.compression,
            limit: metadata.limit,
            framing_overhead: metadata.framing_overhead,
            mirror: metadata.mirror,
            intervals: self.intervals,
        })
    }
}

/// Splits ` key: value` (after the `#`) into its trimmed parts.
fn split_key_value(comment: &str) -> Option<(&str, &str)> {
    let (key, value) = comment.split_once(':')?;
    let key = key.trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return None;
    }
    Some((key, value.trim()))
}

fn day_name(days: Days) -> &'static str {
    match days {
        Days::EveryDay => "everyday",
        Days::Weekdays => "weekdays",
        Days::Weekends => "weekends",
        Days::Day(DayOfWeek::Mon) => "mon",
        Days::Day(DayOfWeek::Tue) => "tue",
        Days::Day(DayOfWeek::Wed) => "wed",
        Days::Day(DayOfWeek::Thu) => "thu",
        Days::Day(DayOfWeek::Fri) => "fri",
        Days::Day(DayOfWeek::Sat) => "sat",
        Days::Day(DayOfWeek::Sun) => "sun",
    }
}

/// A window as `--bandwidth-window` takes it: `weekdays 08:00-18:00 1000000`.
pub fn format_window(window: &BandwidthWindow) -> String {
    format!(
        "{} {:02}:{:02}-{:02}:{:02} {}",
        day_name(window.days),
        window.start_minute / 60,
        window.start_minute % 60,
        window.end_minute / 60,
        window.end_minute % 60,
        window.bytes_per_second
    )
}

/// Parses what [`format_window`] writes.
fn parse_window(text: &str) -> Result<BandwidthWindow, String> {
    let bad = || {
        format!(
            "bandwidth_window {text:?} must look like `weekdays 08:00-18:00 1000000` (days, start-end, bytes per second)"
        )
    };
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [days, times, rate] = parts.as_slice() else {
        return Err(bad());
    };
    let days = [
        Days::EveryDay,
        Days::Weekdays,
        Days::Weekends,
        Days::Day(DayOfWeek::Mon),
        Days::Day(DayOfWeek::Tue),
        Days::Day(DayOfWeek::Wed),
        Days::Day(DayOfWeek::Thu),
        Days::Day(DayOfWeek::Fri),
        Days::Day(DayOfWeek::Sat),
        Days::Day(DayOfWeek::Sun),
    ]
    .into_iter()
    .find(|d| day_name(*d) == days.to_ascii_lowercase())
    .ok_or_else(bad)?;
    let (start, end) = times.split_once('-').ok_or_else(bad)?;
    let minute = |clock: &str| -> Result<u16, String> {
        let (hours, minutes) = clock.split_once(':').ok_or_else(bad)?;
        let hours: u16 = hours.parse().map_err(|_| bad())?;
        let minutes: u16 = minutes.parse().map_err(|_| bad())?;
        if minutes > 59 || hours > 24 || (hours == 24 && minutes > 0) {
            return Err(bad());
        }
        Ok(hours * 60 + minutes)
    };
    Ok(BandwidthWindow {
        days,
        start_minute: minute(start)?,
        end_minute: minute(end)?,
        bytes_per_second: rate.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stats {
        Stats {
            started_at: DateTime::parse_from_rfc3339("2026-03-02T08:00:00+01:00").unwrap(),
            compression: CompressionLevel::Medium,
            limit: BandwidthLimit::Schedule {
                windows: vec![
                    BandwidthWindow {
                        days: Days::Weekdays,
                        start_minute: 8 * 60,
                        end_minute: 18 * 60,
                        bytes_per_second: 1_000_000,
                    },
                    BandwidthWindow {
                        days: Days::Day(DayOfWeek::Sun),
                        start_minute: 22 * 60 + 30,
                        end_minute: 2 * 60,
                        bytes_per_second: 0,
                    },
                ],
            },
            framing_overhead: 1.0123,
            mirror: MirrorTotals {
                files: 1200,
                folders: 30,
                bytes: 5_000_000_000,
                bytes_compressed: 2_600_000_123,
                seconds: 95.5,
                skipped_files: 2,
            },
            intervals: vec![
                Interval {
                    at_secs: 0.0,
                    seconds: 10.0,
                    bytes_read: 1_048_576,
                    bytes_compressed: 550_000,
                    operations: 42,
                    queue_bytes: 0,
                    send_rate_bytes_per_second: 55_000.0,
                },
                Interval {
                    at_secs: 10.0,
                    seconds: 9.999_871_3,
                    bytes_read: 0,
                    bytes_compressed: 120,
                    operations: 1,
                    queue_bytes: 7,
                    send_rate_bytes_per_second: 0.1 + 0.2,
                },
                Interval {
                    at_secs: 30.25,
                    seconds: 10.0,
                    bytes_read: 77,
                    bytes_compressed: 99,
                    operations: 3,
                    queue_bytes: 0,
                    send_rate_bytes_per_second: 1e-7,
                },
            ],
        }
    }

    fn to_text(stats: &Stats) -> String {
        let mut out = Vec::new();
        write_csv(stats, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn parse(text: &str) -> Result<Stats, StatsError> {
        read_csv(text.as_bytes(), "stats.csv")
    }

    /// The problem of a malformed file, as `file:line: problem`.
    fn problem(text: &str) -> String {
        match parse(text) {
            Err(e @ StatsError::Malformed { .. }) => e.to_string(),
            other => panic!("expected a malformed-file error, got {other:?}"),
        }
    }

    #[test]
    fn a_file_reads_back_exactly_as_written() {
        let stats = sample();
        assert_eq!(parse(&to_text(&stats)).unwrap(), stats);
        for limit in [BandwidthLimit::Unlimited, BandwidthLimit::Fixed { bytes_per_second: 3500 }] {
            let stats = Stats { limit, intervals: Vec::new(), ..sample() };
            assert_eq!(parse(&to_text(&stats)).unwrap(), stats);
        }
    }

    #[test]
    fn a_file_round_trips_through_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.csv");
        let mut file = File::create(&path).unwrap();
        write_csv(&sample(), &mut file).unwrap();
        assert_eq!(read_csv_file(&path).unwrap(), sample());
        let missing = read_csv_file(&dir.path().join("nope.csv")).unwrap_err().to_string();
        assert!(missing.starts_with(&format!("{}: ", dir.path().join("nope.csv").display())));
    }

    #[test]
    fn the_written_file_is_readable_by_a_person() {
        let text = to_text(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# understudy-tdu-stats: 1");
        assert!(lines.contains(&"# bandwidth_window: weekdays 08:00-18:00 1000000"));
        assert!(lines.contains(&"# bandwidth_window: sun 22:30-02:00 0"));
        assert!(lines.contains(&HEADER));
        assert!(lines.contains(&"0,10,1048576,550000,42,0,55000"));
    }

    #[test]
    fn rows_may_have_gaps_crlf_a_byte_order_mark_and_a_trailing_blank_line() {
        let text = "\u{feff}".to_string() + &to_text(&sample()).replace('\n', "\r\n") + "\r\n";
        assert_eq!(parse(&text).unwrap(), sample());
    }

    #[test]
    fn a_binary_file_is_refused_with_its_line() {
        let mut bytes = to_text(&sample()).into_bytes();
        bytes.extend_from_slice(b"0,10,\xff\xfe,1,1,0,0\n");
        let lines = bytes.iter().filter(|b| **b == b'\n').count();
        let error = read_csv(bytes.as_slice(), "stats.csv").unwrap_err().to_string();
        assert_eq!(error, format!("stats.csv:{lines}: this line is not UTF-8 text"));
    }

    #[test]
    fn malformed_files_name_the_line_and_the_problem() {
        let good = to_text(&sample());
        let header_line = good.lines().position(|l| l == HEADER).unwrap() + 1;
        let cases: Vec<(String, String)> = vec![
            (String::new(), "stats.csv:1: the file is empty".into()),
            (
                "time,bytes\n1,2\n".into(),
                "stats.csv:1: not a TDU statistics file: the first line must be `# understudy-tdu-stats: 1`".into(),
            ),
            (
                good.replace("understudy-tdu-stats: 1", "understudy-tdu-stats: 7"),
                "stats.csv:1: statistics format \"7\" is not one this version reads (it reads 1)"
                    .into(),
            ),
            (
                good.replace("# compression: medium", "# compression: extreme"),
                "stats.csv:3: compression \"extreme\" is not one of none, minimum, medium, maximum"
                    .into(),
            ),
            (
                good.replace("# framing_overhead: 1.0123", "# framing_overhead: 0.5"),
                "stats.csv:4: framing_overhead 0.5 is below 1: frames carry the data and more"
                    .into(),
            ),
            (
                good.replace("# started_at: 2026-03-02T08:00:00+01:00", "# started_at: yesterday"),
                "stats.csv:2: started_at \"yesterday\" is not an RFC 3339 time".into(),
            ),
            (
                good.replace("# mirror_files: 1200\n", ""),
                format!(
                    "stats.csv:{}: the metadata has no `# mirror_files:` line before the header row",
                    header_line - 1
                ),
            ),
            (
                good.replace("# mirror_folders: 30", "# mirror_folders: 30\n# colour: blue"),
                "stats.csv:10: unknown metadata key `colour`".into(),
            ),
            (
                good.replace("# mirror_folders: 30", "# mirror_folders: 30\n# mirror_folders: 31"),
                "stats.csv:10: `mirror_folders` appears twice".into(),
            ),
            (
                good.replace("weekdays 08:00-18:00 1000000", "weekdays 08:00-25:00 1000000"),
                "stats.csv:6: bandwidth_window \"weekdays 08:00-25:00 1000000\" must look like"
                    .into(),
            ),
            (
                good.replace("weekdays 08:00-18:00 1000000", "weekdays 08:00-18:00 1000"),
                "stats.csv:6: bandwidth_window: a window's limit must be 0 (hold) or at least 3500 bytes per second, not 1000".into(),
            ),
            (
                good.replace("sun 22:30-02:00 0", "mon 17:00-19:00 0"),
                "stats.csv:5: bandwidth: bandwidth windows overlap".into(),
            ),
            (
                good.replace(HEADER, "at,seconds"),
                format!("stats.csv:{header_line}: expected a `# key: value` line or the header row"),
            ),
            (
                good.replace("0,10,1048576,550000,42,0,55000", "0,10,1048576,550000,42,0"),
                format!(
                    "stats.csv:{}: a row needs 7 comma-separated fields",
                    header_line + 1
                ),
            ),
            (
                good.replace("0,10,1048576,550000,42,0,55000", "0,10,lots,550000,42,0,55000"),
                format!(
                    "stats.csv:{}: bytes_read \"lots\" is not a whole, non-negative number",
                    header_line + 1
                ),
            ),
            (
                good.replace("0,10,1048576,550000,42,0,55000", "0,NaN,1048576,550000,42,0,55000"),
                format!(
                    "stats.csv:{}: seconds \"NaN\" is not a finite, non-negative number",
                    header_line + 1
                ),
            ),
            (
                good.replace("0,10,1048576,550000,42,0,55000", "0,0,1048576,550000,42,0,55000"),
                format!(
                    "stats.csv:{}: an interval must last more than 0 seconds",
                    header_line + 1
                ),
            ),
            (
                good.replace("30.25,10,", "5,10,"),
                format!(
                    "stats.csv:{}: this interval starts at 5 s, before the previous one ends",
                    header_line + 3
                ),
            ),
            (
                good.lines().take(header_line - 1).collect::<Vec<_>>().join("\n"),
                format!("stats.csv:{}: the file ends before the header row", header_line - 1),
            ),
        ];
        for (text, expected) in cases {
            let got = problem(&text);
            assert!(got.starts_with(&expected), "expected {expected:?}\n     got {got:?}");
            assert!(!got.contains('\n'), "errors are one line: {got:?}");
        }
    }

    #[test]
    fn a_fixed_limit_under_the_minimum_is_refused() {
        let text = to_text(&Stats { limit: BandwidthLimit::Unlimited, ..sample() })
            .replace("# bandwidth: unlimited", "# bandwidth: 3499");
        assert_eq!(
            problem(&text),
            "stats.csv:5: bandwidth: a fixed bandwidth limit must be at least 3500 bytes per second, not 3499"
        );
    }

    #[test]
    fn a_projection_fills_the_queue_and_send_rate_columns() {
        let mut stats = sample();
        let projection: Vec<QueuePoint> = (0..3)
            .map(|i| QueuePoint {
                at_secs: f64::from(i) * 10.0 + 10.0,
                queue_bytes: f64::from(i) * 1000.4,
                queue_wire_bytes: 0.0,
                send_rate_bytes_per_second: 5.5,
            })
            .collect();
        stats.apply_projection(&projection);
        let queues: Vec<u64> = stats.intervals.iter().map(|i| i.queue_bytes).collect();
        assert_eq!(queues, [0, 1000, 2001]);
        assert!(stats.intervals.iter().all(|i| i.send_rate_bytes_per_second == 5.5));
    }
}
