//! Allow, deny and limit entries as operators manage them: each change is journaled in the
//! store (durably) before the kernel sees it, so an entry a command reported added survives
//! restarts and reboots. The same code serves the CLI on the pinned maps (daemon down) and the
//! daemon behind the control socket (daemon up).

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    domain::{Limit, Network, format_duration, unix_now},
    enforcer::{Decision, Enforcer},
    enforcer::{Entry, ListKind, Maps},
    store::{ListOp, Store},
};

/// One change an operator asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Add {
        kind: ListKind,
        network: Network,
        ttl: Option<Duration>,
        comment: Option<String>,
    },
    Del {
        kind: ListKind,
        network: Network,
    },
    LimitSet {
        network: Network,
        limit: Limit,
        ttl: Option<Duration>,
        comment: Option<String>,
    },
    LimitDel {
        network: Network,
    },
}

impl Change {
    /// The journal line of this change.
    fn op(&self) -> ListOp {
        let op = |list: &str, network: &Network, present, ttl: &Option<Duration>| ListOp {
            list: list.into(),
            network: network.to_string(),
            present,
            expires_unix: ttl.map(|t| unix_now() + t.as_secs().max(1)),
            limit: None,
            comment: None,
        };
        match self {
            Change::Add {
                kind,
                network,
                ttl,
                comment,
            } => ListOp {
                comment: comment.clone(),
                ..op(kind.name(), network, true, ttl)
            },
            Change::Del { kind, network } => op(kind.name(), network, false, &None),
            Change::LimitSet {
                network,
                limit,
                ttl,
                comment,
            } => ListOp {
                limit: Some(limit.to_string()),
                comment: comment.clone(),
                ..op("limit", network, true, ttl)
            },
            Change::LimitDel { network } => op("limit", network, false, &None),
        }
    }

    /// The change a live journal entry stands for, with the time it has left (the daemon
    /// puts these back at start).
    pub fn from_op(op: &ListOp) -> anyhow::Result<Change> {
        let network: Network = op.network.parse()?;
        let ttl = op
            .expires_unix
            .map(|at| Duration::from_secs(at.saturating_sub(unix_now()).max(1)));
        let comment = op.comment.clone();
        Ok(match (op.list.as_str(), op.present) {
            ("allow", true) => Change::Add {
                kind: ListKind::Allow,
                network,
                ttl,
                comment,
            },
            ("deny", true) => Change::Add {
                kind: ListKind::Deny,
                network,
                ttl,
                comment,
            },
            ("limit", true) => Change::LimitSet {
                network,
                limit: op.limit.as_deref().unwrap_or("").parse()?,
                ttl,
                comment,
            },
            ("allow", false) => Change::Del {
                kind: ListKind::Allow,
                network,
            },
            ("deny", false) => Change::Del {
                kind: ListKind::Deny,
                network,
            },
            ("limit", false) => Change::LimitDel { network },
            (other, _) => anyhow::bail!("unknown list {other}"),
        })
    }
}

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
