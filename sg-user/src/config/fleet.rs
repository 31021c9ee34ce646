//! `[fleet]`: the Redis a fleet of hosts shares, and this host's name in it.

use serde::Deserialize;

use super::error::{key_bail, key_error};
use crate::{
    domain::{PrefixLengths, parse_duration},
    fleet::{Settings, wire::valid_host},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    url: String,
    name: String,
    #[serde(default = "default_key_prefix")]
    key_prefix: String,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default)]
    password_file: Option<std::path::PathBuf>,
}

fn default_key_prefix() -> String {
    "slowgate".into()
}
fn default_timeout() -> String {
    "50ms".into()
}

/// The password file must not be readable by others: a password in a world-readable file is
/// no secret.
fn read_password(path: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| key_error!("fleet.password_file".to_string(), "{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o007 != 0 {
        key_bail!(
            "fleet.password_file".to_string(),
            "{} is readable by others: chmod 640 it (owner root, group slowgate)",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| key_error!("fleet.password_file".to_string(), "{}: {e}", path.display()))?;
    let password = text.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() || password.contains(['\n', '\r']) {
        key_bail!(
            "fleet.password_file".to_string(),
            "{} must hold the password on one line",
            path.display()
        );
    }
    Ok(password)
}

pub(super) fn fleet(
    raw: Option<&RawFleet>,
    lengths: PrefixLengths,
    half_life: std::time::Duration,
) -> anyhow::Result<Option<Settings>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if !(raw.url.starts_with("redis://") || raw.url.starts_with("rediss://")) {
        // Not the URL itself: it may hold a password.
        key_bail!(
            "fleet.url".to_string(),
            "give redis://HOST:PORT/DB or rediss://HOST:PORT/DB"
        );
    }
    let mut info: redis::ConnectionInfo = raw.url.parse().map_err(|_| {
        key_error!(
            "fleet.url".to_string(),
            "not a redis:// or rediss:// URL (HOST:PORT/DB, user:password@ for ACLs)"
        )
    })?;
    if let Some(path) = &raw.password_file {
        info.redis.password = Some(read_password(path)?);
    }
    if !valid_host(&raw.name) {
        key_bail!(
            "fleet.name".to_string(),
            "{:?}: 1 to 64 letters, digits, '-', '_' or '.', unique in the fleet",
            raw.name
        );
    }
    if !valid_host(&raw.key_prefix) {
        key_bail!(
            "fleet.key_prefix".to_string(),
            "{:?}: 1 to 64 letters, digits, '-', '_' or '.'",
            raw.key_prefix
        );
    }
    let timeout =
        parse_duration(&raw.timeout).map_err(|e| key_error!("fleet.timeout".to_string(), "{e}"))?;
    if timeout.is_zero() || timeout > std::time::Duration::from_secs(10) {
        key_bail!("fleet.timeout".to_string(), "between 1ms and 10s");
    }
    Ok(Some(Settings {
        info,
        name: raw.name.clone(),
        key_prefix: raw.key_prefix.clone(),
        timeout,
        lengths,
        half_life,
    }))
}
