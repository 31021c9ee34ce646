//! The daemon's side of a fleet: operators' entries made on other hosts, journaled and made
//! here once each.

use crate::{config::Config, enforcer::Maps};

/// The next operator's entry from another host (never, without a fleet).
pub(super) async fn next_fleet_change(
    lists: &mut Option<tokio::sync::mpsc::Receiver<crate::lists::Change>>,
) -> Option<crate::lists::Change> {
    match lists {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Entries from the fleet already made here, by list and network (the full reconcile reads
/// them all again every half minute: each is journaled once, not each time).
pub(super) type FleetApplied = std::collections::HashMap<String, crate::lists::Change>;

/// An operator's change made on another host: journaled and made here like a local one, but
/// not published again.
pub(super) async fn fleet_change(
    current: &Config,
    maps: &Maps,
    learning: &super::LearningTx,
    applied: &mut FleetApplied,
    change: crate::lists::Change,
) {
    let field = crate::fleet::wire::list_field(&change);
    let same = |a: &crate::lists::Change, b: &crate::lists::Change| {
        // The TTL counts down between reads: the same entry whatever it says.
        let strip = |c: &crate::lists::Change| match c.clone() {
            crate::lists::Change::Add {
                kind,
                network,
                comment,
                ..
            } => crate::lists::Change::Add {
                kind,
                network,
                ttl: None,
                comment,
            },
            crate::lists::Change::LimitSet {
                network,
                limit,
                comment,
                ..
            } => crate::lists::Change::LimitSet {
                network,
                limit,
                ttl: None,
                comment,
            },
            other => other,
        };
        strip(a) == strip(b)
    };
    if applied.get(&field).is_some_and(|old| same(old, &change)) {
        return;
    }
    match super::operator_change(current, maps, learning, change.clone()).await {
        Ok(_) => {
            tracing::info!("fleet: {field} from another host");
            if applied.len() < 1_000_000 {
                applied.insert(field, change);
            }
        }
        Err(e) => tracing::warn!("fleet: {field} from another host not made: {e}"),
    }
}
