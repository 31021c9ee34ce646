//! Raw config to runtime settings: every number checked, errors naming the key.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::Duration,
};

use sg_common::service;

use super::error::{key_bail, key_error};
use super::{
    AttachMode, Capacity, Config, Source,
    raw::{
        RawCapacity, RawConfig, RawCountries, RawDns, RawDnsbl, RawEnforcement, RawLevel, RawLists,
        RawMetrics, RawPoints, RawPorts, RawPrefix, RawSource,
    },
};
use crate::{
    domain::{Limit, Network, parse_duration},
    engine::{EngineConfig, LevelRow},
    parsers::Format,
};

pub(super) fn validate(raw: RawConfig, path: &Path) -> anyhow::Result<Config> {
    interfaces(&raw.interfaces)?;
    let attach_mode = attach_mode(&raw.attach_mode)?;
    let ports = ports(&raw.ports)?;
    prefix(&raw.prefix)?;
    let concurrent = super::ceilings::concurrent(raw.ceiling.concurrent.as_ref())?;
    let (source_ceiling, prefix_ceiling) = super::ceilings::ceilings(raw.ceiling)?;
    let sweep_interval = enforcement(&raw.enforcement)?;
    let capacity = capacity(&raw.capacity)?;
    let sources = sources(&raw.sources)?;
    let (engine, limit_ttl) = points(&raw.points, &raw.countries, &raw.levels, &raw.prefix)?;
    let metrics = metrics(&raw.metrics)?;
    let (allow, deny, limits) = lists(raw.lists)?;
    let catch_up = catch_up(&raw.max_catch_up, raw.max_catch_up_lines)?;
    let dnsbl = dnsbl(&raw.dnsbl, &raw.dns)?;
    let feeds = super::feeds::feeds(&raw.feeds)?;
    let fleet = super::fleet::fleet(raw.fleet.as_ref(), engine.lengths(), engine.half_life)?;
    let policy = super::policy::policy(raw.policy.as_ref(), &raw.users)?;
    if let Some(filter) = &raw.log.filter {
        crate::logging::valid_filter(filter)
            .map_err(|e| key_error!("log.filter".to_string(), "{filter:?}: {e}"))?;
    }
    Ok(Config {
        path: path.to_path_buf(),
        interfaces: raw.interfaces,
        attach_mode,
        pin_dir: raw.pin_dir,
        state_dir: raw.state_dir,
        ports,
        prefix_v4: raw.prefix.ipv4,
        prefix_v6: raw.prefix.ipv6,
        source_ceiling,
        prefix_ceiling,
        concurrent,
        drop_established_from_blocked: raw.enforcement.drop_established_from_blocked,
        drop_event_sample: raw.enforcement.drop_event_sample,
        sweep_interval,
        capacity,
        allow,
        deny,
        limits,
        sources,
        catch_up,
        dnsbl,
        feeds,
        fleet,
        policy,
        engine,
        geoip: raw.countries.database,
        limit_ttl,
        metrics,
        control_socket: raw.control.socket,
        control_group: (!raw.control.group.is_empty()).then_some(raw.control.group),
        log_filter: raw.log.filter,
        kernel_debug: raw.log.kernel,
    })
}

/// `[[dnsbl]]` and `[dns]`: None without zones.
fn dnsbl(zones: &[RawDnsbl], dns: &RawDns) -> anyhow::Result<Option<crate::dnsbl::Settings>> {
    if zones.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (i, z) in zones.iter().enumerate() {
        let name = z.zone.trim_end_matches('.');
        let hostname = !name.is_empty()
            && name.len() <= 200
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !hostname {
            key_bail!(format!("dnsbl[{i}].zone"), "{:?} is not a DNS zone", z.zone);
        }
        let mut weights = Vec::new();
        for (answer, weight) in &z.weights {
            let addr: std::net::Ipv4Addr = answer.parse().map_err(|_| {
                key_error!(
                    format!("dnsbl[{i}].weights"),
                    "{answer:?} is not an answer address like \"127.0.0.2\""
                )
            })?;
            if !(weight.is_finite() && (0.0..=MAX_WEIGHT).contains(weight)) {
                key_bail!(
                    format!("dnsbl[{i}].weights"),
                    "{weight} is not a weight between 0 and {MAX_WEIGHT}"
                );
            }
            weights.push((addr, *weight));
        }
        if weights.is_empty() {
            key_bail!(
                format!("dnsbl[{i}].weights"),
                "name the points of each answer, like {{ \"127.0.0.2\" = 5 }}"
            );
        }
        out.push(crate::dnsbl::Zone {
            name: name.to_string(),
            weights,
        });
    }
    let resolver = match dns.resolver.as_str() {
        "" => system_resolver().ok_or_else(|| {
            key_error!(
                format!("dns.resolver"),
                "no nameserver in /etc/resolv.conf: set ADDRESS[:PORT]"
            )
        })?,
        text => text
            .parse::<std::net::SocketAddr>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(|a| (a, 53).into()))
            .map_err(|_| key_error!(format!("dns.resolver"), "{text:?} is not ADDRESS[:PORT]"))?,
    };
    let timeout = duration(
        "dns.timeout",
        &dns.timeout,
        Duration::from_millis(100),
        Duration::from_secs(30),
    )?;
    if !(1..=10_000).contains(&dns.queries_per_second) {
        key_bail!(
            format!("dns.queries_per_second"),
            "{} is not between 1 and 10000",
            dns.queries_per_second
        );
    }
    if !(1..=10_000_000).contains(&dns.cache) {
        key_bail!(
            format!("dns.cache"),
            "{} is not between 1 and 10000000",
            dns.cache
        );
    }
    Ok(Some(crate::dnsbl::Settings {
        zones: out,
        resolver,
        timeout,
        queries_per_second: dns.queries_per_second,
        cache: dns.cache,
    }))
}

/// The first `nameserver` of /etc/resolv.conf, port 53.
fn system_resolver() -> Option<std::net::SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let addr = l.trim().strip_prefix("nameserver")?.trim();
        let addr: std::net::IpAddr = addr.split('%').next()?.parse().ok()?;
        Some((addr, 53).into())
    })
}

/// `max_catch_up`, `max_catch_up_lines`: the backlog read at start.
fn catch_up(age: &str, lines: u64) -> anyhow::Result<crate::tail::CatchUp> {
    let age = duration(
        "max_catch_up",
        age,
        Duration::ZERO,
        Duration::from_secs(30 * 86_400),
    )?;
    if lines > 100_000_000 {
        key_bail!(
            format!("max_catch_up_lines"),
            "{lines} is more than 100000000 lines"
        );
    }
    Ok(crate::tail::CatchUp {
        max_lines: lines,
        max_age_s: age.as_secs(),
    })
}

/// `interfaces`: at least one, each a possible interface name.
fn interfaces(interfaces: &[String]) -> anyhow::Result<()> {
    if interfaces.is_empty() {
        key_bail!(
            format!("interfaces"),
            "name at least one interface to protect, like [\"eth0\"]"
        );
    }
    for name in interfaces {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            key_bail!(format!("interfaces"), "`{name}` is not an interface name");
        }
    }
    Ok(())
}

fn attach_mode(text: &str) -> anyhow::Result<AttachMode> {
    Ok(match text {
        "auto" => AttachMode::Auto,
        "native" => AttachMode::Native,
        "skb" => AttachMode::Skb,
        other => key_bail!(
            format!("attach_mode"),
            "`{other}` is not one of auto, native, skb"
        ),
    })
}

/// `[ports]`: port -> service, no port twice.
fn ports(raw: &RawPorts) -> anyhow::Result<BTreeMap<u16, u8>> {
    let mut ports = BTreeMap::new();
    for (name, list, svc) in [
        ("smtp", &raw.smtp, service::SMTP),
        ("submission", &raw.submission, service::SUBMISSION),
        ("pop3", &raw.pop3, service::POP3),
        ("imap", &raw.imap, service::IMAP),
    ] {
        for &port in list {
            if port == 0 {
                key_bail!(format!("ports.{name}"), "port 0 is not a port");
            }
            if let Some(prev) = ports.insert(port, svc) {
                key_bail!(
                    format!("ports.{name}"),
                    "port {port} is already listed under `ports.{}`",
                    service::NAMES[prev as usize]
                );
            }
        }
    }
    Ok(ports)
}

/// `[prefix]`: the lengths senders are tracked at.
fn prefix(raw: &RawPrefix) -> anyhow::Result<()> {
    if !(8..=32).contains(&raw.ipv4) {
        key_bail!(
            format!("prefix.ipv4"),
            "{} is not a prefix length between 8 and 32",
            raw.ipv4
        );
    }
    if !(16..=128).contains(&raw.ipv6) {
        key_bail!(
            format!("prefix.ipv6"),
            "{} is not a prefix length between 16 and 128",
            raw.ipv6
        );
    }
    if !(8..=raw.ipv4).contains(&raw.network_ipv4) {
        key_bail!(
            format!("prefix.network_ipv4"),
            "{} is not a prefix length between 8 and prefix.ipv4",
            raw.network_ipv4
        );
    }
    if !(16..=raw.ipv6).contains(&raw.network_ipv6) {
        key_bail!(
            format!("prefix.network_ipv6"),
            "{} is not a prefix length between 16 and prefix.ipv6",
            raw.network_ipv6
        );
    }
    for (key, value) in [
        ("min_sources_ipv4", raw.min_sources_ipv4),
        ("min_sources_ipv6", raw.min_sources_ipv6),
    ] {
        // The engine counts up to 64 distinct addresses per prefix.
        if !(1..=32).contains(&value) {
            key_bail!(
                format!("prefix.{key}"),
                "{value} is not a number of addresses between 1 and 32"
            );
        }
    }
    Ok(())
}

/// `[enforcement]`: the sweep interval (the rest needs no check).
fn enforcement(raw: &RawEnforcement) -> anyhow::Result<Duration> {
    let sweep_interval = duration(
        "enforcement.sweep_interval",
        &raw.sweep_interval,
        Duration::from_secs(1),
        DAY,
    )?;
    Ok(sweep_interval)
}

/// `[capacity]`: map sizes.
fn capacity(c: &RawCapacity) -> anyhow::Result<Capacity> {
    for (key, value) in [
        ("capacity.lists", c.lists),
        ("capacity.policies", c.policies),
        ("capacity.sources", c.sources),
        ("capacity.prefixes", c.prefixes),
        ("capacity.connections", c.connections),
    ] {
        if !(16..=16_777_216).contains(&value) {
            key_bail!(format!("{key}"), "{value} is outside 16..=16777216");
        }
        if key.ends_with("sources") || key.ends_with("prefixes") {
            // Slot tables are indexed by masking a hash.
            if !value.is_power_of_two() {
                key_bail!(
                    format!("{key}"),
                    "{value} is not a power of two (try {})",
                    value.next_power_of_two()
                );
            }
        }
    }
    Ok(Capacity {
        lists: c.lists,
        policies: c.policies,
        sources: c.sources,
        prefixes: c.prefixes,
        connections: c.connections,
    })
}

/// `[[sources]]`: a file or journald, and a format.
fn sources(raw: &[RawSource]) -> anyhow::Result<Vec<Source>> {
    let mut sources = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let key = format!("sources[{i}]");
        let format = <Format as clap::ValueEnum>::from_str(&s.format, true)
            .map_err(|_| key_error!(format!("{key}.format"), "unknown format {:?} (known: auto, postfix, sendmail, qmail, exim, dovecot, rspamd)", s.format))?;
        let journald = !s.journald_units.is_empty() || !s.journald_identifiers.is_empty();
        sources.push(match (&s.path, journald) {
            (Some(path), false) => Source::File {
                path: path.clone(),
                format,
            },
            (None, true) => Source::Journald {
                units: s.journald_units.clone(),
                identifiers: s.journald_identifiers.clone(),
                format,
            },
            _ => {
                key_bail!(
                    format!("{key}"),
                    "give either `path`, or `journald_units`/`journald_identifiers`"
                )
            }
        });
    }
    Ok(sources)
}

/// `[points]`, `[[levels]]` and `[countries]`: the engine's settings, and the limits' TTL.
fn points(
    p: &RawPoints,
    countries: &RawCountries,
    levels: &[RawLevel],
    prefix: &RawPrefix,
) -> anyhow::Result<(EngineConfig, Duration)> {
    let half_life = duration(
        "points.half_life",
        &p.half_life,
        Duration::from_secs(1),
        365 * DAY,
    )?;
    if !(p.step_down_below > 0.0 && p.step_down_below < 1.0) {
        key_bail!(
            format!("points.step_down_below"),
            "{} is not a fraction between 0 and 1 (a sender \
             must be able to come down)",
            p.step_down_below
        );
    }
    if !(16..=MAX_TRACKED).contains(&p.max_tracked) {
        key_bail!(
            format!("points.max_tracked"),
            "{} is outside 16..={MAX_TRACKED}",
            p.max_tracked
        );
    }
    let limit_ttl = duration(
        "points.limit_ttl",
        &p.limit_ttl,
        Duration::from_secs(10),
        30 * DAY,
    )?;
    let min_hold = duration("points.min_hold", &p.min_hold, Duration::ZERO, 30 * DAY)?;
    let refusal_hold_max = duration(
        "points.refusal_hold_max",
        &p.refusal_hold_max,
        Duration::ZERO,
        30 * DAY,
    )?;
    for (name, weight) in p.weights.named() {
        if !(weight.is_finite() && (0.0..=MAX_WEIGHT).contains(&weight)) {
            key_bail!(
                format!("points.weights.{name}"),
                "{weight} is not a weight between 0 and {MAX_WEIGHT}"
            );
        }
    }
    let (country_levels, country_multipliers) = country_settings(countries)?;
    let engine = EngineConfig {
        weights: p.weights.clone(),
        half_life,
        levels: level_table("levels", levels)?,
        country_levels,
        country_multipliers,
        down_fraction: p.step_down_below,
        min_hold,
        refusal_hold_max,
        prefix_v4: prefix.ipv4,
        prefix_v6: prefix.ipv6,
        network_v4: prefix.network_ipv4,
        network_v6: prefix.network_ipv6,
        network_after: prefix.network_after,
        min_sources_v4: prefix.min_sources_ipv4,
        min_sources_v6: prefix.min_sources_ipv6,
        max_tracked: p.max_tracked,
    };
    Ok((engine, limit_ttl))
}

/// `[countries]`: per-country level tables and multipliers (they need the database).
#[allow(clippy::type_complexity)]
fn country_settings(
    countries: &RawCountries,
) -> anyhow::Result<(HashMap<[u8; 2], Vec<LevelRow>>, HashMap<[u8; 2], f64>)> {
    let mut country_multipliers = HashMap::new();
    for (code, m) in &countries.multipliers {
        let key = format!("countries.multipliers.{code}");
        if !(m.is_finite() && (0.0..=MAX_MULTIPLIER).contains(m)) {
            key_bail!(
                format!("{key}"),
                "{m} is not a multiplier between 0 and {MAX_MULTIPLIER}"
            );
        }
        country_multipliers.insert(country_code(&key, code)?, *m);
    }
    let mut country_levels = HashMap::new();
    for (code, rows) in &countries.levels {
        let key = format!("countries.levels.{code}");
        country_levels.insert(country_code(&key, code)?, level_table(&key, rows)?);
    }
    if (!country_levels.is_empty() || !country_multipliers.is_empty())
        && countries.database.is_none()
    {
        key_bail!(
            format!("countries.database"),
            "per-country settings need a GeoIP2 country database"
        );
    }
    Ok((country_levels, country_multipliers))
}

/// `[metrics]`: where the endpoint listens, if anywhere.
fn metrics(raw: &RawMetrics) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let metrics =
        match raw.listen.as_str() {
            "" => None,
            text => Some(text.parse().map_err(|_| {
                key_error!(format!("metrics.listen"), "{text:?} is not ADDRESS:PORT")
            })?),
        };
    Ok(metrics)
}

/// `[lists]`: allow, deny and limit entries.
#[allow(clippy::type_complexity)]
fn lists(raw: RawLists) -> anyhow::Result<(Vec<Network>, Vec<Network>, Vec<(Network, Limit)>)> {
    let networks = |key: &str, list: &[String]| -> anyhow::Result<Vec<Network>> {
        list.iter()
            .map(|n| {
                n.parse::<Network>()
                    .map_err(|e| key_error!(format!("{key}"), "{e:#}"))
            })
            .collect()
    };
    let allow = networks("lists.allow", &raw.allow)?;
    let deny = networks("lists.deny", &raw.deny)?;
    let mut limits = Vec::new();
    for l in raw.limit {
        let net: Network = l
            .network
            .parse()
            .map_err(|e| key_error!("lists.limit.network".to_string(), "{e:#}"))?;
        let limit = match (l.block, l.rate, l.burst) {
            (true, None, None) => Limit::Block,
            (false, Some(rate), Some(burst)) => {
                check_burst("lists.limit.burst", burst)?;
                Limit::Rate {
                    rate: rate
                        .parse()
                        .map_err(|e| key_error!("lists.limit.rate".to_string(), "{e:#}"))?,
                    burst,
                }
            }
            _ => key_bail!(
                "lists.limit".to_string(),
                "for {net}: give either `rate` and `burst`, or `block = true`"
            ),
        };
        limits.push((net, limit));
    }
    Ok((allow, deny, limits))
}

/// The line (1-based) where a dotted key is set: `prefix.ipv4`, `levels[1].points`,
/// `countries.multipliers.DE`, `sources[0].format`. Best effort: None when not found.
pub(super) fn line_of(text: &str, key: &str) -> Option<usize> {
    // "levels[1].points" -> table "levels", the 2nd of them, field "points";
    // "prefix.ipv4" -> table "prefix", field "ipv4"; "attach_mode" -> top level.
    let (table, index, field) = match key.split_once('[') {
        Some((table, rest)) => {
            let (n, after) = rest.split_once(']')?;
            (
                table,
                n.parse::<usize>().ok(),
                after.trim_start_matches('.'),
            )
        }
        None => match key.rsplit_once('.') {
            Some((table, field)) => (table, None, field),
            None => ("", None, key),
        },
    };
    let header = |line: &str| -> Option<String> {
        let l = line.trim();
        l.strip_prefix("[[")
            .and_then(|r| r.strip_suffix("]]"))
            .or_else(|| l.strip_prefix('[').and_then(|r| r.strip_suffix(']')))
            .map(|h| h.trim().to_string())
    };
    // A key that names a table (`ceiling.concurrent`): its header.
    if let Some(i) = text.lines().position(|l| header(l).as_deref() == Some(key)) {
        return Some(i + 1);
    }
    let mut current = String::new();
    let mut seen = 0usize;
    for (i, line) in text.lines().enumerate() {
        if let Some(h) = header(line) {
            if h == table {
                seen += 1;
                if field.is_empty() && index.is_none_or(|n| seen == n + 1) {
                    return Some(i + 1);
                }
            }
            current = h;
            continue;
        }
        let in_table = current == table && index.is_none_or(|n| seen == n + 1);
        let sets = |name: &str| {
            line.trim_start()
                .strip_prefix(name)
                .is_some_and(|r| r.trim_start().starts_with('='))
        };
        if in_table && !field.is_empty() && sets(field) {
            return Some(i + 1);
        }
        // Set inline in the parent table: `[countries]` + `multipliers = { DE = 2.0 }`.
        if let Some((parent, leaf)) = table.rsplit_once('.')
            && current == parent
            && sets(leaf)
        {
            return Some(i + 1);
        }
    }
    // A key that is missing: the line of its table.
    text.lines()
        .position(|l| header(l).as_deref() == Some(table) && !table.is_empty())
        .map(|i| i + 1)
}

fn level_table(key: &str, rows: &[RawLevel]) -> anyhow::Result<Vec<LevelRow>> {
    let mut table = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let limit = match (row.block, &row.rate, row.burst) {
            (true, None, None) => Limit::Block,
            (false, Some(rate), Some(burst)) => {
                check_burst(&format!("{at}.burst"), burst)?;
                Limit::Rate {
                    rate: rate
                        .parse()
                        .map_err(|e| key_error!(format!("{at}.rate"), "{e:#}"))?,
                    burst,
                }
            }
            _ => key_bail!(
                format!("{at}"),
                "give either `rate` and `burst`, or `block = true`"
            ),
        };
        if !(row.points > 0.0 && row.points <= MAX_POINTS) {
            key_bail!(
                format!("{at}.points"),
                "{} is not a number of points between 0 and {MAX_POINTS}",
                row.points
            );
        }
        if let Some(prev) = table.last().map(|r: &LevelRow| r.points)
            && row.points <= prev
        {
            key_bail!(
                format!("{at}.points"),
                "levels must climb ({} after {prev})",
                row.points
            );
        }
        table.push(LevelRow {
            points: row.points,
            limit,
        });
    }
    if table.is_empty() {
        key_bail!(format!("{key}"), "at least one level is needed");
    }
    Ok(table)
}

fn country_code(key: &str, code: &str) -> anyhow::Result<[u8; 2]> {
    let b = code.as_bytes();
    if b.len() != 2 || !b.iter().all(u8::is_ascii_uppercase) {
        key_bail!(
            format!("{key}"),
            "{code:?} is not an ISO 3166 country code like \"DE\""
        );
    }
    Ok([b[0], b[1]])
}

const DAY: Duration = Duration::from_secs(86_400);
/// Bounds of the numbers a config may hold: beyond them a value is a typo, and some would
/// overflow or wedge the daemon later (a zero sweep interval, an infinite weight).
const MAX_TRACKED: usize = 100_000_000;
const MAX_WEIGHT: f64 = 1e6;
const MAX_MULTIPLIER: f64 = 1e3;
const MAX_POINTS: f64 = 1e12;

/// Refuses a duration outside `min..=max`, naming the key.
/// A duration from the config, between `min` and `max`.
fn duration(key: &str, text: &str, min: Duration, max: Duration) -> anyhow::Result<Duration> {
    let value = parse_duration(text).map_err(|e| key_error!(key.to_string(), "{e:#}"))?;
    within(key, value, min, max)?;
    Ok(value)
}

fn within(key: &str, value: Duration, min: Duration, max: Duration) -> anyhow::Result<()> {
    if value < min || value > max {
        key_bail!(
            format!("{key}"),
            "{} is outside {}..={}",
            crate::domain::format_duration(value),
            crate::domain::format_duration(min),
            crate::domain::format_duration(max)
        );
    }
    Ok(())
}

/// The kernel clamps bursts to 65535 (sg-ebpf bucket.rs); refuse what it would change.
pub fn check_burst(key: &str, burst: u32) -> anyhow::Result<()> {
    if !(1..=65_535).contains(&burst) {
        key_bail!(format!("{key}"), "burst {burst} is outside 1..=65535");
    }
    Ok(())
}
