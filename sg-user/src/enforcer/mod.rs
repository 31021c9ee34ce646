//! The one place that decides what the kernel's lists and limits hold.
//!
//! Every producer of limits sends [`Decision`]s: the learning loop (a sender's level changed),
//! operators (the CLI, the control socket, the config's lists at start and reload). The
//! enforcer applies a batch of them to a [`Table`] with one rule for who wins, and tells the
//! kernel once per batch (one GENERATION bump):
//!
//! - an operator's limit is never overwritten nor removed by a learned one, whichever came
//!   first: an operator's entry on a network the learning loop limited takes it over, and the
//!   learning loop's later release of that network leaves it alone;
//! - an entry the enforcer did not write and finds in the table (written before it started,
//!   or by the CLI while no daemon ran) is an operator's;
//! - learned limits carry a TTL, refreshed while they hold, so they expire on their own when
//!   the daemon is gone.
//!
//! The table is the kernel's maps in the daemon and the CLI ([`maps`]), and an in-memory table
//! in the unit tests below. This module is the only one that talks to the kernel: [`program`]
//! loads, attaches and pins the XDP program, [`maps`] reads and writes its maps, and `filter`
//! keeps the first contact path's filters in step with them.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

mod batch;
mod concurrent;
mod feeds;
mod filter;
mod kernel_log;
mod lookup;
pub mod maps;
pub mod program;

pub use concurrent::*;
pub use kernel_log::forward_kernel_log;
pub use maps::{Entry, Maps};
pub use program::*;

pub use crate::decisions::{Decision, ListKind};
use crate::{
    decisions::ListChange,
    domain::{Limit, Network, format_duration},
};

/// Where decisions are written: the kernel's lists and limits, without telling the kernel
/// until [`Table::publish`].
pub trait Table {
    /// Whether `network` has a limit entry (expired or not).
    fn has_limit(&self, network: Network) -> anyhow::Result<bool>;
    fn write_limit(
        &mut self,
        network: Network,
        limit: Limit,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()>;
    /// False when there was none.
    fn remove_limit(&mut self, network: Network) -> anyhow::Result<bool>;
    fn write_list_entry(
        &mut self,
        kind: ListKind,
        network: Network,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()>;
    /// False when it was not listed.
    fn remove_list_entry(&mut self, kind: ListKind, network: Network) -> anyhow::Result<bool>;
    /// Adds many entries to a list at once (a bulk import, a feed), with one TTL or none.
    fn write_list_entries(
        &mut self,
        kind: ListKind,
        networks: &[Network],
        ttl: Option<Duration>,
    ) -> anyhow::Result<()>;
    /// The networks a list holds.
    fn list_networks(&self, kind: ListKind) -> anyhow::Result<Vec<Network>>;
    /// Tells the kernel that entries changed.
    fn publish(&mut self) -> anyhow::Result<()>;
    /// Removes the entries whose expiry has passed (the kernel already ignores them) and tells
    /// the kernel when any went; returns how many.
    fn sweep_expired(&mut self) -> anyhow::Result<usize>;
}

impl Table for Maps {
    fn has_limit(&self, network: Network) -> anyhow::Result<bool> {
        self.limit_exists(network)
    }
    fn write_limit(
        &mut self,
        network: Network,
        limit: Limit,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        Maps::write_limit(self, network, limit, ttl)
    }
    fn remove_limit(&mut self, network: Network) -> anyhow::Result<bool> {
        Maps::remove_limit(self, network)
    }
    fn write_list_entry(
        &mut self,
        kind: ListKind,
        network: Network,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        Maps::write_list_entry(self, kind, network, ttl)
    }
    fn remove_list_entry(&mut self, kind: ListKind, network: Network) -> anyhow::Result<bool> {
        Maps::remove_list_entry(self, kind, network)
    }
    fn write_list_entries(
        &mut self,
        kind: ListKind,
        networks: &[Network],
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        Maps::write_list_entries(self, kind, networks, ttl)
    }
    fn list_networks(&self, kind: ListKind) -> anyhow::Result<Vec<Network>> {
        Ok(self
            .list_entries(kind)?
            .into_iter()
            .map(|e| e.network)
            .collect())
    }
    fn publish(&mut self) -> anyhow::Result<()> {
        Maps::publish(self)
    }
    fn sweep_expired(&mut self) -> anyhow::Result<usize> {
        Maps::sweep(self)
    }
}

/// A bulk import: with `replace`, the list's entries not in the import go first.
fn import_into(table: &mut impl Table, import: &crate::decisions::Import) -> Outcome {
    let kind = import.kind;
    let result = (|| -> anyhow::Result<String> {
        let mut removed = 0;
        if import.replace {
            let keep: std::collections::HashSet<&Network> = import.networks.iter().collect();
            for network in table.list_networks(kind)? {
                if !keep.contains(&network) {
                    table.remove_list_entry(kind, network)?;
                    removed += 1;
                }
            }
        }
        table.write_list_entries(kind, &import.networks, None)?;
        let replaced = if import.replace {
            format!(", {removed} other entries removed")
        } else {
            String::new()
        };
        Ok(format!(
            "imported {} entries into the {} list{replaced}",
            import.networks.len(),
            kind.name()
        ))
    })();
    match result {
        Ok(said) => Outcome::Done(said),
        Err(e) => Outcome::Failed(e),
    }
}

/// What became of one decision.
#[derive(Debug)]
pub enum Outcome {
    /// Written; for an operator's change, what to tell them.
    Done(String),
    /// A learned limit not written because an operator's entry holds the network.
    KeptOperators,
    /// Nothing to do (a release of a limit the learning loop did not hold).
    Nothing,
    Failed(anyhow::Error),
}

/// What to tell an operator about the one decision `outcomes` answer.
pub fn said(outcomes: Vec<Outcome>) -> anyhow::Result<String> {
    match outcomes.into_iter().next() {
        Some(Outcome::Done(said)) => Ok(said),
        Some(Outcome::Failed(e)) => Err(e),
        Some(Outcome::KeptOperators | Outcome::Nothing) | None => Ok("nothing to do".into()),
    }
}

/// The owner of the kernel's lists and limits (see the module documentation).
pub struct Enforcer {
    /// Limits the learning loop holds, as written.
    learned: HashMap<Network, Limit>,
    /// Networks whose limit is an operator's.
    operators: HashSet<Network>,
    /// What each reputation feed holds ([`feeds`]).
    feeds: feeds::Holdings,
    /// Time to live of learned limits.
    pub ttl: Duration,
    /// When learned limits were last written with a fresh TTL (a caller's clock, ns).
    refreshed_ns: u64,
}

impl Enforcer {
    pub fn new(ttl: Duration) -> Enforcer {
        Enforcer {
            learned: HashMap::new(),
            operators: HashSet::new(),
            feeds: feeds::Holdings::default(),
            ttl,
            refreshed_ns: 0,
        }
    }

    /// Applies `decisions` in order, then tells the kernel once if anything was written.
    pub fn apply(&mut self, table: &mut impl Table, decisions: &[Decision]) -> Vec<Outcome> {
        let outcomes: Vec<Outcome> = decisions
            .iter()
            .map(|d| match d {
                Decision::Learned { network, limit } => self.learned(table, *network, *limit),
                Decision::Operator(change) => self.operator(table, change),
                Decision::Import(import) => import_into(table, import),
                Decision::Feed(set) => self.feed(table, set),
            })
            .collect();
        if outcomes.iter().any(|o| matches!(o, Outcome::Done(_)))
            && let Err(e) = table.publish()
        {
            return vec![Outcome::Failed(e)];
        }
        outcomes
    }

    fn learned(
        &mut self,
        table: &mut impl Table,
        network: Network,
        limit: Option<Limit>,
    ) -> Outcome {
        let Some(limit) = limit else {
            if self.learned.remove(&network).is_none() || self.operators.contains(&network) {
                return Outcome::Nothing;
            }
            return match table.remove_limit(network) {
                Ok(_) => Outcome::Done(format!("released {network}")),
                Err(e) => Outcome::Failed(e),
            };
        };
        if self.operators.contains(&network) || self.feeds.limits(network) {
            return Outcome::KeptOperators;
        }
        if !self.learned.contains_key(&network) {
            match table.has_limit(network) {
                Ok(true) => {
                    // Not ours: an operator's from before this enforcer.
                    self.operators.insert(network);
                    return Outcome::KeptOperators;
                }
                Ok(false) => {}
                Err(e) => return Outcome::Failed(e),
            }
        }
        match table.write_limit(network, limit, Some(self.ttl)) {
            Ok(()) => {
                self.learned.insert(network, limit);
                Outcome::Done(format!("limit {network}: {limit}"))
            }
            Err(e) => Outcome::Failed(e),
        }
    }

    fn operator(&mut self, table: &mut impl Table, change: &ListChange) -> Outcome {
        let result = match change {
            ListChange::Add {
                kind, network, ttl, ..
            } => table.write_list_entry(*kind, *network, *ttl).map(|()| {
                self.feeds.operator_listed(*kind, *network, true);
                format!("{} {network}{}", kind.name(), ttl_note(*ttl))
            }),
            ListChange::Del { kind, network } => table
                .remove_list_entry(*kind, *network)
                .inspect(|_| self.feeds.operator_listed(*kind, *network, false))
                .and_then(|removed| match removed {
                    true => Ok(format!("removed {network} from the {} list", kind.name())),
                    false => Err(anyhow::anyhow!(
                        "{network} is not on the {} list",
                        kind.name()
                    )),
                }),
            ListChange::LimitSet {
                network,
                limit,
                ttl,
                ..
            } => table.write_limit(*network, *limit, *ttl).map(|()| {
                // The operator's from now on, whoever wrote it before.
                self.learned.remove(network);
                self.feeds.forget_limit(*network);
                self.operators.insert(*network);
                format!("limit {network}: {limit}{}", ttl_note(*ttl))
            }),
            ListChange::LimitDel { network } => {
                let removed = table.remove_limit(*network);
                if removed.is_ok() {
                    self.learned.remove(network);
                    self.operators.remove(network);
                }
                removed.and_then(|removed| match removed {
                    true => Ok(format!("removed the limit of {network}")),
                    false => Err(anyhow::anyhow!("{network} has no limit")),
                })
            }
        };
        match result {
            Ok(said) => Outcome::Done(said),
            Err(e) => Outcome::Failed(e),
        }
    }

    /// Writes every learned limit again with a fresh TTL when a third of the TTL has passed
    /// since the last time (`now_ns` on the caller's clock), in one batch. Returns the
    /// failures.
    pub fn refresh_ttls(&mut self, table: &mut impl Table, now_ns: u64) -> Vec<anyhow::Error> {
        let third = (self.ttl / 3).as_nanos() as u64;
        if self.learned.is_empty() || now_ns.saturating_sub(self.refreshed_ns) < third {
            return Vec::new();
        }
        self.refreshed_ns = now_ns;
        let mut failed = Vec::new();
        for (network, limit) in &self.learned {
            if let Err(e) = table.write_limit(*network, *limit, Some(self.ttl)) {
                failed.push(e.context(format!("refresh the limit of {network}")));
            }
        }
        if let Err(e) = table.publish() {
            failed.push(e);
        }
        failed
    }

    /// Removes expired entries (every `sweep_interval`; the owner of the maps does it, so a
    /// sweep never races a write).
    pub fn sweep(&mut self, table: &mut impl Table) -> anyhow::Result<usize> {
        table.sweep_expired()
    }

    /// How many limits the learning loop holds.
    pub fn learned_count(&self) -> usize {
        self.learned.len()
    }
}

fn ttl_note(ttl: Option<Duration>) -> String {
    ttl.map(|t| format!(" (expires in {})", format_duration(t)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The kernel's lists and limits in memory, counting GENERATION bumps.
    #[derive(Default)]
    struct MemoryTable {
        limits: BTreeMap<Network, (Limit, Option<Duration>)>,
        lists: BTreeMap<(u8, Network), Option<Duration>>,
        generation: u32,
        writes: usize,
    }

    fn list_index(kind: ListKind) -> u8 {
        match kind {
            ListKind::Allow => 0,
            ListKind::Deny => 1,
        }
    }

    impl Table for MemoryTable {
        fn has_limit(&self, network: Network) -> anyhow::Result<bool> {
            Ok(self.limits.contains_key(&network))
        }
        fn write_limit(
            &mut self,
            network: Network,
            limit: Limit,
            ttl: Option<Duration>,
        ) -> anyhow::Result<()> {
            self.writes += 1;
            self.limits.insert(network, (limit, ttl));
            Ok(())
        }
        fn remove_limit(&mut self, network: Network) -> anyhow::Result<bool> {
            self.writes += 1;
            Ok(self.limits.remove(&network).is_some())
        }
        fn write_list_entry(
            &mut self,
            kind: ListKind,
            network: Network,
            ttl: Option<Duration>,
        ) -> anyhow::Result<()> {
            self.writes += 1;
            self.lists.insert((list_index(kind), network), ttl);
            Ok(())
        }
        fn remove_list_entry(&mut self, kind: ListKind, network: Network) -> anyhow::Result<bool> {
            self.writes += 1;
            Ok(self.lists.remove(&(list_index(kind), network)).is_some())
        }
        fn write_list_entries(
            &mut self,
            kind: ListKind,
            networks: &[Network],
            ttl: Option<Duration>,
        ) -> anyhow::Result<()> {
            for network in networks {
                self.write_list_entry(kind, *network, ttl)?;
            }
            Ok(())
        }
        fn list_networks(&self, kind: ListKind) -> anyhow::Result<Vec<Network>> {
            Ok(self
                .lists
                .keys()
                .filter(|(k, _)| *k == list_index(kind))
                .map(|(_, n)| *n)
                .collect())
        }
        fn publish(&mut self) -> anyhow::Result<()> {
            self.generation += 1;
            Ok(())
        }
        fn sweep_expired(&mut self) -> anyhow::Result<usize> {
            Ok(0)
        }
    }

    const TTL: Duration = Duration::from_secs(3600);

    fn net(s: &str) -> Network {
        s.parse().unwrap()
    }

    fn learned(s: &str, limit: Option<Limit>) -> Decision {
        Decision::Learned {
            network: net(s),
            limit,
        }
    }

    fn operator_limit(s: &str, limit: Limit) -> Decision {
        Decision::Operator(ListChange::LimitSet {
            network: net(s),
            limit,
            ttl: None,
            comment: None,
        })
    }

    fn slow() -> Limit {
        "6/min burst 3".parse().unwrap()
    }

    #[test]
    fn an_import_adds_in_one_batch_and_a_replace_leaves_exactly_its_entries() {
        use crate::decisions::Import;
        let (mut e, mut t) = (Enforcer::new(TTL), MemoryTable::default());
        let import = |nets: &[&str], replace| {
            Decision::Import(Import {
                kind: ListKind::Deny,
                networks: nets.iter().map(|n| net(n)).collect(),
                replace,
                comment: None,
            })
        };
        let said = e.apply(
            &mut t,
            &[import(&["203.0.113.0/24", "2001:db8:1::/48"], false)],
        );
        assert!(
            matches!(&said[0], Outcome::Done(s) if s == "imported 2 entries into the deny list")
        );
        assert_eq!(t.generation, 1, "one publish for the whole import");
        let said = e.apply(
            &mut t,
            &[import(&["198.51.100.7", "2001:db8:1::/48"], true)],
        );
        assert!(
            matches!(&said[0], Outcome::Done(s) if s.ends_with("1 other entries removed")),
            "{said:?}"
        );
        let listed: Vec<Network> = t.list_networks(ListKind::Deny).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.contains(&net("198.51.100.7")) && !listed.contains(&net("203.0.113.0/24")));
    }

    #[test]
    fn an_operators_limit_beats_a_learned_one_that_came_first() {
        let (mut e, mut t) = (Enforcer::new(TTL), MemoryTable::default());
        e.apply(&mut t, &[learned("203.0.113.9", Some(Limit::Block))]);
        assert_eq!(t.limits[&net("203.0.113.9")], (Limit::Block, Some(TTL)));
        e.apply(&mut t, &[operator_limit("203.0.113.9", slow())]);
        assert_eq!(t.limits[&net("203.0.113.9")], (slow(), None));
        // The learning loop's later moves leave the operator's entry alone.
        let outcomes = e.apply(
            &mut t,
            &[
                learned("203.0.113.9", Some(Limit::Block)),
                learned("203.0.113.9", None),
            ],
        );
        assert!(matches!(outcomes[0], Outcome::KeptOperators));
        assert!(matches!(outcomes[1], Outcome::Nothing));
        assert_eq!(t.limits[&net("203.0.113.9")], (slow(), None));
    }

    #[test]
    fn an_operators_limit_beats_a_learned_one_that_comes_after() {
        let (mut e, mut t) = (Enforcer::new(TTL), MemoryTable::default());
        e.apply(&mut t, &[operator_limit("198.51.100.0/24", slow())]);
        let outcomes = e.apply(&mut t, &[learned("198.51.100.0/24", Some(Limit::Block))]);
        assert!(matches!(outcomes[0], Outcome::KeptOperators));
        e.apply(&mut t, &[learned("198.51.100.0/24", None)]);
        assert_eq!(t.limits[&net("198.51.100.0/24")], (slow(), None));
    }

    #[test]
    fn an_entry_found_in_the_table_is_an_operators() {
        // Written by the CLI while no daemon ran: this enforcer never saw it.
        let mut t = MemoryTable::default();
        t.limits.insert(net("203.0.113.7"), (slow(), None));
        let mut e = Enforcer::new(TTL);
        let outcomes = e.apply(&mut t, &[learned("203.0.113.7", Some(Limit::Block))]);
        assert!(matches!(outcomes[0], Outcome::KeptOperators));
        e.apply(&mut t, &[learned("203.0.113.7", None)]);
        assert_eq!(t.limits[&net("203.0.113.7")], (slow(), None));
    }

    #[test]
    fn a_learned_release_removes_only_what_the_learning_loop_wrote() {
        let (mut e, mut t) = (Enforcer::new(TTL), MemoryTable::default());
        e.apply(&mut t, &[learned("203.0.113.1", Some(Limit::Block))]);
        e.apply(&mut t, &[learned("203.0.113.1", None)]);
        assert!(t.limits.is_empty());
        assert_eq!(e.learned_count(), 0);
        // A release of something never limited writes nothing and tells the kernel nothing.
        let generation = t.generation;
        let outcomes = e.apply(&mut t, &[learned("203.0.113.2", None)]);
        assert!(matches!(outcomes[0], Outcome::Nothing));
        assert_eq!(t.generation, generation);
    }

    #[test]
    fn a_batch_is_one_generation_bump() {
        let (mut e, mut t) = (Enforcer::new(TTL), MemoryTable::default());
        let batch: Vec<Decision> = (1..=50)
            .map(|i| learned(&format!("203.0.113.{i}"), Some(Limit::Block)))
            .chain([Decision::Operator(ListChange::Add {
                kind: ListKind::Deny,
                network: net("198.51.100.0/24"),
                ttl: None,
                comment: None,
            })])
            .collect();
        e.apply(&mut t, &batch);
        assert_eq!(t.limits.len(), 50);
        assert_eq!(t.lists.len(), 1);
        assert_eq!(t.generation, 1);
    }

    #[test]
    fn learned_limits_get_a_fresh_ttl_every_third_of_it_and_operators_do_not() {
        let (mut e, mut t) = (Enforcer::new(TTL), MemoryTable::default());
        e.apply(
            &mut t,
            &[
                learned("203.0.113.1", Some(Limit::Block)),
                operator_limit("203.0.113.2", slow()),
            ],
        );
        let third = (TTL / 3).as_nanos() as u64;
        let writes = t.writes;
        assert!(e.refresh_ttls(&mut t, third).is_empty());
        assert_eq!(
            t.writes,
            writes + 1,
            "only the learned limit is written again"
        );
        assert_eq!(t.generation, 2);
        // Not again before another third.
        e.refresh_ttls(&mut t, third + third / 2);
        assert_eq!(t.writes, writes + 1);
        e.refresh_ttls(&mut t, 2 * third);
        assert_eq!(t.writes, writes + 2);
        assert_eq!(t.limits[&net("203.0.113.2")], (slow(), None));
    }

    #[test]
    fn an_operators_removal_frees_the_network_for_the_learning_loop() {
        let (mut e, mut t) = (Enforcer::new(TTL), MemoryTable::default());
        e.apply(&mut t, &[operator_limit("203.0.113.5", slow())]);
        e.apply(
            &mut t,
            &[Decision::Operator(ListChange::LimitDel {
                network: net("203.0.113.5"),
            })],
        );
        e.apply(&mut t, &[learned("203.0.113.5", Some(Limit::Block))]);
        assert_eq!(t.limits[&net("203.0.113.5")], (Limit::Block, Some(TTL)));
    }

    fn feed_set(name: &str, action: crate::feeds::Action, nets: &[&str]) -> Decision {
        let mut networks: Vec<Network> = nets.iter().map(|n| net(n)).collect();
        networks.sort();
        Decision::Feed(crate::feeds::FeedSet {
            name: name.into(),
            action,
            networks,
            ttl: TTL,
        })
    }

    fn denied(t: &MemoryTable, s: &str) -> Option<Option<Duration>> {
        t.lists.get(&(list_index(ListKind::Deny), net(s))).copied()
    }

    #[test]
    fn a_feed_writes_only_its_difference_and_never_an_operators_entry() {
        use crate::feeds::Action::Deny;
        let (mut e, mut t) = (Enforcer::new(TTL), MemoryTable::default());
        let out = e.apply(
            &mut t,
            &[feed_set("drop", Deny, &["198.51.100.0/24", "203.0.113.7"])],
        );
        assert!(
            matches!(&out[0], Outcome::Done(s) if s == "2 entries (+2 -0)"),
            "{out:?}"
        );
        assert_eq!(denied(&t, "198.51.100.0/24"), Some(Some(TTL)));
        assert_eq!(t.generation, 1);
        // The operator denies one of them for good; another feed lists the other.
        e.apply(
            &mut t,
            &[Decision::Operator(ListChange::Add {
                kind: ListKind::Deny,
                network: net("203.0.113.7"),
                ttl: None,
                comment: None,
            })],
        );
        e.apply(&mut t, &[feed_set("edrop", Deny, &["198.51.100.0/24"])]);
        let writes = t.writes;
        e.apply(
            &mut t,
            &[feed_set("drop", Deny, &["198.51.100.0/24", "203.0.113.9"])],
        );
        assert_eq!(
            t.writes,
            writes + 1,
            "one addition; the operator's entry untouched"
        );
        // The feed dropped 203.0.113.7: the operator's entry stays, permanent.
        assert_eq!(denied(&t, "203.0.113.7"), Some(None));
        assert_eq!(denied(&t, "203.0.113.9"), Some(Some(TTL)));
        // Withdrawn by one feed, held by the other: stays; withdrawn by both: goes.
        e.apply(&mut t, &[feed_set("drop", Deny, &[])]);
        assert!(denied(&t, "198.51.100.0/24").is_some());
        assert!(denied(&t, "203.0.113.9").is_none());
        e.apply(&mut t, &[feed_set("edrop", Deny, &[])]);
        assert!(denied(&t, "198.51.100.0/24").is_none());
        assert_eq!(denied(&t, "203.0.113.7"), Some(None));
    }

    #[test]
    fn a_feeds_limit_holds_against_the_learning_loop_and_yields_to_operators() {
        use crate::feeds::Action::Limit as FeedLimit;
        let (mut e, mut t) = (Enforcer::new(TTL), MemoryTable::default());
        e.apply(&mut t, &[operator_limit("203.0.113.5", Limit::Block)]);
        e.apply(
            &mut t,
            &[feed_set(
                "slow",
                FeedLimit(slow()),
                &["203.0.113.5", "203.0.113.6"],
            )],
        );
        assert_eq!(t.limits[&net("203.0.113.5")], (Limit::Block, None));
        assert_eq!(t.limits[&net("203.0.113.6")], (slow(), Some(TTL)));
        let out = e.apply(&mut t, &[learned("203.0.113.6", Some(Limit::Block))]);
        assert!(matches!(out[0], Outcome::KeptOperators));
        e.apply(&mut t, &[feed_set("slow", FeedLimit(slow()), &[])]);
        assert!(!t.limits.contains_key(&net("203.0.113.6")));
        assert_eq!(t.limits[&net("203.0.113.5")], (Limit::Block, None));
    }
}
