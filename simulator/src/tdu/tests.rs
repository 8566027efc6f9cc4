//! The TDU end to end: statistics in, report, JSON, text, chart and statistics file out.

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use understudy_core::spec::{BandwidthLimit, BandwidthWindow, CompressionLevel, Days};

use super::forecast::CompressionBasis;
use super::report::render_text;
use super::stats::{Interval, MirrorTotals, Stats, read_csv, write_csv};
use super::{Scenario, analyse, chart};

const MB: u64 = 1_000_000;

/// A 10 GB mirror that took 100 s unthrottled at medium compression (half the data on the
/// wire, framing included), and an hour of churn: 1 MB/s with a 10-minute burst of 10 MB/s.
fn recorded() -> Stats {
    let intervals = (0..360u32)
        .map(|i| {
            let at = f64::from(i) * 10.0;
            let data = if (600.0..1200.0).contains(&at) { 100 * MB } else { 10 * MB };
            Interval {
                at_secs: at,
                seconds: 10.0,
                bytes_read: data,
                bytes_compressed: data / 2,
                operations: 250,
                queue_bytes: 0,
                send_rate_bytes_per_second: 0.0,
            }
        })
        .collect();
    Stats {
        started_at: DateTime::parse_from_rfc3339("2026-03-02T09:00:00+01:00").unwrap(),
        compression: CompressionLevel::Medium,
        limit: BandwidthLimit::Fixed { bytes_per_second: 20 * MB },
        framing_overhead: 1.0,
        mirror: MirrorTotals {
            files: 12_345,
            folders: 678,
            bytes: 10_000 * MB,
            bytes_compressed: 5_000 * MB,
            seconds: 100.0,
            skipped_files: 0,
        },
        intervals,
    }
}

fn monday_9am() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 3, 2).unwrap().and_hms_opt(9, 0, 0).unwrap()
}

#[test]
fn the_report_forecasts_the_standard_links_and_the_jobs_limit() {
    let stats = recorded();
    let analysis = analyse(&stats, &Scenario::recorded(&stats, monday_9am()));
    let report = &analysis.report;
    assert_eq!(report.mirror.files, 12_345);
    assert_eq!(report.mirror.compression_ratio, 0.5);
    assert_eq!(report.mirror.read_bytes_per_second, 100e6);
    assert_eq!(report.mirror.send_bytes_per_second, 50e6);

    let seconds: Vec<(String, Option<f64>, Option<f64>)> = report
        .forecasts
        .iter()
        .map(|f| (f.label.clone(), f.link_bits_per_second, f.mirror_seconds))
        .collect();
    // 5 GB on the wire: over 10 Mbit/s (1.175 MB/s of frames) 4255 s; over 100 Mbit/s
    // 425.5 s; over 1 Gbit/s the source's 100 s; at the 20 MB/s limit 250 s.
    let expected = [
        ("10 Mbit/s link", Some(10e6), 5e9 / (10e6 / 8.0 * 0.94)),
        ("100 Mbit/s link", Some(100e6), 5e9 / (100e6 / 8.0 * 0.94)),
        ("1 Gbit/s link", Some(1e9), 100.0),
        ("job limit: 20.0 MB/s", Some(160e6), 250.0),
    ];
    assert_eq!(seconds.len(), expected.len());
    for ((label, bits, got), (want_label, want_bits, want_seconds)) in seconds.iter().zip(expected)
    {
        assert_eq!((label.as_str(), *bits), (want_label, want_bits));
        let got = got.unwrap();
        assert!((got - want_seconds).abs() < 1e-6 * want_seconds, "{label}: {got}");
    }

    let replication = report.replication.as_ref().unwrap();
    assert_eq!(replication.intervals, 360);
    assert_eq!(replication.limit, "20.0 MB/s");
    // 5 MB/s on the wire at peak, never over the 20 MB/s limit: nothing queues.
    assert_eq!(replication.wire_bytes_per_second.peak, 5e6);
    assert_eq!(replication.at_limit.queue_high_water_bytes, 0);
    assert_eq!(replication.needed.len(), 3);
    assert!(analysis.replication.is_some());
}

#[test]
fn the_json_report_has_the_documented_fields() {
    let stats = recorded();
    let report = analyse(&stats, &Scenario::recorded(&stats, monday_9am())).report;
    let json = serde_json::to_value(&report).unwrap();
    for field in ["files", "folders", "bytes", "bytes_compressed", "compression_ratio", "seconds"] {
        assert!(json["mirror"][field].is_number(), "mirror.{field}: {json}");
    }
    for field in ["read_bytes_per_second", "send_bytes_per_second"] {
        assert!(json["mirror"][field].is_number(), "mirror.{field}");
    }
    let forecasts = json["forecasts"].as_array().unwrap();
    assert_eq!(forecasts.len(), 4);
    for forecast in forecasts {
        assert!(forecast["label"].is_string());
        assert!(forecast["mirror_seconds"].is_number());
        assert!(forecast.get("link_bits_per_second").is_some());
    }
    let replication = &json["replication"];
    assert!(replication["needed"][0]["rpo_seconds"].is_number());
    assert!(replication["needed"][0]["bits_per_second"].is_number());
    assert!(replication["at_limit"]["queue_high_water_bytes"].is_u64());
    assert!(replication["at_limit"]["worst_recovery_point_seconds"].is_number());
    assert!(replication["wire_bytes_per_second"]["p99"].is_number());
    assert_eq!(json["scenario"]["compression"], "medium");

    // Without --watch there is no replication key at all.
    let mirror_only = Stats { intervals: Vec::new(), ..stats };
    let report = analyse(&mirror_only, &Scenario::recorded(&mirror_only, monday_9am())).report;
    let json = serde_json::to_value(&report).unwrap();
    assert!(json.get("replication").is_none());
}

#[test]
fn the_text_report_reads_as_sentences() {
    let stats = recorded();
    let text = render_text(&analyse(&stats, &Scenario::recorded(&stats, monday_9am())).report);
    for expected in [
        "12,345 files in 678 folders: 10.0 GB, 5.00 GB on the wire",
        "took 1 min 40 s: read 100 MB/s (800 Mbit/s), sent 50.0 MB/s (400 Mbit/s)",
        "10 Mbit/s link        1 h 11 min",
        "job limit: 20.0 MB/s  4 min 10 s",
        "change rate on the wire: peak 5.00 MB/s, p99 5.00 MB/s, p90 5.00 MB/s, p50 500 kB/s, mean 1.25 MB/s",
        "bandwidth needed to keep the recovery point under",
        "at the job's limit (20.0 MB/s):",
        "worst recovery point under 10 s (the recording's resolution)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn a_what_if_changes_the_limit_and_the_compression() {
    let stats = recorded();
    let schedule = BandwidthLimit::Schedule {
        windows: vec![BandwidthWindow {
            days: Days::Weekdays,
            start_minute: 8 * 60,
            end_minute: 18 * 60,
            bytes_per_second: 2 * MB,
        }],
    };
    let scenario = Scenario {
        compression: CompressionLevel::None,
        limit: schedule,
        ..Scenario::recorded(&stats, monday_9am())
    };
    let analysis = analyse(&stats, &scenario);
    let report = &analysis.report;
    assert_eq!(report.scenario.compression_basis, CompressionBasis::Uncompressed);
    assert_eq!(report.scenario.wire_bytes_per_data_byte, 1.0);
    // 10 GB uncompressed at 2 MB/s from Monday 09:00: 5000 s, all inside the window.
    let job = report.forecasts.last().unwrap();
    assert!(job.label.starts_with("job schedule: weekdays 08:00-18:00 at 2.00 MB/s"));
    assert_eq!(job.link_bits_per_second, None);
    assert!((job.mirror_seconds.unwrap() - 5000.0).abs() < 1e-6);
    // The burst's 10 MB/s uncompressed against 2 MB/s: 8 MB/s of excess for 600 s, plus
    // the 1 MB/s baseline's share... the queue is at least the burst's excess.
    let replication = report.replication.as_ref().unwrap();
    assert!(replication.at_limit.queue_high_water_bytes >= 8 * MB * 600);
    assert_eq!(replication.wire_bytes_per_second.peak, 10e6);
}

#[test]
fn a_statistics_file_replays_to_the_same_report() {
    let stats = recorded();
    let scenario = Scenario::recorded(&stats, monday_9am());
    let mut analysis = analyse(&stats, &scenario);
    let mut with_projection = stats.clone();
    with_projection.apply_projection(&analysis.replication.as_ref().unwrap().projected_queue);
    let mut file = Vec::new();
    write_csv(&with_projection, &mut file).unwrap();
    let read = read_csv(file.as_slice(), "stats.csv").unwrap();
    assert_eq!(read, with_projection);
    let mut replayed = analyse(&read, &scenario);
    // The projected columns are recomputed, never read: the reports are the same.
    analysis.replication = None;
    replayed.replication = None;
    assert_eq!(replayed, analysis);
}

#[test]
fn the_chart_is_well_formed_svg_with_both_series() {
    let mut stats = recorded();
    stats.limit = BandwidthLimit::Fixed { bytes_per_second: 4 * MB };
    let analysis = analyse(&stats, &Scenario::recorded(&stats, monday_9am()));
    let forecast = analysis.replication.unwrap();
    assert!(forecast.at_limit.queue_high_water_bytes > 0.0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tdu.svg");
    chart::write_svg(&stats, &forecast, &path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    let document = roxmltree::Document::parse(&svg).expect("well-formed XML");
    assert_eq!(document.root_element().tag_name().name(), "svg");
    let texts: Vec<&str> =
        document.descendants().filter(|n| n.is_text()).filter_map(|n| n.text()).collect();
    let has = |needle: &str| texts.iter().any(|t| t.contains(needle));
    assert!(has("Change rate and projected queue at 4.00 MB/s"), "{texts:?}");
    assert!(has("change rate on the wire (MB/s, left axis)"), "{texts:?}");
    assert!(has("projected queue at 4.00 MB/s (GB, right axis)"), "{texts:?}");
    assert!(has("time since the recording started (minutes)"), "{texts:?}");
    // Each series is a polyline with its own colour (the legend adds a short one each).
    let stroke = |colour: &str| {
        document
            .descendants()
            .filter(|n| n.tag_name().name() == "polyline")
            .filter(|n| n.attribute("stroke").is_some_and(|s| s.eq_ignore_ascii_case(colour)))
            .map(|n| n.attribute("points").unwrap_or_default().split_whitespace().count())
            .max()
            .unwrap_or(0)
    };
    assert!(stroke("#1F77B4") >= 720, "the change rate: two points per interval");
    assert!(stroke("#D62728") >= 360, "the queue: one point per interval");

    let unwritable = dir.path().join("no such folder").join("tdu.svg");
    let error = chart::write_svg(&stats, &forecast, &unwritable).unwrap_err().to_string();
    assert!(error.starts_with(&unwritable.display().to_string()), "{error}");
}
