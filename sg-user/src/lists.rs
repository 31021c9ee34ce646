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

pub use crate::decisions::{Import, ListChange as Change};

/// The widest entry an import takes (the same as a feed's default).
pub use crate::feeds::{WIDEST_V4, WIDEST_V6};

/// The networks of an import file: one CIDR or address a line; `#` starts a comment (whole
/// lines or after the entry); blank lines are skipped. Any other line makes the whole file
/// refused, naming its line number, so that a file is applied whole or not at all. The result
/// is distinct and sorted.
pub fn parse_import(text: &str) -> anyhow::Result<Vec<Network>> {
    let mut networks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let network: Network = entry
            .parse()
            .map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1))?;
        let (len, widest) = if network.is_v4() {
            (network.prefix_len - sg_common::V4_MAPPED_BITS, WIDEST_V4)
        } else {
            (network.prefix_len, WIDEST_V6)
        };
        if len < widest {
            anyhow::bail!(
                "line {}: {network} is wider than /{widest}, the widest entry an import takes",
                i + 1
            );
        }
        networks.push(network);
    }
    networks.sort_unstable();
    networks.dedup();
    Ok(networks)
}

/// Journals an import (durably, one fsync), with the removal of every live entry of the list
/// that a `replace` drops. Returns how many it drops.
pub fn journal_import(store: &Store, import: &Import) -> anyhow::Result<usize> {
    let removed: Vec<Network> = if import.replace {
        let keep: std::collections::HashSet<&Network> = import.networks.iter().collect();
        store
            .list_entries()?
            .iter()
            .filter(|op| op.list == import.kind.name())
            .filter_map(|op| op.network.parse::<Network>().ok())
            .filter(|n| !keep.contains(n))
            .collect()
    } else {
        Vec::new()
    };
    store.record_all(&import.ops(&removed))?;
    Ok(removed.len())
}

/// Journals an import, then makes it in the kernel through an enforcer of its own (the CLI
/// while no daemon runs).
pub fn import(maps: &mut Maps, store: &Store, import: &Import) -> anyhow::Result<String> {
    journal_import(store, import)?;
    let mut enforcer = Enforcer::new(Duration::ZERO);
    let outcome = enforcer.apply(maps, &[Decision::Import(import.clone())]);
    crate::enforcer::said(outcome)
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
    Ok(match ListKind::from_name(list) {
        Some(kind) => maps
            .list_entries(kind)?
            .iter()
            .map(|e| row(&e.network, String::new(), e.remaining))
            .collect(),
        None => maps
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_import_file_takes_comments_blank_lines_and_addresses() {
        let text = "# partners\n198.51.100.0/24\n\n203.0.113.7   # one host\n2001:db8::/48\n198.51.100.9/24\n";
        let nets = parse_import(text).unwrap();
        let shown: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        // Distinct and sorted; host bits cleared.
        assert_eq!(
            shown,
            ["198.51.100.0/24", "203.0.113.7/32", "2001:db8::/48"]
        );
    }

    #[test]
    fn a_bad_or_too_wide_line_refuses_the_whole_file_naming_its_line() {
        let e = parse_import("198.51.100.0/24\nnot a network\n").unwrap_err();
        assert!(format!("{e:#}").starts_with("line 2:"), "{e:#}");
        let e = parse_import("0.0.0.0/0\n").unwrap_err();
        assert!(format!("{e:#}").contains("wider than /8"), "{e:#}");
        let e = parse_import("2001:db8::/16\n").unwrap_err();
        assert!(format!("{e:#}").contains("wider than /19"), "{e:#}");
        assert!(parse_import("10.0.0.0/8\n2001:db8::/19\n").is_ok());
    }
}
