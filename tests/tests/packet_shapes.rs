//! No packet shape lets a denied, blocked or limited source open a connection: generated SYNs
//! (VLAN stacks, IPv4 options and fragments, IPv6 extension-header chains of every kind, count
//! and length, cuts) sent on a veth to a real listener behind the attached program. The same
//! shapes from an unlisted source show which ones the Linux stack accepts, so the test proves
//! it covers shapes that reach the listener. Root only. Documentation addresses only.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    thread,
    time::Duration,
};

use sg_tests::{
    shapes::{Path, RawLink, Shape, mac_text, shapes},
    *,
};

const SERVER_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 2];
const SMTP: u16 = 25;

/// (role, source): an unlisted source first, then the ones that must never get a SYN-ACK.
const SOURCES: [(&str, &str); 7] = [
    ("open", "198.51.100.10"),
    ("open", "2001:db8:1::10"),
    ("denied", "198.51.100.66"),
    ("denied", "2001:db8:1::66"),
    ("blocked", "198.51.100.67"),
    ("blocked", "2001:db8:1::67"),
    ("limited", "2001:db8:1::68"),
];

#[test]
fn no_packet_shape_gets_a_denied_blocked_or_limited_source_a_syn_ack() {
    require_root();
    let server = Netns::new("shs").unwrap();
    let client = Netns::new("shc").unwrap();
    veth(&server, "sh0", &client, "shc0").unwrap();
    server
        .ip(&["link", "set", "sh0", "address", &mac_text(&SERVER_MAC)])
        .unwrap();
    client
        .ip(&["link", "set", "shc0", "address", &mac_text(&CLIENT_MAC)])
        .unwrap();
    server.addr("sh0", "198.51.100.1/24").unwrap();
    server.addr("sh0", "2001:db8:1::1/64").unwrap();
    // The sources have no stack of their own (the frames are raw): the server finds them by
    // static neighbour entries.
    for (_, src) in SOURCES {
        server
            .ip(&[
                "neigh",
                "replace",
                src,
                "lladdr",
                &mac_text(&CLIENT_MAC),
                "dev",
                "sh0",
                "nud",
                "permanent",
            ])
            .unwrap();
    }
    let _listener = Listeners::start(&server, &[SMTP]).unwrap();
    let pins = PinDir::new();
    let config = "interfaces = [\"sh0\"]\nattach_mode = \"native\"\n[ceiling]\n\
                  [capacity]\nlists = 1024\npolicies = 1024\nsources = 4096\nprefixes = 1024\n";
    let _daemon = Daemon::start(&server, config, &pins.path).unwrap();
    for (role, src) in SOURCES {
        let args: Vec<&str> = match role {
            "denied" => vec!["deny", "add", src],
            "blocked" => vec!["limit", "set", src, "--block"],
            "limited" => vec!["limit", "set", src, "--rate", "1/h", "--burst", "1"],
            _ => continue,
        };
        let (ok, out) = cli(&pins.path, &args);
        assert!(ok, "slowgate {}: {out}", args.join(" "));
    }

    let path = Path {
        src_mac: CLIENT_MAC,
        dst_mac: SERVER_MAC,
        dst_v4: [198, 51, 100, 1],
        dst_v6: "2001:db8:1::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
        dport: SMTP,
    };
    let link = RawLink::open(&client, "shc0").unwrap();
    // Each source gets its own range of source ports: a SYN-ACK's port names shape and source.
    let mut by_port: BTreeMap<u16, (usize, String)> = BTreeMap::new();
    let mut sent = 0;
    for (i, (_, src)) in SOURCES.iter().enumerate() {
        let src: IpAddr = src.parse().unwrap();
        let generated: Vec<Shape> = shapes(&path, src, 10_000 + 1_000 * i as u16);
        assert!(generated.len() < 1_000);
        for (n, shape) in generated.into_iter().enumerate() {
            by_port.insert(10_000 + 1_000 * i as u16 + n as u16 + 1, (i, shape.name));
            for frame in &shape.frames {
                link.send(frame).unwrap();
                sent += 1;
            }
            // Bounded pace: never more than a few hundred frames in flight.
            if n % 16 == 15 {
                thread::sleep(Duration::from_millis(2));
            }
        }
    }
    let answered: BTreeSet<u16> = link
        .syn_acks(Duration::from_millis(1_500), Duration::from_secs(10))
        .into_iter()
        .collect();

    let mut live: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for port in &answered {
        let (i, name) = by_port.get(port).expect("a SYN-ACK to a port we used");
        live.entry(*i).or_default().push(name);
    }
    let shapes_of = |i: usize| by_port.values().filter(|(j, _)| *j == i).count();
    for (i, (role, src)) in SOURCES.iter().enumerate() {
        let got = live.get(&i).map_or(&[][..], |v| v.as_slice());
        eprintln!(
            "{role} {src}: {} of {} shapes answered",
            got.len(),
            shapes_of(i)
        );
        match *role {
            "open" => {}
            "limited" => assert!(
                got.len() <= 1,
                "limited {src} (burst 1) got {} SYN-ACKs: {got:?}",
                got.len()
            ),
            _ => assert!(got.is_empty(), "{role} {src} got SYN-ACKs for {got:?}"),
        }
    }
    eprintln!("{sent} frames sent");

    // The test means something only if the stack answers the shapes that used to bypass the
    // program, and many others: check that on the open sources.
    let open_v4 = live.get(&0).cloned().unwrap_or_default();
    let open_v6 = live.get(&1).cloned().unwrap_or_default();
    let refused: Vec<&str> = by_port
        .values()
        .filter(|(i, name)| *i < 2 && !live.get(i).is_some_and(|v| v.contains(&name.as_str())))
        .map(|(_, name)| name.as_str())
        .collect();
    eprintln!("shapes the stack refuses even from an open source: {refused:?}");
    for must in [
        "v6 untagged 9 destination options",
        "v6 untagged one destination options of 1288 bytes",
        "v6 untagged 12 destination options",
        "v6 untagged 800 bytes of headers then 4 more",
    ] {
        assert!(
            open_v6.contains(&must),
            "the stack did not answer `{must}` from an open source: the shapes are wrong"
        );
    }
    for must in ["v4 untagged", "v4 options 10 words"] {
        assert!(open_v4.contains(&must), "no answer to `{must}`");
    }
    assert!(
        open_v4.len() >= 15 && open_v6.len() >= 30,
        "too few shapes reach the listener: {} IPv4, {} IPv6",
        open_v4.len(),
        open_v6.len()
    );
}
