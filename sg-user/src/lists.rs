//! Allow, deny and limit entries as operators manage them: each change is journaled in the
//! store (durably) before the kernel sees it, so an entry a command reported added survives
//! restarts and reboots. The same code serves the CLI on the pinned maps (daemon down) and the
//! daemon behind the control socket (daemon up).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    domain::{Network, format_duration},
    enforcer::{Decision, Enforcer, ListKind, Maps},
    store::Store,
};

/// One entry of a list as commands show it (the reply to the control socket's `rows`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub network: String,
    /// The limit (`limit` list), empty for allow and deny.
    pub limit: String,
    pub expires_in_seconds: Option<u64>,
    pub comment: Option<String>,
}

pub type Rows = Vec<Row>;

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

/// The entries of `list` (`allow`, `deny`, `limit`), with the comments the store keeps for
/// them.
pub fn rows(maps: &Maps, store: &Store, list: &str) -> anyhow::Result<Rows> {
    let comments: std::collections::HashMap<String, String> = store
        .list_entries()
        .unwrap_or_default()
        .into_iter()
        .filter(|op| op.list == list)
        .filter_map(|op| Some((op.network, op.comment?)))
        .collect();
    let row = |network: &Network, limit: String, remaining: Option<Duration>| Row {
        network: network.to_string(),
        limit,
        expires_in_seconds: remaining.map(|d| d.as_secs()),
        comment: comments.get(&network.to_string()).cloned(),
    };
    Ok(match list {
        "allow" | "deny" => {
            let kind = if list == "allow" {
                ListKind::Allow
            } else {
                ListKind::Deny
            };
            maps.list_entries(kind)?
                .iter()
                .map(|e| row(&e.network, String::new(), e.remaining))
                .collect()
        }
        _ => maps
            .limit_entries()?
            .iter()
            .map(|e| row(&e.network, e.value.to_string(), e.remaining))
            .collect(),
    })
}

/// Prints rows from [`rows`] as a table.
pub fn print(rows: &Rows) {
    for r in rows {
        let expires = r
            .expires_in_seconds
            .map(|s| format!("expires in {}", format_duration(Duration::from_secs(s))))
            .unwrap_or_else(|| "permanent".into());
        let note = r
            .comment
            .as_deref()
            .map(|c| format!("  # {c}"))
            .unwrap_or_default();
        println!("{:<45} {:<24} {expires}{note}", r.network, r.limit);
    }
}
