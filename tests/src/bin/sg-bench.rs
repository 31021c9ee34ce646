//! `cargo xtask bench xdp`: per-packet cost of the throttle (BPF_PROG_TEST_RUN), as a ratio to an
//! empty XDP program measured in the same run, with maps filled to production sizes.

use std::time::Duration;

use sg_common::{counter, map_v4};
use sg_tests::*;
use slowgate::{
    config::Capacity,
    domain::{Limit, Network, Rate},
    enforcer::ListKind,
};

/// The benchmark's sizes: the full run, or the short form `cargo xtask test` runs once.
struct Sizes {
    repeat: u32,
    runs: usize,
    tracked_sources: u32,
    list_entries: u32,
    ring: u32,
}

const FULL: Sizes = Sizes {
    repeat: 1_000_000,
    runs: 7,
    tracked_sources: 1_000_000,
    list_entries: 100_000,
    ring: 200_000,
};

const QUICK: Sizes = Sizes {
    repeat: 10_000,
    runs: 1,
    tracked_sources: 10_000,
    list_entries: 1_000,
    ring: 2_000,
};

fn main() -> anyhow::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "xdp".into());
    match what.as_str() {
        "xdp" => xdp(if std::env::args().any(|a| a == "--quick") {
            &QUICK
        } else {
            &FULL
        }),
        "parse" => sg_tests::bench::parse(&std::env::args().skip(2).collect::<Vec<_>>()),
        "replay" => sg_tests::bench::replay(&std::env::args().skip(2).collect::<Vec<_>>()),
        "reaction" => sg_tests::bench::reaction(&std::env::args().skip(2).collect::<Vec<_>>()),
        "memory" => sg_tests::bench::memory(&std::env::args().skip(2).collect::<Vec<_>>()),
        "flood" => sg_tests::flood::flood(&std::env::args().skip(2).collect::<Vec<_>>()),
        "lists" => sg_tests::bench::lists(&std::env::args().skip(2).collect::<Vec<_>>()),
        "fleet" => sg_tests::fleet::bench(&std::env::args().skip(2).collect::<Vec<_>>()),
        "policy" => sg_tests::policy_bench::bench(&std::env::args().skip(2).collect::<Vec<_>>()),
        "mixed-log" => {
            sg_tests::bench::write_mixed_log(&std::env::args().skip(2).collect::<Vec<_>>())
        }
        other => {
            anyhow::bail!(
                "unknown benchmark {other} (known: xdp, parse, replay, reaction, memory, flood, lists, fleet, policy)"
            )
        }
    }
}

fn xdp(sizes: &Sizes) -> anyhow::Result<()> {
    let Sizes {
        repeat,
        runs,
        tracked_sources,
        list_entries,
        ring: ring_len,
    } = *sizes;
    require_root();

    // Generous ceilings so that an unknown source passes through both buckets every time.
    let config = test_config(
        "[ceiling.source]\nrate = \"1000000000/s\"\nburst = 65535\n\
         [ceiling.prefix]\nrate = \"1000000000/s\"\nburst = 65535\n\
         [enforcement]\ndrop_event_sample = 16\n",
    );
    let capacity = Capacity {
        lists: 131_072,
        policies: 262_144,
        sources: 1_048_576,
        prefixes: 262_144,
        connections: 65_536,
    };
    let mut p = TestProgram::load_with(&config, &capacity)?;
    eprintln!("filling maps: {tracked_sources} tracked sources, {list_entries} list entries ...");
    fill(&mut p, tracked_sources, list_entries)?;
    let slots_used = p.counter(counter::SOURCE_SLOT_CLAIMED);

    let limited = [198, 51, 100, 7];
    let blocked = [198, 51, 100, 8];
    let fast: Rate = "1000000000/s".parse()?;
    let slow: Rate = "1/h".parse()?;
    p.maps.limit_set(
        net(limited),
        Limit::Rate {
            rate: fast,
            burst: 65535,
        },
        None,
    )?;
    p.maps.limit_set(
        net(blocked),
        Limit::Rate {
            rate: slow,
            burst: 1,
        },
        None,
    )?;

    let cases: [(&str, Vec<u8>, u32); 5] = [
        (
            "non-mail packet (SYN to 8080)",
            v4_tcp([203, 0, 113, 9], 8080, TCP_SYN),
            XDP_PASS,
        ),
        (
            "SYN, unknown source",
            v4_tcp([203, 0, 113, 9], 25, TCP_SYN),
            XDP_PASS,
        ),
        (
            "SYN, unknown IPv6 source",
            v6_tcp("2001:db8:77::9", 25, TCP_SYN),
            XDP_PASS,
        ),
        (
            "SYN, limited source under its limit",
            v4_tcp(limited, 25, TCP_SYN),
            XDP_PASS,
        ),
        (
            "SYN dropped by a limit",
            v4_tcp(blocked, 25, TCP_SYN),
            XDP_DROP,
        ),
    ];
    let mut empty = Vec::new();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for run in 0..runs {
        let base = ns(p
            .run_program(slowgate::enforcer::EMPTY_PROGRAM, &cases[0].1, repeat)
            .1);
        empty.push(base);
        for (i, (name, pkt, want)) in cases.iter().enumerate() {
            let (verdict, mean) = p.run_program(slowgate::enforcer::PROGRAM, pkt, repeat);
            anyhow::ensure!(
                verdict == *want,
                "{name}: verdict {verdict}, expected {want}"
            );
            samples[i].push(ns(mean));
            ratios[i].push(ns(mean) / base);
        }
        eprintln!("run {}/{runs} done", run + 1);
    }
    // A random-source flood: every packet from a source (and a /64) never seen before, inside
    // the listed 2001:db8::/32, among the filled maps and filters.
    let mut first_empty = Vec::new();
    let mut first = Vec::new();
    let contacts_before = p.counter(counter::FIRST_CONTACT);
    for run in 0..runs {
        // Sources of their own in every run: none was seen by an earlier one.
        let ring = first_contact_ring(ring_len, run as u32);
        let base = ring_ns(&p, slowgate::enforcer::EMPTY_PROGRAM, &ring);
        let cost = ring_ns(&p, slowgate::enforcer::PROGRAM, &ring);
        first_empty.push(base);
        first.push(cost);
    }
    let on_first_contact_path = (p.counter(counter::FIRST_CONTACT) - contacts_before) as f64
        / (u64::from(ring_len) * runs as u64) as f64;
    let mut first_ratio: Vec<f64> = first.iter().zip(&first_empty).map(|(c, b)| c / b).collect();
    println!("XDP per-packet cost, BPF_PROG_TEST_RUN repeat={repeat}, median of {runs} runs");
    println!(
        "maps: {tracked_sources} sources seen ({slots_used} of {} SOURCES slots in use), \
         {list_entries} list entries (ALLOW+DENY)",
        capacity.sources
    );
    println!();
    println!("| case | ns/packet | ratio to empty program |");
    println!("|---|---:|---:|");
    println!(
        "| empty XDP program (baseline) | {:.1} | 1.00 |",
        median(&mut empty)
    );
    for (i, (name, _, _)) in cases.iter().enumerate() {
        println!(
            "| {name} | {:.1} | {:.2} |",
            median(&mut samples[i]),
            median(&mut ratios[i])
        );
    }
    println!();
    println!("What each case exercises (one packet repeated, so from the second run on it is");
    println!("decided from its source's slot, a verdict cached for the current generation):");
    for (name, what) in [
        ("non-mail packet", "parsing, the PORTS lookup; no slot"),
        (
            "unknown source",
            "its /24's filter line (seen lately), both slots (source and /24), both default \
             ceilings' buckets",
        ),
        ("unknown IPv6 source", "the same for a /64"),
        (
            "limited source",
            "the source's slot and its policy bucket (a limit set for it)",
        ),
        (
            "dropped by a limit",
            "the same, bucket empty: a drop, counters",
        ),
    ] {
        println!("- {name}: {what}");
    }
    println!();
    println!(
        "First contact: {ring_len} distinct packets, each run once (repeat=1), every source and /64 \
         never seen before, inside the listed /32; against the empty program over the same ring:"
    );
    println!();
    println!("| case | ns/packet | ratio to empty program |");
    println!("|---|---:|---:|");
    println!(
        "| empty XDP program, same ring (baseline) | {:.1} | 1.00 |",
        median(&mut first_empty)
    );
    println!(
        "| SYN, a source never seen (random-source flood) | {:.1} | {:.2} |",
        median(&mut first),
        median(&mut first_ratio)
    );
    println!();
    println!(
        "{:.1}% of these took the first contact path (no list or policy key in the filters, \
         prefix not seen lately); the rest, false positives of the filters, read their slots.",
        100.0 * on_first_contact_path
    );
    kernel_diagnostics_cost(repeat, runs)
}

/// What the kernel diagnostics (aya-log) cost while switched off: the shipped program against
/// the same program built without them, same config and packets, alternating runs.
fn kernel_diagnostics_cost(repeat: u32, runs: usize) -> anyhow::Result<()> {
    let config = test_config(
        "[ceiling.source]\nrate = \"1000000000/s\"\nburst = 65535\n\
         [ceiling.prefix]\nrate = \"1000000000/s\"\nburst = 65535\n",
    );
    let blocked = [198, 51, 100, 8];
    let mut programs = Vec::new();
    for object in [
        slowgate::enforcer::EBPF_OBJECT_NO_KERNEL_LOG,
        slowgate::enforcer::EBPF_OBJECT,
    ] {
        let mut p = TestProgram::load_object(object, &config, &config.capacity)?;
        p.maps.limit_set(
            net(blocked),
            Limit::Rate {
                rate: "1/h".parse()?,
                burst: 1,
            },
            None,
        )?;
        programs.push(p);
    }
    let cases: [(&str, Vec<u8>, u32); 3] = [
        (
            "SYN, unknown source",
            v4_tcp([203, 0, 113, 9], 25, TCP_SYN),
            XDP_PASS,
        ),
        (
            "SYN dropped by a limit",
            v4_tcp(blocked, 25, TCP_SYN),
            XDP_DROP,
        ),
        (
            "truncated packet (a parse error)",
            frame(&[], 0x0800, &[0x45]),
            XDP_PASS,
        ),
    ];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut costs: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()]; cases.len()];
    for _ in 0..runs {
        for (i, (name, pkt, want)) in cases.iter().enumerate() {
            let mut mean = [0.0; 2];
            for (j, p) in programs.iter().enumerate() {
                let (verdict, d) = p.run_program(slowgate::enforcer::PROGRAM, pkt, repeat);
                anyhow::ensure!(
                    verdict == *want,
                    "{name}: verdict {verdict}, expected {want}"
                );
                mean[j] = ns(d);
                costs[i][j].push(ns(d));
            }
            ratios[i].push(mean[1] / mean[0]);
        }
    }
    println!();
    println!(
        "Kernel diagnostics (aya-log, `[log] kernel`) switched off, against the same program \
         built without them (median of {runs} alternating runs):"
    );
    println!();
    println!("| case | without diagnostics, ns | with them, off, ns | ratio |");
    println!("|---|---:|---:|---:|");
    for (i, (name, _, _)) in cases.iter().enumerate() {
        println!(
            "| {name} | {:.1} | {:.1} | {:.2} |",
            median(&mut costs[i][0]),
            median(&mut costs[i][1]),
            median(&mut ratios[i])
        );
    }
    Ok(())
}

/// SYNs from `n` distinct IPv6 sources, each in a /64 of its own (a multiplicative walk over
/// 32 bits, so no two share a prefix, in this run or another), none of them seen by `fill`.
fn first_contact_ring(n: u32, run: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut pkt = v6_tcp("2001:db8::", 25, TCP_SYN);
            let word = (run * n + i)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(0x9e37_79b9);
            // Bytes 4..8 of the address: the /64 (the fill used 0..list_entries with ::/64
            // entries at the same place, so lookups walk the same trie).
            pkt[22 + 4..22 + 8].copy_from_slice(&word.to_be_bytes());
            pkt[22 + 15] = 0x77;
            pkt
        })
        .collect()
}

/// Mean ns per packet of `program` over the ring, each packet run once.
fn ring_ns(p: &TestProgram, program: &str, ring: &[Vec<u8>]) -> f64 {
    let total: f64 = ring
        .iter()
        .map(|pkt| ns(p.run_program(program, pkt, 1).1))
        .sum();
    total / ring.len() as f64
}

fn net(a: [u8; 4]) -> Network {
    Network {
        addr: map_v4(a),
        prefix_len: 128,
    }
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Sends two SYNs from each of `tracked_sources` distinct IPv6 sources through the program (so
/// the slot tables hold what they would in production), and fills the lists with distinct
/// networks.
fn fill(p: &mut TestProgram, sources: u32, lists: u32) -> anyhow::Result<()> {
    let mut pkt = v6_tcp("2001:db8::", 25, TCP_SYN);
    // Ethernet (14) + the IPv6 header's first 8 bytes: the source address starts at 22. Bytes
    // 4..8 of the address vary, so every source sits in a /64 of its own (the PREFIXES table
    // fills too) and the lists' /64 entries sit among them.
    const SRC_PREFIX_WORD: std::ops::Range<usize> = 22 + 4..22 + 8;
    for i in 0..sources {
        pkt[SRC_PREFIX_WORD].copy_from_slice(&i.to_be_bytes());
        // Twice: a first contact takes no slot, the second SYN of a source does.
        p.run(&pkt);
        p.run(&pkt);
    }
    for i in 0..lists {
        let mut addr = [0u8; 16];
        addr[0..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        addr[4..8].copy_from_slice(&i.to_be_bytes());
        let kind = if i % 10 == 0 {
            ListKind::Allow
        } else {
            ListKind::Deny
        };
        p.maps.list_add(
            kind,
            Network {
                addr,
                prefix_len: 64,
            },
            None,
        )?;
    }
    Ok(())
}
