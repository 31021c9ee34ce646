//! The daemon's learning loop: lines from the sources -> parsers -> engine -> XDP limits.
//!
//! One thread owns the parsers, the engine and the [`Enforcer`], the one writer of lists and
//! limits while the daemon runs (operators' changes from the control socket and reloads come
//! here as requests). It drains the line channel, records every event at the current time,
//! steps senders down once a second, and writes each batch of level changes to the kernel
//! with one generation bump. Every change is logged as one
//! line. Limits it writes carry a TTL (`points.limit_ttl`) and are refreshed while they last,
//! so a daemon that dies leaves limits that expire on their own.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use ipnet::IpNet;

use crate::{
    config::Config,
    domain::{Network, Sender},
    enforcer::{Decision, Enforcer, Outcome as Enforced},
    enforcer::{ListKind, Maps},
    engine::{Change, Engine},
    lists::Change as ListChange,
    parsers::{Outcome, Parsers},
    sources::{Line, ReadTo, Reading, Text},
};

mod policy;
mod saver;
mod shared;

pub use policy::PolicyLink;

use shared::Shared;

use saver::{SAVE_EVERY, Saver};

/// Lines handled per batch before the changes are written out.
const BATCH: usize = 4096;
/// How often senders are stepped down.
const TICK: Duration = Duration::from_secs(1);
/// How often the allow list is re-read from the kernel (operators add to it with the CLI).
const ALLOW_REFRESH: u32 = 10;

/// The config's lists as operators' decisions (at start and at every reload).
pub fn config_lists(config: &Config) -> Vec<Decision> {
    let add = |kind, network: &Network| {
        Decision::Operator(ListChange::Add {
            kind,
            network: *network,
            ttl: None,
            comment: None,
        })
    };
    config
        .allow
        .iter()
        .map(|n| add(ListKind::Allow, n))
        .chain(config.deny.iter().map(|n| add(ListKind::Deny, n)))
        .chain(config.limits.iter().map(|(network, limit)| {
            Decision::Operator(ListChange::LimitSet {
                network: *network,
                limit: *limit,
                ttl: None,
                comment: None,
            })
        }))
        .collect()
}

/// Applies the learning loop's level changes through the enforcer; returns the failures.
fn enforce(enforcer: &mut Enforcer, maps: &mut Maps, changes: &[Change]) -> u64 {
    let decisions: Vec<Decision> = changes.iter().filter_map(Decision::learned).collect();
    let mut failed = 0;
    for (decision, outcome) in decisions.iter().zip(enforcer.apply(maps, &decisions)) {
        let Decision::Learned { network, .. } = decision else {
            continue;
        };
        match outcome {
            Enforced::KeptOperators => {
                tracing::info!("{network}: keeping the operator's limit")
            }
            Enforced::Failed(e) => {
                tracing::error!("{network}: could not write the limit: {e:#}");
                failed += 1;
            }
            Enforced::Done(_) | Enforced::Nothing => {}
        }
    }
    failed
}

/// What the learning loop has done, for metrics. Shared with the daemon's metrics endpoint.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub lines: u64,
    pub not_understood: u64,
    pub events: u64,
    /// Events per kind (`engine::KIND_NAMES`) and per format.
    pub events_by_kind: [u64; crate::engine::KIND_NAMES.len()],
    pub lines_by_format: BTreeMap<&'static str, u64>,
    pub events_by_format: BTreeMap<&'static str, u64>,
    pub changes: u64,
    /// Tracked senders per level (index = level), and in all.
    pub senders_by_level: Vec<u64>,
    pub tracked: u64,
    /// Points of limited senders, for a distribution: (sender kind, points).
    pub limited_points: Vec<(&'static str, f64)>,
    /// From a batch of lines arriving to its limits written: the last and the largest, in
    /// seconds.
    pub enforce_last_s: f64,
    pub enforce_max_s: f64,
    pub write_errors: u64,
    /// Snapshots of points written, failed, and when the last one was written (Unix seconds).
    pub store_saves: u64,
    pub store_errors: u64,
    pub store_last_save_unix: u64,
    /// When the loop last finished a tick (CLOCK_BOOTTIME ns): the daemon pings systemd's
    /// watchdog only while this moves, and exits when it stops.
    pub heartbeat_ns: u64,
}

pub type SharedStats = Arc<Mutex<Stats>>;

pub use crate::control::{Reply, Requests, ToLearning as Request};

/// Level changes remembered for `slowgate show` (the oldest go first).
const HISTORY: usize = 10_000;

/// What the learning loop takes in: lines from the sources, the control socket's requests,
/// and the feeds' sets (None without `[[feeds]]`).
pub struct Inputs {
    pub lines: Receiver<Reading>,
    pub requests: Requests,
    pub feeds: Option<crate::feeds::Feeds>,
    /// Other hosts' points, and where to publish ours (None without `[fleet]`).
    pub fleet: Option<crate::fleet::ForLearning>,
    /// The policy service's users' levels and buckets (None without `[policy]`).
    pub policy: Option<PolicyLink>,
}

/// Runs until `stop` is set.
pub fn run(
    config: &Config,
    mut maps: Maps,
    mut enforcer: Enforcer,
    inputs: Inputs,
    stop: Arc<AtomicBool>,
    shared: SharedStats,
) {
    let Inputs {
        lines,
        requests,
        feeds,
        fleet,
        policy,
    } = inputs;
    let mut config = config.clone();
    let config = &mut config;
    let mut recent: std::collections::VecDeque<(u64, Change)> = Default::default();
    let geo = match &config.geoip {
        Some(path) => match crate::config::read_geo(path) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!("{e:#}; countries are not used");
                None
            }
        },
        None => None,
    };
    let mut engine = Engine::new(config.engine.clone()).with_geo(geo);
    let mut fleet_link = fleet.map(|f| {
        engine.share_changes();
        Shared::new(f, config)
    });
    let mut parsers = Parsers::default();
    // DNSBL lookups of new client addresses, on a thread of their own (`[[dnsbl]]`).
    let dnsbl = config.dnsbl.clone().and_then(|settings| {
        crate::dnsbl::Dnsbl::start(settings)
            .inspect_err(|e| tracing::warn!("DNSBL lookups cannot start: {e}"))
            .ok()
    });
    let mut lookups = Lookups {
        dnsbl,
        feeds,
        reported: Default::default(),
    };
    // Test hook, never set in production: a line holding this text panics the loop, so the
    // tests can show that a worker's panic ends the daemon.
    let panic_on = std::env::var("SLOWGATE_TEST_PANIC_ON")
        .ok()
        .filter(|s| !s.is_empty());
    let check = |line: &Line| {
        if let (Some(trigger), Text::Raw(text)) = (&panic_on, &line.text)
            && text.contains(trigger.as_str())
        {
            panic!("test hook: the learning loop panics on a line holding {trigger:?}");
        }
    };
    let mut stats = Stats::default();
    let mut last_tick = Instant::now();
    let mut last_sweep = Instant::now();
    // The kernel's refusal count of each limited sender, as last read.
    let mut refusals: std::collections::HashMap<Network, u32> = Default::default();
    let mut ticks = 0u32;
    refresh_allowed(&mut engine, &mut maps, config);
    // Points and levels from before the restart (or the reboot), decayed for the time between.
    let store = match crate::store::Store::open(&config.state_dir) {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!("{e:#}; points will not survive a restart");
            None
        }
    };
    if let Some(store) = &store {
        match store.load_senders() {
            Ok(rows) if !rows.is_empty() => {
                let back = engine.import(
                    &rows,
                    crate::domain::boot_time_ns(),
                    crate::domain::unix_now(),
                );
                tracing::info!(
                    "restored {} senders, {} of them limited",
                    rows.len(),
                    back.len()
                );
                enforce(&mut enforcer, &mut maps, &back);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("{e:#}; starting without saved points"),
        }
    }
    // What `slowgate report` reads: level changes, and every minute the drops, the events and
    // the limited senders.
    let history = match crate::history::History::open(&config.state_dir) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!("{e:#}; no history for reports");
            None
        }
    };
    // Snapshots and history go to disk on a thread of their own.
    let mut saver = Saver::start(store, history);
    let dropped_now = |maps: &Maps| {
        maps.counters()
            .map_or(0, |c| c[sg_common::counter::DROPPED as usize])
    };
    let mut minute_start = crate::domain::unix_now() / 60 * 60;
    let mut last_dropped = dropped_now(&maps);
    let mut last_events = [0u64; crate::engine::KIND_NAMES.len()];
    let mut dirty = false;
    // How far each source had been read by the lines handled so far (one entry per source).
    let mut read: BTreeMap<String, ReadTo> = BTreeMap::new();
    // The first batch is saved at once; then at most every SAVE_EVERY.
    let mut last_save = Instant::now()
        .checked_sub(SAVE_EVERY)
        .unwrap_or_else(Instant::now);
    while !stop.load(Ordering::Relaxed) {
        let mut changes = Vec::new();
        let mut arrived = None;
        while let Ok((request, reply)) = requests.try_recv() {
            let now = crate::domain::boot_time_ns();
            let answer = match request {
                Request::Top { n } => {
                    let mut top = engine.top(n, now);
                    if let Some(p) = &policy {
                        for info in &mut top {
                            if let Some(user) = info.sender.strip_prefix("user:") {
                                info.buckets = Some(p.inspect.buckets(user));
                            }
                        }
                    }
                    serde_json::to_value(top).map_err(|e| e.to_string())
                }
                Request::Show { who } => {
                    let mut shown = show(&engine, &maps, &recent, &who, now);
                    if let Some(link) = &fleet_link {
                        shown.fleet = link.contributions(&engine, &who, now);
                    }
                    if let (Sender::User(user), Some(p)) = (&who, &policy) {
                        shown.buckets = Some(p.inspect.buckets(user));
                    }
                    crate::control::protocol::reply(&shown)
                }
                Request::Release { who } => {
                    if let Some(link) = &mut fleet_link {
                        link.release(&who);
                    }
                    let released = engine.release(&who, now);
                    let was = released.as_ref().map_or(0, |c| c.from);
                    changes.extend(released);
                    crate::control::protocol::reply(&crate::control::protocol::Released {
                        released: who.to_string(),
                        level_was: was,
                    })
                }
                Request::Reload(new) => {
                    let failed: Vec<String> = enforcer
                        .apply(&mut maps, &config_lists(&new))
                        .into_iter()
                        .filter_map(|o| match o {
                            Enforced::Failed(e) => Some(format!("{e:#}")),
                            _ => None,
                        })
                        .collect();
                    changes.extend(engine.set_config(new.engine.clone(), now));
                    enforcer.ttl = new.limit_ttl;
                    *config = *new;
                    refresh_allowed(&mut engine, &mut maps, config);
                    if failed.is_empty() {
                        Ok(serde_json::json!({ "reloaded": true }))
                    } else {
                        Err(format!("`[lists]`: {}", failed.join("; ")))
                    }
                }
                Request::Operator(change) => {
                    operator_said(&mut enforcer, &mut maps, Decision::Operator(change))
                }
                Request::Import(import) => {
                    operator_said(&mut enforcer, &mut maps, Decision::Import(import))
                }
            };
            let _ = reply.send(answer);
        }
        match lines.recv_timeout(TICK / 4) {
            Ok(first) => {
                arrived = Some(Instant::now());
                let now = crate::domain::boot_time_ns();
                dirty = true;
                for reading in std::iter::once(first).chain(lines.try_iter().take(BATCH)) {
                    match reading {
                        Reading::Line(line) => {
                            check(&line);
                            changes.extend(handle(
                                &mut parsers,
                                &mut engine,
                                &mut stats,
                                &mut lookups,
                                line,
                                now,
                            ));
                        }
                        // Saved with the next snapshot: the points include every line before it.
                        Reading::Reached { source, at } => {
                            read.insert(source, at);
                        }
                        Reading::Wake => {}
                        Reading::Event(event) => {
                            lookups.reported.note(&event);
                            stats.events += 1;
                            stats.events_by_kind[crate::engine::kind_index(&event.kind)] += 1;
                            changes.extend(engine.record(&event, now));
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // No sources at all (a daemon that only enforces): keep serving the control
            // socket, ticking and refreshing TTLs.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(TICK / 4),
        }
        if let Some(dnsbl) = &lookups.dnsbl {
            let now = crate::domain::boot_time_ns();
            for event in dnsbl.listed() {
                stats.events += 1;
                stats.events_by_kind[crate::engine::kind_index(&event.kind)] += 1;
                changes.extend(engine.record(&event, now));
            }
        }
        if let Some(link) = &mut fleet_link {
            changes.extend(link.exchange(&mut engine, crate::domain::boot_time_ns()));
        }
        if let Some(feeds) = &mut lookups.feeds {
            let sets: Vec<Decision> = feeds.arrived().into_iter().map(Decision::Feed).collect();
            for (set, outcome) in sets.iter().zip(enforcer.apply(&mut maps, &sets)) {
                let Decision::Feed(set) = set else { continue };
                match outcome {
                    Enforced::Done(said) => tracing::info!("feed {} enforced: {said}", set.name),
                    Enforced::Failed(e) => {
                        tracing::error!("{e:#}");
                        stats.write_errors += 1;
                    }
                    Enforced::KeptOperators | Enforced::Nothing => {}
                }
            }
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            let now = crate::domain::boot_time_ns();
            // The kernel's refusals since the last tick hold a knocking sender at its level
            // (read before the tick, which would otherwise step it down first).
            let limited = engine.limited(now);
            refusals.retain(|network, _| {
                limited
                    .iter()
                    .any(|(s, _, _)| s.network().as_ref() == Some(network))
            });
            for (sender, _, _) in limited.iter().take(MAX_REFUSAL_READS) {
                let Some(network) = sender.network() else {
                    continue;
                };
                let Ok(Some(drops)) = maps.rule_drops(network) else {
                    continue;
                };
                // A first read that finds drops counts too: the slot is claimed by the first
                // SYN refused, so a sender's first refusals would otherwise be its baseline.
                let before = refusals.insert(network, drops);
                if before.map_or(drops > 0, |b| b != drops) {
                    engine.refused(sender, now);
                }
            }
            changes.extend(engine.tick(now));
            let levels = config.engine.levels.len() + 1;
            stats.senders_by_level = vec![0; levels.max(8)];
            stats.limited_points.clear();
            let limited = engine.limited(now);
            for (sender, level, points) in &limited {
                if let Some(n) = stats.senders_by_level.get_mut(*level) {
                    *n += 1;
                }
                stats.limited_points.push((sender.kind(), *points));
            }
            stats.tracked = engine.tracked() as u64;
            stats.senders_by_level[0] =
                stats.tracked - stats.senders_by_level.iter().skip(1).sum::<u64>();
            stats.heartbeat_ns = now;
            *shared.lock().expect("stats") = stats.clone();
            ticks += 1;
            if ticks.is_multiple_of(ALLOW_REFRESH) {
                refresh_allowed(&mut engine, &mut maps, config);
            }
            if last_sweep.elapsed() >= config.sweep_interval {
                last_sweep = Instant::now();
                match enforcer.sweep(&mut maps) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("removed {n} expired entries"),
                    Err(e) => tracing::warn!("sweeping expired entries failed: {e:#}"),
                }
                if config.concurrent.is_some()
                    && let Err(e) = maps.sweep_connections()
                {
                    tracing::warn!("sweeping closed connections' counts failed: {e:#}");
                }
            }
            for e in enforcer.refresh_ttls(&mut maps, now) {
                tracing::info!("{e:#}");
            }
        }
        let unix = crate::domain::unix_now();
        if unix >= minute_start + 60 {
            let dropped = dropped_now(&maps);
            let mut events = [0u64; crate::engine::KIND_NAMES.len()];
            for (i, n) in stats.events_by_kind.iter().enumerate() {
                events[i] = n - last_events[i];
            }
            let minute = crate::history::Minute {
                start: minute_start,
                drops: dropped.saturating_sub(last_dropped),
                events,
            };
            let limited = engine.limited_count() as u64;
            saver.history(vec![minute.record(limited)]);
            last_dropped = dropped;
            last_events = stats.events_by_kind;
            minute_start = unix / 60 * 60;
        }
        if (dirty || !changes.is_empty()) && last_save.elapsed() >= save_every(engine.tracked()) {
            // A copy for the saver thread; when it is still writing the last one, next time.
            if saver.offer(&engine, &read) {
                dirty = false;
                last_save = Instant::now();
            }
            let (saves, errors, last_unix) = saver.counts();
            stats.store_saves = saves;
            stats.store_errors = errors;
            stats.store_last_save_unix = last_unix;
        }
        if !changes.is_empty() {
            // The kernel first: logging and history come after the limit is in force.
            stats.write_errors += enforce(&mut enforcer, &mut maps, &changes);
            if let Some(p) = &policy {
                p.levels_changed(&changes);
            }
            if let Some(arrived) = arrived {
                let took = arrived.elapsed().as_secs_f64();
                stats.enforce_last_s = took;
                stats.enforce_max_s = stats.enforce_max_s.max(took);
            }
            dirty = true;
            stats.changes += changes.len() as u64;
            for change in &changes {
                tracing::info!(
                    sender = %change.sender,
                    from = change.from,
                    to = change.to,
                    points = %format_args!("{:.1}", change.points),
                    "{change}"
                );
                if recent.len() == HISTORY {
                    recent.pop_front();
                }
                recent.push_back((unix, change.clone()));
            }
            saver.history(
                changes
                    .iter()
                    .map(|c| crate::history::Record::change(unix, c))
                    .collect(),
            );
        }
    }
    saver.finish(&engine, &read);
}

/// How often the senders are saved while anything changes: every second, and a second more
/// per 100,000 tracked (a copy of a big table is not free).
fn save_every(tracked: usize) -> Duration {
    SAVE_EVERY * (1 + (tracked / 100_000) as u32)
}

/// Limited senders whose refusals are read each tick at most (a syscall each).
const MAX_REFUSAL_READS: usize = 10_000;

/// An operator's decision made through the enforcer, and what to tell them.
fn operator_said(
    enforcer: &mut Enforcer,
    maps: &mut Maps,
    decision: Decision,
) -> crate::control::Reply {
    crate::enforcer::said(enforcer.apply(maps, &[decision]))
        .map_err(|e| format!("{e:#}"))
        .and_then(|said| crate::control::protocol::reply(&crate::control::protocol::Said { said }))
}

/// What is asked about each client address the logs name: DNSBL zones, points feeds.
struct Lookups {
    dnsbl: Option<crate::dnsbl::Dnsbl>,
    feeds: Option<crate::feeds::Feeds>,
    /// Failed logins the policy service reported before their log lines.
    reported: policy::Reported,
}

fn handle(
    parsers: &mut Parsers,
    engine: &mut Engine,
    stats: &mut Stats,
    lookups: &mut Lookups,
    line: Line,
    now: u64,
) -> Vec<Change> {
    stats.lines += 1;
    *stats
        .lines_by_format
        .entry(format_name(line.format))
        .or_default() += 1;
    parsers.set_time(now);
    let outcome = match &line.text {
        Text::Raw(text) => parsers.parse(line.format, text),
        Text::Journal {
            program, message, ..
        } => parsers.parse_message(line.format, program, message),
    };
    let Outcome::Understood(mut events) = outcome else {
        stats.not_understood += 1;
        return Vec::new();
    };
    events.retain(|e| !lookups.reported.already(e));
    stats.events += events.len() as u64;
    *stats
        .events_by_format
        .entry(format_name(line.format))
        .or_default() += events.len() as u64;
    let mut listed = Vec::new();
    for e in &events {
        if let Some(dnsbl) = &mut lookups.dnsbl {
            dnsbl.seen(e.source);
        }
        if let Some(points) = lookups.feeds.as_mut().and_then(|f| f.seen(e.source)) {
            let centipoints = (points * 100.0).round().clamp(0.0, f64::from(u32::MAX)) as u32;
            listed.push(crate::events::Event::new(
                crate::events::EventKind::FeedListed { centipoints },
                e.source,
            ));
        }
    }
    stats.events += listed.len() as u64;
    events.extend(listed);
    for e in &events {
        stats.events_by_kind[crate::engine::kind_index(&e.kind)] += 1;
    }
    events.iter().flat_map(|e| engine.record(e, now)).collect()
}

/// `slowgate show`: the engine's view of a sender, its level changes, and the kernel entries
/// that apply to it.
fn show(
    engine: &Engine,
    maps: &Maps,
    history: &std::collections::VecDeque<(u64, Change)>,
    who: &Sender,
    now: u64,
) -> crate::control::protocol::Shown {
    let changes = history
        .iter()
        .filter(|(_, c)| &c.sender == who)
        .map(|(at, c)| crate::control::protocol::ShownChange {
            unix_time: *at,
            from: c.from,
            to: c.to,
            points: c.points,
            events: c.events.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
        })
        .collect();
    let net = match who {
        Sender::Source(a) => Some(IpNet::from(*a)),
        Sender::Prefix(n) | Sender::Network(n) => Some(*n),
        _ => None,
    };
    let mut lists = Vec::new();
    if let Some(net) = net {
        for kind in [ListKind::Allow, ListKind::Deny] {
            if let Ok(entries) = maps.list_entries(kind) {
                for e in entries {
                    let n = e.network.to_ipnet();
                    if n.contains(&net.network()) {
                        lists.push(format!("{} {n}", kind.name()));
                    }
                }
            }
        }
        if let Ok(entries) = maps.limit_entries() {
            for e in entries {
                let n = e.network.to_ipnet();
                if n.contains(&net.network()) && n.prefix_len() <= net.prefix_len() {
                    lists.push(format!("limit {n}: {}", e.value));
                }
            }
        }
    }
    crate::control::protocol::Shown {
        fleet: Vec::new(),
        sender: who.to_string(),
        tracked: engine.info(who, now),
        changes,
        kernel_entries: lists,
        buckets: None,
    }
}

fn format_name(format: crate::parsers::Format) -> &'static str {
    use crate::parsers::Format;
    match format {
        Format::Auto => "auto",
        Format::Postfix => "postfix",
        Format::Sendmail => "sendmail",
        Format::Qmail => "qmail",
        Format::Exim => "exim",
        Format::Dovecot => "dovecot",
        Format::Rspamd => "rspamd",
    }
}

/// The engine never puts points on allow-listed senders: the config's allow list and what
/// operators added with `slowgate allow add`.
fn refresh_allowed(engine: &mut Engine, maps: &mut Maps, config: &Config) {
    let mut allow: Vec<IpNet> = config.allow.iter().map(|n| n.to_ipnet()).collect();
    if let Ok(entries) = maps.list_entries(ListKind::Allow) {
        allow.extend(
            entries
                .iter()
                .filter(|e| e.remaining != Some(Duration::ZERO))
                .map(|e| e.network.to_ipnet()),
        );
    }
    allow.sort();
    allow.dedup();
    engine.set_allowed(allow);
}
