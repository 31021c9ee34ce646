//! The config file: raw serde structs (`RawConfig`, defaults in one place) turned by
//! [`Config::load`] into validated runtime settings. Errors name the file, the line and the key.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use serde::Deserialize;
use sg_common::{Bucket, service};

use crate::{
    domain::{Limit, Network, Rate, parse_duration},
    engine::{EngineConfig, LevelRow, Weights},
    parsers::Format,
};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/slowgate/slowgate.toml";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/slowgate";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Vec<String>,
    #[serde(default = "default_attach_mode")]
    attach_mode: String,
    #[serde(default = "default_pin_dir")]
    pin_dir: PathBuf,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    ports: RawPorts,
    #[serde(default)]
    prefix: RawPrefix,
    #[serde(default)]
    ceiling: RawCeiling,
    #[serde(default)]
    enforcement: RawEnforcement,
    #[serde(default)]
    capacity: RawCapacity,
    #[serde(default)]
    lists: RawLists,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    points: RawPoints,
    #[serde(default = "default_levels")]
    levels: Vec<RawLevel>,
    #[serde(default)]
    countries: RawCountries,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    control: RawControl,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    #[serde(default = "default_control_socket")]
    socket: PathBuf,
    /// A group whose members may use the socket besides root; empty = root only.
    #[serde(default)]
    group: String,
}

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/slowgate/control.sock";

fn default_control_socket() -> PathBuf {
    DEFAULT_CONTROL_SOCKET.into()
}

impl Default for RawControl {
    fn default() -> Self {
        RawControl {
            socket: default_control_socket(),
            group: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    /// `ADDR:PORT` of the Prometheus endpoint; empty switches it off.
    #[serde(default = "default_metrics")]
    listen: String,
}

fn default_metrics() -> String {
    "127.0.0.1:9465".into()
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: default_metrics(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    /// A log file to follow.
    path: Option<PathBuf>,
    /// journald units to follow (`postfix@-.service`).
    #[serde(default)]
    journald_units: Vec<String>,
    /// journald syslog identifiers to follow (`postfix/smtpd`).
    #[serde(default)]
    journald_identifiers: Vec<String>,
    #[serde(default = "default_format")]
    format: String,
}

fn default_format() -> String {
    "auto".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoints {
    #[serde(default = "default_half_life")]
    half_life: String,
    #[serde(default = "default_down_fraction")]
    step_down_below: f64,
    #[serde(default = "default_min_hold")]
    min_hold: String,
    #[serde(default = "default_max_tracked")]
    max_tracked: usize,
    #[serde(default = "default_limit_ttl")]
    limit_ttl: String,
    #[serde(default)]
    weights: Weights,
}

fn default_half_life() -> String {
    "30m".into()
}
fn default_down_fraction() -> f64 {
    0.8
}
fn default_min_hold() -> String {
    "5m".into()
}
fn default_max_tracked() -> usize {
    1_000_000
}
fn default_limit_ttl() -> String {
    "1h".into()
}

impl Default for RawPoints {
    fn default() -> Self {
        RawPoints {
            half_life: default_half_life(),
            step_down_below: default_down_fraction(),
            min_hold: default_min_hold(),
            max_tracked: default_max_tracked(),
            limit_ttl: default_limit_ttl(),
            weights: Weights::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLevel {
    points: f64,
    rate: Option<String>,
    burst: Option<u32>,
    #[serde(default)]
    block: bool,
}

fn default_levels() -> Vec<RawLevel> {
    let rate = |points: f64, rate: &str, burst: u32| RawLevel {
        points,
        rate: Some(rate.into()),
        burst: Some(burst),
        block: false,
    };
    vec![
        rate(10.0, "30/min", 10),
        rate(25.0, "6/min", 3),
        rate(50.0, "1/min", 1),
        RawLevel {
            points: 100.0,
            rate: None,
            burst: None,
            block: true,
        },
    ]
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCountries {
    database: Option<PathBuf>,
    #[serde(default)]
    multipliers: BTreeMap<String, f64>,
    #[serde(default)]
    levels: BTreeMap<String, Vec<RawLevel>>,
}

fn default_attach_mode() -> String {
    "auto".into()
}

fn default_pin_dir() -> PathBuf {
    DEFAULT_PIN_DIR.into()
}

fn default_state_dir() -> PathBuf {
    crate::store::DEFAULT_STATE_DIR.into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPorts {
    smtp: Vec<u16>,
    submission: Vec<u16>,
    pop3: Vec<u16>,
    imap: Vec<u16>,
}

impl Default for RawPorts {
    fn default() -> Self {
        RawPorts {
            smtp: vec![25],
            submission: vec![465, 587],
            pop3: vec![110, 995],
            imap: vec![143, 993],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrefix {
    ipv4: u8,
    ipv6: u8,
    #[serde(default = "default_network_v4")]
    network_ipv4: u8,
    #[serde(default = "default_network_v6")]
    network_ipv6: u8,
    #[serde(default = "default_network_after")]
    network_after: usize,
}

fn default_network_v4() -> u8 {
    16
}
fn default_network_v6() -> u8 {
    48
}
fn default_network_after() -> usize {
    3
}

impl Default for RawPrefix {
    fn default() -> Self {
        RawPrefix {
            ipv4: 24,
            ipv6: 64,
            network_ipv4: default_network_v4(),
            network_ipv6: default_network_v6(),
            network_after: default_network_after(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBucket {
    rate: String,
    burst: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCeiling {
    source: Option<RawBucket>,
    prefix: Option<RawBucket>,
}

impl Default for RawCeiling {
    fn default() -> Self {
        RawCeiling {
            source: Some(RawBucket {
                rate: "5/s".into(),
                burst: 20,
            }),
            prefix: Some(RawBucket {
                rate: "20/s".into(),
                burst: 60,
            }),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnforcement {
    #[serde(default)]
    drop_established_from_blocked: bool,
    #[serde(default = "default_event_sample")]
    drop_event_sample: u32,
    #[serde(default = "default_sweep")]
    sweep_interval: String,
}

fn default_event_sample() -> u32 {
    16
}

fn default_sweep() -> String {
    "30s".into()
}

impl Default for RawEnforcement {
    fn default() -> Self {
        RawEnforcement {
            drop_established_from_blocked: false,
            drop_event_sample: default_event_sample(),
            sweep_interval: default_sweep(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapacity {
    lists: u32,
    policies: u32,
    sources: u32,
    prefixes: u32,
}

impl Default for RawCapacity {
    fn default() -> Self {
        use sg_common::capacity;
        RawCapacity {
            lists: capacity::LIST,
            policies: capacity::POLICY,
            sources: capacity::SOURCES,
            prefixes: capacity::PREFIXES,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLists {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    limit: Vec<RawLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    network: String,
    rate: Option<String>,
    burst: Option<u32>,
    #[serde(default)]
    block: bool,
}

/// How to attach XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode where the driver supports it, else generic (skb) mode.
    Auto,
    Native,
    Skb,
}

/// Validated runtime settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub interfaces: Vec<String>,
    pub attach_mode: AttachMode,
    pub pin_dir: PathBuf,
    /// Where points, levels and CLI-added list entries are kept across restarts.
    pub state_dir: PathBuf,
    /// Destination port -> service.
    pub ports: BTreeMap<u16, u8>,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub source_ceiling: Option<(Rate, u32)>,
    pub prefix_ceiling: Option<(Rate, u32)>,
    pub drop_established_from_blocked: bool,
    pub drop_event_sample: u32,
    pub sweep_interval: Duration,
    pub capacity: Capacity,
    pub allow: Vec<Network>,
    pub deny: Vec<Network>,
    pub limits: Vec<(Network, Limit)>,
    pub sources: Vec<Source>,
    pub engine: EngineConfig,
    /// The GeoIP2/GeoLite2 country database, if any.
    pub geoip: Option<PathBuf>,
    /// Lifetime of a limit the engine writes; refreshed while the level lasts, so a limit
    /// outlives a dead daemon by this much at most.
    pub limit_ttl: Duration,
    /// Where the Prometheus endpoint listens; None = off.
    pub metrics: Option<std::net::SocketAddr>,
    pub control_socket: PathBuf,
    /// The group allowed on the control socket besides root (a name), if any.
    pub control_group: Option<String>,
}

/// Where the daemon reads what the mail software says.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    File {
        path: PathBuf,
        format: Format,
    },
    Journald {
        units: Vec<String>,
        identifiers: Vec<String>,
        format: Format,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub lists: u32,
    pub policies: u32,
    pub sources: u32,
    pub prefixes: u32,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config {}", path.display()))?;
        Config::parse(&text, path)
    }

    /// Validates `text` as the contents of `path` (named in every error).
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Config> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (at, quoted) = e
                .span()
                .map(|span| {
                    let line = text[..span.start].matches('\n').count() + 1;
                    // The line itself names the key even when serde's message does not.
                    let source = text.lines().nth(line - 1).unwrap_or("").trim();
                    (format!(":{line}"), format!(" (in `{source}`)"))
                })
                .unwrap_or_default();
            anyhow::anyhow!("{}{at}: {}{quoted}", path.display(), e.message())
        })?;
        validate(raw, path).map_err(|e| {
            // Name the line of the key the error is about, as for syntax errors.
            let message = format!("{e:#}");
            let line = message
                .split_once("key `")
                .and_then(|(_, rest)| rest.split_once('`'))
                .and_then(|(key, _)| line_of(text, key));
            match line {
                Some(line) => anyhow::anyhow!("{}:{line}: {message}", path.display()),
                None => anyhow::anyhow!("{}: {message}", path.display()),
            }
        })
    }

    /// The kernel's view of the ceilings and prefixes.
    pub fn kernel_config(&self) -> sg_common::Config {
        let bucket = |c: Option<(Rate, u32)>| match c {
            Some((rate, burst)) => Bucket {
                interval_ns: rate.interval.as_nanos() as u64,
                burst: u64::from(burst),
            },
            None => Bucket::default(),
        };
        let v4_len = sg_common::V4_MAPPED_BITS + u32::from(self.prefix_v4);
        let v6_len = u32::from(self.prefix_v6);
        let net_v4_len = sg_common::V4_MAPPED_BITS + u32::from(self.engine.network_v4);
        let net_v6_len = u32::from(self.engine.network_v6);
        sg_common::Config {
            source_ceiling: bucket(self.source_ceiling),
            prefix_ceiling: bucket(self.prefix_ceiling),
            prefix_mask_v4: sg_common::prefix_mask(v4_len),
            prefix_mask_v6: sg_common::prefix_mask(v6_len),
            prefix_len_v4: v4_len,
            prefix_len_v6: v6_len,
            network_mask_v4: sg_common::prefix_mask(net_v4_len),
            network_mask_v6: sg_common::prefix_mask(net_v6_len),
            network_len_v4: net_v4_len,
            network_len_v6: net_v6_len,
            flags: if self.drop_established_from_blocked {
                sg_common::flag::DROP_ESTABLISHED_FROM_BLOCKED
            } else {
                0
            },
            event_sample: self.drop_event_sample,
            // Filled in by `Maps::write_config`, which knows the kernel and the maps.
            ..sg_common::Config::default()
        }
    }
}

fn validate(raw: RawConfig, path: &Path) -> anyhow::Result<Config> {
    if raw.interfaces.is_empty() {
        bail!("key `interfaces`: name at least one interface to protect, like [\"eth0\"]");
    }
    for name in &raw.interfaces {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            bail!("key `interfaces`: `{name}` is not an interface name");
        }
    }
    let attach_mode = match raw.attach_mode.as_str() {
        "auto" => AttachMode::Auto,
        "native" => AttachMode::Native,
        "skb" => AttachMode::Skb,
        other => bail!("key `attach_mode`: `{other}` is not one of auto, native, skb"),
    };
    let mut ports = BTreeMap::new();
    for (name, list, svc) in [
        ("smtp", &raw.ports.smtp, service::SMTP),
        ("submission", &raw.ports.submission, service::SUBMISSION),
        ("pop3", &raw.ports.pop3, service::POP3),
        ("imap", &raw.ports.imap, service::IMAP),
    ] {
        for &port in list {
            if port == 0 {
                bail!("key `ports.{name}`: port 0 is not a port");
            }
            if let Some(prev) = ports.insert(port, svc) {
                bail!(
                    "key `ports.{name}`: port {port} is already listed under `ports.{}`",
                    service::NAMES[prev as usize]
                );
            }
        }
    }
    if !(8..=32).contains(&raw.prefix.ipv4) {
        bail!(
            "key `prefix.ipv4`: {} is not a prefix length between 8 and 32",
            raw.prefix.ipv4
        );
    }
    if !(16..=128).contains(&raw.prefix.ipv6) {
        bail!(
            "key `prefix.ipv6`: {} is not a prefix length between 16 and 128",
            raw.prefix.ipv6
        );
    }
    let bucket = |key: &str, b: Option<RawBucket>| -> anyhow::Result<Option<(Rate, u32)>> {
        match b {
            None => Ok(None),
            Some(b) => {
                let rate: Rate = b
                    .rate
                    .parse()
                    .with_context(|| format!("key `{key}.rate`"))?;
                check_burst(&format!("{key}.burst"), b.burst)?;
                Ok(Some((rate, b.burst)))
            }
        }
    };
    let source_ceiling = bucket("ceiling.source", raw.ceiling.source)?;
    let prefix_ceiling = bucket("ceiling.prefix", raw.ceiling.prefix)?;
    let sweep_interval = parse_duration(&raw.enforcement.sweep_interval)
        .context("key `enforcement.sweep_interval`")?;
    within(
        "enforcement.sweep_interval",
        sweep_interval,
        Duration::from_secs(1),
        DAY,
    )?;
    let c = raw.capacity;
    for (key, value) in [
        ("capacity.lists", c.lists),
        ("capacity.policies", c.policies),
        ("capacity.sources", c.sources),
        ("capacity.prefixes", c.prefixes),
    ] {
        if !(16..=16_777_216).contains(&value) {
            bail!("key `{key}`: {value} is outside 16..=16777216");
        }
        if key.ends_with("sources") || key.ends_with("prefixes") {
            // Slot tables are indexed by masking a hash.
            if !value.is_power_of_two() {
                bail!(
                    "key `{key}`: {value} is not a power of two (try {})",
                    value.next_power_of_two()
                );
            }
        }
    }
    if !(8..=raw.prefix.ipv4).contains(&raw.prefix.network_ipv4) {
        bail!(
            "key `prefix.network_ipv4`: {} is not a prefix length between 8 and prefix.ipv4",
            raw.prefix.network_ipv4
        );
    }
    if !(16..=raw.prefix.ipv6).contains(&raw.prefix.network_ipv6) {
        bail!(
            "key `prefix.network_ipv6`: {} is not a prefix length between 16 and prefix.ipv6",
            raw.prefix.network_ipv6
        );
    }
    let mut sources = Vec::new();
    for (i, s) in raw.sources.iter().enumerate() {
        let key = format!("sources[{i}]");
        let format = <Format as clap::ValueEnum>::from_str(&s.format, true)
            .map_err(|_| anyhow::anyhow!("key `{key}.format`: unknown format {:?} (known: auto, postfix, sendmail, qmail, exim, dovecot, rspamd)", s.format))?;
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
                bail!("key `{key}`: give either `path`, or `journald_units`/`journald_identifiers`")
            }
        });
    }
    let p = &raw.points;
    let half_life = parse_duration(&p.half_life).context("key `points.half_life`")?;
    within(
        "points.half_life",
        half_life,
        Duration::from_secs(1),
        365 * DAY,
    )?;
    if !(p.step_down_below > 0.0 && p.step_down_below < 1.0) {
        bail!(
            "key `points.step_down_below`: {} is not a fraction between 0 and 1 (a sender \
             must be able to come down)",
            p.step_down_below
        );
    }
    if !(16..=MAX_TRACKED).contains(&p.max_tracked) {
        bail!(
            "key `points.max_tracked`: {} is outside 16..={MAX_TRACKED}",
            p.max_tracked
        );
    }
    let limit_ttl = parse_duration(&p.limit_ttl).context("key `points.limit_ttl`")?;
    within(
        "points.limit_ttl",
        limit_ttl,
        Duration::from_secs(10),
        30 * DAY,
    )?;
    let min_hold = parse_duration(&p.min_hold).context("key `points.min_hold`")?;
    within("points.min_hold", min_hold, Duration::ZERO, 30 * DAY)?;
    for (name, weight) in p.weights.named() {
        if !(weight.is_finite() && (0.0..=MAX_WEIGHT).contains(&weight)) {
            bail!(
                "key `points.weights.{name}`: {weight} is not a weight between 0 and {MAX_WEIGHT}"
            );
        }
    }
    let mut country_multipliers = std::collections::HashMap::new();
    for (code, m) in &raw.countries.multipliers {
        let key = format!("countries.multipliers.{code}");
        if !(m.is_finite() && (0.0..=MAX_MULTIPLIER).contains(m)) {
            bail!("key `{key}`: {m} is not a multiplier between 0 and {MAX_MULTIPLIER}");
        }
        country_multipliers.insert(country_code(&key, code)?, *m);
    }
    let mut country_levels = std::collections::HashMap::new();
    for (code, rows) in &raw.countries.levels {
        let key = format!("countries.levels.{code}");
        country_levels.insert(country_code(&key, code)?, level_table(&key, rows)?);
    }
    if (!country_levels.is_empty() || !country_multipliers.is_empty())
        && raw.countries.database.is_none()
    {
        bail!("key `countries.database`: per-country settings need a GeoIP2 country database");
    }
    let engine = EngineConfig {
        weights: p.weights.clone(),
        half_life,
        levels: level_table("levels", &raw.levels)?,
        country_levels,
        country_multipliers,
        down_fraction: p.step_down_below,
        min_hold,
        prefix_v4: raw.prefix.ipv4,
        prefix_v6: raw.prefix.ipv6,
        network_v4: raw.prefix.network_ipv4,
        network_v6: raw.prefix.network_ipv6,
        network_after: raw.prefix.network_after,
        max_tracked: p.max_tracked,
    };
    let metrics =
        match raw.metrics.listen.as_str() {
            "" => None,
            text => Some(text.parse().map_err(|_| {
                anyhow::anyhow!("key `metrics.listen`: {text:?} is not ADDRESS:PORT")
            })?),
        };
    let networks = |key: &str, list: &[String]| -> anyhow::Result<Vec<Network>> {
        list.iter()
            .map(|n| n.parse::<Network>().with_context(|| format!("key `{key}`")))
            .collect()
    };
    let allow = networks("lists.allow", &raw.lists.allow)?;
    let deny = networks("lists.deny", &raw.lists.deny)?;
    let mut limits = Vec::new();
    for l in raw.lists.limit {
        let net: Network = l.network.parse().context("key `lists.limit.network`")?;
        let limit = match (l.block, l.rate, l.burst) {
            (true, None, None) => Limit::Block,
            (false, Some(rate), Some(burst)) => {
                check_burst("lists.limit.burst", burst)?;
                Limit::Rate {
                    rate: rate.parse().context("key `lists.limit.rate`")?,
                    burst,
                }
            }
            _ => bail!(
                "key `lists.limit` for {net}: give either `rate` and `burst`, or `block = true`"
            ),
        };
        limits.push((net, limit));
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
        drop_established_from_blocked: raw.enforcement.drop_established_from_blocked,
        drop_event_sample: raw.enforcement.drop_event_sample,
        sweep_interval,
        capacity: Capacity {
            lists: c.lists,
            policies: c.policies,
            sources: c.sources,
            prefixes: c.prefixes,
        },
        allow,
        deny,
        limits,
        sources,
        engine,
        geoip: raw.countries.database,
        limit_ttl,
        metrics,
        control_socket: raw.control.socket,
        control_group: (!raw.control.group.is_empty()).then_some(raw.control.group),
    })
}

/// The line (1-based) where a dotted key is set: `prefix.ipv4`, `levels[1].points`,
/// `countries.multipliers.DE`, `sources[0].format`. Best effort: None when not found.
fn line_of(text: &str, key: &str) -> Option<usize> {
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
                    rate: rate.parse().with_context(|| format!("key `{at}.rate`"))?,
                    burst,
                }
            }
            _ => bail!("key `{at}`: give either `rate` and `burst`, or `block = true`"),
        };
        if !(row.points > 0.0 && row.points <= MAX_POINTS) {
            bail!(
                "key `{at}.points`: {} is not a number of points between 0 and {MAX_POINTS}",
                row.points
            );
        }
        if let Some(prev) = table.last().map(|r: &LevelRow| r.points)
            && row.points <= prev
        {
            bail!(
                "key `{at}.points`: levels must climb ({} after {prev})",
                row.points
            );
        }
        table.push(LevelRow {
            points: row.points,
            limit,
        });
    }
    if table.is_empty() {
        bail!("key `{key}`: at least one level is needed");
    }
    Ok(table)
}

fn country_code(key: &str, code: &str) -> anyhow::Result<[u8; 2]> {
    let b = code.as_bytes();
    if b.len() != 2 || !b.iter().all(u8::is_ascii_uppercase) {
        bail!("key `{key}`: {code:?} is not an ISO 3166 country code like \"DE\"");
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
fn within(key: &str, value: Duration, min: Duration, max: Duration) -> anyhow::Result<()> {
    if value < min || value > max {
        bail!(
            "key `{key}`: {} is outside {}..={}",
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
        bail!("key `{key}`: burst {burst} is outside 1..=65535");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(text, Path::new("/etc/slowgate/test.toml"))
    }

    #[test]
    fn the_shipped_default_config_is_accepted() {
        let text = include_str!("../../config/slowgate.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.interfaces, ["eth0"]);
        assert_eq!(c.ports.len(), 7);
        assert_eq!(c.ports[&587], service::SUBMISSION);
    }

    #[test]
    fn one_line_config_gets_the_defaults() {
        let c = parse("interfaces = [\"eth0\"]").unwrap();
        assert_eq!(c.attach_mode, AttachMode::Auto);
        assert_eq!(c.prefix_v4, 24);
        assert_eq!(c.prefix_v6, 64);
        assert!(c.source_ceiling.is_some());
        let k = c.kernel_config();
        assert_eq!(k.prefix_len_v4, 120);
        assert_eq!(k.source_ceiling.interval_ns, 200_000_000);
    }

    #[test]
    fn unknown_keys_are_errors_naming_file_line_and_key() {
        let err = parse("interfaces = [\"eth0\"]\n\n[ports]\nsmpt = [25]\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("/etc/slowgate/test.toml:4"), "{msg}");
        assert!(msg.contains("smpt"), "{msg}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("attach_mode = \"turbo\"", "attach_mode"),
            (
                "[ceiling.source]\nrate = \"fast\"\nburst = 3",
                "ceiling.source.rate",
            ),
            (
                "[ceiling.source]\nrate = \"1/s\"\nburst = 0",
                "ceiling.source.burst",
            ),
            ("[prefix]\nipv4 = 40\nipv6 = 64", "prefix.ipv4"),
            ("[lists]\ndeny = [\"300.1.1.1\"]", "lists.deny"),
            (
                "[lists]\nlimit = [{ network = \"203.0.113.0/24\" }]",
                "lists.limit",
            ),
            (
                "[ports]\nsmtp = [25]\nsubmission = [25]\npop3 = []\nimap = []",
                "ports.submission",
            ),
            ("[points]\nhalf_life = \"soon\"", "points.half_life"),
            ("[points.weights]\nrbl = \"x\"", "rbl"),
            ("[points.weights]\nspam = 1.0", "spam"),
            (
                "[[levels]]\npoints = 20\nblock = true\n[[levels]]\npoints = 10\nblock = true",
                "levels[1].points",
            ),
            ("[[levels]]\npoints = 20\nrate = \"1/s\"", "levels[0]"),
            ("[[sources]]\nformat = \"auto\"", "sources[0]"),
            (
                "[[sources]]\npath = \"/var/log/x\"\nformat = \"lotus\"",
                "sources[0].format",
            ),
            (
                "[countries]\ndatabase = \"/x.mmdb\"\nmultipliers = { Germany = 2.0 }",
                "countries.multipliers.Germany",
            ),
            (
                "[countries]\nmultipliers = { DE = 2.0 }",
                "countries.database",
            ),
            // Numbers that used to pass and wedge or crash the daemon later.
            (
                "[enforcement]\nsweep_interval = \"0s\"",
                "enforcement.sweep_interval",
            ),
            ("[points.weights]\nrbl = nan", "points.weights.rbl"),
            (
                "[points.weights]\nauth_failure = inf",
                "points.weights.auth_failure",
            ),
            ("[points.weights]\nbounce = -1.0", "points.weights.bounce"),
            ("[points]\nstep_down_below = 0.0", "points.step_down_below"),
            ("[points]\nstep_down_below = nan", "points.step_down_below"),
            ("[points]\nhalf_life = \"0s\"", "points.half_life"),
            ("[points]\nhalf_life = \"100000d\"", "points.half_life"),
            ("[points]\nmin_hold = \"1000000d\"", "points.min_hold"),
            ("[points]\nlimit_ttl = \"99999999d\"", "points.limit_ttl"),
            (
                "[points]\nmax_tracked = 9223372036854775807",
                "points.max_tracked",
            ),
            ("[[levels]]\npoints = inf\nblock = true", "levels[0].points"),
            ("[[levels]]\npoints = nan\nblock = true", "levels[0].points"),
            (
                "[countries]\ndatabase = \"/x.mmdb\"\nmultipliers = { DE = inf }",
                "countries.multipliers.DE",
            ),
        ];
        for (body, key) in cases {
            let text = format!("interfaces = [\"eth0\"]\n{body}\n");
            let msg = format!("{:#}", parse(&text).unwrap_err());
            assert!(msg.contains(key), "{key}: {msg}");
            assert!(msg.contains("test.toml:"), "{msg}");
            // The line named is the one that sets the key (or its table).
            let line: usize = msg
                .split_once("test.toml:")
                .and_then(|(_, r)| r.split(':').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no line number in: {msg}"));
            let named = text.lines().nth(line - 1).unwrap_or("");
            let last = key.rsplit('.').next().unwrap_or(key);
            let last = last.split('[').next().unwrap_or(last);
            assert!(
                named.contains(last) || named.starts_with('['),
                "{key}: line {line} is `{named}`: {msg}"
            );
        }
    }

    #[test]
    fn missing_interfaces_is_an_error() {
        assert!(parse("attach_mode = \"skb\"").is_err());
        assert!(parse("interfaces = []").is_err());
    }
}
