//! The Grafana dashboard (config/grafana/slowgate.json) and the Prometheus alert rules
//! (config/prometheus/slowgate.rules.yml) against what the daemon really exports: every metric
//! a query names is in a scrape of a daemon with the policy service and fleet mode on; the rules
//! pass `promtool check rules`. Root only (the daemon loads its XDP program).

use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use sg_tests::*;

fn repo(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every `slowgate_...` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("slowgate_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The series names a scrape has: each metric's name, and a histogram's `_bucket`, `_sum` and
/// `_count`.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

fn scrape() -> String {
    require_root();
    let server = Netns::new("dash").unwrap();
    let client = Netns::new("dashc").unwrap();
    veth(&server, "sg0", &client, "cl0").unwrap();
    server.addr("sg0", "198.51.100.1/24").unwrap();
    let pins = PinDir::new();
    // Fleet mode with no Redis there (the port is closed): it works alone and says so.
    let config = "interfaces = [\"sg0\"]\nattach_mode = \"native\"\n\
                  [policy]\nlisten = \"127.0.0.1:10040\"\n\
                  [metrics]\nlisten = \"127.0.0.1:9465\"\n\
                  [fleet]\nurl = \"redis://127.0.0.1:9/0\"\nname = \"mx-dash\"\n";
    let daemon = Daemon::start(&server, config, &pins.path).unwrap();
    let mut page = None;
    until(Duration::from_secs(10), || {
        page = http_get(&server, "127.0.0.1:9465".parse().unwrap(), "/metrics")
            .filter(|p| p.contains("slowgate_fleet_up"));
        page.is_some()
    });
    page.unwrap_or_else(|| panic!("no scrape with the fleet's metrics: {}", daemon.log_text()))
}

#[test]
fn every_query_of_the_dashboard_and_the_alert_rules_names_exported_metrics() {
    let exported = exported(&scrape());
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo("config/grafana/slowgate.json")).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut titles = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        titles.push(title.to_string());
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("an expression");
            let names = names_in(expr);
            assert!(
                !names.is_empty(),
                "{title}: {expr} names no slowgate metric"
            );
            for name in names {
                assert!(
                    exported.contains(&name),
                    "{title}: {expr} names {name}, which the daemon does not export"
                );
            }
        }
    }
    // What operators look for first is there.
    for topic in [
        "by reason",
        "by service",
        "per level",
        "enforce",
        "Map fill",
        "Fleet",
        "Policy",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(topic)),
            "no panel about {topic}: {titles:?}"
        );
    }
    let rules = repo("config/prometheus/slowgate.rules.yml");
    for name in names_in(&rules) {
        assert!(
            exported.contains(&name),
            "the alert rules name {name}, which the daemon does not export"
        );
    }
    for alert in [
        "SlowgateDown",
        "SlowgateLearningStalled",
        "SlowgateSourceReadErrors",
        "SlowgateMapNearlyFull",
        "SlowgateDropEventsLost",
        "SlowgateFleetDown",
    ] {
        assert!(rules.contains(&format!("alert: {alert}\n")), "no {alert}");
    }
}

#[test]
fn the_alert_rules_pass_promtool() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/prometheus/slowgate.rules.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool (apt install prometheus; `cargo xtask test` does)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 9 rules found"), "{text}");
}
