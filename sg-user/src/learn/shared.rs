//! The learning loop's side of a fleet: other hosts' points into the engine, ours out.

use std::{sync::atomic::Ordering, time::Instant};

use crate::{
    config::Config,
    domain::Sender,
    engine::{Change, Engine},
    fleet::{ForLearning, Incoming, Peers, now_ms},
};

/// Incoming updates taken per pass (the loop comes back within a quarter second).
const PER_PASS: usize = 100_000;

pub(super) struct Shared {
    link: ForLearning,
    peers: Peers,
    name: String,
    last_sweep: Instant,
}

impl Shared {
    pub(super) fn new(link: ForLearning, config: &Config) -> Shared {
        let name = config
            .fleet
            .as_ref()
            .map_or(String::new(), |f| f.name.clone());
        Shared {
            link,
            // A few hosts' contributions for every sender tracked.
            peers: Peers::new(
                config.engine.max_tracked.saturating_mul(4),
                config.engine.half_life,
            ),
            name,
            last_sweep: Instant::now(),
        }
    }

    /// Takes the other hosts' updates into the engine, publishes the own points that changed
    /// (all of them when Redis came back); returns the level changes.
    pub(super) fn exchange(&mut self, engine: &mut Engine, now_ns: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        let now = now_ms();
        for incoming in self.link.incoming.try_iter().take(PER_PASS) {
            match incoming {
                Incoming::Points {
                    host,
                    sender,
                    points,
                    at_ms,
                } => {
                    let delta = self.peers.update(&host, &sender, points, at_ms, now);
                    if delta != 0.0 {
                        changes.extend(engine.add_peer_points(&sender, delta, now_ns));
                    }
                }
                Incoming::Release { host, sender } => {
                    tracing::info!("{sender}: released by {host}");
                    self.peers.release(&sender);
                    changes.extend(engine.release(&sender, now_ns));
                }
                // Operators' entries go to the daemon's main task.
                Incoming::List { .. } | Incoming::Spent { .. } => {}
            }
        }
        if self.link.republish.swap(false, Ordering::Relaxed) {
            for (sender, points) in engine.own_contributions(now_ns) {
                self.link.fleet.points(sender, points);
            }
        }
        for (sender, points) in engine.take_changed(now_ns) {
            self.link.fleet.points(sender, points);
        }
        if self.last_sweep.elapsed() >= crate::fleet::RECONCILE {
            self.last_sweep = Instant::now();
            self.peers.sweep(now);
        }
        changes
    }

    /// An operator's release here is a release everywhere.
    pub(super) fn release(&mut self, who: &Sender) {
        self.link.fleet.release(who.clone());
        self.peers.release(who);
    }

    /// Who contributed how many points to `who`: this host first, then the others.
    pub(super) fn contributions(
        &self,
        engine: &Engine,
        who: &Sender,
        now_ns: u64,
    ) -> Vec<(String, f64)> {
        let mut out = vec![(self.name.clone(), engine.own_points(who, now_ns))];
        out.extend(self.peers.of(who, now_ms()));
        out
    }
}
