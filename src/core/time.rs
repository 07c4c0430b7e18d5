//! Time as a value. The core never reads a clock: callers pass `Timestamp`s in.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Nanoseconds since the Unix epoch, UTC. Fits any RFC 3339 time between years 1678
/// and 2262, which covers every game backend that will ever feed us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const MIN: Timestamp = Timestamp(i64::MIN);
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// Parses RFC 3339 (explicit offset or `Z` required; `T`, `t` or a space between
    /// date and time, as RFC 3339 permits). Returns a human-readable reason on failure.
    ///
    /// The common shape `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` takes a fast path
    /// (this runs on every event); anything else — and every error — goes through the
    /// `time` crate, which the property test holds the fast path equal to.
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
        if let Some(ts) = fast_rfc3339(s.as_bytes()) {
            return Ok(ts);
        }
        Self::parse_rfc3339_slow(s)
    }

    /// The reference parser (the `time` crate).
    pub fn parse_rfc3339_slow(s: &str) -> Result<Timestamp, String> {
        let dt = OffsetDateTime::parse(s, &Rfc3339)
            .map_err(|e| format!("`ts` is not an RFC 3339 timestamp ({e})"))?;
        let nanos = dt.unix_timestamp_nanos();
        i64::try_from(nanos)
            .map(Timestamp)
            .map_err(|_| "`ts` is outside the supported range (years 1678–2262)".to_string())
    }

    pub fn from_unix_millis(ms: i64) -> Timestamp {
        Timestamp(ms.saturating_mul(1_000_000))
    }

    pub fn unix_millis(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    pub fn saturating_add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_nanos(d)))
    }

    pub fn saturating_sub(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration_nanos(d)))
    }

    /// `self - earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        let d = self.0.saturating_sub(earlier.0);
        Duration::from_nanos(d.max(0) as u64)
    }

    pub fn to_rfc3339(self) -> String {
        match OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0))
            .ok()
            .and_then(|dt| dt.format(&Rfc3339).ok())
        {
            Some(s) => s,
            None => format!("@{}ns", self.0),
        }
    }

    /// The wall clock. Only adapters and CLI wiring call this; the core takes time as an
    /// argument.
    pub fn now() -> Timestamp {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        Timestamp(i64::try_from(nanos).unwrap_or(i64::MAX))
    }
}

/// The fast path of [`Timestamp::parse_rfc3339`]: `None` means "not this shape, ask the
/// reference parser" (never "invalid").
fn fast_rfc3339(b: &[u8]) -> Option<Timestamp> {
    fn digits(b: &[u8]) -> Option<i64> {
        let mut v = 0i64;
        for &c in b {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    }
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let n = end - start;
        if n == 0 || n > 9 {
            return None;
        }
        nanos = digits(&b[start..end])? * 10i64.pow((9 - n) as u32);
        i = end;
    }
    let offset_s = match &b[i..] {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2])?;
            let m = digits(&[*m1, *m2])?;
            if h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if *sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    // Days from 1970-01-01 of a proleptic Gregorian date (H. Hinnant, days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    secs.checked_mul(1_000_000_000)?
        .checked_add(nanos)
        .map(Timestamp)
}

fn duration_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    /// RFC 3339 in human-readable formats (JSON findings), plain nanoseconds in
    /// binary ones (engine snapshots).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_rfc3339())
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return i64::deserialize(d).map(Timestamp);
        }
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_instants_in_different_notation_are_equal() {
        let a = Timestamp::parse_rfc3339("2026-11-27T08:00:00.120Z").unwrap();
        let b = Timestamp::parse_rfc3339("2026-11-27T09:00:00.12+01:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_rfc3339(), "2026-11-27T08:00:00.12Z");
    }

    proptest::proptest! {
        #[test]
        fn the_fast_path_agrees_with_the_reference_parser(
            year in 1900i64..2200, month in 1i64..=12, day in 1i64..=31,
            hour in 0i64..24, minute in 0i64..60, second in 0i64..61,
            frac in proptest::option::of((1usize..=9, 0u32..1_000_000_000)),
            offset in proptest::option::of((proptest::bool::ANY, 0i64..24, 0i64..60)),
        ) {
            let mut s = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
            if let Some((n, f)) = frac {
                s.push('.');
                s.push_str(&format!("{f:09}")[..n]);
            }
            match offset {
                None => s.push('Z'),
                Some((neg, h, m)) => s.push_str(&format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })),
            }
            let slow = Timestamp::parse_rfc3339_slow(&s).ok();
            if let Some(fast) = fast_rfc3339(s.as_bytes()) {
                proptest::prop_assert_eq!(Some(fast), slow, "{}", s);
            }
            proptest::prop_assert_eq!(Timestamp::parse_rfc3339(&s).ok(), slow, "{}", s);
        }
    }

    #[test]
    fn rejects_non_rfc3339() {
        for s in [
            "2026-11-27",
            "yesterday",
            "2026-11-27T08:00:00",
            "",
            "2026-13-01T00:00:00Z",
        ] {
            assert!(Timestamp::parse_rfc3339(s).is_err(), "{s}");
        }
    }
}
