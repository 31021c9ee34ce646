//! The engine's table across restarts: a quick copy for the saver thread, the rows it writes,
//! and taking them back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Change, Engine, NO_COUNTRY, Tracked, decay, secs};
use crate::domain::{Sender, country_name};

impl Engine {
    /// The senders worth keeping across a restart (limited, or with at least half a point),
    /// at most `max`, the most important first; times on the wall clock, which reads
    /// `unix_s` (seconds) when the engine's clock reads `now_ns`.
    pub fn export(&self, now_ns: u64, unix_s: u64, max: usize) -> Vec<SavedSender> {
        self.snapshot(now_ns, unix_s).rows(max)
    }

    /// A copy of what [`Engine::export`] reads, taken quickly so that the rest (choosing,
    /// sorting, writing) can run on another thread.
    pub fn snapshot(&self, now_ns: u64, unix_s: u64) -> Snapshot {
        Snapshot {
            senders: self.tracked.iter().map(|(s, t)| (s.clone(), *t)).collect(),
            now: secs(now_ns),
            unix: unix_s,
            half_life: self.config.half_life,
        }
    }

    /// Takes back what [`Engine::export`] saved, decayed for the time that passed (a restart,
    /// a reboot). Returns the changes that put limited senders back at their level, for the
    /// enforcer. Rows that do not parse are skipped. `unix_s` is the wall clock (seconds) when
    /// the engine's clock reads `now_ns`.
    pub fn import(&mut self, rows: &[SavedSender], now_ns: u64, unix_s: u64) -> Vec<Change> {
        let now = secs(now_ns);
        let unix = unix_s;
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
}

/// The tracked senders at one moment (see [`Engine::snapshot`]).
pub struct Snapshot {
    senders: Vec<(Sender, Tracked)>,
    now: u32,
    /// The wall clock (seconds) when the engine's clock read `now`.
    unix: u64,
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
    pub fn rows(self, max: usize) -> Vec<SavedSender> {
        let now = self.now;
        let offset = self.unix.saturating_sub(u64::from(now));
        let mut rows: Vec<(Sender, Tracked, f64)> = self
            .senders
            .into_iter()
            .map(|(s, t)| {
                // Only this host's own points: a fleet's are the other hosts' to keep.
                let points = decay(t.points - t.fleet, t.at_s, now, self.half_life);
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
                SavedSender {
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

/// One sender of the engine, as saved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedSender {
    /// `source`, `prefix`, `network`, `user` or `country`.
    pub kind: String,
    pub id: String,
    pub points: f32,
    /// Unix seconds when `points` were brought up to date.
    pub at_unix: u64,
    pub level: u8,
    pub level_since_unix: u64,
    #[serde(default)]
    pub country: Option<String>,
}
