//! fail2ban's labelled sample mail logs (`tests/files/logs` of Debian's fail2ban package): what
//! the filters our users come from treat as attack signals, slowgate attributes to the same
//! client, and it blames no other.
//!
//! Each sample line follows a `# failJSON: {"match": true, "host": "..."}` comment. A line
//! labelled `match: true` is attributed when slowgate finds an event other than a connection, a
//! message or a login success on it, for the labelled host. Any such event on any labelled line
//! must be for the labelled host (lines labelled without a host belong to a filter mode that
//! ignores them; the same text is labelled with its host elsewhere in the file).
//!
//! The package is fetched with `apt-get download` into the test's scratch directory the first
//! time (pinned to the version the README names when the mirror still has it).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use slowgate::parsers::{Format, Outcome, Parsers};

const PINNED: &str = "fail2ban=1.0.2-2";

/// The mail filters' sample logs.
const FILES: [&str; 7] = [
    "postfix",
    "dovecot",
    "exim",
    "exim-spam",
    "sendmail-auth",
    "sendmail-reject",
    "qmail",
];

/// Signals slowgate does not treat as abuse, with the reason (each is one line of the corpus).
const NOT_SIGNALS: [&str; 2] = [
    // A client without reverse DNS (fail2ban's exim "aggressive" mode): many honest small mail
    // servers; slowgate's own limits must never punish this alone.
    "no host name found for IP address",
    "no IP address found for host",
];

fn corpus() -> PathBuf {
    if let Ok(dir) = std::env::var("SLOWGATE_FAIL2BAN_LOGS") {
        return PathBuf::from(dir);
    }
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fail2ban");
    let logs = scratch.join("usr/lib/python3/dist-packages/fail2ban/tests/files/logs");
    if logs.join("postfix").exists() {
        return logs;
    }
    std::fs::create_dir_all(&scratch).unwrap();
    let fetched = [PINNED, "fail2ban"].iter().any(|package| {
        Command::new("apt-get")
            .args(["download", package])
            .current_dir(&scratch)
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(
        fetched,
        "apt-get download fail2ban failed (run `cargo xtask setup`)"
    );
    let deb = std::fs::read_dir(&scratch)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("the downloaded .deb");
    eprintln!("fail2ban corpus from {}", deb.display());
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&scratch)
        .status()
        .unwrap();
    assert!(status.success(), "dpkg-deb -x {}", deb.display());
    logs
}

struct Label {
    matches: bool,
    host: Option<IpAddr>,
}

/// Line number (1-based) -> its label.
fn labels(text: &str) -> BTreeMap<usize, Label> {
    let mut labels = BTreeMap::new();
    let mut pending = None;
    for (i, line) in text.lines().enumerate() {
        if let Some(json) = line.strip_prefix("# failJSON:") {
            let v: serde_json::Value = serde_json::from_str(json.trim()).expect("failJSON");
            pending = Some(Label {
                matches: v["match"].as_bool().unwrap_or(false),
                host: v["host"]
                    .as_str()
                    .map(|h| h.parse().expect("a host address")),
            });
        } else if !line.starts_with('#')
            && !line.trim().is_empty()
            && let Some(label) = pending.take()
        {
            labels.insert(i + 1, label);
        }
    }
    labels
}

/// Line number -> the clients blamed on it (events other than connections, messages and logins).
fn blamed(text: &str) -> BTreeMap<usize, Vec<IpAddr>> {
    let mut parsers = Parsers::default();
    let mut blamed = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if let Outcome::Understood(events) = parsers.parse_timed(Format::Auto, line).outcome {
            let sources: Vec<IpAddr> = events
                .iter()
                .filter(|e| {
                    !matches!(
                        e.kind,
                        slowgate::events::EventKind::Connection
                            | slowgate::events::EventKind::MessageAccepted { .. }
                            | slowgate::events::EventKind::AuthSuccess { .. }
                    )
                })
                .map(|e| e.source)
                .collect();
            if !sources.is_empty() {
                blamed.insert(i + 1, sources);
            }
        }
    }
    blamed
}

#[test]
fn fail2ban_sample_mail_logs_are_attributed_to_the_labelled_client() {
    let dir = corpus();
    let (mut labelled, mut attributed) = (0usize, 0usize);
    let mut missed = Vec::new();
    let mut wrong = Vec::new();
    for name in FILES {
        let text = String::from_utf8_lossy(&std::fs::read(dir.join(name)).unwrap()).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        let blamed = blamed(&text);
        let (mut file_labelled, mut file_attributed) = (0, 0);
        for (n, label) in labels(&text) {
            let on_line = blamed.get(&n).map(Vec::as_slice).unwrap_or_default();
            if label.matches {
                file_labelled += 1;
                if label.host.is_some_and(|h| on_line.contains(&h)) {
                    file_attributed += 1;
                } else if !NOT_SIGNALS.iter().any(|s| lines[n - 1].contains(s)) {
                    missed.push(format!("{name}:{n}: {}", lines[n - 1]));
                }
            }
            if let Some(host) = label.host
                && on_line.iter().any(|s| *s != host)
            {
                wrong.push(format!(
                    "{name}:{n}: {on_line:?} for {host}: {}",
                    lines[n - 1]
                ));
            }
        }
        eprintln!("{name}: {file_attributed} of {file_labelled} failure lines attributed");
        labelled += file_labelled;
        attributed += file_attributed;
    }
    let share = attributed as f64 / labelled as f64;
    eprintln!(
        "fail2ban sample logs: {attributed} of {labelled} failure lines attributed ({:.1}%)",
        100.0 * share
    );
    assert!(
        wrong.is_empty(),
        "blamed another client:\n{}",
        wrong.join("\n")
    );
    assert!(
        missed.is_empty(),
        "failure lines missed:\n{}",
        missed.join("\n")
    );
    assert!(share >= 0.95, "{:.1}% attributed", 100.0 * share);
}

#[test]
fn a_server_side_failure_blames_nobody() {
    // fail2ban labels it "no malicious activities whatsoever": our own auth server was down.
    let text = "Feb  3 08:29:28 mail postfix/smtpd[21022]: warning: unknown[203.0.113.9]: SASL LOGIN authentication failed: Connection lost to authentication server\n";
    assert!(blamed(text).is_empty());
}
