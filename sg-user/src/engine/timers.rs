//! When each sender is looked at again (the timer queue the tick pops), and the kernel's
//! refusals that hold a knocking sender at its level.

use super::{Engine, NEGLIGIBLE_POINTS, NOT_HELD, NOT_SCHEDULED, Sender, Tracked, secs};

impl Engine {
    /// The first second at which `sender` (tracked as `t`) may leave its level: step down one,
    /// or at level 0 be forgotten. [`NOT_SCHEDULED`] when never on its own (a limited network
    /// follows its prefixes).
    pub(super) fn due(&self, sender: &Sender, t: &Tracked) -> u32 {
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
        below(self.step_down_below(t)).max(t.level_since_s.saturating_add(self.min_hold_s()))
    }

    /// The points a sender at level `t.level` (above 0) must fall under to step down one.
    pub(super) fn step_down_below(&self, t: &Tracked) -> f64 {
        let threshold = self
            .table(t.country)
            .get(usize::from(t.level) - 1)
            .map_or(0.0, |row| row.points);
        threshold * self.config.down_fraction
    }

    /// `min_hold` in whole seconds.
    pub(super) fn min_hold_s(&self) -> u32 {
        self.config.min_hold.as_secs().min(u64::from(u32::MAX)) as u32
    }

    /// Puts `sender`'s due time in the timer queue (not before `not_before`), superseding any
    /// entry it had.
    pub(super) fn schedule(&mut self, sender: &Sender, not_before: u32) {
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
    pub(super) fn reschedule_all(&mut self) {
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

    /// The kernel refused connections of `sender` since the last call: a limited sender that
    /// keeps knocking stays at its level (its hold restarts), for `refusal_hold_max` at most
    /// from the first refusal on. Refusals never raise a level (SYNs can be spoofed). An
    /// address's refusals hold its prefix too: the program decides on the address's own
    /// verdict first, so a limited prefix never counts the refusals of a limited address of it.
    /// Returns whether `sender`'s level is held.
    pub fn refused(&mut self, sender: &Sender, now_ns: u64) -> bool {
        if let Sender::Source(addr) = sender {
            let prefix = Sender::Prefix(self.prefix_of(*addr));
            self.hold(&prefix, now_ns);
        }
        self.hold(sender, now_ns)
    }

    fn hold(&mut self, sender: &Sender, now_ns: u64) -> bool {
        let now = secs(now_ns);
        let max = self
            .config
            .refusal_hold_max
            .as_secs()
            .min(u64::from(u32::MAX)) as u32;
        let Some(t) = self.tracked.get_mut(sender) else {
            return false;
        };
        if t.level == 0 {
            return false;
        }
        if t.held_since_s == NOT_HELD {
            t.held_since_s = now;
        }
        if now.saturating_sub(t.held_since_s) >= max {
            return false;
        }
        // The hold restarts a second later than this (whole) second: the clock is read in
        // whole seconds, and a refusal seen late in one must still hold a full `min_hold`.
        t.level_since_s = now.saturating_add(1);
        self.schedule(sender, 0);
        true
    }
}
