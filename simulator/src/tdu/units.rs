//! Numbers for people: sizes, rates and durations as the TDU prints them ("2 h 13 min",
//! "12.4 MB/s (99.2 Mbit/s)"). Units are decimal (1 MB = 10^6 bytes), as link speeds and the
//! command line's `--bandwidth 5MB` are; three significant digits, which is all a forecast
//! can claim.

use understudy_core::spec::BandwidthLimit;

use super::stats::format_window;

/// Rounds to three significant digits (so the unit is picked for the rounded value: 999.7 kB
/// is "1.00 MB", not "1000 kB").
fn three_significant(value: f64) -> f64 {
    if value == 0.0 || !value.is_finite() {
        return value;
    }
    let magnitude = value.abs().log10().floor();
    let factor = 10f64.powf(2.0 - magnitude);
    (value * factor).round() / factor
}

/// `value` in the largest of `units` (each 1000 times the last) that keeps it at 1 or more.
fn scaled(value: f64, units: &[&str]) -> String {
    if value.is_nan() {
        return format!("? {}", units.first().copied().unwrap_or_default());
    }
    if value.is_infinite() {
        return format!("unlimited {}", units.first().copied().unwrap_or_default());
    }
    let mut shown = three_significant(value.max(0.0));
    let mut unit_index = 0;
    while shown >= 1000.0 && unit_index + 1 < units.len() {
        shown = three_significant(shown / 1000.0);
        unit_index += 1;
    }
    let unit = units.get(unit_index).copied().unwrap_or_default();
    if unit_index == 0 && shown >= 1.0 {
        // Whole bytes and bits: "512 B", not "512.0 B".
        return format!("{shown:.0} {unit}");
    }
    let decimals = if shown >= 100.0 {
        0
    } else if shown >= 10.0 {
        1
    } else {
        2
    };
    format!("{shown:.decimals$} {unit}")
}

/// A size: "12.3 GB".
pub fn format_bytes(bytes: f64) -> String {
    scaled(bytes, &["B", "kB", "MB", "GB", "TB", "PB"])
}

/// A byte rate alone: "12.4 MB/s".
pub fn format_byte_rate(bytes_per_second: f64) -> String {
    scaled(bytes_per_second, &["B/s", "kB/s", "MB/s", "GB/s", "TB/s"])
}

/// A bit rate: "99.2 Mbit/s".
pub fn format_bits(bits_per_second: f64) -> String {
    scaled(bits_per_second, &["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"])
}

/// A link speed as links are named: "10 Mbit/s", "1 Gbit/s", "2.5 Gbit/s" (no trailing
/// zeros: a link's name is exact, not a measurement).
pub fn format_link(bits_per_second: f64) -> String {
    let shown = format_bits(bits_per_second);
    match shown.split_once(' ') {
        Some((number, unit)) if number.contains('.') => {
            format!("{} {unit}", number.trim_end_matches('0').trim_end_matches('.'))
        }
        _ => shown,
    }
}

/// A byte rate with its bit rate: "12.4 MB/s (99.2 Mbit/s)".
pub fn format_rate(bytes_per_second: f64) -> String {
    if bytes_per_second.is_infinite() {
        return "unlimited".to_string();
    }
    format!("{} ({})", format_byte_rate(bytes_per_second), format_bits(bytes_per_second * 8.0))
}

/// A count with thousands separated: "12,345".
pub fn format_count(count: u64) -> String {
    let digits = count.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// A duration in its two largest units: "45 s", "12 min 5 s", "2 h 13 min", "3 d 4 h";
/// "never" for infinity.
pub fn format_duration(seconds: f64) -> String {
    if seconds.is_nan() || seconds.is_infinite() {
        return "never".to_string();
    }
    if seconds <= 0.0 {
        return "0 s".to_string();
    }
    // The thresholds sit half a unit below the next unit so rounding never shows "60 s".
    if seconds < 9.95 {
        return format!("{seconds:.1} s");
    }
    let two_units = |total: u64, size: u64, big: &str, small: &str| {
        let (whole, rest) = (total / size, total % size);
        if rest == 0 { format!("{whole} {big}") } else { format!("{whole} {big} {rest} {small}") }
    };
    let rounded = |unit: f64| {
        // Durations this long are far below 2^53 units; negative was handled above.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let count = (seconds / unit).round() as u64;
        count
    };
    if seconds < 59.5 {
        format!("{} s", rounded(1.0))
    } else if seconds < 3599.5 {
        two_units(rounded(1.0), 60, "min", "s")
    } else if seconds < 86_370.0 {
        two_units(rounded(60.0), 60, "h", "min")
    } else {
        two_units(rounded(3600.0), 24, "d", "h")
    }
}

/// A bandwidth limit in words: "unlimited", "20.0 MB/s", "weekdays 08:00-18:00 at 1.00 MB/s,
/// sun 22:00-02:00 held; unlimited otherwise".
pub fn describe_limit(limit: &BandwidthLimit) -> String {
    match limit {
        BandwidthLimit::Unlimited => "unlimited".to_string(),
        BandwidthLimit::Fixed { bytes_per_second } => {
            #[allow(clippy::cast_precision_loss)] // limits are far below 2^53
            let rate = *bytes_per_second as f64;
            format_byte_rate(rate)
        }
        BandwidthLimit::Schedule { windows } => {
            let parts: Vec<String> = windows
                .iter()
                .map(|window| {
                    // "weekdays 08:00-18:00 1000000" → "weekdays 08:00-18:00 at 1.00 MB/s"
                    let written = format_window(window);
                    let when = written.rsplit_once(' ').map_or(written.as_str(), |(when, _)| when);
                    if window.bytes_per_second == 0 {
                        format!("{when} held")
                    } else {
                        #[allow(clippy::cast_precision_loss)]
                        let rate = window.bytes_per_second as f64;
                        format!("{when} at {}", format_byte_rate(rate))
                    }
                })
                .collect();
            format!("{}; unlimited otherwise", parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use understudy_core::spec::{BandwidthWindow, DayOfWeek, Days};

    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        let cases = [
            (0.0, "0 s"),
            (0.3, "0.3 s"),
            (9.9, "9.9 s"),
            (45.2, "45 s"),
            (59.6, "1 min"),
            (725.0, "12 min 5 s"),
            (3599.6, "1 h"),
            (2.0 * 3600.0 + 13.0 * 60.0 + 10.0, "2 h 13 min"),
            (86_369.0, "23 h 59 min"),
            (3.0 * 86_400.0 + 4.0 * 3600.0, "3 d 4 h"),
            (f64::INFINITY, "never"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(format_duration(seconds), expected, "{seconds}");
        }
    }

    #[test]
    fn rates_and_sizes_have_three_significant_digits() {
        assert_eq!(format_rate(12.4e6), "12.4 MB/s (99.2 Mbit/s)");
        assert_eq!(format_rate(1.25e6), "1.25 MB/s (10.0 Mbit/s)");
        assert_eq!(format_rate(999_700.0), "1.00 MB/s (8.00 Mbit/s)");
        assert_eq!(format_rate(3500.0), "3.50 kB/s (28.0 kbit/s)");
        assert_eq!(format_bytes(512.0), "512 B");
        assert_eq!(format_bytes(0.0), "0.00 B");
        assert_eq!(format_bytes(5e9), "5.00 GB");
        assert_eq!(format_bits(1e9), "1.00 Gbit/s");
        assert_eq!(format_link(1e9), "1 Gbit/s");
        assert_eq!(format_link(10e6), "10 Mbit/s");
        assert_eq!(format_link(2.5e9), "2.5 Gbit/s");
        assert_eq!(format_count(1_234_567), "1,234,567");
        assert_eq!(format_count(999), "999");
    }

    #[test]
    fn limits_are_described_in_words() {
        assert_eq!(describe_limit(&BandwidthLimit::Unlimited), "unlimited");
        assert_eq!(
            describe_limit(&BandwidthLimit::Fixed { bytes_per_second: 20_000_000 }),
            "20.0 MB/s"
        );
        let schedule = BandwidthLimit::Schedule {
            windows: vec![
                BandwidthWindow {
                    days: Days::Weekdays,
                    start_minute: 480,
                    end_minute: 1080,
                    bytes_per_second: 1_000_000,
                },
                BandwidthWindow {
                    days: Days::Day(DayOfWeek::Sun),
                    start_minute: 1320,
                    end_minute: 120,
                    bytes_per_second: 0,
                },
            ],
        };
        assert_eq!(
            describe_limit(&schedule),
            "weekdays 08:00-18:00 at 1.00 MB/s, sun 22:00-02:00 held; unlimited otherwise"
        );
    }
}
