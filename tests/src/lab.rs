//! The lab: real Postfix and Dovecot in a network namespace, attacked from others, slowgate
//! protecting them. `cargo xtask lab` runs it with a live view; `cargo xtask test` runs a
//! shorter form (tests/tests/lab.rs) and fails if a verdict row fails.
//!
//! Namespaces (documentation addresses only) and the mta's interfaces, where XDP sits:
//!
//! | namespace | addresses | mta side |
//! |---|---|---|
//! | legit | 198.51.100.10, 2001:db8:1::10 | `vl` 198.51.100.1, 2001:db8:1::1 |
//! | bulk | 2001:db8:b::25 | `vb` 2001:db8:b::1 |
//! | attacker | 203.0.113.66 (flood), 203.0.113.20 (an honest neighbour of the flood), 203.0.113.130.. (a sender rotating through its prefix), 2001:db8:d::66 (a sender a DNSBL lists), 2001:db8:e::66 (a sender a feed lists), 2001:db8:f::100.. (a /64 of rotating addresses), 2001:db8:6::77 (IMAP guesser), 2001:db8:7::78 (SMTP AUTH guesser) | `va` 203.0.113.1, 2001:db8:d::1, 2001:db8:e::1, 2001:db8:f::1, 2001:db8:6::1, 2001:db8:7::1 |
//!
//! The documentation ranges hold only two IPv4 /24s, so the lab's IPv4 prefixes are /25s:
//! 203.0.113.0/25 holds the flood and its neighbour, 203.0.113.128/25 the rotating sender. The
//! mta namespace also runs rbldnsd (198.51.100.1:5353), the DNSBL the daemon asks, and an HTTP
//! server (198.51.100.1:8081) serving the reputation feed the daemon fetches.
//!
//! Every guard (namespaces, servers, daemon, pins, files) cleans up on drop, also on failure and
//! on Ctrl-C (which ends every loop early).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    mail::{Extra, Servers, base64, chmod, in_ns},
    *,
};

mod fleet;
mod policy;

/// Set by SIGINT/SIGTERM: every loop ends, guards clean up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C stops the lab cleanly instead of killing it mid-way.
pub fn install_interrupt_handler() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The shorter form for the test suite.
    pub quick: bool,
    /// Print the live view every second.
    pub live: bool,
}

/// One row of the verdict table: what was checked, what was measured, and whether it passed.
#[derive(Clone, Debug)]
pub struct Row {
    pub check: &'static str,
    pub measured: String,
    pub pass: bool,
}

const MTA_V4: &str = "198.51.100.1";
const LEGIT_V4: &str = "198.51.100.10";
const BULK_V6: &str = "2001:db8:b::25";
const MTA_BULK_V6: &str = "2001:db8:b::1";
const FLOOD_V4: &str = "203.0.113.66";
const MTA_ATTACK_V4: &str = "203.0.113.1";
const FLOAT_NET: &str = "2001:db8:f::/64";
const MTA_FLOAT_V6: &str = "2001:db8:f::1";
const IMAP_GUESSER: &str = "2001:db8:6::77";
const MTA_IMAP_V6: &str = "2001:db8:6::1";
const SMTP_GUESSER: &str = "2001:db8:7::78";
const MTA_SMTP_V6: &str = "2001:db8:7::1";
/// Addresses the float flood rotates through (2001:db8:f::100 and up).
const FLOAT_ADDRESSES: u16 = 40;
/// Connection attempts of the float probe: more than the mildest level's burst (5).
const PROBES: u32 = 12;
/// Connection attempts of each guesser, per protocol, once it is blocked.
const GUESS_PROBES: u32 = 5;
/// Parallel connections of each password guesser.
const GUESSERS: usize = 10;
/// The lab's block level (see `lab_config`).
const BLOCK_LEVEL: usize = 3;
/// An address of the float /64 that never sends anything before the check.
const FLOAT_FRESH: &str = "2001:db8:f::999";
/// An honest sender in the flood's prefix.
const NEIGHBOUR_V4: &str = "203.0.113.20";
const FLOOD_PREFIX: &str = "203.0.113.0/25";
/// A sender rotating through the addresses of another IPv4 prefix, one harvest attempt each.
const ROTATOR_PREFIX: &str = "203.0.113.128/25";
const ROTATOR_ADDRESSES: u8 = 6;
/// A sender a DNSBL lists (rbldnsd in the mta namespace serves the zone).
const LISTED_V6: &str = "2001:db8:d::66";
const MTA_LISTED_V6: &str = "2001:db8:d::1";
const LISTED_PREFIX: &str = "2001:db8:d::/64";
const DNSBL_ZONE: &str = "bl.example.test";
/// A sender inside a network a reputation feed lists (served over HTTP in the mta namespace).
const FEED_LISTED_V6: &str = "2001:db8:e::66";
const MTA_FEED_V6: &str = "2001:db8:e::1";
const FEED_NETWORK: &str = "2001:db8:e::/48";
const FEED_PORT: u16 = 8081;

fn rotator_address(i: u8) -> IpAddr {
    IpAddr::from([203, 0, 113, 130 + i % ROTATOR_ADDRESSES])
}

/// A connection attempt that gets no answer within this is counted as refused (a dropped SYN
/// is retransmitted after 1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A probe's connection attempts wait less: on a veth an answer takes well under a millisecond.
const PROBE_TIMEOUT: Duration = Duration::from_millis(150);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a literal address")
}

fn at(server: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(server), port)
}

/// The three client namespaces and the server's, joined by one veth pair each.
struct Topology {
    mta: Netns,
    legit: Netns,
    bulk: Netns,
    attacker: Netns,
}

impl Topology {
    fn build() -> anyhow::Result<Topology> {
        let t = Topology {
            mta: Netns::new("mta")?,
            legit: Netns::new("legit")?,
            bulk: Netns::new("bulk")?,
            attacker: Netns::new("attk")?,
        };
        veth(&t.mta, "vl", &t.legit, "el")?;
        veth(&t.mta, "vb", &t.bulk, "eb")?;
        veth(&t.mta, "va", &t.attacker, "ea")?;
        for a in ["198.51.100.1/24", "2001:db8:1::1/64"] {
            t.mta.addr("vl", a)?;
        }
        t.mta.addr("vb", "2001:db8:b::1/64")?;
        for a in [
            "203.0.113.1/24",
            "2001:db8:f::1/64",
            "2001:db8:6::1/64",
            "2001:db8:7::1/64",
            "2001:db8:d::1/64",
            "2001:db8:e::1/64",
        ] {
            t.mta.addr("va", a)?;
        }
        for a in ["198.51.100.10/24", "2001:db8:1::10/64"] {
            t.legit.addr("el", a)?;
        }
        t.bulk.addr("eb", "2001:db8:b::25/64")?;
        for a in [
            "203.0.113.66/24",
            "203.0.113.20/24",
            "2001:db8:d::66/64",
            "2001:db8:e::66/64",
            "2001:db8:6::77/64",
            "2001:db8:7::78/64",
        ] {
            t.attacker.addr("ea", a)?;
        }
        for i in 0..ROTATOR_ADDRESSES {
            t.attacker
                .addr("ea", &format!("{}/24", rotator_address(i)))?;
        }
        for i in 0..FLOAT_ADDRESSES {
            t.attacker
                .addr("ea", &format!("2001:db8:f::{:x}/64", 0x100 + i))?;
        }
        t.attacker.addr("ea", &format!("{FLOAT_FRESH}/64"))?;
        Ok(t)
    }
}

/// The DNSBL: rbldnsd (it drops to nobody, and backgrounds itself) on the mta's address;
/// `Servers`' drop stops it with the rest of what runs from `dir`.
fn start_rbldnsd(ns: &Netns, dir: &Path) -> anyhow::Result<()> {
    let d = dir.display();

    std::fs::create_dir_all(dir.join("rbl"))?;
    std::fs::write(
        dir.join("rbl/zone.txt"),
        format!("{LISTED_V6}/128 :127.0.0.2:listed\n"),
    )?;
    chmod(&dir.join("rbl"), 0o755)?;
    chmod(&dir.join("rbl/zone.txt"), 0o644)?;
    in_ns(
        ns,
        &[
            "rbldnsd",
            "-u",
            "nobody",
            "-t",
            "300",
            "-w",
            &format!("{d}/rbl"),
            "-b",
            &format!("{MTA_V4}/5353"),
            &format!("{DNSBL_ZONE}:ip6trie:zone.txt"),
        ],
    )
    .context("start rbldnsd (apt install rbldnsd)")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// What one client session came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// No connection: no answer to the SYN before the timeout, as when it is dropped.
    Refused,
    /// No connection for another reason (a reset, a local error): never counted as a drop.
    ConnectFailed,
    /// The message was queued.
    Accepted,
    /// Every recipient was rejected, or the server said no otherwise.
    Rejected,
    /// The password was wrong (or the login otherwise failed).
    AuthFailed,
    /// The login worked.
    LoggedIn,
    /// The connection broke mid-session.
    Broken,
}

struct Session {
    reader: BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

impl Session {
    /// A session, or the outcome of a connection that never opened.
    fn open(ns: &Netns, src: IpAddr, dst: SocketAddr) -> Result<Session, Outcome> {
        let stream = tcp_connect(ns, src, dst, CONNECT_TIMEOUT).map_err(|e| no_connection(&e))?;
        let session = || -> Option<Session> {
            stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
            stream.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
            let writer = stream.try_clone().ok()?;
            Some(Session {
                reader: BufReader::new(stream),
                writer,
            })
        };
        session().ok_or(Outcome::Broken)
    }

    /// An SMTP reply: the code of its last line.
    fn reply(&mut self) -> Option<u16> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.len() >= 4 && line.as_bytes()[3] != b'-' {
                return line[..3].parse().ok();
            }
        }
    }

    fn command(&mut self, text: &str) -> Option<u16> {
        self.writer.write_all(text.as_bytes()).ok()?;
        self.writer.write_all(b"\r\n").ok()?;
        self.reply()
    }

    /// The tagged IMAP response line to `tag`.
    fn imap(&mut self, tag: &str, text: &str) -> Option<String> {
        write!(self.writer, "{tag} {text}\r\n").ok()?;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.starts_with(&format!("{tag} ")) {
                return Some(line);
            }
        }
    }
}

/// A connect error as an outcome: only no answer at all (a timeout) looks like a dropped SYN.
fn no_connection(e: &std::io::Error) -> Outcome {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Outcome::Refused,
        _ => Outcome::ConnectFailed,
    }
}

/// The level the kernel holds for `who` right now (read from POLICY, not the sampled view).
fn kernel_level(maps: &slowgate::enforcer::Maps, who: &str) -> usize {
    maps.limit_entries().map_or(0, |entries| {
        entries
            .iter()
            .filter(|e| sender_name(e.network) == who)
            .map(|e| level_of_limit(e.value))
            .max()
            .unwrap_or(0)
    })
}

/// The same, opening the pinned maps.
fn level_of_now(pins: &Path, who: &str) -> usize {
    slowgate::enforcer::Maps::open_pinned(pins).map_or(0, |m| kernel_level(&m, who))
}

/// Waits until the kernel blocks `who`, then probes it on IMAP and SMTP in turn, GUESS_PROBES
/// times each, counting a probe only when the kernel held the block both before and after it
/// (the block steps down after its hold, and a probe then says nothing about the block):
/// (dropped, counted) per protocol, IMAP first.
fn probe_when_blocked(
    ns: &Netns,
    pins: &Path,
    who: &str,
    server: &str,
    until: Instant,
) -> [(u32, u32); 2] {
    let Ok(maps) = slowgate::enforcer::Maps::open_pinned(pins) else {
        return [(0, 0); 2];
    };
    let blocked = || kernel_level(&maps, who) == BLOCK_LEVEL;
    // Bounded wait: until the attack ends.
    while !blocked() {
        if Instant::now() >= until || interrupted() {
            return [(0, 0); 2];
        }
        thread::sleep(Duration::from_millis(20));
    }
    let mut counted = [(0, 0); 2];
    for _ in 0..GUESS_PROBES {
        for (i, port) in [143, 25].into_iter().enumerate() {
            if !blocked() {
                return counted;
            }
            let dropped = probe_dropped(ns, ip(who), at(server, port));
            if blocked() {
                counted[i].0 += u32::from(dropped);
                counted[i].1 += 1;
            }
        }
    }
    counted
}

/// One probe: true when the SYN got no answer (dropped), false when it was answered (or failed
/// otherwise, which is not a drop either).
fn probe_dropped(ns: &Netns, src: IpAddr, dst: SocketAddr) -> bool {
    match tcp_connect(ns, src, dst, PROBE_TIMEOUT) {
        Ok(_) => false,
        Err(e) => no_connection(&e) == Outcome::Refused,
    }
}

struct Mail<'a> {
    port: u16,
    rcpts: &'a [String],
    auth: Option<(&'a str, &'a str)>,
    id: String,
}

fn smtp(ns: &Netns, src: IpAddr, server: &str, mail: &Mail) -> Outcome {
    let mut s = match Session::open(ns, src, at(server, mail.port)) {
        Ok(s) => s,
        Err(outcome) => return outcome,
    };
    let mut run = || -> Option<Outcome> {
        if s.reply()? != 220 || s.command("EHLO client.example.org")? != 250 {
            return Some(Outcome::Rejected);
        }
        if let Some((user, pass)) = mail.auth {
            let token = base64(format!("\0{user}\0{pass}").as_bytes());
            if s.command(&format!("AUTH PLAIN {token}"))? != 235 {
                let _ = s.command("QUIT");
                return Some(Outcome::AuthFailed);
            }
        }
        if s.command("MAIL FROM:<sender@example.org>")? != 250 {
            return Some(Outcome::Rejected);
        }
        let mut accepted = 0;
        for rcpt in mail.rcpts {
            if s.command(&format!("RCPT TO:<{rcpt}>"))? == 250 {
                accepted += 1;
            }
        }
        if accepted == 0 {
            let _ = s.command("QUIT");
            return Some(Outcome::Rejected);
        }
        if s.command("DATA")? != 354 {
            return Some(Outcome::Rejected);
        }
        let body = format!(
            "Subject: lab\r\nX-Lab-Id: {}\r\n\r\nslowgate lab message\r\n.",
            mail.id
        );
        let queued = s.command(&body)? == 250;
        let _ = s.command("QUIT");
        Some(if queued {
            Outcome::Accepted
        } else {
            Outcome::Rejected
        })
    };
    run().unwrap_or(Outcome::Broken)
}

fn imap_login(ns: &Netns, src: IpAddr, server: &str, user: &str, pass: &str) -> Outcome {
    let mut s = match Session::open(ns, src, at(server, 143)) {
        Ok(s) => s,
        Err(outcome) => return outcome,
    };
    let mut greeting = String::new();
    if s.reader.read_line(&mut greeting).unwrap_or(0) == 0 {
        return Outcome::Broken;
    }
    let outcome = match s.imap("a1", &format!("LOGIN {user} {pass}")) {
        Some(l) if l.starts_with("a1 OK") => Outcome::LoggedIn,
        Some(_) => Outcome::AuthFailed,
        None => return Outcome::Broken,
    };
    let _ = s.imap("a2", "LOGOUT");
    outcome
}

// ---------------------------------------------------------------------------------------------
// The scenario.

/// Counts of one role, updated by its threads, read by the live view and the verdicts.
#[derive(Default)]
struct Tally {
    attempts: AtomicU64,
    /// Connections whose SYN got no answer (what a drop looks like from the client).
    refused: AtomicU64,
    /// Connections that failed otherwise (reset, local error), and sessions that broke.
    failed: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    auth_failed: AtomicU64,
    /// When the first connection was refused (ms since the role started), 0 = never.
    first_refused_ms: AtomicU64,
    /// Accepted after the first refusal.
    accepted_after: AtomicU64,
}

impl Tally {
    fn add(&self, outcome: Outcome, started: Instant) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let refused_before = self.first_refused_ms.load(Ordering::Relaxed) != 0;
        match outcome {
            Outcome::Refused => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let ms = started.elapsed().as_millis().max(1) as u64;
                let _ = self.first_refused_ms.compare_exchange(
                    0,
                    ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Outcome::Accepted | Outcome::LoggedIn => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                if refused_before {
                    self.accepted_after.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::AuthFailed => {
                self.auth_failed.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Rejected => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Broken | Outcome::ConnectFailed => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn get(&self, f: impl Fn(&Tally) -> &AtomicU64) -> u64 {
        f(self).load(Ordering::Relaxed)
    }
}

/// One client address sending mail, one session at a time.
struct Sender<'a> {
    ns: &'a Netns,
    src: IpAddr,
    server: &'a str,
    tally: &'a Tally,
    start: Instant,
}

impl Sender<'_> {
    /// Sends to `rcpts` until `end` (or Ctrl-C), `pause` between sessions; each message is
    /// tagged `TAG-N` so the mailbox can be checked.
    fn until(&self, end: Instant, rcpts: &[String], tag: &str, pause: Duration) {
        let mut n = 0;
        while Instant::now() < end && !interrupted() {
            let mail = Mail {
                port: 25,
                rcpts,
                auth: None,
                id: format!("{tag}-{n}"),
            };
            self.tally
                .add(smtp(self.ns, self.src, self.server, &mail), self.start);
            n += 1;
            thread::sleep(pause);
        }
    }
}

/// How long each phase lasts.
struct Timing {
    attack: Duration,
    legit_every: Duration,
    bulk_at: Duration,
    bulk_messages: usize,
    recovery: Duration,
    half_life: &'static str,
}

impl Timing {
    fn of(quick: bool) -> Timing {
        if quick {
            Timing {
                attack: Duration::from_secs(15),
                legit_every: Duration::from_millis(1500),
                bulk_at: Duration::from_secs(2),
                bulk_messages: 30,
                recovery: Duration::from_secs(60),
                half_life: "4s",
            }
        } else {
            Timing {
                attack: Duration::from_secs(40),
                legit_every: Duration::from_secs(2),
                bulk_at: Duration::from_secs(10),
                bulk_messages: 60,
                recovery: Duration::from_secs(120),
                half_life: "10s",
            }
        }
    }
}

/// The kernel's view of each sender, sampled from POLICY by the live loop: its level over time,
/// read from the limit the daemon wrote there (the lab's levels: bursts 5 and 2, then a block),
/// so a level counts only once it is in the kernel, not when the daemon logs it.
#[derive(Default)]
struct KernelView {
    /// sender -> (ms since the start, level) at each change, starting at level 0.
    paths: BTreeMap<String, Vec<(u64, usize)>>,
}

impl KernelView {
    fn sample(&mut self, maps: &slowgate::enforcer::Maps, start: Instant) {
        let Ok(entries) = maps.limit_entries() else {
            return;
        };
        let ms = start.elapsed().as_millis() as u64;
        let now: BTreeMap<String, usize> = entries
            .iter()
            .map(|e| (sender_name(e.network), level_of_limit(e.value)))
            .collect();
        for (who, path) in self.paths.iter_mut() {
            if !now.contains_key(who) && path.last().is_some_and(|p| p.1 > 0) {
                path.push((ms, 0));
            }
        }
        for (who, level) in now {
            let path = self.paths.entry(who).or_insert_with(|| vec![(0, 0)]);
            if path.last().is_some_and(|p| p.1 != level) {
                path.push((ms, level));
            }
        }
    }

    fn level(&self, who: &str) -> usize {
        self.paths
            .get(who)
            .and_then(|p| p.last())
            .map_or(0, |p| p.1)
    }

    fn max_level(&self, who: &str) -> usize {
        self.paths
            .get(who)
            .and_then(|p| p.iter().map(|p| p.1).max())
            .unwrap_or(0)
    }

    /// When the kernel first held a limit for `who` (ms since the start).
    fn first_limited_ms(&self, who: &str) -> Option<u64> {
        self.paths.get(who)?.iter().find(|p| p.1 > 0).map(|p| p.0)
    }

    /// Whether `who`, once at its top level, stayed there until the attack ended (a second of
    /// slack at the end: the last SYNs and the step-down tick may cross).
    fn held_at_top(&self, who: &str, attack_ms: u64) -> bool {
        let path = self.paths.get(who).cloned().unwrap_or_default();
        let top = self.max_level(who);
        let reached = path.iter().find(|p| p.1 == top).map(|p| p.0);
        reached.is_some_and(|at| {
            path.iter()
                .filter(|p| p.0 > at && p.0 + 1000 < attack_ms)
                .all(|p| p.1 == top)
        })
    }

    fn path(&self, who: &str) -> String {
        self.paths.get(who).map_or("0".into(), |p| {
            p.iter()
                .map(|(_, l)| l.to_string())
                .collect::<Vec<_>>()
                .join("->")
        })
    }
}

/// A POLICY key as the lab names senders: an address alone, a network with its length.
fn sender_name(net: slowgate::domain::Network) -> String {
    let n = net.to_ipnet();
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

/// The lab's level of a limit (see `lab_config`).
fn level_of_limit(limit: slowgate::domain::Limit) -> usize {
    match limit {
        slowgate::domain::Limit::Block => BLOCK_LEVEL,
        slowgate::domain::Limit::Rate { burst: 5, .. } => 1,
        slowgate::domain::Limit::Rate { burst: 2, .. } => 2,
        slowgate::domain::Limit::Rate { .. } => 0,
    }
}

/// What the kernel counted of `who`'s connections in its slot: (dropped by a rule, i.e. a
/// list or a learned limit; dropped by a default ceiling).
fn kernel_drops(maps: &slowgate::enforcer::Maps, who: &str) -> (u64, u64) {
    who.parse::<slowgate::domain::Network>()
        .ok()
        .and_then(|net| maps.source_drops(net).ok().flatten())
        .map_or((0, 0), |(r, c)| (u64::from(r), u64::from(c)))
}

/// Whether `network` is on the kernel's deny list.
fn feed_denies(maps: &slowgate::enforcer::Maps, network: &str) -> bool {
    let Ok(net) = network.parse::<slowgate::domain::Network>() else {
        return false;
    };
    maps.list_entries(slowgate::enforcer::ListKind::Deny)
        .is_ok_and(|entries| entries.iter().any(|e| e.network == net))
}

fn lab_config(servers: &Servers, timing: &Timing) -> String {
    format!(
        "interfaces = [\"vl\", \"vb\", \"va\"]\nattach_mode = \"native\"\n\
         [[sources]]\npath = \"{}\"\nformat = \"postfix\"\n\
         [[sources]]\npath = \"{}\"\nformat = \"dovecot\"\n\
         [prefix]\nipv4 = 25\nipv6 = 64\n\
         [points]\nhalf_life = \"{}\"\nmin_hold = \"2s\"\nlimit_ttl = \"10m\"\n\
         [points.weights]\nauth_failure = 6.0\n\
         [[levels]]\npoints = 6\nrate = \"30/min\"\nburst = 5\n\
         [[levels]]\npoints = 15\nrate = \"6/min\"\nburst = 2\n\
         [[levels]]\npoints = 30\nblock = true\n\
         [[dnsbl]]\nzone = \"{DNSBL_ZONE}\"\nweights = {{ \"127.0.0.2\" = 30 }}\n\
         [dns]\nresolver = \"{MTA_V4}:5353\"\ntimeout = \"1s\"\n\
         [[feeds]]\nname = \"lab-drop\"\nurl = \"http://{MTA_V4}:{FEED_PORT}/drop.txt\"\n\
         format = \"plain\"\naction = \"deny\"\nrefresh = \"1m\"\ntimeout = \"5s\"\n{}",
        servers.mail_log().display(),
        servers.dovecot_log().display(),
        timing.half_life,
        fleet::config("mx1"),
    )
}

/// Level changes from the daemon's log: (seconds since start, sender, from, to, points).
fn changes(log: &str) -> Vec<(String, usize, usize, f64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("slowgate: ")?;
            let (who, rest) = rest.split_once(" level ")?;
            let (from, rest) = rest.split_once(" -> ")?;
            let (to, rest) = rest.split_once(" (")?;
            let points = rest.split(' ').next()?.parse().ok()?;
            Some((
                who.to_string(),
                from.parse().ok()?,
                to.parse().ok()?,
                points,
            ))
        })
        .collect()
}

/// Runs the whole lab; returns the verdict rows. Requires root.
pub fn run(options: Options) -> anyhow::Result<Vec<Row>> {
    require_root();
    let timing = Timing::of(options.quick);
    let dir = std::env::temp_dir().join(unique("lab"));
    std::fs::create_dir_all(&dir)?;
    let _files = RemoveOnDrop(dir.clone());
    let topology = Topology::build()?;
    let servers = Servers::start(&topology.mta, &dir, &Extra::default())?;
    start_rbldnsd(&topology.mta, &dir)?;
    // The second MX host and the Redis both share, before the first host's daemon starts.
    let fleet = fleet::Fleet::build(&topology, &dir, &timing)?;
    // The reputation feed: a plain list naming the feed sender's network, among others.
    let _feed = crate::feed_server::FeedServer::start(
        &topology.mta,
        SocketAddr::new(ip(MTA_V4), FEED_PORT),
        crate::feed_server::Serve::Body {
            body: format!("# lab feed\n{FEED_NETWORK}\n2001:db8:ee::/48\n203.0.113.250/32\n"),
            etag: "\"lab-1\"".into(),
        },
    )?;
    let pins = PinDir::new();
    let daemon = Daemon::start(&topology.mta, &lab_config(&servers, &timing), &pins.path)?;
    let say = |text: &str| {
        if options.live {
            println!("{text}");
        }
    };
    say(
        "lab: Postfix (25, 587) and Dovecot (110, 143) in namespace mta; slowgate protecting vl, vb, va",
    );

    let roles: BTreeMap<&str, Arc<Tally>> = [
        "flood",
        "float",
        "imap-guess",
        "smtp-guess",
        "legit",
        "bulk",
        "neighbour",
        "rotator",
        "listed",
        "feed-listed",
        "alternating",
    ]
    .into_iter()
    .map(|r| (r, Arc::new(Tally::default())))
    .collect();
    let start = Instant::now();
    let attack_end = start + timing.attack;
    // The kernel's view (sender -> level over time), sampled by the live loop from POLICY.
    let kernel: Arc<Mutex<KernelView>> = Arc::default();
    let maps = slowgate::enforcer::Maps::open_pinned(&pins.path)?;
    // The daemon fetches the feed as it starts; the senders begin once it is enforced (or
    // after 10 s, and the row says so).
    let fetched_by = Instant::now() + Duration::from_secs(10);
    while !feed_denies(&maps, FEED_NETWORK) && Instant::now() < fetched_by {
        thread::sleep(Duration::from_millis(50));
    }
    let level_of = {
        let kernel = kernel.clone();
        move |who: &str| kernel.lock().expect("kernel view").level(who)
    };
    // Probes made while a sender is limited: (what, dropped, attempts).
    let probes: Arc<Mutex<Vec<(String, u32, u32)>>> = Arc::default();
    let bulk_delivered = Arc::new(AtomicU64::new(0));
    let bulk_refusals = Arc::new(AtomicU64::new(0));
    let fleet_seen: Mutex<fleet::Seen> = Mutex::default();

    thread::scope(|s| -> anyhow::Result<()> {
        // 1. A spam flood from one address: 4 sessions at a time, 5 recipients each, 4 unknown.
        for worker in 0..4 {
            let (tally, ns) = (roles["flood"].clone(), &topology.attacker);
            s.spawn(move || {
                let rcpts: Vec<String> = (0..4)
                    .map(|i| format!("nobody{worker}{i}@example.net"))
                    .chain(["bob@example.net".to_string()])
                    .collect();
                let sender = Sender {
                    ns,
                    src: ip(FLOOD_V4),
                    server: MTA_ATTACK_V4,
                    tally: &tally,
                    start,
                };
                sender.until(
                    attack_end,
                    &rcpts,
                    &format!("flood-{worker}"),
                    Duration::ZERO,
                );
            });
        }
        // 2. A "float" flood rotating through addresses of one /64, one unknown recipient each.
        // Once the /64 is limited, a never-used address of it tries too.
        {
            let (tally, ns) = (roles["float"].clone(), &topology.attacker);
            let (level_of, probes) = (level_of.clone(), probes.clone());
            let pins = pins.path.as_path();
            s.spawn(move || {
                let mut n: u16 = 0;
                let mut probed = false;
                while Instant::now() < attack_end && !interrupted() {
                    if !probed && level_of(FLOAT_NET) > 0 {
                        probed = true;
                        // Counted only while the kernel held the /64's limit around the probe.
                        let limited = || level_of_now(pins, FLOAT_NET) > 0;
                        let (mut dropped, mut made) = (0, 0);
                        for _ in 0..PROBES {
                            if !limited() {
                                break;
                            }
                            let d = probe_dropped(ns, ip(FLOAT_FRESH), at(MTA_FLOAT_V6, 25));
                            if limited() {
                                dropped += u32::from(d);
                                made += 1;
                            }
                        }
                        probes
                            .lock()
                            .expect("probes")
                            .push(("float-fresh".into(), dropped, made));
                    }
                    let src: IpAddr = format!("2001:db8:f::{:x}", 0x100 + n % FLOAT_ADDRESSES)
                        .parse()
                        .expect("address");
                    let rcpts = [format!("guess{n}@example.net")];
                    let mail = Mail {
                        port: 25,
                        rcpts: &rcpts,
                        auth: None,
                        id: format!("float-{n}"),
                    };
                    tally.add(smtp(ns, src, MTA_FLOAT_V6, &mail), start);
                    n = n.wrapping_add(1);
                    thread::sleep(Duration::from_millis(100));
                }
            });
        }
        // 3. Password guessing, GUESSERS connections at a time (Dovecot delays each failure
        // from an address more than the last, so attackers go parallel): one address on IMAP,
        // another on SMTP AUTH (submission). Once blocked, each tries both protocols.
        for (role, who, server) in [
            ("imap-guess", IMAP_GUESSER, MTA_IMAP_V6),
            ("smtp-guess", SMTP_GUESSER, MTA_SMTP_V6),
        ] {
            // A prober of its own, so the probes start as soon as the kernel holds the block
            // (a guesser thread may sit in a login Dovecot delays for seconds).
            {
                let (ns, probes) = (&topology.attacker, probes.clone());
                let pins = pins.path.as_path();
                s.spawn(move || {
                    let counted = probe_when_blocked(ns, pins, who, server, attack_end);
                    let mut probes = probes.lock().expect("probes");
                    for (name, (dropped, made)) in ["imap", "smtp"].iter().zip(counted) {
                        probes.push((format!("{role}-{name}"), dropped, made));
                    }
                });
            }
            for worker in 0..GUESSERS {
                let (tally, ns) = (roles[role].clone(), &topology.attacker);
                let level_of = level_of.clone();
                s.spawn(move || {
                    let rcpts = ["alice@example.net".to_string()];
                    let mut n = 0;
                    while Instant::now() < attack_end && !interrupted() {
                        if level_of(who) >= BLOCK_LEVEL {
                            return;
                        }
                        let pass = format!("guess{worker}-{n}");
                        let outcome = if role == "imap-guess" {
                            imap_login(ns, ip(who), server, "alice@example.net", &pass)
                        } else {
                            let mail = Mail {
                                port: 587,
                                rcpts: &rcpts,
                                auth: Some(("bob@example.net", &pass)),
                                id: format!("guess-{n}"),
                            };
                            smtp(ns, ip(who), server, &mail)
                        };
                        tally.add(outcome, start);
                        n += 1;
                    }
                });
            }
        }
        // 2b. The flood's honest neighbour sends normal mail all along; a sender rotating
        // through another prefix tries one unknown recipient per address and moves on.
        {
            let (tally, ns) = (roles["neighbour"].clone(), &topology.attacker);
            let every = timing.legit_every;
            s.spawn(move || {
                let sender = Sender {
                    ns,
                    src: ip(NEIGHBOUR_V4),
                    server: MTA_ATTACK_V4,
                    tally: &tally,
                    start,
                };
                sender.until(
                    attack_end,
                    &["alice@example.net".into()],
                    "neighbour",
                    every,
                );
            });
        }
        {
            let (tally, ns) = (roles["rotator"].clone(), &topology.attacker);
            s.spawn(move || {
                let mut n: u8 = 0;
                while Instant::now() < attack_end && !interrupted() {
                    let rcpts = [format!("rotate{n}@example.net")];
                    let mail = Mail {
                        port: 25,
                        rcpts: &rcpts,
                        auth: None,
                        id: format!("rotator-{n}"),
                    };
                    tally.add(smtp(ns, rotator_address(n), MTA_ATTACK_V4, &mail), start);
                    n = n.wrapping_add(1);
                    thread::sleep(Duration::from_millis(300));
                }
            });
        }
        // 2c. A sender a DNSBL lists, and 2d. a sender in a network a reputation feed lists,
        // send ordinary mail, one message a second.
        for (role, src, server, tag) in [
            ("listed", LISTED_V6, MTA_LISTED_V6, "listed"),
            ("feed-listed", FEED_LISTED_V6, MTA_FEED_V6, "feed"),
        ] {
            let (tally, ns) = (roles[role].clone(), &topology.attacker);
            s.spawn(move || {
                let sender = Sender {
                    ns,
                    src: ip(src),
                    server,
                    tally: &tally,
                    start,
                };
                let every = Duration::from_secs(1);
                sender.until(attack_end, &["alice@example.net".into()], tag, every);
            });
        }
        // 2e. A spammer alternating between the two MX hosts; and the fleet's sampler, which
        // also kills Redis at the attack's midpoint and restarts it empty.
        {
            let (tally, ns) = (roles["alternating"].clone(), &topology.attacker);
            let half_life = slowgate::domain::parse_duration(timing.half_life)?;
            s.spawn(move || fleet::alternate(ns, &tally, start, attack_end, half_life));
            let (fleet, seen, daemon, pins) = (&fleet, &fleet_seen, &daemon, &pins);
            s.spawn(move || {
                fleet::sample(
                    fleet,
                    (&pins.path, daemon),
                    FLOOD_V4,
                    start,
                    attack_end,
                    seen,
                )
            });
        }
        // 4. Normal mail from legit, all along the attack.
        {
            let (tally, ns) = (roles["legit"].clone(), &topology.legit);
            let every = timing.legit_every;
            s.spawn(move || {
                let sender = Sender {
                    ns,
                    src: ip(LEGIT_V4),
                    server: MTA_V4,
                    tally: &tally,
                    start,
                };
                sender.until(attack_end, &["alice@example.net".into()], "legit", every);
            });
        }
        // 5. The bulk sender: a burst, then retries of what was refused, with backoff, as an
        // MTA retries deferred mail.
        {
            let (tally, ns) = (roles["bulk"].clone(), &topology.bulk);
            let (delivered, refusals) = (bulk_delivered.clone(), bulk_refusals.clone());
            let (at_time, count, deadline) = (
                timing.bulk_at,
                timing.bulk_messages,
                start + timing.attack + timing.recovery,
            );
            s.spawn(move || {
                thread::sleep(at_time);
                let queue: Mutex<Vec<(usize, Instant, u32)>> =
                    Mutex::new((0..count).map(|i| (i, Instant::now(), 0)).collect());
                thread::scope(|inner| {
                    for _ in 0..8 {
                        inner.spawn(|| {
                            let rcpts = ["bob@example.net".to_string()];
                            while Instant::now() < deadline && !interrupted() {
                                let job = {
                                    let mut q = queue.lock().expect("queue");
                                    if q.is_empty() {
                                        return;
                                    }
                                    let now = Instant::now();
                                    q.iter()
                                        .position(|(_, due, _)| *due <= now)
                                        .map(|i| q.swap_remove(i))
                                };
                                let Some((id, _, tries)) = job else {
                                    thread::sleep(Duration::from_millis(100));
                                    continue;
                                };
                                let mail = Mail {
                                    port: 25,
                                    rcpts: &rcpts,
                                    auth: None,
                                    id: format!("bulk-{id}"),
                                };
                                let outcome = smtp(ns, ip(BULK_V6), MTA_BULK_V6, &mail);
                                tally.add(outcome, start);
                                if outcome == Outcome::Accepted {
                                    delivered.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    refusals.fetch_add(1, Ordering::Relaxed);
                                    let backoff = Duration::from_secs(2u64 << tries.min(3));
                                    queue.lock().expect("queue").push((
                                        id,
                                        Instant::now() + backoff,
                                        tries + 1,
                                    ));
                                }
                            }
                        });
                    }
                });
            });
        }
        // The live view, until the attack and the recovery are over.
        let recovery_end = attack_end + timing.recovery;
        let mut last_print = Instant::now();
        let mut previous: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        while Instant::now() < recovery_end && !interrupted() {
            thread::sleep(Duration::from_millis(200));
            let log = daemon.log_text();
            kernel.lock().expect("kernel view").sample(&maps, start);
            let after_attack = Instant::now() > attack_end;
            let everyone_back = after_attack
                && bulk_delivered.load(Ordering::Relaxed) as usize == timing.bulk_messages
                && kernel
                    .lock()
                    .expect("kernel view")
                    .paths
                    .values()
                    .all(|p| p.last().is_some_and(|p| p.1 == 0));
            if options.live && last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                let mut line = format!("[{:>3}s]", start.elapsed().as_secs());
                // Points as the daemon logs them; levels as the kernel holds them.
                let levels = latest_levels(&log);
                let kernel = kernel.lock().expect("kernel view");
                for (role, who) in [
                    ("flood", FLOOD_V4),
                    ("float", FLOAT_NET),
                    ("imap-guess", IMAP_GUESSER),
                    ("smtp-guess", SMTP_GUESSER),
                    ("legit", LEGIT_V4),
                    ("bulk", BULK_V6),
                ] {
                    let t = &roles[role];
                    let now = (t.get(|t| &t.accepted), t.get(|t| &t.refused));
                    let before = previous.insert(role, now).unwrap_or((0, 0));
                    let points = levels.get(who).map_or(0.0, |l| l.1);
                    let level = kernel.level(who);
                    let _ = write!(
                        line,
                        " | {role} L{level} {points:.0}p {}ok/{}drop",
                        now.0 - before.0,
                        now.1 - before.1
                    );
                }
                say(&line);
            }
            if everyone_back {
                break;
            }
        }
        Ok(())
    })?;
    if interrupted() {
        bail!("interrupted: cleaned up");
    }
    // Let the queue deliver what it accepted.
    let expected_legit = roles["legit"].get(|t| &t.accepted) as usize;
    let expected_neighbour = roles["neighbour"].get(|t| &t.accepted) as usize;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && (servers.delivered("alice", "legit-") < expected_legit
            || servers.delivered("alice", "neighbour-") < expected_neighbour
            || servers.delivered("bob", "bulk-") < timing.bulk_messages)
    {
        thread::sleep(Duration::from_millis(200));
    }
    let probes = probes.lock().expect("probes").clone();
    let kernel = std::mem::take(&mut *kernel.lock().expect("kernel view"));
    let mut rows = verdicts(&roles, &servers, &kernel, &maps, &timing, &pins, &probes);
    let seen = fleet_seen.into_inner().expect("fleet view");
    rows.extend(fleet::rows(&seen, &roles["alternating"], &roles["legit"]));
    drop(daemon);
    drop(fleet);
    drop(servers);
    rows.extend(policy::run(options.quick)?);
    Ok(rows)
}

/// The latest level and points of each sender, from the daemon's log.
fn latest_levels(log: &str) -> BTreeMap<String, (usize, f64)> {
    changes(log)
        .into_iter()
        .map(|(who, _, to, points)| (who, (to, points)))
        .collect()
}

fn verdicts(
    roles: &BTreeMap<&str, Arc<Tally>>,
    servers: &Servers,
    kernel: &KernelView,
    maps: &slowgate::enforcer::Maps,
    timing: &Timing,
    pins: &PinDir,
    probes: &[(String, u32, u32)],
) -> Vec<Row> {
    let probe = |name: &str| {
        probes
            .iter()
            .find(|(n, ..)| n == name)
            .map(|(_, dropped, of)| (*dropped, *of))
    };
    let drops = |who: &str| kernel_drops(maps, who);
    let mut rows = Vec::new();

    // 1. The flood sender: a learned limit in the kernel within seconds, the kernel dropping
    // its connections by that limit, then almost nothing accepted.
    let flood = &roles["flood"];
    let limited_ms = kernel.first_limited_ms(FLOOD_V4);
    let (by_rule, by_ceiling) = drops(FLOOD_V4);
    let after = flood.get(|t| &t.accepted_after);
    let attack_min = timing.attack.as_secs_f64() / 60.0;
    rows.push(Row {
        check: "flood sender limited within 5 s by what it did; afterwards at most 30 messages/min",
        measured: format!(
            "learned limit in the kernel after {}; kernel dropped {by_rule} of its SYNs by that \
             limit ({by_ceiling} by the default ceiling); {} messages accepted before the first \
             drop, {} after ({:.1}/min); level {}",
            limited_ms.map_or("never".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
            flood.get(|t| &t.accepted) - after,
            after,
            after as f64 / attack_min,
            kernel.max_level(FLOOD_V4)
        ),
        // After, at most the mildest level's rate (30/min).
        pass: limited_ms.is_some_and(|ms| ms <= 5000)
            && by_rule > 0
            && (after as f64) / attack_min <= 30.0,
    });

    // 1b. While it keeps knocking, the kernel's refusals hold it at its top level; once it
    // stops, it comes down one level at a time.
    let path = kernel.paths.get(FLOOD_V4).cloned().unwrap_or_default();
    let top = kernel.max_level(FLOOD_V4);
    let attack_ms = timing.attack.as_millis() as u64;
    let held = kernel.held_at_top(FLOOD_V4, attack_ms);
    let after: Vec<usize> = path
        .iter()
        .filter(|p| p.0 >= attack_ms)
        .map(|p| p.1)
        .collect();
    let one_by_one = after.windows(2).all(|w| w[1] + 1 == w[0]) && after.last() == Some(&0);
    rows.push(Row {
        check: "flood held at its top level while it kept trying, then down one level at a time",
        measured: format!(
            "kernel levels (s, level): {}",
            path.iter()
                .map(|p| format!("{:.0}:{}", p.0 as f64 / 1000.0, p.1))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        pass: top > 1 && held && one_by_one,
    });

    // 2. The float flood: the /64 is limited as one sender, a fresh address of it too.
    let single = (0..FLOAT_ADDRESSES)
        .filter(|i| kernel.max_level(&format!("2001:db8:f::{:x}", 0x100 + i)) > 0)
        .count();
    let fresh = probe("float-fresh");
    let (fresh_rule, _) = drops(FLOAT_FRESH);
    rows.push(Row {
        check: "the whole /64 limited as one sender",
        measured: format!(
            "{FLOAT_NET} reached level {} in the kernel; {single} of its {FLOAT_ADDRESSES} \
             addresses limited on their own; a never-used address of it, while the /64 was \
             limited: {} (kernel: {fresh_rule} by the /64's limit)",
            kernel.max_level(FLOAT_NET),
            fresh.map_or("not probed".into(), |(d, of)| format!(
                "{d} of {of} attempts dropped"
            ))
        ),
        // More attempts than the mildest level's burst (5) while the limit held, at least half
        // of them dropped.
        pass: kernel.max_level(FLOAT_NET) > 0
            && single == 0
            && fresh.is_some_and(|(d, of)| of > 5 && 2 * d >= of)
            && fresh_rule > 0,
    });

    // 3. The guessers: blocked on their protocol and, because of it, on the other.
    for (role, who, check) in [
        (
            "imap-guess",
            IMAP_GUESSER,
            "IMAP password guesser blocked on IMAP and on SMTP",
        ),
        (
            "smtp-guess",
            SMTP_GUESSER,
            "SMTP AUTH guesser blocked on SMTP and on IMAP",
        ),
    ] {
        let t = &roles[role];
        let imap = probe(&format!("{role}-imap"));
        let smtp = probe(&format!("{role}-smtp"));
        let (by_rule, _) = drops(who);
        let shown = |p: Option<(u32, u32)>| {
            p.map_or("not probed".into(), |(d, of)| {
                format!("{d} of {of} dropped")
            })
        };
        // At least 3 probes per protocol while the block held, every one dropped.
        let all = |p: Option<(u32, u32)>| p.is_some_and(|(d, of)| d == of && of >= 3);
        rows.push(Row {
            check,
            measured: format!(
                "{} failed logins from {GUESSERS} connections at a time; level {} in the kernel; \
                 then IMAP {}, SMTP {}; kernel: {by_rule} dropped by the block",
                t.get(|t| &t.auth_failed),
                kernel.max_level(who),
                shown(imap),
                shown(smtp),
            ),
            pass: kernel.max_level(who) >= BLOCK_LEVEL && all(imap) && all(smtp) && by_rule > 0,
        });
    }

    // 4. legit: every message delivered, no connection refused, nothing dropped by the kernel.
    let legit = &roles["legit"];
    let sent = legit.get(|t| &t.attempts);
    let delivered = servers.delivered("alice", "legit-");
    let (rule, ceiling) = drops(LEGIT_V4);
    rows.push(Row {
        check: "legit: every message delivered, no connection refused",
        measured: format!(
            "{sent} sent, {} accepted, {delivered} in the mailbox, {} unanswered, {} failed \
             otherwise; kernel drops {}",
            legit.get(|t| &t.accepted),
            legit.get(|t| &t.refused),
            legit.get(|t| &t.failed),
            rule + ceiling
        ),
        pass: sent > 0
            && delivered as u64 == sent
            && legit.get(|t| &t.refused) == 0
            && legit.get(|t| &t.failed) == 0
            && rule + ceiling == 0,
    });

    // 4b. One spamming address never limits its prefix's honest neighbour; a sender rotating
    // through a prefix is limited as one.
    let neighbour = &roles["neighbour"];
    let sent = neighbour.get(|t| &t.attempts);
    let delivered = servers.delivered("alice", "neighbour-");
    let (rule, ceiling) = drops(NEIGHBOUR_V4);
    let rotated = (0..ROTATOR_ADDRESSES)
        .map(|i| kernel.max_level(&rotator_address(i).to_string()))
        .max()
        .unwrap_or(0);
    rows.push(Row {
        check: "the flood's neighbour loses nothing; a sender rotating through a prefix is limited as one",
        measured: format!(
            "flood's prefix {FLOOD_PREFIX} level {} while the flood reached {}; neighbour: {sent} \
             sent, {delivered} in the mailbox, {} unanswered, {} failed, kernel drops {}; \
             rotator's prefix {ROTATOR_PREFIX} level {} ({} harvest attempts over \
             {ROTATOR_ADDRESSES} addresses, each address at most level {rotated} on its own)",
            kernel.max_level(FLOOD_PREFIX),
            kernel.max_level(FLOOD_V4),
            neighbour.get(|t| &t.refused),
            neighbour.get(|t| &t.failed),
            rule + ceiling,
            kernel.max_level(ROTATOR_PREFIX),
            roles["rotator"].get(|t| &t.attempts),
        ),
        pass: kernel.max_level(FLOOD_PREFIX) == 0
            && kernel.max_level(FLOOD_V4) > 0
            && sent > 0
            && delivered as u64 == sent
            && neighbour.get(|t| &t.refused) == 0
            && neighbour.get(|t| &t.failed) == 0
            && rule + ceiling == 0
            && kernel.max_level(ROTATOR_PREFIX) > 0,
    });

    // 4c. Listed senders: the DNSBL-listed one blocked after its first logged connection, the
    // feed-listed one dropped from its very first SYN (its network is a deny entry).
    let listed = &roles["listed"];
    let listed_ms = kernel.first_limited_ms(LISTED_V6);
    let (by_rule, _) = drops(LISTED_V6);
    let attack_ms = timing.attack.as_millis() as u64;
    let held =
        kernel.held_at_top(LISTED_V6, attack_ms) && kernel.held_at_top(LISTED_PREFIX, attack_ms);
    let fed = &roles["feed-listed"];
    let feed_entry = feed_denies(maps, FEED_NETWORK);
    rows.push(Row {
        check: "listed senders limited from their first connection: a DNSBL-listed one blocked after its first, a feed-listed one dropped from its first",
        measured: format!(
            "DNSBL: level {} in the kernel {} after the start (levels {}, its /64 {}); {} of its \
             {} messages accepted, {} attempts unanswered; kernel dropped {by_rule} by its block. \
             Feed: {FEED_NETWORK} {} the deny list; {} of its {} messages accepted, {} attempts \
             unanswered",
            kernel.max_level(LISTED_V6),
            listed_ms.map_or("never".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
            kernel.path(LISTED_V6),
            kernel.path(LISTED_PREFIX),
            listed.get(|t| &t.accepted),
            listed.get(|t| &t.attempts),
            listed.get(|t| &t.refused),
            if feed_entry { "on" } else { "NOT on" },
            fed.get(|t| &t.accepted),
            fed.get(|t| &t.attempts),
            fed.get(|t| &t.refused),
        ),
        pass: kernel.max_level(LISTED_V6) >= BLOCK_LEVEL
            && held
            && listed_ms.is_some_and(|ms| ms <= 5000)
            && listed.get(|t| &t.accepted) <= 2
            && by_rule > 0
            && feed_entry
            && fed.get(|t| &t.attempts) > 0
            && fed.get(|t| &t.accepted) == 0
            && fed.get(|t| &t.refused) == fed.get(|t| &t.attempts),
    });

    // 5. The bulk sender: slowed by what it did (a learned limit), not lost.
    let bulk = &roles["bulk"];
    let bulk_delivered = servers.delivered("bob", "bulk-");
    let (by_rule, by_ceiling) = drops(BULK_V6);
    rows.push(Row {
        check: "bulk sender slowed by its learned limit, not lost: every message delivered after retries",
        measured: format!(
            "{} messages; {} attempts unanswered, {} rejected or failed, all retried; \
             {bulk_delivered} in the mailbox; level {} in the kernel; kernel dropped {by_rule} by \
             the learned limit, {by_ceiling} by the default ceiling",
            timing.bulk_messages,
            bulk.get(|t| &t.refused),
            bulk.get(|t| &t.rejected) + bulk.get(|t| &t.failed),
            kernel.max_level(BULK_V6)
        ),
        pass: bulk_delivered == timing.bulk_messages && by_rule > 0,
    });

    // 6. After the attack, every limited sender comes back one level at a time, to 0, as the
    // kernel held it.
    let mut stepwise = 0;
    let mut back = 0;
    for path in kernel.paths.values() {
        let downs_by_one = path
            .windows(2)
            .filter(|w| w[1].1 < w[0].1)
            .all(|w| w[0].1 - w[1].1 == 1);
        if downs_by_one {
            stepwise += 1;
        }
        if path.last().is_some_and(|p| p.1 == 0) {
            back += 1;
        }
    }
    let paths: Vec<String> = [FLOOD_V4, FLOAT_NET]
        .iter()
        .map(|who| format!("{who} {}", kernel.path(who)))
        .collect();
    let still = slowgate_limits(pins);
    let senders = kernel.paths.len();
    rows.push(Row {
        check: "after the attack, each limited sender returns to normal level by level",
        measured: format!(
            "{back} of {senders} senders back to level 0 in the kernel, {stepwise} of them one \
             level at a time ({}); limits left in the kernel: {still}",
            paths.join(", ")
        ),
        pass: senders > 0 && back == senders && stepwise == senders && still == 0,
    });
    rows
}

/// Limits left in the kernel (the engine removes each when its sender is back to level 0).
fn slowgate_limits(pins: &PinDir) -> usize {
    slowgate::enforcer::Maps::open_pinned(&pins.path)
        .and_then(|m| m.limit_entries())
        .map_or(usize::MAX, |e| e.len())
}

/// Prints the verdict table.
pub fn print(rows: &[Row]) {
    println!();
    println!("| verdict | check | measured |");
    println!("|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} |",
            if r.pass { "PASS" } else { "FAIL" },
            r.check,
            r.measured
        );
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_sasl_plain() {
        assert_eq!(base64(b"\0bob\0pw"), "AGJvYgBwdw==");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"ab"), "YWI=");
    }

    #[test]
    fn level_changes_are_read_from_the_daemon_log() {
        let log = "slowgate: 203.0.113.66 level 0 -> 3 (34.2 points; unknown_recipient x16): blocked\n\
                   slowgate: ready\nslowgate: 2001:db8:f::/64 level 2 -> 1 (9.0 points): limited to 30/min burst 5\n";
        assert_eq!(
            changes(log),
            [
                ("203.0.113.66".to_string(), 0, 3, 34.2),
                ("2001:db8:f::/64".to_string(), 2, 1, 9.0)
            ]
        );
    }
}
