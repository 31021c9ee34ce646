//! Fleet mode against a real `redis-server`: two hosts, each a daemon protecting its own veth,
//! sharing points and operators' entries through Redis in a namespace of its own (see
//! `sg_tests::fleet`). Root only. Documentation addresses only.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use sg_tests::{fleet::*, *};

#[test]
fn a_sender_spread_over_two_hosts_is_limited_on_both_and_operators_entries_reach_every_host() {
    let f = fleet();
    let redis = Redis::start(&f.redis_ns);
    let (da, db) = f.joined();
    // Three harvest attempts on each host: 6 points each, below level 1 (10) alone.
    append(&f.a.log, &harvest(ATTACKER, 3));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!f.a.limited(ATTACKER), "A alone already limits");
    append(&f.b.log, &harvest(ATTACKER, 3));
    assert!(
        f.b.limited_within(ATTACKER, Duration::from_secs(3)),
        "B: {}",
        db.log_text()
    );
    assert!(
        f.a.limited_within(ATTACKER, Duration::from_secs(3)),
        "A: {}",
        da.log_text()
    );
    assert!(!f.a.connects() && !f.b.connects(), "not dropped on both");
    // `show` says who contributed what; Redis holds both contributions.
    let (_, shown) = da.control(&["show", ATTACKER], false);
    assert!(
        shown.contains("fleet:") && shown.contains("mx-a 6.0") && shown.contains("mx-b 6.0"),
        "{shown}"
    );
    let stored = redis.cli(&["HGETALL", &format!("slowgate:{{{ATTACKER}}}:points")]);
    assert!(
        stored.contains("mx-a") && stored.contains("mx-b"),
        "{stored}"
    );
    let ttl: i64 = redis
        .cli(&["TTL", &format!("slowgate:{{{ATTACKER}}}:points")])
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0, "the contribution key never expires ({ttl})");
    // An operator's deny on A drops on B; its removal on B frees it on A.
    let other = "203.0.113.77";
    let (ok, out) = da.control(&["deny", "add", other, "--comment", "fleet test"], false);
    assert!(ok, "{out}");
    assert!(
        until(Duration::from_secs(3), || f.b.denied(other)),
        "{}",
        db.log_text()
    );
    let (ok, out) = db.control(&["deny", "del", other], false);
    assert!(ok, "{out}");
    assert!(until(Duration::from_secs(3), || !f.a.denied(other)));
    // A release on one host applies fleet-wide (the address, and its /24, which the same
    // attempts limited).
    for who in [ATTACKER, "198.51.100.0/24"] {
        let (ok, out) = db.control(&["release", who], false);
        assert!(ok, "{out}");
    }
    assert!(until(Duration::from_secs(3), || !f.a.limited(ATTACKER)
        && !f.b.limited(ATTACKER)));
    assert!(
        until(Duration::from_secs(3), || f.a.connects() && f.b.connects()),
        "{}",
        da.log_text()
    );
}

#[test]
fn a_frozen_killed_or_empty_redis_never_stops_a_host_and_the_fleet_recovers() {
    let f = fleet();
    let mut redis = Redis::start(&f.redis_ns);
    let (da, db) = f.joined();
    // Frozen (SIGSTOP): lines still become local limits within the usual time, and commands
    // answer at once.
    redis.signal(libc::SIGSTOP);
    let started = Instant::now();
    append(&f.a.log, &harvest("198.51.100.20", 6));
    assert!(
        f.a.limited_within("198.51.100.20", Duration::from_secs(3)),
        "{}",
        da.log_text()
    );
    let status_took = Instant::now();
    let pins = f.a.pins.path.to_string_lossy().into_owned();
    let (ok, out) = da.control(&["--pin-dir", &pins, "status"], false);
    assert!(ok, "{out}");
    assert!(
        status_took.elapsed() < Duration::from_secs(2),
        "status hung on a frozen Redis"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(until(Duration::from_secs(5), || f
        .a
        .metrics()
        .contains("slowgate_fleet_up 0")));
    redis.signal(libc::SIGCONT);
    assert!(until(Duration::from_secs(10), || f
        .a
        .metrics()
        .contains("slowgate_fleet_up 1")));
    // Killed, then restarted empty: both hosts work alone meanwhile, then refill it.
    redis.kill();
    append(&f.b.log, &harvest("198.51.100.21", 6));
    assert!(f.b.limited_within("198.51.100.21", Duration::from_secs(3)));
    // B restarts while Redis is down: it starts alone.
    drop(db);
    let db = f.b.start();
    assert!(db.log_text().contains("working alone"), "{}", db.log_text());
    let redis = Redis::start(&f.redis_ns);
    let key = "slowgate:{198.51.100.20}:points";
    assert!(
        until(Duration::from_secs(10), || redis
            .cli(&["HGET", key, "mx-a"])
            .trim()
            .len()
            > 1),
        "A did not refill the empty Redis: {}",
        da.log_text()
    );
    assert!(until(Duration::from_secs(10), || f
        .b
        .metrics()
        .contains("slowgate_fleet_up 1")));
    // B joined late and learns A's points from the refill.
    assert!(
        f.b.limited_within("198.51.100.20", Duration::from_secs(10)),
        "{}",
        db.log_text()
    );
}

#[test]
fn hostile_data_written_into_redis_by_hand_is_refused() {
    let f = fleet();
    let redis = Redis::start(&f.redis_ns);
    let (da, _db) = f.joined();
    let channel = "slowgate:events";
    let hostile = [
        r#"{"t":"l","h":"evil","c":{"op":"add","list":"deny","network":"0.0.0.0/0"}}"#,
        r#"{"t":"l","h":"evil","c":{"op":"add","list":"deny","network":"::/0"}}"#,
        r#"{"t":"l","h":"evil","c":{"op":"add","list":"deny","network":"198.0.0.0/8"}}"#,
        r#"{"t":"p","h":"evil","s":"198.51.100.10","p":1e300,"at":1}"#,
        r#"{"t":"p","h":"evil","s":"0.0.0.0/0","p":50,"at":1}"#,
        "not json at all",
    ];
    for message in hostile {
        redis.cli(&["PUBLISH", channel, message]);
    }
    redis.cli(&[
        "HSET",
        "slowgate:{lists}",
        "deny 0.0.0.0/0",
        r#"{"op":"add","list":"deny","network":"0.0.0.0/0"}"#,
    ]);
    redis.cli(&["HSET", "slowgate:{198.51.100.10}:points", "evil", "nan 1"]);
    redis.cli(&["HSET", "slowgate:{0.0.0.0/0}:points", "evil", "50 1"]);
    // Refused and counted; nothing denied, nobody limited; the host still serves.
    assert!(
        until(Duration::from_secs(5), || {
            f.a.metrics()
                .lines()
                .find_map(|l| l.strip_prefix("slowgate_fleet_refused_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .is_some_and(|v| v >= 6.0)
        }),
        "{}",
        f.a.metrics()
    );
    let denied = f.a.cli(&["deny", "list"]);
    assert!(
        !denied.contains("0.0.0.0") && !denied.contains("198.0.0.0"),
        "{denied}"
    );
    assert!(!f.a.limited(ATTACKER));
    assert!(f.a.connects(), "{}", da.log_text());
}

#[test]
fn the_password_never_shows_and_a_world_readable_password_file_is_refused() {
    require_root();
    let tmp = TempDir::new("fleetpw");
    let file = tmp.path.join("redis.pass");
    std::fs::write(&file, "s3cret-pa55\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = tmp.path.join("slowgate.toml");
    let write = |url: &str| {
        std::fs::write(
            &config,
            format!(
                "interfaces = [\"lo\"]\n[fleet]\nurl = \"{url}\"\nname = \"mx1\"\n\
                 password_file = \"{}\"\n",
                file.display()
            ),
        )
        .unwrap();
    };
    write("redis://user:urlpa55@203.0.113.49:6379/0");
    let check = || {
        said(
            &Command::new(bin())
                .arg("--config")
                .arg(&config)
                .arg("check-config")
                .output()
                .unwrap(),
        )
    };
    let (ok, out) = check();
    assert!(!ok && out.contains("readable by others"), "{out}");
    assert!(!out.contains("s3cret") && !out.contains("urlpa55"), "{out}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (ok, out) = check();
    assert!(ok, "{out}");
    assert!(!out.contains("s3cret") && !out.contains("urlpa55"), "{out}");
    write("http://user:urlpa55@203.0.113.49:6379/0");
    let (ok, out) = check();
    assert!(!ok && out.contains("fleet.url"), "{out}");
    assert!(!out.contains("urlpa55"), "{out}");
}

#[test]
fn in_a_fleet_one_host_fetches_a_feed_and_the_other_takes_its_copy() {
    use sg_tests::feed_server::{FeedServer, Serve};
    let mut f = fleet();
    let _redis = Redis::start(&f.redis_ns);
    // The feed's server sits beside Redis, reachable from both hosts.
    let body: String = std::iter::once(format!("{ATTACKER}\n"))
        .chain((1..=20).map(|i| format!("2001:db8:ffff::{i:x}\n")))
        .collect();
    let server = FeedServer::start(
        &f.redis_ns,
        "0.0.0.0:8081".parse().unwrap(),
        Serve::Body {
            body,
            etag: "\"v1\"".into(),
        },
    )
    .unwrap();
    for (host, addr) in [(&mut f.a, "203.0.113.49"), (&mut f.b, "203.0.113.53")] {
        host.config += &format!(
            "[[feeds]]\nname = \"shared\"\nurl = \"http://{addr}:8081/drop.txt\"\n\
             format = \"plain\"\naction = \"deny\"\nrefresh = \"1h\"\ntimeout = \"2s\"\n"
        );
    }
    let da = f.a.start();
    assert!(
        until(Duration::from_secs(10), || f.a.denied(ATTACKER)),
        "{}",
        da.log_text()
    );
    let db = f.b.start();
    assert!(
        until(Duration::from_secs(10), || f.b.denied(ATTACKER)),
        "{}",
        db.log_text()
    );
    assert!(
        db.log_text().contains("from the host that fetches it"),
        "{}",
        db.log_text()
    );
    assert_eq!(server.asked.lock().unwrap().len(), 1, "both hosts fetched");
    assert!(!f.b.connects() && !f.a.connects());
}

/// One policy request for `user` at `state` to the policy service on `ns`'s 127.0.0.1:10040;
/// the action.
fn policy_action(ns: &Netns, state: &str, user: &str, instance: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let addr = "127.0.0.1:10040".parse().unwrap();
    let stream = tcp_connect(
        ns,
        "127.0.0.1".parse().unwrap(),
        addr,
        Duration::from_secs(3),
    )
    .expect("connect to the policy service");
    let mut writer = stream.try_clone().unwrap();
    write!(
        writer,
        "request=smtpd_access_policy\nprotocol_state={state}\nsasl_username={user}\n\
         client_address=203.0.113.7\ninstance={instance}\nrecipient_count=1\n\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line.trim().trim_start_matches("action=").to_string()
}

#[test]
fn a_users_buckets_are_fleet_wide_and_each_host_keeps_its_own_without_redis() {
    let mut f = fleet();
    for host in [&mut f.a, &mut f.b] {
        host.config
            .push_str("[policy]\nlisten = \"127.0.0.1:10040\"\n[users]\nmessages = \"5/h\"\n");
    }
    let mut redis = Redis::start(&f.redis_ns);
    let (da, db) = f.joined();
    // alice sends 3 messages through A: B, which saw none, lets her send 2 more, not 3.
    for i in 0..3 {
        let action = policy_action(&f.a.ns, "DATA", "alice@example.net", &format!("a{i}"));
        assert_eq!(action, "DUNNO", "A, message {i}: {}", da.log_text());
    }
    std::thread::sleep(Duration::from_secs(1));
    for i in 0..2 {
        let action = policy_action(&f.b.ns, "DATA", "alice@example.net", &format!("b{i}"));
        assert_eq!(action, "DUNNO", "B, message {i}");
    }
    let action = policy_action(&f.b.ns, "RCPT", "alice@example.net", "b2");
    assert!(
        action.starts_with("451"),
        "B let her send a 6th: {action}\n{}",
        db.log_text()
    );
    // And back: A saw B's two.
    std::thread::sleep(Duration::from_secs(1));
    let action = policy_action(&f.a.ns, "RCPT", "alice@example.net", "a3");
    assert!(action.starts_with("451"), "A let her send a 6th: {action}");
    // bob is his own: five on B.
    for i in 0..5 {
        let action = policy_action(&f.b.ns, "DATA", "bob@example.net", &format!("bob{i}"));
        assert_eq!(action, "DUNNO", "bob's message {i}");
    }
    // Without Redis each host answers at once from its own buckets.
    redis.kill();
    let began = Instant::now();
    let action = policy_action(&f.a.ns, "DATA", "carol@example.net", "c0");
    assert_eq!(action, "DUNNO");
    assert!(began.elapsed() < Duration::from_millis(500));
}
