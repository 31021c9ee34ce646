//! The formats reputation feeds come in, read into one sorted set of networks.
//!
//! Every reader is strict: a line it does not understand refuses the whole copy (naming the
//! line), so a truncated or garbled download is never half applied. Widths are checked by the
//! caller ([`super::guard`]).

use std::collections::BTreeSet;

use anyhow::{Context, anyhow, bail};
use ipnet::IpNet;

use crate::domain::Network;

/// How a feed's body is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One address or CIDR a line; `#` and `;` start comments.
    Plain,
    /// Spamhaus DROP/EDROP as JSON lines (`{"cidr": ...}`), ending with a metadata record
    /// whose `records` count is checked.
    SpamhausJson,
    /// Spamhaus DROP/EDROP text: `CIDR ; SBL id`, `;` comments.
    SpamhausText,
    /// An rbldnsd ip4set/ip4trie/ip6trie data file: entries with optional values, `!`
    /// exclusions, `$TIMESTAMP` expiry, other `$` directives and `:` default lines skipped.
    Rbldnsd,
    /// A FireHOL `.netset`/`.ipset`: one address or CIDR a line, `#` comments.
    Firehol,
}

impl Format {
    pub const NAMES: [&str; 5] = [
        "plain",
        "spamhaus-json",
        "spamhaus-text",
        "rbldnsd",
        "firehol",
    ];

    pub fn from_name(name: &str) -> Option<Format> {
        let all = [
            Format::Plain,
            Format::SpamhausJson,
            Format::SpamhausText,
            Format::Rbldnsd,
            Format::Firehol,
        ];
        Self::NAMES.iter().position(|n| *n == name).map(|i| all[i])
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// What a copy of a feed holds.
#[derive(Debug, Default, PartialEq)]
pub struct Copy {
    /// Distinct and sorted.
    pub networks: Vec<Network>,
    /// When the data stops being valid (rbldnsd's `$TIMESTAMP ... expires`), Unix seconds.
    pub expires_unix: Option<u64>,
}

/// Reads a feed's body; `now_unix` judges rbldnsd timestamps.
pub fn parse(format: Format, text: &str, now_unix: u64) -> anyhow::Result<Copy> {
    match format {
        Format::Plain => lines(text, &['#', ';']),
        Format::Firehol => lines(text, &['#']),
        Format::SpamhausText => lines(text, &[';', '#']),
        Format::SpamhausJson => spamhaus_json(text),
        Format::Rbldnsd => rbldnsd(text, now_unix),
    }
}

fn lines(text: &str, comments: &[char]) -> anyhow::Result<Copy> {
    let mut set = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split(comments).next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        set.insert(network(entry).with_context(|| format!("line {}", i + 1))?);
    }
    Ok(Copy {
        networks: set.into_iter().collect(),
        expires_unix: None,
    })
}

fn network(text: &str) -> anyhow::Result<Network> {
    text.parse::<Network>()
        .map_err(|_| anyhow!("{text:?} is not an address or a network"))
}

fn spamhaus_json(text: &str) -> anyhow::Result<Copy> {
    let mut set = BTreeSet::new();
    let mut records = None;
    let mut cidrs = 0u64;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", i + 1))?;
        if let Some(cidr) = value.get("cidr").and_then(|c| c.as_str()) {
            set.insert(network(cidr).with_context(|| format!("line {}", i + 1))?);
            cidrs += 1;
        } else if value.get("type").and_then(|t| t.as_str()) == Some("metadata") {
            records = value.get("records").and_then(|r| r.as_u64());
        } else {
            bail!("line {}: neither a `cidr` record nor the metadata", i + 1);
        }
    }
    match records {
        Some(n) if n == cidrs => {}
        Some(n) => bail!("the metadata counts {n} records, the body holds {cidrs}: truncated"),
        None => bail!("no metadata record at the end: truncated"),
    }
    Ok(Copy {
        networks: set.into_iter().collect(),
        expires_unix: None,
    })
}

fn rbldnsd(text: &str, now_unix: u64) -> anyhow::Result<Copy> {
    let mut listed = BTreeSet::new();
    let mut excluded = Vec::new();
    let mut expires_unix = None;
    for (i, line) in text.lines().enumerate() {
        let at = || format!("line {}", i + 1);
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        if let Some(directive) = line.strip_prefix('$') {
            let mut words = directive.split_whitespace();
            if words.next() == Some("TIMESTAMP") {
                let stamp = words.next().unwrap_or("-");
                let created = timestamp(stamp).with_context(at)?;
                if created.is_some_and(|c| c > now_unix + 300) {
                    bail!("{}: the data is stamped in the future ({stamp})", at());
                }
                expires_unix = match words.next() {
                    None => None,
                    Some(rel) if rel.starts_with('+') => {
                        let base = created.ok_or_else(|| {
                            anyhow!("{}: a relative expiry needs a timestamp", at())
                        })?;
                        let d = crate::domain::parse_duration(&rel[1..])
                            .map_err(|e| anyhow!("{}: {e}", at()))?;
                        Some(base + d.as_secs())
                    }
                    Some(abs) => timestamp(abs).with_context(at)?,
                };
            }
            continue;
        }
        // The entry ends at the first blank; an IPv4 entry also at ':' (its value follows).
        let token = line.split_whitespace().next().unwrap_or("");
        let entry = if token.contains('.') {
            token.split(':').next().unwrap_or("")
        } else {
            token
        };
        let (exclude, entry) = match entry.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        let nets = rbldnsd_entry(entry).with_context(at)?;
        if exclude {
            excluded.extend(nets);
        } else {
            listed.extend(nets);
        }
    }
    for x in excluded {
        subtract(&mut listed, x);
    }
    Ok(Copy {
        networks: listed.into_iter().map(Network::from_ipnet).collect(),
        expires_unix,
    })
}

/// One rbldnsd entry: an address, a CIDR, an abbreviated IPv4 network (`198.51.100` is a
/// /24), or an IPv4 range (`a.b.c.d-e.f.g.h` or `a.b.c.d-h`).
fn rbldnsd_entry(entry: &str) -> anyhow::Result<Vec<IpNet>> {
    if let Ok(net) = entry.parse::<IpNet>() {
        return Ok(vec![net.trunc()]);
    }
    if let Ok(addr) = entry.parse::<std::net::IpAddr>() {
        return Ok(vec![IpNet::from(addr)]);
    }
    if let Some((from, to)) = entry.split_once('-') {
        let from: std::net::Ipv4Addr = from
            .parse()
            .map_err(|_| anyhow!("{entry:?}: not a range"))?;
        let to: std::net::Ipv4Addr = match to.parse() {
            Ok(to) => to,
            Err(_) => {
                let last: u8 = to.parse().map_err(|_| anyhow!("{entry:?}: not a range"))?;
                let o = from.octets();
                std::net::Ipv4Addr::new(o[0], o[1], o[2], last)
            }
        };
        if to < from {
            bail!("{entry:?}: the range ends before it starts");
        }
        return Ok(ipnet::Ipv4Subnets::new(from, to, 0)
            .map(IpNet::V4)
            .collect());
    }
    let octets: Vec<&str> = entry.split('.').collect();
    if (1..=3).contains(&octets.len()) {
        let mut o = [0u8; 4];
        for (i, part) in octets.iter().enumerate() {
            o[i] = part
                .parse()
                .map_err(|_| anyhow!("{entry:?} is not an address or a network"))?;
        }
        let len = 8 * octets.len() as u8;
        return Ok(vec![IpNet::new(std::net::Ipv4Addr::from(o).into(), len)?]);
    }
    bail!("{entry:?} is not an address or a network")
}

/// `yyyy:mm:dd[:hh[:mi[:ss]]]` (':' or '-' between parts, or none) as Unix seconds; None for
/// `0` or `-` (not given).
fn timestamp(text: &str) -> anyhow::Result<Option<u64>> {
    if text == "0" || text == "-" {
        return Ok(None);
    }
    let digits: String = text.chars().filter(|c| *c != ':' && *c != '-').collect();
    let bad = || anyhow!("{text:?} is not a timestamp like 2026:11:23:10:00");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 10, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let part = |from: usize, len: usize| -> u64 {
        digits
            .get(from..from + len)
            .map_or(0, |p| p.parse().unwrap_or(0))
    };
    let (y, m, d) = (part(0, 4), part(4, 2), part(6, 2));
    let (hh, mi, ss) = (part(8, 2), part(10, 2), part(12, 2));
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    if hh > 23 || mi > 59 || ss > 59 {
        return Err(bad());
    }
    Ok(Some(
        days_from_civil(y, m, d) * 86_400 + hh * 3600 + mi * 60 + ss,
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Removes `x` from the set: listed networks inside it go; a listed network holding it is
/// replaced by the pieces around it (at most one per bit between the two lengths). Looks only
/// at the networks whose address falls inside `x`, and at one candidate holder per length, so
/// a zone's exclusions cost what they touch, not the size of the zone each.
fn subtract(set: &mut BTreeSet<IpNet>, x: IpNet) {
    let (low, high) = match x {
        IpNet::V4(v4) => (
            IpNet::new(v4.network().into(), 0),
            IpNet::new(v4.broadcast().into(), 32),
        ),
        IpNet::V6(v6) => (
            IpNet::new(v6.network().into(), 0),
            IpNet::new(v6.broadcast().into(), 128),
        ),
    };
    let (Ok(low), Ok(high)) = (low, high) else {
        return;
    };
    let inside: Vec<IpNet> = set
        .range(low..=high)
        .filter(|n| x.contains(*n))
        .copied()
        .collect();
    for n in inside {
        set.remove(&n);
    }
    let holders: Vec<IpNet> = (0..x.prefix_len())
        .filter_map(|len| IpNet::new(x.addr(), len).ok().map(|n| n.trunc()))
        .filter(|n| set.contains(n))
        .collect();
    for holder in holders {
        set.remove(&holder);
        for len in holder.prefix_len() + 1..=x.prefix_len() {
            let ancestor = IpNet::new(x.addr(), len)
                .expect("len within the family")
                .trunc();
            let parent = ancestor.supernet().expect("len > 0");
            if let Some(sibling) = parent
                .subnets(len)
                .ok()
                .and_then(|mut s| s.find(|s| *s != ancestor))
            {
                set.insert(sibling);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(copy: &Copy) -> Vec<String> {
        copy.networks.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn plain_and_firehol_read_addresses_and_networks_with_comments() {
        let text = "# a feed\n198.51.100.0/24 ; why\n203.0.113.7\n\n2001:db8:1::/48 # six\n";
        let copy = parse(Format::Plain, text, 0).unwrap();
        assert_eq!(
            nets(&copy),
            ["198.51.100.0/24", "203.0.113.7/32", "2001:db8:1::/48"]
        );
        let firehol = "#\n# Entries: 2\n#\n198.51.100.0/25\n203.0.113.9\n";
        assert_eq!(
            nets(&parse(Format::Firehol, firehol, 0).unwrap()),
            ["198.51.100.0/25", "203.0.113.9/32"]
        );
        let err = parse(Format::Firehol, "198.51.100.0/24\n198.51.10", 0).unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }

    #[test]
    fn spamhaus_text_reads_entries_before_the_sbl_id() {
        let text = "; Spamhaus DROP List 2026/11/23\n; Last-Modified: x\n198.51.100.0/24 ; SBL1\n203.0.113.0/25 ; SBL2\n";
        assert_eq!(
            nets(&parse(Format::SpamhausText, text, 0).unwrap()),
            ["198.51.100.0/24", "203.0.113.0/25"]
        );
    }

    #[test]
    fn spamhaus_json_checks_the_record_count() {
        let body = "{\"cidr\":\"198.51.100.0/24\",\"sblid\":\"SBL1\",\"rir\":\"arin\"}\n\
                    {\"cidr\":\"2001:db8:66::/48\",\"sblid\":\"SBL2\",\"rir\":\"ripencc\"}\n";
        let whole = format!(
            "{body}{{\"type\":\"metadata\",\"timestamp\":1,\"size\":2,\"records\":2,\"copyright\":\"x\"}}\n"
        );
        assert_eq!(
            nets(&parse(Format::SpamhausJson, &whole, 0).unwrap()),
            ["198.51.100.0/24", "2001:db8:66::/48"]
        );
        let short = format!("{body}{{\"type\":\"metadata\",\"records\":3}}\n");
        assert!(parse(Format::SpamhausJson, &short, 0).is_err());
        assert!(parse(Format::SpamhausJson, body, 0).is_err(), "no metadata");
        assert!(parse(Format::SpamhausJson, "{\"cidr\":\"198.51.1", 0).is_err());
    }

    #[test]
    fn rbldnsd_reads_values_ranges_exclusions_and_directives() {
        let text = "$SOA 3600 ns.example. root.example. 0 600 300 86400 300\n\
                    $TTL 300\n\
                    :127.0.0.2:Listed, see http://example/?$\n\
                    198.51.100.0/24 :127.0.0.3:worse\n\
                    !198.51.100.7\n\
                    203.0.113.10-203.0.113.13\n\
                    203.0.113.20-21\n\
                    198.51.101\n\
                    2001:db8:66::/48\n\
                    2001:db8:77::1 listed\n";
        let copy = parse(Format::Rbldnsd, text, 0).unwrap();
        let got = nets(&copy);
        for want in [
            "198.51.100.0/30",
            "198.51.100.4/31",
            "198.51.100.6/32",
            "198.51.100.8/29",
            "198.51.100.128/25",
            "203.0.113.10/31",
            "203.0.113.12/31",
            "203.0.113.20/31",
            "198.51.101.0/24",
            "2001:db8:66::/48",
            "2001:db8:77::1/128",
        ] {
            assert!(
                got.contains(&want.to_string()),
                "{want} missing from {got:?}"
            );
        }
        assert!(!got.contains(&"198.51.100.0/24".to_string()));
        assert!(!got.iter().any(|n| n == "198.51.100.7/32"));
        assert_eq!(copy.expires_unix, None);
    }

    #[test]
    fn rbldnsd_timestamps_set_expiry_and_refuse_the_future() {
        let now = days_from_civil(2026, 11, 23) * 86_400;
        let copy = parse(
            Format::Rbldnsd,
            "$TIMESTAMP 2026:11:22 +2d\n198.51.100.1\n",
            now,
        )
        .unwrap();
        assert_eq!(copy.expires_unix, Some(now + 86_400));
        let copy = parse(
            Format::Rbldnsd,
            "$TIMESTAMP 20261122 2026-11-24-12\n198.51.100.1\n",
            now,
        )
        .unwrap();
        assert_eq!(copy.expires_unix, Some(now + 86_400 + 12 * 3600));
        assert!(
            parse(
                Format::Rbldnsd,
                "$TIMESTAMP 2027:01:01\n198.51.100.1\n",
                now
            )
            .is_err()
        );
        assert!(parse(Format::Rbldnsd, "$TIMESTAMP tomorrow\n", now).is_err());
    }

    #[test]
    fn exclusions_wider_than_entries_remove_them() {
        let copy = parse(
            Format::Rbldnsd,
            "198.51.100.8/29\n198.51.100.64/26\n!198.51.100.0/25\n",
            0,
        )
        .unwrap();
        assert!(copy.networks.is_empty(), "{:?}", nets(&copy));
        // IPv6 too, and an exclusion inside two nested listed networks.
        let copy = parse(
            Format::Rbldnsd,
            "2001:db8:66::/48\n2001:db8::/32\n!2001:db8:66::1\n",
            0,
        )
        .unwrap();
        let got = nets(&copy);
        assert!(
            !got.iter()
                .any(|n| n == "2001:db8:66::1/128" || n == "2001:db8::/32"),
            "{got:?}"
        );
        assert!(got.contains(&"2001:db8:66::/128".to_string()), "{got:?}");
        assert!(got.contains(&"2001:db8:8000::/33".to_string()), "{got:?}");
    }
}
