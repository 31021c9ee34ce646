//! Per-user sending limits inside the MTA: one policy service, answered from memory, with
//! three front ends that all fail open at the MTA. The decisions ([`quota`]) are the same for
//! Postfix's policy delegation protocol ([`postfix`]) and the milter ([`milter`]): per SASL
//! user, messages and recipients per unit of time (overrides per user and per domain, narrowed
//! as the user's level rises), counted once per message; per client address, its level's limit
//! used as a message rate. Dovecot's authentication policy ([`dovecot`]) tarpits or refuses
//! logins of limited sources and of names that keep failing, and reports logins as events at
//! once. The daemon's listeners are `daemon/policy.rs`.

pub mod bucket;
pub mod dovecot;
pub mod milter;
pub mod postfix;
pub mod quota;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// Where a front end listens.
#[derive(Clone, Debug, PartialEq)]
pub enum Listen {
    Unix(std::path::PathBuf),
    Tcp(std::net::SocketAddr),
}

/// `[policy]` and `[users]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Postfix's policy protocol (`listen`); None: not offered.
    pub listen: Option<Listen>,
    /// The milter (`milter`); None: not offered.
    pub milter: Option<Listen>,
    /// Dovecot's authentication policy over HTTP (`dovecot`); None: not offered.
    pub dovecot: Option<dovecot::Settings>,
    pub quotas: quota::Settings,
    /// How long a connection may wait between requests, and within one.
    pub idle: Duration,
}

/// What the front ends ask of the daemon: the reply to a question, None for no opinion
/// (Postfix's DUNNO, the milter's continue). The daemon's answer counts, logs, and turns a
/// user's deferral into an event.
pub trait Decide: Send + Sync {
    fn decide(&self, front: &'static str, ask: &quota::Ask) -> Option<String>;
}

/// A user's buckets, for `slowgate show` and `top`.
pub trait Inspect: Send + Sync {
    fn buckets(&self, user: &str) -> quota::UserBuckets;
}

/// Users' levels as the learning loop last set them, read by every front end. Bounded: a
/// full table forgets a user at level 0 first (that is what an unknown user is).
#[derive(Default)]
pub struct UserLevels {
    levels: RwLock<HashMap<Box<str>, (u8, bool)>>,
}

/// Users whose level is remembered, at most.
const MAX_USER_LEVELS: usize = 100_000;

impl UserLevels {
    /// `user` is now at `level`, `blocked` when that level blocks.
    pub fn set(&self, user: &str, level: usize, blocked: bool) {
        let mut levels = self.levels.write().unwrap_or_else(|e| e.into_inner());
        if level == 0 {
            levels.remove(user);
            return;
        }
        if levels.len() >= MAX_USER_LEVELS
            && !levels.contains_key(user)
            && let Some(lowest) = levels
                .iter()
                .min_by_key(|(_, l)| l.0)
                .map(|(u, _)| u.clone())
        {
            levels.remove(&lowest);
        }
        levels.insert(user.into(), (level.min(255) as u8, blocked));
    }

    /// `user`'s level and whether it blocks.
    pub fn get(&self, user: &str) -> (usize, bool) {
        let levels = self.levels.read().unwrap_or_else(|e| e.into_inner());
        levels
            .get(user)
            .map_or((0, false), |&(l, b)| (usize::from(l), b))
    }
}

/// The front ends, for metrics.
pub const FRONTS: [&str; 3] = ["postfix", "milter", "dovecot"];

/// Answers by front end, verdict and reason; malformed requests per front end; answer times.
#[derive(Default)]
struct Counts {
    answers: BTreeMap<(&'static str, &'static str, &'static str), u64>,
}

static COUNTS: Mutex<Counts> = Mutex::new(Counts {
    answers: BTreeMap::new(),
});
/// Events for the learning loop dropped because its queue was full.
pub static EVENTS_DROPPED: AtomicU64 = AtomicU64::new(0);
static MALFORMED: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
/// Upper bounds of the answer-time histogram, in seconds.
pub const LATENCY_BOUNDS: [f64; 7] = [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025];
static LATENCY: [[AtomicU64; 8]; 3] = [const { [const { AtomicU64::new(0) }; 8] }; 3];
static LATENCY_NS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
static SLOWEST_NS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

fn front_index(front: &str) -> usize {
    FRONTS.iter().position(|f| *f == front).unwrap_or(0)
}

/// Counts one answer of `front` that took `ns`.
pub fn answered(front: &'static str, verdict: &'static str, reason: &'static str, ns: u64) {
    let i = front_index(front);
    *COUNTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .answers
        .entry((front, verdict, reason))
        .or_default() += 1;
    let s = ns as f64 / 1e9;
    let bucket = LATENCY_BOUNDS
        .iter()
        .position(|b| s <= *b)
        .unwrap_or(LATENCY_BOUNDS.len());
    LATENCY[i][bucket].fetch_add(1, Ordering::Relaxed);
    LATENCY_NS[i].fetch_add(ns, Ordering::Relaxed);
    SLOWEST_NS[i].fetch_max(ns, Ordering::Relaxed);
}

/// Counts a request of `front` refused as malformed.
pub fn malformed(front: &'static str) {
    MALFORMED[front_index(front)].fetch_add(1, Ordering::Relaxed);
}

/// What the metrics endpoint shows.
pub struct Snapshot {
    pub answers: Vec<((&'static str, &'static str, &'static str), u64)>,
    pub fronts: Vec<Front>,
}

/// One front end's counts.
pub struct Front {
    pub name: &'static str,
    pub malformed: u64,
    /// The answer-time histogram's counts per [`LATENCY_BOUNDS`] and above (not cumulative).
    pub latency: [u64; 8],
    /// The sum of answer times, and the slowest, in seconds.
    pub seconds: f64,
    pub slowest: f64,
}

pub fn snapshot() -> Snapshot {
    let answers = COUNTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .answers
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect();
    let fronts = FRONTS
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
            let mut hist = [0; 8];
            for (h, c) in hist.iter_mut().zip(&LATENCY[i]) {
                *h = load(c);
            }
            Front {
                name: f,
                malformed: load(&MALFORMED[i]),
                latency: hist,
                seconds: load(&LATENCY_NS[i]) as f64 / 1e9,
                slowest: load(&SLOWEST_NS[i]) as f64 / 1e9,
            }
        })
        .collect();
    Snapshot { answers, fronts }
}
