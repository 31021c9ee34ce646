//! A prefix earns a level from rotation, not from one address.
//!
//! An IPv4 /24 is a hosting provider's or an ISP's neighbours: one abusive address must not
//! limit the others. So a prefix counts the distinct addresses that contributed to it lately,
//! each only once its own points are a real share of the first level (`levels[0].points /
//! min_sources`: a connection or a lost session is not a contribution), and its level is capped
//! by that count: below `min_sources` addresses nothing, then one level per address more. A
//! sender rotating through the prefix brings the addresses; a single spammer does not.
//!
//! IPv6 /64s are one customer each: `min_sources_v6` defaults to 1 (no cap).
//!
//! The count is a pair of 64-bit sets of keyed address hashes, one per half-life: an address
//! counts while it contributed in the current or the previous half-life. Keyed hashes (the
//! engine's random hasher) keep an attacker from picking addresses that collide to look like
//! fewer; a collision only ever undercounts, which limits later, never wrongly.

use std::net::IpAddr;

/// The addresses that contributed to a prefix in the last one or two half-lives.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Contributors {
    current: u64,
    previous: u64,
    /// Second the current set started.
    since_s: u32,
}

impl Contributors {
    /// Counts the address with keyed hash `hash` as contributing at `now`.
    pub(super) fn mark(&mut self, hash: u64, now: u32, generation_s: u32) {
        self.roll(now, generation_s);
        self.current |= 1 << (hash >> 58);
    }

    /// Distinct contributing addresses at `now` (a lower bound).
    pub(super) fn count(&self, now: u32, generation_s: u32) -> u32 {
        let age = now.saturating_sub(self.since_s);
        let live = if age >= 2 * generation_s {
            0
        } else if age >= generation_s {
            self.current
        } else {
            self.current | self.previous
        };
        live.count_ones()
    }

    fn roll(&mut self, now: u32, generation_s: u32) {
        let age = now.saturating_sub(self.since_s);
        if age >= generation_s {
            self.previous = if age >= 2 * generation_s {
                0
            } else {
                self.current
            };
            self.current = 0;
            self.since_s = now;
        }
    }
}

/// The highest level `distinct` contributing addresses justify when `min_sources` are needed.
pub(super) fn level_cap(distinct: u32, min_sources: u32) -> usize {
    if min_sources <= 1 {
        usize::MAX
    } else if distinct < min_sources {
        0
    } else {
        (distinct - min_sources + 1) as usize
    }
}

/// The minimum of distinct sources for a prefix of `addr`'s family.
pub(super) fn min_sources(addr: IpAddr, v4: u32, v6: u32) -> u32 {
    match addr {
        IpAddr::V4(_) => v4,
        IpAddr::V6(_) => v6,
    }
}

/// The keyed hash of a contributing address. Random keys in the daemon, so an
/// attacker cannot pick addresses that collide; a fixed key in the unit tests, so that six
/// addresses never collide in one run and not in the next.
#[cfg(not(test))]
pub(super) fn address_hash(keys: &foldhash::quality::RandomState, address: IpAddr) -> u64 {
    std::hash::BuildHasher::hash_one(keys, address)
}

#[cfg(test)]
pub(super) fn address_hash(_: &foldhash::quality::RandomState, address: IpAddr) -> u64 {
    std::hash::BuildHasher::hash_one(
        &foldhash::quality::FixedState::with_seed(TEST_SEED),
        address,
    )
}

/// A key under which the tests' addresses do not collide in the 64 buckets of rotation.rs.
#[cfg(test)]
const TEST_SEED: u64 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contributors_are_counted_for_two_half_lives_at_most() {
        let mut c = Contributors::default();
        let g = 1800;
        for (i, hash) in [1u64 << 58, 2 << 58, 3 << 58].into_iter().enumerate() {
            c.mark(hash, 10 + i as u32, g);
        }
        assert_eq!(c.count(20, g), 3);
        c.mark(1 << 58, 10 + g, g);
        assert_eq!(c.count(10 + g, g), 3, "the previous half-life still counts");
        assert_eq!(c.count(10 + 2 * g, g), 1, "only the newer half-life");
        assert_eq!(c.count(10 + 3 * g, g), 0);
    }

    #[test]
    fn caps_one_level_per_address_beyond_the_minimum() {
        assert_eq!(level_cap(1, 3), 0);
        assert_eq!(level_cap(2, 3), 0);
        assert_eq!(level_cap(3, 3), 1);
        assert_eq!(level_cap(5, 3), 3);
        assert_eq!(level_cap(0, 1), usize::MAX);
    }
}
