//! The config file as serde reads it: one struct per table, defaults in one place.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use super::DEFAULT_PIN_DIR;
use crate::{domain::PrefixLengths, engine::Weights};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) interfaces: Vec<String>,
    #[serde(default = "default_attach_mode")]
    pub(super) attach_mode: String,
    #[serde(default = "default_pin_dir")]
    pub(super) pin_dir: PathBuf,
    #[serde(default = "default_state_dir")]
    pub(super) state_dir: PathBuf,
    /// How much of what the logs said while the daemon was down is read at start.
    #[serde(default = "default_max_catch_up")]
    pub(super) max_catch_up: String,
    #[serde(default = "default_max_catch_up_lines")]
    pub(super) max_catch_up_lines: u64,
    #[serde(default)]
    pub(super) ports: RawPorts,
    #[serde(default)]
    pub(super) prefix: RawPrefix,
    #[serde(default)]
    pub(super) ceiling: RawCeiling,
    #[serde(default)]
    pub(super) enforcement: RawEnforcement,
    #[serde(default)]
    pub(super) capacity: RawCapacity,
    #[serde(default)]
    pub(super) lists: RawLists,
    #[serde(default)]
    pub(super) sources: Vec<RawSource>,
    #[serde(default)]
    pub(super) points: RawPoints,
    #[serde(default = "default_levels")]
    pub(super) levels: Vec<RawLevel>,
    #[serde(default)]
    pub(super) countries: RawCountries,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) control: RawControl,
    #[serde(default)]
    pub(super) dnsbl: Vec<RawDnsbl>,
    #[serde(default)]
    pub(super) dns: RawDns,
    #[serde(default)]
    pub(super) feeds: Vec<super::feeds::RawFeed>,
    #[serde(default)]
    pub(super) fleet: Option<super::fleet::RawFleet>,
    #[serde(default)]
    pub(super) policy: Option<super::policy::RawPolicy>,
    #[serde(default)]
    pub(super) users: super::policy::RawUsers,
    #[serde(default)]
    pub(super) log: RawLog,
}

/// `[[dnsbl]]`: a zone and the points of its answers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDnsbl {
    pub(super) zone: String,
    #[serde(default)]
    pub(super) weights: std::collections::BTreeMap<String, f64>,
}

/// `[dns]`: how DNSBL zones are asked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    /// `ADDRESS[:PORT]`; default: the first `nameserver` of /etc/resolv.conf.
    #[serde(default)]
    pub(super) resolver: String,
    #[serde(default = "default_dns_timeout")]
    pub(super) timeout: String,
    #[serde(default = "default_dns_qps")]
    pub(super) queries_per_second: u32,
    #[serde(default = "default_dns_cache")]
    pub(super) cache: usize,
}

pub(super) fn default_dns_timeout() -> String {
    "2s".into()
}
pub(super) fn default_dns_qps() -> u32 {
    50
}
pub(super) fn default_dns_cache() -> usize {
    100_000
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            resolver: String::new(),
            timeout: default_dns_timeout(),
            queries_per_second: default_dns_qps(),
            cache: default_dns_cache(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    #[serde(default = "default_control_socket")]
    pub(super) socket: PathBuf,
    /// A group whose members may use the socket besides root; empty = root only.
    #[serde(default)]
    pub(super) group: String,
}

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/slowgate/control.sock";

pub(super) fn default_control_socket() -> PathBuf {
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
pub(super) struct RawMetrics {
    /// `ADDR:PORT` of the Prometheus endpoint; empty switches it off.
    #[serde(default = "default_metrics")]
    pub(super) listen: String,
}

pub(super) fn default_metrics() -> String {
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
pub(super) struct RawSource {
    /// A log file to follow.
    pub(super) path: Option<PathBuf>,
    /// journald units to follow (`postfix@-.service`).
    #[serde(default)]
    pub(super) journald_units: Vec<String>,
    /// journald syslog identifiers to follow (`postfix/smtpd`).
    #[serde(default)]
    pub(super) journald_identifiers: Vec<String>,
    #[serde(default = "default_format")]
    pub(super) format: String,
}

pub(super) fn default_format() -> String {
    "auto".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPoints {
    #[serde(default = "default_half_life")]
    pub(super) half_life: String,
    #[serde(default = "default_down_fraction")]
    pub(super) step_down_below: f64,
    #[serde(default = "default_min_hold")]
    pub(super) min_hold: String,
    /// Longest a sender is held at its level by the kernel's refusals of its connections.
    #[serde(default = "default_refusal_hold_max")]
    pub(super) refusal_hold_max: String,
    #[serde(default = "default_max_tracked")]
    pub(super) max_tracked: usize,
    #[serde(default = "default_limit_ttl")]
    pub(super) limit_ttl: String,
    #[serde(default)]
    pub(super) weights: Weights,
}

pub(super) fn default_half_life() -> String {
    "30m".into()
}
pub(super) fn default_down_fraction() -> f64 {
    0.8
}
pub(super) fn default_refusal_hold_max() -> String {
    "24h".into()
}
pub(super) fn default_min_hold() -> String {
    "5m".into()
}
pub(super) fn default_max_tracked() -> usize {
    1_000_000
}
pub(super) fn default_limit_ttl() -> String {
    "1h".into()
}

impl Default for RawPoints {
    fn default() -> Self {
        RawPoints {
            half_life: default_half_life(),
            step_down_below: default_down_fraction(),
            min_hold: default_min_hold(),
            refusal_hold_max: default_refusal_hold_max(),
            max_tracked: default_max_tracked(),
            limit_ttl: default_limit_ttl(),
            weights: Weights::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLevel {
    pub(super) points: f64,
    pub(super) rate: Option<String>,
    pub(super) burst: Option<u32>,
    #[serde(default)]
    pub(super) block: bool,
}

pub(super) fn default_levels() -> Vec<RawLevel> {
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
pub(super) struct RawCountries {
    pub(super) database: Option<PathBuf>,
    #[serde(default)]
    pub(super) multipliers: BTreeMap<String, f64>,
    #[serde(default)]
    pub(super) levels: BTreeMap<String, Vec<RawLevel>>,
}

pub(super) fn default_attach_mode() -> String {
    "auto".into()
}

pub(super) fn default_pin_dir() -> PathBuf {
    DEFAULT_PIN_DIR.into()
}

pub(super) fn default_max_catch_up() -> String {
    "1h".into()
}

pub(super) fn default_max_catch_up_lines() -> u64 {
    1_000_000
}

pub(super) fn default_state_dir() -> PathBuf {
    crate::config::DEFAULT_STATE_DIR.into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPorts {
    pub(super) smtp: Vec<u16>,
    pub(super) submission: Vec<u16>,
    pub(super) pop3: Vec<u16>,
    pub(super) imap: Vec<u16>,
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
pub(super) struct RawPrefix {
    pub(super) ipv4: u8,
    pub(super) ipv6: u8,
    #[serde(default = "default_network_v4")]
    pub(super) network_ipv4: u8,
    #[serde(default = "default_network_v6")]
    pub(super) network_ipv6: u8,
    #[serde(default = "default_network_after")]
    pub(super) network_after: usize,
    #[serde(default = "default_min_sources_v4")]
    pub(super) min_sources_ipv4: u32,
    #[serde(default = "default_min_sources_v6")]
    pub(super) min_sources_ipv6: u32,
}

pub(super) fn default_min_sources_v4() -> u32 {
    3
}
pub(super) fn default_min_sources_v6() -> u32 {
    1
}

pub(super) fn default_network_v4() -> u8 {
    PrefixLengths::DEFAULT.network_v4
}
pub(super) fn default_network_v6() -> u8 {
    PrefixLengths::DEFAULT.network_v6
}
pub(super) fn default_network_after() -> usize {
    3
}

impl Default for RawPrefix {
    fn default() -> Self {
        RawPrefix {
            ipv4: PrefixLengths::DEFAULT.v4,
            ipv6: PrefixLengths::DEFAULT.v6,
            network_ipv4: default_network_v4(),
            network_ipv6: default_network_v6(),
            network_after: default_network_after(),
            min_sources_ipv4: default_min_sources_v4(),
            min_sources_ipv6: default_min_sources_v6(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBucket {
    pub(super) rate: String,
    pub(super) burst: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCeiling {
    pub(super) source: Option<RawBucket>,
    pub(super) prefix: Option<RawBucket>,
    #[serde(default)]
    pub(super) concurrent: Option<RawConcurrent>,
}

/// `[ceiling.concurrent]`: established connections one source or prefix may hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConcurrent {
    #[serde(default)]
    pub(super) source: u32,
    #[serde(default)]
    pub(super) prefix: u32,
    /// The cap of a source or prefix a level limits, when lower.
    #[serde(default)]
    pub(super) limited: u32,
    /// The cgroup v2 directory the counting program attaches to; default: the root of the
    /// cgroup2 hierarchy.
    #[serde(default)]
    pub(super) cgroup: Option<PathBuf>,
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
            concurrent: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnforcement {
    #[serde(default)]
    pub(super) drop_established_from_blocked: bool,
    #[serde(default = "default_event_sample")]
    pub(super) drop_event_sample: u32,
    #[serde(default = "default_sweep")]
    pub(super) sweep_interval: String,
}

pub(super) fn default_event_sample() -> u32 {
    16
}

pub(super) fn default_sweep() -> String {
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
pub(super) struct RawCapacity {
    pub(super) lists: u32,
    pub(super) policies: u32,
    pub(super) sources: u32,
    pub(super) prefixes: u32,
    #[serde(default = "default_connections")]
    pub(super) connections: u32,
}

fn default_connections() -> u32 {
    sg_common::capacity::CONNECTIONS
}

impl Default for RawCapacity {
    fn default() -> Self {
        use sg_common::capacity;
        RawCapacity {
            lists: capacity::LIST,
            policies: capacity::POLICY,
            sources: capacity::SOURCES,
            prefixes: capacity::PREFIXES,
            connections: capacity::CONNECTIONS,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLists {
    #[serde(default)]
    pub(super) allow: Vec<String>,
    #[serde(default)]
    pub(super) deny: Vec<String>,
    #[serde(default)]
    pub(super) limit: Vec<RawLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    pub(super) network: String,
    pub(super) rate: Option<String>,
    pub(super) burst: Option<u32>,
    #[serde(default)]
    pub(super) block: bool,
}

/// `[log]`: which events the daemon writes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    /// tracing's EnvFilter syntax (`info`, `info,slowgate::policy=debug`).
    pub(super) filter: Option<String>,
    /// Kernel diagnostics through aya-log (switched by `slowgate reload`).
    #[serde(default)]
    pub(super) kernel: bool,
}
