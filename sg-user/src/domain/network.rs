//! Networks in the kernel's mapped 16-byte form, from and to the families' own notation.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use sg_common::{Addr, V4_MAPPED_BITS, map_v4};

use super::UnitError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
