//! What producers of limits ask for, in the words the enforcer, the journal and the control
//! protocol share: the learning loop's limits, operators' list and limit changes, and the
//! journal line an operator's change is kept as.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    domain::{Limit, Network, unix_now},
    engine::Change,
};

/// What a producer wants the kernel to hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The learning loop's limit for a network (an address is a /32 or /128); None releases it.
    Learned {
        network: Network,
        limit: Option<Limit>,
    },
    /// An operator's change to a list or a limit.
    Operator(ListChange),
    /// An operator's bulk import into a list.
    Import(Import),
    /// A reputation feed's full set (an empty one withdraws the feed).
    Feed(crate::feeds::FeedSet),
}

/// `slowgate allow|deny import FILE [--replace]`: many entries at once, journaled like single
/// ones; `replace` makes the list exactly these entries.
#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    pub kind: ListKind,
    /// Distinct, sorted.
    pub networks: Vec<Network>,
    pub replace: bool,
    pub comment: Option<String>,
}

impl Import {
    /// The journal lines of this import, given the live entries it removes (with `replace`):
    /// one line for the removals, one for the additions, each naming all its networks.
    pub fn ops(&self, removed: &[Network]) -> Vec<ListOp> {
        let line = |present: bool, networks: &[Network], comment: Option<String>| ListOp {
            list: self.kind.name().into(),
            network: String::new(),
            present,
            expires_unix: None,
            limit: None,
            comment,
            networks: networks.iter().map(Network::to_string).collect(),
        };
        let mut ops = Vec::new();
        if !removed.is_empty() {
            ops.push(line(false, removed, None));
        }
        if !self.networks.is_empty() {
            ops.push(line(true, &self.networks, self.comment.clone()));
        }
        ops
    }
}

impl Decision {
    /// The decision a level change stands for; None for senders enforced elsewhere (users,
    /// through their sources) or only reported (countries).
    pub fn learned(change: &Change) -> Option<Decision> {
        let network = change.sender.network()?;
        Some(Decision::Learned {
            network,
            limit: change.limit,
        })
    }
}

/// Which manual list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Allow,
    Deny,
}

impl ListKind {
    pub fn name(self) -> &'static str {
        match self {
            ListKind::Allow => "allow",
            ListKind::Deny => "deny",
        }
    }

    /// The list named `name` (`allow`, `deny`); None for any other name.
    pub fn from_name(name: &str) -> Option<ListKind> {
        [ListKind::Allow, ListKind::Deny]
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

/// One change an operator asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub enum ListChange {
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

impl ListChange {
    /// The journal line of this change.
    pub fn op(&self) -> ListOp {
        let op = |list: &str, network: &Network, present, ttl: &Option<Duration>| ListOp {
            list: list.into(),
            network: network.to_string(),
            present,
            expires_unix: ttl.map(|t| unix_now() + t.as_secs().max(1)),
            limit: None,
            comment: None,
            networks: Vec::new(),
        };
        match self {
            ListChange::Add {
                kind,
                network,
                ttl,
                comment,
            } => ListOp {
                comment: comment.clone(),
                ..op(kind.name(), network, true, ttl)
            },
            ListChange::Del { kind, network } => op(kind.name(), network, false, &None),
            ListChange::LimitSet {
                network,
                limit,
                ttl,
                comment,
            } => ListOp {
                limit: Some(limit.to_string()),
                comment: comment.clone(),
                ..op("limit", network, true, ttl)
            },
            ListChange::LimitDel { network } => op("limit", network, false, &None),
        }
    }

    /// The change a live journal entry stands for, with the time it has left (the daemon
    /// puts these back at start).
    pub fn from_op(op: &ListOp) -> anyhow::Result<ListChange> {
        let network: Network = op.network.parse()?;
        let ttl = op
            .expires_unix
            .map(|at| Duration::from_secs(at.saturating_sub(unix_now()).max(1)));
        let comment = op.comment.clone();
        Ok(match (op.list.as_str(), op.present) {
            ("allow", true) => ListChange::Add {
                kind: ListKind::Allow,
                network,
                ttl,
                comment,
            },
            ("deny", true) => ListChange::Add {
                kind: ListKind::Deny,
                network,
                ttl,
                comment,
            },
            ("limit", true) => ListChange::LimitSet {
                network,
                limit: op.limit.as_deref().unwrap_or("").parse()?,
                ttl,
                comment,
            },
            ("allow", false) => ListChange::Del {
                kind: ListKind::Allow,
                network,
            },
            ("deny", false) => ListChange::Del {
                kind: ListKind::Deny,
                network,
            },
            ("limit", false) => ListChange::LimitDel { network },
            (other, _) => anyhow::bail!("unknown list {other}"),
        })
    }
}

/// One CLI change to a list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListOp {
    /// `allow`, `deny` or `limit`.
    pub list: String,
    /// The network as written (CIDR).
    pub network: String,
    /// false: removed.
    pub present: bool,
    /// Wall-clock expiry (Unix seconds); None (or absent) = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix: Option<u64>,
    /// For limits: `30/min burst 10` or `block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// An import's many networks with the same change, in one line (then `network` is empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
}

impl ListOp {
    /// The changes this line stands for: itself, or one per network of an import's line.
    pub fn expand(self) -> Vec<ListOp> {
        if self.networks.is_empty() {
            return vec![self];
        }
        let mut one = self;
        let networks = std::mem::take(&mut one.networks);
        networks
            .into_iter()
            .map(|network| ListOp {
                network,
                ..one.clone()
            })
            .collect()
    }
}

/// A change as the control protocol carries it.
impl From<ListChange> for Value {
    fn from(change: ListChange) -> Value {
        let change = &change;
        let ttl = |t: &Option<Duration>| t.map(|d| d.as_secs());
        match change {
            ListChange::Add {
                kind,
                network,
                ttl: t,
                comment,
            } => json!({"op": "add", "list": kind.name(), "network": network.to_string(),
                    "ttl_secs": ttl(t), "comment": comment}),
            ListChange::Del { kind, network } => {
                json!({"op": "del", "list": kind.name(), "network": network.to_string()})
            }
            ListChange::LimitSet {
                network,
                limit,
                ttl: t,
                comment,
            } => json!({"op": "set", "list": "limit", "network": network.to_string(),
                    "limit": limit.to_string(), "ttl_secs": ttl(t), "comment": comment}),
            ListChange::LimitDel { network } => {
                json!({"op": "del", "list": "limit", "network": network.to_string()})
            }
        }
    }
}

/// The reverse, for the daemon.
impl TryFrom<Value> for ListChange {
    type Error = String;

    fn try_from(v: Value) -> Result<ListChange, String> {
        let v = &v;
        let network: Network = v["network"]
            .as_str()
            .ok_or("`network` is missing")?
            .parse()
            .map_err(|e| format!("{e}"))?;
        let ttl = v["ttl_secs"].as_u64().map(Duration::from_secs);
        let comment = v["comment"].as_str().map(str::to_string);
        let list = v["list"].as_str();
        let kind = match list.and_then(ListKind::from_name) {
            Some(kind) => Some(kind),
            None if list == Some("limit") => None,
            None => return Err(format!("unknown list {list:?}")),
        };
        match (v["op"].as_str(), kind) {
            (Some("add"), Some(kind)) => Ok(ListChange::Add {
                kind,
                network,
                ttl,
                comment,
            }),
            (Some("del"), Some(kind)) => Ok(ListChange::Del { kind, network }),
            (Some("set"), None) => Ok(ListChange::LimitSet {
                network,
                limit: v["limit"]
                    .as_str()
                    .unwrap_or("")
                    .parse()
                    .map_err(|e| format!("{e:#}"))?,
                ttl,
                comment,
            }),
            (Some("del"), None) => Ok(ListChange::LimitDel { network }),
            (op, _) => Err(format!("unknown op {op:?}")),
        }
    }
}
