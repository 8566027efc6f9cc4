//! Forecasts from what the diagnostics job measured: how long a mirror takes over a link or
//! under a limit ([`mirror_seconds`]), and what replicating a recorded churn needs
//! ([`ReplicationForecast`]).
//!
//! Everything is in *wire bytes* (frames after compression, framing included), the unit the
//! bandwidth limiter meters, except the projected queue, which is also given in *queue bytes*
//! (operations as the source queue holds them, before compression).
//!
//! A [`RateModel`] is the rate the job can send at, at every moment of the week: a link, a
//! fixed limit, or a schedule, each capped by what the source itself can deliver. It is kept
//! as runs of constant rate over the week (minute resolution, as the schedules have), so
//! walking a multi-day mirror or a week-long recording costs one step per rate change, and
//! whole weeks are skipped at once.

use chrono::{Datelike, NaiveDateTime, Timelike, Weekday};
use serde::Serialize;
use understudy_core::spec::{BandwidthLimit, CompressionLevel};

use super::queue::{Curve, needed_rate, simulate};
use super::stats::Stats;
use super::units::{describe_limit, format_byte_rate, format_link};

/// Seconds in a week.
pub const SECONDS_PER_WEEK: f64 = 7.0 * 86_400.0;

/// The share of a link's bit rate left for the job's frames once Ethernet, IP and TCP have
/// taken theirs: 1448 payload bytes (TCP with timestamps) per 1538 bytes on an Ethernet wire
/// of 1500-byte packets is 94%. Applies to links only; a bandwidth limit meters the frames
/// themselves.
pub const LINK_PAYLOAD_EFFICIENCY: f64 = 0.94;

/// The recovery-point targets the TDU reports the bandwidth for: 1, 5 and 15 minutes.
pub const DEFAULT_RPO_TARGETS_SECONDS: [f64; 3] = [60.0, 300.0, 900.0];

/// Rate changes closer than this to "now" count as now: keeps the walks from taking steps of
/// a few ulps at run boundaries.
const BOUNDARY_EPSILON_SECONDS: f64 = 1e-6;

/// The links every TDU report forecasts a mirror over, in bits per second: 10 Mbit/s,
/// 100 Mbit/s and 1 Gbit/s.
pub fn standard_links() -> [f64; 3] {
    [10e6, 100e6, 1e9]
}

/// The rate a job can send at, in wire bytes per second, at every moment of the week.
///
/// Times are local wall-clock times (`NaiveDateTime`), because that is how the bandwidth
/// limiter reads a schedule (`chrono::Local`); daylight-saving shifts are not modelled.
#[derive(Clone, Debug, PartialEq)]
pub struct RateModel {
    /// Runs of constant rate, by start, the first at second 0 of the week (Monday 00:00);
    /// adjacent runs differ in rate.
    runs: Vec<RateRun>,
    /// What the model is, for people: "100 Mbit/s link", "20.0 MB/s", a schedule.
    label: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct RateRun {
    /// Second of the week, from Monday 00:00.
    start: f64,
    bytes_per_second: f64,
}

/// NaN and negative rates are no rate at all; infinity stays (no ceiling).
fn sanitize_rate(bytes_per_second: f64) -> f64 {
    if bytes_per_second.is_nan() || bytes_per_second < 0.0 { 0.0 } else { bytes_per_second }
}

/// Converts a byte count or rate to `f64` for the model.
#[allow(clippy::cast_precision_loss)] // byte counts are far below 2^53
pub(super) fn as_f64(value: u64) -> f64 {
    value as f64
}

impl RateModel {
    /// The same rate all the time.
    pub fn constant(bytes_per_second: f64) -> Self {
        let bytes_per_second = sanitize_rate(bytes_per_second);
        RateModel {
            runs: vec![RateRun { start: 0.0, bytes_per_second }],
            label: format_byte_rate(bytes_per_second),
        }
    }

    /// A link of `bits_per_second`, less what the network's own headers take
    /// ([`LINK_PAYLOAD_EFFICIENCY`]).
    pub fn link(bits_per_second: f64) -> Self {
        Self::constant(bits_per_second / 8.0 * LINK_PAYLOAD_EFFICIENCY)
            .with_label(format!("{} link", format_link(bits_per_second)))
    }

    /// A job's bandwidth limit. Where the limit lets go (unlimited, or outside every schedule
    /// window) the job sends at `unlimited_bytes_per_second`: the link's rate, or without a
    /// link the rate the diagnostics job measured (`f64::INFINITY` for no ceiling at all). A
    /// limit above that ceiling is the ceiling; a window of 0 holds transmission.
    pub fn limited(limit: &BandwidthLimit, unlimited_bytes_per_second: f64) -> Self {
        let ceiling = sanitize_rate(unlimited_bytes_per_second);
        let label = describe_limit(limit);
        match limit {
            BandwidthLimit::Unlimited => Self::constant(ceiling).with_label(label),
            BandwidthLimit::Fixed { bytes_per_second } => {
                Self::constant(as_f64(*bytes_per_second).min(ceiling)).with_label(label)
            }
            BandwidthLimit::Schedule { .. } => {
                const DAYS: [Weekday; 7] = [
                    Weekday::Mon,
                    Weekday::Tue,
                    Weekday::Wed,
                    Weekday::Thu,
                    Weekday::Fri,
                    Weekday::Sat,
                    Weekday::Sun,
                ];
                let mut model = RateModel { runs: Vec::new(), label };
                // Minute by minute over one week (10,080 look-ups, once): the schedule's own
                // rule decides, so the model cannot disagree with the limiter about a window.
                for (day_index, day) in (0u32..).zip(DAYS) {
                    for minute in 0..24 * 60u16 {
                        let rate = match limit.limit_at(day, minute) {
                            None => ceiling,
                            Some(limit) => as_f64(limit).min(ceiling),
                        };
                        let start = f64::from(day_index * 86_400 + u32::from(minute) * 60);
                        model.push_run(start, rate);
                    }
                }
                model
            }
        }
    }

    /// This model with every rate capped at `bytes_per_second` (the source's own pace, say).
    #[must_use]
    pub fn capped(&self, bytes_per_second: f64) -> Self {
        let ceiling = sanitize_rate(bytes_per_second);
        let mut model = RateModel { runs: Vec::new(), label: self.label.clone() };
        for run in &self.runs {
            model.push_run(run.start, run.bytes_per_second.min(ceiling));
        }
        model
    }

    /// The same model under another name.
    #[must_use]
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// What the model is, for people: "100 Mbit/s link", "20.0 MB/s", a schedule.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn push_run(&mut self, start: f64, bytes_per_second: f64) {
        if self.runs.last().is_none_or(|last| last.bytes_per_second != bytes_per_second) {
            self.runs.push(RateRun { start, bytes_per_second });
        }
    }

    /// The rate at a wall-clock moment.
    pub fn rate_at(&self, when: NaiveDateTime) -> f64 {
        self.segment(week_position(when), 0.0).0
    }

    /// Whether the rate never changes.
    pub fn is_constant(&self) -> bool {
        self.runs.len() <= 1
    }

    /// The lowest and highest rates of the week.
    pub fn rate_range(&self) -> (f64, f64) {
        self.runs.iter().fold((f64::INFINITY, 0.0_f64), |(low, high), run| {
            (low.min(run.bytes_per_second), high.max(run.bytes_per_second))
        })
    }

    /// Wire bytes one week carries.
    pub fn bytes_per_week(&self) -> f64 {
        self.runs
            .iter()
            .enumerate()
            .map(|(i, run)| {
                let end = self.runs.get(i + 1).map_or(SECONDS_PER_WEEK, |next| next.start);
                // A zero rate carries nothing however long (and 0 × ∞ must not be NaN).
                if run.bytes_per_second == 0.0 {
                    0.0
                } else {
                    run.bytes_per_second * (end - run.start)
                }
            })
            .sum()
    }

    /// The rate at `t` seconds after a moment at week position `origin`, and the `t` at which
    /// it next changes (infinity if it never does).
    pub(super) fn segment(&self, origin: f64, t: f64) -> (f64, f64) {
        let Some(first) = self.runs.first() else {
            return (0.0, f64::INFINITY); // no runs: built by no constructor; send nothing
        };
        if self.runs.len() == 1 {
            return (first.bytes_per_second, f64::INFINITY);
        }
        let mut position = (origin + t).rem_euclid(SECONDS_PER_WEEK);
        if SECONDS_PER_WEEK - position < BOUNDARY_EPSILON_SECONDS {
            position = 0.0;
        }
        // The run containing `position`, snapping forward when a boundary is a hair away.
        let index = self
            .runs
            .partition_point(|run| run.start <= position + BOUNDARY_EPSILON_SECONDS)
            .saturating_sub(1);
        let (rate, end) = match self.runs.get(index) {
            Some(run) => (
                run.bytes_per_second,
                self.runs.get(index + 1).map_or(SECONDS_PER_WEEK, |next| next.start),
            ),
            None => (first.bytes_per_second, SECONDS_PER_WEEK),
        };
        (rate, t + (end - position).max(BOUNDARY_EPSILON_SECONDS))
    }
}

/// Seconds since Monday 00:00 of `when`'s week.
fn week_position(when: NaiveDateTime) -> f64 {
    let day = f64::from(when.weekday().num_days_from_monday());
    // A leap second's nanoseconds reach past 1e9: count it as the end of its second.
    let fraction = f64::from(when.nanosecond().min(999_999_999)) / 1e9;
    day * 86_400.0 + f64::from(when.num_seconds_from_midnight()) + fraction
}

/// How long sending `wire_bytes` takes at `rates`, starting at the wall-clock moment `start`:
/// the walk goes run by run through the week (skipping whole weeks at once), so a schedule's
/// windows, holds and weekends count exactly. `None` if the rates never send anything (a
/// schedule that holds all week).
pub fn mirror_seconds(wire_bytes: f64, rates: &RateModel, start: NaiveDateTime) -> Option<f64> {
    if wire_bytes.is_nan() || wire_bytes <= 0.0 {
        return Some(0.0);
    }
    let weekly = rates.bytes_per_week();
    if weekly <= 0.0 {
        return None;
    }
    let origin = week_position(start);
    let mut remaining = wire_bytes;
    let mut t = 0.0;
    if weekly.is_finite() {
        // Every whole week carries `weekly` whatever its phase; leave one to two weeks to walk
        // so the end, which depends on the phase, is found run by run.
        let whole_weeks = (remaining / weekly).floor() - 1.0;
        if whole_weeks >= 1.0 {
            t = whole_weeks * SECONDS_PER_WEEK;
            remaining -= whole_weeks * weekly;
        }
    }
    // At most two weeks of runs are left: a bound keeps a rounding surprise from looping.
    for _ in 0..4 * rates.runs.len() + 8 {
        let (rate, next_change) = rates.segment(origin, t);
        if rate > 0.0 {
            let capacity = rate * (next_change - t);
            if remaining <= capacity {
                return Some(t + remaining / rate);
            }
            remaining -= capacity;
        }
        t = next_change;
    }
    None
}

/// How the forecast treats compression for a level (see [`estimate_compression`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompressionBasis {
    /// The level the recording ran with: the measured ratio.
    Recorded,
    /// No compression: frames go out as encoded (exact).
    Uncompressed,
    /// Another level than recorded: the recorded savings scaled by the levels' typical
    /// savings (an estimate).
    ScaledFromRecorded,
    /// The recording was uncompressed, so nothing is known about how the data compresses:
    /// the level's typical ratio (a rough estimate).
    Typical,
}

/// The compression ratio a forecast assumes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CompressionEstimate {
    /// The level forecast.
    pub level: CompressionLevel,
    /// How the ratio was found.
    pub basis: CompressionBasis,
    /// Compressed frame bytes per encoded frame byte at the recorded level (1 uncompressed).
    pub recorded_ratio: f64,
    /// The same ratio at `level`.
    pub ratio: f64,
}

impl CompressionEstimate {
    /// What the recorded wire bytes are multiplied by to get wire bytes at `level`.
    pub fn wire_scale(&self) -> f64 {
        if self.recorded_ratio > 0.0 { self.ratio / self.recorded_ratio } else { 1.0 }
    }
}

/// Typical compressed/uncompressed ratios of zstd at the levels the job settings map to
/// (1, 3, 9) on a server's mix of files: a guess at the *absolute* ratio (about 40% saved),
/// with the levels' *relative* savings from zstd's published Silesia figures (level 3 saves
/// about 4% more than level 1, level 9 about 9% more). Used only for "what if" forecasts at a
/// level the recording did not run with.
fn typical_ratio(level: CompressionLevel) -> f64 {
    match level {
        CompressionLevel::None => 1.0,
        CompressionLevel::Minimum => 0.60,
        CompressionLevel::Medium => 0.58,
        CompressionLevel::Maximum => 0.56,
    }
}

/// The compression ratio a recording shows: compressed wire bytes per encoded frame byte,
/// where encoded frames are `data_bytes × framing_overhead`. 1 for an uncompressed recording
/// (by definition: anything else is framing noise) and for one without data.
pub fn recorded_ratio(
    level: CompressionLevel,
    data_bytes: u64,
    wire_bytes: u64,
    framing_overhead: f64,
) -> f64 {
    if level == CompressionLevel::None || data_bytes == 0 {
        return 1.0;
    }
    let encoded = as_f64(data_bytes) * framing_overhead.max(1.0);
    // A frame goes out compressed only when that makes it smaller: never above 1.
    (as_f64(wire_bytes) / encoded).clamp(0.0, 1.0)
}

/// The ratio to forecast `level` with, from a recording at `recorded_level` that showed
/// `recorded_ratio`.
///
/// Assumptions: the same level gives the same ratio; no compression gives exactly 1 (the
/// frames as encoded); another level keeps the data's compressibility and scales the
/// *savings* (1 − ratio) by the levels' typical savings, so incompressible data stays
/// incompressible at every level; from an uncompressed recording, only the level's typical
/// ratio is known. The CPU cost of a higher level (which may slow the source) is not
/// modelled.
pub fn estimate_compression(
    recorded_level: CompressionLevel,
    recorded_ratio: f64,
    level: CompressionLevel,
) -> CompressionEstimate {
    let recorded_ratio =
        if recorded_level == CompressionLevel::None { 1.0 } else { recorded_ratio.clamp(0.0, 1.0) };
    let (basis, ratio) = if level == recorded_level {
        (CompressionBasis::Recorded, recorded_ratio)
    } else if level == CompressionLevel::None {
        (CompressionBasis::Uncompressed, 1.0)
    } else if recorded_level == CompressionLevel::None {
        (CompressionBasis::Typical, typical_ratio(level))
    } else {
        let savings = (1.0 - recorded_ratio) * (1.0 - typical_ratio(level))
            / (1.0 - typical_ratio(recorded_level));
        (CompressionBasis::ScaledFromRecorded, (1.0 - savings).clamp(0.0, 1.0))
    };
    CompressionEstimate { level, basis, recorded_ratio, ratio }
}

/// One interval's change rate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChangeRatePoint {
    /// Start of the interval, seconds after the recording started.
    pub at_secs: f64,
    /// Its length.
    pub seconds: f64,
    /// File data read for the changes, per second.
    pub read_bytes_per_second: f64,
    /// Wire bytes per second (after compression, at the forecast's level).
    pub wire_bytes_per_second: f64,
    /// Operations per second, after coalescing.
    pub operations_per_second: f64,
}

/// Peak, mean and percentiles of a rate over a recording (percentiles weighted by time, so
/// intervals of different lengths count for their length).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RateSummary {
    /// The highest interval.
    pub peak: f64,
    /// The time-weighted mean.
    pub mean: f64,
    /// Half the time the rate was at or below this.
    pub p50: f64,
    /// 90% of the time.
    pub p90: f64,
    /// 99% of the time.
    pub p99: f64,
}

impl RateSummary {
    /// Summarises `(rate, seconds)` samples.
    pub fn of(samples: &[(f64, f64)]) -> Self {
        let mut sorted: Vec<(f64, f64)> = samples.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total: f64 = sorted.iter().map(|s| s.1).sum();
        let percentile = |p: f64| {
            // Nearest rank by time: the first rate at which `p` of the time is covered.
            let mut covered = 0.0;
            for (rate, seconds) in &sorted {
                covered += seconds;
                if covered >= p * total {
                    return *rate;
                }
            }
            sorted.last().map_or(0.0, |s| s.0)
        };
        let weighted: f64 = sorted.iter().map(|(rate, seconds)| rate * seconds).sum();
        RateSummary {
            peak: sorted.last().map_or(0.0, |s| s.0),
            mean: if total > 0.0 { weighted / total } else { 0.0 },
            p50: percentile(0.50),
            p90: percentile(0.90),
            p99: percentile(0.99),
        }
    }
}

/// The constant rate that keeps the recovery point under a target over the whole recording.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RpoRequirement {
    /// The recovery-point target.
    pub rpo_seconds: f64,
    /// The smallest constant rate, in wire bytes per second (what to set as a limit).
    pub bytes_per_second: f64,
    /// The same in bits per second.
    pub bits_per_second: f64,
    /// The link that carries it, network headers included ([`LINK_PAYLOAD_EFFICIENCY`]).
    pub link_bits_per_second: f64,
}

/// The projected queue at one interval's end.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct QueuePoint {
    /// End of the interval, seconds after the recording started.
    pub at_secs: f64,
    /// The source queue, in queue bytes (operations before compression, as the source
    /// queue holds and reports them).
    pub queue_bytes: f64,
    /// The same queue in wire bytes (what it takes on the link).
    pub queue_wire_bytes: f64,
    /// The average send rate over the interval, in wire bytes per second.
    pub send_rate_bytes_per_second: f64,
}

/// What replaying the recording at the job's limit gives.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LimitProjection {
    /// The queue's high-water mark, in queue bytes.
    pub queue_high_water_bytes: f64,
    /// The same in wire bytes.
    pub queue_high_water_wire_bytes: f64,
    /// The worst recovery point (age of the oldest unsent change); `None` if the queue
    /// never drains.
    pub worst_recovery_point_seconds: Option<f64>,
    /// How long after the recording ends the queue left then is drained (0 if empty);
    /// `None` if never (within five weeks).
    pub drains_seconds_after_recording: Option<f64>,
}

/// What replicating a recorded churn needs, and what it does at the job's limit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplicationForecast {
    /// The compression the wire bytes assume.
    pub compression: CompressionEstimate,
    /// The longest interval: nothing shorter (a burst, a recovery point) is resolved.
    pub resolution_seconds: f64,
    /// From the start of the first interval to the end of the last.
    pub recorded_seconds: f64,
    /// The change rate, interval by interval.
    pub change_rate: Vec<ChangeRatePoint>,
    /// Summary of the wire bytes per second.
    pub wire_rate: RateSummary,
    /// Summary of the file data read per second.
    pub read_rate: RateSummary,
    /// Summary of the operations per second.
    pub operations_rate: RateSummary,
    /// The bandwidth each recovery-point target needs.
    pub needed: Vec<RpoRequirement>,
    /// The job's limit the replay ran at, in words.
    pub limit_label: String,
    /// The replay at the job's limit.
    pub at_limit: LimitProjection,
    /// The projected queue at the job's limit, one point per interval (for the chart and
    /// the statistics file's queue column).
    pub projected_queue: Vec<QueuePoint>,
}

impl ReplicationForecast {
    /// Forecasts replication of `stats`'s recording at `compression` (which may differ from
    /// the recorded level: see [`estimate_compression`]): the change-rate series and its
    /// summaries, the smallest constant rate that keeps the recovery point under each of
    /// `rpo_targets_seconds` (bisection over the queue simulation, to 0.01%), and the replay
    /// at `at_limit`. `None` without intervals.
    pub fn from_stats(
        stats: &Stats,
        compression: CompressionLevel,
        at_limit: &RateModel,
        rpo_targets_seconds: &[f64],
    ) -> Option<Self> {
        let read: u64 = stats.intervals.iter().map(|i| i.bytes_read).sum();
        let wire: u64 = stats.intervals.iter().map(|i| i.bytes_compressed).sum();
        let recorded = recorded_ratio(stats.compression, read, wire, stats.framing_overhead);
        let estimate = estimate_compression(stats.compression, recorded, compression);
        let curve = Curve::from_stats(stats, &estimate);
        let (first, last) = (curve.intervals.first()?, curve.intervals.last()?);
        let (first_start, last_end) = (first.start, last.end);
        let origin = week_position(stats.started_at.naive_local());

        let change_rate: Vec<ChangeRatePoint> = curve
            .intervals
            .iter()
            .zip(&stats.intervals)
            .map(|(span, interval)| {
                let seconds = span.end - span.start;
                ChangeRatePoint {
                    at_secs: span.start,
                    seconds,
                    read_bytes_per_second: as_f64(interval.bytes_read) / seconds,
                    wire_bytes_per_second: span.wire / seconds,
                    operations_per_second: as_f64(interval.operations) / seconds,
                }
            })
            .collect();
        let summary = |rate: fn(&ChangeRatePoint) -> f64| {
            let samples: Vec<(f64, f64)> =
                change_rate.iter().map(|p| (rate(p), p.seconds)).collect();
            RateSummary::of(&samples)
        };
        let wire_rate = summary(|p| p.wire_bytes_per_second);

        let needed = rpo_targets_seconds
            .iter()
            .map(|&rpo_seconds| {
                let bytes_per_second = needed_rate(&curve, origin, rpo_seconds, wire_rate.peak);
                RpoRequirement {
                    rpo_seconds,
                    bytes_per_second,
                    bits_per_second: bytes_per_second * 8.0,
                    link_bits_per_second: bytes_per_second * 8.0 / LINK_PAYLOAD_EFFICIENCY,
                }
            })
            .collect();
        let replay = simulate(&curve, at_limit, origin, true);
        Some(ReplicationForecast {
            compression: estimate,
            resolution_seconds: change_rate.iter().map(|p| p.seconds).fold(0.0, f64::max),
            recorded_seconds: last_end - first_start,
            wire_rate,
            read_rate: summary(|p| p.read_bytes_per_second),
            operations_rate: summary(|p| p.operations_per_second),
            change_rate,
            needed,
            limit_label: at_limit.label().to_string(),
            at_limit: LimitProjection {
                queue_high_water_bytes: replay.high_water_queued,
                queue_high_water_wire_bytes: replay.high_water_wire,
                worst_recovery_point_seconds: replay.drained.then_some(replay.worst_age),
                drains_seconds_after_recording: replay
                    .drained
                    .then(|| (replay.drained_at - last_end).max(0.0)),
            },
            projected_queue: replay.series,
        })
    }
}

/// What the tests of the queue simulation need from here.
#[cfg(test)]
pub(super) mod tests_support {
    use super::Stats;

    /// The week position of a recording's start.
    pub(in crate::tdu) fn week_position(stats: &Stats) -> f64 {
        super::week_position(stats.started_at.naive_local())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, NaiveDate};
    use understudy_core::spec::{BandwidthWindow, Days};

    use super::*;
    use crate::tdu::stats::{Interval, MirrorTotals};

    const MB: f64 = 1e6;

    /// A recording starting at `started_at`, in intervals of `interval` seconds for
    /// `duration` seconds, whose churn at `t` seconds is `rate(t)` bytes per second
    /// (uncompressed, so wire bytes are data bytes).
    fn recording(
        started_at: &str,
        interval: f64,
        duration: f64,
        rate: impl Fn(f64) -> f64,
    ) -> Stats {
        let mut intervals = Vec::new();
        let mut at = 0.0;
        while at < duration - 1e-9 {
            let bytes = round_bytes(rate(at) * interval);
            intervals.push(Interval {
                at_secs: at,
                seconds: interval,
                bytes_read: bytes,
                bytes_compressed: bytes,
                operations: 10,
                queue_bytes: 0,
                send_rate_bytes_per_second: 0.0,
            });
            at += interval;
        }
        Stats {
            started_at: DateTime::parse_from_rfc3339(started_at).unwrap(),
            compression: CompressionLevel::None,
            limit: BandwidthLimit::Unlimited,
            framing_overhead: 1.0,
            mirror: MirrorTotals {
                files: 1,
                folders: 1,
                bytes: 1,
                bytes_compressed: 1,
                seconds: 1.0,
                skipped_files: 0,
            },
            intervals,
        }
    }

    fn round_bytes(bytes: f64) -> u64 {
        crate::tdu::stats::round_to_u64(bytes)
    }

    fn close(actual: f64, expected: f64, tolerance: f64) -> bool {
        (actual - expected).abs() <= tolerance * expected.abs().max(1e-9)
    }

    fn forecast(stats: &Stats, rates: &RateModel) -> ReplicationForecast {
        ReplicationForecast::from_stats(
            stats,
            stats.compression,
            rates,
            &DEFAULT_RPO_TARGETS_SECONDS,
        )
        .unwrap()
    }

    fn local(y: i32, m: u32, d: u32, h: u32, min: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(h, min, 0).unwrap()
    }

    fn window(days: Days, start: u16, end: u16, bytes_per_second: u64) -> BandwidthWindow {
        BandwidthWindow { days, start_minute: start, end_minute: end, bytes_per_second }
    }

    #[test]
    fn a_churn_below_the_limit_never_queues() {
        let stats = recording("2026-03-02T09:00:00+01:00", 10.0, 3600.0, |_| MB);
        let result = forecast(&stats, &RateModel::constant(2.0 * MB));
        let projection = result.at_limit;
        assert!(projection.queue_high_water_wire_bytes < 1.0, "{projection:?}");
        assert!(projection.queue_high_water_bytes < 1.0, "{projection:?}");
        let rpo = projection.worst_recovery_point_seconds.unwrap();
        assert!(rpo <= result.resolution_seconds, "{rpo}");
        assert_eq!(projection.drains_seconds_after_recording, Some(0.0));
        assert_eq!(result.projected_queue.len(), 360);
        for point in &result.projected_queue {
            assert!(point.queue_bytes < 1.0);
            assert!(close(point.send_rate_bytes_per_second, MB, 1e-9), "{point:?}");
        }
        assert!(close(result.wire_rate.peak, MB, 1e-12));
        assert!(close(result.wire_rate.p50, MB, 1e-12));
        assert!(close(result.operations_rate.mean, 1.0, 1e-12));
        // Below the churn nothing keeps up for an hour, so every target needs close to it.
        for need in &result.needed {
            assert!(need.bytes_per_second <= MB * 1.0001, "{need:?}");
            assert!(need.bytes_per_second > 0.7 * MB, "{need:?}");
        }
    }

    /// 1 MB/s, then 10 MB/s for ten minutes from minute 10, then 1 MB/s to minute 50.
    fn burst() -> Stats {
        recording("2026-03-02T09:00:00+01:00", 10.0, 3000.0, |t| {
            if (600.0..1200.0).contains(&t) { 10.0 * MB } else { MB }
        })
    }

    #[test]
    fn a_burst_over_the_limit_queues_its_excess() {
        let result = forecast(&burst(), &RateModel::constant(5.0 * MB));
        let projection = result.at_limit;
        // The excess: (10 − 5) MB/s for 600 s.
        let excess = 5.0 * MB * 600.0;
        assert!(close(projection.queue_high_water_wire_bytes, excess, 0.01), "{projection:?}");
        assert!(close(projection.queue_high_water_bytes, excess, 0.01), "{projection:?}");
        // The last burst byte (arrived at 1200 s) goes once all 6000 MB are sent, at
        // 600 + 6000 / 5 = 1800 s: 600 s old. Burst bytes ahead of it are younger.
        let rpo = projection.worst_recovery_point_seconds.unwrap();
        assert!(close(rpo, 600.0, 1e-6), "{rpo}");
        // The queue peaks at the burst's end (interval ending at 1200 s) and drains at
        // 5 − 1 = 4 MB/s: empty 750 s later, inside the recording.
        let at_burst_end = result.projected_queue.iter().find(|p| p.at_secs == 1200.0).unwrap();
        assert!(close(at_burst_end.queue_wire_bytes, excess, 1e-9));
        assert!(close(at_burst_end.send_rate_bytes_per_second, 5.0 * MB, 1e-9));
        let drained = result.projected_queue.iter().find(|p| p.at_secs == 1960.0).unwrap();
        assert!(drained.queue_wire_bytes < 1.0, "{drained:?}");
        assert_eq!(projection.drains_seconds_after_recording, Some(0.0));
    }

    #[test]
    fn the_bandwidth_for_a_recovery_point_matches_the_hand_calculation() {
        // At a constant rate r between the baseline and the burst, the last burst byte (the
        // oldest unsent one at that moment) goes when the burst's a·D bytes are sent:
        // RPO = a·D / r − D, so r = a·D / (D + RPO).
        let result = forecast(&burst(), &RateModel::constant(5.0 * MB));
        let (a, d) = (10.0 * MB, 600.0);
        for need in &result.needed {
            let expected = a * d / (d + need.rpo_seconds);
            assert!(
                close(need.bytes_per_second, expected, 2e-4),
                "RPO {}: {} vs {expected}",
                need.rpo_seconds,
                need.bytes_per_second
            );
            assert!(close(need.bits_per_second, expected * 8.0, 2e-4));
            assert!(close(need.link_bits_per_second, expected * 8.0 / 0.94, 2e-4));
        }
        // Replaying at the answer does keep the target.
        let rpo_60 = result.needed[0].bytes_per_second;
        let replay = forecast(&burst(), &RateModel::constant(rpo_60));
        assert!(replay.at_limit.worst_recovery_point_seconds.unwrap() <= 60.0);
    }

    #[test]
    fn an_hour_held_by_the_schedule_queues_exactly_that_hours_churn() {
        // Every day 10:00–11:00 holds transmission; otherwise 5 MB/s. The recording runs
        // 09:00–12:00 at its own wall clock (+01:00) at a steady 1 MB/s.
        let limit = BandwidthLimit::Schedule { windows: vec![window(Days::EveryDay, 600, 660, 0)] };
        let stats = recording("2026-03-04T09:00:00+01:00", 60.0, 3.0 * 3600.0, |_| MB);
        let rates = RateModel::limited(&limit, 5.0 * MB);
        let result = forecast(&stats, &rates);
        let at_eleven = result.projected_queue.iter().find(|p| p.at_secs == 7200.0).unwrap();
        assert!(close(at_eleven.queue_wire_bytes, 3600.0 * MB, 1e-9), "{at_eleven:?}");
        let at_ten = result.projected_queue.iter().find(|p| p.at_secs == 3600.0).unwrap();
        assert!(at_ten.queue_wire_bytes < 1.0, "{at_ten:?}");
        assert!(close(result.at_limit.queue_high_water_wire_bytes, 3600.0 * MB, 1e-9));
        // The byte from 10:00 waits until 11:00; later ones drain faster than they came.
        let rpo = result.at_limit.worst_recovery_point_seconds.unwrap();
        assert!(close(rpo, 3600.0, 1e-6), "{rpo}");
        // 3600 MB drain at 5 − 1 = 4 MB/s: 15 minutes after 11:00, inside the recording.
        let drained = result.projected_queue.iter().find(|p| p.at_secs == 7200.0 + 900.0).unwrap();
        assert!(drained.queue_wire_bytes < 1.0, "{drained:?}");
        assert!(result.limit_label.contains("held"), "{}", result.limit_label);
    }

    #[test]
    fn a_queue_that_can_never_drain_has_no_recovery_point() {
        let stats = recording("2026-03-02T09:00:00+01:00", 10.0, 100.0, |_| MB);
        let result = forecast(&stats, &RateModel::constant(0.0));
        assert_eq!(result.at_limit.worst_recovery_point_seconds, None);
        assert_eq!(result.at_limit.drains_seconds_after_recording, None);
        assert!(close(result.at_limit.queue_high_water_wire_bytes, 100.0 * MB, 1e-12));
    }

    #[test]
    fn a_queue_left_at_the_end_drains_after_the_recording() {
        // 2 MB/s for 100 s at 1 MB/s: 100 MB left, drained 100 s after the end; the last
        // byte, which came at 100 s, goes at 200 s.
        let stats = recording("2026-03-02T09:00:00+01:00", 10.0, 100.0, |_| 2.0 * MB);
        let result = forecast(&stats, &RateModel::constant(MB));
        let projection = result.at_limit;
        assert!(close(projection.drains_seconds_after_recording.unwrap(), 100.0, 1e-9));
        assert!(close(projection.worst_recovery_point_seconds.unwrap(), 100.0, 1e-9));
    }

    #[test]
    fn gaps_in_a_recording_bring_nothing() {
        let mut stats = recording("2026-03-02T09:00:00+01:00", 10.0, 20.0, |_| 2.0 * MB);
        stats.intervals[1].at_secs = 110.0; // 100 s unrecorded between the two
        let result = forecast(&stats, &RateModel::constant(MB));
        // First interval: 20 MB at 1 MB/s → 10 MB left at 10 s, drained by 20 s. The gap
        // brings nothing, so the second interval starts with an empty queue.
        assert!(close(result.at_limit.queue_high_water_wire_bytes, 10.0 * MB, 1e-9));
        assert!(close(result.at_limit.worst_recovery_point_seconds.unwrap(), 10.0, 1e-9));
        assert!(close(result.recorded_seconds, 120.0, 1e-12));
    }

    #[test]
    fn the_queue_is_reported_in_uncompressed_bytes_too() {
        // Recorded at medium, halving what goes on the wire: the source queue holds twice
        // the wire bytes it will take to send.
        let mut stats = burst();
        stats.compression = CompressionLevel::Medium;
        stats.framing_overhead = 1.0;
        for interval in &mut stats.intervals {
            interval.bytes_compressed /= 2;
        }
        let result = forecast(&stats, &RateModel::constant(2.5 * MB));
        let projection = result.at_limit;
        assert!(close(projection.queue_high_water_wire_bytes, 2.5 * MB * 600.0, 1e-6));
        assert!(close(projection.queue_high_water_bytes, 5.0 * MB * 600.0, 1e-6));
        assert!(close(result.compression.recorded_ratio, 0.5, 1e-9));

        // "What if uncompressed": twice the wire bytes, so twice the bandwidth.
        let what_if = ReplicationForecast::from_stats(
            &stats,
            CompressionLevel::None,
            &RateModel::constant(5.0 * MB),
            &[60.0],
        )
        .unwrap();
        assert_eq!(what_if.compression.basis, CompressionBasis::Uncompressed);
        assert!(close(
            what_if.needed[0].bytes_per_second,
            2.0 * result.needed[0].bytes_per_second,
            1e-3
        ));
        assert!(close(
            what_if.at_limit.queue_high_water_bytes,
            projection.queue_high_water_bytes,
            1e-6
        ));
    }

    #[test]
    fn a_mirror_across_a_weekend_follows_the_schedule() {
        // 1 MB/s 08:00–18:00 on weekdays; unlimited otherwise, which is the 10 MB/s link.
        let limit = BandwidthLimit::Schedule {
            windows: vec![window(Days::Weekdays, 8 * 60, 18 * 60, 1_000_000)],
        };
        let rates = RateModel::limited(&limit, 10.0 * MB);
        let friday_4pm = local(2026, 3, 6, 16, 0);
        // Friday 16:00–18:00 at 1 MB/s, Friday 18:00 – Monday 08:00 (62 h) at 10 MB/s,
        // then one Monday hour at 1 MB/s: 65 hours.
        let bytes = 2.0 * 3600.0 * MB + 62.0 * 3600.0 * 10.0 * MB + 3600.0 * MB;
        let seconds = mirror_seconds(bytes, &rates, friday_4pm).unwrap();
        assert!(close(seconds, 65.0 * 3600.0, 1e-9), "{seconds}");
        // Ending inside the weekend: two hours at 1 MB/s then 30 hours at 10 MB/s.
        let bytes = 2.0 * 3600.0 * MB + 30.0 * 3600.0 * 10.0 * MB;
        let seconds = mirror_seconds(bytes, &rates, friday_4pm).unwrap();
        assert!(close(seconds, 32.0 * 3600.0, 1e-9), "{seconds}");
        // Starting on Saturday noon: 44 hours of 10 MB/s to Monday 08:00.
        let seconds = mirror_seconds(44.0 * 3600.0 * 10.0 * MB, &rates, local(2026, 3, 7, 12, 0));
        assert!(close(seconds.unwrap(), 44.0 * 3600.0, 1e-9));
    }

    /// The minute-by-minute reference: rates change only on whole minutes.
    fn mirror_seconds_by_minute(bytes: f64, rates: &RateModel, start: NaiveDateTime) -> f64 {
        let mut remaining = bytes;
        let mut t = 0.0;
        let mut when = start;
        // The first step runs to the next whole minute.
        let mut step = 60.0 - f64::from(start.second());
        loop {
            let rate = rates.rate_at(when);
            if rate * step >= remaining {
                return t + remaining / rate;
            }
            remaining -= rate * step;
            t += step;
            #[allow(clippy::cast_possible_truncation)]
            let whole = step as i64;
            when += chrono::Duration::seconds(whole);
            step = 60.0;
        }
    }

    #[test]
    fn the_window_walk_agrees_with_a_minute_by_minute_walk_over_weeks() {
        let limit = BandwidthLimit::Schedule {
            windows: vec![
                window(Days::Weekdays, 8 * 60, 18 * 60, 1_000_000),
                window(Days::EveryDay, 22 * 60, 6 * 60, 0),
                window(Days::Day(understudy_core::spec::DayOfWeek::Sat), 9 * 60 + 7, 13 * 60, 3500),
            ],
        };
        understudy_core::spec::validate_bandwidth(&limit).unwrap();
        let rates = RateModel::limited(&limit, 7.5 * MB);
        let weekly = rates.bytes_per_week();
        let starts = [
            local(2026, 3, 2, 0, 0),
            local(2026, 3, 6, 17, 59) + chrono::Duration::seconds(30),
            local(2026, 3, 7, 23, 0),
            local(2026, 3, 8, 5, 59),
        ];
        for start in starts {
            for bytes in [1.0, 5e8, 1e11, 0.999 * weekly, weekly, 2.5 * weekly + 12345.0] {
                let walked = mirror_seconds(bytes, &rates, start).unwrap();
                let reference = mirror_seconds_by_minute(bytes, &rates, start);
                assert!(close(walked, reference, 1e-9), "{start} {bytes}: {walked} vs {reference}");
            }
        }
        // Many weeks: skipped whole, same answer as walking them.
        let bytes = 40.0 * weekly + 1e9;
        let skipped = mirror_seconds(bytes, &rates, starts[1]).unwrap();
        assert!(close(skipped, mirror_seconds_by_minute(bytes, &rates, starts[1]), 1e-9));
    }

    #[test]
    fn fixed_limits_links_and_the_source_pace() {
        let start = local(2026, 3, 2, 9, 0);
        let limit = BandwidthLimit::Fixed { bytes_per_second: 20_000_000 };
        let job = RateModel::limited(&limit, f64::INFINITY);
        assert!(close(mirror_seconds(1e9, &job, start).unwrap(), 50.0, 1e-12));
        // A source that only manages 10 MB/s governs.
        let slow_source = RateModel::limited(&limit, 10.0 * MB);
        assert!(close(mirror_seconds(1e9, &slow_source, start).unwrap(), 100.0, 1e-12));
        // A 100 Mbit/s link carries 94% of 12.5 MB/s of frames.
        let link = RateModel::link(100e6);
        assert_eq!(link.label(), "100 Mbit/s link");
        assert!(close(mirror_seconds(1e9, &link, start).unwrap(), 1e9 / (12.5e6 * 0.94), 1e-12));
        assert!(close(mirror_seconds(1e9, &link.capped(5.0 * MB), start).unwrap(), 200.0, 1e-12));
        assert_eq!(mirror_seconds(0.0, &link, start), Some(0.0));
        assert_eq!(
            mirror_seconds(
                1e9,
                &RateModel::limited(&BandwidthLimit::Unlimited, f64::INFINITY),
                start
            ),
            Some(0.0)
        );
        assert_eq!(standard_links(), [10e6, 100e6, 1e9]);
    }

    #[test]
    fn a_schedule_that_always_holds_never_finishes() {
        let limit = BandwidthLimit::Schedule { windows: vec![window(Days::EveryDay, 0, 1440, 0)] };
        let rates = RateModel::limited(&limit, 10.0 * MB);
        assert_eq!(rates.bytes_per_week(), 0.0);
        assert_eq!(mirror_seconds(1.0, &rates, local(2026, 3, 2, 9, 0)), None);
    }

    #[test]
    fn rates_follow_the_wall_clock() {
        let limit = BandwidthLimit::Schedule {
            windows: vec![window(Days::Weekdays, 8 * 60, 18 * 60, 1_000_000)],
        };
        let rates = RateModel::limited(&limit, 10.0 * MB);
        assert_eq!(rates.rate_at(local(2026, 3, 2, 8, 0)), MB);
        assert_eq!(rates.rate_at(local(2026, 3, 2, 7, 59)), 10.0 * MB);
        assert_eq!(rates.rate_at(local(2026, 3, 7, 12, 0)), 10.0 * MB);
        assert_eq!(rates.rate_range(), (MB, 10.0 * MB));
        assert!(!rates.is_constant());
        assert!(RateModel::constant(5.0).is_constant());
    }

    #[test]
    fn compression_estimates_keep_what_was_measured() {
        use CompressionLevel::{Maximum, Medium, Minimum, None};
        let same = estimate_compression(Medium, 0.4, Medium);
        assert_eq!(
            (same.basis, same.ratio, same.wire_scale()),
            (CompressionBasis::Recorded, 0.4, 1.0)
        );
        let off = estimate_compression(Medium, 0.4, None);
        assert_eq!((off.basis, off.ratio), (CompressionBasis::Uncompressed, 1.0));
        assert!(close(off.wire_scale(), 2.5, 1e-12));
        let guessed = estimate_compression(None, 0.97, Maximum);
        assert_eq!(guessed.basis, CompressionBasis::Typical);
        assert_eq!(guessed.recorded_ratio, 1.0);
        let scaled = estimate_compression(Minimum, 0.4, Maximum);
        assert_eq!(scaled.basis, CompressionBasis::ScaledFromRecorded);
        assert!(scaled.ratio < 0.4 && scaled.ratio > 0.3, "{scaled:?}");
        // Incompressible data stays incompressible at every level.
        assert_eq!(estimate_compression(Minimum, 1.0, Maximum).ratio, 1.0);
        // The recorded ratio undoes framing and never exceeds 1.
        assert!(close(recorded_ratio(Medium, 1000, 505, 1.01), 0.5, 1e-12));
        assert_eq!(recorded_ratio(Medium, 1000, 2000, 1.01), 1.0);
        assert_eq!(recorded_ratio(None, 1000, 1010, 1.01), 1.0);
        assert_eq!(recorded_ratio(Medium, 0, 10, 1.01), 1.0);
    }

    #[test]
    fn percentiles_are_weighted_by_time() {
        // 90 s at 1, 9 s at 10, 1 s at 100.
        let summary = RateSummary::of(&[(10.0, 9.0), (1.0, 90.0), (100.0, 1.0)]);
        assert_eq!(summary.peak, 100.0);
        assert_eq!(summary.p50, 1.0);
        assert_eq!(summary.p90, 1.0);
        assert_eq!(summary.p99, 10.0);
        assert!(close(summary.mean, (90.0 + 90.0 + 100.0) / 100.0, 1e-12));
        let empty = RateSummary::of(&[]);
        assert_eq!((empty.peak, empty.mean, empty.p99), (0.0, 0.0, 0.0));
    }

    #[test]
    fn no_intervals_no_replication_forecast() {
        let mut stats = burst();
        stats.intervals.clear();
        assert!(
            ReplicationForecast::from_stats(
                &stats,
                stats.compression,
                &RateModel::constant(1.0),
                &[60.0]
            )
            .is_none()
        );
    }
}
