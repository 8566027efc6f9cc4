//! The TDU's chart: the change rate on the wire (left axis) and the projected queue at the
//! job's limit (right axis) over the recording, as SVG a browser shows.
//!
//! The change rate is drawn as steps, one per interval, because the model spreads each
//! interval's churn evenly over it; the queue is drawn through its value at each interval's
//! end. Units are picked for the largest value (kB/s, MB/s, …) so the axes read plainly.

use std::io;
use std::path::Path;

use plotters::prelude::*;

use super::forecast::ReplicationForecast;
use super::stats::Stats;

/// The picture's size in pixels.
const SIZE: (u32, u32) = (1100, 620);
/// The change rate's colour (a blue) and the queue's (a red): apart for colour-blind eyes too.
const RATE_COLOUR: RGBColor = RGBColor(31, 119, 180);
const QUEUE_COLOUR: RGBColor = RGBColor(214, 39, 40);

/// Why the chart could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// Plotters refused to draw.
    #[error("drawing the chart: {0}")]
    Draw(String),
    /// The file could not be written.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// What the system said.
        source: io::Error,
    },
}

/// Draws the chart of `forecast` (made from `stats`) into the SVG file at `path`.
///
/// # Errors
///
/// Drawing failed, or the file could not be written.
pub fn write_svg(
    stats: &Stats,
    forecast: &ReplicationForecast,
    path: &Path,
) -> Result<(), ChartError> {
    let svg = render_svg(stats, forecast)?;
    std::fs::write(path, svg)
        .map_err(|source| ChartError::Io { file: path.display().to_string(), source })
}

/// The chart as an SVG document.
///
/// # Errors
///
/// Drawing failed.
pub fn render_svg(stats: &Stats, forecast: &ReplicationForecast) -> Result<String, ChartError> {
    let mut svg = String::new();
    draw(&mut svg, stats, forecast).map_err(|e| ChartError::Draw(e.to_string()))?;
    Ok(svg)
}

/// A unit to show values in: divide by `size`, append `name`.
struct Unit {
    size: f64,
    name: &'static str,
}

/// The decimal unit that keeps `largest` under 1000 of it.
fn unit_for(largest: f64, names: [&'static str; 4]) -> Unit {
    let mut size = 1.0;
    let mut index = 0;
    while largest / size >= 1000.0 && index + 1 < names.len() {
        size *= 1000.0;
        index += 1;
    }
    Unit { size, name: names.get(index).copied().unwrap_or_default() }
}

/// The time unit for a recording `span` seconds long: seconds, minutes or hours.
fn time_unit(span: f64) -> Unit {
    if span >= 3.0 * 3600.0 {
        Unit { size: 3600.0, name: "hours" }
    } else if span >= 3.0 * 60.0 {
        Unit { size: 60.0, name: "minutes" }
    } else {
        Unit { size: 1.0, name: "seconds" }
    }
}

/// A range for an axis whose largest value is `largest`: from 0, with a little headroom, and
/// never empty (plotters cannot map an empty range).
fn axis_top(largest: f64) -> f64 {
    if largest.is_finite() && largest > 0.0 { largest * 1.08 } else { 1.0 }
}

fn draw(
    svg: &mut String,
    stats: &Stats,
    forecast: &ReplicationForecast,
) -> Result<(), Box<dyn std::error::Error>> {
    let start = forecast.change_rate.first().map_or(0.0, |p| p.at_secs);
    let end = forecast.change_rate.last().map_or(start, |p| p.at_secs + p.seconds);
    let time = time_unit(end - start);
    let rate_unit = unit_for(forecast.wire_rate.peak, ["B/s", "kB/s", "MB/s", "GB/s"]);
    let largest_queue = forecast.projected_queue.iter().map(|p| p.queue_bytes).fold(0.0, f64::max);
    let queue_unit = unit_for(largest_queue, ["B", "kB", "MB", "GB"]);
    let x = |at_secs: f64| (at_secs - start) / time.size;

    // Steps: each interval's rate held from its start to its end.
    let rate_points: Vec<(f64, f64)> = forecast
        .change_rate
        .iter()
        .flat_map(|p| {
            let rate = p.wire_bytes_per_second / rate_unit.size;
            [(x(p.at_secs), rate), (x(p.at_secs + p.seconds), rate)]
        })
        .collect();
    let queue_points: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
        .chain(
            forecast
                .projected_queue
                .iter()
                .map(|p| (x(p.at_secs), p.queue_bytes / queue_unit.size)),
        )
        .collect();

    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "Change rate and projected queue at {} (recorded from {})",
        forecast.limit_label,
        stats.started_at.format("%Y-%m-%d %H:%M %:z")
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .right_y_label_area_size(80)
        .build_cartesian_2d(
            0.0..axis_top(x(end)),
            0.0..axis_top(forecast.wire_rate.peak / rate_unit.size),
        )?
        .set_secondary_coord(0.0..axis_top(x(end)), 0.0..axis_top(largest_queue / queue_unit.size));
    chart
        .configure_mesh()
        .x_desc(format!("time since the recording started ({})", time.name))
        .y_desc(format!("change rate on the wire ({})", rate_unit.name))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc(format!("projected queue ({})", queue_unit.name))
        .draw()?;
    chart
        .draw_series(LineSeries::new(rate_points, RATE_COLOUR.stroke_width(2)))?
        .label(format!("change rate on the wire ({}, left axis)", rate_unit.name))
        .legend(|(lx, ly)| {
            PathElement::new(vec![(lx, ly), (lx + 20, ly)], RATE_COLOUR.stroke_width(2))
        });
    chart
        .draw_secondary_series(LineSeries::new(queue_points, QUEUE_COLOUR.stroke_width(2)))?
        .label(format!(
            "projected queue at {} ({}, right axis)",
            forecast.limit_label, queue_unit.name
        ))
        .legend(|(lx, ly)| {
            PathElement::new(vec![(lx, ly), (lx + 20, ly)], QUEUE_COLOUR.stroke_width(2))
        });
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
