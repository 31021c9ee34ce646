//! Allow, deny and limit entries as operators manage them: each change is journaled in the
//! store (durably) before the kernel sees it, so an entry a command reported added survives
//! restarts and reboots. The same code serves the CLI on the pinned maps (daemon down) and the
//! daemon behind the control socket (daemon up).

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    domain::{Network, format_duration},
    enforcer::{Decision, Enforcer},
    enforcer::{Entry, ListKind, Maps},
    store::Store,
};

pub use crate::decisions::ListChange as Change;

/// Journals the change, then makes it in the kernel through an enforcer of its own (the CLI
/// while no daemon runs). Returns what to tell the operator.
pub fn apply(maps: &mut Maps, store: &Store, change: &Change) -> anyhow::Result<String> {
    journal(maps, store, change)?;
    let mut enforcer = Enforcer::new(Duration::ZERO);
    let outcome = enforcer.apply(maps, &[Decision::Operator(change.clone())]);
    crate::enforcer::said(outcome)
}

/// Journals the change (durably), after refusing what the kernel would refuse: the first half
/// of [`apply`], for a daemon whose enforcer makes the change.
pub fn journal(maps: &Maps, store: &Store, change: &Change) -> anyhow::Result<()> {
    if let Change::LimitSet { network, .. } = change {
        maps.policy_key(*network)?;
    }
    store.record(&change.op())
}

/// The entries of `list` (`allow`, `deny`, `limit`) as JSON rows, with the comments the store
/// keeps for them.
pub fn rows(maps: &Maps, store: &Store, list: &str) -> anyhow::Result<Value> {
    let comments: std::collections::HashMap<String, String> = store
        .list_entries()
        .unwrap_or_default()
        .into_iter()
        .filter(|op| op.list == list)
        .filter_map(|op| Some((op.network, op.comment?)))
        .collect();
    fn row<T>(
        e: &Entry<T>,
        what: String,
        comments: &std::collections::HashMap<String, String>,
    ) -> Value {
        json!({
            "network": e.network.to_string(),
            "limit": what,
            "expires_in_seconds": e.remaining.map(|d| d.as_secs()),
            "comment": comments.get(&e.network.to_string()),
        })
    }
    let rows: Vec<Value> = match list {
        "allow" | "deny" => {
            let kind = if list == "allow" {
                ListKind::Allow
            } else {
                ListKind::Deny
            };
            maps.list_entries(kind)?
                .iter()
                .map(|e| row(e, String::new(), &comments))
                .collect()
        }
        _ => maps
            .limit_entries()?
            .iter()
            .map(|e| row(e, e.value.to_string(), &comments))
            .collect(),
    };
    Ok(Value::Array(rows))
}

/// Prints rows from [`rows`] as a table.
pub fn print(rows: &Value) {
    for r in rows.as_array().into_iter().flatten() {
        let expires = r["expires_in_seconds"]
            .as_u64()
            .map(|s| format!("expires in {}", format_duration(Duration::from_secs(s))))
            .unwrap_or_else(|| "permanent".into());
        let note = r["comment"]
            .as_str()
            .map(|c| format!("  # {c}"))
            .unwrap_or_default();
        println!(
            "{:<45} {:<24} {expires}{note}",
            r["network"].as_str().unwrap_or(""),
            r["limit"].as_str().unwrap_or("")
        );
    }
}

/// A change as the control protocol carries it.
pub fn to_json(change: &Change) -> Value {
    let ttl = |t: &Option<Duration>| t.map(|d| d.as_secs());
    match change {
        Change::Add {
            kind,
            network,
            ttl: t,
            comment,
        } => json!({"op": "add", "list": kind.name(), "network": network.to_string(),
                    "ttl_secs": ttl(t), "comment": comment}),
        Change::Del { kind, network } => {
            json!({"op": "del", "list": kind.name(), "network": network.to_string()})
        }
        Change::LimitSet {
            network,
            limit,
            ttl: t,
            comment,
        } => json!({"op": "set", "list": "limit", "network": network.to_string(),
                    "limit": limit.to_string(), "ttl_secs": ttl(t), "comment": comment}),
        Change::LimitDel { network } => {
            json!({"op": "del", "list": "limit", "network": network.to_string()})
        }
    }
}

/// The reverse of [`to_json`], for the daemon.
pub fn from_json(v: &Value) -> Result<Change, String> {
    let network: Network = v["network"]
        .as_str()
        .ok_or("`network` is missing")?
        .parse()
        .map_err(|e| format!("{e}"))?;
    let ttl = v["ttl_secs"].as_u64().map(Duration::from_secs);
    let comment = v["comment"].as_str().map(str::to_string);
    let kind = match v["list"].as_str() {
        Some("allow") => Some(ListKind::Allow),
        Some("deny") => Some(ListKind::Deny),
        Some("limit") => None,
        other => return Err(format!("unknown list {other:?}")),
    };
    match (v["op"].as_str(), kind) {
        (Some("add"), Some(kind)) => Ok(Change::Add {
            kind,
            network,
            ttl,
            comment,
        }),
        (Some("del"), Some(kind)) => Ok(Change::Del { kind, network }),
        (Some("set"), None) => Ok(Change::LimitSet {
            network,
            limit: v["limit"]
                .as_str()
                .unwrap_or("")
                .parse()
                .map_err(|e| format!("{e:#}"))?,
            ttl,
            comment,
        }),
        (Some("del"), None) => Ok(Change::LimitDel { network }),
        (op, _) => Err(format!("unknown op {op:?}")),
    }
}
