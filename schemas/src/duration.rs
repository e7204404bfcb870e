//! Durations as Nomad writes them.
//!
//! In jobspecs a duration is a Go duration string (`"10s"`, `"1h30m"`, `"250ms"`); in the API it
//! is an integer number of nanoseconds. [`Duration`] is the API form; [`parse`] and [`format`]
//! convert between the two, and [`SpecDuration`] is what jobspec fields deserialize into.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// A duration in nanoseconds: Nomad's API form (`"MinHealthyTime": 10000000000`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(transparent)]
pub struct Duration(pub i64);

pub const NANOSECOND: i64 = 1;
pub const MICROSECOND: i64 = 1_000;
pub const MILLISECOND: i64 = 1_000_000;
pub const SECOND: i64 = 1_000_000_000;
pub const MINUTE: i64 = 60 * SECOND;
pub const HOUR: i64 = 60 * MINUTE;

impl Duration {
    pub const ZERO: Duration = Duration(0);

    pub const fn from_secs(s: i64) -> Self {
        Duration(s * SECOND)
    }

    pub const fn from_millis(ms: i64) -> Self {
        Duration(ms * MILLISECOND)
    }

    pub const fn from_mins(m: i64) -> Self {
        Duration(m * MINUTE)
    }

    pub const fn from_hours(h: i64) -> Self {
        Duration(h * HOUR)
    }

    pub const fn nanos(self) -> i64 {
        self.0
    }

    /// As a std duration; negative durations become zero.
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_nanos(u64::try_from(self.0).unwrap_or(0))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(*self))
    }
}

/// Why a duration string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error(
        "invalid duration {0:?}: expected a number followed by a unit (ns, us, ms, s, m, h), like \"10s\" or \"1h30m\""
    )]
    Invalid(String),
    #[error("invalid duration {0:?}: unknown unit {1:?} (expected ns, us, ms, s, m or h)")]
    UnknownUnit(String, String),
    #[error("invalid duration {0:?}: out of range")]
    Overflow(String),
}

/// Parses a Go duration string: an optional sign, then one or more decimal numbers each with a
/// unit, e.g. `"300ms"`, `"-1.5h"`, `"2h45m"`. `"0"` alone is allowed, as in Go.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let (neg, mut rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DurationError::Invalid(input.to_owned()));
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(DurationError::Invalid(input.to_owned()));
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => i128::from(MICROSECOND),
            "ms" => i128::from(MILLISECOND),
            "s" => i128::from(SECOND),
            "m" => i128::from(MINUTE),
            "h" => i128::from(HOUR),
            "" => return Err(DurationError::Invalid(input.to_owned())),
            other => {
                return Err(DurationError::UnknownUnit(
                    input.to_owned(),
                    other.to_owned(),
                ));
            }
        };
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        let int: i128 = if int_part.is_empty() {
            0
        } else {
            int_part
                .parse()
                .map_err(|_| DurationError::Overflow(input.to_owned()))?
        };
        let mut value = int
            .checked_mul(scale)
            .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
        let mut frac_scale = scale;
        for digit in frac_part.bytes() {
            frac_scale /= 10;
            value += i128::from(digit - b'0') * frac_scale;
        }
        total = total
            .checked_add(value)
            .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
        if total > i128::from(i64::MAX) {
            return Err(DurationError::Overflow(input.to_owned()));
        }
    }
    let nanos = i64::try_from(total).map_err(|_| DurationError::Overflow(input.to_owned()))?;
    Ok(Duration(if neg { -nanos } else { nanos }))
}

/// Formats a duration as Go does: `1h30m0s`, `10s`, `250ms`, `0s`.
pub fn format(d: Duration) -> String {
    let mut n = i128::from(d.0);
    let mut out = String::new();
    if n < 0 {
        out.push('-');
        n = -n;
    }
    if n == 0 {
        return "0s".into();
    }
    if n < i128::from(SECOND) {
        let (unit, scale) = if n < i128::from(MICROSECOND) {
            ("ns", 1)
        } else if n < i128::from(MILLISECOND) {
            ("µs", i128::from(MICROSECOND))
        } else {
            ("ms", i128::from(MILLISECOND))
        };
        out.push_str(&fraction(n, scale));
        out.push_str(unit);
        return out;
    }
    let hours = n / i128::from(HOUR);
    n %= i128::from(HOUR);
    let minutes = n / i128::from(MINUTE);
    n %= i128::from(MINUTE);
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&fraction(n, i128::from(SECOND)));
    out.push('s');
    out
}

fn fraction(n: i128, scale: i128) -> String {
    let whole = n / scale;
    let mut rem = n % scale;
    if rem == 0 {
        return whole.to_string();
    }
    let mut digits = String::new();
    let mut s = scale;
    while rem > 0 && s > 1 {
        s /= 10;
        digits.push(char::from(b'0' + u8::try_from(rem / s).unwrap_or(0)));
        rem %= s;
    }
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A duration field in a jobspec: a Go duration string, or an integer of nanoseconds (the API
/// form, accepted so that JSON written for Nomad's API decodes too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
#[schemars(with = "SpecDurationSchema")]
pub struct SpecDuration(pub Duration);

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum SpecDurationSchema {
    /// A Go duration string such as "10s", "1m30s" or "250ms".
    Text(
        #[schemars(regex(pattern = r"^[+-]?(0|([0-9]*\.?[0-9]+(ns|us|µs|μs|ms|s|m|h))+)$"))] String,
    ),
    /// Nanoseconds.
    Nanos(i64),
}

impl<'de> Deserialize<'de> for SpecDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SpecDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\", \"1m30s\" or \"250ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SpecDuration, E> {
                parse(v).map(SpecDuration).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SpecDuration, E> {
                Ok(SpecDuration(Duration(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SpecDuration, E> {
                i64::try_from(v)
                    .map(|n| SpecDuration(Duration(n)))
                    .map_err(|_| E::custom("duration out of range"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        for (s, n) in [
            ("10s", 10 * SECOND),
            ("1h30m", HOUR + 30 * MINUTE),
            ("250ms", 250 * MILLISECOND),
            ("1.5s", 1_500 * MILLISECOND),
            ("0", 0),
            ("-2m", -2 * MINUTE),
            ("1h0m0s", HOUR),
            ("3us", 3 * MICROSECOND),
            ("7ns", 7),
            (".5s", 500 * MILLISECOND),
        ] {
            assert_eq!(parse(s), Ok(Duration(n)), "{s}");
        }
    }

    #[test]
    fn rejects_bad_durations_with_a_reason() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert!(matches!(parse("10"), Err(DurationError::Invalid(_))));
        assert!(matches!(
            parse("ten seconds"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(parse("10x"), Err(DurationError::UnknownUnit(_, u)) if u == "x"));
        assert!(matches!(parse("1.2.3s"), Err(DurationError::Invalid(_))));
        assert!(matches!(
            parse("99999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(Duration(0)), "0s");
        assert_eq!(format(Duration::from_secs(10)), "10s");
        assert_eq!(format(Duration(HOUR + 30 * MINUTE)), "1h30m0s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration(1_500 * MILLISECOND)), "1.5s");
        assert_eq!(format(Duration(-2 * MINUTE)), "-2m0s");
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse_round_trips(n in proptest::num::i64::ANY) {
            let d = Duration(n / 2);
            proptest::prop_assert_eq!(parse(&format(d)), Ok(d));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = parse(&s);
        }
    }
}
