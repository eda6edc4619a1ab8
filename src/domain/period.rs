//! `Period`: a policy duration written the way operators write them (`"90d"`, `"15m"`,
//! `"1h30m"`). Whole seconds only: the contract accepts durations "down to seconds".
//!
//! Parsing is strict on purpose: a typo in a rotation policy must be a 400, not a silently
//! different schedule.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration with one-second resolution.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Period(u64);

/// Longest accepted period: 100 years, far beyond any sane policy, small enough that adding
/// it to any timestamp we handle cannot overflow.
const MAX_SECONDS: u64 = 100 * 365 * 86_400;

const UNITS: [(char, u64); 5] = [('w', 604_800), ('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeriodError {
    #[error("a duration must not be empty")]
    Empty,
    #[error("`{0}` is not a duration: use a number and a unit (s, m, h, d, w), e.g. \"90d\" or \"1h30m\"")]
    Syntax(String),
    #[error("`{0}` is longer than the maximum of 100 years")]
    TooLong(String),
}

impl Period {
    pub const ZERO: Period = Period(0);

    pub const fn from_secs(secs: u64) -> Self {
        Period(secs)
    }

    pub const fn as_secs(self) -> u64 {
        self.0
    }

    pub fn as_duration(self) -> time::Duration {
        // MAX_SECONDS fits in i64 by construction; from_secs callers stay far below i64::MAX.
        time::Duration::seconds(i64::try_from(self.0).unwrap_or(i64::MAX))
    }

    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }

    pub fn saturating_add(self, other: Period) -> Period {
        Period(self.0.saturating_add(other.0))
    }
}

impl FromStr for Period {
    type Err = PeriodError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if s.is_empty() {
            return Err(PeriodError::Empty);
        }
        let syntax = || PeriodError::Syntax(input.to_owned());
        let mut total: u64 = 0;
        let mut digits = String::new();
        let mut last_unit_index: Option<usize> = None;
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit_index = UNITS.iter().position(|(u, _)| *u == c).ok_or_else(syntax)?;
            // Units must appear largest first and at most once ("1h30m", not "30m1h").
            if digits.is_empty() || last_unit_index.is_some_and(|last| unit_index <= last) {
                return Err(syntax());
            }
            let n: u64 = digits.parse().map_err(|_| PeriodError::TooLong(input.to_owned()))?;
            let secs = n
                .checked_mul(UNITS[unit_index].1)
                .and_then(|v| v.checked_add(total))
                .ok_or_else(|| PeriodError::TooLong(input.to_owned()))?;
            total = secs;
            digits.clear();
            last_unit_index = Some(unit_index);
        }
        if !digits.is_empty() || last_unit_index.is_none() {
            return Err(syntax());
        }
        if total > MAX_SECONDS {
            return Err(PeriodError::TooLong(input.to_owned()));
        }
        Ok(Period(total))
    }
}

impl fmt::Display for Period {
    /// The shortest exact spelling: 7_776_000 s is `90d`, 5_400 s is `1h30m`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.0;
        for (unit, secs) in UNITS {
            // Weeks are accepted but never printed: "14d" reads better than "2w" in policies.
            if unit == 'w' {
                continue;
            }
            if rest >= secs {
                write!(f, "{}{}", rest / secs, unit)?;
                rest %= secs;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Period({self})")
    }
}

impl Serialize for Period {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spellings_operators_use() {
        assert_eq!("90d".parse(), Ok(Period::from_secs(90 * 86_400)));
        assert_eq!("15m".parse(), Ok(Period::from_secs(900)));
        assert_eq!("30s".parse(), Ok(Period::from_secs(30)));
        assert_eq!("1h30m".parse(), Ok(Period::from_secs(5_400)));
        assert_eq!("2w".parse(), Ok(Period::from_secs(14 * 86_400)));
        assert_eq!("0s".parse(), Ok(Period::ZERO));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in ["", " ", "90", "d", "1.5h", "-1d", "30m1h", "1h1h", "1x", "1 d", "9999999999999999999999s"] {
            assert!(bad.parse::<Period>().is_err(), "{bad:?} was accepted");
        }
        assert!(matches!("200000w".parse::<Period>(), Err(PeriodError::TooLong(_))));
    }

    #[test]
    fn prints_the_shortest_exact_spelling_and_round_trips() {
        for (secs, text) in [(7_776_000, "90d"), (5_400, "1h30m"), (45, "45s"), (0, "0s"), (90_061, "1d1h1m1s")] {
            let p = Period::from_secs(secs);
            assert_eq!(p.to_string(), text);
            assert_eq!(text.parse::<Period>(), Ok(p));
        }
    }
}
