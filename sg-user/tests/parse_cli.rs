//! `slowgate parse` on a fixture log: the JSON lines and the summary.

use std::process::Command;

#[test]
fn parse_prints_events_as_json_lines_and_a_summary() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/mixed.log");
    let out = Command::new(env!("CARGO_BIN_EXE_slowgate"))
        .args(["parse", "--format", "auto", fixture])
        .output()
        .expect("run slowgate parse");
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let summary: Vec<(u64, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["event"]["kind"].as_str().unwrap(),
                r["event"]["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "connection", "203.0.113.9"),
            (2, "reject", "203.0.113.9"),
            (3, "too_many_errors", "203.0.113.9"),
            (5, "auth_failure", "2001:db8:a::7"),
            (8, "message_accepted", "198.51.100.7"),
            (11, "auth_failure", "203.0.113.50"),
            (12, "auth_success", "2001:db8:b::10"),
        ]
    );
    assert_eq!(rows[1]["event"]["reject"], "unknown_recipient");
    assert_eq!(rows[4]["event"]["recipients"], 12);
    assert_eq!(rows[6]["event"]["user"], "alice");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("lines read: 14, lines with events: 7, events: 7, lines not understood: 2"),
        "{stderr}"
    );
}

#[test]
fn parse_of_a_missing_file_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_slowgate"))
        .args(["parse", "/nonexistent/mail.log"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("open /nonexistent/mail.log"));
}

/// (line, kind, source) of every event `slowgate parse --format FORMAT` prints, and its summary.
fn parse_fixture(format: &str, name: &str) -> (Vec<(u64, String, String)>, String) {
    let fixture = format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_slowgate"))
        .args(["parse", "--format", format, &fixture])
        .output()
        .expect("run slowgate parse");
    assert!(out.status.success());
    let rows = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            (
                r["line"].as_u64().unwrap(),
                r["event"]["kind"].as_str().unwrap().to_string(),
                r["event"]["source"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (rows, String::from_utf8(out.stderr).unwrap())
}

#[test]
fn every_format_has_a_fixture_read_the_same_by_its_parser_and_by_auto() {
    /// (line, kind, source) of each expected event.
    type Events = &'static [(u64, &'static str, &'static str)];
    let cases: [(&str, Events, &str); 4] = [
        (
            "sendmail",
            &[
                (1, "message_accepted", "203.0.113.9"),
                (3, "reject", "203.0.113.66"),
                (5, "reject", "2001:db8:bad::1"),
                (6, "auth_failure", "198.51.100.77"),
                (7, "message_accepted", "198.51.100.20"),
                (7, "bounce", "198.51.100.20"),
                (8, "lost_after_auth", "198.51.100.77"),
            ],
            "lines read: 9, lines with events: 6, events: 7, lines not understood: 1",
        ),
        (
            "qmail",
            &[
                (2, "connection", "203.0.113.9"),
                (4, "reject", "203.0.113.9"),
                (6, "connection", "2001:db8:bad::5"),
                (7, "reject", "2001:db8:bad::5"),
            ],
            "lines read: 8, lines with events: 4, events: 4, lines not understood: 1",
        ),
        (
            "exim",
            &[
                (1, "connection", "203.0.113.9"),
                (2, "message_accepted", "203.0.113.9"),
                (5, "reject", "203.0.113.66"),
                (6, "auth_failure", "2001:db8:bad::9"),
                (7, "too_many_errors", "203.0.113.66"),
                (8, "message_accepted", "198.51.100.20"),
                (8, "bounce", "198.51.100.20"),
            ],
            "lines read: 9, lines with events: 6, events: 7, lines not understood: 1",
        ),
        (
            "rspamd",
            &[
                (1, "dmarc_fail", "203.0.113.9"),
                (4, "dmarc_fail", "198.51.100.30"),
            ],
            "lines read: 4, lines with events: 2, events: 2, lines not understood: 0",
        ),
    ];
    for (format, want, summary) in cases {
        let (rows, stderr) = parse_fixture(format, &format!("{format}.log"));
        let got: Vec<(u64, &str, &str)> = rows
            .iter()
            .map(|(l, k, s)| (*l, k.as_str(), s.as_str()))
            .collect();
        assert_eq!(got, want, "{format}");
        assert!(stderr.contains(summary), "{format}: {stderr}");
        let (auto_rows, _) = parse_fixture("auto", &format!("{format}.log"));
        assert_eq!(auto_rows, rows, "{format} with --format auto");
    }
    // A parser for one format understands none of another's lines.
    let (rows, stderr) = parse_fixture("exim", "sendmail.log");
    assert!(rows.is_empty());
    assert!(stderr.contains("lines not understood: 9"), "{stderr}");
}
