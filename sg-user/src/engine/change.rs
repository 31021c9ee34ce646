//! What the engine tells its callers: level changes and views of a sender.

use crate::domain::{Limit, Sender, country_name};

/// One sender as `slowgate top` and `show` print it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SenderInfo {
    pub sender: String,
    pub level: usize,
    pub points: f64,
    pub country: Option<String>,
    pub limit: Option<String>,
    /// Events since the last level change, most frequent first.
    pub recent_events: Vec<(String, u32)>,
    /// A user's buckets in the policy service (filled in by the learning loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<crate::policy::quota::UserBuckets>,
}

/// A level change for the enforcer and the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub sender: Sender,
    pub from: usize,
    pub to: usize,
    pub points: f64,
    /// The limit the new level means for this sender (None at level 0).
    pub limit: Option<Limit>,
    pub country: Option<[u8; 2]>,
    /// The events since the previous change: (kind, count), most frequent first.
    pub events: Vec<(&'static str, u32)>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} level {} -> {} ({:.1} points",
            self.sender, self.from, self.to, self.points
        )?;
        if let Some(c) = self.country {
            write!(f, ", {}", country_name(c))?;
        }
        if !self.events.is_empty() {
            let events: Vec<String> = self
                .events
                .iter()
                .map(|(k, n)| format!("{k} x{n}"))
                .collect();
            write!(f, "; {}", events.join(", "))?;
        }
        write!(f, ")")?;
        match self.limit {
            Some(Limit::Block) => write!(f, ": blocked"),
            Some(Limit::Rate { rate, burst }) => write!(f, ": limited to {rate} burst {burst}"),
            None => write!(f, ": no limit"),
        }
    }
}
