//! Converting the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.

/// Reads a clock in ns.
fn now_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC now, in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    now_ns(libc::CLOCK_MONOTONIC)
}

/// Maps a time base to Unix time in ns.
#[derive(Clone, Copy, Debug)]
pub enum TimeBase {
    /// Kernel records: CLOCK_MONOTONIC plus the offset measured at start.
    Monotonic { offset_ns: i128 },
    /// Replayed captures: timestamps are already Unix time.
    Unix,
}

impl TimeBase {
    /// The monotonic time base as of now.
    pub fn monotonic() -> Self {
        let mono = monotonic_ns() as i128;
        let real = now_ns(libc::CLOCK_REALTIME) as i128;
        Self::Monotonic {
            offset_ns: real - mono,
        }
    }
    /// Unix time in ns of a timestamp in this base.
    pub fn to_unix_ns(self, ts: u64) -> u64 {
        match self {
            Self::Monotonic { offset_ns } => (ts as i128 + offset_ns).max(0) as u64,
            Self::Unix => ts,
        }
    }
}

/// Parses a duration in humantime's grammar: `30s`, `500ms`, `2m`, `1h 30m`, `250us`. Two forms
/// that earlier versions read still load, so that existing configurations keep working: a bare
/// number is seconds, and a decimal with one unit (`1.5s`). At most 10^9 seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let d = match humantime::parse_duration(s) {
        Ok(d) => d,
        Err(e) => older_form(s).ok_or_else(|| {
            format!("{s:?} is not a duration ({e}; examples: 30s, 500ms, 2m, 1h 30m)")
        })?,
    };
    if d.as_secs_f64() > 1e9 {
        return Err(format!("duration {s:?} is out of range (at most 10^9 s)"));
    }
    Ok(d)
}

/// `7` (seconds) or `1.5s`: a decimal number and at most one unit.
fn older_form(s: &str) -> Option<std::time::Duration> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().ok()?;
    let unit = match unit.trim() {
        "" => "s",
        u => u,
    };
    let one = humantime::parse_duration(&format!("1{unit}")).ok()?;
    let secs = value * one.as_secs_f64();
    (secs.is_finite() && (0.0..=1e9).contains(&secs))
        .then(|| std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("100000y").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn monotonic_base_maps_now_to_about_now() {
        let base = TimeBase::monotonic();
        let unix = base.to_unix_ns(monotonic_ns());
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(unix.abs_diff(real) < 1_000_000_000, "{unix} vs {real}");
    }
}
