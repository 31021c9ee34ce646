//! `[policy]` (where Postfix asks) and `[users]` (the per-user buckets).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::error::{key_bail, key_error};
use crate::{
    domain::{Rate, parse_duration},
    policy::{
        Listen, Settings,
        bucket::Shape,
        dovecot,
        quota::{self, UserLimits},
    },
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    /// Postfix's policy delegation protocol.
    listen: Option<String>,
    /// The milter.
    milter: Option<String>,
    /// Dovecot's authentication policy (HTTP), HOST:PORT.
    dovecot: Option<String>,
    /// A file holding the header Dovecot sends (`auth_policy_server_api_header`).
    dovecot_api_header_file: Option<std::path::PathBuf>,
    #[serde(default = "default_tarpit")]
    tarpit: String,
    #[serde(default = "default_login_failures")]
    login_failures: String,
    #[serde(default = "default_idle")]
    idle: String,
}

fn default_tarpit() -> String {
    "3s".into()
}
fn default_login_failures() -> String {
    "10/h".into()
}

fn default_idle() -> String {
    "5m".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUsers {
    #[serde(default = "default_messages")]
    messages: String,
    #[serde(default = "default_recipients")]
    recipients: String,
    #[serde(default = "default_defer")]
    defer: String,
    block: Option<String>,
    #[serde(default = "default_tighten")]
    tighten: f64,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
    #[serde(default)]
    #[serde(rename = "override")]
    overrides: BTreeMap<String, RawOverride>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOverride {
    messages: Option<String>,
    recipients: Option<String>,
}

fn default_messages() -> String {
    "100/h".into()
}
fn default_recipients() -> String {
    "500/h".into()
}
fn default_defer() -> String {
    "451 4.7.1 Sending rate exceeded, try again later".into()
}
fn default_max_keys() -> usize {
    100_000
}
fn default_tighten() -> f64 {
    0.5
}

impl Default for RawUsers {
    fn default() -> Self {
        RawUsers {
            messages: default_messages(),
            recipients: default_recipients(),
            defer: default_defer(),
            block: None,
            tighten: default_tighten(),
            max_keys: default_max_keys(),
            overrides: BTreeMap::new(),
        }
    }
}

/// A rate as a bucket: its burst is what it allows in one of its units (`100/h`: 100).
fn shape(key: &str, text: &str) -> anyhow::Result<Shape> {
    let rate: Rate = text
        .parse()
        .map_err(|e| key_error!(key.to_string(), "{e}"))?;
    let (count, _) = text.split_once('/').unwrap_or(("1", ""));
    let capacity = count.trim().parse::<f64>().unwrap_or(1.0).clamp(1.0, 1e9) as u32;
    Ok(Shape { rate, capacity })
}

pub(super) fn policy(
    raw: Option<&RawPolicy>,
    users: &RawUsers,
) -> anyhow::Result<Option<Settings>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let listen = raw
        .listen
        .as_deref()
        .map(|l| listen_at("policy.listen", l))
        .transpose()?;
    let milter = raw
        .milter
        .as_deref()
        .map(|l| listen_at("policy.milter", l))
        .transpose()?;
    let dovecot = match &raw.dovecot {
        Some(at) => Some(dovecot(raw, at)?),
        None => None,
    };
    if listen.is_none() && milter.is_none() && dovecot.is_none() {
        key_bail!(
            "policy".to_string(),
            "`listen` (Postfix), `milter` or `dovecot`: at least one front end"
        );
    }
    let idle =
        parse_duration(&raw.idle).map_err(|e| key_error!("policy.idle".to_string(), "{e}"))?;
    let defaults = UserLimits {
        messages: shape("users.messages", &users.messages)?,
        recipients: shape("users.recipients", &users.recipients)?,
    };
    if !users.defer.starts_with('4')
        || users.defer.len() > 200
        || users.defer.contains(['\n', '\r'])
    {
        key_bail!(
            "users.defer".to_string(),
            "a temporary SMTP reply on one line, like \"451 4.7.1 ...\""
        );
    }
    if let Some(block) = &users.block
        && (!block.starts_with('5') || block.len() > 200 || block.contains(['\n', '\r']))
    {
        key_bail!(
            "users.block".to_string(),
            "a permanent SMTP reply on one line, like \"554 5.7.1 ...\""
        );
    }
    if !(users.tighten > 0.0 && users.tighten <= 1.0) {
        key_bail!(
            "users.tighten".to_string(),
            "a factor above 0 and at most 1 (each level of the user multiplies its buckets by it)"
        );
    }
    let mut overrides = std::collections::HashMap::new();
    for (who, o) in &users.overrides {
        let key = |k: &str| format!("users.override.\"{who}\".{k}");
        let limits = UserLimits {
            messages: match &o.messages {
                Some(m) => shape(&key("messages"), m)?,
                None => defaults.messages,
            },
            recipients: match &o.recipients {
                Some(r) => shape(&key("recipients"), r)?,
                None => defaults.recipients,
            },
        };
        overrides.insert(who.trim().to_lowercase(), limits);
    }
    Ok(Some(Settings {
        listen,
        milter,
        dovecot,
        idle,
        quotas: quota::Settings {
            defaults,
            overrides,
            defer: users.defer.clone(),
            block: users.block.clone(),
            tighten: users.tighten,
            max_keys: users.max_keys.clamp(16, 10_000_000),
        },
    }))
}

/// `unix:/PATH` or `HOST:PORT`.
fn listen_at(key: &str, text: &str) -> anyhow::Result<Listen> {
    Ok(match text.strip_prefix("unix:") {
        Some(path) if path.starts_with('/') => Listen::Unix(path.into()),
        Some(_) => key_bail!(key.to_string(), "unix:/ABSOLUTE/PATH or HOST:PORT"),
        None => Listen::Tcp(
            text.parse()
                .map_err(|_| key_error!(key.to_string(), "{text:?}: unix:/PATH or HOST:PORT"))?,
        ),
    })
}

/// Dovecot's authentication policy: where, the API header, the tarpit and the failures.
fn dovecot(raw: &RawPolicy, at: &str) -> anyhow::Result<dovecot::Settings> {
    let listen = at.parse().map_err(|_| {
        key_error!(
            "policy.dovecot".to_string(),
            "{at:?}: HOST:PORT (Dovecot asks over HTTP)"
        )
    })?;
    let api_header = match &raw.dovecot_api_header_file {
        Some(path) => Some(api_header(path)?),
        None => None,
    };
    let tarpit =
        parse_duration(&raw.tarpit).map_err(|e| key_error!("policy.tarpit".to_string(), "{e}"))?;
    if tarpit.is_zero() || tarpit > std::time::Duration::from_secs(60) {
        key_bail!("policy.tarpit".to_string(), "between 1s and 60s");
    }
    Ok(dovecot::Settings {
        listen,
        api_header,
        tarpit,
        failures: shape("policy.login_failures", &raw.login_failures)?,
    })
}

/// `Name: value`, as in Dovecot's `auth_policy_server_api_header`, from a file only its
/// owner and group may read.
fn api_header(path: &std::path::Path) -> anyhow::Result<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let key = "policy.dovecot_api_header_file".to_string();
    let meta =
        std::fs::metadata(path).map_err(|e| key_error!(key.clone(), "{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o007 != 0 {
        key_bail!(
            key,
            "{} is readable by others: chmod 640 it",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| key_error!(key.clone(), "{}: {e}", path.display()))?;
    match text.trim().split_once(':') {
        Some((name, value)) if !name.trim().is_empty() && !value.trim().is_empty() => {
            Ok((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        }
        _ => key_bail!(key, "{}: one line, `Name: value`", path.display()),
    }
}
