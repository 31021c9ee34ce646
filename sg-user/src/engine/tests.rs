use super::*;
use crate::events::RejectKind;
use crate::events::Service;
use std::collections::HashMap;
use std::time::Duration;

const SECOND: u64 = 1_000_000_000;
const MINUTE: u64 = 60 * SECOND;

fn rate(r: &str, burst: u32) -> Limit {
    Limit::Rate {
        rate: r.parse().unwrap(),
        burst,
    }
}

fn levels() -> Vec<LevelRow> {
    vec![
        LevelRow {
            points: 10.0,
            limit: rate("30/min", 10),
        },
        LevelRow {
            points: 30.0,
            limit: rate("6/min", 3),
        },
        LevelRow {
            points: 60.0,
            limit: Limit::Block,
        },
    ]
}

fn config() -> EngineConfig {
    EngineConfig {
        weights: Weights::default(),
        half_life: Duration::from_secs(600),
        levels: levels(),
        country_levels: HashMap::new(),
        country_multipliers: HashMap::new(),
        down_fraction: 0.8,
        min_hold: Duration::from_secs(60),
        refusal_hold_max: Duration::from_secs(86_400),
        prefix_v4: 24,
        prefix_v6: 64,
        network_v4: 16,
        network_v6: 48,
        network_after: 3,
        min_sources_v4: 3,
        min_sources_v6: 1,
        max_tracked: 1000,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn harvest(source: &str) -> Event {
    Event::new(
        EventKind::Reject {
            reject: RejectKind::UnknownRecipient,
        },
        ip(source),
    )
}

fn record_n(e: &mut Engine, event: &Event, n: usize, now: u64) -> Vec<Change> {
    (0..n).flat_map(|_| e.record(event, now)).collect()
}

#[test]
fn points_halve_every_half_life() {
    let mut e = Engine::new(config());
    let s = Sender::Source(ip("203.0.113.9"));
    e.record(&harvest("203.0.113.9"), 0);
    assert!((e.points(&s, 0) - 2.0).abs() < 1e-6);
    assert!((e.points(&s, 10 * MINUTE) - 1.0).abs() < 1e-6);
    assert!((e.points(&s, 20 * MINUTE) - 0.5).abs() < 1e-6);
}

#[test]
fn a_burst_climbs_straight_to_the_level_it_earns_and_says_why() {
    let mut e = Engine::new(config());
    let changes = record_n(&mut e, &harvest("203.0.113.9"), 35, 0);
    let source: Vec<&Change> = changes
        .iter()
        .filter(|c| c.sender == Sender::Source(ip("203.0.113.9")))
        .collect();
    let steps: Vec<(usize, usize)> = source.iter().map(|c| (c.from, c.to)).collect();
    assert_eq!(steps, [(0, 1), (1, 2), (2, 3)]);
    assert_eq!(source[0].events, [("unknown_recipient", 5)]);
    assert_eq!(source[2].limit, Some(Limit::Block));
    assert_eq!(
        source[0].to_string(),
        "203.0.113.9 level 0 -> 1 (10.0 points; unknown_recipient x5): limited to 30/min burst 10"
    );
}

#[test]
fn decay_brings_a_sender_down_one_level_at_a_time() {
    let mut e = Engine::new(config());
    let s = Sender::Source(ip("203.0.113.9"));
    record_n(&mut e, &harvest("203.0.113.9"), 40, 0); // 80 points: level 3
    assert_eq!(e.level(&s), 3);
    let mut history = Vec::new();
    let mut now = 0;
    while now < 120 * MINUTE {
        now += MINUTE;
        for c in e.tick(now) {
            if c.sender == s {
                history.push((now / MINUTE, c.from, c.to));
            }
        }
    }
    let steps: Vec<(usize, usize)> = history.iter().map(|h| (h.1, h.2)).collect();
    assert_eq!(steps, [(3, 2), (2, 1), (1, 0)]);
    // 80 points fall under 48 (80% of 60) after 7.4 min, under 24 after 17.4, under 8 after
    // 33.2: the steps come at the next tick after each.
    let minutes: Vec<u64> = history.iter().map(|h| h.0).collect();
    assert_eq!(minutes, [8, 18, 34]);
}

#[test]
fn hysteresis_holds_a_level_for_min_hold_even_when_points_drop() {
    let mut cfg = config();
    cfg.min_hold = Duration::from_secs(3600);
    let mut e = Engine::new(cfg);
    let s = Sender::Source(ip("203.0.113.9"));
    record_n(&mut e, &harvest("203.0.113.9"), 5, 0); // 10 points: level 1
    assert_eq!(e.level(&s), 1);
    // After 50 min the points are ~0.3, far below 8, but the hour is not over.
    assert!(e.tick(50 * MINUTE).is_empty());
    assert_eq!(e.level(&s), 1);
    let down = e.tick(61 * MINUTE);
    assert!(down.iter().any(|c| c.sender == s && c.to == 0));
}

#[test]
fn addresses_rotating_inside_a_64_add_up_on_the_prefix() {
    let mut e = Engine::new(config());
    for i in 0..20 {
        e.record(&harvest(&format!("2001:db8:a::{i:x}")), 0);
    }
    let prefix = Sender::Prefix("2001:db8:a::/64".parse().unwrap());
    assert_eq!(e.level(&prefix), 2);
    assert_eq!(e.level(&Sender::Source(ip("2001:db8:a::1"))), 0);
}

#[test]
fn a_network_is_limited_once_three_of_its_prefixes_are_and_released_with_them() {
    let mut e = Engine::new(config());
    let network = Sender::Network("2001:db8:a::/48".parse().unwrap());
    for p in 1..=2 {
        record_n(&mut e, &harvest(&format!("2001:db8:a:{p}::1")), 5, 0);
    }
    assert_eq!(e.level(&network), 0, "two limited /64s are not enough");
    let changes = record_n(&mut e, &harvest("2001:db8:a:3::1"), 15, 0);
    assert!(changes.iter().any(|c| c.sender == network && c.to == 2));
    // A /64 of another /48 does not count.
    record_n(&mut e, &harvest("2001:db8:b:1::1"), 5, 0);
    assert_eq!(e.level(&network), 2);
    let mut now = 0;
    while e.level(&network) > 0 && now < 600 * MINUTE {
        now += MINUTE;
        e.tick(now);
    }
    assert_eq!(e.level(&network), 0, "released as its prefixes come down");
}

#[test]
fn a_users_level_reaches_every_address_it_logs_in_from() {
    let mut e = Engine::new(config());
    let login = |source: &str| {
        Event::new(
            EventKind::AuthSuccess {
                service: Service::Submission,
            },
            ip(source),
        )
        .with_user(Some("alice"))
    };
    let spam = |source: &str| {
        Event::new(
            EventKind::MessageAccepted {
                recipients: 50,
                size: 1000,
            },
            ip(source),
        )
        .with_user(Some("alice"))
    };
    e.record(&login("198.51.100.10"), 0);
    // 2.7 points a message from one address: alice reaches level 1 after 4 messages.
    record_n(&mut e, &spam("198.51.100.10"), 4, 0);
    assert_eq!(e.level(&Sender::User("alice".into())), 1);
    assert_eq!(e.level(&Sender::Source(ip("198.51.100.10"))), 1);
    // A new address logging in as alice is limited at once.
    let changes = e.record(&login("203.0.113.200"), SECOND);
    assert!(
        changes
            .iter()
            .any(|c| c.sender == Sender::Source(ip("203.0.113.200")) && c.to == 1)
    );
}

#[test]
fn failed_logins_typed_with_a_name_never_limit_that_users_real_addresses() {
    let mut e = Engine::new(config());
    let home = "198.51.100.10";
    // Anyone who knows alice's login fails as her, from many addresses, many times.
    for i in 0..200u32 {
        let guesser = format!("203.0.113.{}", i % 50 + 1);
        let failure = Event::new(
            EventKind::AuthFailure {
                service: Service::Imap,
            },
            ip(&guesser),
        )
        .with_user(Some("alice"));
        e.record(&failure, u64::from(i) * SECOND);
    }
    assert_eq!(e.level(&Sender::User("alice".into())), 0);
    // Alice logs in from home and sends a message: she and her address stay untouched.
    let login = Event::new(
        EventKind::AuthSuccess {
            service: Service::Submission,
        },
        ip(home),
    )
    .with_user(Some("alice"));
    let changes = e.record(&login, 300 * SECOND);
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(e.level(&Sender::Source(ip(home))), 0);
    // The guessers' own addresses and prefix earned the failures.
    assert!(e.level(&Sender::Prefix("203.0.113.0/24".parse().unwrap())) > 0);
}

#[test]
fn a_reload_that_removes_levels_brings_every_sender_within_the_new_table() {
    let mut e = Engine::new(config());
    // 35 harvests: 70 points, blocked (level 3) as source and as prefix.
    record_n(&mut e, &harvest("203.0.113.9"), 35, 0);
    let source = Sender::Source(ip("203.0.113.9"));
    assert_eq!(e.level(&source), 3);
    let mut smaller = config();
    smaller.levels = vec![LevelRow {
        points: 10.0,
        limit: rate("12/min", 5),
    }];
    let changes = e.set_config(smaller, SECOND);
    let to_source = changes
        .iter()
        .find(|c| c.sender == source)
        .expect("the source is re-aligned");
    assert_eq!((to_source.from, to_source.to), (3, 1));
    assert_eq!(to_source.limit, Some(rate("12/min", 5)), "no block is left");
    assert_eq!(e.level(&source), 1);
    // And it comes down to 0 as its points decay.
    let mut now = SECOND;
    while e.level(&source) > 0 && now < 600 * MINUTE {
        now += MINUTE;
        e.tick(now);
    }
    assert_eq!(e.level(&source), 0);
    // A reload that changes nothing says nothing.
    record_n(&mut e, &harvest("203.0.113.10"), 10, now);
    let same = e.config.clone();
    assert!(e.set_config(same, now).is_empty());
}

#[test]
fn an_allowed_sender_never_gets_points_or_a_limit() {
    let mut e = Engine::new(config());
    e.set_allowed(vec!["203.0.113.0/24".parse().unwrap()]);
    assert!(record_n(&mut e, &harvest("203.0.113.9"), 100, 0).is_empty());
    assert_eq!(e.tracked(), 0);
}

#[test]
fn countries_weigh_events_and_may_have_their_own_levels() {
    // GeoLite2 test data: 81.2.69.142 is GB, 111.235.160.1 is CN (lookups only, no traffic).
    let geo = Geo::from_bytes(
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/geoip/GeoLite2-Country-Test.mmdb"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(geo.country(ip("81.2.69.142")), Some(*b"GB"));
    assert_eq!(geo.country(ip("111.235.160.1")), Some(*b"CN"));
    assert_eq!(geo.country(ip("203.0.113.9")), None);
    let mut cfg = config();
    cfg.country_multipliers.insert(*b"CN", 2.0);
    cfg.country_levels.insert(
        *b"GB",
        vec![LevelRow {
            points: 100.0,
            limit: rate("1/s", 5),
        }],
    );
    let mut e = Engine::new(cfg).with_geo(Some(geo));
    record_n(&mut e, &harvest("111.235.160.1"), 3, 0);
    assert!((e.points(&Sender::Source(ip("111.235.160.1")), 0) - 12.0).abs() < 1e-6);
    assert_eq!(e.level(&Sender::Source(ip("111.235.160.1"))), 1);
    assert!((e.points(&Sender::Country(*b"CN"), 0) - 12.0).abs() < 1e-6);
    // GB's looser table: 40 points are no level at all there.
    record_n(&mut e, &harvest("81.2.69.142"), 20, 0);
    assert_eq!(e.level(&Sender::Source(ip("81.2.69.142"))), 0);
    record_n(&mut e, &harvest("81.2.69.142"), 30, 0);
    let gb = Sender::Source(ip("81.2.69.142"));
    assert_eq!(e.level(&gb), 1);
    assert_eq!(e.limit_for(&gb, 1), Some(rate("1/s", 5)));
}

#[test]
fn memory_is_bounded_and_the_worst_offenders_are_kept() {
    let mut cfg = config();
    cfg.max_tracked = 50;
    let mut e = Engine::new(cfg);
    record_n(&mut e, &harvest("203.0.113.9"), 40, 0);
    for i in 0..500u32 {
        let addr = IpAddr::from([198, 51, (i / 250) as u8, (i % 250) as u8]);
        e.record(&Event::new(EventKind::Connection, addr), SECOND);
    }
    assert!(e.tracked() <= 50);
    assert_eq!(e.level(&Sender::Source(ip("203.0.113.9"))), 3);
}

#[test]
fn a_tick_looks_only_at_the_senders_that_came_due() {
    let mut e = Engine::new(EngineConfig {
        max_tracked: 100_000,
        ..config()
    });
    // 20,000 sources with 2 points each, each in a /64 of its own: nothing to do for an
    // hour.
    for i in 0..20_000u32 {
        e.record(
            &harvest(&format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff)),
            0,
        );
    }
    let tracked = e.tracked();
    let before = e.timer_pops();
    for minute in 1..=30 {
        assert!(e.tick(minute * MINUTE).is_empty());
    }
    assert_eq!(
        e.timer_pops(),
        before,
        "idle ticks looked at tracked senders"
    );
    // One sender climbs to level 3: the ticks that step it down look at it (and its /24)
    // a handful of times, not at the 20,000 others.
    let s = Sender::Source(ip("203.0.113.9"));
    record_n(&mut e, &harvest("203.0.113.9"), 40, 30 * MINUTE);
    let mut steps = 0;
    for minute in 31..=70 {
        steps += e
            .tick(minute * MINUTE)
            .iter()
            .filter(|c| c.sender == s)
            .count();
    }
    assert_eq!(steps, 3);
    assert!(
        e.timer_pops() - before < 20,
        "{} pops",
        e.timer_pops() - before
    );
    assert_eq!(e.tracked(), tracked + 2);
    // Two points fall under 0.01 after 7.6 half-lives (77 min): then all go at once.
    e.tick(200 * MINUTE);
    assert_eq!(e.tracked(), 0);
}

#[test]
fn the_limited_set_follows_every_way_a_level_changes() {
    let mut e = Engine::new(config());
    let check = |e: &Engine, now: u64| {
        let walked = e.tracked.iter().filter(|(_, t)| t.level > 0).count();
        assert_eq!(e.limited_count(), walked);
        assert_eq!(e.limited(now).len(), walked);
    };
    for i in 0..5 {
        record_n(&mut e, &harvest(&format!("203.0.113.{i}")), 10 + 5 * i, 0);
    }
    check(&e, 0);
    e.release(&Sender::Source(ip("203.0.113.4")), 0);
    check(&e, 0);
    e.set_config(
        EngineConfig {
            levels: levels()[..1].to_vec(),
            ..config()
        },
        MINUTE,
    );
    check(&e, MINUTE);
    for minute in 2..120 {
        e.tick(minute * MINUTE);
        check(&e, minute * MINUTE);
    }
    assert_eq!(e.limited_count(), 0);
}

#[test]
fn refusals_hold_a_knocking_sender_at_its_level_for_the_maximum_at_most() {
    let mut e = Engine::new(EngineConfig {
        refusal_hold_max: Duration::from_secs(3600),
        ..config()
    });
    let s = Sender::Source(ip("203.0.113.9"));
    record_n(&mut e, &harvest("203.0.113.9"), 40, 0); // level 3
    // Refused every minute: its points decay, its level stays.
    for minute in 1..=50 {
        assert!(e.refused(&s, minute * MINUTE));
        let changes = e.tick(minute * MINUTE);
        assert!(changes.iter().all(|c| c.sender != s), "minute {minute}");
    }
    assert_eq!(e.level(&s), 3);
    // It stops knocking: down one level at a time, a `min_hold` apart (its points are long
    // under every threshold); the last refusal holds a full `min_hold` and a second, so the
    // first step is at the first tick after that.
    let mut steps = Vec::new();
    for minute in 51..=60 {
        for c in e
            .tick(minute * MINUTE)
            .into_iter()
            .filter(|c| c.sender == s)
        {
            steps.push((minute, c.from, c.to));
        }
    }
    assert_eq!(steps, [(52, 3, 2), (53, 2, 1), (54, 1, 0)]);
    // Refusals that go on past the maximum (an hour from the first) hold it no more.
    let t = Sender::Source(ip("203.0.113.12"));
    record_n(&mut e, &harvest("203.0.113.12"), 40, 100 * MINUTE);
    let mut minute = 100;
    while e.level(&t) == 3 {
        minute += 1;
        e.refused(&t, minute * MINUTE);
        e.tick(minute * MINUTE);
        assert!(minute < 200, "held forever");
    }
    // The last refusal that held (minute 160) holds a `min_hold` and a second: the step is
    // at the tick after.
    assert_eq!(
        minute, 162,
        "held for the hour from the first refusal, then let down"
    );
}

#[test]
fn refusals_never_raise_a_sender() {
    let mut e = Engine::new(config());
    let s = Sender::Source(ip("203.0.113.10"));
    e.record(&harvest("203.0.113.10"), 0); // 2 points, level 0
    for minute in 1..=10 {
        assert!(!e.refused(&s, minute * MINUTE));
    }
    assert_eq!(e.level(&s), 0);
    assert!(!e.refused(&Sender::Source(ip("203.0.113.11")), MINUTE));
}

#[test]
fn one_spamming_ipv4_address_never_limits_its_neighbours() {
    let mut e = Engine::new(config());
    record_n(&mut e, &harvest("203.0.113.9"), 40, 0); // 80 points: blocked
    assert_eq!(e.level(&Sender::Source(ip("203.0.113.9"))), 3);
    let prefix = Sender::Prefix("203.0.113.0/24".parse().unwrap());
    assert_eq!(e.level(&prefix), 0, "its /24 holds the neighbours");
    // A neighbour that lost one connection contributes nothing and stays free.
    e.record(
        &Event::new(EventKind::LostEarly, ip("203.0.113.10")),
        SECOND,
    );
    e.record(
        &Event::new(EventKind::LostEarly, ip("203.0.113.11")),
        SECOND,
    );
    assert_eq!(e.level(&prefix), 0);
    assert_eq!(e.level(&Sender::Source(ip("203.0.113.10"))), 0);
}

#[test]
fn a_sender_rotating_through_a_slash_24_is_limited_as_one() {
    let mut e = Engine::new(config());
    let prefix = Sender::Prefix("203.0.113.0/24".parse().unwrap());
    // Each address sends a few harvest attempts and moves on, below its own first level.
    let mut levels = Vec::new();
    for host in 1..=6 {
        let addr = format!("203.0.113.{host}");
        record_n(&mut e, &harvest(&addr), 4, host * SECOND); // 8 points each
        assert_eq!(e.level(&Sender::Source(ip(&addr))), 0);
        levels.push(e.level(&prefix));
    }
    // 2 addresses: nothing; the 3rd justifies level 1, each further one a level more (capped
    // by the prefix's points: 48 points reach level 2 of this table).
    assert_eq!(levels, [0, 0, 1, 2, 2, 2]);
}

#[test]
fn an_ipv6_slash_64_is_one_customer_and_follows_its_one_address() {
    let mut e = Engine::new(config());
    record_n(&mut e, &harvest("2001:db8:1:2::9"), 10, 0);
    let prefix = Sender::Prefix("2001:db8:1:2::/64".parse().unwrap());
    assert_eq!(e.level(&prefix), 1);
}

#[test]
fn an_addresss_refusals_hold_its_prefix_too() {
    let mut e = Engine::new(config());
    let s = Sender::Source(ip("2001:db8:1:2::9"));
    let p = Sender::Prefix("2001:db8:1:2::/64".parse().unwrap());
    record_n(&mut e, &harvest("2001:db8:1:2::9"), 40, 0); // both at level 3
    assert_eq!((e.level(&s), e.level(&p)), (3, 3));
    for minute in 1..=50 {
        assert!(e.refused(&s, minute * MINUTE));
        e.tick(minute * MINUTE);
    }
    assert_eq!((e.level(&s), e.level(&p)), (3, 3));
}

#[test]
fn other_hosts_points_raise_the_level_but_only_own_points_are_published_and_saved() {
    let mut e = Engine::new(config());
    e.share_changes();
    let source = Sender::Source(ip("203.0.113.66"));
    let now = 10 * MINUTE;
    // Three own harvest attempts (weight 2 each by default: 6 points), below level 1 alone.
    record_n(&mut e, &harvest("203.0.113.66"), 3, now);
    assert_eq!(e.level(&source), 0);
    let own = e.own_points(&source, now);
    let published = e.take_changed(now);
    assert!(
        published
            .iter()
            .any(|(s, p)| *s == source && (*p - own).abs() < 1e-6)
    );
    assert!(e.take_changed(now).is_empty(), "taken once");
    // Another host's 5 points: together past level 1 (10).
    let changes = e.add_peer_points(&source, 5.0, now);
    assert_eq!(e.level(&source), 1, "{changes:?}");
    assert!(
        (e.own_points(&source, now) - own).abs() < 1e-3,
        "own points unchanged"
    );
    assert!(
        e.take_changed(now).is_empty(),
        "peers' points are not ours to publish"
    );
    // Saved: only our own.
    let rows = e.snapshot(now, 1_000_000).rows(100);
    let row = rows.iter().find(|r| r.id == "203.0.113.66").unwrap();
    assert!((f64::from(row.points) - own).abs() < 1e-3, "{row:?}");
    // The other host's contribution shrinks (released there): back below the threshold, and
    // the level comes down as it would by decay.
    e.add_peer_points(&source, -5.0, now);
    assert!((e.points(&source, now) - own).abs() < 1e-3);
    let later = now + 10 * MINUTE;
    e.tick(later);
    assert_eq!(e.level(&source), 0);
    // Allow-listed senders take none.
    e.set_allowed(vec!["198.51.100.0/24".parse().unwrap()]);
    let allowed = Sender::Source(ip("198.51.100.7"));
    e.add_peer_points(&allowed, 100.0, later);
    assert_eq!(e.level(&allowed), 0);
}
