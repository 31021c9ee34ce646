//! Fleet mode's test bench: a real `redis-server` in a namespace of its own and hosts, each a
//! namespace with a daemon protecting its own veth, linked to Redis by another veth.
//!
//! ```text
//! client A (198.51.100.10) ── host A (198.51.100.1) ── 203.0.113.49/.50 ─┐
//!                                                                        redis
//! client B (198.51.100.10) ── host B (198.51.100.1) ── 203.0.113.53/.54 ─┘
//! ```
//!
//! The same attacker address reaches both hosts (each pair of namespaces is its own network).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::*;

pub const ATTACKER: &str = "198.51.100.10";
pub const SERVER: &str = "198.51.100.1";
pub const REDIS_FOR_A: &str = "203.0.113.49";
pub const REDIS_FOR_B: &str = "203.0.113.53";

/// A real redis-server in its namespace, without persistence (a restart comes back empty).
pub struct Redis {
    child: Option<Child>,
    ns_path: PathBuf,
}

impl Redis {
    pub fn start(ns: &Netns) -> Redis {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["redis-server", "--bind", REDIS_FOR_A, REDIS_FOR_B])
            .args(["--port", "6379", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt install redis-server)");
        let redis = Redis {
            child: Some(child),
            ns_path: ns.path(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path.display()))
            .args(["redis-cli", "-h", REDIS_FOR_A, "--raw"])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
    }
}

/// One host: its namespace, its client's, its log, pins and daemon config.
pub struct Host {
    pub ns: Netns,
    pub client: Netns,
    pub pins: PinDir,
    pub log: PathBuf,
    pub config: String,
    _listeners: Listeners,
}

impl Host {
    pub fn new(
        name: &str,
        redis_ns: &Netns,
        redis_addr: &str,
        host_addr: &str,
        dir: &Path,
    ) -> Host {
        let ns = Netns::new(&format!("fl{name}")).unwrap();
        let client = Netns::new(&format!("fc{name}")).unwrap();
        veth(&ns, "sg0", &client, "cl0").unwrap();
        ns.addr("sg0", &format!("{SERVER}/24")).unwrap();
        client.addr("cl0", &format!("{ATTACKER}/24")).unwrap();
        veth(&ns, "rd0", redis_ns, &format!("h{name}")).unwrap();
        ns.addr("rd0", &format!("{host_addr}/30")).unwrap();
        redis_ns
            .addr(&format!("h{name}"), &format!("{redis_addr}/30"))
            .unwrap();
        let listeners = Listeners::start(&ns, &[25, 143]).unwrap();
        let log = dir.join(format!("mail-{name}.log"));
        std::fs::write(&log, "").unwrap();
        let config = format!(
            "interfaces = [\"sg0\"]\nattach_mode = \"native\"\n\
             [ceiling.source]\nrate = \"100/s\"\nburst = 200\n\
             [ceiling.prefix]\nrate = \"100/s\"\nburst = 200\n\
             [[sources]]\npath = \"{}\"\nformat = \"postfix\"\n\
             [points]\nhalf_life = \"10m\"\n[[levels]]\npoints = 10\nblock = true\n\
             [metrics]\nlisten = \"127.0.0.1:9465\"\n\
             [fleet]\nurl = \"redis://{redis_addr}:6379/0\"\nname = \"mx-{name}\"\ntimeout = \"50ms\"\n",
            log.display()
        );
        Host {
            ns,
            client,
            pins: PinDir::new(),
            log,
            config,
            _listeners: listeners,
        }
    }

    pub fn start(&self) -> Daemon {
        Daemon::start(&self.ns, &self.config, &self.pins.path).unwrap()
    }

    pub fn cli(&self, args: &[&str]) -> String {
        cli(&self.pins.path, args).1
    }

    pub fn limited(&self, who: &str) -> bool {
        self.cli(&["limit", "list"]).contains(who)
    }

    pub fn denied(&self, who: &str) -> bool {
        self.cli(&["deny", "list"]).contains(who)
    }

    /// Whether `who` is limited within `within`.
    pub fn limited_within(&self, who: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.limited(who) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn connects(&self) -> bool {
        connect(
            &self.client,
            ATTACKER.parse().unwrap(),
            SocketAddr::new(SERVER.parse().unwrap(), 25),
            Duration::from_millis(500),
        )
    }

    pub fn metrics(&self) -> String {
        http_get(&self.ns, "127.0.0.1:9465".parse().unwrap(), "/metrics").unwrap_or_default()
    }
}

/// Postfix's words for a directory-harvest attempt (2 points each by default).
pub fn harvest(client: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "Nov 22 07:53:{:02} mx1 postfix/smtpd[4242]: NOQUEUE: reject: RCPT from \
                 unknown[{client}]: 550 5.1.1 <u{i}@example.net>: Recipient address rejected: \
                 User unknown in virtual mailbox table; from=<x@example.com> \
                 to=<u{i}@example.net> proto=ESMTP helo=<x>\n",
                i % 60
            )
        })
        .collect()
}

pub struct Fleet {
    pub redis_ns: Netns,
    pub a: Host,
    pub b: Host,
    _tmp: TempDir,
}

impl Fleet {
    /// Starts both hosts' daemons and waits until both are in the fleet.
    pub fn joined(&self) -> (Daemon, Daemon) {
        let (da, db) = (self.a.start(), self.b.start());
        for host in [&self.a, &self.b] {
            assert!(
                until(Duration::from_secs(10), || host
                    .metrics()
                    .contains("slowgate_fleet_up 1")),
                "a host did not join the fleet: {}{}",
                da.log_text(),
                db.log_text()
            );
        }
        (da, db)
    }
}

pub fn fleet() -> Fleet {
    require_root();
    let tmp = TempDir::new("fleet");
    let redis_ns = Netns::new("redis").unwrap();
    let a = Host::new("a", &redis_ns, REDIS_FOR_A, "203.0.113.50", &tmp.path);
    let b = Host::new("b", &redis_ns, REDIS_FOR_B, "203.0.113.54", &tmp.path);
    Fleet {
        redis_ns,
        a,
        b,
        _tmp: tmp,
    }
}

/// `cargo xtask bench fleet`: from a log line on host A to the limit in host B's POLICY map,
/// and Redis's memory per tracked sender.
pub fn bench(args: &[String]) -> anyhow::Result<()> {
    require_root();
    let quick = args.iter().any(|a| a == "--quick");
    let (events, runs) = if quick { (50, 1) } else { (1000, 3) };
    let mut latency_runs = Vec::new();
    let mut bytes_per_sender = Vec::new();
    for run in 0..runs {
        let (latencies, per_sender) = bench_run(events, run)?;
        latency_runs.push(crate::bench::quantiles(latencies));
        bytes_per_sender.push(per_sender);
    }
    let column = |i: usize| crate::bench::median(latency_runs.iter().map(|q| q[i]).collect());
    println!(
        "Fleet: from a log line on host A (6 harvest attempts of a new source, 12 points, past level 1 at 10) to the \
         limit in host B's POLICY map (B saw nothing itself), through a local redis-server, over \
         {events} events per run, median of {runs} run(s) of each percentile:"
    );
    println!();
    println!("| p50 | p90 | p99 | max |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
        column(0),
        column(1),
        column(2),
        column(3)
    );
    println!();
    println!(
        "Redis memory per tracked sender (a key per source and per prefix, with one host's \
         contribution each): {:.0} bytes (median of {runs} run(s); INFO used_memory before and \
         after, divided by the keys added)",
        crate::bench::median(bytes_per_sender)
    );
    Ok(())
}

fn used_memory(redis: &Redis) -> f64 {
    redis
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn bench_run(events: usize, run: usize) -> anyhow::Result<(Vec<f64>, f64)> {
    let f = fleet();
    let redis = Redis::start(&f.redis_ns);
    let (_da, db) = f.joined();
    let maps = slowgate::enforcer::Maps::open_pinned(&f.b.pins.path)?;
    let memory_before = used_memory(&redis);
    let keys_before: f64 = redis.cli(&["DBSIZE"]).trim().parse().unwrap_or(0.0);
    let mut latencies = Vec::with_capacity(events);
    for i in 0..events {
        let client = format!("2001:db8:{:x}:{:x}::1", 0x200 + run, i);
        let net: slowgate::domain::Network = client.parse()?;
        let lines = harvest(&client, 6);
        let start = Instant::now();
        append(&f.a.log, &lines);
        while !maps.limit_exists(net)? {
            if start.elapsed() > Duration::from_secs(5) {
                anyhow::bail!("B never limited {client}: {}", db.log_text());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        latencies.push(start.elapsed().as_secs_f64() * 1e3);
    }
    // Let the last publications land before measuring.
    std::thread::sleep(Duration::from_millis(500));
    let keys: f64 = redis.cli(&["DBSIZE"]).trim().parse().unwrap_or(0.0);
    let per_sender = (used_memory(&redis) - memory_before) / (keys - keys_before).max(1.0);
    Ok((latencies, per_sender))
}
