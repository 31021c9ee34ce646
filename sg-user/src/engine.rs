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
//!   rotate addresses inside it are limited as one);
//! - its network (IPv4 /16, IPv6 /48), when `network_after` of its prefixes are limited at once:
//!   the network takes the highest level among them;
//! - the sources a SASL user logs in from, when the user reaches a level (a stolen password
//!   used from many addresses limits each of them as it shows up).
//!
//! Countries weigh events (a multiplier) and may have their own level table.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::{
    domain::{FastMap, FastSet, Limit, PrefixLengths, Sender, country_name},
    events::{Event, EventKind, RejectKind},
};

/// Points per event kind (`[points.weights]` in the config).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    pub connection: f64,
    pub message: f64,
    pub per_recipient: f64,
    pub unknown_recipient: f64,
    pub relay_denied: f64,
    pub rbl: f64,
    pub other_reject: f64,
    pub auth_failure: f64,
    pub bounce: f64,
    pub lost_after_auth: f64,
    pub too_many_errors: f64,
    pub dmarc_fail: f64,
}

impl Weights {
    /// Each weight with its key in `[points.weights]`.
    pub fn named(&self) -> [(&'static str, f64); 12] {
        [
            ("connection", self.connection),
            ("message", self.message),
            ("per_recipient", self.per_recipient),
            ("unknown_recipient", self.unknown_recipient),
            ("relay_denied", self.relay_denied),
            ("rbl", self.rbl),
            ("other_reject", self.other_reject),
            ("auth_failure", self.auth_failure),
            ("bounce", self.bounce),
            ("lost_after_auth", self.lost_after_auth),
            ("too_many_errors", self.too_many_errors),
            ("dmarc_fail", self.dmarc_fail),
        ]
    }
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            connection: 0.1,
            message: 0.2,
            per_recipient: 0.05,
            unknown_recipient: 2.0,
            relay_denied: 3.0,
            rbl: 5.0,
            other_reject: 1.0,
            auth_failure: 3.0,
            bounce: 0.5,
            lost_after_auth: 2.0,
            too_many_errors: 3.0,
            dmarc_fail: 2.0,
        }
    }
}

/// Event kinds as counted per sender ("the events that moved it").
pub const KIND_NAMES: [&str; 12] = [
    "connection",
    "message",
    "unknown_recipient",
    "relay_denied",
    "rbl",
    "other_reject",
    "auth_failure",
    "auth_success",
    "bounce",
    "lost_after_auth",
    "too_many_errors",
    "dmarc_fail",
];

/// The index of an event's kind in [`KIND_NAMES`].
pub fn kind_index(kind: &EventKind) -> usize {
    match kind {
        EventKind::Connection => 0,
        EventKind::MessageAccepted { .. } => 1,
        EventKind::Reject { reject } => match reject {
            RejectKind::UnknownRecipient => 2,
            RejectKind::RelayDenied => 3,
            RejectKind::Rbl => 4,
            RejectKind::Helo | RejectKind::Sender | RejectKind::Other => 5,
        },
        EventKind::AuthFailure { .. } => 6,
        EventKind::AuthSuccess { .. } => 7,
        EventKind::Bounce => 8,
        EventKind::LostAfterAuth => 9,
        EventKind::TooManyErrors => 10,
        EventKind::DmarcFail => 11,
    }
}

impl Weights {
    pub fn of(&self, kind: &EventKind) -> f64 {
        match kind {
            EventKind::Connection => self.connection,
            EventKind::MessageAccepted { recipients, .. } => {
                self.message + self.per_recipient * f64::from(*recipients)
            }
            EventKind::Reject { reject } => match reject {
                RejectKind::UnknownRecipient => self.unknown_recipient,
                RejectKind::RelayDenied => self.relay_denied,
                RejectKind::Rbl => self.rbl,
                RejectKind::Helo | RejectKind::Sender | RejectKind::Other => self.other_reject,
            },
            EventKind::AuthFailure { .. } => self.auth_failure,
            EventKind::AuthSuccess { .. } => 0.0,
            EventKind::Bounce => self.bounce,
            EventKind::LostAfterAuth => self.lost_after_auth,
            EventKind::TooManyErrors => self.too_many_errors,
            EventKind::DmarcFail => self.dmarc_fail,
        }
    }
}

/// A row of a level table: from `points` on, this limit applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelRow {
    pub points: f64,
    pub limit: Limit,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub weights: Weights,
    pub half_life: Duration,
    /// Rows by increasing points; level n (1-based) is row n-1; level 0 is "no limit".
    pub levels: Vec<LevelRow>,
    /// Level tables of countries that have their own.
    pub country_levels: HashMap<[u8; 2], Vec<LevelRow>>,
    /// Points of events from a country are multiplied by this (1 when absent).
    pub country_multipliers: HashMap<[u8; 2], f64>,
    /// A level is left downwards when points fall below `down_fraction` of its threshold.
    pub down_fraction: f64,
    /// Shortest time a level is held before stepping down one.
    pub min_hold: Duration,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub network_v4: u8,
    pub network_v6: u8,
    /// Limited prefixes in one network that limit the network; 0 = never.
    pub network_after: usize,
    /// Senders tracked at most; when full, the one with the fewest points is forgotten.
    pub max_tracked: usize,
}

impl EngineConfig {
    /// The lengths senders are tracked at, for [`Sender::parse`].
    pub fn lengths(&self) -> PrefixLengths {
        PrefixLengths {
            v4: self.prefix_v4,
            v6: self.prefix_v6,
            network_v4: self.network_v4,
            network_v6: self.network_v6,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Tracked {
    points: f32,
    /// Seconds on the caller's clock when `points` was last brought up to date.
    at_s: u32,
    level_since_s: u32,
    level: u8,
    country: [u8; 2],
    /// Events since the last level change, per [`KIND_NAMES`] (saturating).
    recent: [u8; KIND_NAMES.len()],
    /// Second of this sender's live entry in the timer queue; [`NOT_SCHEDULED`] when none.
    due_s: u32,
}

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
            at_s: now,
            level_since_s: now,
            level: 0,
            country,
            recent: [0; KIND_NAMES.len()],
            due_s: NOT_SCHEDULED,
        }
    }
}

/// One sender as `slowgate top` and `show` print it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SenderInfo {
    pub sender: String,
    pub level: usize,
    pub points: f64,
    pub country: Option<String>,
    pub limit: Option<String>,
    /// Events since the last level change, most frequent first.
    pub recent_events: Vec<(&'static str, u32)>,
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

/// Country lookups (GeoIP2/GeoLite2 country database).
pub struct Geo {
    reader: maxminddb::Reader<Vec<u8>>,
}

#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow)]
    registered_country: Option<IsoCode<'a>>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    iso_code: Option<&'a str>,
}

impl Geo {
    pub fn open(path: &std::path::Path) -> anyhow::Result<Geo> {
        let reader = maxminddb::Reader::open_readfile(path)
            .map_err(|e| anyhow::anyhow!("open the GeoIP database {}: {e}", path.display()))?;
        Ok(Geo { reader })
    }

    /// The country of `addr`, or None when the database does not know it.
    pub fn country(&self, addr: IpAddr) -> Option<[u8; 2]> {
        let record: CountryRecord = self.reader.lookup(addr).ok()??;
        let code = record
            .country
            .and_then(|c| c.iso_code)
            .or(record.registered_country.and_then(|c| c.iso_code))?;
        let b = code.as_bytes();
        (b.len() == 2).then(|| [b[0], b[1]])
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

    /// The first second at which `sender` (tracked as `t`) may leave its level: step down one,
    /// or at level 0 be forgotten. [`NOT_SCHEDULED`] when never on its own (a limited network
    /// follows its prefixes).
    fn due(&self, sender: &Sender, t: &Tracked) -> u32 {
        let half_life = self.config.half_life.as_secs_f64();
        // The first whole second at which the decayed points are below `threshold`.
        let below = |threshold: f64| -> u32 {
            let points = f64::from(t.points);
            if threshold <= 0.0 {
                return NOT_SCHEDULED;
            }
            if points < threshold {
                return t.at_s;
            }
            let seconds = (half_life * (points / threshold).log2()).floor();
            t.at_s
                .saturating_add(seconds.min(f64::from(u32::MAX)) as u32 + 1)
        };
        if t.level == 0 {
            return below(NEGLIGIBLE_POINTS);
        }
        if matches!(sender, Sender::Network(_)) {
            return NOT_SCHEDULED;
        }
        let threshold = self
            .table(t.country)
            .get(usize::from(t.level) - 1)
            .map_or(0.0, |row| row.points);
        let hold = self.config.min_hold.as_secs().min(u64::from(u32::MAX)) as u32;
        below(threshold * self.config.down_fraction).max(t.level_since_s.saturating_add(hold))
    }

    /// Puts `sender`'s due time in the timer queue (not before `not_before`), superseding any
    /// entry it had.
    fn schedule(&mut self, sender: &Sender, not_before: u32) {
        let Some(t) = self.tracked.get(sender) else {
            return;
        };
        let due = self.due(sender, t).max(not_before);
        if let Some(t) = self.tracked.get_mut(sender) {
            t.due_s = due;
        }
        if due != NOT_SCHEDULED {
            self.timers.entry(due).or_default().push(sender.clone());
            self.timer_entries += 1;
        }
    }

    /// Rebuilds the timer queue from the tracked senders.
    fn reschedule_all(&mut self) {
        self.timers.clear();
        self.timer_entries = 0;
        let senders: Vec<Sender> = self.tracked.keys().cloned().collect();
        for sender in senders {
            self.schedule(&sender, 0);
        }
    }

    /// Timer entries taken off the queue so far: what ticks cost.
    pub fn timer_pops(&self) -> u64 {
        self.timer_pops
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
            recent_events: events,
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

    /// The senders worth keeping across a restart (limited, or with at least half a point),
    /// at most `max`, the most important first; times on the wall clock.
    pub fn export(&self, now_ns: u64, max: usize) -> Vec<crate::store::SavedSender> {
        self.snapshot(now_ns).rows(max)
    }

    /// A copy of what [`Engine::export`] reads, taken quickly so that the rest (choosing,
    /// sorting, writing) can run on another thread.
    pub fn snapshot(&self, now_ns: u64) -> Snapshot {
        Snapshot {
            senders: self.tracked.iter().map(|(s, t)| (s.clone(), *t)).collect(),
            now: secs(now_ns),
            half_life: self.config.half_life,
        }
    }

    /// Takes back what [`Engine::export`] saved, decayed for the time that passed (a restart,
    /// a reboot). Returns the changes that put limited senders back at their level, for the
    /// enforcer. Rows that do not parse are skipped.
    pub fn import(&mut self, rows: &[crate::store::SavedSender], now_ns: u64) -> Vec<Change> {
        let now = secs(now_ns);
        let unix = crate::domain::unix_now();
        let mut changes = Vec::new();
        for row in rows {
            let sender = match row.kind.as_str() {
                "source" => row.id.parse().map(Sender::Source).ok(),
                "prefix" => row.id.parse().map(Sender::Prefix).ok(),
                "network" => row.id.parse().map(Sender::Network).ok(),
                "user" => Some(Sender::User(row.id.as_str().into())),
                "country" => {
                    let b = row.id.as_bytes();
                    (b.len() == 2).then(|| Sender::Country([b[0], b[1]]))
                }
                _ => None,
            };
            let Some(sender) = sender else { continue };
            let elapsed = unix.saturating_sub(row.at_unix) as u32;
            let held = unix.saturating_sub(row.level_since_unix) as u32;
            let country = row
                .country
                .as_deref()
                .map(str::as_bytes)
                .filter(|b| b.len() == 2)
                .map_or(NO_COUNTRY, |b| [b[0], b[1]]);
            let points = decay(row.points, 0, elapsed, self.config.half_life) as f32;
            self.tracked.insert(
                sender.clone(),
                Tracked {
                    points,
                    level_since_s: now.saturating_sub(held),
                    ..Tracked::new(now, country)
                },
            );
            if row.level > 0 {
                let since = now.saturating_sub(held);
                changes.extend(self.set_level(&sender, usize::from(row.level), now));
                if let Some(t) = self.tracked.get_mut(&sender) {
                    t.level_since_s = since;
                }
                if let Sender::Prefix(prefix) = &sender {
                    let network = self.network_of(prefix.network());
                    self.limited_prefixes
                        .entry(network)
                        .or_default()
                        .insert(*prefix);
                }
            }
            self.schedule(&sender, 0);
        }
        changes
    }

    /// Forgets a sender's points and level (an operator's pardon). Returns the change back to
    /// level 0 when it was limited, so the enforcer removes its limit.
    pub fn release(&mut self, sender: &Sender, now_ns: u64) -> Option<Change> {
        let now = secs(now_ns);
        let change = self.set_level(sender, 0, now);
        self.tracked.remove(sender);
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
        if self.allow.iter().any(|n| n.contains(&source)) {
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
        let mut senders = vec![Sender::Source(source), Sender::Prefix(prefix)];
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

    fn add(
        &mut self,
        sender: Sender,
        weight: f64,
        kind: usize,
        country: [u8; 2],
        now: u32,
    ) -> Vec<Change> {
        if self.tracked.len() >= self.config.max_tracked && !self.tracked.contains_key(&sender) {
            self.forget_least(now);
        }
        let half_life = self.config.half_life;
        let entry = self
            .tracked
            .entry(sender.clone())
            .or_insert(Tracked::new(now, country));
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
        let table = self
            .config
            .country_levels
            .get(&country)
            .unwrap_or(&self.config.levels);
        let target = level_for(table, points);
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
                let threshold = self
                    .table(t.country)
                    .get(usize::from(t.level) - 1)
                    .map_or(0.0, |row| row.points);
                let min_hold = self.config.min_hold.as_secs() as u32;
                let held = now.saturating_sub(t.level_since_s) >= min_hold;
                if held && points < threshold * self.config.down_fraction {
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

/// The tracked senders at one moment (see [`Engine::snapshot`]).
pub struct Snapshot {
    senders: Vec<(Sender, Tracked)>,
    now: u32,
    half_life: Duration,
}

impl Snapshot {
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// The senders worth keeping (limited, or with at least half a point), at most `max`, the
    /// most important first; times on the wall clock.
    pub fn rows(self, max: usize) -> Vec<crate::store::SavedSender> {
        let now = self.now;
        let offset = crate::domain::unix_now().saturating_sub(u64::from(now));
        let mut rows: Vec<(Sender, Tracked, f64)> = self
            .senders
            .into_iter()
            .map(|(s, t)| {
                let points = decay(t.points, t.at_s, now, self.half_life);
                (s, t, points)
            })
            .filter(|(_, t, p)| t.level > 0 || *p >= 0.5)
            .collect();
        rows.sort_by(|a, b| b.1.level.cmp(&a.1.level).then(b.2.total_cmp(&a.2)));
        rows.truncate(max);
        rows.into_iter()
            .map(|(sender, t, points)| {
                let (kind, id) = match &sender {
                    Sender::Source(a) => ("source", a.to_string()),
                    Sender::Prefix(n) => ("prefix", n.to_string()),
                    Sender::Network(n) => ("network", n.to_string()),
                    Sender::User(u) => ("user", u.to_string()),
                    Sender::Country(c) => ("country", country_name(*c)),
                };
                crate::store::SavedSender {
                    kind: kind.into(),
                    id,
                    points: points as f32,
                    at_unix: offset + u64::from(now),
                    level: t.level,
                    level_since_unix: offset + u64::from(t.level_since_s),
                    country: (t.country != NO_COUNTRY).then(|| country_name(t.country)),
                }
            })
            .collect()
    }
}

/// Event counts as (kind, count), most frequent first.
fn counted(recent: &[u8; KIND_NAMES.len()]) -> Vec<(&'static str, u32)> {
    let mut events: Vec<(&'static str, u32)> = KIND_NAMES
        .iter()
        .zip(recent)
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (*k, u32::from(*n)))
        .collect();
    events.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    events
}

fn truncate(addr: IpAddr, v4: u8, v6: u8) -> IpNet {
    let len = if addr.is_ipv4() { v4 } else { v6 };
    IpNet::new(addr, len)
        .expect("validated prefix length")
        .trunc()
}

/// Seconds of a nanosecond clock, as stored per sender (u32 lasts until 2106 on the Unix clock).
fn secs(now_ns: u64) -> u32 {
    (now_ns / 1_000_000_000) as u32
}

fn decay(points: f32, at_s: u32, now_s: u32, half_life: Duration) -> f64 {
    let elapsed = f64::from(now_s.saturating_sub(at_s));
    f64::from(points) * (-elapsed / half_life.as_secs_f64()).exp2()
}

/// The highest level whose threshold `points` reach.
fn level_for(levels: &[LevelRow], points: f64) -> usize {
    levels.iter().take_while(|row| points >= row.points).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Service;

    const SECOND: u64 = 1_000_000_000;
    const MINUTE: u64 = 60 * SECOND;

    fn rate(r: &str, burst: u32) -> Limit {
        Limit::Rate {
            rate: r.parse().unwrap(),
            burst,
        }
    }

    fn levels() -> Vec<LevelRow> {
        vec![
            LevelRow {
                points: 10.0,
                limit: rate("30/min", 10),
            },
            LevelRow {
                points: 30.0,
                limit: rate("6/min", 3),
            },
            LevelRow {
                points: 60.0,
                limit: Limit::Block,
            },
        ]
    }

    fn config() -> EngineConfig {
        EngineConfig {
            weights: Weights::default(),
            half_life: Duration::from_secs(600),
            levels: levels(),
            country_levels: HashMap::new(),
            country_multipliers: HashMap::new(),
            down_fraction: 0.8,
            min_hold: Duration::from_secs(60),
            prefix_v4: 24,
            prefix_v6: 64,
            network_v4: 16,
            network_v6: 48,
            network_after: 3,
            max_tracked: 1000,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn harvest(source: &str) -> Event {
        Event::new(
            EventKind::Reject {
                reject: RejectKind::UnknownRecipient,
            },
            ip(source),
        )
    }

    fn record_n(e: &mut Engine, event: &Event, n: usize, now: u64) -> Vec<Change> {
        (0..n).flat_map(|_| e.record(event, now)).collect()
    }

    #[test]
    fn points_halve_every_half_life() {
        let mut e = Engine::new(config());
        let s = Sender::Source(ip("203.0.113.9"));
        e.record(&harvest("203.0.113.9"), 0);
        assert!((e.points(&s, 0) - 2.0).abs() < 1e-6);
        assert!((e.points(&s, 10 * MINUTE) - 1.0).abs() < 1e-6);
        assert!((e.points(&s, 20 * MINUTE) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn a_burst_climbs_straight_to_the_level_it_earns_and_says_why() {
        let mut e = Engine::new(config());
        let changes = record_n(&mut e, &harvest("203.0.113.9"), 35, 0);
        let source: Vec<&Change> = changes
            .iter()
            .filter(|c| c.sender == Sender::Source(ip("203.0.113.9")))
            .collect();
        let steps: Vec<(usize, usize)> = source.iter().map(|c| (c.from, c.to)).collect();
        assert_eq!(steps, [(0, 1), (1, 2), (2, 3)]);
        assert_eq!(source[0].events, [("unknown_recipient", 5)]);
        assert_eq!(source[2].limit, Some(Limit::Block));
        assert_eq!(
            source[0].to_string(),
            "203.0.113.9 level 0 -> 1 (10.0 points; unknown_recipient x5): limited to 30/min burst 10"
        );
    }

    #[test]
    fn decay_brings_a_sender_down_one_level_at_a_time() {
        let mut e = Engine::new(config());
        let s = Sender::Source(ip("203.0.113.9"));
        record_n(&mut e, &harvest("203.0.113.9"), 40, 0); // 80 points: level 3
        assert_eq!(e.level(&s), 3);
        let mut history = Vec::new();
        let mut now = 0;
        while now < 120 * MINUTE {
            now += MINUTE;
            for c in e.tick(now) {
                if c.sender == s {
                    history.push((now / MINUTE, c.from, c.to));
                }
            }
        }
        let steps: Vec<(usize, usize)> = history.iter().map(|h| (h.1, h.2)).collect();
        assert_eq!(steps, [(3, 2), (2, 1), (1, 0)]);
        // 80 points fall under 48 (80% of 60) after 7.4 min, under 24 after 17.4, under 8 after
        // 33.2: the steps come at the next tick after each.
        let minutes: Vec<u64> = history.iter().map(|h| h.0).collect();
        assert_eq!(minutes, [8, 18, 34]);
    }

    #[test]
    fn hysteresis_holds_a_level_for_min_hold_even_when_points_drop() {
        let mut cfg = config();
        cfg.min_hold = Duration::from_secs(3600);
        let mut e = Engine::new(cfg);
        let s = Sender::Source(ip("203.0.113.9"));
        record_n(&mut e, &harvest("203.0.113.9"), 5, 0); // 10 points: level 1
        assert_eq!(e.level(&s), 1);
        // After 50 min the points are ~0.3, far below 8, but the hour is not over.
        assert!(e.tick(50 * MINUTE).is_empty());
        assert_eq!(e.level(&s), 1);
        let down = e.tick(61 * MINUTE);
        assert!(down.iter().any(|c| c.sender == s && c.to == 0));
    }

    #[test]
    fn addresses_rotating_inside_a_64_add_up_on_the_prefix() {
        let mut e = Engine::new(config());
        for i in 0..20 {
            e.record(&harvest(&format!("2001:db8:a::{i:x}")), 0);
        }
        let prefix = Sender::Prefix("2001:db8:a::/64".parse().unwrap());
        assert_eq!(e.level(&prefix), 2);
        assert_eq!(e.level(&Sender::Source(ip("2001:db8:a::1"))), 0);
    }

    #[test]
    fn a_network_is_limited_once_three_of_its_prefixes_are_and_released_with_them() {
        let mut e = Engine::new(config());
        let network = Sender::Network("2001:db8:a::/48".parse().unwrap());
        for p in 1..=2 {
            record_n(&mut e, &harvest(&format!("2001:db8:a:{p}::1")), 5, 0);
        }
        assert_eq!(e.level(&network), 0, "two limited /64s are not enough");
        let changes = record_n(&mut e, &harvest("2001:db8:a:3::1"), 15, 0);
        assert!(changes.iter().any(|c| c.sender == network && c.to == 2));
        // A /64 of another /48 does not count.
        record_n(&mut e, &harvest("2001:db8:b:1::1"), 5, 0);
        assert_eq!(e.level(&network), 2);
        let mut now = 0;
        while e.level(&network) > 0 && now < 600 * MINUTE {
            now += MINUTE;
            e.tick(now);
        }
        assert_eq!(e.level(&network), 0, "released as its prefixes come down");
    }

    #[test]
    fn a_users_level_reaches_every_address_it_logs_in_from() {
        let mut e = Engine::new(config());
        let login = |source: &str| {
            Event::new(
                EventKind::AuthSuccess {
                    service: Service::Submission,
                },
                ip(source),
            )
            .with_user(Some("alice"))
        };
        let spam = |source: &str| {
            Event::new(
                EventKind::MessageAccepted {
                    recipients: 50,
                    size: 1000,
                },
                ip(source),
            )
            .with_user(Some("alice"))
        };
        e.record(&login("198.51.100.10"), 0);
        // 2.7 points a message from one address: alice reaches level 1 after 4 messages.
        record_n(&mut e, &spam("198.51.100.10"), 4, 0);
        assert_eq!(e.level(&Sender::User("alice".into())), 1);
        assert_eq!(e.level(&Sender::Source(ip("198.51.100.10"))), 1);
        // A new address logging in as alice is limited at once.
        let changes = e.record(&login("203.0.113.200"), SECOND);
        assert!(
            changes
                .iter()
                .any(|c| c.sender == Sender::Source(ip("203.0.113.200")) && c.to == 1)
        );
    }

    #[test]
    fn failed_logins_typed_with_a_name_never_limit_that_users_real_addresses() {
        let mut e = Engine::new(config());
        let home = "198.51.100.10";
        // Anyone who knows alice's login fails as her, from many addresses, many times.
        for i in 0..200u32 {
            let guesser = format!("203.0.113.{}", i % 50 + 1);
            let failure = Event::new(
                EventKind::AuthFailure {
                    service: Service::Imap,
                },
                ip(&guesser),
            )
            .with_user(Some("alice"));
            e.record(&failure, u64::from(i) * SECOND);
        }
        assert_eq!(e.level(&Sender::User("alice".into())), 0);
        // Alice logs in from home and sends a message: she and her address stay untouched.
        let login = Event::new(
            EventKind::AuthSuccess {
                service: Service::Submission,
            },
            ip(home),
        )
        .with_user(Some("alice"));
        let changes = e.record(&login, 300 * SECOND);
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(e.level(&Sender::Source(ip(home))), 0);
        // The guessers' own addresses and prefix earned the failures.
        assert!(e.level(&Sender::Prefix("203.0.113.0/24".parse().unwrap())) > 0);
    }

    #[test]
    fn a_reload_that_removes_levels_brings_every_sender_within_the_new_table() {
        let mut e = Engine::new(config());
        // 35 harvests: 70 points, blocked (level 3) as source and as prefix.
        record_n(&mut e, &harvest("203.0.113.9"), 35, 0);
        let source = Sender::Source(ip("203.0.113.9"));
        assert_eq!(e.level(&source), 3);
        let mut smaller = config();
        smaller.levels = vec![LevelRow {
            points: 10.0,
            limit: rate("12/min", 5),
        }];
        let changes = e.set_config(smaller, SECOND);
        let to_source = changes
            .iter()
            .find(|c| c.sender == source)
            .expect("the source is re-aligned");
        assert_eq!((to_source.from, to_source.to), (3, 1));
        assert_eq!(to_source.limit, Some(rate("12/min", 5)), "no block is left");
        assert_eq!(e.level(&source), 1);
        // And it comes down to 0 as its points decay.
        let mut now = SECOND;
        while e.level(&source) > 0 && now < 600 * MINUTE {
            now += MINUTE;
            e.tick(now);
        }
        assert_eq!(e.level(&source), 0);
        // A reload that changes nothing says nothing.
        record_n(&mut e, &harvest("203.0.113.10"), 10, now);
        let same = e.config.clone();
        assert!(e.set_config(same, now).is_empty());
    }

    #[test]
    fn an_allowed_sender_never_gets_points_or_a_limit() {
        let mut e = Engine::new(config());
        e.set_allowed(vec!["203.0.113.0/24".parse().unwrap()]);
        assert!(record_n(&mut e, &harvest("203.0.113.9"), 100, 0).is_empty());
        assert_eq!(e.tracked(), 0);
    }

    #[test]
    fn countries_weigh_events_and_may_have_their_own_levels() {
        // GeoLite2 test data: 81.2.69.142 is GB, 111.235.160.1 is CN (lookups only, no traffic).
        let geo = Geo::open(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/geoip/GeoLite2-Country-Test.mmdb"
        )))
        .unwrap();
        assert_eq!(geo.country(ip("81.2.69.142")), Some(*b"GB"));
        assert_eq!(geo.country(ip("111.235.160.1")), Some(*b"CN"));
        assert_eq!(geo.country(ip("203.0.113.9")), None);
        let mut cfg = config();
        cfg.country_multipliers.insert(*b"CN", 2.0);
        cfg.country_levels.insert(
            *b"GB",
            vec![LevelRow {
                points: 100.0,
                limit: rate("1/s", 5),
            }],
        );
        let mut e = Engine::new(cfg).with_geo(Some(geo));
        record_n(&mut e, &harvest("111.235.160.1"), 3, 0);
        assert!((e.points(&Sender::Source(ip("111.235.160.1")), 0) - 12.0).abs() < 1e-6);
        assert_eq!(e.level(&Sender::Source(ip("111.235.160.1"))), 1);
        assert!((e.points(&Sender::Country(*b"CN"), 0) - 12.0).abs() < 1e-6);
        // GB's looser table: 40 points are no level at all there.
        record_n(&mut e, &harvest("81.2.69.142"), 20, 0);
        assert_eq!(e.level(&Sender::Source(ip("81.2.69.142"))), 0);
        record_n(&mut e, &harvest("81.2.69.142"), 30, 0);
        let gb = Sender::Source(ip("81.2.69.142"));
        assert_eq!(e.level(&gb), 1);
        assert_eq!(e.limit_for(&gb, 1), Some(rate("1/s", 5)));
    }

    #[test]
    fn memory_is_bounded_and_the_worst_offenders_are_kept() {
        let mut cfg = config();
        cfg.max_tracked = 50;
        let mut e = Engine::new(cfg);
        record_n(&mut e, &harvest("203.0.113.9"), 40, 0);
        for i in 0..500u32 {
            let addr = IpAddr::from([198, 51, (i / 250) as u8, (i % 250) as u8]);
            e.record(&Event::new(EventKind::Connection, addr), SECOND);
        }
        assert!(e.tracked() <= 50);
        assert_eq!(e.level(&Sender::Source(ip("203.0.113.9"))), 3);
    }

    #[test]
    fn a_tick_looks_only_at_the_senders_that_came_due() {
        let mut e = Engine::new(EngineConfig {
            max_tracked: 100_000,
            ..config()
        });
        // 20,000 sources with 2 points each, each in a /64 of its own: nothing to do for an
        // hour.
        for i in 0..20_000u32 {
            e.record(
                &harvest(&format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff)),
                0,
            );
        }
        let tracked = e.tracked();
        let before = e.timer_pops();
        for minute in 1..=30 {
            assert!(e.tick(minute * MINUTE).is_empty());
        }
        assert_eq!(
            e.timer_pops(),
            before,
            "idle ticks looked at tracked senders"
        );
        // One sender climbs to level 3: the ticks that step it down look at it (and its /24)
        // a handful of times, not at the 20,000 others.
        let s = Sender::Source(ip("203.0.113.9"));
        record_n(&mut e, &harvest("203.0.113.9"), 40, 30 * MINUTE);
        let mut steps = 0;
        for minute in 31..=70 {
            steps += e
                .tick(minute * MINUTE)
                .iter()
                .filter(|c| c.sender == s)
                .count();
        }
        assert_eq!(steps, 3);
        assert!(
            e.timer_pops() - before < 20,
            "{} pops",
            e.timer_pops() - before
        );
        assert_eq!(e.tracked(), tracked + 2);
        // Two points fall under 0.01 after 7.6 half-lives (77 min): then all go at once.
        e.tick(200 * MINUTE);
        assert_eq!(e.tracked(), 0);
    }

    #[test]
    fn the_limited_set_follows_every_way_a_level_changes() {
        let mut e = Engine::new(config());
        let check = |e: &Engine, now: u64| {
            let walked = e.tracked.iter().filter(|(_, t)| t.level > 0).count();
            assert_eq!(e.limited_count(), walked);
            assert_eq!(e.limited(now).len(), walked);
        };
        for i in 0..5 {
            record_n(&mut e, &harvest(&format!("203.0.113.{i}")), 10 + 5 * i, 0);
        }
        check(&e, 0);
        e.release(&Sender::Source(ip("203.0.113.4")), 0);
        check(&e, 0);
        e.set_config(
            EngineConfig {
                levels: levels()[..1].to_vec(),
                ..config()
            },
            MINUTE,
        );
        check(&e, MINUTE);
        for minute in 2..120 {
            e.tick(minute * MINUTE);
            check(&e, minute * MINUTE);
        }
        assert_eq!(e.limited_count(), 0);
    }
}
