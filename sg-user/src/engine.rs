//! The engine: spam points per source and per prefix, exponential decay, and levels with
//! hysteresis. Pure logic over a caller-supplied clock, so tests drive time by hand.
//!
//! Points decay lazily: each tracked sender stores (points, when); reading them at `now`
//! multiplies by 2^(-(now - when) / half_life). No per-tick work per sender.
//!
//! Levels climb at once when points pass a threshold (strong suppression right after a burst)
//! and come down one level at a time, each step only after the points fell below a fraction of
//! the current level's threshold and the level has been held for `min_hold` (a gradual return).

use std::{collections::HashMap, net::IpAddr, time::Duration};

use ipnet::IpNet;

use crate::events::{EventKind, RejectKind};

/// Who points are counted for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sender {
    Source(IpAddr),
    /// The source's network (IPv4 /24, IPv6 /64 by default): rotating addresses inside it
    /// adds up here.
    Prefix(IpNet),
}

/// Points per event kind.
#[derive(Clone, Debug, PartialEq)]
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

/// A row of the level table: from `points` on, this limit applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelRow {
    pub points: f64,
    pub limit: crate::config::Limit,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub weights: Weights,
    pub half_life: Duration,
    /// Rows by increasing points; level n (1-based) is row n-1; level 0 is "no limit".
    pub levels: Vec<LevelRow>,
    /// A level is left downwards when points fall below `down_fraction` of its threshold.
    pub down_fraction: f64,
    /// Shortest time a level is held before stepping down one.
    pub min_hold: Duration,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    /// Senders tracked at most; when full, the one with the fewest points is forgotten.
    pub max_tracked: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Tracked {
    points: f64,
    /// Nanoseconds on the caller's clock when `points` was last brought up to date.
    at_ns: u64,
    level: usize,
    level_since_ns: u64,
}

/// A level change for the enforcer (and the log).
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub sender: Sender,
    pub from: usize,
    pub to: usize,
    pub points: f64,
}

/// Senders examined to choose one to forget when the table is full.
pub const EVICTION_SAMPLE: usize = 64;

pub struct Engine {
    config: EngineConfig,
    tracked: HashMap<Sender, Tracked>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            config,
            tracked: HashMap::new(),
        }
    }

    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// Points of `sender` at `now_ns`, decayed.
    pub fn points(&self, sender: &Sender, now_ns: u64) -> f64 {
        self.tracked.get(sender).map_or(0.0, |t| {
            decay(t.points, t.at_ns, now_ns, self.config.half_life)
        })
    }

    pub fn level(&self, sender: &Sender) -> usize {
        self.tracked.get(sender).map_or(0, |t| t.level)
    }

    /// The prefix a source belongs to.
    pub fn prefix_of(&self, source: IpAddr) -> IpNet {
        let len = if source.is_ipv4() {
            self.config.prefix_v4
        } else {
            self.config.prefix_v6
        };
        IpNet::new(source, len)
            .expect("validated prefix length")
            .trunc()
    }

    /// Adds an event's points to its source and to the source's prefix; returns level changes.
    pub fn record(&mut self, source: IpAddr, kind: &EventKind, now_ns: u64) -> Vec<Change> {
        let weight = self.config.weights.of(kind);
        let mut changes = Vec::new();
        if weight <= 0.0 {
            return changes;
        }
        for sender in [
            Sender::Source(source),
            Sender::Prefix(self.prefix_of(source)),
        ] {
            if let Some(change) = self.add(sender, weight, now_ns) {
                changes.push(change);
            }
        }
        changes
    }

    fn add(&mut self, sender: Sender, weight: f64, now_ns: u64) -> Option<Change> {
        if !self.tracked.contains_key(&sender) && self.tracked.len() >= self.config.max_tracked {
            self.forget_least(now_ns);
        }
        let half_life = self.config.half_life;
        let entry = self.tracked.entry(sender.clone()).or_insert(Tracked {
            points: 0.0,
            at_ns: now_ns,
            level: 0,
            level_since_ns: now_ns,
        });
        entry.points = decay(entry.points, entry.at_ns, now_ns, half_life) + weight;
        entry.at_ns = now_ns;
        let target = level_for(&self.config.levels, entry.points);
        if target > entry.level {
            let change = Change {
                sender,
                from: entry.level,
                to: target,
                points: entry.points,
            };
            entry.level = target;
            entry.level_since_ns = now_ns;
            return Some(change);
        }
        None
    }

    /// Steps senders down one level where their points allow; forgets senders back at level 0
    /// with negligible points. Call periodically (its cost is one pass over tracked senders).
    pub fn tick(&mut self, now_ns: u64) -> Vec<Change> {
        let config = &self.config;
        let mut changes = Vec::new();
        self.tracked.retain(|sender, t| {
            let points = decay(t.points, t.at_ns, now_ns, config.half_life);
            if t.level > 0 {
                let threshold = config.levels[t.level - 1].points;
                let held =
                    now_ns.saturating_sub(t.level_since_ns) >= config.min_hold.as_nanos() as u64;
                if held && points < threshold * config.down_fraction {
                    changes.push(Change {
                        sender: sender.clone(),
                        from: t.level,
                        to: t.level - 1,
                        points,
                    });
                    t.level -= 1;
                    t.level_since_ns = now_ns;
                }
                true
            } else {
                points >= 0.01
            }
        });
        changes.sort_by(|a, b| a.sender.cmp(&b.sender));
        changes
    }

    /// Forgets the sender with the lowest (level, points) among a sample of
    /// [`EVICTION_SAMPLE`] tracked senders: bounded work per insert under a flood, and a limited
    /// sender goes only when every sampled one is limited, so the worst offenders are kept.
    fn forget_least(&mut self, now_ns: u64) {
        let half_life = self.config.half_life;
        let victim = self
            .tracked
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by(|a, b| {
                let key = |t: &Tracked| (t.level, decay(t.points, t.at_ns, now_ns, half_life));
                let (la, pa) = key(a.1);
                let (lb, pb) = key(b.1);
                la.cmp(&lb).then(pa.total_cmp(&pb))
            })
            .map(|(s, _)| s.clone());
        if let Some(victim) = victim {
            self.tracked.remove(&victim);
        }
    }
}

fn decay(points: f64, at_ns: u64, now_ns: u64, half_life: Duration) -> f64 {
    let elapsed = now_ns.saturating_sub(at_ns) as f64;
    points * (-elapsed / half_life.as_nanos() as f64).exp2()
}

/// The highest level whose threshold `points` reach.
fn level_for(levels: &[LevelRow], points: f64) -> usize {
    levels.iter().take_while(|row| points >= row.points).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limit;

    const SECOND: u64 = 1_000_000_000;
    const MINUTE: u64 = 60 * SECOND;

    fn config() -> EngineConfig {
        let rate = |r: &str, burst| Limit::Rate {
            rate: r.parse().unwrap(),
            burst,
        };
        EngineConfig {
            weights: Weights::default(),
            half_life: Duration::from_secs(600),
            levels: vec![
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
            ],
            down_fraction: 0.8,
            min_hold: Duration::from_secs(60),
            prefix_v4: 24,
            prefix_v6: 64,
            max_tracked: 1000,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const HARVEST: EventKind = EventKind::Reject {
        reject: RejectKind::UnknownRecipient,
    };

    #[test]
    fn points_halve_every_half_life() {
        let mut e = Engine::new(config());
        let s = Sender::Source(ip("203.0.113.9"));
        e.record(ip("203.0.113.9"), &HARVEST, 0);
        assert!((e.points(&s, 0) - 2.0).abs() < 1e-9);
        assert!((e.points(&s, 10 * MINUTE) - 1.0).abs() < 1e-9);
        assert!((e.points(&s, 20 * MINUTE) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_burst_climbs_straight_to_the_level_it_earns() {
        let mut e = Engine::new(config());
        let mut changes = Vec::new();
        for _ in 0..35 {
            changes.extend(e.record(ip("203.0.113.9"), &HARVEST, 0));
        }
        let source: Vec<(usize, usize)> = changes
            .iter()
            .filter(|c| c.sender == Sender::Source(ip("203.0.113.9")))
            .map(|c| (c.from, c.to))
            .collect();
        assert_eq!(source, [(0, 1), (1, 2), (2, 3)]);
    }

    #[test]
    fn decay_brings_a_sender_down_one_level_at_a_time() {
        let mut e = Engine::new(config());
        let s = Sender::Source(ip("203.0.113.9"));
        for _ in 0..40 {
            e.record(ip("203.0.113.9"), &HARVEST, 0); // 80 points: level 3
        }
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
        // Each step waits for the points to fall under 80% of the level's threshold.
        assert!(history.windows(2).all(|w| w[1].0 > w[0].0));
        // 80 points fall under 48 (80% of 60) after 7.4 min, under 24 after 17.4, under 8 after
        // 33.2: the steps come at the next tick after each.
        let minutes: Vec<u64> = history.iter().map(|h| h.0).collect();
        assert_eq!(minutes, [8, 18, 34]);
    }

    #[test]
    fn addresses_rotating_inside_a_64_add_up_on_the_prefix() {
        let mut e = Engine::new(config());
        for i in 0..20 {
            e.record(ip(&format!("2001:db8:a::{i:x}")), &HARVEST, 0);
        }
        let prefix = Sender::Prefix("2001:db8:a::/64".parse().unwrap());
        assert_eq!(e.level(&prefix), 2);
        assert_eq!(e.level(&Sender::Source(ip("2001:db8:a::1"))), 0);
    }

    #[test]
    fn memory_is_bounded_and_the_worst_offenders_are_kept() {
        let mut cfg = config();
        cfg.max_tracked = 50;
        let mut e = Engine::new(cfg);
        for _ in 0..40 {
            e.record(ip("203.0.113.9"), &HARVEST, 0);
        }
        for i in 0..500u32 {
            let addr = IpAddr::from([198, 51, (i / 250) as u8, (i % 250) as u8]);
            e.record(addr, &EventKind::Connection, SECOND);
        }
        assert!(e.tracked() <= 50);
        assert_eq!(e.level(&Sender::Source(ip("203.0.113.9"))), 3);
    }
}
