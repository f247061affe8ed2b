//! Quantities on the command line: sizes, durations, rates and fractions, one parser each.
//!
//! The three binaries' value parsers call these, so a flag that takes a size accepts the same
//! forms in every tool, and a bad value is refused with the same clear message.
//!
//! - Sizes: a number of bytes with an optional unit (`4096`, `64KiB`, `2M`, `1.5GiB`), read as
//!   `dd` reads them: `K`, `M`, `G`, `T` and `KiB`, `MiB`, `GiB`, `TiB` are powers of 1024
//!   (`2M` is a 2 MiB huge page, `1G` a 1 GiB image); `KB`, `MB`, `GB`, `TB` are powers of 1000.
//! - Durations: whole seconds (`300`) or a whole number with a unit: `500ms`, `30s`, `5m`, `1h`.
//! - Rates, in bytes per second: bits per second as tc writes them (`900mbit`, `1gbit`,
//!   `500kbit`, decimal units) or a size per second (`100MiB/s`, `12MB/s`).
//! - Fractions: a decimal number between 0 and 1.

use std::fmt;
use std::time::Duration;

/// A value the command line gave that is not a valid quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not a size at all.
    #[error("`{input}` is not a size (e.g. 4096, 64KiB, 256MiB, 1GiB): {source}")]
    Size {
        /// The text given.
        input: String,
        /// Why it is not a number of bytes.
        source: parse_size::Error,
    },
    /// A size of zero where something is needed.
    #[error("`{input}`: the size must not be zero")]
    ZeroSize {
        /// The text given.
        input: String,
    },
    /// A size outside the allowed range.
    #[error("`{input}`: the size must be between {} and {}", Bytes(*min), Bytes(*max))]
    SizeRange {
        /// The text given.
        input: String,
        /// The smallest size allowed.
        min: u64,
        /// The largest size allowed.
        max: u64,
    },
    /// A size that is not a whole number of `unit`s (or is zero, or above `max`).
    #[error(
        "`{input}`: the size must be a non-zero multiple of {}{}",
        Bytes(*unit),
        max.map(|m| format!(", at most {}", Bytes(m))).unwrap_or_default()
    )]
    NotMultiple {
        /// The text given.
        input: String,
        /// The size must be a multiple of this many bytes.
        unit: u64,
        /// The largest size allowed, if any.
        max: Option<u64>,
    },
    /// A size that is none of the few allowed.
    #[error("`{input}`: the size must be {allowed}")]
    NotOneOf {
        /// The text given.
        input: String,
        /// The sizes allowed, as the user writes them.
        allowed: &'static str,
    },
    /// Not a duration.
    #[error("`{input}` is not a duration (e.g. 300, 500ms, 30s, 5m, 1h)")]
    Duration {
        /// The text given.
        input: String,
    },
    /// A duration of zero.
    #[error("`{input}`: the duration must be positive")]
    ZeroDuration {
        /// The text given.
        input: String,
    },
    /// Not a rate.
    #[error("`{input}` is not a rate (e.g. 900mbit, 1gbit, 100MiB/s): {problem}")]
    Rate {
        /// The text given.
        input: String,
        /// What is wrong with it.
        problem: RateProblem,
    },
    /// Not a fraction in the allowed range.
    #[error("`{input}` is not a fraction {range}")]
    Fraction {
        /// The text given.
        input: String,
        /// The range allowed, e.g. "between 0 and 1".
        range: &'static str,
    },
}

/// What is wrong with a rate ([`ParseError::Rate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RateProblem {
    /// Neither a bit unit nor `/s`.
    #[error("give a unit: bit, kbit, mbit, gbit, or a size per second")]
    NoUnit,
    /// The number before a bit unit is not a whole number.
    #[error("not a whole number")]
    NotWhole,
    /// More than `u64::MAX` bits per second.
    #[error("too large")]
    TooLarge,
    /// Less than one byte per second.
    #[error("the rate must be at least one byte per second")]
    Zero,
    /// The size before `/s` is not a size.
    #[error("{0}")]
    Size(parse_size::Error),
}

/// Parses a size in bytes (`4096`, `64KiB`, `256MiB`, `1GiB`, `2M`, `12MB`).
pub fn parse_bytes(s: &str) -> Result<u64, ParseError> {
    parse_size_text(s).map_err(|source| ParseError::Size {
        input: s.to_owned(),
        source,
    })
}

/// `parse_size` reads a bare `K`, `M`, `G` as powers of 1000; a size of memory means powers of
/// 1024 (as `dd`, QEMU's `-m` and the kernel's `hugepagesz=` do), so a bare letter is read as
/// its `iB` form. `KB`, `MB`, `GB` stay decimal, and say so.
fn parse_size_text(s: &str) -> Result<u64, parse_size::Error> {
    let bare = s
        .trim_end()
        .chars()
        .last()
        .is_some_and(|c| "kKmMgGtTpPeE".contains(c));
    if bare {
        parse_size::parse_size(format!("{}iB", s.trim_end()))
    } else {
        parse_size::parse_size(s)
    }
}

/// Parses a size that must not be zero.
pub fn parse_nonzero_bytes(s: &str) -> Result<u64, ParseError> {
    match parse_bytes(s)? {
        0 => Err(ParseError::ZeroSize {
            input: s.to_owned(),
        }),
        n => Ok(n),
    }
}

/// Parses a size between `min` and `max` bytes (inclusive).
pub fn parse_bytes_between(s: &str, min: u64, max: u64) -> Result<u64, ParseError> {
    let n = parse_bytes(s)?;
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(ParseError::SizeRange {
            input: s.to_owned(),
            min,
            max,
        })
    }
}

/// Parses a non-zero size that is a multiple of `unit` bytes, and at most `max` if given.
pub fn parse_multiple(s: &str, unit: u64, max: Option<u64>) -> Result<u64, ParseError> {
    let n = parse_bytes(s)?;
    if n == 0 || !n.is_multiple_of(unit) || max.is_some_and(|max| n > max) {
        return Err(ParseError::NotMultiple {
            input: s.to_owned(),
            unit,
            max,
        });
    }
    Ok(n)
}

/// Parses a duration: whole seconds (`300`), or a whole number with a unit: `500ms`, `30s`,
/// `5m`, `1h`. Zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let bad = || ParseError::Duration {
        input: s.to_owned(),
    };
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    if millis == 0 {
        return Err(ParseError::ZeroDuration {
            input: s.to_owned(),
        });
    }
    Ok(Duration::from_millis(millis))
}

/// Parses a rate into bytes per second: bits per second with tc's decimal units (`bit`,
/// `kbit`, `mbit`, `gbit`, any case: `900mbit` is 112 500 000 bytes/s), or a size per second
/// (`100MiB/s`, `12MB/s`, read as [`parse_bytes`] reads a size). At least one byte per second.
pub fn parse_rate(s: &str) -> Result<u64, ParseError> {
    let bad = |problem| ParseError::Rate {
        input: s.to_owned(),
        problem,
    };
    let bytes = if let Some(size) = s.strip_suffix("/s") {
        parse_size_text(size).map_err(|e| bad(RateProblem::Size(e)))?
    } else {
        let lower = s.to_ascii_lowercase();
        let (number, scale) = [
            ("gbit", 1_000_000_000),
            ("mbit", 1_000_000),
            ("kbit", 1_000),
            ("bit", 1),
        ]
        .iter()
        .find_map(|&(unit, scale)| lower.strip_suffix(unit).map(|n| (n.to_owned(), scale)))
        .ok_or_else(|| bad(RateProblem::NoUnit))?;
        let n: u64 = number.parse().map_err(|_| bad(RateProblem::NotWhole))?;
        n.checked_mul(scale)
            .ok_or_else(|| bad(RateProblem::TooLarge))?
            / 8
    };
    if bytes == 0 {
        return Err(bad(RateProblem::Zero));
    }
    Ok(bytes)
}

/// Parses a fraction between 0 and 1, both included.
pub fn parse_fraction(s: &str) -> Result<f64, ParseError> {
    parse_fraction_where(s, |f| (0.0..=1.0).contains(&f), "between 0 and 1")
}

/// Parses a fraction above 0 and at most 1.
pub fn parse_positive_fraction(s: &str) -> Result<f64, ParseError> {
    parse_fraction_where(s, |f| f > 0.0 && f <= 1.0, "in (0, 1]")
}

fn parse_fraction_where(
    s: &str,
    allowed: impl Fn(f64) -> bool,
    range: &'static str,
) -> Result<f64, ParseError> {
    match s.parse::<f64>() {
        Ok(f) if allowed(f) => Ok(f),
        _ => Err(ParseError::Fraction {
            input: s.to_owned(),
            range,
        }),
    }
}

/// A byte count shown the way a user reads it: `4 KiB`, `1 GiB`, or `1000 bytes`.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if n != 0 && n.is_multiple_of(1 << shift) {
                return write!(f, "{} {unit}", n >> shift);
            }
        }
        write!(f, "{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        for (text, bytes) in [
            ("4096", 4096),
            ("64KiB", 65536),
            ("256MiB", 256 << 20),
            ("1GiB", 1 << 30),
            ("1TiB", 1 << 40),
            ("1.5GiB", 3 << 29),
            ("64K", 65536),
            ("64k", 65536),
            ("2M", 2 << 20),
            ("1G", 1 << 30),
            ("1.5G", 3 << 29),
            ("12MB", 12_000_000),
            ("1GB", 1_000_000_000),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for bad in ["", "KiB", "K", "1x", "-1", "99999999999999999999"] {
            let err = parse_bytes(bad).expect_err(bad);
            assert!(err.to_string().contains("is not a size"), "{err}");
        }
    }

    #[test]
    fn sizes_are_checked() {
        assert_eq!(parse_nonzero_bytes("1"), Ok(1));
        assert!(matches!(
            parse_nonzero_bytes("0"),
            Err(ParseError::ZeroSize { .. })
        ));
        assert_eq!(parse_bytes_between("256KiB", 4096, 1 << 30), Ok(256 << 10));
        let err = parse_bytes_between("2GiB", 4096, 1 << 30).expect_err("big");
        assert_eq!(
            err.to_string(),
            "`2GiB`: the size must be between 4 KiB and 1 GiB"
        );
        assert_eq!(parse_multiple("64KiB", 4096, Some(1 << 20)), Ok(65536));
        for bad in ["0", "1000", "2MiB"] {
            let err = parse_multiple(bad, 4096, Some(1 << 20)).expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!("`{bad}`: the size must be a non-zero multiple of 4 KiB, at most 1 MiB")
            );
        }
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("900mbit"), Ok(112_500_000));
        assert_eq!(parse_rate("1gbit"), Ok(125_000_000));
        assert_eq!(parse_rate("1Gbit"), Ok(125_000_000));
        assert_eq!(parse_rate("900Mbit"), Ok(112_500_000));
        assert_eq!(parse_rate("500kbit"), Ok(62_500));
        assert_eq!(parse_rate("8bit"), Ok(1));
        assert_eq!(parse_rate("100MiB/s"), Ok(100 << 20));
        assert_eq!(parse_rate("12MB/s"), Ok(12_000_000));
        for bad in [
            "",
            "900",
            "mbit",
            "1.5gbit",
            "0mbit",
            "7bit",
            "0/s",
            "fast",
            "-1gbit",
            "99999999999999999999gbit",
        ] {
            let err = parse_rate(bad).expect_err(bad);
            assert!(err.to_string().contains("is not a rate"), "{err}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in [
            "",
            "s",
            "0",
            "0s",
            "5x",
            "1.5s",
            "-3",
            " 5s",
            "5 s",
            "99999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fractions_parse() {
        assert_eq!(parse_fraction("0"), Ok(0.0));
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        assert_eq!(parse_positive_fraction("0.02"), Ok(0.02));
        assert!(parse_positive_fraction("0").is_err());
        for bad in ["", "-0.1", "1.01", "NaN", "half"] {
            let err = parse_fraction(bad).expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!("`{bad}` is not a fraction between 0 and 1")
            );
        }
    }
}
