//! The queue simulation behind [`super::forecast::ReplicationForecast`]: a fluid first-in,
//! first-out queue fed by a recording and drained by a [`RateModel`].
//!
//! Arrivals are the cumulative wire bytes of the recording, piecewise linear (each
//! interval's churn spread evenly over it). Between two moments where either the arrival rate
//! or the sending rate changes, everything is linear, so the simulation steps from one such
//! moment to the next, exactly, with no time step to choose.
//!
//! The recovery point at a moment is the age of the oldest unsent byte: the time since the
//! arrivals reached the position the sender has got to. That age is piecewise linear too;
//! it bends only where the rates change or where the sent position passes an arrival
//! point, so looking at exactly those moments finds its maximum exactly.

use super::forecast::{CompressionEstimate, QueuePoint, RateModel, as_f64};
use super::stats::Stats;

/// How long after the end of a recording a projected queue may take to drain before the
/// forecast calls it "never" (five weeks: past any weekly schedule's longest hold).
const MAX_DRAIN_SECONDS: f64 = 5.0 * super::forecast::SECONDS_PER_WEEK;

/// Intervals shorter than this count as this long (a zero-length interval would be an
/// infinite arrival rate).
const MIN_INTERVAL_SECONDS: f64 = 1e-3;

/// The smallest constant rate whose replay keeps the recovery point at or under
/// `rpo_seconds`: bisection, since a faster link never makes the oldest unsent byte older.
/// At the peak interval rate nothing ever queues, so the answer is at most `peak`.
pub(super) fn needed_rate(curve: &Curve, origin: f64, rpo_seconds: f64, peak: f64) -> f64 {
    if peak <= 0.0 || !peak.is_finite() {
        return 0.0;
    }
    let meets = |rate: f64| {
        let replay = simulate(curve, &RateModel::constant(rate), origin, false);
        replay.drained && replay.worst_age <= rpo_seconds
    };
    let (mut low, mut high) = (0.0, peak);
    for _ in 0..64 {
        if high - low <= high * 1e-4 {
            break;
        }
        let middle = (low + high) / 2.0;
        if meets(middle) {
            high = middle;
        } else {
            low = middle;
        }
    }
    // Whole bytes per second, rounded up so the answer still meets the target.
    high.ceil()
}

/// Cumulative arrivals: what had arrived by each point, piecewise linear between points.
/// Each interval's churn is spread evenly over it (the recording cannot see finer).
pub(super) struct Curve {
    points: Vec<CurvePoint>,
    /// The intervals as laid out on the curve (start clamped to the previous end).
    pub(super) intervals: Vec<Span>,
}

#[derive(Clone, Copy, Debug)]
struct CurvePoint {
    /// Seconds after the recording started.
    t: f64,
    /// Wire bytes arrived by `t`.
    wire: f64,
    /// Queue bytes arrived by `t`.
    queued: f64,
    /// Whether an interval ends here (gaps between intervals also make points).
    ends_interval: bool,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Span {
    /// Seconds after the recording started.
    pub(super) start: f64,
    /// Seconds after the recording started.
    pub(super) end: f64,
    /// Wire bytes that arrived over it.
    pub(super) wire: f64,
}

impl Curve {
    pub(super) fn from_stats(stats: &Stats, estimate: &CompressionEstimate) -> Self {
        let wire_scale = estimate.wire_scale();
        // The queue holds operations before compression: the recorded wire bytes undone by
        // the recorded ratio (whatever level is forecast, the queue holds the same).
        let queued_scale =
            if estimate.recorded_ratio > 0.0 { 1.0 / estimate.recorded_ratio } else { 1.0 };
        let start = stats.intervals.first().map_or(0.0, |i| i.at_secs);
        let mut points =
            vec![CurvePoint { t: start, wire: 0.0, queued: 0.0, ends_interval: false }];
        let mut intervals = Vec::with_capacity(stats.intervals.len());
        let (mut wire, mut queued, mut end) = (0.0, 0.0, start);
        for interval in &stats.intervals {
            let begin = interval.at_secs.max(end);
            if begin > end {
                // A gap: nothing recorded, so nothing arrives.
                points.push(CurvePoint { t: begin, wire, queued, ends_interval: false });
            }
            let recorded = as_f64(interval.bytes_compressed);
            wire += recorded * wire_scale;
            queued += recorded * queued_scale;
            end = begin + interval.seconds.max(MIN_INTERVAL_SECONDS);
            points.push(CurvePoint { t: end, wire, queued, ends_interval: true });
            intervals.push(Span { start: begin, end, wire: recorded * wire_scale });
        }
        Curve { points, intervals }
    }

    /// When the wire byte at position `x` arrived, approached from below: the first moment
    /// the arrivals reached `x`.
    fn arrived_by(&self, x: f64) -> f64 {
        let i = self.points.partition_point(|p| p.wire < x);
        self.interpolate_time(i, x)
    }

    /// When the first byte *after* position `x` arrived: the arrival of the oldest unsent
    /// byte once `x` bytes are sent.
    fn arrived_after(&self, x: f64) -> f64 {
        let i = self.points.partition_point(|p| p.wire <= x);
        self.interpolate_time(i, x)
    }

    /// The time at wire position `x` on the segment ending at point `i`.
    fn interpolate_time(&self, i: usize, x: f64) -> f64 {
        match (i.checked_sub(1).and_then(|b| self.points.get(b)), self.points.get(i)) {
            (Some(before), Some(after)) if after.wire > before.wire => {
                before.t + (x - before.wire) / (after.wire - before.wire) * (after.t - before.t)
            }
            (_, Some(after)) => after.t,
            (Some(before), None) => before.t,
            (None, None) => 0.0,
        }
    }

    /// Queue bytes arrived by the time wire position `x` arrived.
    fn queued_at_wire(&self, x: f64) -> f64 {
        let i = self.points.partition_point(|p| p.wire < x);
        match (i.checked_sub(1).and_then(|b| self.points.get(b)), self.points.get(i)) {
            (Some(before), Some(after)) if after.wire > before.wire => {
                before.queued
                    + (x - before.wire) / (after.wire - before.wire)
                        * (after.queued - before.queued)
            }
            (_, Some(after)) => after.queued,
            (Some(before), None) => before.queued,
            (None, None) => 0.0,
        }
    }
}

/// The arrivals over one stretch of the curve: linear from `(t0, wire0, queued0)`.
#[derive(Clone, Copy, Debug)]
struct Arrivals {
    t0: f64,
    wire0: f64,
    queued0: f64,
    wire_rate: f64,
    queued_rate: f64,
}

impl Arrivals {
    fn between(a: CurvePoint, b: CurvePoint) -> Self {
        let seconds = b.t - a.t;
        let rate = |from: f64, to: f64| if seconds > 0.0 { (to - from) / seconds } else { 0.0 };
        Arrivals {
            t0: a.t,
            wire0: a.wire,
            queued0: a.queued,
            wire_rate: rate(a.wire, b.wire),
            queued_rate: rate(a.queued, b.queued),
        }
    }

    fn none_after(p: CurvePoint) -> Self {
        Arrivals { t0: p.t, wire0: p.wire, queued0: p.queued, wire_rate: 0.0, queued_rate: 0.0 }
    }

    fn wire_at(&self, t: f64) -> f64 {
        self.wire0 + self.wire_rate * (t - self.t0)
    }

    fn queued_at(&self, t: f64) -> f64 {
        self.queued0 + self.queued_rate * (t - self.t0)
    }
}

/// What a replay found.
pub(super) struct Replay {
    /// The queue's high-water mark in wire bytes.
    pub(super) high_water_wire: f64,
    /// The same in queue bytes.
    pub(super) high_water_queued: f64,
    /// The oldest any unsent byte got (meaningful only if `drained`).
    pub(super) worst_age: f64,
    /// Whether the queue emptied after the recording (within [`MAX_DRAIN_SECONDS`]).
    pub(super) drained: bool,
    /// When it last emptied.
    pub(super) drained_at: f64,
    /// The queue at each interval's end, if asked for.
    pub(super) series: Vec<QueuePoint>,
}

/// A fluid FIFO queue: bytes arrive along the curve and leave, oldest first, at the rate in
/// force whenever any are queued.
struct Queue<'a> {
    curve: &'a Curve,
    /// Wire bytes sent so far.
    sent: f64,
    high_water_wire: f64,
    high_water_queued: f64,
    worst_age: f64,
    drained_at: f64,
}

/// Which side of a flat stretch of arrivals a sent position is looked up from.
#[derive(Clone, Copy)]
enum Side {
    /// While sending: bytes just below the position were unsent a moment ago.
    Sending,
    /// While held: the position stays, and the oldest unsent byte is the next one.
    Held,
}

impl Queue<'_> {
    /// Moves from `ta` to `tb` with constant arrivals and a constant `rate`.
    fn advance(&mut self, arrivals: &Arrivals, ta: f64, tb: f64, rate: f64) {
        let arrived = arrivals.wire_at(ta);
        let mut queued = arrived - self.sent;
        // Rounding leaves dust after a drain; dust is an empty queue.
        if queued <= arrived.abs() * 1e-12 + 1e-9 {
            self.sent = arrived;
            queued = 0.0;
        }
        if queued == 0.0 && arrivals.wire_rate <= rate {
            self.sent = arrivals.wire_at(tb); // everything goes as it comes
            return;
        }
        if queued > 0.0 && rate > arrivals.wire_rate {
            let drained = ta + queued / (rate - arrivals.wire_rate);
            if drained < tb {
                self.send(arrivals, ta, drained, rate);
                self.drained_at = drained;
                self.sent = arrivals.wire_at(tb);
                return;
            }
        }
        self.send(arrivals, ta, tb, rate);
        if tb > ta && self.sent >= arrivals.wire_at(tb) {
            self.drained_at = tb;
        }
    }

    /// Sends at `rate` from `ta` to `tb`, with bytes queued all along.
    fn send(&mut self, arrivals: &Arrivals, ta: f64, tb: f64, rate: f64) {
        let from = self.sent;
        let to = (from + rate * (tb - ta)).min(arrivals.wire_at(tb));
        if rate > 0.0 {
            // The age of the oldest unsent byte bends where the sent position passes an
            // arrival point: look there too, so the maximum is exact.
            let mut i = self.curve.points.partition_point(|p| p.wire <= from);
            while let Some(point) = self.curve.points.get(i).filter(|p| p.wire < to) {
                self.observe(arrivals, ta + (point.wire - from) / rate, point.wire, Side::Sending);
                i += 1;
            }
        }
        self.sent = to;
        self.observe(arrivals, tb, to, if rate > 0.0 { Side::Sending } else { Side::Held });
    }

    /// Records the queue and the recovery point at `t`, with `sent` wire bytes sent.
    fn observe(&mut self, arrivals: &Arrivals, t: f64, sent: f64, side: Side) {
        let queue_wire = (arrivals.wire_at(t) - sent).max(0.0);
        let queue_queued = (arrivals.queued_at(t) - self.curve.queued_at_wire(sent)).max(0.0);
        let oldest_arrived = match side {
            Side::Sending => self.curve.arrived_by(sent),
            Side::Held => self.curve.arrived_after(sent),
        };
        self.high_water_wire = self.high_water_wire.max(queue_wire);
        self.high_water_queued = self.high_water_queued.max(queue_queued);
        self.worst_age = self.worst_age.max(t - oldest_arrived);
    }
}

/// Replays the curve at `rates`, with the recording's start at week position `origin`.
pub(super) fn simulate(
    curve: &Curve,
    rates: &RateModel,
    origin: f64,
    record_series: bool,
) -> Replay {
    let mut queue = Queue {
        curve,
        sent: 0.0,
        high_water_wire: 0.0,
        high_water_queued: 0.0,
        worst_age: 0.0,
        drained_at: 0.0,
    };
    let mut series = Vec::new();
    let Some(&first) = curve.points.first() else {
        return Replay {
            high_water_wire: 0.0,
            high_water_queued: 0.0,
            worst_age: 0.0,
            drained: true,
            drained_at: 0.0,
            series,
        };
    };
    let mut t = first.t;
    let mut last = first;
    for &point in &curve.points[1..] {
        let arrivals = Arrivals::between(last, point);
        let sent_at_start = queue.sent;
        while t < point.t {
            let (rate, change) = rates.segment(origin, t);
            let end = change.min(point.t);
            queue.advance(&arrivals, t, end, rate);
            t = end;
        }
        if record_series && point.ends_interval {
            let seconds = point.t - last.t;
            series.push(QueuePoint {
                at_secs: point.t,
                queue_bytes: (point.queued - curve.queued_at_wire(queue.sent)).max(0.0),
                queue_wire_bytes: (point.wire - queue.sent).max(0.0),
                send_rate_bytes_per_second: if seconds > 0.0 {
                    (queue.sent - sent_at_start) / seconds
                } else {
                    0.0
                },
            });
        }
        last = point;
    }
    // After the recording no more changes are assumed: the queue left drains at the rates
    // in force, and its oldest byte keeps ageing until it goes.
    let arrivals = Arrivals::none_after(last);
    let give_up = t + MAX_DRAIN_SECONDS;
    let carries_anything = rates.bytes_per_week() > 0.0;
    while carries_anything && last.wire - queue.sent > last.wire.abs() * 1e-12 + 1e-9 && t < give_up
    {
        let (rate, change) = rates.segment(origin, t);
        let end = change.min(give_up);
        queue.advance(&arrivals, t, end, rate);
        t = end;
    }
    let drained = last.wire - queue.sent <= last.wire.abs() * 1e-12 + 1e-9;
    Replay {
        high_water_wire: queue.high_water_wire,
        high_water_queued: queue.high_water_queued,
        worst_age: queue.worst_age,
        drained,
        drained_at: if drained { queue.drained_at.max(last.t) } else { f64::INFINITY },
        series,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use chrono::DateTime;
    use understudy_core::spec::{
        BandwidthLimit, BandwidthWindow, CompressionLevel, DayOfWeek, Days,
    };

    use super::super::forecast::ReplicationForecast;
    use super::super::stats::{Interval, MirrorTotals};
    use super::*;

    /// A reference FIFO in small time steps: each step's arrivals are one chunk stamped with
    /// the step's middle, and the rate in force at the step's start sends from the front.
    /// Returns (high-water mark, worst age) in wire bytes and seconds.
    fn brute_force(stats: &Stats, rates: &RateModel, step: f64) -> (f64, f64) {
        let origin = super::super::forecast::tests_support::week_position(stats);
        let end = stats.intervals.last().map_or(0.0, |i| i.at_secs + i.seconds);
        let mut chunks: VecDeque<(f64, f64)> = VecDeque::new(); // (arrived at, bytes)
        let (mut high_water, mut worst_age, mut t) = (0.0_f64, 0.0_f64, 0.0);
        while t < end + 3.0 * 86_400.0 {
            let arriving: f64 = stats
                .intervals
                .iter()
                .find(|i| i.at_secs <= t && t < i.at_secs + i.seconds)
                .map_or(0.0, |i| as_f64(i.bytes_compressed) / i.seconds * step);
            if arriving > 0.0 {
                chunks.push_back((t + step / 2.0, arriving));
            }
            let (rate, _) = rates.segment(origin, t);
            let mut budget = rate * step;
            while let Some(front) = chunks.front_mut() {
                if front.1 > budget {
                    front.1 -= budget;
                    break;
                }
                budget -= front.1;
                chunks.pop_front();
            }
            t += step;
            high_water = high_water.max(chunks.iter().map(|c| c.1).sum());
            if let Some(front) = chunks.front() {
                worst_age = worst_age.max(t - front.0);
            }
            if t > end && chunks.is_empty() {
                break;
            }
        }
        (high_water, worst_age)
    }

    #[test]
    fn the_exact_queue_agrees_with_a_small_step_simulation() {
        // Four hours from Saturday 07:00 of pseudo-random churn with two unrecorded gaps,
        // under a schedule that holds 08:00–08:45, allows 20 kB/s 09:00–10:00, and is
        // otherwise the 40 kB/s link: the churn (up to 33 kB/s) queues for long stretches.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut intervals = Vec::new();
        let mut at = 0.0;
        while at < 4.0 * 3600.0 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let bytes = (seed % 2_000) * 1_000 * u64::from(!seed.is_multiple_of(5));
            intervals.push(Interval {
                at_secs: at,
                seconds: 60.0,
                bytes_read: bytes,
                bytes_compressed: bytes,
                operations: 1,
                queue_bytes: 0,
                send_rate_bytes_per_second: 0.0,
            });
            at += if seed.is_multiple_of(17) { 300.0 } else { 60.0 };
        }
        let stats = Stats {
            started_at: DateTime::parse_from_rfc3339("2026-03-07T07:00:00-05:00").unwrap(),
            compression: CompressionLevel::None,
            limit: BandwidthLimit::Unlimited,
            framing_overhead: 1.0,
            mirror: MirrorTotals {
                files: 0,
                folders: 0,
                bytes: 0,
                bytes_compressed: 0,
                seconds: 0.0,
                skipped_files: 0,
            },
            intervals,
        };
        let day = Days::Day(DayOfWeek::Sat);
        let limit = BandwidthLimit::Schedule {
            windows: vec![
                BandwidthWindow {
                    days: day,
                    start_minute: 480,
                    end_minute: 525,
                    bytes_per_second: 0,
                },
                BandwidthWindow {
                    days: day,
                    start_minute: 540,
                    end_minute: 600,
                    bytes_per_second: 20_000,
                },
            ],
        };
        let schedule = RateModel::limited(&limit, 40_000.0);
        // A constant rate just over the mean churn: the queue comes and goes all along.
        for rates in [&schedule, &RateModel::constant(14_000.0)] {
            let exact = ReplicationForecast::from_stats(&stats, CompressionLevel::None, rates, &[])
                .unwrap()
                .at_limit;
            let (high_water, worst_age) = brute_force(&stats, rates, 0.25);
            // A step moves at most 0.25 s of the fastest rates; ages are off by a step.
            let byte_slack = 40_000.0 * 0.25 + 2_000_000.0 / 60.0 * 0.25;
            assert!(
                (exact.queue_high_water_wire_bytes - high_water).abs() <= byte_slack,
                "{}: {} vs {high_water}",
                rates.label(),
                exact.queue_high_water_wire_bytes
            );
            let age = exact.worst_recovery_point_seconds.unwrap();
            assert!((age - worst_age).abs() <= 0.5, "{}: {age} vs {worst_age}", rates.label());
            assert!(high_water > 1e6 && age > 60.0, "{}: a queue to compare", rates.label());
        }
        let age = ReplicationForecast::from_stats(&stats, CompressionLevel::None, &schedule, &[])
            .unwrap()
            .at_limit
            .worst_recovery_point_seconds
            .unwrap();
        assert!(age >= 45.0 * 60.0, "the hold alone ages the oldest byte 45 minutes: {age}");
    }
}
