//! `slowgate status`: what the kernel counts and holds, and what the daemon reports.

use super::*;
use std::time::Duration;

use serde_json::json;
use sg_common::{V4_MAPPED_BITS, counter, reason, service};

use crate::{domain::Rate, enforcer::Maps};

pub(super) fn status(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let dir = cli.pin_dir()?;
    let maps = Maps::open_pinned(&dir)?;
    let config = maps.read_config()?;
    let counters = maps.counters()?;
    let attachments = maps.attachments()?;
    let ports = maps.protected_ports()?;
    let fill = maps.fill();
    // The daemon's view of the fleet, when one runs and is in a fleet.
    let fleet: Option<crate::fleet::Status> = cli
        .control_socket()
        .exists()
        .then(|| call(&cli.control_socket(), &Control::Fleet).ok())
        .flatten()
        .flatten();
    let interfaces: Vec<(String, &str)> = attachments
        .iter()
        .map(|a| {
            let end = a.name.iter().position(|&b| b == 0).unwrap_or(16);
            (
                String::from_utf8_lossy(&a.name[..end]).into_owned(),
                sg_common::mode::NAMES
                    .get(a.mode as usize)
                    .copied()
                    .unwrap_or("?"),
            )
        })
        .collect();
    let mut named: Vec<(String, u64)> = [
        ("packets", counter::PACKETS),
        ("passed", counter::PASSED),
        ("dropped", counter::DROPPED),
        ("parse_errors", counter::PARSE_ERROR),
        ("opaque_judged_by_source", counter::OPAQUE),
        ("sources_verified", counter::VERIFIED),
        ("verified_over_ceiling", counter::VERIFIED_OVER_CEILING),
        ("bucket_contended", counter::BUCKET_CONTENDED),
        ("first_contacts", counter::FIRST_CONTACT),
        ("concurrent_untracked", counter::CONCURRENT_UNTRACKED),
        ("new_connections", counter::NEW_CONN),
        ("allowed_by_list", counter::ALLOWED),
        ("verdicts_worked_out", counter::VERDICT_WORKED_OUT),
        ("source_slots_replaced", counter::SOURCE_SLOT_REPLACED),
        ("prefix_slots_replaced", counter::PREFIX_SLOT_REPLACED),
        ("drop_events_lost", counter::EVENTS_LOST),
    ]
    .iter()
    .map(|&(name, c)| (name.to_string(), counters[c as usize]))
    .collect();
    for (i, name) in reason::NAMES.iter().enumerate() {
        named.push((
            format!("dropped_{name}"),
            counters[counter::DROP_REASON as usize + i],
        ));
    }
    for (i, name) in service::NAMES.iter().enumerate().skip(1) {
        named.push((
            format!("new_connections_{name}"),
            counters[counter::SERVICE_NEW_CONN as usize + i],
        ));
        named.push((
            format!("dropped_{name}"),
            counters[counter::SERVICE_DROPPED as usize + i],
        ));
    }
    let ceiling = |b: sg_common::Bucket| {
        if b.interval_ns == 0 {
            "off".to_string()
        } else {
            let rate = Rate {
                interval: Duration::from_nanos(b.interval_ns),
            };
            format!("{rate} burst {}", b.burst)
        }
    };
    if json {
        let value = json!({
            "pin_dir": dir,
            "interfaces": interfaces.iter().map(|(n, m)| json!({"name": n, "mode": m})).collect::<Vec<_>>(),
            "ports": ports.iter().map(|(p, s)| json!({"port": p, "service": service::NAMES[*s as usize]})).collect::<Vec<_>>(),
            "prefix_ipv4": config.prefix_len_v4.saturating_sub(V4_MAPPED_BITS),
            "prefix_ipv6": config.prefix_len_v6,
            "ceiling_source": ceiling(config.source_ceiling),
            "ceiling_prefix": ceiling(config.prefix_ceiling),
            "counters": named.iter().map(|(n, v)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "maps": fill.iter().map(|(n, used, max)| json!({"name": n, "entries": used, "capacity": max})).collect::<Vec<_>>(),
            "fleet": fleet,
        });
        println!("{value}");
        return Ok(());
    }
    println!("pins:        {}", dir.display());
    let ifaces: Vec<String> = interfaces
        .iter()
        .map(|(n, m)| format!("{n} ({m})"))
        .collect();
    println!("interfaces:  {}", ifaces.join(", "));
    let ports: Vec<String> = ports
        .iter()
        .map(|(p, s)| format!("{p}/{}", service::NAMES[*s as usize]))
        .collect();
    println!("ports:       {}", ports.join(" "));
    println!(
        "prefixes:    IPv4 /{}, IPv6 /{}",
        config.prefix_len_v4.saturating_sub(V4_MAPPED_BITS),
        config.prefix_len_v6
    );
    println!(
        "ceilings:    per source {}, per prefix {}",
        ceiling(config.source_ceiling),
        ceiling(config.prefix_ceiling)
    );
    println!("counters:");
    for (name, value) in &named {
        println!("  {name:<28} {value}");
    }
    println!("maps:");
    for (name, used, max) in fill {
        println!("  {name:<12} {used:>9} / {max}");
    }
    if let Some(f) = fleet {
        let now = crate::fleet::now_ms();
        let ago = |ms: u64| match ms {
            0 => "never".to_string(),
            ms => format!("{:.1}s ago", now.saturating_sub(ms) as f64 / 1000.0),
        };
        println!(
            "fleet:       {} as {}: {}, last success {}, lag {} ms, {} buffered, {} dropped, {} refused",
            f.redis,
            f.name,
            if f.up { "up" } else { "DOWN (working alone)" },
            ago(f.last_success_ms),
            f.lag_ms,
            f.buffered,
            f.dropped,
            f.refused
        );
        for (peer, beat) in &f.peers {
            println!("  peer {peer:<20} heartbeat {}", ago(*beat));
        }
    }
    Ok(())
}
