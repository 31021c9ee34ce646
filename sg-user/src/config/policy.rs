//! `[policy]` (where Postfix asks) and `[users]` (the per-user buckets).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::error::{key_bail, key_error};
use crate::{
    domain::{Rate, parse_duration},
    policy::{
        Listen, Settings,
        bucket::Shape,
        quota::{self, UserLimits},
    },
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    listen: String,
    #[serde(default = "default_idle")]
    idle: String,
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

impl Default for RawUsers {
    fn default() -> Self {
        RawUsers {
            messages: default_messages(),
            recipients: default_recipients(),
            defer: default_defer(),
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
    let listen = match raw.listen.strip_prefix("unix:") {
        Some(path) if path.starts_with('/') => Listen::Unix(path.into()),
        Some(_) => key_bail!(
            "policy.listen".to_string(),
            "unix:/ABSOLUTE/PATH or HOST:PORT"
        ),
        None => Listen::Tcp(raw.listen.parse().map_err(|_| {
            key_error!(
                "policy.listen".to_string(),
                "{:?}: unix:/PATH or HOST:PORT",
                raw.listen
            )
        })?),
    };
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
        idle,
        quotas: quota::Settings {
            defaults,
            overrides,
            defer: users.defer.clone(),
            max_keys: users.max_keys.clamp(16, 10_000_000),
        },
    }))
}
