//! The Prometheus text endpoint (`GET /metrics`, text format 0.0.4): what the kernel counted
//! (packets, drops by reason and service, map fill) and what the learning loop did (lines,
//! events per kind and format, senders per level, points of limited senders, time from a log
//! line to its limit, write errors).

use std::{
    fmt::Write,
    time::{Duration, Instant},
};

use sg_common::{counter, reason, service};

use crate::{enforcer::Maps, engine::KIND_NAMES, learn::Stats};

/// Upper bounds of the points histogram of limited senders.
const POINT_BUCKETS: [f64; 8] = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// One metric: its HELP and TYPE lines, then a line per (labels, value).
fn metric(out: &mut String, name: &str, kind: &str, help: &str, rows: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in rows {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// The page, kept between scrapes: rendered at most once a second, and the map fill (a walk
/// of the list and policy maps, one syscall per entry) read at most every [`FILL_EVERY`], so
/// no scrape rate makes the daemon walk its maps continuously.
#[derive(Default)]
pub struct Page {
    body: String,
    rendered: Option<Instant>,
    fill: Vec<(&'static str, usize, u32)>,
    filled: Option<Instant>,
}

/// How long a page is served again.
const PAGE_EVERY: Duration = Duration::from_secs(1);
/// How long a map fill reading is used again.
pub const FILL_EVERY: Duration = Duration::from_secs(30);

impl Page {
    pub fn get(&mut self, maps: &Maps, stats: &crate::learn::SharedStats) -> String {
        let now = Instant::now();
        if self
            .rendered
            .is_some_and(|at| now.duration_since(at) < PAGE_EVERY)
        {
            return self.body.clone();
        }
        if self
            .filled
            .is_none_or(|at| now.duration_since(at) >= FILL_EVERY)
        {
            self.fill = maps.fill();
            self.filled = Some(now);
        }
        let snapshot = stats.lock().map(|s| s.clone()).unwrap_or_default();
        self.body = render(maps, &snapshot, &self.fill);
        self.rendered = Some(now);
        self.body.clone()
    }
}

pub fn render(maps: &Maps, stats: &Stats, fill: &[(&'static str, usize, u32)]) -> String {
    let mut out = String::new();
    if let Ok(c) = maps.counters() {
        let at = |i: u32| c.get(i as usize).copied().unwrap_or(0) as f64;
        metric(
            &mut out,
            "slowgate_packets_total",
            "counter",
            "Packets the XDP program saw, by verdict.",
            &[
                ("{verdict=\"passed\"}".into(), at(counter::PASSED)),
                ("{verdict=\"dropped\"}".into(), at(counter::DROPPED)),
            ],
        );
        metric(
            &mut out,
            "slowgate_parse_errors_total",
            "counter",
            "Packets the program could not parse (passed).",
            &[(String::new(), at(counter::PARSE_ERROR))],
        );
        metric(
            &mut out,
            "slowgate_drop_events_lost_total",
            "counter",
            "Drop events the kernel could not hand to the daemon (its ring buffer was full).",
            &[(String::new(), at(counter::EVENTS_LOST))],
        );
        metric(
            &mut out,
            "slowgate_opaque_packets_total",
            "counter",
            "IP packets whose transport header was out of reach, judged by their source.",
            &[(String::new(), at(counter::OPAQUE))],
        );
        metric(
            &mut out,
            "slowgate_sources_verified_total",
            "counter",
            "Sources marked verified: a packet of theirs matched an established socket.",
            &[(String::new(), at(counter::VERIFIED))],
        );
        metric(
            &mut out,
            "slowgate_verified_over_ceiling_total",
            "counter",
            "New connections of verified sources passed over an exhausted default ceiling.",
            &[(String::new(), at(counter::VERIFIED_OVER_CEILING))],
        );
        metric(
            &mut out,
            "slowgate_bucket_contended_total",
            "counter",
            "New connections refused because their bucket lost every compare-and-swap race.",
            &[(String::new(), at(counter::BUCKET_CONTENDED))],
        );
        metric(
            &mut out,
            "slowgate_first_contacts_total",
            "counter",
            "New connections from prefixes not seen lately, passed without reading a slot.",
            &[(String::new(), at(counter::FIRST_CONTACT))],
        );
        metric(
            &mut out,
            "slowgate_concurrent_untracked_total",
            "counter",
            "Established connections the concurrent caps could not count (their tables full); admitted.",
            &[(String::new(), at(counter::CONCURRENT_UNTRACKED))],
        );
        let by_reason: Vec<(String, f64)> = reason::NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    format!("{{reason=\"{n}\"}}"),
                    at(counter::DROP_REASON + i as u32),
                )
            })
            .collect();
        metric(
            &mut out,
            "slowgate_drops_total",
            "counter",
            "New connections dropped, by reason.",
            &by_reason,
        );
        let by_service = |base: u32| -> Vec<(String, f64)> {
            service::NAMES
                .iter()
                .enumerate()
                .skip(1)
                .map(|(i, n)| (format!("{{service=\"{n}\"}}"), at(base + i as u32)))
                .collect()
        };
        metric(
            &mut out,
            "slowgate_new_connections_total",
            "counter",
            "New connections to protected ports, by service.",
            &by_service(counter::SERVICE_NEW_CONN),
        );
        metric(
            &mut out,
            "slowgate_service_drops_total",
            "counter",
            "New connections dropped, by service.",
            &by_service(counter::SERVICE_DROPPED),
        );
    }
    let capacity: Vec<(String, f64)> = fill
        .iter()
        .map(|(n, _, max)| (format!("{{map=\"{n}\"}}"), f64::from(*max)))
        .collect();
    let fill: Vec<(String, f64)> = fill
        .iter()
        .map(|(n, used, _)| (format!("{{map=\"{n}\"}}"), *used as f64))
        .collect();
    metric(
        &mut out,
        "slowgate_map_entries",
        "gauge",
        "Entries in each bounded map.",
        &fill,
    );
    metric(
        &mut out,
        "slowgate_map_capacity",
        "gauge",
        "Capacity of each bounded map.",
        &capacity,
    );

    metric(
        &mut out,
        "slowgate_lines_total",
        "counter",
        "Log lines read, by the format their source is configured with.",
        &stats
            .lines_by_format
            .iter()
            .map(|(f, n)| (format!("{{format=\"{f}\"}}"), *n as f64))
            .collect::<Vec<_>>(),
    );
    metric(
        &mut out,
        "slowgate_lines_not_understood_total",
        "counter",
        "Log lines no parser understood.",
        &[(String::new(), stats.not_understood as f64)],
    );
    metric(
        &mut out,
        "slowgate_events_total",
        "counter",
        "Events read from the logs, by kind.",
        &KIND_NAMES
            .iter()
            .zip(stats.events_by_kind)
            .map(|(k, n)| (format!("{{kind=\"{k}\"}}"), n as f64))
            .collect::<Vec<_>>(),
    );
    metric(
        &mut out,
        "slowgate_events_by_format_total",
        "counter",
        "Events read from the logs, by the format their source is configured with.",
        &stats
            .events_by_format
            .iter()
            .map(|(f, n)| (format!("{{format=\"{f}\"}}"), *n as f64))
            .collect::<Vec<_>>(),
    );
    metric(
        &mut out,
        "slowgate_level_changes_total",
        "counter",
        "Level changes of senders.",
        &[(String::new(), stats.changes as f64)],
    );
    metric(
        &mut out,
        "slowgate_senders",
        "gauge",
        "Tracked senders by level (0 = not limited).",
        &stats
            .senders_by_level
            .iter()
            .enumerate()
            .map(|(l, n)| (format!("{{level=\"{l}\"}}"), *n as f64))
            .collect::<Vec<_>>(),
    );
    let mut histogram = Vec::new();
    for le in POINT_BUCKETS {
        let n = stats
            .limited_points
            .iter()
            .filter(|(_, p)| *p <= le)
            .count();
        histogram.push((format!("_bucket{{le=\"{le}\"}}"), n as f64));
    }
    histogram.push((
        "_bucket{le=\"+Inf\"}".into(),
        stats.limited_points.len() as f64,
    ));
    histogram.push((
        "_sum".into(),
        stats.limited_points.iter().map(|(_, p)| p).sum(),
    ));
    histogram.push(("_count".into(), stats.limited_points.len() as f64));
    let _ = writeln!(
        out,
        "# HELP slowgate_limited_points Points of limited senders.\n# TYPE slowgate_limited_points histogram"
    );
    for (suffix, v) in histogram {
        let _ = writeln!(out, "slowgate_limited_points{suffix} {v}");
    }
    metric(
        &mut out,
        "slowgate_enforce_seconds",
        "gauge",
        "From a batch of log lines arriving to its limits written in the kernel.",
        &[
            ("{stat=\"last\"}".into(), stats.enforce_last_s),
            ("{stat=\"max\"}".into(), stats.enforce_max_s),
        ],
    );
    // The learning loop's last tick (the watchdog's view): a loop that stalls grows this.
    let loop_age = if stats.heartbeat_ns == 0 {
        -1.0
    } else {
        crate::domain::boot_time_ns().saturating_sub(stats.heartbeat_ns) as f64 / 1e9
    };
    metric(
        &mut out,
        "slowgate_learning_tick_age_seconds",
        "gauge",
        "Seconds since the learning loop last finished a tick (it ticks every second; -1: not yet).",
        &[(String::new(), loop_age)],
    );
    let age = if stats.store_last_save_unix == 0 {
        -1.0
    } else {
        crate::domain::unix_now().saturating_sub(stats.store_last_save_unix) as f64
    };
    metric(
        &mut out,
        "slowgate_store_saves_total",
        "counter",
        "Snapshots of points written to the state directory, by result.",
        &[
            ("{result=\"ok\"}".into(), stats.store_saves as f64),
            ("{result=\"error\"}".into(), stats.store_errors as f64),
        ],
    );
    metric(
        &mut out,
        "slowgate_store_last_save_age_seconds",
        "gauge",
        "Seconds since the last snapshot (-1: none yet).",
        &[(String::new(), age)],
    );
    let load =
        |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as f64;
    metric(
        &mut out,
        "slowgate_overlong_lines_total",
        "counter",
        "Log lines cut at 64 KiB (the rest of each is discarded, never read as a line).",
        &[(String::new(), load(&crate::tail::OVERLONG_LINES))],
    );
    metric(
        &mut out,
        "slowgate_source_errors_total",
        "counter",
        "Read errors of log and journald sources (each retried).",
        &[(String::new(), load(&crate::sources::SOURCE_ERRORS))],
    );
    metric(
        &mut out,
        "slowgate_dnsbl_lookups_total",
        "counter",
        "DNSBL lookups of new client addresses: queries sent, addresses found listed, lookups dropped because the queue was full.",
        &[
            ("{result=\"query\"}".into(), load(&crate::dnsbl::QUERIES)),
            ("{result=\"listed\"}".into(), load(&crate::dnsbl::LISTED)),
            ("{result=\"dropped\"}".into(), load(&crate::dnsbl::DROPPED)),
        ],
    );
    feed_metrics(&mut out);
    fleet_metrics(&mut out);
    policy_metrics(&mut out);
    metric(
        &mut out,
        "slowgate_limit_write_errors_total",
        "counter",
        "Limits the daemon could not write to the kernel.",
        &[(String::new(), stats.write_errors as f64)],
    );
    out
}

/// Per feed: entries enforced, last success and error, age of the copy, refusals, failures.
fn feed_metrics(out: &mut String) {
    let feeds = crate::feeds::STATUS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if feeds.is_empty() {
        return;
    }
    let now = crate::domain::unix_now();
    let label = |f: &crate::feeds::Status| format!("{{feed=\"{}\"}}", f.name);
    let series = |value: &dyn Fn(&crate::feeds::Status) -> f64| -> Vec<(String, f64)> {
        feeds.iter().map(|f| (label(f), value(f))).collect()
    };
    let when = |t: u64| if t == 0 { -1.0 } else { t as f64 };
    metric(
        out,
        "slowgate_feed_entries",
        "gauge",
        "Entries of the copy of each feed being enforced (0: none is).",
        &series(&|f| if f.enforced { f.entries as f64 } else { 0.0 }),
    );
    metric(
        out,
        "slowgate_feed_last_success_timestamp_seconds",
        "gauge",
        "When a fetch last gave or confirmed each feed's copy (Unix seconds; -1: never).",
        &series(&|f| when(f.last_success_unix)),
    );
    metric(
        out,
        "slowgate_feed_last_error_timestamp_seconds",
        "gauge",
        "When each feed's last fetch or update failed (Unix seconds; -1: never).",
        &series(&|f| when(f.last_error_unix)),
    );
    metric(
        out,
        "slowgate_feed_age_seconds",
        "gauge",
        "Seconds since each feed's copy was last confirmed (-1: never fetched).",
        &series(&|f| match f.last_success_unix {
            0 => -1.0,
            t => now.saturating_sub(t) as f64,
        }),
    );
    metric(
        out,
        "slowgate_feed_updates_refused_total",
        "counter",
        "Copies refused by the guards (too wide entries, a size change over max_change, a garbled body).",
        &series(&|f| f.refused as f64),
    );
    metric(
        out,
        "slowgate_feed_fetch_errors_total",
        "counter",
        "Fetches of each feed that failed (HTTP errors, timeouts, truncated bodies).",
        &series(&|f| f.failed as f64),
    );
}

/// The fleet connection: up, last success, lag, buffered, dropped, refused, peers.
fn fleet_metrics(out: &mut String) {
    let Some(f) = crate::fleet::current_status() else {
        return;
    };
    let one = |v: f64| vec![(String::new(), v)];
    let gauges: [(&str, &str, &str, f64); 5] = [
        (
            "slowgate_fleet_up",
            "gauge",
            "1 while Redis answers, 0 while this host works alone.",
            f64::from(u8::from(f.up)),
        ),
        (
            "slowgate_fleet_last_success_timestamp_seconds",
            "gauge",
            "When a Redis call last succeeded (Unix seconds; 0: never).",
            f.last_success_ms as f64 / 1000.0,
        ),
        (
            "slowgate_fleet_lag_seconds",
            "gauge",
            "From a peer's publication to its arrival here, the last one.",
            f.lag_ms as f64 / 1000.0,
        ),
        (
            "slowgate_fleet_buffered",
            "gauge",
            "Publications waiting for Redis.",
            f.buffered as f64,
        ),
        (
            "slowgate_fleet_peers",
            "gauge",
            "Other hosts with a heartbeat in Redis.",
            f.peers.len() as f64,
        ),
    ];
    for (name, kind, help, value) in gauges {
        metric(out, name, kind, help, &one(value));
    }
    metric(
        out,
        "slowgate_fleet_dropped_total",
        "counter",
        "Publications and updates dropped because a bounded buffer was full.",
        &one(f.dropped as f64),
    );
    metric(
        out,
        "slowgate_fleet_refused_total",
        "counter",
        "Data read from Redis and refused by the checks (bad addresses, widths, values).",
        &one(f.refused as f64),
    );
    let now = crate::fleet::now_ms();
    metric(
        out,
        "slowgate_fleet_peer_heartbeat_age_seconds",
        "gauge",
        "Seconds since each peer's last heartbeat.",
        &f.peers
            .iter()
            .map(|(p, t)| {
                (
                    format!("{{peer=\"{p}\"}}"),
                    now.saturating_sub(*t) as f64 / 1000.0,
                )
            })
            .collect::<Vec<_>>(),
    );
}

/// The policy service: answers by front end, verdict and reason; malformed requests; the
/// answer time as a histogram per front end; events the learning loop could not take.
fn policy_metrics(out: &mut String) {
    let snap = crate::policy::snapshot();
    metric(
        out,
        "slowgate_policy_answers_total",
        "counter",
        "Policy answers, by front end (postfix, milter, dovecot), verdict and reason.",
        &snap
            .answers
            .iter()
            .map(|((front, verdict, reason), n)| {
                (
                    format!("{{front=\"{front}\",verdict=\"{verdict}\",reason=\"{reason}\"}}"),
                    *n as f64,
                )
            })
            .collect::<Vec<_>>(),
    );
    let per_front = |f: &dyn Fn(&crate::policy::Front) -> f64| {
        snap.fronts
            .iter()
            .map(|x| (format!("{{front=\"{}\"}}", x.name), f(x)))
            .collect::<Vec<_>>()
    };
    metric(
        out,
        "slowgate_policy_malformed_total",
        "counter",
        "Policy connections or requests refused as malformed (or silent within a request).",
        &per_front(&|x| x.malformed as f64),
    );
    let mut buckets = Vec::new();
    for f in &snap.fronts {
        let (front, sum) = (f.name, f.seconds);
        let mut cumulative = 0;
        for (i, n) in f.latency.iter().enumerate() {
            cumulative += n;
            let le = crate::policy::LATENCY_BOUNDS
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            buckets.push((
                format!("_bucket{{front=\"{front}\",le=\"{le}\"}}"),
                cumulative as f64,
            ));
        }
        buckets.push((format!("_sum{{front=\"{front}\"}}"), sum));
        buckets.push((format!("_count{{front=\"{front}\"}}"), cumulative as f64));
    }
    metric(
        out,
        "slowgate_policy_answer_seconds",
        "histogram",
        "Time to answer a policy question, from the request read to the verdict.",
        &buckets,
    );
    metric(
        out,
        "slowgate_policy_answer_seconds_max",
        "gauge",
        "The slowest policy answer since the start.",
        &per_front(&|x| x.slowest),
    );
    metric(
        out,
        "slowgate_policy_events_dropped_total",
        "counter",
        "Policy events (deferrals, Dovecot reports) dropped on a full learning queue.",
        &[(
            String::new(),
            crate::policy::EVENTS_DROPPED.load(std::sync::atomic::Ordering::Relaxed) as f64,
        )],
    );
}
