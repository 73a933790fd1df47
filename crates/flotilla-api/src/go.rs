//! Values as upstream's Go code writes them, where clients read or show the text.

use std::time::Duration;

/// A duration as Go's `time.Duration.String` writes it (`15.018s`, `500ms`, `1m0.5s`): the
/// metrics' `window`, a back-off's delay, an image pull's time in an Event.
pub fn duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (value, unit) = match nanos {
            n if n < 1_000 => return format!("{n}ns"),
            n if n < 1_000_000 => (n as f64 / 1e3, "µs"),
            n => (n as f64 / 1e6, "ms"),
        };
        return format!("{}{unit}", trimmed(value));
    }
    let seconds = nanos as f64 / 1e9;
    let (hours, rest) = ((nanos / 3_600_000_000_000), nanos % 3_600_000_000_000);
    let (minutes, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let seconds_part = trimmed(rest as f64 / 1e9);
    match (hours, minutes) {
        (0, 0) => format!("{}s", trimmed(seconds)),
        (0, m) => format!("{m}m{seconds_part}s"),
        (h, m) => format!("{h}h{m}m{seconds_part}s"),
    }
}

/// A number with no trailing zeros after its point, to nanosecond precision.
fn trimmed(value: f64) -> String {
    let text = format!("{value:.9}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_go_writes_them() {
        assert_eq!(duration(Duration::from_millis(15_018)), "15.018s");
        assert_eq!(duration(Duration::from_secs(15)), "15s");
        assert_eq!(duration(Duration::from_millis(500)), "500ms");
        assert_eq!(duration(Duration::from_millis(60_500)), "1m0.5s");
        assert_eq!(duration(Duration::from_secs(3_661)), "1h1m1s");
        assert_eq!(duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(duration(Duration::ZERO), "0s");
    }
}
