//! The TDU's report: what was measured and what the model forecasts, as JSON (`--json`,
//! through serde) and as text for a person ([`render_text`]).
//!
//! JSON units are plain: bytes, bytes per second, bits per second, seconds. `null` means
//! "never" (a schedule that holds all week, a queue that never drains).

use std::fmt::Write as _;

use serde::Serialize;
use understudy_core::spec::CompressionLevel;

use super::forecast::{
    CompressionBasis, LimitProjection, RateSummary, ReplicationForecast, RpoRequirement,
};
use super::stats::{MirrorTotals, round_to_u64};
use super::units::{
    format_bits, format_byte_rate, format_bytes, format_count, format_duration, format_rate,
};

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The mirror as measured against the null target.
    pub mirror: MirrorReport,
    /// How long the mirror would take over the standard links and under the job's limit.
    pub forecasts: Vec<Forecast>,
    /// With `--watch`: what replication needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationReport>,
    /// What the forecasts assumed.
    pub scenario: ScenarioReport,
}

/// The measured mirror.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MirrorReport {
    /// Files mirrored.
    pub files: u64,
    /// Folders mirrored.
    pub folders: u64,
    /// File data bytes.
    pub bytes: u64,
    /// Wire bytes: frames after compression, framing included.
    pub bytes_compressed: u64,
    /// `bytes_compressed / bytes` (framing included, so about 1.01 uncompressed).
    pub compression_ratio: f64,
    /// Elapsed time.
    pub seconds: f64,
    /// File data read per second.
    pub read_bytes_per_second: f64,
    /// Wire bytes sent per second.
    pub send_bytes_per_second: f64,
    /// Files the mirror could not read and skipped (named on stderr while it ran).
    pub skipped_files: u64,
}

impl From<&MirrorTotals> for MirrorReport {
    fn from(mirror: &MirrorTotals) -> Self {
        #[allow(clippy::cast_precision_loss)] // byte counts are far below 2^53
        let (bytes, wire) = (mirror.bytes as f64, mirror.bytes_compressed as f64);
        let per_second =
            |value: f64| if mirror.seconds > 0.0 { value / mirror.seconds } else { 0.0 };
        MirrorReport {
            files: mirror.files,
            folders: mirror.folders,
            bytes: mirror.bytes,
            bytes_compressed: mirror.bytes_compressed,
            compression_ratio: if bytes > 0.0 { wire / bytes } else { 1.0 },
            seconds: mirror.seconds,
            read_bytes_per_second: per_second(bytes),
            send_bytes_per_second: per_second(wire),
            skipped_files: mirror.skipped_files,
        }
    }
}

/// One mirror forecast.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Forecast {
    /// "100 Mbit/s link", "job limit: 20.0 MB/s", …
    pub label: String,
    /// The link's (or fixed limit's) bit rate; `None` for a schedule or no limit.
    pub link_bits_per_second: Option<f64>,
    /// How long the mirror takes; `None`: never (the schedule holds all week).
    pub mirror_seconds: Option<f64>,
}

/// What replication needs, from the `--watch` recording.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplicationReport {
    /// How long the recording covers.
    pub recorded_seconds: f64,
    /// Its longest interval: nothing shorter is resolved.
    pub resolution_seconds: f64,
    /// How many intervals.
    pub intervals: usize,
    /// Change rate on the wire (after compression, framing included).
    pub wire_bytes_per_second: RateSummary,
    /// File data the changes read.
    pub read_bytes_per_second: RateSummary,
    /// Operations after coalescing.
    pub operations_per_second: RateSummary,
    /// The constant bandwidth each recovery-point target needs.
    pub needed: Vec<RpoRequirement>,
    /// The job's limit the projection ran at, in words.
    pub limit: String,
    /// The projection at that limit.
    pub at_limit: LimitReport,
}

/// The projection at the job's limit, bytes rounded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LimitReport {
    /// The source queue's high-water mark, in queue bytes (before compression).
    pub queue_high_water_bytes: u64,
    /// The same in wire bytes.
    pub queue_high_water_wire_bytes: u64,
    /// The worst recovery point; `None`: the queue never drains.
    pub worst_recovery_point_seconds: Option<f64>,
    /// How long the queue left at the end of the recording takes to drain.
    pub drains_seconds_after_recording: Option<f64>,
}

impl From<&LimitProjection> for LimitReport {
    fn from(projection: &LimitProjection) -> Self {
        LimitReport {
            queue_high_water_bytes: round_to_u64(projection.queue_high_water_bytes),
            queue_high_water_wire_bytes: round_to_u64(projection.queue_high_water_wire_bytes),
            worst_recovery_point_seconds: projection.worst_recovery_point_seconds,
            drains_seconds_after_recording: projection.drains_seconds_after_recording,
        }
    }
}

impl From<&ReplicationForecast> for ReplicationReport {
    fn from(forecast: &ReplicationForecast) -> Self {
        ReplicationReport {
            recorded_seconds: forecast.recorded_seconds,
            resolution_seconds: forecast.resolution_seconds,
            intervals: forecast.change_rate.len(),
            wire_bytes_per_second: forecast.wire_rate,
            read_bytes_per_second: forecast.read_rate,
            operations_per_second: forecast.operations_rate,
            needed: forecast.needed.clone(),
            limit: forecast.limit_label.clone(),
            at_limit: LimitReport::from(&forecast.at_limit),
        }
    }
}

/// What the forecasts assumed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScenarioReport {
    /// The compression level forecast.
    pub compression: CompressionLevel,
    /// The level the diagnostics job ran with.
    pub recorded_compression: CompressionLevel,
    /// Whether the forecast level's ratio was measured or estimated.
    pub compression_basis: CompressionBasis,
    /// Wire bytes per file data byte the mirror forecasts use.
    pub wire_bytes_per_data_byte: f64,
    /// The job's bandwidth limit, in words.
    pub bandwidth: String,
    /// The wall-clock moment the mirror forecasts start at (schedules depend on it).
    pub mirror_start: String,
}

/// The report as a person reads it.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    // `fmt::Write` into a String cannot fail; the results are ignored for that reason.
    let mirror = &report.mirror;
    let _ = writeln!(out, "Mirror (measured against the null target)");
    #[allow(clippy::cast_precision_loss)] // byte counts are far below 2^53
    let (bytes, wire) = (mirror.bytes as f64, mirror.bytes_compressed as f64);
    let _ = writeln!(
        out,
        "  {} files in {} folders: {}, {} on the wire ({:.0}% of the data, framing included)",
        format_count(mirror.files),
        format_count(mirror.folders),
        format_bytes(bytes),
        format_bytes(wire),
        mirror.compression_ratio * 100.0
    );
    let _ = writeln!(
        out,
        "  took {}: read {}, sent {}",
        format_duration(mirror.seconds),
        format_rate(mirror.read_bytes_per_second),
        format_rate(mirror.send_bytes_per_second)
    );
    if mirror.skipped_files > 0 {
        let _ = writeln!(
            out,
            "  {} files could not be read and were skipped (not in the figures)",
            format_count(mirror.skipped_files)
        );
    }

    let scenario = &report.scenario;
    let compression = match scenario.compression_basis {
        CompressionBasis::Recorded => "as measured".to_string(),
        CompressionBasis::Uncompressed => "off".to_string(),
        CompressionBasis::ScaledFromRecorded => format!(
            "estimated from the ratio measured at {}",
            scenario.recorded_compression.cli_name()
        ),
        CompressionBasis::Typical => {
            "estimated from typical data: the recording was uncompressed".to_string()
        }
    };
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Mirror forecasts (compression {}, {compression}; {:.0}% of the data on the wire)",
        scenario.compression.cli_name(),
        scenario.wire_bytes_per_data_byte * 100.0
    );
    let width = report.forecasts.iter().map(|f| f.label.chars().count()).max().unwrap_or(0);
    for forecast in &report.forecasts {
        let duration = forecast.mirror_seconds.map_or_else(
            || "never (the schedule holds transmission all week)".to_string(),
            format_duration,
        );
        let _ = writeln!(out, "  {:<width$}  {duration}", forecast.label);
    }
    let _ = writeln!(
        out,
        "  The source alone took {}: no link makes the mirror faster than that.",
        format_duration(mirror.seconds)
    );

    if let Some(replication) = &report.replication {
        render_replication(&mut out, replication);
    }
    out
}

fn render_replication(out: &mut String, replication: &ReplicationReport) {
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Replication (watched {} in {} intervals of up to {})",
        format_duration(replication.recorded_seconds),
        format_count(replication.intervals as u64),
        format_duration(replication.resolution_seconds)
    );
    let summary = |s: &RateSummary, show: &dyn Fn(f64) -> String| {
        format!(
            "peak {}, p99 {}, p90 {}, p50 {}, mean {}",
            show(s.peak),
            show(s.p99),
            show(s.p90),
            show(s.p50),
            show(s.mean)
        )
    };
    let _ = writeln!(
        out,
        "  change rate on the wire: {}",
        summary(&replication.wire_bytes_per_second, &format_byte_rate)
    );
    let _ = writeln!(
        out,
        "  operations: {}",
        summary(&replication.operations_per_second, &|v| format!("{v:.1}/s"))
    );
    let _ = writeln!(out, "  bandwidth needed to keep the recovery point under");
    for need in &replication.needed {
        let _ = writeln!(
            out,
            "    {:<7} {}, a link of {} or more",
            format_duration(need.rpo_seconds),
            format_rate(need.bytes_per_second),
            format_bits(need.link_bits_per_second)
        );
    }
    let at_limit = &replication.at_limit;
    #[allow(clippy::cast_precision_loss)] // byte counts are far below 2^53
    let (queue, queue_wire) =
        (at_limit.queue_high_water_bytes as f64, at_limit.queue_high_water_wire_bytes as f64);
    let recovery_point = match at_limit.worst_recovery_point_seconds {
        None => "never recovers: the queue does not drain".to_string(),
        Some(seconds) if seconds < replication.resolution_seconds => format!(
            "under {} (the recording's resolution)",
            format_duration(replication.resolution_seconds)
        ),
        Some(seconds) => format_duration(seconds),
    };
    let _ = writeln!(out, "  at the job's limit ({}):", replication.limit);
    let _ = writeln!(
        out,
        "    queue high-water mark {} ({} on the wire), worst recovery point {recovery_point}",
        format_bytes(queue),
        format_bytes(queue_wire)
    );
    if let Some(seconds) = at_limit.drains_seconds_after_recording.filter(|s| *s > 0.0) {
        let _ = writeln!(
            out,
            "    the queue left at the end of the recording drains {} later",
            format_duration(seconds)
        );
    }
}
