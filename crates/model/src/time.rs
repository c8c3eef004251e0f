//! Wall-clock instants and ban lengths.
//!
//! Decisions outlive processes and travel between hosts, so they carry
//! absolute wall-clock times ([`Timestamp`], milliseconds since the Unix
//! epoch). Lengths the operator types (`90s`, `10m`, `1h`, `2d`, `forever`)
//! are a [`Span`].

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// 1970-01-01T00:00:00Z, the earliest timestamp.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// 9999-12-31T23:59:59.999Z, the latest time RFC 3339 can write (four
    /// digits of year); later ones (a ban that saturated at the end of
    /// time) are written as this one.
    pub const RFC3339_MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// The current wall-clock time (the epoch if the clock is before 1970).
    pub fn now() -> Timestamp {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(since.as_millis().min(u64::MAX as u128) as u64)
    }

    /// The instant `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The instant `d` later, saturating at the end of time rather than
    /// wrapping.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(u64::MAX as u128) as u64),
        )
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// The same instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// RFC 3339 in UTC with second precision, e.g. `2026-11-21T10:00:00Z`.
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_seconds(self.min(Self::RFC3339_MAX).to_system_time()).to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(&humantime::format_rfc3339_millis(
                (*self).min(Self::RFC3339_MAX).to_system_time(),
            ))
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            let t = humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)?;
            let ms = t
                .duration_since(UNIX_EPOCH)
                .map_err(|_| serde::de::Error::custom("time before 1970"))?
                .as_millis();
            Ok(Timestamp(ms as u64))
        } else {
            Ok(Timestamp(u64::deserialize(d)?))
        }
    }
}

/// How long a decision lasts: a length of time, or forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Span {
    /// For this long.
    For(Duration),
    /// Until removed.
    Forever,
}

/// Why a string is not a valid [`Span`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a duration: use a number with a unit (s, m, h, d, w), such as 90s, 10m, 1h, 2d or 1h30m, or \"forever\""
)]
pub struct SpanError {
    /// The text that could not be parsed.
    pub input: String,
}

impl Span {
    /// The expiry of something that starts at `from` and lasts this long.
    pub fn expiry_from(self, from: Timestamp) -> Option<Timestamp> {
        match self {
            Span::For(d) => Some(from.saturating_add(d)),
            Span::Forever => None,
        }
    }

    /// The length, or `None` for [`Span::Forever`].
    pub fn duration(self) -> Option<Duration> {
        match self {
            Span::For(d) => Some(d),
            Span::Forever => None,
        }
    }
}

impl FromStr for Span {
    type Err = SpanError;

    /// Accepts `forever` (also `never`, `permanent`) and one or more
    /// number+unit pairs: `s`, `m`, `h`, `d`, `w` (`90s`, `1h30m`). A bare
    /// number is rejected: `60` could mean seconds or minutes.
    fn from_str(input: &str) -> Result<Span, SpanError> {
        let err = || SpanError {
            input: input.to_string(),
        };
        let s = input.trim();
        if matches!(
            s.to_ascii_lowercase().as_str(),
            "forever" | "never" | "permanent"
        ) {
            return Ok(Span::Forever);
        }
        let mut total: u64 = 0;
        let mut rest = s;
        if rest.is_empty() {
            return Err(err());
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = match &rest[..unit_len] {
                "s" | "sec" | "secs" | "second" | "seconds" => 1,
                "m" | "min" | "mins" | "minute" | "minutes" => 60,
                "h" | "hour" | "hours" => 3600,
                "d" | "day" | "days" => 86_400,
                "w" | "week" | "weeks" => 604_800,
                _ => return Err(err()),
            };
            rest = &rest[unit_len..];
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(err)?;
        }
        if total == 0 {
            return Err(err());
        }
        Ok(Span::For(Duration::from_secs(total)))
    }
}

impl fmt::Display for Span {
    /// The shortest exact form: `90s` -> `1m30s`, `86400s` -> `1d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Span::Forever => f.write_str("forever"),
            Span::For(d) => f.write_str(&compact_duration(*d)),
        }
    }
}

impl serde::Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `3725s` -> `1h2m5s`; sub-second parts are dropped.
pub fn compact_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return if d.is_zero() {
            "0s".into()
        } else {
            "<1s".into()
        };
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

/// `in 59m` / `3m ago`, for showing a time relative to now.
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    if t >= now {
        format!("in {}", compact_duration(t.since(now)))
    } else {
        format!("{} ago", compact_duration(now.since(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(s: &str) -> Span {
        s.parse().unwrap()
    }

    #[test]
    fn parses_operator_durations() {
        assert_eq!(span("90s"), Span::For(Duration::from_secs(90)));
        assert_eq!(span("10m"), Span::For(Duration::from_secs(600)));
        assert_eq!(span("1h"), Span::For(Duration::from_secs(3600)));
        assert_eq!(span("2d"), Span::For(Duration::from_secs(172_800)));
        assert_eq!(span("1w"), Span::For(Duration::from_secs(604_800)));
        assert_eq!(span("1h30m"), Span::For(Duration::from_secs(5400)));
        assert_eq!(span("forever"), Span::Forever);
        assert_eq!(span("Forever"), Span::Forever);
    }

    #[test]
    fn rejects_ambiguous_or_broken_durations() {
        for bad in [
            "",
            "60",
            "1x",
            "h",
            "1.5h",
            "-1h",
            "0s",
            "1h 30m",
            "99999999999999999999d",
        ] {
            assert!(bad.parse::<Span>().is_err(), "{bad:?} should be rejected");
        }
        let msg = "60".parse::<Span>().unwrap_err().to_string();
        assert!(msg.contains("90s, 10m, 1h, 2d"), "{msg}");
    }

    #[test]
    fn displays_compactly() {
        assert_eq!(span("90s").to_string(), "1m30s");
        assert_eq!(span("86400s").to_string(), "1d");
        assert_eq!(span("forever").to_string(), "forever");
        assert_eq!(compact_duration(Duration::from_millis(300)), "<1s");
    }

    #[test]
    fn timestamps_serialize_as_rfc3339_in_json() {
        let t = Timestamp::from_millis(1_790_000_000_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-09-21T14:13:20.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        let bin = postcard::to_stdvec(&t).unwrap();
        assert_eq!(postcard::from_bytes::<Timestamp>(&bin).unwrap(), t);
        assert_eq!(t.rfc3339(), "2026-09-21T14:13:20Z");
        // Past year 9999 (a time that saturated): the latest writable time,
        // not a panic (humantime cannot write a fifth digit of year).
        let end = Timestamp::from_millis(u64::MAX);
        assert_eq!(end.rfc3339(), "9999-12-31T23:59:59Z");
        assert_eq!(end.to_string(), "9999-12-31T23:59:59Z");
        assert_eq!(
            serde_json::to_string(&end).unwrap(),
            "\"9999-12-31T23:59:59.999Z\""
        );
    }

    #[test]
    fn relative_times() {
        let now = Timestamp::from_millis(1_000_000);
        assert_eq!(relative(Timestamp::from_millis(1_060_000), now), "in 1m");
        assert_eq!(relative(Timestamp::from_millis(940_000), now), "1m ago");
    }
}
