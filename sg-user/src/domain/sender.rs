//! Who points are counted for: an address, its prefix, a larger network, a user, a country.

use std::{fmt, net::IpAddr};

use ipnet::IpNet;

/// Who points are counted for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sender {
    Source(IpAddr),
    /// The source's prefix (IPv4 /24, IPv6 /64 by default).
    Prefix(IpNet),
    /// A larger network (IPv4 /16, IPv6 /48 by default), limited when several of its prefixes
    /// are.
    Network(IpNet),
    /// A SASL (or IMAP/POP) user name, as the client gave it.
    User(Box<str>),
    /// An ISO 3166 country code, from the GeoIP database. Points only, for reports.
    Country([u8; 2]),
}

/// The prefix and network lengths senders are tracked at (the config's `[prefix]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixLengths {
    pub v4: u8,
    pub v6: u8,
    pub network_v4: u8,
    pub network_v6: u8,
}

impl PrefixLengths {
    /// The defaults of `[prefix]`: IPv4 /24 and /16, IPv6 /64 and /48.
    pub const DEFAULT: PrefixLengths = PrefixLengths {
        v4: 24,
        v6: 64,
        network_v4: 16,
        network_v6: 48,
    };
}

/// Why a text is not a sender.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SenderError {
    #[error("user: needs a name")]
    EmptyUser,
    #[error("{0:?} is not an address, a network or user:NAME")]
    Unknown(String),
    #[error("/{0}: senders are tracked per address, per /{1} prefix and per /{2} network")]
    Length(u8, u8, u8),
}

impl Sender {
    /// The kind of sender, as reports and metrics name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Sender::Source(_) => "source",
            Sender::Prefix(_) => "prefix",
            Sender::Network(_) => "network",
            Sender::User(_) => "user",
            Sender::Country(_) => "country",
        }
    }

    /// The network the kernel limits for this sender (an address is a /32 or /128); None for
    /// users (limited through their sources) and countries (only reported).
    pub fn network(&self) -> Option<super::Network> {
        match self {
            Sender::Source(addr) => Some(super::Network::from_ipnet(IpNet::from(*addr))),
            Sender::Prefix(net) | Sender::Network(net) => Some(super::Network::from_ipnet(*net)),
            Sender::User(_) | Sender::Country(_) => None,
        }
    }

    /// `203.0.113.9`, `203.0.113.0/24` (a prefix), `2001:db8:a::/48` (a network), `user:alice`,
    /// at the lengths senders are tracked at.
    pub fn parse(text: &str, lengths: PrefixLengths) -> Result<Sender, SenderError> {
        if let Some(user) = text.strip_prefix("user:") {
            if user.is_empty() {
                return Err(SenderError::EmptyUser);
            }
            return Ok(Sender::User(user.into()));
        }
        if let Ok(addr) = text.parse::<IpAddr>() {
            return Ok(Sender::Source(addr));
        }
        let net: IpNet = text
            .parse()
            .map_err(|_| SenderError::Unknown(text.to_string()))?;
        let (prefix, network) = if net.addr().is_ipv4() {
            (lengths.v4, lengths.network_v4)
        } else {
            (lengths.v6, lengths.network_v6)
        };
        let net = net.trunc();
        match net.prefix_len() {
            n if n == net.max_prefix_len() => Ok(Sender::Source(net.addr())),
            n if n == prefix => Ok(Sender::Prefix(net)),
            n if n == network => Ok(Sender::Network(net)),
            n => Err(SenderError::Length(n, prefix, network)),
        }
    }
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sender::Source(a) => write!(f, "{a}"),
            Sender::Prefix(n) | Sender::Network(n) => write!(f, "{n}"),
            Sender::User(u) => write!(f, "user:{u}"),
            Sender::Country(c) => write!(f, "country:{}", country_name(*c)),
        }
    }
}

pub fn country_name(code: [u8; 2]) -> String {
    String::from_utf8_lossy(&code).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LENGTHS: PrefixLengths = PrefixLengths::DEFAULT;

    #[test]
    fn a_sender_is_an_address_a_prefix_a_network_or_a_user() {
        let parse = |t| Sender::parse(t, LENGTHS);
        assert_eq!(
            parse("203.0.113.9"),
            Ok(Sender::Source("203.0.113.9".parse().unwrap()))
        );
        assert_eq!(
            parse("203.0.113.0/24"),
            Ok(Sender::Prefix("203.0.113.0/24".parse().unwrap()))
        );
        assert_eq!(
            parse("2001:db8:a::/48"),
            Ok(Sender::Network("2001:db8:a::/48".parse().unwrap()))
        );
        assert_eq!(parse("user:alice"), Ok(Sender::User("alice".into())));
        assert_eq!(parse("203.0.0.0/8"), Err(SenderError::Length(8, 24, 16)));
        assert!(parse("nonsense").is_err());
        assert_eq!(parse("user:"), Err(SenderError::EmptyUser));
        assert_eq!(Sender::User("a".into()).kind(), "user");
    }
}
