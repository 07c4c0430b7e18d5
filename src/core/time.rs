//! Time as a value. The core never reads a clock: callers pass `Timestamp`s in.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Nanoseconds since the Unix epoch, UTC. Fits any RFC 3339 time between years 1678
/// and 2262, which covers every game backend that will ever feed us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const MIN: Timestamp = Timestamp(i64::MIN);
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// Parses RFC 3339 strictly (`T` separator, explicit offset or `Z`). Returns a
    /// human-readable reason on failure.
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
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

    #[test]
    fn rejects_non_rfc3339() {
        for s in ["2026-11-27", "yesterday", "2026-11-27T08:00:00", "", "2026-13-01T00:00:00Z"] {
            assert!(Timestamp::parse_rfc3339(s).is_err(), "{s}");
        }
    }
}
