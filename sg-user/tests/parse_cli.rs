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
