//! Points other hosts of a fleet earned for a sender: added to its points (so levels follow
//! the fleet's sum) and kept apart (`Tracked::fleet`), so that this host publishes, saves and
//! reports only its own.

use super::{Change, Engine, NO_COUNTRY, NOT_SCHEDULED, decay, level_for, secs};
use crate::domain::Sender;

impl Engine {
    /// Remembers which senders' own points change, for [`Engine::take_changed`] (a fleet's
    /// host calls it once; alone, nothing is remembered).
    pub fn share_changes(&mut self) {
        self.share = true;
    }

    /// Adds `delta` points that other hosts earned for `sender` (negative when their
    /// contribution shrank: a release, or a decay faster than ours); raises its level as its
    /// own points would, and lets it come down as they decay. Allow-listed senders and
    /// countries take none.
    pub fn add_peer_points(&mut self, sender: &Sender, delta: f64, now_ns: u64) -> Vec<Change> {
        let allowed = match sender {
            Sender::Source(a) => self.allowed(&ipnet::IpNet::from(*a)),
            Sender::Prefix(p) | Sender::Network(p) => self.allowed(p),
            Sender::User(_) => false,
            Sender::Country(_) => true,
        };
        if allowed || !delta.is_finite() || (delta <= 0.0 && !self.tracked.contains_key(sender)) {
            return Vec::new();
        }
        let now = secs(now_ns);
        let half_life = self.config.half_life;
        let entry = self.entry(sender, NO_COUNTRY, now);
        let own = (decay(entry.points, entry.at_s, now, half_life)
            - decay(entry.fleet, entry.at_s, now, half_life))
        .max(0.0);
        let fleet = (decay(entry.fleet, entry.at_s, now, half_life) + delta).max(0.0);
        entry.points = (own + fleet) as f32;
        entry.fleet = fleet as f32;
        entry.at_s = now;
        let (points, country, level) = (own + fleet, entry.country, usize::from(entry.level));
        if entry.due_s == NOT_SCHEDULED {
            self.schedule(sender, 0);
        }
        let target = level_for(self.table(country), points);
        if target > level {
            return self.raise(sender.clone(), target, now);
        }
        Vec::new()
    }

    /// This host's own points of `sender` at `now_ns`.
    pub fn own_points(&self, sender: &Sender, now_ns: u64) -> f64 {
        self.tracked.get(sender).map_or(0.0, |t| {
            let now = secs(now_ns);
            let half_life = self.config.half_life;
            (decay(t.points, t.at_s, now, half_life) - decay(t.fleet, t.at_s, now, half_life))
                .max(0.0)
        })
    }

    /// The senders whose own points changed since the last call, with their own points now.
    pub fn take_changed(&mut self, now_ns: u64) -> Vec<(Sender, f64)> {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .map(|s| {
                let points = self.own_points(&s, now_ns);
                (s, points)
            })
            .collect()
    }

    /// Every tracked sender with own points (sources, prefixes and users), for a fleet that
    /// lost its shared store and refills it.
    pub fn own_contributions(&self, now_ns: u64) -> Vec<(Sender, f64)> {
        self.tracked
            .keys()
            .filter(|s| matches!(s, Sender::Source(_) | Sender::Prefix(_) | Sender::User(_)))
            .map(|s| (s.clone(), self.own_points(s, now_ns)))
            .filter(|(_, p)| *p >= 0.01)
            .collect()
    }
}
