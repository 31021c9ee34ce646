//! Durations, rates and networks written the way people write them: `90s`, `1h30m`, `30/min`,
//! `198.51.100.0/24`, `2001:db8::1`.

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use ipnet::IpNet;
use sg_common::{Addr, V4_MAPPED_BITS, map_v4};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("`{0}` is not a duration (write it like 90s, 15m, 1h30m, 7d)")]
    Duration(String),
    #[error("`{0}` is not a rate (write it like 10/s, 30/min, 100/h, 500/d)")]
    Rate(String),
    #[error("`{0}` is not an address or network (write it like 198.51.100.0/24 or 2001:db8::/64)")]
    Network(String),
    #[error("rate `{0}` is too slow: one connection per {1:?} at most (use a block instead)")]
    RateTooSlow(String, Duration),
}

const UNITS: [(&str, u64); 10] = [
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("sec", 1_000_000_000),
    ("m", 60_000_000_000),
    ("min", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("hour", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
    ("day", 86_400_000_000_000),
    ("w", 604_800_000_000_000),
];

fn unit_ns(unit: &str) -> Option<u64> {
    let unit = unit
        .strip_suffix("s")
        .filter(|u| u.len() > 2)
        .unwrap_or(unit);
    UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, ns)| *ns)
}

/// Parses `90s`, `15m`, `1h30m`, `2d`, `500ms`. A bare number is refused: the unit matters.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(text.to_string());
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ns = unit_ns(&rest[..unit_len]).ok_or_else(err)?;
        total = number
            .checked_mul(ns)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_nanos(total))
}

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

/// A network in the kernel's mapped 16-byte form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network {
    /// Address with the host bits cleared.
    pub addr: Addr,
    /// Prefix length over 128 bits (an IPv4 /24 is 120).
    pub prefix_len: u32,
}

impl Network {
    pub fn from_ipnet(net: IpNet) -> Self {
        let net = net.trunc();
        match net {
            IpNet::V4(v4) => Network {
                addr: map_v4(v4.addr().octets()),
                prefix_len: V4_MAPPED_BITS + u32::from(v4.prefix_len()),
            },
            IpNet::V6(v6) => Network {
                addr: v6.addr().octets(),
                prefix_len: u32::from(v6.prefix_len()),
            },
        }
    }

    /// Back to the family's own notation.
    pub fn to_ipnet(self) -> IpNet {
        let v6 = std::net::Ipv6Addr::from(self.addr);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.prefix_len >= V4_MAPPED_BITS => {
                IpNet::new(IpAddr::V4(v4), (self.prefix_len - V4_MAPPED_BITS) as u8)
                    .expect("length checked")
            }
            _ => IpNet::new(IpAddr::V6(v6), self.prefix_len as u8).expect("length <= 128"),
        }
    }

    pub fn is_v4(&self) -> bool {
        self.addr[..12] == sg_common::V4_MAPPED_PREFIX && self.prefix_len >= V4_MAPPED_BITS
    }

    /// A single address (/32 or /128).
    pub fn is_host(&self) -> bool {
        self.prefix_len == 128
    }
}

impl FromStr for Network {
    type Err = UnitError;

    /// Parses `198.51.100.0/24`, `2001:db8::/64`, or a bare address (a /32 or /128).
    /// Host bits are cleared: `198.51.100.7/24` is `198.51.100.0/24`.
    fn from_str(text: &str) -> Result<Self, UnitError> {
        let text = text.trim();
        let net = match text.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => IpNet::from(
                text.parse::<IpAddr>()
                    .map_err(|_| UnitError::Network(text.to_string()))?,
            ),
        };
        Ok(Network::from_ipnet(net))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_ipnet())
    }
}

/// Formats a duration for people: `45s`, `12m`, `3h`, `2d`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_combinations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2hours"), Ok(Duration::from_secs(7200)));
    }

    #[test]
    fn durations_without_unit_or_with_garbage_are_refused() {
        for bad in ["", "90", "s", "1x", "1h-5m", "-5s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

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
    fn ipv4_networks_are_mapped_and_truncated() {
        let n: Network = "198.51.100.7/24".parse().unwrap();
        assert_eq!(n.addr, map_v4([198, 51, 100, 0]));
        assert_eq!(n.prefix_len, 120);
        assert_eq!(n.to_string(), "198.51.100.0/24");
        assert!(n.is_v4());
    }

    #[test]
    fn bare_addresses_are_hosts() {
        let n: Network = "2001:db8::1".parse().unwrap();
        assert!(n.is_host());
        assert_eq!(n.to_string(), "2001:db8::1/128");
        let n: Network = "203.0.113.9".parse().unwrap();
        assert!(n.is_host());
        assert_eq!(n.to_string(), "203.0.113.9/32");
    }

    #[test]
    fn garbage_networks_are_refused() {
        for bad in [
            "",
            "example.org",
            "198.51.100.0/33",
            "2001:db8::/129",
            "1.2.3",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }
}
