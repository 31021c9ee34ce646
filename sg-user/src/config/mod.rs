//! The config file: raw serde structs (`raw.rs`, defaults in one place) turned by
//! [`Config::load`] into validated runtime settings (`validate.rs`, a function per section).
//! Errors name the file, the line and the key.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use sg_common::Bucket;

pub use crate::{
    enforcer::{AttachMode, Capacity},
    sources::Source,
};

mod ceilings;
pub mod error;
mod feeds;
mod fleet;
mod policy;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

pub use raw::DEFAULT_CONTROL_SOCKET;
use raw::RawConfig;
pub use validate::check_burst;
use validate::{line_of, validate};

use crate::{
    domain::{Limit, Network, Rate},
    engine::EngineConfig,
};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/slowgate/slowgate.toml";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/slowgate";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/slowgate";
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
    /// Concurrent-connection caps (`[ceiling.concurrent]`); None: no caps.
    pub concurrent: Option<crate::enforcer::ConcurrentCaps>,
    pub drop_established_from_blocked: bool,
    pub drop_event_sample: u32,
    pub sweep_interval: Duration,
    pub capacity: Capacity,
    pub allow: Vec<Network>,
    pub deny: Vec<Network>,
    pub limits: Vec<(Network, Limit)>,
    pub sources: Vec<Source>,
    /// How much of what was logged while the daemon was down is read at start.
    pub catch_up: crate::tail::CatchUp,
    /// DNSBL zones new client addresses are looked up in; None without `[[dnsbl]]`.
    pub dnsbl: Option<crate::dnsbl::Settings>,
    /// Reputation feeds (`[[feeds]]`).
    pub feeds: Vec<crate::feeds::Feed>,
    /// Fleet mode (`[fleet]`); None: this host alone.
    pub fleet: Option<crate::fleet::Settings>,
    /// The Postfix policy service (`[policy]`, `[users]`); None: not offered.
    pub policy: Option<crate::policy::Settings>,
    pub engine: EngineConfig,
    /// The GeoIP2/GeoLite2 country database, if any.
    pub geoip: Option<PathBuf>,
    /// Lifetime of a limit the engine writes; refreshed while the level lasts, so a limit
    /// outlives a dead daemon by this much at most.
    pub limit_ttl: Duration,
    /// Where the Prometheus endpoint listens; None = off.
    pub metrics: Option<std::net::SocketAddr>,
    /// `[log] filter` (the environment's `SLOWGATE_LOG` or `RUST_LOG` wins).
    pub log_filter: Option<String>,
    /// `[log] kernel`: the XDP program's diagnostics in the daemon's log.
    pub kernel_debug: bool,
    pub control_socket: PathBuf,
    /// The group allowed on the control socket besides root (a name), if any.
    pub control_group: Option<String>,
}

/// Reads the GeoIP2 database at `path` for the engine (which opens no file itself).
pub fn read_geo(path: &Path) -> anyhow::Result<crate::engine::Geo> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("read the GeoIP database {}", path.display()))?;
    crate::engine::Geo::from_bytes(bytes)
        .with_context(|| format!("the GeoIP database {}", path.display()))
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
            let line = e
                .chain()
                .find_map(|cause| cause.downcast_ref::<error::ConfigError>())
                .and_then(|error| line_of(text, &error.key));
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
            } | if self.concurrent.is_some() {
                sg_common::flag::CONCURRENT_CAPS
            } else {
                0
            } | if self.kernel_debug {
                sg_common::flag::KERNEL_DEBUG
            } else {
                0
            },
            event_sample: self.drop_event_sample,
            concurrent_source: self.concurrent.as_ref().map_or(0, |c| c.source),
            concurrent_prefix: self.concurrent.as_ref().map_or(0, |c| c.prefix),
            concurrent_limited: self.concurrent.as_ref().map_or(0, |c| c.limited),
            // Filled in by `Maps::write_config`, which knows the kernel and the maps.
            ..sg_common::Config::default()
        }
    }
}
