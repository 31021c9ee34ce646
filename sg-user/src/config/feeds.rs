//! `[[feeds]]`: reputation feeds as the config file writes them, and their validation.

use serde::Deserialize;

use super::error::{key_bail, key_error};
use crate::{
    domain::{Limit, parse_duration},
    feeds::{Action, Feed, Format, Origin},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeed {
    name: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    path: Option<std::path::PathBuf>,
    format: String,
    /// `deny`; or leave it out and give `points`, or `rate` (and `burst`).
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    points: Option<f64>,
    #[serde(default)]
    rate: Option<String>,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default = "default_refresh")]
    refresh: String,
    #[serde(default = "default_max_age")]
    max_age: String,
    #[serde(default = "default_max_change")]
    max_change: f64,
    #[serde(default = "default_widest_v4")]
    widest_v4: u32,
    #[serde(default = "default_widest_v6")]
    widest_v6: u32,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
}

fn default_refresh() -> String {
    "1h".into()
}
fn default_max_age() -> String {
    "2d".into()
}
fn default_max_change() -> f64 {
    0.5
}
fn default_widest_v4() -> u32 {
    crate::feeds::WIDEST_V4
}
fn default_widest_v6() -> u32 {
    crate::feeds::WIDEST_V6
}
fn default_timeout() -> String {
    "30s".into()
}
fn default_max_bytes() -> u64 {
    64 << 20
}

/// The most points one feed may give.
const MAX_POINTS: f64 = 1000.0;

pub(super) fn feeds(raw: &[RawFeed]) -> anyhow::Result<Vec<Feed>> {
    let mut out: Vec<Feed> = Vec::new();
    for (i, f) in raw.iter().enumerate() {
        let key = |k: &str| format!("feeds[{i}].{k}");
        let named = !f.name.is_empty()
            && f.name.len() <= 64
            && f.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !f.name.starts_with('.');
        if !named {
            key_bail!(
                key("name"),
                "{:?}: use letters, digits, '-', '_' and '.'",
                f.name
            );
        }
        if out.iter().any(|o| o.name == f.name) {
            key_bail!(key("name"), "a second feed named {:?}", f.name);
        }
        let origin = match (&f.url, &f.path) {
            (Some(url), None) if url.starts_with("http://") || url.starts_with("https://") => {
                Origin::Url(url.clone())
            }
            (Some(url), None) => key_bail!(key("url"), "{url:?} is not an http:// or https:// URL"),
            (None, Some(path)) if path.is_absolute() => Origin::Path(path.clone()),
            (None, Some(path)) => key_bail!(key("path"), "{} is not absolute", path.display()),
            _ => key_bail!(key("url"), "give either `url` or `path`"),
        };
        let format = Format::from_name(&f.format).ok_or_else(|| {
            key_error!(
                key("format"),
                "{:?} is not one of {}",
                f.format,
                Format::NAMES.join(", ")
            )
        })?;
        let action = match (f.action.as_deref(), f.points, &f.rate) {
            (Some("deny"), None, None) => Action::Deny,
            (None, Some(p), None) if p.is_finite() && p > 0.0 && p <= MAX_POINTS => {
                Action::Points(p)
            }
            (None, Some(p), None) => {
                key_bail!(key("points"), "{p} is not between 0 and {MAX_POINTS}")
            }
            (None, None, Some(rate)) => {
                let rate = rate.parse().map_err(|e| key_error!(key("rate"), "{e}"))?;
                Action::Limit(Limit::Rate {
                    rate,
                    burst: f.burst.unwrap_or(1).clamp(1, 65_535),
                })
            }
            (Some(other), None, None) => key_bail!(
                key("action"),
                "{other:?}: write action = \"deny\", or points = N, or rate = \"6/min\""
            ),
            _ => key_bail!(
                key("action"),
                "give one of action = \"deny\", points = N, or rate = \"6/min\" (with burst)"
            ),
        };
        let duration =
            |k: &str, text: &str| parse_duration(text).map_err(|e| key_error!(key(k), "{e}"));
        let refresh = duration("refresh", &f.refresh)?;
        let max_age = duration("max_age", &f.max_age)?;
        let timeout = duration("timeout", &f.timeout)?;
        if refresh.as_secs() < 60 {
            key_bail!(key("refresh"), "{} is too often: at least 1m", f.refresh);
        }
        if max_age < refresh {
            key_bail!(
                key("max_age"),
                "shorter than `refresh`: every copy would go stale"
            );
        }
        if timeout.is_zero() || timeout > refresh {
            key_bail!(key("timeout"), "between 1s and `refresh`");
        }
        if !(f.max_change.is_finite() && f.max_change > 0.0) {
            key_bail!(key("max_change"), "a share above 0, like 0.5 for 50%");
        }
        if !(1..=32).contains(&f.widest_v4) {
            key_bail!(key("widest_v4"), "a prefix length from 1 to 32");
        }
        if !(1..=128).contains(&f.widest_v6) {
            key_bail!(key("widest_v6"), "a prefix length from 1 to 128");
        }
        if f.max_bytes == 0 || f.max_bytes > 1 << 30 {
            key_bail!(key("max_bytes"), "between 1 and 1 GiB");
        }
        out.push(Feed {
            name: f.name.clone(),
            origin,
            format,
            action,
            refresh,
            max_age,
            max_change: f.max_change,
            widest_v4: f.widest_v4,
            widest_v6: f.widest_v6,
            timeout,
            max_bytes: f.max_bytes,
        });
    }
    Ok(out)
}
