//! The TDU (Throughput Diagnostics Utility): from what a diagnostics job measured against the
//! null target, forecast how long the mirror takes over a link or under the job's bandwidth
//! limit, and what replication of the source's churn needs. The seeds' TDU "simulates a real
//! job" so that its statistics "approximate the time and amount of bandwidth that a
//! particular source and job type will use" (seed 000 §9, seed 002 §5).
//!
//! This module is the pure part: the binary's `understudy tdu` runs the job and measures;
//! everything here is arithmetic on those measurements, reads no clock and touches no file
//! but the ones it is handed.
//!
//! - [`stats`]: the statistics file (CSV with `# key: value` metadata), written after a run
//!   and read back by `understudy tdu forecast` to answer "what if" without the source.
//! - [`forecast`]: the model ([`forecast::RateModel`], [`forecast::mirror_seconds`],
//!   [`forecast::ReplicationForecast`]).
//! - [`report`]: the report, as JSON and as text.
//! - [`chart`]: change rate and projected queue over time, as SVG.
//! - [`units`]: sizes, rates and durations for people.
//!
//! [`analyse`] puts them together for one [`Scenario`] (compression level, bandwidth limit,
//! start time), the recorded one or a "what if".
//!
//! # The model
//!
//! **Wire bytes.** The bandwidth limiter meters frames as they go on the wire: after
//! compression, framing and field names included. The diagnostics job measures exactly those
//! (per mirror and per `--watch` interval), so forecasts need no overhead guess for the
//! recorded compression level; `framing_overhead` (encoded frame bytes per data byte, about
//! 1.01) is only used to undo compression for a "what if" at another level.
//!
//! **The source's pace.** The diagnostics job must run *unthrottled* (the null target takes
//! everything at once): its mirror time is then the source's own pace, reading and encoding.
//! Reading and sending overlap in a real job, so the slower governs: every rate the model uses
//! is capped at the mirror's measured wire rate, and where a limit lets go (unlimited, or
//! outside every schedule window) that measured rate is the rate.
//!
//! **Mirror.** [`forecast::mirror_seconds`] walks time forward from the start moment through
//! the rates in force (a link, a fixed limit, or a weekly schedule kept as runs of constant
//! rate, a window of 0 holding transmission) until the mirror's wire bytes are sent. A link
//! of N bit/s carries N/8 × 94% bytes of frames per second (Ethernet, IP and TCP headers
//! take the rest); a limit carries its value.
//!
//! **Replication.** Each interval's churn (wire bytes) is spread evenly over the interval and
//! queued first in, first out; the queue drains at the rate in force whenever it holds
//! anything. The recovery point is the age of the oldest unsent byte. After the recording no
//! more churn is assumed, so a queue left then drains and its oldest byte keeps ageing until
//! it goes. The bandwidth a recovery-point target needs is the smallest constant rate whose
//! replay keeps the recovery point at or under the target (bisection: a faster link never
//! makes the oldest byte older). The projection at the job's limit gives the queue's
//! high-water mark (in queue bytes, the uncompressed operations the source queue holds and
//! reports, and in wire bytes) and the worst recovery point.
//!
//! # Assumptions and limits
//!
//! - Nothing shorter than an interval is resolved: a burst inside one interval is averaged
//!   over it, and a recovery point under one interval shows as "under one interval". Record
//!   with an interval well under the recovery point you care about.
//! - Schedules are local wall-clock times, as the limiter reads them; a replay runs at the
//!   recording's own wall clock (`started_at` keeps its UTC offset). Daylight-saving shifts
//!   are ignored.
//! - Compression at a level the recording did not run with is an estimate (see
//!   [`forecast::estimate_compression`]): savings scale by the levels' typical savings; from
//!   an uncompressed recording only typical ratios are known. A higher level's CPU cost is
//!   not modelled.
//! - Not modelled: network latency (the transport's window of unacknowledged operations caps
//!   throughput at window ÷ round trip on a long link), other traffic on the link, the
//!   target's disk, TCP slow start, and the seconds a real job spends connecting.
//! - The limiter's token bucket lets a quarter second's worth through at once; over minutes
//!   that is noise, and the model treats a limit as a steady rate.

pub mod chart;
pub mod forecast;
mod queue;
pub mod report;
pub mod stats;
pub mod units;

#[cfg(test)]
mod tests;

use chrono::NaiveDateTime;
use understudy_core::spec::{BandwidthLimit, CompressionLevel};

use self::forecast::{
    DEFAULT_RPO_TARGETS_SECONDS, RateModel, ReplicationForecast, estimate_compression,
    mirror_seconds, recorded_ratio, standard_links,
};
use self::report::{Forecast, MirrorReport, ReplicationReport, Report, ScenarioReport};
use self::stats::Stats;
use self::units::describe_limit;

/// What to forecast for: the recorded settings ([`Scenario::recorded`]) or a "what if".
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The compression level.
    pub compression: CompressionLevel,
    /// The job's bandwidth limit (validate it with
    /// `understudy_core::spec::validate_bandwidth` first: the model computes with any value).
    pub limit: BandwidthLimit,
    /// The local wall-clock moment the mirror starts, for schedules (the binary passes
    /// `chrono::Local::now().naive_local()`).
    pub mirror_start: NaiveDateTime,
    /// The links the mirror is forecast over, in bits per second.
    pub links_bits_per_second: Vec<f64>,
    /// The recovery-point targets replication's bandwidth is given for, in seconds.
    pub rpo_targets_seconds: Vec<f64>,
}

impl Scenario {
    /// The settings the statistics were recorded with, the standard links and the standard
    /// recovery-point targets.
    pub fn recorded(stats: &Stats, mirror_start: NaiveDateTime) -> Self {
        Scenario {
            compression: stats.compression,
            limit: stats.limit.clone(),
            mirror_start,
            links_bits_per_second: standard_links().to_vec(),
            rpo_targets_seconds: DEFAULT_RPO_TARGETS_SECONDS.to_vec(),
        }
    }
}

/// A report, and the replication forecast behind it (for the chart and the statistics
/// file's projected columns).
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    /// The report.
    pub report: Report,
    /// The replication forecast, if the statistics have intervals.
    pub replication: Option<ReplicationForecast>,
}

/// Forecasts everything for `scenario` from `stats`.
pub fn analyse(stats: &Stats, scenario: &Scenario) -> Analysis {
    let mirror = &stats.mirror;
    let recorded = recorded_ratio(
        stats.compression,
        mirror.bytes,
        mirror.bytes_compressed,
        stats.framing_overhead,
    );
    let compression = estimate_compression(stats.compression, recorded, scenario.compression);
    #[allow(clippy::cast_precision_loss)] // byte counts are far below 2^53
    let (data_bytes, recorded_wire) = (mirror.bytes as f64, mirror.bytes_compressed as f64);
    let wire_bytes = recorded_wire * compression.wire_scale();
    // The source's own pace in wire bytes at the forecast's compression: the mirror took
    // `seconds` unthrottled, and compression is assumed not to change that.
    let source_pace = if mirror.seconds > 0.0 && wire_bytes > 0.0 {
        wire_bytes / mirror.seconds
    } else {
        f64::INFINITY
    };

    let mut forecasts: Vec<Forecast> = scenario
        .links_bits_per_second
        .iter()
        .map(|&bits| {
            let rates = RateModel::link(bits).capped(source_pace);
            Forecast {
                label: rates.label().to_string(),
                link_bits_per_second: Some(bits),
                mirror_seconds: mirror_seconds(wire_bytes, &rates, scenario.mirror_start),
            }
        })
        .collect();
    let job = RateModel::limited(&scenario.limit, source_pace);
    #[allow(clippy::cast_precision_loss)] // limits are far below 2^53
    let job_bits = match scenario.limit {
        BandwidthLimit::Fixed { bytes_per_second } => Some(bytes_per_second as f64 * 8.0),
        BandwidthLimit::Unlimited | BandwidthLimit::Schedule { .. } => None,
    };
    let job_label = match scenario.limit {
        BandwidthLimit::Unlimited => "job limit: unlimited".to_string(),
        BandwidthLimit::Fixed { .. } => format!("job limit: {}", job.label()),
        BandwidthLimit::Schedule { .. } => format!("job schedule: {}", job.label()),
    };
    forecasts.push(Forecast {
        label: job_label,
        link_bits_per_second: job_bits,
        mirror_seconds: mirror_seconds(wire_bytes, &job, scenario.mirror_start),
    });

    let replication = ReplicationForecast::from_stats(
        stats,
        scenario.compression,
        &job,
        &scenario.rpo_targets_seconds,
    );
    let report = Report {
        mirror: MirrorReport::from(mirror),
        forecasts,
        replication: replication.as_ref().map(ReplicationReport::from),
        scenario: ScenarioReport {
            compression: scenario.compression,
            recorded_compression: stats.compression,
            compression_basis: compression.basis,
            wire_bytes_per_data_byte: if data_bytes > 0.0 { wire_bytes / data_bytes } else { 1.0 },
            bandwidth: describe_limit(&scenario.limit),
            mirror_start: scenario.mirror_start.format("%Y-%m-%dT%H:%M:%S").to_string(),
        },
    };
    Analysis { report, replication }
}
