//! The daemon and the CLI against real TCP between network namespaces joined by veth, with the
//! XDP program attached on the server side. Root only. Documentation addresses only.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use sg_tests::*;

const SERVER_V4: &str = "198.51.100.1";
const CLIENT1_V4: &str = "198.51.100.10";
const SERVER2_V4: &str = "203.0.113.1";
const CLIENT2_V4: &str = "203.0.113.10";
const SERVER_A6: &str = "2001:db8:a::1";
const CLIENT_A6: &str = "2001:db8:a::10";
const CLIENT_A6_OTHER: &str = "2001:db8:a::11";
const SERVER_B6: &str = "2001:db8:b::1";
const CLIENT_B6: &str = "2001:db8:b::10";

const ATTEMPTS: u32 = 20;
const OVER: Duration = Duration::from_secs(2);

/// Server and client namespaces, the server's veth protected by slowgate.
struct Lab {
    server: Netns,
    client: Netns,
    pins: PinDir,
    _listeners: Listeners,
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn to(server: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(server), port)
}

/// Ceilings well above anything these tests send, so only the CLI's entries decide.
fn daemon_config() -> String {
    // The fixtures' lines carry fixed dates: catch up on all of them after a restart.
    "interfaces = [\"sg0\"]\nattach_mode = \"native\"\nmax_catch_up = \"30d\"\n\
     [ceiling.source]\nrate = \"100/s\"\nburst = 200\n\
     [ceiling.prefix]\nrate = \"100/s\"\nburst = 200\n\
     [capacity]\nlists = 1024\npolicies = 1024\nsources = 4096\nprefixes = 1024\n"
        .to_string()
}

impl Lab {
    fn new() -> Lab {
        require_root();
        let server = Netns::new("srv").unwrap();
        let client = Netns::new("cli").unwrap();
        veth(&server, "sg0", &client, "cl0").unwrap();
        for a in [
            "198.51.100.1/24",
            "203.0.113.1/24",
            "2001:db8:a::1/64",
            "2001:db8:b::1/64",
        ] {
            server.addr("sg0", a).unwrap();
        }
        for a in [
            "198.51.100.10/24",
            "203.0.113.10/24",
            "2001:db8:a::10/64",
            "2001:db8:a::11/64",
            "2001:db8:b::10/64",
        ] {
            client.addr("cl0", a).unwrap();
        }
        let listeners = Listeners::start(&server, &[25, 143, 8080]).unwrap();
        Lab {
            server,
            client,
            pins: PinDir::new(),
            _listeners: listeners,
        }
    }

    fn start(&self) -> Daemon {
        Daemon::start(&self.server, &daemon_config(), &self.pins.path).unwrap()
    }

    fn cli(&self, args: &[&str]) -> String {
        let (ok, out) = cli(&self.pins.path, args);
        assert!(ok, "slowgate {}: {out}", args.join(" "));
        out
    }

    fn attempts(&self, from: &str, server: &str, port: u16) -> u32 {
        attempts(&self.client, ip(from), to(server, port), ATTEMPTS, OVER)
    }

    fn connects(&self, from: &str, server: &str, port: u16) -> bool {
        connect(
            &self.client,
            ip(from),
            to(server, port),
            Duration::from_millis(500),
        )
    }
}

#[test]
fn limits_and_denies_hold_across_namespaces_a_crash_and_a_restart() {
    let lab = Lab::new();
    let mut daemon = lab.start();

    // No limit yet: the client connects to every port.
    for port in [25, 143, 8080] {
        assert!(
            lab.connects(CLIENT1_V4, SERVER_V4, port),
            "port {port} before any limit"
        );
    }
    assert_eq!(
        lab.attempts(CLIENT1_V4, SERVER_V4, 25),
        ATTEMPTS,
        "unlimited client"
    );

    // 1/s burst 1: at most 3 of 20 attempts in 2 s; another client is unaffected.
    lab.cli(&[
        "limit",
        "set",
        "198.51.100.10/32",
        "--rate",
        "1/s",
        "--burst",
        "1",
    ]);
    let limited = lab.attempts(CLIENT1_V4, SERVER_V4, 25);
    assert!(
        (1..=3).contains(&limited),
        "limited client got {limited} of {ATTEMPTS}"
    );
    assert_eq!(
        lab.attempts(CLIENT2_V4, SERVER2_V4, 25),
        ATTEMPTS,
        "second client"
    );
    assert_eq!(
        lab.attempts(CLIENT1_V4, SERVER_V4, 8080),
        ATTEMPTS,
        "port 8080 is not slowed"
    );

    // Deny a /64: another address of it is stopped, a different /64 is not, 8080 still open.
    lab.cli(&["deny", "add", "2001:db8:a::/64"]);
    assert!(!lab.connects(CLIENT_A6_OTHER, SERVER_A6, 25));
    assert!(!lab.connects(CLIENT_A6, SERVER_A6, 143));
    assert!(lab.connects(CLIENT_B6, SERVER_B6, 25));
    assert!(lab.connects(CLIENT_A6_OTHER, SERVER_A6, 8080));

    // kill -9: the pinned program keeps enforcing.
    daemon.kill9();
    let after_crash = lab.attempts(CLIENT1_V4, SERVER_V4, 25);
    assert!(
        after_crash <= 3,
        "limit after kill -9: {after_crash} of {ATTEMPTS}"
    );
    assert!(
        !lab.connects(CLIENT_A6_OTHER, SERVER_A6, 25),
        "deny after kill -9"
    );
    assert_eq!(lab.attempts(CLIENT2_V4, SERVER2_V4, 25), ATTEMPTS);

    // Restart: the same maps are re-used, the entries are still there and still enforced.
    let daemon = lab.start();
    assert!(
        daemon
            .log_text()
            .contains("re-using the program already attached")
    );
    let limits = lab.cli(&["limit", "list"]);
    assert!(limits.contains("198.51.100.10/32"), "{limits}");
    assert!(limits.contains("1/s burst 1"), "{limits}");
    assert!(lab.cli(&["deny", "list"]).contains("2001:db8:a::/64"));
    let after_restart = lab.attempts(CLIENT1_V4, SERVER_V4, 25);
    assert!(
        after_restart <= 3,
        "limit after restart: {after_restart} of {ATTEMPTS}"
    );
    assert!(!lab.connects(CLIENT_A6_OTHER, SERVER_A6, 25));

    let status = lab.cli(&["status"]);
    assert!(status.contains("sg0 (native)"), "{status}");
    assert!(status.contains("25/smtp"), "{status}");

    // Removing the entries lets everyone back in.
    lab.cli(&["limit", "del", "198.51.100.10"]);
    lab.cli(&["deny", "del", "2001:db8:a::/64"]);
    assert_eq!(lab.attempts(CLIENT1_V4, SERVER_V4, 25), ATTEMPTS);
    assert!(lab.connects(CLIENT_A6_OTHER, SERVER_A6, 25));
}

#[test]
fn ttl_entries_expire_on_their_own_even_without_a_daemon() {
    let lab = Lab::new();
    let mut daemon = lab.start();
    lab.cli(&["deny", "add", "198.51.100.10", "--ttl", "2s"]);
    assert!(!lab.connects(CLIENT1_V4, SERVER_V4, 25));
    daemon.kill9();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        lab.connects(CLIENT1_V4, SERVER_V4, 25),
        "an expired deny blocks nobody"
    );
}

#[test]
fn detach_removes_program_and_pins() {
    let lab = Lab::new();
    let _daemon = lab.start();
    lab.cli(&["deny", "add", "198.51.100.0/24"]);
    assert!(!lab.connects(CLIENT1_V4, SERVER_V4, 25));
    let out = lab.cli(&["detach"]);
    assert!(out.contains("detached"), "{out}");
    assert!(!lab.pins.path.exists());
    assert!(
        lab.connects(CLIENT1_V4, SERVER_V4, 25),
        "no program after detach"
    );
}

#[test]
fn cli_without_a_daemon_or_pins_says_so() {
    require_root();
    let pins = PinDir::new();
    let (ok, out) = cli(&pins.path, &["deny", "list"]);
    assert!(!ok);
    assert!(out.contains("not running"), "{out}");
}

#[test]
fn cli_refuses_bad_arguments_with_a_clear_error() {
    let lab = Lab::new();
    let _daemon = lab.start();
    let cases: [(&[&str], &str); 6] = [
        (&["deny", "add", "300.1.2.3"], "not an address or network"),
        (
            &["allow", "add", "198.51.100.0/24", "--ttl", "soon"],
            "not a duration",
        ),
        (
            &[
                "limit",
                "set",
                "198.51.100.9",
                "--rate",
                "fast",
                "--burst",
                "1",
            ],
            "not a rate",
        ),
        (
            &[
                "limit",
                "set",
                "198.51.100.9",
                "--rate",
                "1/s",
                "--burst",
                "0",
            ],
            "burst",
        ),
        (
            &["limit", "set", "198.0.0.0/8", "--block"],
            "/24 prefix or a /16 network",
        ),
        (&["deny", "del", "198.51.100.99"], "not on the deny list"),
    ];
    for (args, expected) in cases {
        let (ok, out) = cli(&lab.pins.path, args);
        assert!(!ok, "{args:?} should fail");
        assert!(out.contains(expected), "{args:?}: {out}");
    }
}

/// The daemon config plus a log source, one-level lab levels (10 points: blocked) and an
/// allow-listed client.
fn learning_config(sources: &str) -> String {
    format!(
        "{}\n[lists]\nallow = [\"{CLIENT2_V4}\"]\n{sources}\n\
         [points]\nhalf_life = \"10m\"\n\
         [[levels]]\npoints = 10\nblock = true\n",
        daemon_config()
    )
}

/// An empty Postfix log in `dir`, and the learning config that follows it.
fn postfix_log_in(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let log = dir.join("mail.log");
    std::fs::write(&log, "").unwrap();
    let config = learning_config(&format!(
        "[[sources]]\npath = \"{}\"\nformat = \"postfix\"\n",
        log.display()
    ));
    (log, config)
}

/// Polls `slowgate limit list` until it names `who` (at most 5 s).
fn wait_for_limit(lab: &Lab, who: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if lab.cli(&["limit", "list"]).contains(who) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Postfix's words for a directory-harvest attempt by `client`.
fn harvest_line(client: &str, n: usize) -> String {
    format!(
        "Nov 22 07:53:{:02} mx1 postfix/smtpd[4242]: NOQUEUE: reject: RCPT from unknown[{client}]: \
         550 5.1.1 <u{n}@example.net>: Recipient address rejected: User unknown in virtual mailbox \
         table; from=<x@example.com> to=<u{n}@example.net> proto=ESMTP helo=<x>\n",
        n % 60
    )
}

#[test]
fn log_lines_about_a_sender_make_the_xdp_program_drop_its_new_connections() {
    let lab = Lab::new();
    let tmp = TempDir::new("maillog");
    let dir = tmp.path.clone();
    let (log, config) = postfix_log_in(&dir);
    let daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    assert_eq!(lab.attempts(CLIENT1_V4, SERVER_V4, 25), ATTEMPTS);

    // Five harvest rejects (2 points each) from CLIENT1, and as many from the allowed CLIENT2.
    let mut text = String::new();
    for n in 0..5 {
        text += &harvest_line(CLIENT1_V4, n);
        text += &harvest_line(CLIENT2_V4, n);
    }
    append(&log, &text);

    assert!(
        wait_for_limit(&lab, CLIENT1_V4),
        "no limit written: {}",
        daemon.log_text()
    );
    assert_eq!(
        lab.attempts(CLIENT1_V4, SERVER_V4, 25),
        0,
        "blocked on SMTP"
    );
    assert_eq!(
        lab.attempts(CLIENT1_V4, SERVER_V4, 143),
        0,
        "and on IMAP too"
    );
    assert_eq!(
        lab.attempts(CLIENT2_V4, SERVER2_V4, 25),
        ATTEMPTS,
        "the allow-listed sender"
    );
    assert!(!lab.cli(&["limit", "list"]).contains(CLIENT2_V4));
    let log_text = daemon.log_text();
    assert!(
        log_text.contains("198.51.100.10 level 0 -> 1 (10.0 points; unknown_recipient x5)"),
        "{log_text}"
    );

    // The metrics endpoint tells the same story (its figures are refreshed every second, so
    // ask until they are there, for 10 s at most).
    let expected = [
        "slowgate_lines_total{format=\"postfix\"} 10",
        "slowgate_events_total{kind=\"unknown_recipient\"} 10",
        "slowgate_events_by_format_total{format=\"postfix\"} 10",
        "slowgate_lines_not_understood_total 0",
        // The address alone: one address never limits its /24.
        "slowgate_level_changes_total 1",
        "slowgate_senders{level=\"1\"} 1",
        "slowgate_drops_total{reason=\"policy_block\"} 40",
        "slowgate_service_drops_total{service=\"imap\"} 20",
        "slowgate_limited_points_count 1",
        "slowgate_limit_write_errors_total 0",
        "slowgate_store_saves_total{result=\"error\"} 0",
        "slowgate_source_errors_total 0",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let got = http_get(&lab.server, "127.0.0.1:9465".parse().unwrap(), "/metrics");
        let complete = got
            .as_deref()
            .is_some_and(|m| expected.iter().all(|line| m.contains(line)));
        if complete || std::time::Instant::now() > deadline {
            break got
                .unwrap_or_else(|| panic!("GET /metrics failed; daemon: {}", daemon.log_text()));
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    for line in expected {
        assert!(metrics.contains(line), "no `{line}` in:\n{metrics}");
    }
    assert!(http_get(&lab.server, "127.0.0.1:9465".parse().unwrap(), "/other").is_none());
    drop(daemon);
}

#[test]
fn a_panic_in_the_learning_loop_ends_the_daemon_and_the_program_keeps_enforcing() {
    let lab = Lab::new();
    let tmp = TempDir::new("panic");
    let (log, config) = postfix_log_in(&tmp.path);
    let trigger = "slowgate-test-panic-now";
    let mut daemon = Daemon::start_with_env(
        &lab.server,
        &config,
        &lab.pins.path,
        &[("SLOWGATE_TEST_PANIC_ON", trigger)],
    )
    .unwrap();
    lab.cli(&["deny", "add", CLIENT_A6]);
    assert!(!lab.connects(CLIENT_A6, SERVER_A6, 25));
    append(
        &log,
        &format!("Nov 22 07:53:40 mx1 postfix/smtpd[1]: {trigger}\n"),
    );
    // Within a second of the line that makes the learning loop panic.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon lives on without its learning loop: {}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "exit status {status}");
    assert!(daemon.log_text().contains("a worker panicked"));
    // The pinned program still enforces with no daemon.
    assert!(!lab.connects(CLIENT_A6, SERVER_A6, 25), "deny still holds");
    assert!(lab.connects(CLIENT_B6, SERVER_B6, 25), "others pass");
}

#[test]
fn a_second_daemon_stops_before_touching_what_the_first_one_uses() {
    let lab = Lab::new();
    let daemon = lab.start();
    let second = Daemon::start(&lab.server, &daemon_config(), &lab.pins.path);
    let err = second
        .err()
        .expect("a second daemon on the same pins is refused");
    assert!(
        format!("{err:#}").contains("another slowgate run"),
        "{err:#}"
    );
    // The first one still answers on its control socket, and still protects.
    let (ok, out) = control(&daemon, &["top"], false);
    assert!(ok, "the first daemon's control socket: {out}");
    lab.cli(&["deny", "add", CLIENT_A6]);
    assert!(!lab.connects(CLIENT_A6, SERVER_A6, 25));
    assert!(daemon.log_text().contains("slowgate: ready"));
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn idle_metrics_connections_cannot_exhaust_the_daemon() {
    let lab = Lab::new();
    let daemon = lab.start();
    let pid = daemon.child.id();
    let fds_before = open_fds(pid);
    let addr: SocketAddr = "127.0.0.1:9465".parse().unwrap();
    // 300 connections that never send a request (bounded; closed at the end of the test).
    let idle: Vec<_> = (0..300)
        .filter_map(|_| {
            tcp_connect(&lab.server, ip("127.0.0.1"), addr, Duration::from_secs(1)).ok()
        })
        .collect();
    assert!(idle.len() > 200, "only {} connections opened", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    let fds_during = open_fds(pid);
    assert!(
        fds_during < fds_before + 32,
        "the daemon holds {fds_during} descriptors (had {fds_before}) for idle clients"
    );
    // Scrapes work again once the idle clients time out, and the daemon did not spin.
    let cpu_before = cpu_time(pid).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let body = http_get(&lab.server, addr, "/metrics").expect("a scrape after the idle clients");
    assert!(body.contains("slowgate_packets_total"));
    let cpu = cpu_time(pid).unwrap() - cpu_before;
    assert!(
        cpu < Duration::from_secs(1),
        "the daemon used {cpu:?} of CPU in 3 s"
    );
    drop(idle);
}

/// Deletes the veth pair and makes it again, addresses and all (a VPN or container restart).
fn recreate_link(lab: &Lab) {
    lab.server.ip(&["link", "del", "sg0"]).unwrap();
    veth(&lab.server, "sg0", &lab.client, "cl0").unwrap();
    for a in ["198.51.100.1/24", "2001:db8:a::1/64", "2001:db8:b::1/64"] {
        lab.server.addr("sg0", a).unwrap();
    }
    for a in ["198.51.100.10/24", "2001:db8:a::10/64", "2001:db8:b::10/64"] {
        lab.client.addr("cl0", a).unwrap();
    }
}

#[test]
fn a_recreated_interface_is_protected_again_at_start_and_while_running() {
    let lab = Lab::new();
    let mut daemon = lab.start();
    lab.cli(&["deny", "add", CLIENT_A6]);
    assert!(!lab.connects(CLIENT_A6, SERVER_A6, 25));
    // Down, interface made again, up: the old pinned link protects nothing any more.
    daemon.kill9();
    recreate_link(&lab);
    let daemon = lab.start();
    assert!(
        daemon.log_text().contains("attaching again"),
        "{}",
        daemon.log_text()
    );
    assert!(
        !lab.connects(CLIENT_A6, SERVER_A6, 25),
        "deny after restart"
    );
    assert!(lab.connects(CLIENT_B6, SERVER_B6, 25));
    // Made again while the daemon runs: it notices within a few seconds.
    recreate_link(&lab);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !daemon.log_text().contains("protecting again") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        daemon.log_text().contains("protecting again"),
        "{}",
        daemon.log_text()
    );
    assert!(
        !lab.connects(CLIENT_A6, SERVER_A6, 25),
        "deny while running"
    );
    assert!(lab.connects(CLIENT_B6, SERVER_B6, 25));
}

#[test]
fn spoofed_syns_cannot_lock_out_a_sender_that_completes_handshakes() {
    use sg_tests::shapes::{Path, RawLink, mac_text, syn_frame};
    let lab = Lab::new();
    let server_mac = [0x02, 0x5e, 0, 0, 2, 1];
    let client_mac = [0x02, 0x5e, 0, 0, 2, 2];
    lab.server
        .ip(&["link", "set", "sg0", "address", &mac_text(&server_mac)])
        .unwrap();
    lab.client
        .ip(&["link", "set", "cl0", "address", &mac_text(&client_mac)])
        .unwrap();
    // Tight default ceilings: 2 SYN/s per source (burst 4), 5/s per /24 (burst 10).
    let config = "interfaces = [\"sg0\"]\nattach_mode = \"native\"\n\
                  [ceiling.source]\nrate = \"2/s\"\nburst = 4\n\
                  [ceiling.prefix]\nrate = \"5/s\"\nburst = 10\n\
                  [capacity]\nlists = 1024\npolicies = 1024\nsources = 4096\nprefixes = 1024\n";
    let _daemon = Daemon::start(&lab.server, config, &lab.pins.path).unwrap();
    // The real sender connects a few times (a handshake, then its ACKs on the connection).
    for _ in 0..3 {
        assert!(lab.connects(CLIENT1_V4, SERVER_V4, 25));
        std::thread::sleep(Duration::from_millis(600));
    }
    // Then a spoofer sends 60 SYN/s with the sender's address and 30/s from others of its /24,
    // for 6 s (bounded: 540 frames), while the sender makes 20 connections over 5 s.
    let path = Path {
        src_mac: client_mac,
        dst_mac: server_mac,
        dst_v4: [198, 51, 100, 1],
        dst_v6: [0; 16],
        dport: 25,
    };
    let link = RawLink::open(&lab.client, "cl0").unwrap();
    let spoofer = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        for i in 0..540u32 {
            let due = start + Duration::from_secs_f64(f64::from(i) / 90.0);
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
            let src = if i % 3 == 2 {
                ip(&format!("198.51.100.{}", 100 + i % 50))
            } else {
                ip(CLIENT1_V4)
            };
            let _ = link.send(&syn_frame(&path, src, 30_000 + (i % 20_000) as u16));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let got = lab.attempts(CLIENT1_V4, SERVER_V4, 25);
    spoofer.join().unwrap();
    let maps = slowgate::enforcer::Maps::open_pinned(&lab.pins.path).unwrap();
    let c = maps.counters().unwrap();
    let at = |i: u32| c[i as usize];
    eprintln!(
        "real sender: {got} of {ATTEMPTS}; verified {}, over the ceiling {}, source-ceiling drops {}, prefix-ceiling drops {}",
        at(sg_common::counter::VERIFIED),
        at(sg_common::counter::VERIFIED_OVER_CEILING),
        at(sg_common::counter::DROP_REASON + u32::from(sg_common::reason::DEFAULT_SOURCE)),
        at(sg_common::counter::DROP_REASON + u32::from(sg_common::reason::DEFAULT_PREFIX)),
    );
    assert!(
        got >= ATTEMPTS - 1,
        "the real sender got {got} of {ATTEMPTS} through"
    );
    assert!(at(sg_common::counter::VERIFIED) >= 1);
    // The spoofed addresses that never completed a handshake still hit the ceilings.
    let ceiling_drops =
        at(sg_common::counter::DROP_REASON + u32::from(sg_common::reason::DEFAULT_SOURCE))
            + at(sg_common::counter::DROP_REASON + u32::from(sg_common::reason::DEFAULT_PREFIX));
    assert!(ceiling_drops > 50, "only {ceiling_drops} ceiling drops");
}

#[test]
fn lines_written_while_the_daemon_was_down_are_learned_at_restart() {
    let lab = Lab::new();
    let tmp = TempDir::new("down");
    let (log, config) = postfix_log_in(&tmp.path);
    let mut daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    append(
        &log,
        "Nov 22 07:53:40 mx1 postfix/smtpd[1]: connect from unknown[203.0.113.10]\n",
    );
    // The reader saves its position once a second (a margin for a loaded machine).
    std::thread::sleep(Duration::from_millis(2500));
    daemon.kill9();
    // While it is down, a harvester works: five rejects, enough for a block.
    let text: String = (0..5).map(|n| harvest_line(CLIENT1_V4, n)).collect();
    append(&log, &text);
    let daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    assert!(
        wait_for_limit(&lab, CLIENT1_V4),
        "the lines written while the daemon was down were not learned: {}",
        daemon.log_text()
    );
    assert!(!lab.connects(CLIENT1_V4, SERVER_V4, 25));
    // And nothing was read twice: this run read the five lines, not the connect line before
    // the crash (the figures refresh every second: ask for 5 s at most).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let m = http_get(&lab.server, "127.0.0.1:9465".parse().unwrap(), "/metrics")
            .unwrap_or_default();
        if m.contains("slowgate_lines_total{") || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        metrics.contains("slowgate_lines_total{format=\"postfix\"} 5\n"),
        "{metrics}"
    );
}

/// The points of every source the daemon tracks (`slowgate top --json`), by address.
fn points_by_source(daemon: &Daemon) -> std::collections::BTreeMap<String, f64> {
    let (ok, out) = control(daemon, &["top", "-n", "10000", "--json"], false);
    assert!(ok, "{out}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["sender"].as_str().unwrap_or("/").contains('/'))
        .map(|r| {
            (
                r["sender"].as_str().unwrap().to_string(),
                r["points"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_line_is_counted_exactly_once_across_a_kill_9_and_a_rotation() {
    // Each line is one harvest attempt (2 points) of its own client: a client with 2 points
    // was counted once, 4 twice, none never.
    let lab = Lab::new();
    let tmp = TempDir::new("once");
    let (log, config) = postfix_log_in(&tmp.path);
    let client = |n: usize| format!("2001:db8:{:x}::1", 0x100 + n);
    let lines = |range: std::ops::Range<usize>| -> String {
        range.map(|n| harvest_line(&client(n), n)).collect()
    };
    let mut daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    append(&log, &lines(0..300));
    // Killed as soon as it has read them: some may not be in a saved snapshot yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while points_by_source(&daemon).len() < 300 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.kill9();
    // Down: 1000 lines, with one rename + create rotation in the middle.
    append(&log, &lines(300..800));
    std::fs::rename(&log, tmp.path.join("mail.log.1")).unwrap();
    std::fs::write(&log, lines(800..1300)).unwrap();
    let daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut points = points_by_source(&daemon);
    while points.len() < 1300 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        points = points_by_source(&daemon);
    }
    // A moment more, so that a line read twice would show.
    std::thread::sleep(Duration::from_millis(1000));
    let points = points_by_source(&daemon);
    let (mut never, mut once, mut more) = (Vec::new(), 0, Vec::new());
    for n in 0..1300 {
        match points.get(&client(n)) {
            None => never.push(n),
            Some(p) if (1.5..2.5).contains(p) => once += 1,
            Some(p) => more.push((n, *p)),
        }
    }
    assert!(
        never.is_empty() && more.is_empty(),
        "{once} lines counted once; never: {never:?}; more than once: {more:?}\n{}",
        daemon.log_text()
    );
    assert_eq!(once, 1300);
}

#[test]
fn journald_entries_are_a_source_too() {
    // A stand-in for journalctl that prints what `journalctl --follow --output=json` would for
    // Dovecot's failed logins, then follows (sleeps). The daemon finds it through
    // SLOWGATE_JOURNALCTL; no journald is needed.
    let lab = Lab::new();
    let tmp = TempDir::new("journal");
    let dir = tmp.path.clone();
    let fake = dir.join("journalctl");
    let mut script = String::from("#!/bin/sh\n");
    for n in 0..4 {
        script += &format!(
            "echo '{{\"__REALTIME_TIMESTAMP\":\"1795334020{n:06}\",\"SYSLOG_IDENTIFIER\":\"dovecot\",\
             \"MESSAGE\":\"imap-login: Disconnected: (auth failed, 1 attempts in 2 secs): user=<admin>, \
             method=PLAIN, rip={CLIENT_A6}, lip={SERVER_A6}, session=<abc{n}>\"}}'\n"
        );
    }
    script += "exec sleep 60\n";
    std::fs::write(&fake, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = learning_config(
        "[[sources]]\njournald_units = [\"dovecot.service\"]\nformat = \"dovecot\"\n",
    );
    // SAFETY (of the environment): tests in this file run one at a time (--test-threads=1).
    unsafe { std::env::set_var("SLOWGATE_JOURNALCTL", &fake) };
    let daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    unsafe { std::env::remove_var("SLOWGATE_JOURNALCTL") };
    // Four IMAP auth failures (3 points each): the /128 is blocked, on SMTP as well.
    assert!(
        wait_for_limit(&lab, CLIENT_A6),
        "no limit written: {}",
        daemon.log_text()
    );
    assert_eq!(lab.attempts(CLIENT_A6, SERVER_A6, 25), 0);
    assert!(lab.connects(CLIENT_B6, SERVER_B6, 25));
    drop(daemon);
}

#[test]
fn journald_entries_written_while_the_daemon_was_down_are_learned_at_restart() {
    // A stand-in for journalctl with cursors: the first run sees two failed logins arrive
    // (c1, c2); while the daemon is down four more are written (c3..c6), which journalctl gives
    // only to a reader that asks `--after-cursor=c2`; without a cursor it gives nothing old.
    let lab = Lab::new();
    let tmp = TempDir::new("cursor");
    let dir = tmp.path.clone();
    let entry = |n: u32| {
        format!(
            "echo '{{\"__CURSOR\":\"c{n}\",\"__REALTIME_TIMESTAMP\":\"1795334020{n:06}\",\
             \"SYSLOG_IDENTIFIER\":\"dovecot\",\"MESSAGE\":\"imap-login: Disconnected: (auth failed, \
             1 attempts in 2 secs): user=<admin>, method=PLAIN, rip={CLIENT_A6}, lip={SERVER_A6}, \
             session=<s{n}>\"}}'\n"
        )
    };
    let phase2 = dir.join("phase2");
    let mut script = String::from("#!/bin/sh\ncase \"$*\" in\n*--after-cursor=c2*)\n");
    for n in 3..=6 {
        script += &entry(n);
    }
    script += ";;\n*--after-cursor=*) ;;\n*)\n";
    script += &format!("if [ ! -e {} ]; then\n", phase2.display());
    for n in 1..=2 {
        script += &entry(n);
    }
    script += "fi\n;;\nesac\nexec sleep 60\n";
    let fake = dir.join("journalctl");
    std::fs::write(&fake, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = learning_config(
        "[[sources]]\njournald_units = [\"dovecot.service\"]\nformat = \"dovecot\"\n",
    );
    // SAFETY (of the environment): tests in this file run one at a time (--test-threads=1).
    unsafe { std::env::set_var("SLOWGATE_JOURNALCTL", &fake) };
    let mut daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    // Two failures (6 points): below the block. The cursor is saved within a second (a
    // margin for a loaded machine).
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!lab.cli(&["limit", "list"]).contains(CLIENT_A6));
    daemon.kill9();
    std::fs::write(&phase2, "").unwrap();
    let daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    unsafe { std::env::remove_var("SLOWGATE_JOURNALCTL") };
    assert!(
        wait_for_limit(&lab, CLIENT_A6),
        "the entries written while the daemon was down were not learned: {}",
        daemon.log_text()
    );
    drop(daemon);
}

/// Appends `entries` (export format) to a real journal file in `dir`, as journald would write
/// them (systemd-journal-remote, from Debian's package).
fn journal_append(dir: &std::path::Path, entries: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("/lib/systemd/systemd-journal-remote")
        .arg("-o")
        .arg(dir.join("remote.journal"))
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("systemd-journal-remote (apt install systemd-journal-remote)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(entries.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// A failed IMAP login of `client` as Dovecot's unit logs it, in journal export format.
fn dovecot_failure_entry(client: &str, n: u64) -> String {
    format!(
        "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={n}\n\
         _BOOT_ID=0123456789abcdef0123456789abcdef\n_SYSTEMD_UNIT=dovecot.service\n\
         SYSLOG_IDENTIFIER=dovecot\nMESSAGE=imap-login: Disconnected: (auth failed, 1 attempts in \
         2 secs): user=<admin>, method=PLAIN, rip={client}, lip={SERVER_A6}, session=<s{n}>\n\n",
        1_795_334_020_000_000 + n
    )
}

#[test]
fn a_real_journal_is_followed_and_resumed_from_its_cursor() {
    // Real journal files and the real journalctl: the daemon's journalctl (through a wrapper
    // that points it at a directory) follows entries that systemd-journal-remote appends.
    let lab = Lab::new();
    let tmp = TempDir::new("realjournal");
    let journal = tmp.path.join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    // One entry from before the daemon starts (the first run reads only new ones).
    journal_append(&journal, &dovecot_failure_entry(CLIENT_A6_OTHER, 1));
    let wrapper = tmp.path.join("journalctl");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec journalctl --directory={} \"$@\"\n",
            journal.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = learning_config(
        "[[sources]]\njournald_units = [\"dovecot.service\"]\nformat = \"dovecot\"\n",
    );
    // SAFETY (of the environment): tests in this file run one at a time (--test-threads=1).
    unsafe { std::env::set_var("SLOWGATE_JOURNALCTL", &wrapper) };
    let mut daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let entries: String = (10..14)
        .map(|n| dovecot_failure_entry(CLIENT_A6, n))
        .collect();
    journal_append(&journal, &entries);
    assert!(
        wait_for_limit(&lab, CLIENT_A6),
        "no limit from the real journal: {}",
        daemon.log_text()
    );
    // Down, four failures of another client are written, then up: read from the cursor.
    std::thread::sleep(Duration::from_millis(2500));
    daemon.kill9();
    let entries: String = (20..24)
        .map(|n| dovecot_failure_entry(CLIENT_A6_OTHER, n))
        .collect();
    journal_append(&journal, &entries);
    let daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    unsafe { std::env::remove_var("SLOWGATE_JOURNALCTL") };
    assert!(
        wait_for_limit(&lab, CLIENT_A6_OTHER),
        "the journal entries written while the daemon was down were not learned: {}",
        daemon.log_text()
    );
    drop(daemon);
}

#[test]
fn the_systemd_unit_verifies_and_the_daemon_reports_readiness_and_watchdog() {
    // The unit as installed, pointed at the binary under test.
    let tmp = TempDir::new("unit");
    let dir = tmp.path.clone();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/slowgate.service"
    ))
    .unwrap()
    .replace("/usr/local/sbin/slowgate", &bin().display().to_string());
    let path = dir.join("slowgate.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt install systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");

    // Type=notify: READY=1 once ready, then WATCHDOG=1 every WATCHDOG_USEC / 2.
    let lab = Lab::new();
    let socket_path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // SAFETY (of the environment): tests in this file run one at a time (--test-threads=1).
    unsafe {
        std::env::set_var("NOTIFY_SOCKET", &socket_path);
        std::env::set_var("WATCHDOG_USEC", "400000");
    }
    let daemon = lab.start();
    unsafe {
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
    }
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 3 {
        let n = socket.recv(&mut buf).expect("a notification within 5 s");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(got[0], "READY=1");
    assert!(got[1..].iter().all(|m| m == "WATCHDOG=1"), "{got:?}");
    drop(daemon);
}

/// The CLI against the daemon's control socket, as `nobody` when `as_nobody`.
fn control(daemon: &Daemon, args: &[&str], as_nobody: bool) -> (bool, String) {
    daemon.control(args, as_nobody)
}

#[test]
fn control_socket_top_show_release_reload_and_who_may_use_it() {
    let lab = Lab::new();
    let tmp = TempDir::new("ctl");
    let dir = tmp.path.clone();
    let (log, config) = postfix_log_in(&dir);
    let daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    let text: String = (0..5).map(|n| harvest_line(CLIENT1_V4, n)).collect();
    append(&log, &text);
    assert!(wait_for_limit(&lab, CLIENT1_V4), "{}", daemon.log_text());

    // top: the sender at level 1 (its /24 is listed too, with points, at level 0).
    let (ok, out) = control(&daemon, &["top", "--json"], false);
    assert!(ok, "{out}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["sender"] == CLIENT1_V4)
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(row["level"], 1);
    assert_eq!(row["recent_events"], serde_json::json!([]));
    let (ok, out) = control(&daemon, &["top", "-n", "5"], false);
    assert!(
        ok && out.contains("198.51.100.0/24") && out.contains("recent events"),
        "{out}"
    );

    // show: level, points, its history, and the kernel entry that matches.
    let (ok, out) = control(&daemon, &["show", CLIENT1_V4], false);
    assert!(ok, "{out}");
    for expected in [
        "level:   1 (blocked)",
        "level 0 -> 1 (10.0 points; unknown_recipient x5)",
        "limit 198.51.100.10/32: blocked",
    ] {
        assert!(out.contains(expected), "no `{expected}` in:\n{out}");
    }

    // release the address (its /24 was never limited: one address does not limit its
    // neighbours): the limit goes, the client connects again.
    for (who, level) in [(CLIENT1_V4, 1), ("198.51.100.0/24", 0)] {
        let (ok, out) = control(&daemon, &["release", who], false);
        assert!(
            ok && out.contains(&format!("was at level {level}")),
            "{out}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(!lab.cli(&["limit", "list"]).contains("198.51.100"));
    assert_eq!(lab.attempts(CLIENT1_V4, SERVER_V4, 25), ATTEMPTS);

    // reload: a bad file is refused with its reason and the running config stays.
    let config_path = daemon.log.parent().unwrap().join("slowgate.toml");
    let good = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        format!("{good}\n[points.weights]\nrbl = \"lots\"\n"),
    )
    .unwrap();
    let (ok, out) = control(&daemon, &["reload"], false);
    assert!(!ok && out.contains("rbl"), "{out}");
    assert!(
        daemon
            .log_text()
            .contains("reload refused, the running config stays")
    );
    // A good one is taken; SIGHUP does the same.
    std::fs::write(&config_path, good.replace("points = 10", "points = 12")).unwrap();
    let (ok, out) = control(&daemon, &["reload"], false);
    assert!(ok && out.contains("reloaded"), "{out}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(daemon.log_text().matches("slowgate: reloaded").count(), 2);

    // The lists through the socket: journaled by the daemon, listed with their comment.
    let (ok, out) = control(
        &daemon,
        &[
            "allow",
            "add",
            "198.51.100.77",
            "--comment",
            "partner relay",
        ],
        false,
    );
    assert!(ok && out.contains("allow 198.51.100.77/32"), "{out}");
    let (ok, out) = control(&daemon, &["allow", "list"], false);
    assert!(ok && out.contains("# partner relay"), "{out}");
    let journal = slowgate::store::Store::open(&state_dir_of(&lab.pins.path))
        .unwrap()
        .list_entries()
        .unwrap();
    assert!(journal.iter().any(|e| e.network == "198.51.100.77/32"));
    assert!(
        daemon
            .log_text()
            .contains("slowgate: control: allow 198.51.100.77/32")
    );

    // Others are refused: by the socket's mode, and by the daemon when the mode lets them in.
    let (ok, out) = control(&daemon, &["top"], true);
    assert!(
        !ok && out.to_lowercase().contains("permission denied"),
        "{out}"
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&daemon.control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, out) = control(&daemon, &["top"], true);
    assert!(
        !ok && out.contains("permission denied: root and the control group only"),
        "{out}"
    );
    drop(daemon);
}

/// A network as slowgate writes it.
fn canonical(net: &str) -> String {
    net.parse::<slowgate::domain::Network>()
        .unwrap()
        .to_string()
}

#[test]
fn state_survives_twenty_kill_9s_and_a_reboot_with_no_lost_cli_entry() {
    let lab = Lab::new();
    let tmp = TempDir::new("kill9");
    let dir = tmp.path.clone();
    let (log, config) = postfix_log_in(&dir);
    // Events stream in all along: harvest attempts from rotating documentation addresses.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, log) = (stop.clone(), log.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                let client = format!("203.0.113.{}", 100 + n % 20);
                f.write_all(harvest_line(&client, n).as_bytes()).unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let state = state_dir_of(&lab.pins.path);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for i in 0..20 {
        let mut daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
        let net = format!("2001:db8:dead:{i:x}::/64");
        lab.cli(&["deny", "add", &net, "--comment", &format!("kill {i}")]);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(50 + rng % 650));
        daemon.kill9();
        // Whatever moment the kill came at, the store reads back whole.
        let store = slowgate::store::Store::open(&state).unwrap();
        store.load_senders().expect("an intact senders snapshot");
        let entries = store.list_entries().unwrap();
        for j in 0..=i {
            let want = canonical(&format!("2001:db8:dead:{j:x}::/64"));
            assert!(
                entries.iter().any(|e| e.network == want),
                "kill {i}: {want} lost"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let saved = slowgate::store::Store::open(&state)
        .unwrap()
        .load_senders()
        .unwrap();
    assert!(
        saved.iter().any(|s| s.level > 0),
        "some sender was limited and saved: {saved:?}"
    );

    // A reboot: the pinned maps are gone. The CLI's entries and the limits come back.
    lab.cli(&["detach"]);
    let daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    let denied = lab.cli(&["deny", "list"]);
    for i in 0..20 {
        let want = canonical(&format!("2001:db8:dead:{i:x}::/64"));
        assert!(denied.contains(&want), "{want} not restored: {denied}");
    }
    assert!(denied.contains("# kill 7"), "comments are kept: {denied}");
    // Each daemon lived under a second, so only the /24 (which all 20 clients feed) got far
    // enough to be limited.
    let limited = saved
        .iter()
        .find(|s| s.level > 0)
        .unwrap_or_else(|| panic!("no limited sender saved: {saved:?}"));
    assert!(
        wait_for_limit(&lab, &limited.id),
        "{} not limited again: {}",
        limited.id,
        daemon.log_text()
    );
    assert!(daemon.log_text().contains("slowgate: restored"));
    drop(daemon);
}

#[test]
fn a_list_imported_from_a_file_is_enforced_journaled_and_replaced_whole() {
    let lab = Lab::new();
    let tmp = TempDir::new("import");
    let (_, config) = postfix_log_in(&tmp.path);
    let mut daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    let file = tmp.path.join("deny.txt");
    let path = file.to_str().unwrap();
    std::fs::write(
        &file,
        format!("# blocklist\n{CLIENT1_V4}\n2001:db8:77::/48   # far away\n"),
    )
    .unwrap();
    // Through the daemon's control socket.
    let (ok, out) = control(&daemon, &["deny", "import", path], false);
    assert!(
        ok && out.contains("imported 2 entries into the deny list"),
        "{out}"
    );
    assert_eq!(lab.attempts(CLIENT1_V4, SERVER_V4, 25), 0, "denied on SMTP");
    assert_eq!(lab.attempts(CLIENT1_V4, SERVER_V4, 143), 0, "and on IMAP");
    // A file with one bad line is refused whole, naming the line.
    std::fs::write(&file, "198.51.100.200\nnonsense\n").unwrap();
    let (ok, out) = control(&daemon, &["deny", "import", path], false);
    assert!(!ok && out.contains("line 2"), "{out}");
    // --replace: the list becomes exactly the file, so CLIENT1 passes again.
    std::fs::write(&file, "2001:db8:77::/48\n").unwrap();
    let (ok, out) = control(&daemon, &["deny", "import", "--replace", path], false);
    assert!(ok && out.contains("1 other entries removed"), "{out}");
    assert_eq!(lab.attempts(CLIENT1_V4, SERVER_V4, 25), ATTEMPTS);
    // Journaled: with the program and pins gone, a new daemon puts the list back as imported.
    daemon.kill9();
    lab.cli(&["detach"]);
    let _daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    let list = lab.cli(&["deny", "list"]);
    assert!(
        list.contains("2001:db8:77::/48") && !list.contains(CLIENT1_V4),
        "{list}"
    );
    assert!(!lab.cli(&["deny", "list"]).contains("198.51.100.200"));
}

/// rbldnsd serving `zone` from `data` (ip4set lines) on `addr`:5353 in `ns`; killed on drop.
struct Rbldnsd(std::process::Child);

impl Rbldnsd {
    fn start(ns: &Netns, dir: &std::path::Path, zone: &str, data: &str, addr: &str) -> Rbldnsd {
        use std::os::unix::fs::PermissionsExt;
        let file = dir.join("zone.txt");
        std::fs::write(&file, data).unwrap();
        // It drops to `nobody` (it refuses to run as root) before reading the zone.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let child = std::process::Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "rbldnsd", "-n", "-u", "nobody", "-t", "300",
            ])
            .arg("-w")
            .arg(dir)
            .arg("-b")
            .arg(format!("{addr}/5353"))
            .arg(format!("{zone}:ip4set:zone.txt"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run rbldnsd");
        // It answers once its zone is loaded.
        std::thread::sleep(Duration::from_millis(500));
        Rbldnsd(child)
    }
}

impl Drop for Rbldnsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client that only appears in log lines, listed with a low weight.
const WEAKLY_LISTED_V4: &str = "198.51.100.11";

#[test]
fn a_sender_listed_by_a_dnsbl_is_limited_after_its_first_logged_connection() {
    let lab = Lab::new();
    let tmp = TempDir::new("dnsbl");
    // CLIENT1 is listed with code 127.0.0.2 (worth 20 points: a block at once); CLIENT3 with
    // 127.0.0.10 (worth 1 point: nothing); the others are not listed.
    let _rbl = Rbldnsd::start(
        &lab.server,
        &tmp.path,
        "bl.example.test",
        &format!("{CLIENT1_V4} :127.0.0.2:listed\n{WEAKLY_LISTED_V4} :127.0.0.10:policy\n"),
        SERVER_V4,
    );
    let log = tmp.path.join("mail.log");
    std::fs::write(&log, "").unwrap();
    let config = format!(
        "{}\n[[sources]]\npath = \"{}\"\nformat = \"postfix\"\n\
         [[dnsbl]]\nzone = \"bl.example.test\"\nweights = {{ \"127.0.0.2\" = 20, \"127.0.0.10\" = 1 }}\n\
         [dns]\nresolver = \"{SERVER_V4}:5353\"\ntimeout = \"1s\"\n\
         [points]\nhalf_life = \"10m\"\n[[levels]]\npoints = 10\nblock = true\n",
        daemon_config(),
        log.display()
    );
    let daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    let mut text = String::new();
    for client in [CLIENT1_V4, WEAKLY_LISTED_V4, CLIENT2_V4] {
        text += &format!("Nov 22 07:53:40 mx1 postfix/smtpd[1]: connect from unknown[{client}]\n");
    }
    append(&log, &text);
    assert!(
        wait_for_limit(&lab, CLIENT1_V4),
        "the listed sender was not limited after one connection: {}",
        daemon.log_text()
    );
    assert_eq!(lab.attempts(CLIENT1_V4, SERVER_V4, 25), 0);
    let log_text = daemon.log_text();
    assert!(log_text.contains("dnsbl x1"), "{log_text}");
    // One point, and no answer at all: neither is limited.
    std::thread::sleep(Duration::from_millis(500));
    let limits = lab.cli(&["limit", "list"]);
    assert!(
        !limits.contains(WEAKLY_LISTED_V4) && !limits.contains(CLIENT2_V4),
        "{limits}"
    );
    // Three addresses asked once each, two of them listed (metrics refresh every second).
    let expected = [
        "slowgate_dnsbl_lookups_total{result=\"query\"} 3",
        "slowgate_dnsbl_lookups_total{result=\"listed\"} 2",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let m = http_get(&lab.server, "127.0.0.1:9465".parse().unwrap(), "/metrics")
            .unwrap_or_default();
        if expected.iter().all(|e| m.contains(e)) || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for line in expected {
        assert!(metrics.contains(line), "no `{line}` in:\n{metrics}");
    }
}

/// A Spamhaus DROP JSON body listing `listed` and `filler` other documentation addresses.
fn drop_json(listed: &[&str], filler: usize) -> String {
    let mut cidrs: Vec<String> = listed.iter().map(|a| format!("{a}/32")).collect();
    cidrs.extend((0..filler).map(|i| format!("2001:db8:ffff::{:x}/128", i + 1)));
    let mut body: String = cidrs
        .iter()
        .map(|c| {
            format!(
                "{{\"cidr\":\"{c}\",\"sblid\":\"SBL{}\",\"rir\":\"arin\"}}\n",
                c.len()
            )
        })
        .collect();
    body += &format!(
        "{{\"type\":\"metadata\",\"timestamp\":1763884800,\"size\":{},\"records\":{},\"copyright\":\"test\"}}\n",
        body.len(),
        cidrs.len()
    );
    body
}

/// Whether every attempt of `from` to SMTP and IMAP is refused (`dropped`) or every one gets
/// through.
fn all_refused_or_passed(lab: &Lab, from: &str, dropped: bool) -> bool {
    let want = if dropped { 0 } else { 3 };
    let mut got: Vec<u32> = Vec::new();
    until(Duration::from_secs(10), || {
        got = [25, 143]
            .iter()
            .map(|port| {
                attempts(
                    &lab.client,
                    ip(from),
                    to(SERVER_V4, *port),
                    3,
                    Duration::from_millis(600),
                )
            })
            .collect();
        got.iter().all(|n| *n == want)
    }) || {
        eprintln!("{from}: {got:?} of 3 connected, wanted {want}");
        false
    }
}

#[test]
fn a_source_listed_by_a_feed_is_dropped_until_the_feed_drops_it_and_bad_fetches_change_nothing() {
    use sg_tests::feed_server::{FeedServer, Serve};
    let lab = Lab::new();
    let feed_addr: SocketAddr = format!("{SERVER_V4}:8081").parse().unwrap();
    let listed = Serve::Body {
        body: drop_json(&[CLIENT1_V4], 20),
        etag: "\"v1\"".into(),
    };
    let server = FeedServer::start(&lab.server, feed_addr, listed.clone()).unwrap();
    let config = format!(
        "{}\n[[feeds]]\nname = \"drop\"\nurl = \"http://{feed_addr}/drop_v4.json\"\n\
         format = \"spamhaus-json\"\naction = \"deny\"\nrefresh = \"1h\"\ntimeout = \"2s\"\n",
        daemon_config()
    );
    let daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    let feed = |args: &[&str]| control(&daemon, args, false);
    // Fetched at start: the listed source is dropped on SMTP and IMAP, the other passes.
    assert!(
        all_refused_or_passed(&lab, CLIENT1_V4, true),
        "{}",
        daemon.log_text()
    );
    assert!(all_refused_or_passed(&lab, CLIENT2_V4, false));
    // Unchanged: the server is asked with the ETag and answers 304.
    let (ok, out) = feed(&["feed", "update", "drop"]);
    assert!(ok && out.contains("not modified (21 entries)"), "{out}");
    assert_eq!(
        server
            .asked
            .lock()
            .unwrap()
            .last()
            .cloned()
            .flatten()
            .as_deref(),
        Some("\"v1\"")
    );
    // Every failure keeps the copy in force.
    let bad = [
        (Serve::Status(503), "HTTP 503"),
        (Serve::Hang(Duration::from_secs(6)), "fetch"),
        (
            Serve::Truncated(drop_json(&[CLIENT2_V4], 20)),
            "read the body",
        ),
        (
            Serve::Body {
                body: drop_json(&[CLIENT1_V4, CLIENT2_V4], 40),
                etag: "\"doubled\"".into(),
            },
            "grow from 21 to 42",
        ),
        (
            Serve::Body {
                body: "{\"cidr\":\"0.0.0.0/0\"}\n{\"type\":\"metadata\",\"records\":1}\n".into(),
                etag: "\"everyone\"".into(),
            },
            "wider than /8",
        ),
    ];
    for (how, says) in bad {
        server.set(how);
        let started = std::time::Instant::now();
        let (ok, out) = feed(&["feed", "update", "drop"]);
        assert!(!ok && out.contains(says), "{says}: {out}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{says}: took too long"
        );
        assert!(
            all_refused_or_passed(&lab, CLIENT1_V4, true),
            "after {says}"
        );
        assert!(
            all_refused_or_passed(&lab, CLIENT2_V4, false),
            "after {says}"
        );
    }
    // Removed from the feed: it passes again on both services.
    server.set(Serve::Body {
        body: drop_json(&[], 20),
        etag: "\"v2\"".into(),
    });
    let (ok, out) = feed(&["feed", "update", "drop"]);
    assert!(ok && out.contains("20 entries (+0 -1)"), "{out}");
    assert!(all_refused_or_passed(&lab, CLIENT1_V4, false));
    let (ok, list) = feed(&["feed", "list"]);
    assert!(ok, "{list}");
    let row = list
        .lines()
        .find(|l| l.starts_with("drop "))
        .unwrap_or_default();
    assert!(
        row.contains("spamhaus-json") && row.contains(" 20 "),
        "{list}"
    );
    let metrics =
        http_get(&lab.server, "127.0.0.1:9465".parse().unwrap(), "/metrics").unwrap_or_default();
    for line in [
        "slowgate_feed_entries{feed=\"drop\"} 20",
        "slowgate_feed_updates_refused_total{feed=\"drop\"} 2",
        "slowgate_feed_fetch_errors_total{feed=\"drop\"} 3",
    ] {
        assert!(metrics.contains(line), "no `{line}` in:\n{metrics}");
    }
}

/// Established connections the kernel counts for `who` (a source or prefix), 0 when none.
fn counted(lab: &Lab, who: &str) -> u64 {
    let net: slowgate::domain::Network = who.parse().unwrap();
    slowgate::enforcer::Maps::open_pinned(&lab.pins.path)
        .unwrap()
        .connection_counts()
        .unwrap()
        .into_iter()
        .find(|(n, _)| *n == net)
        .map_or(0, |(_, c)| c)
}

/// Waits (at most 10 s) until the kernel counts `want` connections for `who`.
fn wait_counted(lab: &Lab, who: &str, want: u64) -> bool {
    until(Duration::from_secs(10), || counted(lab, who) == want) || {
        eprintln!("{who}: {} counted, wanted {want}", counted(lab, who));
        false
    }
}

#[test]
fn concurrent_connections_are_capped_and_counted_down_after_closes_resets_and_timeouts() {
    use std::net::TcpStream;
    let lab = Lab::new();
    // POP3 and submission hold their connections until the client closes (as a server does
    // until QUIT), and give up on a silent client after 1 s.
    let _held = Listeners::holding(&lab.server, &[110, 587], Duration::from_secs(1)).unwrap();
    let config = format!(
        "{}\n[ceiling.concurrent]\nsource = 20\nprefix = 30\nlimited = 5\n",
        daemon_config()
    );
    let daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    let open = |from: &str, server: &str, i: usize| -> Option<TcpStream> {
        let port = if i.is_multiple_of(2) { 110 } else { 587 };
        tcp_connect(
            &lab.client,
            ip(from),
            to(server, port),
            Duration::from_millis(700),
        )
        .ok()
    };
    // The prefix cap: two sources of one /64, 20 + 10, and the 31st refused although its
    // source holds only 10.
    let a: Vec<TcpStream> = (0..20)
        .map(|i| open(CLIENT_A6, SERVER_A6, i).expect("first source's 20"))
        .collect();
    let b: Vec<TcpStream> = (0..10)
        .map(|i| open(CLIENT_A6_OTHER, SERVER_A6, i).expect("second source's 10"))
        .collect();
    assert!(wait_counted(&lab, "2001:db8:a::/64", 30));
    assert!(
        open(CLIENT_A6_OTHER, SERVER_A6, 0).is_none(),
        "31st of the /64 admitted"
    );
    drop(a);
    drop(b);
    assert!(wait_counted(&lab, "2001:db8:a::/64", 0));
    // 20 at once, across two services: all admitted; the 21st refused on either service.
    let mut held: Vec<TcpStream> = (0..20)
        .map(|i| open(CLIENT1_V4, SERVER_V4, i).expect("one of the first 20 connections"))
        .collect();
    assert!(wait_counted(&lab, CLIENT1_V4, 20), "{}", daemon.log_text());
    assert!(
        open(CLIENT1_V4, SERVER_V4, 0).is_none(),
        "21st on POP3 admitted"
    );
    assert!(
        open(CLIENT1_V4, SERVER_V4, 1).is_none(),
        "21st on submission admitted"
    );
    // Another source passes.
    let other = open(CLIENT2_V4, SERVER2_V4, 0).expect("another source is not capped");
    // One closes (FIN both ways): the next is admitted, and the one after refused again.
    drop(held.pop());
    assert!(wait_counted(&lab, CLIENT1_V4, 19));
    held.push(open(CLIENT1_V4, SERVER_V4, 0).expect("admitted after one closed"));
    assert!(wait_counted(&lab, CLIENT1_V4, 20));
    assert!(open(CLIENT1_V4, SERVER_V4, 1).is_none());
    // Five reset (RST): counted down at once, though the server never closed them.
    for stream in held.drain(..5) {
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    assert!(wait_counted(&lab, CLIENT1_V4, 15));
    // The client goes silent (its link down): the server's sockets time out, and the counts
    // return to zero, the prefix's too.
    lab.client.ip(&["link", "set", "cl0", "down"]).unwrap();
    let timed_out = wait_counted(&lab, CLIENT1_V4, 0) && wait_counted(&lab, "198.51.100.0/24", 0);
    lab.client.ip(&["link", "set", "cl0", "up"]).unwrap();
    assert!(timed_out, "{}", daemon.log_text());
    drop(held);
    drop(other);
    assert!(wait_counted(&lab, CLIENT2_V4, 0));
    // A source a level (here an operator's limit, loose in rate) holds gets the lower cap.
    lab.cli(&[
        "limit", "set", CLIENT2_V4, "--rate", "600/min", "--burst", "100",
    ]);
    let limited: Vec<TcpStream> = (0..5)
        .map(|i| open(CLIENT2_V4, SERVER2_V4, i).expect("a limited source's first 5"))
        .collect();
    assert!(wait_counted(&lab, CLIENT2_V4, 5));
    assert!(
        open(CLIENT2_V4, SERVER2_V4, 0).is_none(),
        "a limited source's 6th admitted"
    );
    drop(limited);
    assert!(wait_counted(&lab, CLIENT2_V4, 0));
    // Metrics name the refusals.
    let metrics =
        http_get(&lab.server, "127.0.0.1:9465".parse().unwrap(), "/metrics").unwrap_or_default();
    assert!(
        metrics.contains("reason=\"concurrent_cap\""),
        "no concurrent_cap drops in:\n{metrics}"
    );
}

/// One policy request over `stream`; the answer's action, or None when the daemon closed.
fn policy_ask(stream: &mut std::os::unix::net::UnixStream, attributes: &str) -> Option<String> {
    use std::io::{BufRead, Write};
    stream
        .write_all(format!("{attributes}\n").as_bytes())
        .ok()?;
    let mut reader = std::io::BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut empty = String::new();
    reader.read_line(&mut empty).ok()?;
    line.strip_prefix("action=")
        .map(|a| a.trim_end().to_string())
}

fn policy_request(state: &str, user: &str, client: &str, instance: &str) -> String {
    format!(
        "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n\
         sasl_username={user}\nclient_address={client}\ninstance={instance}\n\
         recipient_count=1\n"
    )
}

#[test]
fn the_policy_service_holds_users_to_their_buckets_and_survives_malformed_requests() {
    use std::os::unix::net::UnixStream;
    let lab = Lab::new();
    let tmp = TempDir::new("policy");
    let socket = tmp.path.join("policy.sock");
    let config = format!(
        "{}\n[policy]\nlisten = \"unix:{}\"\nidle = \"2s\"\n\
         [users]\nmessages = \"3/h\"\nrecipients = \"100/h\"\n\
         [users.override.\"newsletter@example.org\"]\nmessages = \"5000/h\"\n",
        daemon_config(),
        socket.display()
    );
    let daemon = Daemon::start(&lab.server, &config, &lab.pins.path).unwrap();
    let connect = || {
        let s = UnixStream::connect(&socket).expect("connect to the policy socket");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    let mut postfix = connect();
    // Alice: three messages, then a temporary failure as early as RCPT; Bob and the
    // newsletter send on.
    for i in 0..3 {
        let id = format!("a{i}");
        let rcpt = policy_request("RCPT", "alice@example.net", "203.0.113.7", &id);
        assert_eq!(policy_ask(&mut postfix, &rcpt).as_deref(), Some("DUNNO"));
        let data = policy_request("DATA", "alice@example.net", "203.0.113.7", &id);
        assert_eq!(policy_ask(&mut postfix, &data).as_deref(), Some("DUNNO"));
    }
    let fourth = policy_request("RCPT", "alice@example.net", "198.51.100.99", "a3");
    let answer = policy_ask(&mut postfix, &fourth).unwrap_or_default();
    assert!(
        answer.starts_with("451 4.7.1"),
        "{answer}: {}",
        daemon.log_text()
    );
    for i in 0..10 {
        let bob = policy_request("DATA", "bob@example.net", "203.0.113.7", &format!("b{i}"));
        let news = policy_request(
            "DATA",
            "newsletter@example.org",
            "203.0.113.8",
            &format!("n{i}"),
        );
        let (b, n) = (
            policy_ask(&mut postfix, &bob),
            policy_ask(&mut postfix, &news),
        );
        if i < 3 {
            assert_eq!(b.as_deref(), Some("DUNNO"));
        }
        assert_eq!(n.as_deref(), Some("DUNNO"));
    }
    // A limited address is limited in messages too: 2 at once, then deferred, in one session.
    lab.cli(&[
        "limit",
        "set",
        "203.0.113.66",
        "--rate",
        "6/min",
        "--burst",
        "2",
    ]);
    let mut answers = Vec::new();
    for i in 0..4 {
        let data = policy_request("DATA", "", "203.0.113.66", &format!("s{i}"));
        answers.push(policy_ask(&mut postfix, &data).unwrap_or_default());
    }
    assert_eq!(&answers[..2], ["DUNNO", "DUNNO"], "{answers:?}");
    assert!(
        answers[2..].iter().all(|a| a.starts_with("451")),
        "{answers:?}"
    );
    // Malformed requests: no verdict, the connection closed; everybody else served on.
    let hostile: [&[u8]; 4] = [
        b"protocol_state=RCPT\n\n",
        b"request=smtpd_access_policy\n\xff\xfe\x00junk\n\n",
        b"no equals sign here\n\n",
        &[b'x'; 10_000],
    ];
    for bytes in hostile {
        use std::io::{Read, Write};
        let mut s = connect();
        let _ = s.write_all(bytes);
        let _ = s.write_all(b"\n\n");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(
            !String::from_utf8_lossy(&rest).contains("action="),
            "{rest:?}"
        );
    }
    // A connection that never sends the empty line is closed after `idle`.
    {
        use std::io::{Read, Write};
        let mut s = connect();
        s.write_all(b"request=smtpd_access_policy\n").unwrap();
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty() && started.elapsed() < Duration::from_secs(5));
    }
    let carol = policy_request("DATA", "carol@example.net", "203.0.113.9", "c0");
    assert_eq!(policy_ask(&mut connect(), &carol).as_deref(), Some("DUNNO"));
    let metrics =
        http_get(&lab.server, "127.0.0.1:9465".parse().unwrap(), "/metrics").unwrap_or_default();
    assert!(
        metrics.contains("slowgate_policy_malformed_total{front=\"postfix\"} 5"),
        "{metrics}"
    );
}
