//! Sampled drops from the kernel, reported in aggregate: per sender and per interval, never
//! one log line per packet. Under a SYN flood the kernel drops millions of packets; the daemon
//! counts the samples in a bounded table and writes at most [`MAX_LINES`] lines a minute.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use sg_common::{DropEvent, reason, service};

/// How often the aggregate is written.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Senders named per interval (the most dropped first); the rest are summed up in one line.
pub const MAX_LINES: usize = 10;
/// Senders counted per interval; samples from further senders are only counted in all.
const MAX_SENDERS: usize = 4096;

#[derive(Default, Clone, Copy)]
struct Count {
    samples: u64,
    /// Bit per reason.
    reasons: u32,
    /// Bit per service.
    services: u32,
}

/// The drop samples of the current interval.
pub struct DropLog {
    since: Instant,
    /// One drop event stands for this many drops (the kernel's sampling rate).
    sample: u64,
    by_sender: HashMap<IpAddr, Count>,
    /// Samples from senders past MAX_SENDERS.
    overflow: u64,
    total: u64,
}

impl DropLog {
    pub fn new(sample: u32, now: Instant) -> DropLog {
        DropLog {
            since: now,
            sample: u64::from(sample.max(1)),
            by_sender: HashMap::new(),
            overflow: 0,
            total: 0,
        }
    }

    pub fn record(&mut self, e: &DropEvent) {
        let addr = crate::domain::Network {
            addr: e.addr,
            prefix_len: 128,
        }
        .to_ipnet()
        .addr();
        self.total += 1;
        let full = self.by_sender.len() >= MAX_SENDERS;
        match self.by_sender.get_mut(&addr) {
            Some(c) => c.add(e),
            None if full => self.overflow += 1,
            None => self.by_sender.entry(addr).or_default().add(e),
        }
    }

    /// The lines to log when the interval is over (and a new interval begun), else none.
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        if now.duration_since(self.since) < INTERVAL {
            return Vec::new();
        }
        let secs = now.duration_since(self.since).as_secs().max(1);
        self.since = now;
        let mut senders: Vec<(IpAddr, Count)> = self.by_sender.drain().collect();
        let (total, overflow) = (self.total, self.overflow);
        self.total = 0;
        self.overflow = 0;
        if total == 0 {
            return Vec::new();
        }
        senders.sort_by(|a, b| b.1.samples.cmp(&a.1.samples).then(a.0.cmp(&b.0)));
        let mut lines = vec![format!(
            "slowgate: dropped about {} new connections in the last {secs} s from {} sender(s)",
            total * self.sample,
            senders.len() + usize::from(overflow > 0)
        )];
        for (addr, c) in senders.iter().take(MAX_LINES) {
            lines.push(format!(
                "slowgate:   {addr}: about {} ({}; {})",
                c.samples * self.sample,
                names(c.reasons, &reason::NAMES),
                names(c.services, &service::NAMES)
            ));
        }
        let rest: u64 = senders
            .iter()
            .skip(MAX_LINES)
            .map(|(_, c)| c.samples)
            .sum::<u64>()
            + overflow;
        if rest > 0 {
            lines.push(format!(
                "slowgate:   others: about {} (`slowgate top` and the metrics tell more)",
                rest * self.sample
            ));
        }
        lines
    }
}

impl Count {
    fn add(&mut self, e: &DropEvent) {
        self.samples += 1;
        self.reasons |= 1u32.checked_shl(u32::from(e.reason)).unwrap_or(0);
        self.services |= 1u32.checked_shl(u32::from(e.service)).unwrap_or(0);
    }
}

fn names(bits: u32, names: &[&str]) -> String {
    let found: Vec<&str> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    if found.is_empty() {
        "unknown".into()
    } else {
        found.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(last: u8, why: u8) -> DropEvent {
        DropEvent {
            addr: sg_common::map_v4([203, 0, 113, last]),
            reason: why,
            service: service::SMTP,
            port: 25,
            ..Default::default()
        }
    }

    #[test]
    fn a_flood_of_samples_becomes_a_few_lines_a_minute() {
        let start = Instant::now();
        let mut log = DropLog::new(16, start);
        for i in 0..1_000_000u32 {
            log.record(&event((i % 200) as u8, reason::DENY));
        }
        assert!(log.due(start + Duration::from_secs(59)).is_empty());
        let lines = log.due(start + INTERVAL);
        assert_eq!(lines.len(), 1 + MAX_LINES + 1, "{lines:#?}");
        assert!(
            lines[0].contains("about 16000000 new connections"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("203.0.113.") && lines[1].contains("deny; smtp"));
        assert!(lines.last().unwrap().contains("others"));
        // A quiet minute says nothing.
        assert!(log.due(start + 2 * INTERVAL).is_empty());
    }

    #[test]
    fn the_table_of_senders_is_bounded() {
        let start = Instant::now();
        let mut log = DropLog::new(1, start);
        for i in 0..(MAX_SENDERS as u32 + 500) {
            let mut e = event(0, reason::DEFAULT_SOURCE);
            e.addr = sg_common::map_v4(i.to_be_bytes());
            log.record(&e);
        }
        assert_eq!(log.by_sender.len(), MAX_SENDERS);
        assert_eq!(log.overflow, 500);
        let lines = log.due(start + INTERVAL);
        assert!(lines[0].contains(&format!("from {} sender(s)", MAX_SENDERS + 1)));
    }
}
