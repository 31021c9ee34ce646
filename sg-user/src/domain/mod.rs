//! The words of the domain, with no I/O, no aya and no clap: durations, rates and limits,
//! networks, senders, written the way people write them (`90s`, `1h30m`, `30/min`, `198.51.100.0/24`,
//! `2001:db8::1`, `30/min burst 10`). Every other module builds on these; they import nothing
//! of the crate.

pub mod limit;
pub mod network;
pub mod sender;
pub mod time;

use std::time::Duration;

pub use limit::{Limit, Rate};
pub use network::Network;
pub use sender::{PrefixLengths, Sender, country_name};
pub use time::{boot_time_ns, format_duration, format_time, parse_duration, unix_now};

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
    #[error("`{0}` is not a limit (write it like `30/min burst 10` or `blocked`)")]
    Limit(String),
}

/// Hash maps and sets keyed by what senders control (addresses, names): foldhash's quality
/// hasher, seeded at random per process, several times faster than std's SipHash on the
/// engine's short keys and still not predictable from outside.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
pub type FastSet<T> = std::collections::HashSet<T, foldhash::quality::RandomState>;
