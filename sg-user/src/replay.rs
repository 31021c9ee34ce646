//! `slowgate replay`: the engine over existing logs, on the logs' own clock, with no kernel.
//! Prints every level change as it would have happened, then a table of who would have been
//! limited, when, for how long, and how many of their connections that would have cost them.
//! This is how an operator tunes weights and levels on their own mail flow before enforcing.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context;

use crate::{
    config::Config,
    domain::{FastMap, FastSet, Limit, Sender, format_duration, format_time},
    engine::{Change, Engine},
    events::{Event, EventKind},
    parsers::{Format, Outcome, Parsers},
};

/// Log time between two steps of the engine's clock.
const STEP_NS: u64 = 10 * 1_000_000_000;
/// After the last line, the clock runs on until every sender is back to level 0, at most this.
const DRAIN_NS: u64 = 7 * 86_400 * 1_000_000_000;

/// What happened to one sender over the replay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub max_level: usize,
    pub first_limited_ns: Option<u64>,
    /// Time spent above level 0.
    pub limited_ns: u64,
    since_ns: Option<u64>,
    /// Connections the sender made / would have had refused (sources only).
    pub connections: u64,
    pub refused: u64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub lines: u64,
    pub not_understood: u64,
    pub events: u64,
    pub changes: Vec<(u64, Change)>,
    pub senders: Vec<(Sender, Row)>,
    /// What `slowgate report` reads, on the log's clock.
    pub history: Vec<crate::history::Record>,
}

/// A source's bucket under the limit its level gives, judged by the kernel's own arithmetic
/// (on a precise clock: the log's).
#[derive(Default)]
struct Bucket {
    tat_ns: u64,
}

impl Bucket {
    fn admit(&mut self, now: u64, limit: Option<Limit>) -> bool {
        match limit {
            None => true,
            Some(Limit::Block) => false,
            Some(Limit::Rate { rate, burst }) => {
                let interval = rate.interval.as_nanos() as u64;
                match sg_common::gcra::conform(self.tat_ns, now, interval, u64::from(burst), 0) {
                    Some(next) => {
                        self.tat_ns = next;
                        true
                    }
                    None => false,
                }
            }
        }
    }
}

/// Runs the engine's clock on from `clock`, a step at a time, until nobody is limited (for
/// DRAIN_NS at most): each step's time and level changes.
fn drain(engine: &mut Engine, clock: &mut u64) -> Vec<(u64, Vec<Change>)> {
    let end = clock.saturating_add(DRAIN_NS);
    let mut steps = Vec::new();
    while *clock < end && engine.limited_count() > 0 {
        *clock += STEP_NS;
        steps.push((*clock, engine.tick(*clock)));
    }
    steps
}

/// Reads `logs` (each in time order), merges their events by time and runs the engine.
pub fn run(config: &Config, format: Format, logs: &[PathBuf]) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut events: Vec<(u64, usize, Event)> = Vec::new();
    for (file_index, path) in logs.iter().enumerate() {
        let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut parsers = Parsers::default();
        let mut last_time = None;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut bytes = Vec::new();
        loop {
            bytes.clear();
            let n = reader
                .read_until(b'\n', &mut bytes)
                .with_context(|| format!("read {}", path.display()))?;
            if n == 0 {
                break;
            }
            let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            // Valid UTF-8 (nearly every line) is borrowed after the fast check.
            let line = match std::str::from_utf8(text) {
                Ok(s) => std::borrow::Cow::Borrowed(s),
                Err(_) => String::from_utf8_lossy(text),
            };
            report.lines += 1;
            let parsed = parsers.parse_timed(format, &line);
            last_time = parsed.time_ns.or(last_time);
            match parsed.outcome {
                Outcome::Understood(found) => {
                    let Some(t) = last_time else {
                        anyhow::bail!(
                            "{}:{}: a line with events but no time before it",
                            path.display(),
                            report.lines
                        );
                    };
                    report.events += found.len() as u64;
                    events.extend(found.into_iter().map(|e| (t, file_index, e)));
                }
                Outcome::NotUnderstood => report.not_understood += 1,
            }
        }
    }
    // Stable: lines of one file keep their order within a second.
    events.sort_by_key(|(t, file, _)| (*t, *file));

    let geo = config
        .geoip
        .as_deref()
        .map(crate::config::read_geo)
        .transpose()?;
    let mut engine = Engine::new(config.engine.clone()).with_geo(geo);
    engine.set_allowed(config.allow.iter().map(|n| n.to_ipnet()).collect());
    let mut rows: FastMap<Sender, Row> = FastMap::default();
    let mut buckets: FastMap<std::net::IpAddr, Bucket> = FastMap::default();
    let mut connects_seen: FastSet<std::net::IpAddr> = FastSet::default();
    let mut clock = events.first().map_or(0, |e| e.0);

    let mut note = |changes: Vec<Change>, at: u64, rows: &mut FastMap<Sender, Row>| {
        for change in changes {
            let row = rows.entry(change.sender.clone()).or_default();
            row.max_level = row.max_level.max(change.to);
            if change.from == 0 && change.to > 0 {
                row.first_limited_ns.get_or_insert(at);
                row.since_ns = Some(at);
            }
            if change.to == 0
                && let Some(since) = row.since_ns.take()
            {
                row.limited_ns += at - since;
            }
            report.changes.push((at, change));
        }
    };

    let mut minute = crate::history::Minute {
        start: clock / 1_000_000_000 / 60 * 60,
        ..Default::default()
    };
    let mut minutes = Vec::new();
    for (t, _, event) in &events {
        let secs = t / 1_000_000_000;
        if secs >= minute.start + 60 {
            minutes.push(minute.record(engine.limited_count() as u64));
            minute = crate::history::Minute {
                start: secs / 60 * 60,
                ..Default::default()
            };
        }
        minute.events[crate::engine::kind_index(&event.kind)] += 1;
        if t.saturating_sub(clock) > DRAIN_NS {
            // A long quiet gap (or a stamp far in the future): let everyone come back to
            // normal, then jump, so replay time follows the lines, not the calendar.
            for (at, changes) in drain(&mut engine, &mut clock) {
                note(changes, at, &mut rows);
            }
            clock = clock.max(t - (t - clock) % STEP_NS);
        }
        while clock.saturating_add(STEP_NS) <= *t {
            clock += STEP_NS;
            note(engine.tick(clock), clock, &mut rows);
        }
        // What the kernel would have done with this connection, under the limits in force.
        let source = event.source;
        if matches!(event.kind, EventKind::Connection) {
            connects_seen.insert(source);
        }
        let counts_as_connection =
            matches!(event.kind, EventKind::Connection) || !connects_seen.contains(&source);
        if counts_as_connection {
            let limit = effective_limit(&engine, source);
            let row = rows.entry(Sender::Source(source)).or_default();
            row.connections += 1;
            if !buckets.entry(source).or_default().admit(*t, limit) {
                row.refused += 1;
                minute.drops += 1;
            }
        }
        note(engine.record(event, *t), *t, &mut rows);
    }
    minutes.push(minute.record(engine.limited_count() as u64));
    // Let the clock run on until everyone is back to normal.
    for (at, changes) in drain(&mut engine, &mut clock) {
        note(changes, at, &mut rows);
    }
    for row in rows.values_mut() {
        if let Some(since) = row.since_ns.take() {
            row.limited_ns += clock - since;
        }
    }
    let mut senders: Vec<(Sender, Row)> =
        rows.into_iter().filter(|(_, r)| r.max_level > 0).collect();
    senders.sort_by(|a, b| {
        b.1.max_level
            .cmp(&a.1.max_level)
            .then(b.1.refused.cmp(&a.1.refused))
            .then(a.0.cmp(&b.0))
    });
    report.senders = senders;
    report.history = report
        .changes
        .iter()
        .map(|(at, c)| crate::history::Record::change(at / 1_000_000_000, c))
        .chain(minutes)
        .collect();
    report.history.sort_by_key(crate::history::Record::time);
    Ok(report)
}

/// The limit the kernel would apply to `source`'s new connections: its own, else its prefix's,
/// else its network's.
fn effective_limit(engine: &Engine, source: std::net::IpAddr) -> Option<Limit> {
    [
        Sender::Source(source),
        Sender::Prefix(engine.prefix_of(source)),
        Sender::Network(engine.network_of(source)),
    ]
    .iter()
    .find_map(|s| engine.limit_for(s, engine.level(s)))
}

/// Prints the changes and the table.
pub fn print(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    for (at, change) in &report.changes {
        writeln!(out, "{} {change}", format_time(*at))?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<28} {:>5} {:<19} {:>10} {:>11} {:>8}",
        "sender", "level", "first limited", "limited", "connections", "refused"
    )?;
    for (sender, row) in &report.senders {
        let conn = |n: u64| {
            if matches!(sender, Sender::Source(_)) {
                n.to_string()
            } else {
                "-".into()
            }
        };
        writeln!(
            out,
            "{:<28} {:>5} {:<19} {:>10} {:>11} {:>8}",
            sender.to_string(),
            row.max_level,
            row.first_limited_ns.map_or("-".into(), format_time),
            format_duration(Duration::from_nanos(row.limited_ns)),
            conn(row.connections),
            conn(row.refused),
        )?;
    }
    writeln!(
        out,
        "\n{} lines, {} events, {} not understood; {} senders would have been limited",
        report.lines,
        report.events,
        report.not_understood,
        report.senders.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(
            format_time(1_795_334_020_000_000_000),
            "2026-11-22 07:53:40"
        );
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400_000_000_000), "2000-02-29 00:00:00");
    }
}
