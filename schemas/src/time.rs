//! Points in time as Nomad's API writes them.
//!
//! Nomad uses two forms. Fields declared `int64` in Go (`CreateTime`, `ModifyTime`, a task
//! event's `Time`) are Unix nanoseconds, and Caravan keeps them as plain `i64`. Fields declared
//! `time.Time` (`StartedAt`, `FinishedAt`, `RequireProgressBy`, `WaitUntil`, …) JSON-encode as
//! RFC 3339 strings with up to nine fractional digits; [`Timestamp`] is that form. Go's zero
//! time, `"0001-01-01T00:00:00Z"`, means "not set" and is what an unset [`Timestamp`] writes.

use crate::duration::Duration;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

const NANOS_PER_SEC: i128 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// Go's zero `time.Time` as its JSON encoder writes it.
pub const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A Go `time.Time` on the wire: an RFC 3339 string in UTC with nanoseconds
/// (`"2024-05-01T12:00:00.123456789Z"`); unset is Go's zero time.
///
/// Internally Unix nanoseconds (so instants between 1678 and 2262), or nothing for the zero
/// time. Unset sorts before every set instant, as Go's zero time does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(Option<i64>);

/// Why a timestamp string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("invalid timestamp {0:?}: expected RFC 3339 such as \"2024-05-01T12:00:00Z\"")]
    Invalid(String),
    #[error("timestamp {0:?} is out of range (years 1678 to 2262)")]
    OutOfRange(String),
}

impl Timestamp {
    /// Go's zero time: not set.
    pub const ZERO: Timestamp = Timestamp(None);

    /// The instant `nanos` nanoseconds after the Unix epoch.
    pub const fn from_unix_nanos(nanos: i64) -> Self {
        Timestamp(Some(nanos))
    }

    /// The current time, from the system clock.
    pub fn now() -> Self {
        let nanos = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
        };
        Timestamp(Some(nanos))
    }

    /// Unix nanoseconds, or `None` for the zero time.
    pub const fn unix_nanos(self) -> Option<i64> {
        self.0
    }

    /// True for Go's zero time (not set).
    pub const fn is_zero(self) -> bool {
        self.0.is_none()
    }

    /// This instant moved by `d` (saturating); the zero time stays zero. Also `t + d`.
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.map(|n| n.saturating_add(d.nanos())))
    }

    /// How long after `earlier` this instant is; `None` when either is the zero time.
    pub fn since(self, earlier: Timestamp) -> Option<Duration> {
        Some(Duration(self.0?.saturating_sub(earlier.0?)))
    }

    /// Parses RFC 3339 (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.5+02:00`). An empty string
    /// and Go's zero time parse to [`Timestamp::ZERO`].
    pub fn parse(input: &str) -> Result<Self, TimeError> {
        let s = input.trim();
        if s.is_empty() {
            return Ok(Timestamp::ZERO);
        }
        let nanos = parse_rfc3339(s).ok_or_else(|| TimeError::Invalid(input.to_owned()))?;
        if nanos == zero_time_nanos() {
            return Ok(Timestamp::ZERO);
        }
        i64::try_from(nanos)
            .map(|n| Timestamp(Some(n)))
            .map_err(|_| TimeError::OutOfRange(input.to_owned()))
    }

    /// The RFC 3339 form Go's `time.Time` JSON encoder writes for a UTC time: trailing zeros of
    /// the fraction trimmed, no fraction at all for whole seconds.
    pub fn to_rfc3339(self) -> String {
        let Some(nanos) = self.0 else {
            return GO_ZERO_TIME.to_owned();
        };
        let secs = nanos.div_euclid(1_000_000_000);
        let frac = nanos.rem_euclid(1_000_000_000);
        let days = secs.div_euclid(SECS_PER_DAY);
        let sod = secs.rem_euclid(SECS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        let mut out = format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        );
        if frac != 0 {
            let digits = format!("{frac:09}");
            out.push('.');
            out.push_str(digits.trim_end_matches('0'));
        }
        out.push('Z');
        out
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    /// See [`Timestamp::saturating_add`].
    fn add(self, d: Duration) -> Timestamp {
        self.saturating_add(d)
    }
}

impl From<i64> for Timestamp {
    /// Unix nanoseconds.
    fn from(nanos: i64) -> Self {
        Timestamp::from_unix_nanos(nanos)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl FromStr for Timestamp {
    type Err = TimeError;
    fn from_str(s: &str) -> Result<Self, TimeError> {
        Timestamp::parse(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    /// Accepts an RFC 3339 string, `""` or `null` (the zero time), or an integer of Unix
    /// nanoseconds.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp such as \"2024-05-01T12:00:00Z\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp::from_unix_nanos(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                i64::try_from(v)
                    .map(Timestamp::from_unix_nanos)
                    .map_err(|_| E::custom("timestamp out of range"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Timestamp, E> {
                Ok(Timestamp::ZERO)
            }
            fn visit_none<E: de::Error>(self) -> Result<Timestamp, E> {
                Ok(Timestamp::ZERO)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339; \"0001-01-01T00:00:00Z\" (Go's zero time) when unset"
        })
    }
}

/// Go's zero time in Unix nanoseconds (outside `i64`).
fn zero_time_nanos() -> i128 {
    i128::from(days_from_civil(1, 1, 1) * SECS_PER_DAY) * NANOS_PER_SEC
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Unix nanoseconds of an RFC 3339 timestamp, or `None` when it is malformed.
fn parse_rfc3339(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            part.iter()
                .fold(0i64, |acc, c| acc * 10 + i64::from(c - b'0')),
        )
    };
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59
    {
        return None;
    }
    let mut i = 19;
    let mut frac: i128 = 0;
    if sep(i, b".,") {
        i += 1;
        let start = i;
        let mut scale = NANOS_PER_SEC;
        while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            scale /= 10;
            frac += i128::from(c - b'0') * scale;
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset_secs = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b":") => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * SECS_PER_DAY + h * 3600 + mi * 60 + sec - offset_secs;
    Some(i128::from(secs) * NANOS_PER_SEC + frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go_rfc3339nano_in_utc() {
        assert_eq!(
            Timestamp::from_unix_nanos(0).to_rfc3339(),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            Timestamp::from_unix_nanos(1_714_564_800_123_456_789).to_rfc3339(),
            "2024-05-01T12:00:00.123456789Z"
        );
        assert_eq!(
            Timestamp::from_unix_nanos(1_714_564_800_500_000_000).to_rfc3339(),
            "2024-05-01T12:00:00.5Z"
        );
        assert_eq!(
            Timestamp::from_unix_nanos(-1).to_rfc3339(),
            "1969-12-31T23:59:59.999999999Z"
        );
        assert_eq!(Timestamp::ZERO.to_rfc3339(), GO_ZERO_TIME);
    }

    #[test]
    fn parses_rfc3339_with_offsets_and_fractions() {
        let t = Timestamp::parse("2024-05-01T12:00:00.123456789Z").unwrap();
        assert_eq!(t.unix_nanos(), Some(1_714_564_800_123_456_789));
        let with_offset = Timestamp::parse("2024-05-01T14:00:00.5+02:00").unwrap();
        assert_eq!(with_offset.unix_nanos(), Some(1_714_564_800_500_000_000));
        assert_eq!(
            Timestamp::parse("2024-02-29T00:00:00Z")
                .unwrap()
                .to_rfc3339(),
            "2024-02-29T00:00:00Z"
        );
        assert_eq!(Timestamp::parse(GO_ZERO_TIME), Ok(Timestamp::ZERO));
        assert_eq!(Timestamp::parse(""), Ok(Timestamp::ZERO));
        for bad in [
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-05-01 12:00:00",
            "yesterday",
            "2024-05-01T12:00:00.Z",
        ] {
            assert!(
                matches!(Timestamp::parse(bad), Err(TimeError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Timestamp::parse("3000-01-01T00:00:00Z"),
            Err(TimeError::OutOfRange(_))
        ));
    }

    #[test]
    fn serde_round_trips_and_accepts_null_and_nanos() {
        let t = Timestamp::from_unix_nanos(1_714_564_800_000_000_001);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2024-05-01T12:00:00.000000001Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        assert_eq!(
            serde_json::from_str::<Timestamp>("null").unwrap(),
            Timestamp::ZERO
        );
        assert_eq!(
            serde_json::from_str::<Timestamp>("5").unwrap(),
            Timestamp::from_unix_nanos(5)
        );
        assert_eq!(
            serde_json::to_string(&Timestamp::ZERO).unwrap(),
            "\"0001-01-01T00:00:00Z\""
        );
    }

    #[test]
    fn arithmetic_keeps_zero_unset() {
        let t = Timestamp::from_unix_nanos(1_000);
        assert_eq!((t + Duration(500)).unix_nanos(), Some(1_500));
        assert!((Timestamp::ZERO + Duration::from_secs(1)).is_zero());
        assert_eq!(
            t.saturating_add(Duration(500)).since(t),
            Some(Duration(500))
        );
        assert_eq!(
            (Timestamp::from_unix_nanos(i64::MAX) + Duration(1)).unix_nanos(),
            Some(i64::MAX)
        );
        assert_eq!(t.since(Timestamp::ZERO), None);
        assert!(Timestamp::ZERO < t);
    }

    #[test]
    fn civil_conversion_round_trips_across_the_range() {
        for days in (-106_000..106_000).step_by(37) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
