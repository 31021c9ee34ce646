//! Reputation feeds (`[[feeds]]`): lists of bad networks fetched on a schedule (Spamhaus DROP,
//! FireHOL, rbldnsd zones, plain files) and enforced as deny entries, limits, or a baseline of
//! points.
//!
//! One thread fetches every feed when it is due (or when `slowgate feed update NAME` asks),
//! conditionally (ETag / If-Modified-Since, a file's modification time), and keeps the last good
//! copy on disk. A copy is applied only whole: it must parse completely ([`formats`]), hold no
//! entry wider than the feed's widest prefix, and not shrink or grow the list by more than the
//! feed's `max_change` share; otherwise it is refused, reported, and the old copy stays. Each
//! copy goes to the learning loop as the feed's full set ([`FeedSet`]); the enforcer applies the
//! difference in batches with one generation bump, and entries carry `max_age` as their TTL,
//! so a copy nobody could confirm for `max_age` (failed fetches, a dead daemon) stops being
//! enforced.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::{
        Mutex,
        mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::domain::{Limit, Network, unix_now};

pub mod fetch;
pub mod formats;
pub mod share;

pub use formats::Format;

/// What a feed's entries do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Deny list entries: new connections dropped.
    Deny,
    /// A limit on each entry (a host, a prefix or a network of the configured lengths).
    Limit(Limit),
    /// Points a listed address earns when first seen in the logs; they decay as usual.
    Points(f64),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Deny => write!(f, "deny"),
            Action::Limit(limit) => write!(f, "limit {limit}"),
            Action::Points(p) => write!(f, "{p} points"),
        }
    }
}

/// Where a feed comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    Url(String),
    Path(PathBuf),
}

/// One `[[feeds]]` table, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Feed {
    pub name: String,
    pub origin: Origin,
    pub format: Format,
    pub action: Action,
    pub refresh: Duration,
    /// How long the last good copy is enforced when it cannot be confirmed.
    pub max_age: Duration,
    /// The largest share by which one update may shrink or grow the list.
    pub max_change: f64,
    /// The widest entries taken: prefix lengths in the family's own notation.
    pub widest_v4: u32,
    pub widest_v6: u32,
    /// How long one fetch may take in all.
    pub timeout: Duration,
    /// The largest body accepted.
    pub max_bytes: u64,
}

/// The widest entry an import or a feed takes by default: an IPv4 /8, an IPv6 /19 (a line
/// like `0.0.0.0/0` is a mistake, or an attack, that would deny everyone).
pub const WIDEST_V4: u32 = 8;
pub const WIDEST_V6: u32 = 19;

/// A feed's full set, as the enforcer applies it (an empty set withdraws the feed).
#[derive(Clone, Debug, PartialEq)]
pub struct FeedSet {
    pub name: String,
    pub action: Action,
    /// Distinct and sorted.
    pub networks: Vec<Network>,
    /// The entries' time to live (the feed's `max_age`).
    pub ttl: Duration,
}

/// Lists below this size are not held to `max_change` (a list of 4 that becomes 8 is news,
/// not an accident).
const GUARDED_FROM: usize = 10;

/// Why a copy is not applied, if it is not.
pub fn guard(feed: &Feed, old: Option<usize>, copy: &formats::Copy) -> anyhow::Result<()> {
    for n in &copy.networks {
        let (len, widest) = if n.is_v4() {
            (n.prefix_len - sg_common::V4_MAPPED_BITS, feed.widest_v4)
        } else {
            (n.prefix_len, feed.widest_v6)
        };
        if len < widest {
            anyhow::bail!("{n} is wider than /{widest}, the widest entry this feed may hold");
        }
    }
    let new = copy.networks.len();
    if let Some(old) = old.filter(|old| *old >= GUARDED_FROM) {
        let change = (new as f64 - old as f64).abs() / old as f64;
        if change > feed.max_change {
            anyhow::bail!(
                "the list would {} from {old} to {new} entries, more than max_change ({:.0}%)",
                if new < old { "shrink" } else { "grow" },
                feed.max_change * 100.0
            );
        }
    }
    Ok(())
}

/// What `slowgate feed list` and the metrics show of a feed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub format: String,
    pub action: String,
    /// Entries of the copy being enforced (0 when none is).
    pub entries: u64,
    /// The last fetch that gave a copy or confirmed it (Unix seconds; 0: never).
    pub last_success_unix: u64,
    pub last_error_unix: u64,
    pub last_error: Option<String>,
    /// Copies refused by the guards, and fetches that failed.
    pub refused: u64,
    pub failed: u64,
    /// Whether a copy is enforced.
    pub enforced: bool,
}

/// Every feed's status (the metrics endpoint and `slowgate feed list` read it).
pub static STATUS: Mutex<Vec<Status>> = Mutex::new(Vec::new());

fn with_status(name: &str, f: impl FnOnce(&mut Status)) {
    let mut all = STATUS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = all.iter_mut().find(|s| s.name == name) {
        f(s);
    }
}

/// A request to the feeds thread.
pub enum Command {
    /// Fetch `name` now; the answer says what happened.
    Update {
        name: String,
        reply: Sender<Result<String, String>>,
    },
}

/// What the control socket holds: a way to ask for an update.
#[derive(Clone)]
pub struct Control {
    commands: SyncSender<Command>,
}

impl Control {
    /// Fetches `name` now and waits for the outcome (at most `wait`).
    pub fn update(&self, name: &str, wait: Duration) -> Result<String, String> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.commands
            .try_send(Command::Update {
                name: name.to_string(),
                reply,
            })
            .map_err(|_| "the feeds thread is busy; try again".to_string())?;
        answer
            .recv_timeout(wait)
            .map_err(|_| format!("no answer within {}s", wait.as_secs()))?
    }
}

/// Addresses remembered as scored at most (the set is emptied when full).
const SCORED: usize = 200_000;

/// What the learning loop holds: the feeds' sets as they arrive, and the points feeds, which
/// it asks about each client address it sees.
pub struct Feeds {
    sets: Receiver<FeedSet>,
    points: HashMap<String, PointsList>,
    scored: HashSet<IpAddr>,
}

/// A points feed's networks, for lookups: per prefix length present, the masked addresses.
struct PointsList {
    points: f64,
    by_len: Vec<(u32, HashSet<sg_common::Addr>)>,
}

impl PointsList {
    fn new(points: f64, networks: &[Network]) -> PointsList {
        let mut by_len: HashMap<u32, HashSet<sg_common::Addr>> = HashMap::new();
        for n in networks {
            by_len.entry(n.prefix_len).or_default().insert(n.addr);
        }
        PointsList {
            points,
            by_len: by_len.into_iter().collect(),
        }
    }

    fn holds(&self, addr: IpAddr) -> bool {
        let mapped = Network::from_ipnet(ipnet::IpNet::from(addr)).addr;
        self.by_len
            .iter()
            .any(|(len, set)| set.contains(&masked(mapped, *len)))
    }
}

/// `addr` with the bits after the first `len` cleared.
fn masked(mut addr: sg_common::Addr, len: u32) -> sg_common::Addr {
    for (i, byte) in addr.iter_mut().enumerate() {
        let keep = len.saturating_sub(8 * i as u32).min(8);
        *byte &= (0xff00u16 >> keep) as u8;
    }
    addr
}

impl Feeds {
    /// Starts the feeds thread; `state_dir` keeps the last good copies.
    pub fn start(
        feeds: Vec<Feed>,
        state_dir: PathBuf,
        share: Option<Box<dyn share::Share>>,
    ) -> std::io::Result<(Feeds, Control)> {
        let (commands, asked) = std::sync::mpsc::sync_channel(8);
        let (send, sets) = std::sync::mpsc::sync_channel(64);
        *STATUS.lock().unwrap_or_else(|e| e.into_inner()) = feeds
            .iter()
            .map(|f| Status {
                name: f.name.clone(),
                format: f.format.name().into(),
                action: f.action.to_string(),
                ..Status::default()
            })
            .collect();
        let dir = state_dir.join("feeds");
        std::fs::create_dir_all(&dir)?;
        std::thread::Builder::new()
            .name("sg-feeds".into())
            .spawn(move || Fetcher::new(feeds, dir, send, share).run(&asked))?;
        Ok((
            Feeds {
                sets,
                points: HashMap::new(),
                scored: HashSet::new(),
            },
            Control { commands },
        ))
    }

    /// The sets that arrived since the last call, for the enforcer; points feeds are kept here.
    pub fn arrived(&mut self) -> Vec<FeedSet> {
        let mut out = Vec::new();
        for set in self.sets.try_iter() {
            if let Action::Points(points) = set.action {
                self.points
                    .insert(set.name.clone(), PointsList::new(points, &set.networks));
                self.scored.clear();
            }
            out.push(set);
        }
        out
    }

    /// A client address seen in the logs: the points feeds listing it, summed, the first
    /// time it is seen (None when no feed lists it or it was scored already).
    pub fn seen(&mut self, addr: IpAddr) -> Option<f64> {
        if self.points.is_empty() {
            return None;
        }
        if self.scored.len() >= SCORED {
            self.scored.clear();
        }
        if !self.scored.insert(addr) {
            return None;
        }
        let points: f64 = self
            .points
            .values()
            .filter(|list| list.holds(addr))
            .map(|list| list.points)
            .sum();
        (points > 0.0).then_some(points)
    }
}

/// A feed's saved state, beside its last good copy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    etag: Option<String>,
    modified: Option<String>,
    /// When a fetch last gave or confirmed the copy (Unix seconds).
    checked_unix: u64,
    expires_unix: Option<u64>,
}

/// The feeds thread.
struct Fetcher {
    feeds: Vec<Feed>,
    dir: PathBuf,
    send: SyncSender<FeedSet>,
    /// Per feed: the copy being enforced (None: none is), its meta, when to look next.
    copies: Vec<Option<Vec<Network>>>,
    metas: Vec<Meta>,
    next: Vec<Instant>,
    /// In a fleet: one host fetches, the others take its copy ([`share`]).
    share: Option<Box<dyn share::Share>>,
}

/// How soon a failed fetch is tried again (or the refresh interval, if shorter).
const RETRY: Duration = Duration::from_secs(300);

impl Fetcher {
    fn new(
        feeds: Vec<Feed>,
        dir: PathBuf,
        send: SyncSender<FeedSet>,
        share: Option<Box<dyn share::Share>>,
    ) -> Fetcher {
        let n = feeds.len();
        let mut fetcher = Fetcher {
            feeds,
            dir,
            send,
            copies: vec![None; n],
            metas: vec![Meta::default(); n],
            next: vec![Instant::now(); n],
            share,
        };
        for i in 0..n {
            fetcher.restore(i);
        }
        fetcher
    }

    fn list_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.list", self.feeds[i].name))
    }
    fn meta_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.json", self.feeds[i].name))
    }

    /// The last good copy from disk, enforced at once while it is young enough; the next
    /// fetch when the refresh interval since it has passed.
    fn restore(&mut self, i: usize) {
        let feed = &self.feeds[i];
        let meta: Meta = match std::fs::read(self.meta_path(i)) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(meta) => meta,
                Err(e) => {
                    tracing::warn!("feed {}: saved state unreadable ({e}); fetching", feed.name);
                    return;
                }
            },
            Err(_) => return,
        };
        let copy = std::fs::read_to_string(self.list_path(i))
            .map_err(anyhow::Error::from)
            .and_then(|text| formats::parse(Format::Plain, &text, unix_now()));
        let copy = match copy {
            Ok(copy) => copy.networks,
            Err(e) => {
                tracing::warn!(
                    "feed {}: last good copy unreadable ({e:#}); fetching",
                    feed.name
                );
                return;
            }
        };
        let age = Duration::from_secs(unix_now().saturating_sub(meta.checked_unix));
        self.next[i] = Instant::now() + feed.refresh.saturating_sub(age);
        self.metas[i] = meta;
        if !self.stale(i) {
            tracing::info!(
                "feed {}: enforcing the last good copy ({} entries, {}s old)",
                feed.name,
                copy.len(),
                age.as_secs()
            );
            with_status(&feed.name, |s| {
                s.last_success_unix = self.metas[i].checked_unix
            });
            self.enforce(i, copy);
        }
    }

    fn run(mut self, asked: &Receiver<Command>) {
        loop {
            let now = Instant::now();
            let soonest = self.next.iter().min().copied().unwrap_or(now + RETRY);
            let wait = soonest
                .saturating_duration_since(now)
                .min(Duration::from_secs(1));
            match asked.recv_timeout(wait) {
                Ok(Command::Update { name, reply }) => {
                    let answer = match self.feeds.iter().position(|f| f.name == name) {
                        Some(i) => self.check(i).map_err(|e| format!("{e:#}")),
                        None => Err(format!("no feed named {name:?}")),
                    };
                    let _ = reply.send(answer);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            for i in 0..self.feeds.len() {
                if Instant::now() >= self.next[i] {
                    let _ = self.check(i);
                }
                if self.copies[i].is_some() && self.stale(i) {
                    self.withdraw(i);
                }
            }
        }
    }

    /// Whether the copy may no longer be enforced: unconfirmed for `max_age`, or past the
    /// expiry its data names.
    fn stale(&self, i: usize) -> bool {
        let meta = &self.metas[i];
        let now = unix_now();
        now.saturating_sub(meta.checked_unix) > self.feeds[i].max_age.as_secs()
            || meta.expires_unix.is_some_and(|at| now >= at)
    }

    /// Fetches feed `i` and applies what came; reports, schedules the next fetch.
    fn check(&mut self, i: usize) -> anyhow::Result<String> {
        let feed = self.feeds[i].clone();
        // The next look, unless what follows asks for one sooner.
        self.next[i] = Instant::now() + feed.refresh;
        let result = match self.share.is_some() {
            true => self.check_shared(i),
            false => self.fetch_and_apply(i),
        };
        let now = unix_now();
        match &result {
            Ok(said) => {
                tracing::info!("feed {}: {said}", feed.name);
                with_status(&feed.name, |s| s.last_success_unix = now);
            }
            Err(e) => {
                self.next[i] = Instant::now() + feed.refresh.min(RETRY);
                tracing::warn!("feed {}: {e:#}; the old copy stays", feed.name);
                with_status(&feed.name, |s| {
                    s.last_error_unix = now;
                    s.last_error = Some(format!("{e:#}"));
                });
            }
        }
        result
    }

    fn fetch_and_apply(&mut self, i: usize) -> anyhow::Result<String> {
        let feed = self.feeds[i].clone();
        let meta = self.metas[i].clone();
        let fetched = fetch::fetch(&feed, meta.etag.as_deref(), meta.modified.as_deref())
            .inspect_err(|_| with_status(&feed.name, |s| s.failed += 1))?;
        let now = unix_now();
        let (body, etag, modified) = match fetched {
            fetch::Fetched::Unchanged => {
                self.metas[i].checked_unix = now;
                self.save_meta(i)?;
                let Some(copy) = self.copies[i].clone().or_else(|| self.saved_copy(i)) else {
                    anyhow::bail!("not modified, but no copy is kept: fetching in full next time");
                };
                let n = copy.len();
                if !self.stale(i) {
                    self.enforce(i, copy);
                }
                return Ok(format!("not modified ({n} entries)"));
            }
            fetch::Fetched::New {
                body,
                etag,
                modified,
            } => (body, etag, modified),
        };
        let copy = formats::parse(feed.format, &body, now)
            .inspect_err(|_| with_status(&feed.name, |s| s.refused += 1))
            .context("copy refused")?;
        self.accept(i, copy, (etag, modified), now)
    }

    /// Applies a parsed copy checked at `checked_unix`, if the guards let it: saves it as the
    /// last good copy and hands it to the enforcer.
    fn accept(
        &mut self,
        i: usize,
        copy: formats::Copy,
        (etag, modified): (Option<String>, Option<String>),
        checked_unix: u64,
    ) -> anyhow::Result<String> {
        let feed = self.feeds[i].clone();
        let now = checked_unix;
        let old = self.copies[i].as_ref().map(Vec::len);
        if let Err(e) = guard(&feed, old, &copy) {
            with_status(&feed.name, |s| s.refused += 1);
            return Err(e.context("copy refused"));
        }
        if copy.expires_unix.is_some_and(|at| now >= at) {
            anyhow::bail!("the data expired (rbldnsd $TIMESTAMP)");
        }
        let text: String = copy.networks.iter().map(|n| format!("{n}\n")).collect();
        write_atomically(&self.list_path(i), text.as_bytes())?;
        self.metas[i] = Meta {
            etag,
            modified,
            checked_unix: now,
            expires_unix: copy.expires_unix,
        };
        self.save_meta(i)?;
        let (added, removed) = match &self.copies[i] {
            Some(old) => {
                let old: HashSet<&Network> = old.iter().collect();
                let new: HashSet<&Network> = copy.networks.iter().collect();
                (new.difference(&old).count(), old.difference(&new).count())
            }
            None => (copy.networks.len(), 0),
        };
        let n = copy.networks.len();
        self.enforce(i, copy.networks);
        Ok(format!("{n} entries (+{added} -{removed})"))
    }

    fn saved_copy(&self, i: usize) -> Option<Vec<Network>> {
        let text = std::fs::read_to_string(self.list_path(i)).ok()?;
        formats::parse(Format::Plain, &text, unix_now())
            .ok()
            .map(|c| c.networks)
    }

    fn save_meta(&self, i: usize) -> anyhow::Result<()> {
        write_atomically(&self.meta_path(i), &serde_json::to_vec(&self.metas[i])?)
    }

    fn enforce(&mut self, i: usize, networks: Vec<Network>) {
        let feed = &self.feeds[i];
        let n = networks.len() as u64;
        let _ = self.send.send(FeedSet {
            name: feed.name.clone(),
            action: feed.action,
            networks: networks.clone(),
            ttl: feed.max_age,
        });
        self.copies[i] = Some(networks);
        with_status(&feed.name, |s| {
            s.entries = n;
            s.enforced = true;
        });
    }

    fn withdraw(&mut self, i: usize) {
        let feed = &self.feeds[i];
        tracing::warn!(
            "feed {}: the last good copy is stale (unconfirmed for max_age, or expired); no \
             longer enforced",
            feed.name
        );
        let _ = self.send.send(FeedSet {
            name: feed.name.clone(),
            action: feed.action,
            networks: Vec::new(),
            ttl: feed.max_age,
        });
        self.copies[i] = None;
        with_status(&feed.name, |s| {
            s.entries = 0;
            s.enforced = false;
        });
    }
}

/// Writes `path` whole or not at all (a temporary file renamed over it).
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {}", tmp.display()))
}

#[cfg(test)]
mod tests;
