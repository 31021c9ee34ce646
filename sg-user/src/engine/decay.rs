//! Decay and the other small computations on points and addresses.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;

use super::{KIND_NAMES, LevelRow};

/// Event counts as (kind, count), most frequent first.
pub(super) fn counted(recent: &[u8; KIND_NAMES.len()]) -> Vec<(&'static str, u32)> {
    let mut events: Vec<(&'static str, u32)> = KIND_NAMES
        .iter()
        .zip(recent)
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (*k, u32::from(*n)))
        .collect();
    events.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    events
}

pub(super) fn truncate(addr: IpAddr, v4: u8, v6: u8) -> IpNet {
    let len = if addr.is_ipv4() { v4 } else { v6 };
    IpNet::new(addr, len)
        .expect("validated prefix length")
        .trunc()
}

/// Seconds of a nanosecond clock, as stored per sender (u32 lasts until 2106 on the Unix clock).
pub(super) fn secs(now_ns: u64) -> u32 {
    (now_ns / 1_000_000_000) as u32
}

pub(super) fn decay(points: f32, at_s: u32, now_s: u32, half_life: Duration) -> f64 {
    let elapsed = f64::from(now_s.saturating_sub(at_s));
    f64::from(points) * (-elapsed / half_life.as_secs_f64()).exp2()
}

/// The highest level whose threshold `points` reach.
pub(super) fn level_for(levels: &[LevelRow], points: f64) -> usize {
    levels.iter().take_while(|row| points >= row.points).count()
}
