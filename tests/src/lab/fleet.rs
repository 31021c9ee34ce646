//! The lab's second MX host and the Redis the two share (fleet mode).
//!
//! | namespace | addresses | link |
//! |---|---|---|
//! | mx2 | `vx` 2001:db8:c2::1 (to the attacker), `rd` 203.0.113.54 (to Redis) | Postfix only |
//! | redis | 203.0.113.49 (to mta's `rd` 203.0.113.50), 203.0.113.53 (to mx2) | redis-server |
//!
//! The attacker also holds 2001:db8:c::77, which reaches the mta at 2001:db8:c::1 and mx2 at
//! 2001:db8:c2::1: a spammer alternating between the two MX hosts from one address.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use super::{
    Mail, Netns, Row, Servers, Tally, Timing, Topology, interrupted, ip, kernel_level, smtp,
};
use crate::{Daemon, PinDir, fleet::Redis};

pub(super) const ALTERNATING_V6: &str = "2001:db8:c::77";
const MX1_ALT_V6: &str = "2001:db8:c::1";
const MX2_V6: &str = "2001:db8:c2::1";
use crate::fleet::{REDIS_FOR_A as REDIS_FOR_MX1, REDIS_FOR_B as REDIS_FOR_MX2};
/// The lab's first level, in points.
const LEVEL_1: f64 = 6.0;

/// `[fleet]` of a lab host.
pub(super) fn config(name: &str) -> String {
    let redis = if name == "mx1" {
        REDIS_FOR_MX1
    } else {
        REDIS_FOR_MX2
    };
    format!("[fleet]\nurl = \"redis://{redis}:6379/0\"\nname = \"{name}\"\ntimeout = \"50ms\"\n")
}

/// Dropped in this order: the daemon, its pins, Postfix, Redis, then the namespaces.
pub(super) struct Fleet {
    pub(super) daemon: Daemon,
    pub(super) pins: PinDir,
    _servers: Servers,
    redis: Mutex<Option<Redis>>,
    _mx2: Netns,
    redis_ns: Netns,
}

fn add(ns: &Netns, dev: &str, cidr: &str) -> anyhow::Result<()> {
    ns.ip(&["addr", "add", cidr, "dev", dev, "nodad"])
}

impl Fleet {
    /// The namespaces, links and Redis (call before the first daemon starts, so it finds
    /// Redis at once); the second host's Postfix and daemon.
    pub(super) fn build(t: &Topology, dir: &Path, timing: &Timing) -> anyhow::Result<Fleet> {
        let redis_ns = Netns::new("redis")?;
        let mx2 = Netns::new("mx2")?;
        crate::veth(&t.mta, "rd", &redis_ns, "h1")?;
        crate::veth(&mx2, "rd", &redis_ns, "h2")?;
        crate::veth(&mx2, "vx", &t.attacker, "ex")?;
        t.mta.addr("rd", "203.0.113.50/30")?;
        redis_ns.addr("h1", &format!("{REDIS_FOR_MX1}/30"))?;
        mx2.addr("rd", "203.0.113.54/30")?;
        redis_ns.addr("h2", &format!("{REDIS_FOR_MX2}/30"))?;
        add(&mx2, "vx", &format!("{MX2_V6}/64"))?;
        add(&t.attacker, "ex", "2001:db8:c2::99/64")?;
        add(&t.attacker, "ea", &format!("{ALTERNATING_V6}/64"))?;
        add(&t.mta, "va", &format!("{MX1_ALT_V6}/64"))?;
        // mx2 answers the alternating address through the attacker's link to it.
        mx2.ip(&[
            "route",
            "add",
            "2001:db8:c::/64",
            "via",
            "2001:db8:c2::99",
            "dev",
            "vx",
        ])?;
        let mx2_dir = dir.join("mx2");
        std::fs::create_dir_all(&mx2_dir)?;
        Servers::write_postfix(&mx2_dir, &Default::default())?;
        super::in_ns(
            &mx2,
            &[
                "postfix",
                "-c",
                &format!("{}/pf", mx2_dir.display()),
                "start",
            ],
        )?;
        let servers = Servers { dir: mx2_dir };
        let redis = Redis::start(&redis_ns);
        let pins = PinDir::new();
        let config = format!(
            "interfaces = [\"vx\"]\nattach_mode = \"native\"\n\
             [[sources]]\npath = \"{}\"\nformat = \"postfix\"\n\
             [prefix]\nipv4 = 25\nipv6 = 64\n\
             [points]\nhalf_life = \"{}\"\nmin_hold = \"2s\"\nlimit_ttl = \"10m\"\n\
             [[levels]]\npoints = 6\nrate = \"30/min\"\nburst = 5\n\
             [[levels]]\npoints = 15\nrate = \"6/min\"\nburst = 2\n\
             [[levels]]\npoints = 30\nblock = true\n{}",
            servers.mail_log().display(),
            timing.half_life,
            config("mx2")
        );
        let daemon = Daemon::start(&mx2, &config, &pins.path)?;
        Ok(Fleet {
            daemon,
            pins,
            _servers: servers,
            redis: Mutex::new(Some(redis)),
            _mx2: mx2,
            redis_ns,
        })
    }

    fn kill_redis(&self) {
        self.redis.lock().expect("redis").take();
    }

    fn restart_redis(&self) {
        *self.redis.lock().expect("redis") = Some(Redis::start(&self.redis_ns));
    }

    fn redis_keys(&self) -> u64 {
        self.redis
            .lock()
            .expect("redis")
            .as_ref()
            .map_or(0, |r| r.cli(&["DBSIZE"]).trim().parse().unwrap_or(0))
    }
}

/// The spammer: one harvest attempt (2 points) at a time, alternating between the two hosts,
/// each host once every 0.74 half-lives, so that its own points on each approach 5 and never
/// reach level 1 (6), while the fleet's sum on either host, its own plus the other's decayed
/// by half a period, passes 8.
pub(super) fn alternate(
    attacker: &Netns,
    tally: &Tally,
    start: Instant,
    end: Instant,
    half_life: Duration,
) {
    let mut n = 0;
    while Instant::now() < end && !interrupted() {
        for server in [MX1_ALT_V6, MX2_V6] {
            let rcpts = [format!("nobody-alt-{n}@example.net")];
            let mail = Mail {
                port: 25,
                rcpts: &rcpts,
                auth: None,
                id: format!("alt-{n}"),
            };
            let outcome = smtp(attacker, ip(ALTERNATING_V6), server, &mail);
            tally.add(outcome, start);
            n += 1;
            thread::sleep(half_life.mul_f64(0.37));
            if Instant::now() >= end || interrupted() {
                return;
            }
        }
    }
}

/// What the sampler saw of the fleet during the run.
#[derive(Default)]
pub(super) struct Seen {
    /// Highest kernel level of the alternating spammer on each host.
    level: [usize; 2],
    /// Highest own points of the spammer on each host (each host's own contribution).
    own: [f64; 2],
    /// The flood's lowest kernel level on the first host while Redis was down.
    flood_level_during_outage: Option<usize>,
    killed_at: Option<f64>,
    restarted_at: Option<f64>,
    /// Seconds from the restart until both hosts were back in the fleet with Redis refilled.
    recovered_after: Option<f64>,
    keys_after: u64,
}

/// Each host's own points of `who`, as its daemon shows it (0 when not tracked).
fn own_points(daemon: &Daemon, who: &str) -> f64 {
    let shown: anyhow::Result<slowgate::control::protocol::Shown> = slowgate::control::call(
        &daemon.control,
        &slowgate::control::protocol::Request::Show { who: who.into() },
    );
    shown
        .ok()
        .and_then(|s| s.fleet.first().map(|(_, p)| *p))
        .unwrap_or(0.0)
}

fn fleet_up(daemon: &Daemon) -> bool {
    let status: anyhow::Result<Option<slowgate::fleet::Status>> = slowgate::control::call(
        &daemon.control,
        &slowgate::control::protocol::Request::Fleet,
    );
    status.ok().flatten().is_some_and(|s| s.up)
}

/// Samples both hosts until `end`; kills Redis at the attack's midpoint and restarts it
/// (empty) 3 s later.
pub(super) fn sample(
    fleet: &Fleet,
    first: (&Path, &Daemon),
    flood: &str,
    start: Instant,
    end: Instant,
    seen: &Mutex<Seen>,
) {
    let Ok(maps1) = slowgate::enforcer::Maps::open_pinned(first.0) else {
        return;
    };
    let Ok(maps2) = slowgate::enforcer::Maps::open_pinned(&fleet.pins.path) else {
        return;
    };
    let kill_at = start + (end - start) / 2;
    let down = AtomicBool::new(false);
    let restarted: Arc<Mutex<Option<Instant>>> = Arc::default();
    while Instant::now() < end + Duration::from_secs(10) && !interrupted() {
        let now = Instant::now();
        {
            let mut s = seen.lock().expect("seen");
            if now < end {
                let levels = [
                    kernel_level(&maps1, ALTERNATING_V6),
                    kernel_level(&maps2, ALTERNATING_V6),
                ];
                let own = [
                    own_points(first.1, ALTERNATING_V6),
                    own_points(&fleet.daemon, ALTERNATING_V6),
                ];
                for i in 0..2 {
                    s.level[i] = s.level[i].max(levels[i]);
                    s.own[i] = s.own[i].max(own[i]);
                }
            }
            if down.load(Ordering::Relaxed) {
                let level = kernel_level(&maps1, flood);
                s.flood_level_during_outage =
                    Some(s.flood_level_during_outage.map_or(level, |l| l.min(level)));
            }
        }
        if now >= kill_at && seen.lock().expect("seen").killed_at.is_none() {
            fleet.kill_redis();
            down.store(true, Ordering::Relaxed);
            seen.lock().expect("seen").killed_at = Some((now - start).as_secs_f64());
        }
        if down.load(Ordering::Relaxed) && now >= kill_at + Duration::from_secs(3) {
            down.store(false, Ordering::Relaxed);
            fleet.restart_redis();
            *restarted.lock().expect("restarted") = Some(Instant::now());
            seen.lock().expect("seen").restarted_at = Some((Instant::now() - start).as_secs_f64());
        }
        if let Some(at) = *restarted.lock().expect("restarted") {
            let mut s = seen.lock().expect("seen");
            if s.recovered_after.is_none()
                && fleet_up(first.1)
                && fleet_up(&fleet.daemon)
                && fleet.redis_keys() > 0
            {
                s.recovered_after = Some(at.elapsed().as_secs_f64());
                s.keys_after = fleet.redis_keys();
            }
            if s.recovered_after.is_some() && now >= end {
                return;
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The fleet's two rows.
pub(super) fn rows(seen: &Seen, alternating: &Tally, legit: &Tally) -> Vec<Row> {
    let rows = vec![
        Row {
            check: "a spammer alternating between two MX hosts is limited on both, though neither alone saw enough",
            measured: format!(
                "kernel level {} on mx1 and {} on mx2; its own points on each host at most \
                 {:.1} and {:.1} (level 1 takes {LEVEL_1}); {} attempts, {} rejected",
                seen.level[0],
                seen.level[1],
                seen.own[0],
                seen.own[1],
                alternating.get(|t| &t.attempts),
                alternating.get(|t| &t.rejected),
            ),
            pass: seen.level[0] >= 1
                && seen.level[1] >= 1
                && seen.own[0] < LEVEL_1
                && seen.own[1] < LEVEL_1,
        },
        Row {
            check: "Redis killed mid-run: mail still flows, limits still hold, the fleet recovers when Redis returns",
            measured: format!(
                "killed at {}, restarted empty at {}; the flood's level on mx1 while it was \
                 down: {}; legit: {} refused, {} failed; both hosts back in the fleet {} after \
                 the restart, Redis refilled with {} keys",
                seen.killed_at
                    .map_or("never".into(), |t| format!("{t:.1} s")),
                seen.restarted_at
                    .map_or("never".into(), |t| format!("{t:.1} s")),
                seen.flood_level_during_outage
                    .map_or("not sampled".into(), |l| l.to_string()),
                legit.get(|t| &t.refused),
                legit.get(|t| &t.failed),
                seen.recovered_after
                    .map_or("never".into(), |t| format!("{t:.1} s")),
                seen.keys_after,
            ),
            pass: seen.killed_at.is_some()
                && seen.flood_level_during_outage.is_some_and(|l| l > 0)
                && legit.get(|t| &t.refused) == 0
                && legit.get(|t| &t.failed) == 0
                && seen.recovered_after.is_some_and(|t| t <= 10.0)
                && seen.keys_after > 0,
        },
    ];
    rows
}
