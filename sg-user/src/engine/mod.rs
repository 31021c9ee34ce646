//! The engine: spam points per source, prefix, network, SASL user and country, exponential
//! decay, and levels with hysteresis. Pure logic over a caller-supplied clock (nanoseconds), so
//! tests and `slowgate replay` drive time by hand.
//!
//! Points decay lazily: each tracked sender stores (points, when); reading them at `now`
//! multiplies by 2^(-(now - when) / half_life). No per-tick work per sender: a timer queue
//! holds, for each one, the earliest second at which its level may step down (or, at level 0,
//! it may be forgotten), so a tick costs what comes due, not what is tracked.
//!
//! Levels climb at once when points pass a threshold (strong suppression right after a burst)
//! and come down one level at a time, each step only after the points fell below a fraction of
//! the current level's threshold and the level has been held for `min_hold` (a gradual return).
//!
//! Who gets limited:
//! - a source, by its own points;
//! - its prefix (IPv4 /24, IPv6 /64), by the points of all its addresses ("float" senders that
//!   rotate addresses inside it are limited as one), an IPv4 prefix only as far as the number of
//!   its addresses that contributed justifies (rotation.rs): one spammer never limits its /24;
//! - its network (IPv4 /16, IPv6 /48), when `network_after` of its prefixes are limited at once:
//!   the network takes the highest level among them;
//! - the sources a SASL user logs in from, when the user reaches a level (a stolen password
//!   used from many addresses limits each of them as it shows up).
//!
//! Countries weigh events (a multiplier) and may have their own level table.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use crate::{
    domain::{FastMap, FastSet, Limit, Sender, country_name},
    events::{Event, EventKind},
};

mod change;
mod decay;
mod fleet;
mod geo;
mod rotation;
mod settings;
mod snapshot;
#[cfg(test)]
mod tests;
mod timers;

pub use change::{Change, SenderInfo};
use decay::{counted, decay, level_for, secs, truncate};
pub use geo::Geo;
pub use settings::{EngineConfig, KIND_NAMES, LevelRow, Weights, kind_index};
pub use snapshot::{SavedSender, Snapshot};

#[derive(Clone, Copy, Debug, PartialEq)]
struct Tracked {
    /// All points, other hosts' of a fleet included.
    points: f32,
    /// The part of `points` other hosts of a fleet earned (decays with them).
    fleet: f32,
    /// Seconds on the caller's clock when `points` was last brought up to date.
    at_s: u32,
    level_since_s: u32,
    level: u8,
    country: [u8; 2],
    /// Events since the last level change, per [`KIND_NAMES`] (saturating).
    recent: [u8; KIND_NAMES.len()],
    /// Second of this sender's live entry in the timer queue; [`NOT_SCHEDULED`] when none.
    due_s: u32,
    /// Second since which the kernel's refusals hold it at its level; [`NOT_HELD`] when not.
    held_since_s: u32,
    /// A prefix's addresses that contributed lately (unused for other senders).
    contributors: rotation::Contributors,
}

/// `Tracked::held_since_s` of a sender no refusal holds.
const NOT_HELD: u32 = u32::MAX;

/// `Tracked::due_s` of a sender with no entry in the timer queue.
const NOT_SCHEDULED: u32 = u32::MAX;

/// Points under which a sender at level 0 is forgotten.
const NEGLIGIBLE_POINTS: f64 = 0.01;

const NO_COUNTRY: [u8; 2] = [0, 0];

impl Tracked {
    /// A sender first seen at `now`: no points, level 0.
    fn new(now: u32, country: [u8; 2]) -> Tracked {
        Tracked {
            points: 0.0,
            fleet: 0.0,
            at_s: now,
            level_since_s: now,
            level: 0,
            country,
            recent: [0; KIND_NAMES.len()],
            due_s: NOT_SCHEDULED,
            held_since_s: NOT_HELD,
            contributors: rotation::Contributors::default(),
        }
    }
}

/// Senders examined to choose one to forget when the table is full.
pub const EVICTION_SAMPLE: usize = 64;

/// Recent source addresses remembered per user.
const USER_SOURCES: usize = 4;

pub struct Engine {
    config: EngineConfig,
    tracked: FastMap<Sender, Tracked>,
    /// Limited prefixes of each network.
    limited_prefixes: FastMap<IpNet, FastSet<IpNet>>,
    /// The last few addresses each user logged in from (bounded like `tracked`).
    user_sources: FastMap<Box<str>, [Option<IpAddr>; USER_SOURCES]>,
    allow: Vec<IpNet>,
    geo: Option<Geo>,
    /// Second -> senders to look at again then. An entry is live when its second is the
    /// sender's `due_s`; others were superseded and are skipped. Its second is never later
    /// than the sender's real due time (points only ever push that later, and a level change
    /// queues a fresh entry), so nothing is looked at too late.
    timers: BTreeMap<u32, Vec<Sender>>,
    /// Entries in `timers`, live or superseded.
    timer_entries: usize,
    /// Tracked senders with a level above 0 (so that listing them costs what they are).
    limited: FastSet<Sender>,
    /// Timer entries taken off the queue so far (what a tick costs).
    timer_pops: u64,
    /// Senders whose own points changed since [`Engine::take_changed`] (a fleet publishes
    /// them); bounded by `tracked`'s bound, as each is a tracked sender.
    changed: FastSet<Sender>,
    /// Whether `changed` is kept (a fleet's host).
    share: bool,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            config,
            tracked: FastMap::default(),
            limited_prefixes: FastMap::default(),
            user_sources: FastMap::default(),
            allow: Vec::new(),
            geo: None,
            timers: BTreeMap::new(),
            timer_entries: 0,
            limited: FastSet::default(),
            timer_pops: 0,
            changed: FastSet::default(),
            share: false,
        }
    }

    pub fn with_geo(mut self, geo: Option<Geo>) -> Engine {
        self.geo = geo;
        self
    }

    /// Senders in these networks earn no points and are never limited (the allow list).
    pub fn set_allowed(&mut self, allow: Vec<IpNet>) {
        self.allow = allow;
    }

    /// Whether the allow list covers `net` (an address is a /32 or /128).
    fn allowed(&self, net: &IpNet) -> bool {
        self.allow.iter().any(|n| n.contains(net))
    }

    /// New weights, levels and lengths (a reload); every sender keeps its points and level,
    /// and comes down through the new table as it decays.
    /// Takes a new config (a reload). Every limited sender is re-aligned with the new level
    /// tables: one above the top of its table comes down to that top, and each gets its
    /// level's limit as the new table defines it. The returned changes carry those limits to
    /// the kernel, so no sender stays at a level, or under a limit, that no longer exists.
    pub fn set_config(&mut self, config: EngineConfig, now_ns: u64) -> Vec<Change> {
        let limited: Vec<(Sender, usize, Option<Limit>)> = self
            .tracked
            .iter()
            .filter(|(s, t)| t.level > 0 && !matches!(s, Sender::Country(_)))
            .map(|(s, t)| {
                let level = usize::from(t.level);
                (s.clone(), level, self.limit_for(s, level))
            })
            .collect();
        self.config = config;
        let now = secs(now_ns);
        let half_life = self.config.half_life;
        let mut changes = Vec::new();
        for (sender, level, was) in limited {
            let top = self.table(self.tracked[&sender].country).len();
            let to = level.min(top);
            let limit = self.limit_for(&sender, to);
            if to == level && limit == was {
                continue;
            }
            let Some(t) = self.tracked.get_mut(&sender) else {
                continue;
            };
            t.level = to as u8;
            if to != level {
                t.level_since_s = now;
            }
            let country = (t.country != NO_COUNTRY).then_some(t.country);
            changes.push(Change {
                points: decay(t.points, t.at_s, now, half_life),
                events: Vec::new(),
                sender,
                from: level,
                to,
                limit,
                country,
            });
        }
        // Thresholds, holds and the half-life may all have changed: every due time did.
        self.limited = self
            .tracked
            .iter()
            .filter(|(_, t)| t.level > 0)
            .map(|(s, _)| s.clone())
            .collect();
        self.reschedule_all();
        changes
    }

    /// What is known of one sender, or None when it is not tracked.
    pub fn info(&self, sender: &Sender, now_ns: u64) -> Option<SenderInfo> {
        let t = self.tracked.get(sender)?;
        let events = counted(&t.recent);
        Some(SenderInfo {
            sender: sender.to_string(),
            level: usize::from(t.level),
            points: decay(t.points, t.at_s, secs(now_ns), self.config.half_life),
            country: (t.country != NO_COUNTRY).then(|| country_name(t.country)),
            limit: self
                .limit_for(sender, usize::from(t.level))
                .map(|l| l.to_string()),
            recent_events: events
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
            buckets: None,
        })
    }

    /// The `n` tracked senders with the most points (countries aside).
    pub fn top(&self, n: usize, now_ns: u64) -> Vec<SenderInfo> {
        let mut all: Vec<SenderInfo> = self
            .tracked
            .keys()
            .filter(|s| !matches!(s, Sender::Country(_)))
            .filter_map(|s| self.info(s, now_ns))
            .collect();
        all.sort_by(|a, b| {
            b.level
                .cmp(&a.level)
                .then(b.points.total_cmp(&a.points))
                .then(a.sender.cmp(&b.sender))
        });
        all.truncate(n);
        all
    }

    /// Forgets a sender's points and level (an operator's pardon). Returns the change back to
    /// level 0 when it was limited, so the enforcer removes its limit.
    pub fn release(&mut self, sender: &Sender, now_ns: u64) -> Option<Change> {
        let now = secs(now_ns);
        let change = self.set_level(sender, 0, now);
        self.tracked.remove(sender);
        // Its own points are gone too: a fleet publishes that.
        if self.share {
            self.changed.insert(sender.clone());
        }
        change
    }

    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// How many tracked senders have a level above 0.
    pub fn limited_count(&self) -> usize {
        self.limited.len()
    }

    /// Points of `sender` at `now_ns`, decayed.
    pub fn points(&self, sender: &Sender, now_ns: u64) -> f64 {
        self.tracked.get(sender).map_or(0.0, |t| {
            decay(t.points, t.at_s, secs(now_ns), self.config.half_life)
        })
    }

    pub fn level(&self, sender: &Sender) -> usize {
        self.tracked.get(sender).map_or(0, |t| usize::from(t.level))
    }

    /// Every tracked sender with a level above 0: (sender, level, points).
    pub fn limited(&self, now_ns: u64) -> Vec<(Sender, usize, f64)> {
        let mut out: Vec<_> = self
            .limited
            .iter()
            .filter_map(|s| Some((s, self.tracked.get(s)?)))
            .map(|(s, t)| {
                let points = decay(t.points, t.at_s, secs(now_ns), self.config.half_life);
                (s.clone(), usize::from(t.level), points)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The limit level `level` means for `sender` (its country's table, if it has one).
    pub fn limit_for(&self, sender: &Sender, level: usize) -> Option<Limit> {
        if level == 0 {
            return None;
        }
        let country = self.tracked.get(sender).map_or(NO_COUNTRY, |t| t.country);
        let table = self.table(country);
        table.get(level - 1).map(|row| row.limit)
    }

    fn table(&self, country: [u8; 2]) -> &[LevelRow] {
        self.config
            .country_levels
            .get(&country)
            .map_or(&self.config.levels, Vec::as_slice)
    }

    /// The prefix a source belongs to.
    pub fn prefix_of(&self, source: IpAddr) -> IpNet {
        truncate(source, self.config.prefix_v4, self.config.prefix_v6)
    }

    /// The network (IPv4 /16, IPv6 /48 by default) an address or prefix belongs to.
    pub fn network_of(&self, addr: IpAddr) -> IpNet {
        truncate(addr, self.config.network_v4, self.config.network_v6)
    }

    /// Adds an event's points to its source, prefix, user and country; returns level changes.
    pub fn record(&mut self, event: &Event, now_ns: u64) -> Vec<Change> {
        let source = event.source;
        let mut changes = Vec::new();
        if self.allowed(&IpNet::from(source)) {
            return changes;
        }
        let country = self
            .geo
            .as_ref()
            .and_then(|g| g.country(source))
            .unwrap_or(NO_COUNTRY);
        let multiplier = self
            .config
            .country_multipliers
            .get(&country)
            .copied()
            .unwrap_or(1.0);
        let weight = self.config.weights.of(&event.kind) * multiplier;
        let kind = kind_index(&event.kind);
        let now = secs(now_ns);
        // A user earns points only for what it did once authenticated: anyone can type a name
        // and fail, so failures typed with a name count against the address that typed them,
        // never against the user (whose level reaches the addresses it logs in from).
        let user = event
            .user
            .as_deref()
            .filter(|_| !matches!(event.kind, EventKind::AuthFailure { .. }))
            .map(Box::<str>::from);
        if let Some(user) = &user
            && matches!(
                event.kind,
                EventKind::AuthSuccess { .. } | EventKind::MessageAccepted { .. }
            )
        {
            self.remember_user_source(user, source);
        }
        let prefix = self.prefix_of(source);
        changes.extend(self.add(Sender::Source(source), weight, kind, country, now));
        changes.extend(self.add_to_prefix(prefix, source, weight, kind, country, now));
        let mut senders = Vec::new();
        if let Some(user) = &user {
            senders.push(Sender::User(user.clone()));
        }
        if country != NO_COUNTRY {
            senders.push(Sender::Country(country));
        }
        for sender in senders {
            changes.extend(self.add(sender, weight, kind, country, now));
        }
        // A user's level reaches every address it logs in from.
        if let Some(user) = &user {
            let level = self.level(&Sender::User(user.clone()));
            if level > 0 && self.level(&Sender::Source(source)) < level {
                changes.extend(self.raise(Sender::Source(source), level, now));
            }
        }
        changes
    }

    fn remember_user_source(&mut self, user: &str, source: IpAddr) {
        if !self.user_sources.contains_key(user)
            && self.user_sources.len() > self.config.max_tracked / 8
            && let Some(victim) = self.user_sources.keys().next().cloned()
        {
            self.user_sources.remove(&victim);
        }
        let recent = self.user_sources.entry(user.into()).or_default();
        if !recent.contains(&Some(source)) {
            recent.rotate_right(1);
            recent[0] = Some(source);
        }
    }

    /// Adds an event of `source` to its prefix: `source` counts as one of the prefix's
    /// contributors once its own points are a real share of the first level, and the prefix's
    /// level is capped by how many contributed (rotation.rs).
    fn add_to_prefix(
        &mut self,
        prefix: IpNet,
        source: IpAddr,
        weight: f64,
        kind: usize,
        country: [u8; 2],
        now: u32,
    ) -> Vec<Change> {
        let min_sources = rotation::min_sources(
            source,
            self.config.min_sources_v4,
            self.config.min_sources_v6,
        );
        if min_sources <= 1 {
            return self.add(Sender::Prefix(prefix), weight, kind, country, now);
        }
        let first_level = self
            .config
            .levels
            .first()
            .map_or(f64::MAX, |row| row.points);
        let contributes = self.points(&Sender::Source(source), u64::from(now) * 1_000_000_000)
            >= first_level / f64::from(min_sources);
        let hash = rotation::address_hash(self.tracked.hasher(), source);
        let generation_s = self
            .config
            .half_life
            .as_secs()
            .clamp(1, u64::from(u32::MAX / 4)) as u32;
        let sender = Sender::Prefix(prefix);
        let cap = {
            let entry = self.entry(&sender, country, now);
            if contributes {
                entry.contributors.mark(hash, now, generation_s);
            }
            rotation::level_cap(entry.contributors.count(now, generation_s), min_sources)
        };
        self.add_capped(sender, weight, kind, country, now, cap)
    }

    fn add(
        &mut self,
        sender: Sender,
        weight: f64,
        kind: usize,
        country: [u8; 2],
        now: u32,
    ) -> Vec<Change> {
        self.add_capped(sender, weight, kind, country, now, usize::MAX)
    }

    /// The tracked entry of `sender`, made room for and created when new.
    fn entry(&mut self, sender: &Sender, country: [u8; 2], now: u32) -> &mut Tracked {
        if self.tracked.len() >= self.config.max_tracked && !self.tracked.contains_key(sender) {
            self.forget_least(now);
        }
        self.tracked
            .entry(sender.clone())
            .or_insert(Tracked::new(now, country))
    }

    /// Adds `weight` points to `sender`; raises it to the level its points reach, `cap` at most.
    fn add_capped(
        &mut self,
        sender: Sender,
        weight: f64,
        kind: usize,
        country: [u8; 2],
        now: u32,
        cap: usize,
    ) -> Vec<Change> {
        let half_life = self.config.half_life;
        let entry = self.entry(&sender, country, now);
        entry.fleet = decay(entry.fleet, entry.at_s, now, half_life) as f32;
        entry.points = (decay(entry.points, entry.at_s, now, half_life) + weight) as f32;
        entry.at_s = now;
        entry.recent[kind] = entry.recent[kind].saturating_add(1);
        let (points, country, level) = (f64::from(entry.points), entry.country, entry.level);
        // More points only put the due time later: an entry already queued stays early
        // enough (the tick looks again and re-queues it).
        if entry.due_s == NOT_SCHEDULED {
            self.schedule(&sender, 0);
        }
        if matches!(sender, Sender::Country(_)) {
            // Countries are reported, not limited (a whole country is not one sender).
            return Vec::new();
        }
        if self.share && self.changed.len() < self.config.max_tracked {
            self.changed.insert(sender.clone());
        }
        let table = self
            .config
            .country_levels
            .get(&country)
            .unwrap_or(&self.config.levels);
        let target = level_for(table, points).min(cap);
        if target > usize::from(level) {
            return self.raise(sender, target, now);
        }
        Vec::new()
    }

    /// Moves `sender` up to `level` (a no-op if it is there already), with the consequences:
    /// a user's sources follow it, and a prefix may take its network along.
    fn raise(&mut self, sender: Sender, level: usize, now: u32) -> Vec<Change> {
        let mut changes = Vec::new();
        let Some(change) = self.set_level(&sender, level, now) else {
            return changes;
        };
        changes.push(change);
        match &sender {
            Sender::User(user) => {
                let sources = self.user_sources.get(user).copied().unwrap_or_default();
                for source in sources.into_iter().flatten() {
                    if self.level(&Sender::Source(source)) < level {
                        changes.extend(self.raise(Sender::Source(source), level, now));
                    }
                }
            }
            Sender::Prefix(prefix) => changes.extend(self.network_follows(*prefix, now)),
            _ => {}
        }
        changes
    }

    /// Sets the level of a tracked (or new) sender; returns the change, None when unchanged.
    fn set_level(&mut self, sender: &Sender, level: usize, now: u32) -> Option<Change> {
        let half_life = self.config.half_life;
        let entry = self
            .tracked
            .entry(sender.clone())
            .or_insert(Tracked::new(now, NO_COUNTRY));
        let from = usize::from(entry.level);
        if from == level {
            return None;
        }
        let points = decay(entry.points, entry.at_s, now, half_life);
        let events = counted(&entry.recent);
        // A hold by refusals spans the steps down (its maximum is for the whole way back); it
        // ends when points raise the level or the sender is back to 0.
        if level > from || level == 0 {
            entry.held_since_s = NOT_HELD;
        }
        entry.level = level as u8;
        entry.level_since_s = now;
        entry.recent = [0; KIND_NAMES.len()];
        let country = (entry.country != NO_COUNTRY).then_some(entry.country);
        match (from, level) {
            (0, _) => {
                self.limited.insert(sender.clone());
            }
            (_, 0) => {
                self.limited.remove(sender);
            }
            _ => {}
        }
        self.schedule(sender, 0);
        Some(Change {
            limit: self.limit_for(sender, level),
            sender: sender.clone(),
            from,
            to: level,
            points,
            country,
            events,
        })
    }

    /// After a prefix's level changed: limits its network when enough of its prefixes are
    /// limited (at the highest of their levels), releases it when too few are.
    fn network_follows(&mut self, prefix: IpNet, now: u32) -> Vec<Change> {
        if self.config.network_after == 0 {
            return Vec::new();
        }
        let network = self.network_of(prefix.network());
        let limited = self.level(&Sender::Prefix(prefix)) > 0;
        let members = self.limited_prefixes.entry(network).or_default();
        if limited {
            members.insert(prefix);
        } else {
            members.remove(&prefix);
        }
        let members: Vec<IpNet> = members.iter().copied().collect();
        if members.is_empty() {
            self.limited_prefixes.remove(&network);
        }
        let target = if members.len() >= self.config.network_after {
            members
                .iter()
                .map(|p| self.level(&Sender::Prefix(*p)))
                .max()
                .unwrap_or(0)
        } else {
            0
        };
        let sender = Sender::Network(network);
        let current = self.level(&sender);
        if target > current || (target == 0 && current > 0) {
            return self.set_level(&sender, target, now).into_iter().collect();
        }
        Vec::new()
    }

    /// Steps senders down one level where their points allow; forgets senders back at level 0
    /// with negligible points. Call periodically; it looks only at the senders that came due.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Change> {
        let now = secs(now_ns);
        let mut steps = Vec::new();
        let mut due_now = Vec::new();
        while let Some(entry) = self.timers.first_entry() {
            if *entry.key() > now {
                break;
            }
            let (due, senders) = entry.remove_entry();
            self.timer_entries -= senders.len();
            due_now.extend(senders.into_iter().map(|s| (due, s)));
        }
        for (due, sender) in due_now {
            self.timer_pops += 1;
            let Some(t) = self.tracked.get(&sender) else {
                continue; // forgotten meanwhile
            };
            if t.due_s != due {
                continue; // superseded by a later schedule
            }
            let points = decay(t.points, t.at_s, now, self.config.half_life);
            if t.level == 0 {
                if points < NEGLIGIBLE_POINTS {
                    self.tracked.remove(&sender);
                    continue;
                }
            } else if !matches!(sender, Sender::Network(_)) {
                let held = now.saturating_sub(t.level_since_s) >= self.min_hold_s();
                if held && points < self.step_down_below(t) {
                    steps.push((sender, usize::from(t.level) - 1));
                    continue;
                }
            }
            // Not yet (more points since it was queued): look again when it can be.
            self.schedule(&sender, now.saturating_add(1));
        }
        let mut changes = Vec::new();
        for (sender, level) in steps {
            if let Some(change) = self.set_level(&sender, level, now) {
                changes.push(change);
            }
            if let Sender::Prefix(prefix) = sender {
                changes.extend(self.network_follows(prefix, now));
            }
        }
        // Superseded entries pile up as levels change; past twice the live ones, start over.
        if self.timer_entries > 2 * self.tracked.len() + 1024 {
            self.reschedule_all();
        }
        changes.sort_by(|a, b| a.sender.cmp(&b.sender));
        changes
    }

    /// Forgets the sender with the lowest (level, points) among a sample of
    /// [`EVICTION_SAMPLE`] tracked senders: bounded work per insert under a flood, and a limited
    /// sender goes only when every sampled one is limited, so the worst offenders are kept.
    fn forget_least(&mut self, now: u32) {
        let half_life = self.config.half_life;
        let victim = self
            .tracked
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by(|a, b| {
                let key = |t: &Tracked| (t.level, decay(t.points, t.at_s, now, half_life));
                let (la, pa) = key(a.1);
                let (lb, pb) = key(b.1);
                la.cmp(&lb).then(pa.total_cmp(&pb))
            })
            .map(|(s, _)| s.clone());
        if let Some(victim) = victim {
            self.tracked.remove(&victim);
            self.limited.remove(&victim);
        }
    }
}
