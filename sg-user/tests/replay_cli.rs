//! `slowgate replay` on a generated log with a known attack: the attacker is limited, early and
//! for a while, with connections refused; the legitimate sender never appears.

use std::{fmt::Write as _, process::Command};

fn stamp(second: u64) -> String {
    format!(
        "2026-11-22T{:02}:{:02}:{:02}+00:00",
        7 + second / 3600,
        second / 60 % 60,
        second % 60
    )
}

#[test]
fn replay_shows_who_would_have_been_limited_when_and_at_what_cost() {
    let dir = std::env::temp_dir().join(format!("sg-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut log = String::new();
    // 07:00:00-07:00:58: a harvester opens 30 sessions, one RCPT each (2.1 points a session).
    for i in 0..30u64 {
        let t = stamp(i * 2);
        writeln!(
            log,
            "{t} mx1 postfix/smtpd[100]: connect from unknown[203.0.113.66]"
        )
        .unwrap();
        writeln!(
            log,
            "{t} mx1 postfix/smtpd[100]: NOQUEUE: reject: RCPT from unknown[203.0.113.66]: 550 5.1.1 \
             <u{i}@example.net>: Recipient address rejected: User unknown in local recipient table; \
             from=<x@example.com> to=<u{i}@example.net> proto=ESMTP helo=<x>"
        )
        .unwrap();
        writeln!(
            log,
            "{t} mx1 postfix/smtpd[100]: disconnect from unknown[203.0.113.66]"
        )
        .unwrap();
    }
    // Over two hours: a legitimate sender's mail, every 10 minutes.
    for i in 0..12u64 {
        let t = stamp(i * 600 + 30);
        writeln!(
            log,
            "{t} mx1 postfix/smtpd[200]: connect from mx.example.org[198.51.100.7]"
        )
        .unwrap();
        writeln!(
            log,
            "{t} mx1 postfix/smtpd[200]: 4A1B2C3D4E{i:02}: client=mx.example.org[198.51.100.7]"
        )
        .unwrap();
        writeln!(log, "{t} mx1 postfix/qmgr[300]: 4A1B2C3D4E{i:02}: from=<news@example.org>, size=3000, nrcpt=1 (queue active)").unwrap();
    }
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort_by_key(|l| &l[..25]);
    let path = dir.join("mail.log");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/slowgate.toml");

    let history = dir.join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_slowgate"))
        .args(["--config", config, "replay", "--history"])
        .arg(&history)
        .arg(&path)
        .output()
        .expect("run slowgate replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The change lines, on the log's clock.
    assert!(
        stdout.contains("2026-11-22 07:00:08 203.0.113.66 level 0 -> 1"),
        "{stdout}"
    );
    assert!(stdout.contains("203.0.113.66 level 3 -> 2"), "{stdout}");
    // The table row of the attacker: level 3 (50 points), limited from 07:00:08.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("203.0.113.66 "))
        .unwrap_or_else(|| panic!("no row for the attacker: {stdout}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "3", "{row}");
    assert_eq!(
        format!("{} {}", cols[2], cols[3]),
        "2026-11-22 07:00:08",
        "{row}"
    );
    let connections: u64 = cols[5].parse().unwrap();
    let refused: u64 = cols[6].parse().unwrap();
    assert_eq!(connections, 30);
    assert!((10..30).contains(&refused), "{row}");
    // One address never limits its /24 (its neighbours); the legitimate sender was never
    // limited.
    assert!(!stdout.contains("\n203.0.113.0/24 "), "{stdout}");
    assert!(!stdout.contains("198.51.100.7"), "{stdout}");
    assert!(stdout.contains("senders would have been limited"));

    // The report of that replay: the attacker on top, its refused connections as the drops of
    // hour 07:00, the events by kind, and the same in HTML with SVG charts.
    let html = dir.join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_slowgate"))
        .args(["report", "--since", "36500d", "--state-dir"])
        .arg(&history)
        .arg("--html")
        .arg(&html)
        .output()
        .expect("run slowgate report");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The attacker alone heads the table (its /24 stays free).
    let top: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Top limited"))
        .skip(2)
        .take(2)
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(top, ["203.0.113.66", ""], "{text}");
    assert!(
        text.contains(&format!("2026-11-22 07:00:00  {refused:>8}")),
        "drops of 07:00 should be the {refused} refused connections: {text}"
    );
    assert!(text.contains("unknown_recipient          30"), "{text}");
    assert!(text.contains("connection                 42"), "{text}");
    let page = std::fs::read_to_string(&html).unwrap();
    for needle in ["<svg", "<rect", "203.0.113.66", "Senders limited at once"] {
        assert!(page.contains(needle), "no {needle} in the HTML");
    }
    assert!(!page.contains("http://") || page.contains("http://www.w3.org/2000/svg"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stamp far in the future (or a long quiet gap) must not make the replay step through the
/// calendar: it drains limits for at most a week of log time, then jumps.
#[test]
fn a_far_future_stamp_does_not_make_replay_spin() {
    let dir = std::env::temp_dir().join(format!("sg-replay-future-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut log = String::new();
    for i in 0..30u64 {
        writeln!(
            log,
            "{} mx1 postfix/smtpd[100]: NOQUEUE: reject: RCPT from unknown[203.0.113.66]: 550 5.1.1 \
             <u{i}@example.net>: Recipient address rejected: User unknown in local recipient table; \
             from=<x@example.com> to=<u{i}@example.net> proto=ESMTP helo=<x>",
            stamp(i)
        )
        .unwrap();
    }
    writeln!(
        log,
        "2499-12-31T23:59:59+00:00 mx1 postfix/smtpd[100]: connect from unknown[203.0.113.67]"
    )
    .unwrap();
    let path = dir.join("future.log");
    std::fs::write(&path, log).unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/slowgate.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_slowgate"))
        .args(["--config", config, "replay"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("replay still running after 60 s on a 31-line log");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success());
}
