//! Connection rates (`30/min`) and the limits made of them (`30/min burst 10`, `blocked`).

use std::{fmt, str::FromStr, time::Duration};

use super::{
    UnitError,
    time::{parse_duration, unit_ns},
};

/// A connection rate: so many connections per unit of time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Time between connections at this rate.
    pub interval: Duration,
}

/// Slowest rate the kernel's bucket represents (see sg-ebpf's bucket.rs: 2^47 ns).
pub const MAX_INTERVAL: Duration = Duration::from_nanos(1 << 47);

impl FromStr for Rate {
    type Err = UnitError;

    /// Parses `10/s`, `30/min`, `0.5/s`, `100/h`, `500/day`.
    fn from_str(text: &str) -> Result<Self, UnitError> {
        let err = || UnitError::Rate(text.to_string());
        let (count, unit) = text.trim().split_once('/').ok_or_else(err)?;
        let count: f64 = count.trim().parse().map_err(|_| err())?;
        let unit = unit.trim();
        let per_ns = match unit.find(|c: char| !c.is_ascii_digit()) {
            Some(0) => unit_ns(unit).ok_or_else(err)?,
            // `5/10s`: five per ten seconds.
            Some(_) => parse_duration(unit).map_err(|_| err())?.as_nanos() as u64,
            None => return Err(err()),
        };
        if !(count.is_finite() && count > 0.0) {
            return Err(err());
        }
        let interval = Duration::from_nanos((per_ns as f64 / count).round().max(1.0) as u64);
        if interval > MAX_INTERVAL {
            return Err(UnitError::RateTooSlow(text.to_string(), MAX_INTERVAL));
        }
        Ok(Rate { interval })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_second = 1e9 / self.interval.as_nanos() as f64;
        if per_second >= 1.0 {
            write!(f, "{}/s", round3(per_second))
        } else if per_second * 60.0 >= 1.0 {
            write!(f, "{}/min", round3(per_second * 60.0))
        } else {
            write!(f, "{}/h", round3(per_second * 3600.0))
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A limit as the kernel applies it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    Rate { rate: Rate, burst: u32 },
    Block,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Block => write!(f, "blocked"),
            Limit::Rate { rate, burst } => write!(f, "{rate} burst {burst}"),
        }
    }
}

impl FromStr for Limit {
    type Err = UnitError;

    /// A limit as [`Limit`]'s Display writes it (`blocked`, `30/min burst 10`), as stored in
    /// the lists' journal.
    fn from_str(text: &str) -> Result<Self, UnitError> {
        if text == "block" || text == "blocked" {
            return Ok(Limit::Block);
        }
        let (rate, burst) = text
            .split_once(" burst ")
            .ok_or_else(|| UnitError::Limit(text.to_string()))?;
        Ok(Limit::Rate {
            rate: rate.parse()?,
            burst: burst
                .parse()
                .map_err(|_| UnitError::Limit(text.to_string()))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_become_intervals() {
        let r: Rate = "10/s".parse().unwrap();
        assert_eq!(r.interval, Duration::from_millis(100));
        let r: Rate = "30/min".parse().unwrap();
        assert_eq!(r.interval, Duration::from_secs(2));
        let r: Rate = "5/10s".parse().unwrap();
        assert_eq!(r.interval, Duration::from_secs(2));
        assert_eq!(r.to_string(), "30/min");
    }

    #[test]
    fn bad_rates_are_refused_with_the_text() {
        for bad in ["10", "x/s", "0/s", "-1/s", "10/fortnight", "1/"] {
            assert!(matches!(bad.parse::<Rate>(), Err(UnitError::Rate(t)) if t == bad));
        }
        assert!(matches!(
            "1/w".parse::<Rate>(),
            Err(UnitError::RateTooSlow(..))
        ));
    }

    #[test]
    fn limits_read_back_what_they_write() {
        for limit in [
            Limit::Block,
            Limit::Rate {
                rate: "30/min".parse().unwrap(),
                burst: 10,
            },
        ] {
            assert_eq!(limit.to_string().parse::<Limit>(), Ok(limit));
        }
        assert!("fast".parse::<Limit>().is_err());
        assert!("30/min burst x".parse::<Limit>().is_err());
    }
}
