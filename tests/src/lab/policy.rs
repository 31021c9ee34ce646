//! The lab's policy scenario, on servers of its own after the main attack: Postfix asks the
//! policy service on 25 and 587 (SASL through Dovecot), with slowgate's XDP on the server's
//! link as everywhere in the lab.
//!
//! - A stolen password: alice's, used from 30 addresses of 30 networks (2001:db8:100::5 to
//!   2001:db8:11d::5) to send message after message over 587, while bob sends normally and
//!   alice's own client (198.51.100.21) sends now and then, retrying what is deferred the way
//!   an MTA retries.
//! - A limited spammer (203.0.113.77) that keeps one SMTP session open on port 25: it earns its
//!   limit with unknown recipients, then sends message after message in the same session.

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use super::{Row, interrupted, ip};
use crate::{
    mail::{Extra, Servers, Smtp},
    *,
};

const MTA_V4: &str = "198.51.100.1";
const BOB_CLIENT: &str = "198.51.100.20";
const ALICE_CLIENT: &str = "198.51.100.21";
const SPAMMER: &str = "203.0.113.77";
const BOTS: u16 = 30;
/// alice's and bob's buckets: 20 messages, 20 a minute.
const PER_MINUTE: f64 = 20.0;
/// The spammer's level 1: 6 a minute, burst 6 (connections at the NIC, messages here).
const SPAMMER_RATE: f64 = 6.0;

fn bot(i: u16) -> IpAddr {
    format!("2001:db8:{:x}::5", 0x100 + i)
        .parse()
        .expect("an address")
}

struct Scenario {
    mta: Netns,
    clients: Netns,
    servers: Servers,
    _dir: TempDir,
}

impl Scenario {
    fn build() -> anyhow::Result<Scenario> {
        let mta = Netns::new("lpm")?;
        let clients = Netns::new("lpc")?;
        veth(&mta, "lp0", &clients, "lp1")?;
        for a in ["198.51.100.1/24", "203.0.113.1/24"] {
            mta.addr("lp0", a)?;
        }
        for a in [BOB_CLIENT, ALICE_CLIENT, SPAMMER] {
            clients.addr("lp1", &format!("{a}/24"))?;
        }
        for i in 0..BOTS {
            mta.addr("lp0", &format!("2001:db8:{:x}::1/48", 0x100 + i))?;
            clients.addr("lp1", &format!("{}/48", bot(i)))?;
        }
        let dir = TempDir::new("lab-policy");
        let policy =
            "check_policy_service { inet:127.0.0.1:10040, timeout=2s, default_action=DUNNO }";
        let extra = Extra {
            postfix: format!(
                "smtpd_recipient_restrictions = {policy}, permit_sasl_authenticated, \
                 reject_unauth_destination\nsmtpd_data_restrictions = {policy}\n"
            ),
            ..Extra::default()
        };
        let servers = Servers::start(&mta, &dir.path, &extra)?;
        Ok(Scenario {
            mta,
            clients,
            servers,
            _dir: dir,
        })
    }

    fn config(&self, half_life: &str) -> String {
        format!(
            "interfaces = [\"lp0\"]\nattach_mode = \"native\"\n\
             [[sources]]\npath = \"{}\"\nformat = \"postfix\"\n\
             [[sources]]\npath = \"{}\"\nformat = \"dovecot\"\n\
             [points]\nhalf_life = \"{half_life}\"\nmin_hold = \"1s\"\n\
             [points.weights]\npolicy_deferred = 0.1\n\
             [[levels]]\npoints = 10\nrate = \"6/min\"\nburst = 6\n\
             [[levels]]\npoints = 40\nrate = \"2/min\"\nburst = 2\n\
             [[levels]]\npoints = 1000\nblock = true\n\
             [policy]\nlisten = \"127.0.0.1:10040\"\n\
             [users]\nmessages = \"20/min\"\nrecipients = \"1000/min\"\n",
            self.servers.mail_log().display(),
            self.servers.dovecot_log().display(),
        )
    }

    fn at(&self, server: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip(server), port)
    }

    /// One message in a session of its own, as `user`; the reply code (0: no session).
    fn send(&self, src: IpAddr, server: &str, user: &str, pass: &str, to: &str, id: &str) -> u16 {
        let attempt = || -> anyhow::Result<u16> {
            let mut s = Smtp::open(&self.clients, src, self.at(server, 587))?;
            if s.login(user, pass)? != 235 {
                return Ok(535);
            }
            let code = s.send(&[to], id)?.0;
            let _ = s.say("QUIT");
            Ok(code)
        };
        attempt().unwrap_or(0)
    }
}

/// Counts of one sender.
#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    deferred: AtomicU64,
    other: AtomicU64,
}

impl Counts {
    fn add(&self, code: u16) {
        let c = match code {
            250 => &self.accepted,
            450..=459 => &self.deferred,
            _ => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, c: impl Fn(&Counts) -> &AtomicU64) -> u64 {
        c(self).load(Ordering::Relaxed)
    }
}

/// Runs the scenario; its verdict rows.
pub(super) fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let (attack, per_bot, session) = if quick {
        (Duration::from_secs(20), 4, Duration::from_secs(20))
    } else {
        (Duration::from_secs(60), 10, Duration::from_secs(60))
    };
    let scenario = Scenario::build()?;
    let pins = PinDir::new();
    let daemon = Daemon::start(&scenario.mta, &scenario.config("20s"), &pins.path)?;
    let (bots, bob, alice) = (Counts::default(), Counts::default(), Counts::default());
    // alice's own messages: (id, when first sent, when accepted, deferred at least once).
    let alice_messages: std::sync::Mutex<Vec<(String, Option<Duration>, bool)>> =
        Default::default();
    let spammer: std::sync::Mutex<Option<SessionCount>> = Default::default();
    let start = Instant::now();
    let end = start + attack;
    let s = &scenario;
    thread::scope(|scope| {
        // The botnet: every bot sends its messages spread over the attack, in parallel.
        for i in 0..BOTS {
            let bots = &bots;
            scope.spawn(move || {
                let every = attack / per_bot;
                thread::sleep(every * u32::from(i) / u32::from(BOTS));
                for n in 0..per_bot {
                    if interrupted() || Instant::now() >= end {
                        break;
                    }
                    let code = s.send(
                        bot(i),
                        &server_of_bot(i),
                        "alice@example.net",
                        "alicepw",
                        "bob@example.net",
                        &format!("bot-{i}-{n}"),
                    );
                    bots.add(code);
                    thread::sleep(every);
                }
            });
        }
        // bob: one message every 5 s, all along.
        {
            let bob = &bob;
            scope.spawn(move || {
                let mut n = 0;
                while Instant::now() < end && !interrupted() {
                    let code = s.send(
                        ip(BOB_CLIENT),
                        MTA_V4,
                        "bob@example.net",
                        "bobpw",
                        "alice@example.net",
                        &format!("bob-normal-{n}"),
                    );
                    bob.add(code);
                    n += 1;
                    thread::sleep(Duration::from_secs(5));
                }
            });
        }
        // alice: a message every 7 s; each deferred one is retried every 5 s (a new session,
        // as a queue retries) until accepted, for at most two minutes after the attack.
        {
            let (alice, messages) = (&alice, &alice_messages);
            scope.spawn(move || {
                // (id, deferred at least once, next attempt)
                let mut pending: Vec<(String, bool, Instant)> = Vec::new();
                let (mut n, mut next_new) = (0, Instant::now());
                let give_up = end + Duration::from_secs(120);
                while Instant::now() < give_up && !interrupted() {
                    let now = Instant::now();
                    if now < end && now >= next_new {
                        pending.push((format!("alice-own-{n}"), false, now));
                        n += 1;
                        next_new += Duration::from_secs(7);
                    }
                    if now >= end && pending.is_empty() {
                        break;
                    }
                    for p in pending.iter_mut().filter(|p| p.2 <= now) {
                        let code = s.send(
                            ip(ALICE_CLIENT),
                            MTA_V4,
                            "alice@example.net",
                            "alicepw",
                            "alice@example.net",
                            &p.0,
                        );
                        alice.add(code);
                        if code == 250 {
                            let mut m = messages.lock().expect("alice");
                            m.push((p.0.clone(), Some(start.elapsed()), p.1));
                            p.0.clear();
                        } else {
                            p.1 = true;
                            p.2 = Instant::now() + Duration::from_secs(5);
                        }
                    }
                    pending.retain(|p| !p.0.is_empty());
                    thread::sleep(Duration::from_millis(500));
                }
                let mut m = messages.lock().expect("alice");
                for (id, deferred, _) in pending {
                    m.push((id, None, deferred));
                }
            });
        }
        // The spammer's one long session.
        {
            let spammer = &spammer;
            let pins = &pins.path;
            scope.spawn(move || {
                *spammer.lock().expect("spammer") = long_session(s, pins, session).ok();
            });
        }
    });
    let _ = daemon;
    let mut rows = Vec::new();
    let minutes = attack.as_secs_f64() / 60.0;
    let (accepted, deferred) = (bots.get(|c| &c.accepted), bots.get(|c| &c.deferred));
    let alice_accepted_in_attack = alice_messages
        .lock()
        .expect("alice")
        .iter()
        .filter(|(_, at, _)| at.is_some_and(|t| t <= attack))
        .count() as u64;
    let allowed = PER_MINUTE + PER_MINUTE * minutes + 1.0;
    let held = accepted + alice_accepted_in_attack;
    rows.push(Row {
        check: "stolen password: alice held to her bucket",
        measured: format!(
            "{} messages with alice's password from {BOTS} networks: {accepted} accepted, \
             {deferred} deferred (451); alice's messages in the attack {held} of at most {allowed:.0} \
             (20 + 20/min)",
            accepted + deferred + bots.get(|c| &c.other)
        ),
        pass: held as f64 <= allowed && deferred > 0,
    });
    let bob_sent = bob.get(|c| &c.accepted) + bob.get(|c| &c.deferred) + bob.get(|c| &c.other);
    let bob_delivered = delivered_soon(&scenario.servers, "alice", "bob-normal-", bob_sent);
    rows.push(Row {
        check: "stolen password: bob never deferred",
        measured: format!(
            "bob sent {bob_sent}: {} accepted, {} deferred, {bob_delivered} delivered",
            bob.get(|c| &c.accepted),
            bob.get(|c| &c.deferred)
        ),
        pass: bob_sent > 0 && bob.get(|c| &c.deferred) == 0 && bob_delivered == bob_sent,
    });
    let messages = alice_messages.into_inner().expect("alice");
    let was_deferred: Vec<_> = messages.iter().filter(|m| m.2).collect();
    let all = messages.len() as u64;
    let delivered = delivered_soon(&scenario.servers, "alice", "alice-own-", all);
    let last = was_deferred
        .iter()
        .filter_map(|m| m.1)
        .max()
        .unwrap_or_default();
    rows.push(Row {
        check: "stolen password: deferred mail delivered",
        measured: format!(
            "alice's own {all} messages, {} deferred at least once; {delivered} delivered, the \
             last accepted {:.0} s after the start ({:.0} s attack)",
            was_deferred.len(),
            last.as_secs_f64(),
            attack.as_secs_f64()
        ),
        pass: !was_deferred.is_empty()
            && was_deferred.iter().all(|m| m.1.is_some())
            && delivered == all,
    });
    rows.push(match spammer.into_inner().expect("spammer") {
        Some(c) => {
            let allowed = 6.0 + SPAMMER_RATE * c.seconds / 60.0 + 1.0;
            Row {
                check: "limited spammer, one long session",
                measured: format!(
                    "limited after {} unknown recipients; then {} messages in {:.0} s in the \
                     same session: {} accepted (at most {allowed:.0}: burst 6 + 6/min), {} deferred",
                    c.unknown, c.tried, c.seconds, c.accepted, c.deferred
                ),
                pass: c.accepted as f64 <= allowed && c.accepted >= 1 && c.deferred > 0,
            }
        }
        None => Row {
            check: "limited spammer, one long session",
            measured: "the session failed before it was limited".into(),
            pass: false,
        },
    });
    Ok(rows)
}

/// The server's address in bot `i`'s network (the bots connect over IPv6).
fn server_of_bot(i: u16) -> String {
    format!("2001:db8:{:x}::1", 0x100 + i)
}

/// Waits (at most 20 s) until `want` messages tagged `tag` reached `user`; how many did.
fn delivered_soon(servers: &Servers, user: &str, tag: &str, want: u64) -> u64 {
    until(Duration::from_secs(20), || {
        servers.delivered(user, tag) as u64 >= want
    });
    servers.delivered(user, tag) as u64
}

/// What the spammer's session came to.
struct SessionCount {
    unknown: u32,
    tried: u32,
    accepted: u32,
    deferred: u32,
    seconds: f64,
}

/// The spammer: one session; unknown recipients until the kernel limits it, then one message
/// to bob a second for `length`.
fn long_session(
    s: &Scenario,
    pins: &std::path::Path,
    length: Duration,
) -> anyhow::Result<SessionCount> {
    let mut smtp = Smtp::open(&s.clients, ip(SPAMMER), s.at("203.0.113.1", 25))?;
    let maps = slowgate::enforcer::Maps::open_pinned(pins)?;
    let limited = || maps.limit_for_address(ip(SPAMMER)).ok().flatten().is_some();
    let mut unknown = 0;
    while !limited() {
        if unknown >= 20 || interrupted() {
            anyhow::bail!("not limited after 20 unknown recipients");
        }
        smtp.say("MAIL FROM:<spam@example.org>")?;
        smtp.say(&format!("RCPT TO:<nobody{unknown}@example.net>"))?;
        smtp.say("RSET")?;
        unknown += 1;
        thread::sleep(Duration::from_millis(300));
    }
    let began = Instant::now();
    let (mut tried, mut accepted, mut deferred) = (0, 0, 0);
    while began.elapsed() < length && !interrupted() {
        let (code, _) = smtp.send(&["bob@example.net"], &format!("spammer-{tried}"))?;
        tried += 1;
        match code {
            250 => accepted += 1,
            450..=459 => deferred += 1,
            _ => {}
        }
        thread::sleep(Duration::from_secs(1));
    }
    Ok(SessionCount {
        unknown,
        tried,
        accepted,
        deferred,
        seconds: began.elapsed().as_secs_f64(),
    })
}
