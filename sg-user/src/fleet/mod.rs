//! Fleet mode (`[fleet]`): many mail hosts share one set of points and operator entries
//! through Redis (or Valkey), and each keeps working alone when Redis is gone.
//!
//! Each host publishes its own decayed contribution per sender (source, prefix, user) and
//! reads the others' ([`Peers`]); the engine adds them to its own points, so a sender spread
//! over hosts is limited on all of them. A contribution is a value, not an increment:
//! rewriting it is harmless, so nothing needs replaying, and a Redis restarted empty is
//! refilled by every host republishing what it has. Operators' entries go the same way.
//! Changes are pushed on a channel as they happen; a full read every [`RECONCILE`] is the
//! safety net.
//!
//! The first promise is fail-safe: the learning loop and the operators never wait on Redis.
//! They hand what is to be published to a task of its own ([`link`]), which keeps it in a
//! bounded buffer (dropped oldest first, and counted) while Redis is down, slow or frozen,
//! and wraps every call in `timeout`. What comes from Redis is checked like any input
//! ([`wire`]).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::Receiver,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    decisions::ListChange,
    domain::{PrefixLengths, Sender},
};

mod feeds;
mod link;
pub mod wire;

pub use feeds::FeedStore;

pub use wire::Incoming;

/// How often every contribution and entry is read in full.
pub const RECONCILE: Duration = Duration::from_secs(30);
/// How often a host writes its heartbeat and reads the others'.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Publications kept while Redis is unreachable, at most.
pub const BUFFER: usize = 100_000;

/// `[fleet]`, validated.
#[derive(Clone)]
pub struct Settings {
    /// Where Redis is, with the password (never printed: see [`Settings::shown`]).
    pub info: redis::ConnectionInfo,
    /// This host, unique in the fleet.
    pub name: String,
    pub key_prefix: String,
    /// The longest any Redis call may take.
    pub timeout: Duration,
    /// The prefix and network lengths senders are shared at (checked on what is read).
    pub lengths: PrefixLengths,
    /// The points' half-life (contributions decay, and their keys expire, with it).
    pub half_life: Duration,
}

impl Settings {
    /// Where Redis is, without credentials, for logs and status.
    pub fn shown(&self) -> String {
        let tls = matches!(self.info.addr, redis::ConnectionAddr::TcpTls { .. });
        let place = match &self.info.addr {
            redis::ConnectionAddr::Tcp(h, p)
            | redis::ConnectionAddr::TcpTls {
                host: h, port: p, ..
            } => {
                format!("{h}:{p}")
            }
            redis::ConnectionAddr::Unix(path) => path.display().to_string(),
        };
        format!(
            "{}://{place}/{}",
            if tls { "rediss" } else { "redis" },
            self.info.redis.db
        )
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("redis", &self.shown())
            .field("name", &self.name)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PartialEq for Settings {
    fn eq(&self, other: &Self) -> bool {
        format!("{:?}", self.info) == format!("{:?}", other.info)
            && (
                &self.name,
                &self.key_prefix,
                self.timeout,
                self.lengths,
                self.half_life,
            ) == (
                &other.name,
                &other.key_prefix,
                other.timeout,
                other.lengths,
                other.half_life,
            )
    }
}

/// What a host publishes.
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing {
    Points {
        sender: Sender,
        points: f64,
        at_ms: u64,
    },
    Release(Sender),
    List(ListChange),
    /// Tokens this host's policy service took from a user's buckets lately.
    Spent(Spent),
}

/// Tokens one host took from a user's buckets (messages, recipients): every other host takes
/// them from its own copy, so a user's buckets are fleet-wide.
#[derive(Clone, Debug, PartialEq)]
pub struct Spent {
    pub user: String,
    pub messages: u32,
    pub recipients: u32,
}

/// The fleet's state, for `slowgate status` and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub redis: String,
    pub name: String,
    pub up: bool,
    /// The last call that succeeded (Unix milliseconds; 0: none yet).
    pub last_success_ms: u64,
    /// From a peer's publication to its arrival here, the last one (milliseconds).
    pub lag_ms: u64,
    /// Publications waiting for Redis, and those dropped because the buffer was full.
    pub buffered: u64,
    pub dropped: u64,
    /// Data read from Redis and refused by the checks.
    pub refused: u64,
    /// Peers seen, with their last heartbeat (Unix milliseconds).
    pub peers: BTreeMap<String, u64>,
}

/// The fleet's status (the link task writes it).
pub static STATUS: Mutex<Option<Status>> = Mutex::new(None);
/// Publications dropped before reaching the link task (its queue full).
static QUEUE_DROPPED: AtomicU64 = AtomicU64::new(0);

fn status(f: impl FnOnce(&mut Status)) {
    let mut s = STATUS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = s.as_mut() {
        f(s);
    }
}

/// The current status, with the queue's drops added.
pub fn current_status() -> Option<Status> {
    let mut s = STATUS.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
    s.dropped += QUEUE_DROPPED.load(Ordering::Relaxed);
    Some(s)
}

/// What producers hold to publish: never waits.
#[derive(Clone)]
pub struct Fleet {
    out: tokio::sync::mpsc::Sender<Outgoing>,
}

impl Fleet {
    fn send(&self, o: Outgoing) {
        if self.out.try_send(o).is_err() {
            QUEUE_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This host's own points of `sender` now.
    pub fn points(&self, sender: Sender, points: f64) {
        self.send(Outgoing::Points {
            sender,
            points,
            at_ms: now_ms(),
        });
    }

    pub fn release(&self, sender: Sender) {
        self.send(Outgoing::Release(sender));
    }

    pub fn list(&self, change: ListChange) {
        self.send(Outgoing::List(change));
    }

    pub fn spent(&self, spent: Spent) {
        self.send(Outgoing::Spent(spent));
    }
}

/// What the learning loop takes from the fleet.
pub struct ForLearning {
    pub fleet: Fleet,
    /// Other hosts' contributions and releases.
    pub incoming: Receiver<Incoming>,
    /// Set when Redis (re)connects: every own contribution is to be published again.
    pub republish: Arc<AtomicBool>,
}

/// What [`start`] hands back.
pub struct Started {
    /// The learning loop's part.
    pub learning: ForLearning,
    /// A handle for the daemon's producers.
    pub fleet: Fleet,
    /// Operators' entries from other hosts.
    pub lists: tokio::sync::mpsc::Receiver<ListChange>,
    /// Tokens other hosts took from users' buckets.
    pub spent: tokio::sync::mpsc::Receiver<Spent>,
}

/// Starts the link task on the current tokio runtime. `wake` is sent a unit whenever
/// something arrives for the learning loop (it waits on its line channel).
pub fn start(settings: Settings, wake: impl Fn() + Send + Sync + 'static) -> Started {
    let (out, out_rx) = tokio::sync::mpsc::channel(BUFFER);
    let (to_learning, incoming) = std::sync::mpsc::sync_channel(BUFFER);
    let (lists_tx, lists_rx) = tokio::sync::mpsc::channel(1024);
    let (spent_tx, spent_rx) = tokio::sync::mpsc::channel(BUFFER);
    let republish = Arc::new(AtomicBool::new(false));
    *STATUS.lock().unwrap_or_else(|e| e.into_inner()) = Some(Status {
        redis: settings.shown(),
        name: settings.name.clone(),
        ..Status::default()
    });
    let fleet = Fleet { out };
    tokio::spawn(link::run(
        settings,
        out_rx,
        link::Deliver {
            to_learning,
            wake: Box::new(wake),
            lists: lists_tx,
            spent: spent_tx,
            republish: republish.clone(),
        },
    ));
    Started {
        learning: ForLearning {
            fleet: fleet.clone(),
            incoming,
            republish,
        },
        fleet,
        lists: lists_rx,
        spent: spent_rx,
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Other hosts' contributions, as last read: per (sender, host), the points at a time. The
/// learning loop turns each update into the change of their sum, decayed to now.
pub struct Peers {
    contributions: HashMap<(Sender, Box<str>), (f64, u64)>,
    capacity: usize,
    half_life: Duration,
    /// Updates refused because the table was full.
    pub full: u64,
}

impl Peers {
    pub fn new(capacity: usize, half_life: Duration) -> Peers {
        Peers {
            contributions: HashMap::new(),
            capacity,
            half_life,
            full: 0,
        }
    }

    fn decayed(&self, points: f64, at_ms: u64, now_ms: u64) -> f64 {
        decayed(points, at_ms, now_ms, self.half_life)
    }

    /// Records `host`'s contribution for `sender`; returns how much the sum of the others'
    /// points changes by, at `now_ms` (0 for an update older than the one held).
    pub fn update(
        &mut self,
        host: &str,
        sender: &Sender,
        points: f64,
        at_ms: u64,
        now_ms: u64,
    ) -> f64 {
        let key = (sender.clone(), Box::<str>::from(host));
        let old = match self.contributions.get(&key) {
            Some(&(_, old_at)) if old_at > at_ms => return 0.0,
            Some(&(p, old_at)) => self.decayed(p, old_at, now_ms),
            None => 0.0,
        };
        if points < wire::NEGLIGIBLE {
            self.contributions.remove(&key);
        } else if self.contributions.len() >= self.capacity
            && !self.contributions.contains_key(&key)
        {
            self.full += 1;
            return 0.0;
        } else {
            self.contributions.insert(key, (points, at_ms));
        }
        self.decayed(points, at_ms, now_ms) - old
    }

    /// Forgets every host's contribution for `sender`.
    pub fn release(&mut self, sender: &Sender) {
        self.contributions.retain(|(s, _), _| s != sender);
    }

    /// Each other host's points for `sender` now, for `slowgate show`.
    pub fn of(&self, sender: &Sender, now_ms: u64) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = self
            .contributions
            .iter()
            .filter(|((s, _), _)| s == sender)
            .map(|((_, h), &(p, at))| (h.to_string(), self.decayed(p, at, now_ms)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Drops contributions that decayed to nothing (called now and then; bounded work).
    pub fn sweep(&mut self, now_ms: u64) {
        let half_life = self.half_life;
        self.contributions
            .retain(|_, (p, at)| decayed(*p, *at, now_ms, half_life) >= wire::NEGLIGIBLE);
    }
}

/// `points` given at `at_ms`, decayed to `now_ms`.
fn decayed(points: f64, at_ms: u64, now_ms: u64, half_life: Duration) -> f64 {
    let elapsed = now_ms.saturating_sub(at_ms) as f64 / 1000.0;
    points * (-elapsed / half_life.as_secs_f64()).exp2()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_turn_rewrites_into_changes_of_the_sum() {
        let mut p = Peers::new(2, Duration::from_secs(600));
        let s = Sender::Source("203.0.113.66".parse().unwrap());
        let t = 1_000_000;
        assert_eq!(p.update("mx2", &s, 8.0, t, t), 8.0);
        // The same value again: nothing changes (rewrites are harmless).
        assert_eq!(p.update("mx2", &s, 8.0, t, t), 0.0);
        // A newer value: the difference; an older one is ignored.
        assert!((p.update("mx2", &s, 10.0, t + 1, t + 1) - 2.0).abs() < 1e-4);
        assert_eq!(p.update("mx2", &s, 1.0, t, t + 1), 0.0);
        // Ten minutes later, half is left.
        let later = t + 600_000;
        assert!((p.of(&s, later)[0].1 - 5.0).abs() < 1e-4);
        // A second host, then a full table refuses a third key.
        assert_eq!(p.update("mx3", &s, 1.0, later, later), 1.0);
        let other = Sender::Source("203.0.113.67".parse().unwrap());
        assert_eq!(p.update("mx2", &other, 1.0, later, later), 0.0);
        assert_eq!(p.full, 1);
        // Withdrawn: the negative of what it was worth now.
        assert!((p.update("mx2", &s, 0.0, later, later) + 5.0).abs() < 1e-4);
        p.release(&s);
        assert!(p.of(&s, later).is_empty());
    }
}
