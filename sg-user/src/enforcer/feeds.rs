//! Reputation feeds in the enforcer: each feed's full set arrives, and only the difference
//! with what the feed held is written, in one batch (one generation bump for the lot).
//!
//! Who wins: the allow list (the kernel checks it first); then an operator's entry, which a
//! feed never overwrites nor removes; then a feed's limit, which the learning loop leaves
//! alone as it leaves an operator's. A network two feeds list stays until neither does. Feed
//! entries carry the feed's `max_age` as TTL, written again when half of it has passed, so
//! entries of a feed nobody confirms (a dead daemon included) expire on their own.

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use super::{Enforcer, ListKind, Outcome, Table};
use crate::{
    domain::Network,
    feeds::{Action, FeedSet},
};

/// What the feeds hold, per feed.
#[derive(Default)]
pub(super) struct Holdings {
    feeds: HashMap<String, Held>,
    /// Deny entries an operator made (a feed never removes them nor gives them a TTL).
    operators_deny: HashSet<Network>,
}

struct Held {
    action: Action,
    networks: HashSet<Network>,
    /// When every entry was last written with a fresh TTL.
    written: Instant,
}

impl Holdings {
    /// Whether a feed holds a limit on `network`.
    pub(super) fn limits(&self, network: Network) -> bool {
        self.feeds
            .values()
            .any(|h| matches!(h.action, Action::Limit(_)) && h.networks.contains(&network))
    }

    /// An operator took over the limit of `network`: no feed removes it.
    pub(super) fn forget_limit(&mut self, network: Network) {
        for h in self.feeds.values_mut() {
            if matches!(h.action, Action::Limit(_)) {
                h.networks.remove(&network);
            }
        }
    }

    /// Records an operator's deny entry made (`present`) or removed.
    pub(super) fn operator_listed(&mut self, kind: ListKind, network: Network, present: bool) {
        if kind != ListKind::Deny {
            return;
        }
        if present {
            self.operators_deny.insert(network);
        } else {
            self.operators_deny.remove(&network);
        }
    }

    /// Whether another feed than `name` holds `network` with the same kind of entry.
    fn held_elsewhere(&self, name: &str, deny: bool, network: &Network) -> bool {
        self.feeds.iter().any(|(other, h)| {
            other != name
                && matches!(h.action, Action::Deny) == deny
                && !matches!(h.action, Action::Points(_))
                && h.networks.contains(network)
        })
    }
}

impl Enforcer {
    /// Applies a feed's full set: removes what it no longer lists, writes what is new (all of
    /// it when half the TTL has passed).
    pub(super) fn feed(&mut self, table: &mut impl Table, set: &FeedSet) -> Outcome {
        let result = self.feed_diff(table, set);
        match result {
            Ok(said) => Outcome::Done(said),
            Err(e) => Outcome::Failed(e.context(format!("feed {}", set.name))),
        }
    }

    fn feed_diff(&mut self, table: &mut impl Table, set: &FeedSet) -> anyhow::Result<String> {
        let new: HashSet<Network> = set.networks.iter().copied().collect();
        let old = self.feeds.feeds.remove(&set.name);
        // A feed whose action changed (a reload) starts over: its old entries go.
        let now = Instant::now();
        let (old, refresh, written) = match old {
            Some(h) if h.action == set.action => {
                let due = h.written.elapsed() >= set.ttl / 2;
                (h.networks, due, if due { now } else { h.written })
            }
            Some(h) => {
                self.remove_feed_entries(table, &set.name, h.action, h.networks.iter())?;
                (HashSet::new(), true, now)
            }
            None => (HashSet::new(), true, now),
        };
        let gone: Vec<&Network> = old.difference(&new).collect();
        self.remove_feed_entries(table, &set.name, set.action, gone.iter().copied())?;
        let to_write: Vec<Network> = if refresh {
            set.networks.clone()
        } else {
            set.networks
                .iter()
                .filter(|n| !old.contains(n))
                .copied()
                .collect()
        };
        let mut skipped = 0;
        match set.action {
            Action::Deny => {
                let ours: Vec<Network> = to_write
                    .into_iter()
                    .filter(|n| !self.feeds.operators_deny.contains(n))
                    .collect();
                table.write_list_entries(ListKind::Deny, &ours, Some(set.ttl))?;
            }
            Action::Limit(limit) => {
                for n in to_write {
                    if self.operators.contains(&n) {
                        continue;
                    }
                    match table.write_limit(n, limit, Some(set.ttl)) {
                        Ok(()) => {
                            self.learned.remove(&n);
                        }
                        // A width a limit cannot take (not a host, prefix or network).
                        Err(_) => skipped += 1,
                    }
                }
            }
            Action::Points(_) => {}
        }
        let said = format!(
            "{} entries (+{} -{}){}",
            new.len(),
            new.difference(&old).count(),
            gone.len(),
            match skipped {
                0 => String::new(),
                n => format!(", {n} not limited (a limit takes hosts, prefixes and networks)"),
            }
        );
        if !new.is_empty() {
            self.feeds.feeds.insert(
                set.name.clone(),
                Held {
                    action: set.action,
                    networks: new,
                    written,
                },
            );
        }
        Ok(said)
    }

    /// Removes `networks` of feed `name` from the table, unless an operator or another feed
    /// holds them.
    fn remove_feed_entries<'a>(
        &mut self,
        table: &mut impl Table,
        name: &str,
        action: Action,
        networks: impl Iterator<Item = &'a Network>,
    ) -> anyhow::Result<()> {
        for n in networks {
            match action {
                Action::Deny => {
                    if !self.feeds.operators_deny.contains(n)
                        && !self.feeds.held_elsewhere(name, true, n)
                    {
                        table.remove_list_entry(ListKind::Deny, *n)?;
                    }
                }
                Action::Limit(_) => {
                    if !self.operators.contains(n) && !self.feeds.held_elsewhere(name, false, n) {
                        table.remove_limit(*n)?;
                    }
                }
                Action::Points(_) => {}
            }
        }
        Ok(())
    }
}
