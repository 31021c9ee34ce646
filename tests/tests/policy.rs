//! The policy service with real servers (root): Postfix asking over its policy protocol (port
//! 587) and through the milter (port 2525), both with SASL through Dovecot, and Dovecot asking
//! its authentication policy. The XDP program sits on an interface of its own that carries no
//! traffic, so what is shown here is the policy service's doing, not the NIC's.
//!
//! | namespace | addresses |
//! |---|---|
//! | mta | 198.51.100.1, 203.0.113.1, 2001:db8:5::1 (Postfix, Dovecot, the daemon) |
//! | client | 198.51.100.20 (alice's and bob's mail clients), 203.0.113.66 (a password guesser, in a network of its own), 2001:db8:5::20 |

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use sg_tests::{
    mail::{Extra, Servers, Smtp, imap_login},
    *,
};

const MTA: &str = "198.51.100.1";
const CLIENT: &str = "198.51.100.20";
const GUESSER: &str = "203.0.113.66";
const SUBMISSION: u16 = 587;
const MILTER_PORT: u16 = 2525;
const POLICY: &str = "127.0.0.1:10040";
const DOVECOT_POLICY: &str = "127.0.0.1:10041";
const API_KEY: &str = "X-API-Key: policy-test-key";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn at(port: u16) -> SocketAddr {
    SocketAddr::new(ip(MTA), port)
}

struct Setup {
    mta: Netns,
    _idle: Netns,
    client: Netns,
    servers: Servers,
    pins: PinDir,
    dir: TempDir,
    milter_socket: std::path::PathBuf,
}

impl Setup {
    fn new() -> Setup {
        require_root();
        let mta = Netns::new("pmta").unwrap();
        let client = Netns::new("pcli").unwrap();
        veth(&mta, "pm0", &client, "pc0").unwrap();
        // The XDP program's interface, which carries no traffic here.
        let idle = Netns::new("pidle").unwrap();
        veth(&mta, "sgp0", &idle, "sgp1").unwrap();
        for a in ["198.51.100.1/24", "203.0.113.1/24", "2001:db8:5::1/64"] {
            mta.addr("pm0", a).unwrap();
        }
        for a in ["198.51.100.20/24", "203.0.113.66/24", "2001:db8:5::20/64"] {
            client.addr("pc0", a).unwrap();
        }
        let dir = TempDir::new("policy-servers");
        let milter_socket = dir.path.join("milter.sock");
        let slowgate_policy =
            format!("check_policy_service {{ inet:{POLICY}, timeout=2s, default_action=DUNNO }}");
        let extra = Extra {
            postfix: format!(
                "slowgate_rcpt = {slowgate_policy}, permit_sasl_authenticated, reject\n\
                 slowgate_data = {slowgate_policy}\n\
                 milter_default_action = accept\n"
            ),
            submission: vec![
                "smtpd_recipient_restrictions=$slowgate_rcpt".into(),
                "smtpd_data_restrictions=$slowgate_data".into(),
            ],
            dovecot: format!(
                "auth_policy_server_url = http://{DOVECOT_POLICY}/\n\
                 auth_policy_server_api_header = {API_KEY}\n\
                 auth_policy_hash_nonce = policy-test-nonce\n\
                 auth_policy_reject_on_fail = no\n\
                 auth_policy_check_before_auth = yes\n\
                 auth_policy_check_after_auth = yes\n\
                 auth_policy_report_after_auth = yes\n\
                 auth_policy_server_timeout_msecs = 2000\n"
            ),
            master: format!(
                "{MILTER_PORT}      inet  n       -       n       -       -       smtpd\n\
                 \x20 -o smtpd_sasl_auth_enable=yes\n\
                 \x20 -o smtpd_client_restrictions=permit_sasl_authenticated,reject\n\
                 \x20 -o smtpd_milters=unix:{}\n",
                milter_socket.display()
            ),
        };
        let servers = Servers::start(&mta, &dir.path, &extra).unwrap();
        Setup {
            mta,
            _idle: idle,
            client,
            servers,
            pins: PinDir::new(),
            dir,
            milter_socket,
        }
    }

    fn config(&self) -> String {
        let key_file = self.dir.path.join("dovecot-api-header");
        std::fs::write(&key_file, format!("{API_KEY}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
        format!(
            "interfaces = [\"sgp0\"]\nattach_mode = \"native\"\n\
             [[sources]]\npath = \"{}\"\nformat = \"postfix\"\n\
             [[sources]]\npath = \"{}\"\nformat = \"dovecot\"\n\
             [points]\nhalf_life = \"1h\"\n\
             [points.weights]\nauth_failure = 3.0\nmessage = 0.05\nper_recipient = 0.0\n\
             connection = 0.0\n\
             [[levels]]\npoints = 10\nrate = \"6/min\"\nburst = 6\n\
             [[levels]]\npoints = 20\nblock = true\n\
             [policy]\nlisten = \"{POLICY}\"\nmilter = \"unix:{}\"\n\
             dovecot = \"{DOVECOT_POLICY}\"\ndovecot_api_header_file = \"{}\"\ntarpit = \"2s\"\n\
             login_failures = \"10/h\"\n\
             [users]\nmessages = \"6/min\"\nrecipients = \"100/min\"\n\
             [users.override.\"bob@example.net\"]\nmessages = \"100/min\"\n",
            self.servers.mail_log().display(),
            self.servers.dovecot_log().display(),
            self.milter_socket.display(),
            key_file.display(),
        )
    }

    fn smtp(&self, port: u16, user: &str, pass: &str) -> Smtp {
        let mut s = Smtp::open(&self.client, ip(CLIENT), at(port)).unwrap();
        assert_eq!(s.login(user, pass).unwrap(), 235, "AUTH as {user}");
        s
    }

    /// bob's IMAP login with his password from `src`: whether it worked, and how long it took.
    fn bob_logs_in_from(&self, src: &str) -> (bool, Duration) {
        imap_login(&self.client, ip(src), at(143), "bob@example.net", "bobpw").unwrap()
    }

    fn metrics(&self) -> String {
        let mut page = None;
        until(Duration::from_secs(5), || {
            page = http_get(&self.mta, "127.0.0.1:9420".parse().unwrap(), "/metrics");
            page.is_some()
        });
        page.unwrap_or_default()
    }
}

#[test]
fn users_are_held_to_their_buckets_guessers_are_tarpitted_then_refused_and_all_fails_open() {
    let setup = Setup::new();
    let config = setup.config() + "[metrics]\nlisten = \"127.0.0.1:9420\"\n";
    let mut daemon = Daemon::start(&setup.mta, &config, &setup.pins.path).unwrap();
    let log = |d: &Daemon| format!("{}\n{}", d.log_text(), tail(&setup.servers.mail_log()));

    // Alice (6 a minute) sends six messages in one session on 587; the seventh is deferred
    // with a temporary failure at RCPT, while bob sends on, in the same minutes.
    let mut alice = setup.smtp(SUBMISSION, "alice@example.net", "alicepw");
    for i in 0..6 {
        let (code, text) = alice
            .send(&["alice@example.net"], &format!("alice-{i}"))
            .unwrap();
        assert_eq!(code, 250, "alice's message {i}: {text}\n{}", log(&daemon));
    }
    let (code, text) = alice.send(&["alice@example.net"], "alice-6").unwrap();
    assert_eq!(
        code,
        451,
        "alice's seventh: {code} {text}\n{}",
        log(&daemon)
    );
    assert!(text.starts_with("4.7.1"), "{text}");
    let mut bob = setup.smtp(SUBMISSION, "bob@example.net", "bobpw");
    for i in 0..10 {
        let (code, text) = bob.send(&["bob@example.net"], &format!("bob-{i}")).unwrap();
        assert_eq!(code, 250, "bob's message {i}: {text}");
    }

    // The milter holds her to the same bucket on 2525; bob passes there too.
    let mut alice_milter = setup.smtp(MILTER_PORT, "alice@example.net", "alicepw");
    let (code, text) = alice_milter
        .send(&["alice@example.net"], "alice-milter")
        .unwrap();
    assert_eq!(
        code,
        451,
        "alice through the milter: {text}\n{}",
        log(&daemon)
    );
    let mut bob_milter = setup.smtp(MILTER_PORT, "bob@example.net", "bobpw");
    for i in 0..3 {
        let (code, text) = bob_milter
            .send(&["bob@example.net"], &format!("bob-milter-{i}"))
            .unwrap();
        assert_eq!(
            code,
            250,
            "bob through the milter {i}: {text}\n{}",
            log(&daemon)
        );
    }

    // `show` prints her bucket; the deferred message goes through once it refilled (one
    // message every 10 s), retried the way an MTA retries.
    let (_, shown) = daemon.control(&["show", "user:alice@example.net"], false);
    assert!(
        shown.contains("buckets: messages 0.") && shown.contains(" of 6 (360/h)"),
        "{shown}"
    );
    let refilled = until(Duration::from_secs(15), || {
        let (_, shown) = daemon.control(&["show", "user:alice@example.net"], false);
        let tokens: f64 = shown
            .split("buckets: messages ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0.0);
        // Printed to a tenth: 1.0 may still be 0.96.
        tokens >= 1.1 || {
            std::thread::sleep(Duration::from_millis(500));
            false
        }
    });
    assert!(refilled, "alice's bucket never refilled\n{}", log(&daemon));
    // Retried in a new session, as an MTA's queue retries (Postfix keeps a policy answer for
    // the rest of a session).
    let mut retry = setup.smtp(SUBMISSION, "alice@example.net", "alicepw");
    let (code, text) = retry.send(&["alice@example.net"], "alice-6").unwrap();
    assert_eq!(
        code,
        250,
        "alice's deferred message after the refill: {text}\n{}",
        log(&daemon)
    );
    let delivered = until(Duration::from_secs(15), || {
        setup.servers.delivered("alice", "alice-") == 7
            && setup.servers.delivered("bob", "bob-") == 13
    });
    assert!(
        delivered,
        "alice {} of 7, bob {} of 13 delivered",
        setup.servers.delivered("alice", "alice-"),
        setup.servers.delivered("bob", "bob-")
    );

    // Dovecot: a guesser's failures are reported at once (3 points each, level 1 at 10):
    // its logins are tarpitted (2 s), then refused even with the right password, while
    // bob logs in from his own address.
    let guess = || {
        imap_login(
            &setup.client,
            ip(GUESSER),
            at(143),
            "carol@example.net",
            "nope",
        )
        .unwrap()
    };
    let (ok, quick) = guess();
    assert!(!ok);
    assert!(
        quick < Duration::from_secs(1),
        "the first guess took {quick:?}"
    );
    for _ in 0..3 {
        guess();
    }
    // Its fourth failure puts it at level 1 (12 points) once the learning loop wrote it.
    let limited = until(Duration::from_secs(5), || {
        daemon
            .control(&["show", GUESSER], false)
            .1
            .contains("level:   1")
    });
    assert!(
        limited,
        "the guesser never reached level 1\n{}",
        log(&daemon)
    );
    let (_, slowed) = guess();
    assert!(
        slowed >= Duration::from_millis(1800),
        "a limited guesser's login took {slowed:?}\n{}",
        log(&daemon)
    );
    for _ in 0..4 {
        guess();
    }
    let (ok, _) = setup.bob_logs_in_from(GUESSER);
    assert!(!ok, "a blocked guesser logs in with a right password");
    let (ok, took) = setup.bob_logs_in_from(CLIENT);
    assert!(
        // Dovecot's tarpit is 2 s here; anything shorter is not one.
        ok && took < Duration::from_millis(1900),
        "bob's own login: {ok} in {took:?}\n{}\n{}\n{}",
        daemon.control(&["show", CLIENT], false).1,
        log(&daemon),
        tail(&setup.servers.dovecot_log())
    );
    // Reported failures are not counted again from Dovecot's log lines: 10 failures of 3
    // points are 30 points, not 60 (the guesser's points decay a little meanwhile).
    let (_, shown) = daemon.control(&["show", GUESSER], false);
    let points = shown_points(&shown);
    assert!(
        (25.0..=30.5).contains(&points),
        "the guesser has {points} points\n{shown}"
    );

    // Metrics: verdicts per front end and reason, answer times.
    let metrics = setup.metrics();
    for want in [
        "slowgate_policy_answers_total{front=\"postfix\",verdict=\"defer\",reason=\"user_messages\"}",
        "slowgate_policy_answers_total{front=\"milter\",verdict=\"defer\",reason=\"user_messages\"}",
        "slowgate_policy_answers_total{front=\"dovecot\",verdict=\"tarpit\",reason=\"address_limited\"}",
        "slowgate_policy_answers_total{front=\"dovecot\",verdict=\"reject\",reason=\"address_blocked\"}",
        "slowgate_policy_answer_seconds_bucket{front=\"postfix\",le=\"0.001\"}",
    ] {
        assert!(metrics.contains(want), "{want} missing:\n{metrics}");
    }

    // Hostile input to the milter and to Dovecot's endpoint is refused, and both go on.
    hostile_milter(&setup.milter_socket);
    for (request, status) in [
        (
            "GET /?command=allow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
            "405",
        ),
        (
            dovecot_post("command=allow", "{\"remote\":\"203.0.113.9\"}", false),
            "401",
        ),
        (dovecot_post("command=allow", "{\"remote\":", true), "400"),
        (dovecot_post("command=drop", "{}", true), "400"),
        (
            dovecot_post("command=allow", "{\"remote\":\"not an address\"}", true),
            "400",
        ),
        (
            dovecot_post(
                "command=allow",
                &format!("{{\"login\":\"{}\"}}", "x".repeat(20_000)),
                true,
            ),
            "413",
        ),
    ] {
        let answer = http(&setup.mta, &request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{request:.80} answered {answer:.200}"
        );
    }
    let (ok, _) = setup.bob_logs_in_from(CLIENT);
    assert!(ok, "Dovecot's logins after the hostile requests");
    let mut bob_milter = setup.smtp(MILTER_PORT, "bob@example.net", "bobpw");
    let (code, text) = bob_milter.send(&["bob@example.net"], "bob-after").unwrap();
    assert_eq!(code, 250, "the milter after the hostile frames: {text}");
    // (The metrics page is rendered at most once a second.)
    let malformed = |metrics: &str, front: &str| {
        let name = format!("slowgate_policy_malformed_total{{front=\"{front}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name.as_str()))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut metrics = String::new();
    let counted = until(Duration::from_secs(5), || {
        metrics = setup.metrics();
        malformed(&metrics, "milter") >= 2.0 && malformed(&metrics, "dovecot") >= 5.0
    });
    assert!(counted, "hostile requests not counted:\n{metrics}");

    // Fail-open: with the daemon killed, mail and logins go on. Alice, over her bucket a
    // moment ago, sends eight messages on 587 and through the milter; the guesser's right
    // password works again.
    daemon.kill9();
    let mut alice = setup.smtp(SUBMISSION, "alice@example.net", "alicepw");
    let mut alice_milter = setup.smtp(MILTER_PORT, "alice@example.net", "alicepw");
    for i in 0..4 {
        let (code, text) = alice
            .send(&["alice@example.net"], &format!("open-{i}"))
            .unwrap();
        assert_eq!(code, 250, "without the daemon, on 587: {text}");
        let (code, text) = alice_milter
            .send(&["alice@example.net"], &format!("open-milter-{i}"))
            .unwrap();
        assert_eq!(code, 250, "without the daemon, through the milter: {text}");
    }
    let (ok, took) = setup.bob_logs_in_from(GUESSER);
    assert!(ok, "without the daemon, Dovecot logs in ({took:?})");
    assert!(setup.milter_socket.exists());
}

/// The points `slowgate show` prints for a sender.
fn shown_points(shown: &str) -> f64 {
    shown
        .lines()
        .find_map(|l| l.strip_prefix("points:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(-1.0)
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Frames no milter client sends: junk, a length past any frame, a frame cut short.
fn hostile_milter(socket: &std::path::Path) {
    use std::io::{Read, Write};
    for frame in [
        &b"\x00\x00\x00\x05Xjunk"[..],
        b"\xff\xff\xff\xffO",
        b"\x00\x00\x00\x0dO\x00\x00",
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(frame).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        // The daemon closes the connection (or gives up on it) rather than hang or crash.
        let _ = s.read_to_end(&mut rest);
    }
}

/// A POST as Dovecot sends it, with the API header or without.
fn dovecot_post(query: &str, body: &str, with_key: bool) -> String {
    format!(
        "POST /?{query} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{}Connection: close\r\n\r\n{body}",
        body.len(),
        if with_key {
            format!("{API_KEY}\r\n")
        } else {
            String::new()
        }
    )
}

/// One raw HTTP exchange with Dovecot's policy endpoint, from inside `ns`.
fn http(ns: &Netns, request: &str) -> String {
    use std::io::{Read, Write};
    let addr: SocketAddr = DOVECOT_POLICY.parse().unwrap();
    let mut s = tcp_connect(ns, ip("127.0.0.1"), addr, Duration::from_secs(5)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}
