//! Dovecot 2.3 login processes (imap-login, pop3-login, submission-login), from its own log file
//! (`imap-login: Info: Login: ...`) or through syslog (`dovecot: imap-login: Login: ...`).
//!
//! The user name is the client's text and comes before `rip=` (login-common/client-common.c
//! writes `user=<%u>, method=%m, rip=%r, lip=%l, ...`), so the address is read from the last
//! `rip=` of the line: a user named `x, rip=203.0.113.9` cannot move the blame.

use std::net::IpAddr;

use super::{
    Outcome, agreed, field_starts,
    ledger::{Clocked, Layer},
    repeated,
};
use crate::events::{Event, EventKind, Service};

const SERVICES: [(&str, Service); 4] = [
    ("imap-login", Service::Imap),
    ("pop3-login", Service::Pop3),
    ("submission-login", Service::Submission),
    ("managesieve-login", Service::Sieve),
];

fn service_of(program: &str) -> Option<Service> {
    SERVICES
        .iter()
        .find(|(p, _)| *p == program)
        .map(|(_, s)| *s)
}

/// A Dovecot login or auth line, either form.
pub fn is_dovecot(program: &str, message: &str) -> bool {
    let message = untagged(message);
    service_of(program).is_some()
        || is_auth(program)
        || ((program == "dovecot" || program == "auth")
            && (split_service(message).is_some() || is_auth(message) || is_pam(message)))
}

/// The auth process (`auth: ...`, `auth-worker(123): ...`, `auth(default): ...`, Dovecot 1's
/// `dovecot-auth`), or a message of it through syslog.
fn is_auth(text: &str) -> bool {
    text == "auth"
        || text == "dovecot-auth"
        || text.starts_with("auth: ")
        || text.starts_with("auth(")
        || text.starts_with("auth-worker")
}

/// A PAM module's failure line for Dovecot's PAM service.
fn is_pam(message: &str) -> bool {
    message.starts_with("pam_unix(dovecot:auth): ") || message.starts_with("pam_unix(imap:auth): ")
}

/// "imap-login: rest" inside a syslog `dovecot:` message.
fn split_service(message: &str) -> Option<(Service, &str)> {
    let (program, rest) = message.split_once(": ")?;
    Some((service_of(program)?, rest))
}

/// Dovecot 1 through syslog repeats its tag (`dovecot[442]: dovecot: auth(default): ...`).
fn untagged(message: &str) -> &str {
    message.strip_prefix("dovecot: ").unwrap_or(message)
}

pub fn parse(program: &str, message: &str, ledger: Clocked<'_>) -> Outcome {
    let message = untagged(message);
    if is_pam(message) {
        return pam_failure(message, ledger);
    }
    if is_auth(program) || (program == "dovecot" && is_auth(message)) {
        return auth_process(message, ledger);
    }
    let (service, text) = match service_of(program) {
        Some(s) => (s, message),
        None => match split_service(message) {
            Some(found) => found,
            None => return Outcome::NotUnderstood,
        },
    };
    let text = text.strip_prefix("Info: ").unwrap_or(text);
    let Some(source) = remote_ip(text) else {
        return if text.starts_with("Disconnected") || text.starts_with("Aborted login") {
            Outcome::Understood(Vec::new())
        } else {
            Outcome::NotUnderstood
        };
    };
    let user = user(text);
    if text.starts_with("Login: ") {
        let event = Event::new(EventKind::AuthSuccess { service }, source).with_user(user);
        return Outcome::Understood(vec![event]);
    }
    // The reason is the server's text before the first `user=<` (the user name, the client's
    // text, comes after it) or, in older versions without a user field, before `rip=`.
    let reason_end = text
        .find("user=<")
        .or_else(|| text.find("rip="))
        .unwrap_or(text.len());
    let reason = &text[..reason_end];
    let kind = if let Some(n) = failed_attempts(reason) {
        let unreported = ledger.settle(source, n);
        let events = repeated(EventKind::AuthFailure { service }, source, unreported);
        let events = events.into_iter().map(|e| e.with_user(user)).collect();
        return Outcome::Understood(events);
    } else if reason.contains("(proxy dest auth failed)") {
        EventKind::AuthFailure { service }
    } else if reason.contains("plaintext auth") {
        // "Aborted login (tried to use disabled plaintext auth)", also after "Too many invalid
        // commands".
        EventKind::PlaintextAuth
    } else if reason.contains("Too many invalid commands") {
        EventKind::ProtocolError
    } else if reason.contains("client didn't finish SASL auth") {
        EventKind::LostAfterAuth
    } else if reason.contains("(no auth attempts")
        || reason.contains("(disconnected before auth was ready")
        || reason.contains("(disconnected before greeting")
    {
        EventKind::NoAuthProbe
    } else {
        return Outcome::Understood(Vec::new());
    };
    Outcome::Understood(vec![Event::new(kind, source).with_user(user)])
}

/// "(auth failed, 3 attempts in 12 secs)": the number of failed logins of the session.
fn failed_attempts(reason: &str) -> Option<u32> {
    let (_, after) = reason.split_once("(auth failed, ")?;
    let (n, _) = after.split_once(" attempt")?;
    n.parse().ok()
}

/// The auth process's failure lines (with `auth_verbose`), Dovecot 2.3: `pam(USER,IP):
/// pam_authenticate() failed: ...`, `passwd-file(USER,IP,<SESSION>): unknown user`,
/// `ldap(USER,IP,): invalid credentials`, after any number of server-written prefixes
/// (`auth-worker(7): Info: conn unix:auth-worker (uid=143): auth-worker<13247>: `); Dovecot 2.4:
/// `auth-worker(USER,IP)<PID><SESSION>: request [393]: PASSDB: pam_authenticate() failed: ...`.
///
/// The user is the client's text and may hold anything; everything after it is the server's, so
/// the line is read from its end: the rightmost known failure text, then backwards over the
/// server's fields (`: PASSDB`, `: request [N]`, `<...>` groups) to the `)` that closes the
/// user's group; the address is that group's last field (before an optional `,<SESSION>`).
fn auth_process(message: &str, ledger: Clocked<'_>) -> Outcome {
    let Some((source, user)) = auth_process_client(message) else {
        return Outcome::Understood(Vec::new());
    };
    let n = ledger.report(source, Layer::AuthProcess, 1);
    let service = Service::Auth;
    let events = repeated(EventKind::AuthFailure { service }, source, n);
    Outcome::Understood(events.into_iter().map(|e| e.with_user(user)).collect())
}

fn auth_process_client(message: &str) -> Option<(IpAddr, Option<&str>)> {
    const FAILURES: [&str; 6] = [
        "unknown user",
        "Password mismatch",
        "password mismatch",
        "invalid credentials",
        "Invalid credentials",
        "pam_authenticate() failed",
    ];
    // The rightmost ": " that starts a failure text.
    let failure_at = message
        .match_indices(": ")
        .map(|(at, _)| at)
        .filter(|&at| FAILURES.iter().any(|f| message[at + 2..].starts_with(f)))
        .last()?;
    let mut head = &message[..failure_at];
    // Backwards over the server's fields to the `)` that closes (USER,IP...).
    while !head.ends_with(')') {
        head = if let Some(rest) = head.strip_suffix('>') {
            &rest[..rest.rfind('<')?]
        } else if let Some((rest, field)) = head.rsplit_once(": ") {
            let word = |w: &str| {
                !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
            };
            let request = field
                .strip_prefix("request [")
                .and_then(|n| n.strip_suffix(']'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !(word(field) || request) {
                return None;
            }
            rest
        } else {
            return None;
        };
    }
    let fields = &head[..head.len() - 1];
    // "...USER,IP", "...USER,IP,<SESSION>" or "...USER,IP," (an empty session).
    let fields = match fields.rsplit_once(",<") {
        Some((before, session)) if !session.contains(',') => before,
        _ => fields.strip_suffix(',').unwrap_or(fields),
    };
    let (before, addr) = fields.rsplit_once(',')?;
    let source = addr.parse::<IpAddr>().ok()?;
    Some((source, user_of(before)))
}

/// The user of an auth-process prefix: after the passdb's `(` (2.3) or the process's (2.4).
fn user_of(before: &str) -> Option<&str> {
    const OPENERS: [&str; 13] = [
        "pam(",
        "passwd-file(",
        "sql(",
        "ldap(",
        "passwd(",
        "shadow(",
        "checkpassword(",
        "bsdauth(",
        "dict(",
        "lua(",
        "oauth2(",
        "auth-worker(",
        "auth(",
    ];
    OPENERS.iter().find_map(|opener| {
        let at = before
            .match_indices(opener)
            .map(|(at, _)| at)
            .find(|&at| at == 0 || matches!(before.as_bytes()[at - 1], b' ' | b':'))?;
        Some(&before[at + opener.len()..])
    })
}

/// `pam_unix(dovecot:auth): authentication failure; logname= uid=0 euid=0 tty=dovecot
/// ruser=USER rhost=IP[  user=USER]` (pam_unix's support.c). The user is the client's text and
/// may be written on both sides of the address, so the line is read at every ` rhost=`: the
/// server's reading always holds an address (followed by the end or `  user=`), and the address
/// is taken only when no other reading does.
fn pam_failure(message: &str, ledger: Clocked<'_>) -> Outcome {
    let Some((_, fields)) = message.split_once(": authentication failure; ") else {
        return Outcome::Understood(Vec::new());
    };
    let Some((_, after_ruser)) = fields.split_once(" ruser=") else {
        return Outcome::Understood(Vec::new());
    };
    let Some(starts) = field_starts(after_ruser, " rhost=") else {
        return Outcome::Understood(Vec::new());
    };
    let readings = starts.into_iter().filter_map(|at| {
        let rest = &after_ruser[at + " rhost=".len()..];
        let addr = rest.split_once("  user=").map_or(rest, |(addr, _)| addr);
        addr.trim_end().parse::<IpAddr>().ok()
    });
    let Some(source) = agreed(readings) else {
        return Outcome::Understood(Vec::new());
    };
    let n = ledger.report(source, Layer::Pam, 1);
    Outcome::Understood(repeated(
        EventKind::AuthFailure {
            service: Service::Auth,
        },
        source,
        n,
    ))
}

/// The last `rip=ADDR` of the line.
fn remote_ip(text: &str) -> Option<IpAddr> {
    let at = text.rfind(" rip=")? + " rip=".len();
    let value = &text[at..];
    let end = value.find([',', ' ']).unwrap_or(value.len());
    value[..end].parse().ok()
}

/// The text of `user=<...>`, up to the last `>, ` before `rip=`.
fn user(text: &str) -> Option<&str> {
    let start = text.find("user=<")? + "user=<".len();
    let rip = text.rfind(" rip=")?;
    let inner = text.get(start..rip)?;
    let end = inner.rfind(">,")?;
    Some(&inner[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_line(line: &str) -> Vec<Event> {
        crate::parsers::events_of(crate::parsers::Format::Dovecot, line)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failed_imap_login_from_the_log_file() {
        let e = parse_line(
            "Nov 22 07:53:40 imap-login: Info: Disconnected (auth failed, 1 attempts in 2 secs): user=<alice>, method=PLAIN, rip=203.0.113.9, lip=198.51.100.1, session=<abc>",
        );
        assert_eq!(
            e,
            [Event::new(
                EventKind::AuthFailure {
                    service: Service::Imap
                },
                ip("203.0.113.9")
            )
            .with_user(Some("alice"))]
        );
    }

    #[test]
    fn pop3_and_submission_through_syslog() {
        let e = parse_line(
            "Nov 22 07:53:40 mx dovecot[12]: pop3-login: Aborted login (auth failed, 3 attempts in 12 secs): user=<bob>, method=PLAIN, rip=2001:db8:a::7, lip=2001:db8::1, session=<x>",
        );
        assert_eq!(
            e[0].kind,
            EventKind::AuthFailure {
                service: Service::Pop3
            }
        );
        assert_eq!(e[0].source, ip("2001:db8:a::7"));
        let e = parse_line(
            "2026-11-22T07:53:40+00:00 mx dovecot[12]: submission-login: Login: user=<carol>, method=PLAIN, rip=198.51.100.5, lip=198.51.100.1, mpid=9, session=<y>",
        );
        assert_eq!(
            e[0].kind,
            EventKind::AuthSuccess {
                service: Service::Submission
            }
        );
        assert_eq!(e[0].user.as_deref(), Some("carol"));
    }

    fn parse_lines(lines: &[&str]) -> Vec<Event> {
        let mut p = crate::parsers::Parsers::default();
        let mut out = Vec::new();
        for line in lines {
            match p.parse_timed(crate::parsers::Format::Dovecot, line).outcome {
                Outcome::Understood(e) => out.extend(e),
                Outcome::NotUnderstood => panic!("not understood: {line}"),
            }
        }
        out
    }

    #[test]
    fn one_failure_reported_by_pam_the_auth_process_and_the_login_process_counts_once() {
        let e = parse_lines(&[
            "Nov 22 07:53:40 mx auth: pam_unix(dovecot:auth): authentication failure; logname= uid=0 euid=0 tty=dovecot ruser=admin rhost=203.0.113.9  user=admin",
            "Nov 22 07:53:40 mx dovecot[12]: auth-worker(77): pam(admin,203.0.113.9,<AbCd>): pam_authenticate() failed: Authentication failure (password mismatch?)",
            "Nov 22 07:53:42 mx dovecot[12]: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<admin>, method=PLAIN, rip=203.0.113.9, lip=198.51.100.1, session=<AbCd>",
        ]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].source, ip("203.0.113.9"));
    }

    #[test]
    fn auth_process_lines_count_when_the_login_process_reports_nothing() {
        for line in [
            "Nov 22 07:53:40 mx dovecot[12]: auth: passwd-file(admin,203.0.113.9,<AbCd>): unknown user",
            "Nov 22 07:53:40 auth-worker(77): Info: pam(admin,203.0.113.9,<AbCd>): pam_authenticate() failed: Authentication failure (password mismatch?)",
            "Nov 22 07:53:40 auth: Info: sql(bob,203.0.113.9,<x>): Password mismatch",
            "Nov 22 07:53:40 auth: Info: ldap(dog,203.0.113.9,): invalid credentials",
        ] {
            let e = parse_lines(&[line]);
            assert_eq!(e.len(), 1, "{line}");
            assert_eq!(e[0].source, ip("203.0.113.9"), "{line}");
        }
        // Dovecot 2.4's prefix: the user and address in the process's own brackets.
        let e = parse_lines(&[
            "Jun 12 20:02:12 kvm456 dovecot[996]: auth-worker(jose.basanta,203.0.113.9)<1489164><8oNSumM3A8mK/86a>: request [393]: unix_user: pam_authenticate() failed: Authentication failure (Password mismatch?)",
        ]);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].source, ip("203.0.113.9"));
        assert_eq!(e[0].user.as_deref(), Some("jose.basanta"));
        let e = parse_lines(&[
            "Jun 12 20:02:12 kvm456 dovecot[996]: auth-worker(x,198.51.100.66)<1><2>: request [3]: u: unknown user,203.0.113.9)<1489164><8oNS>: request [393]: unix_user: unknown user",
        ]);
        assert_eq!(e[0].source, ip("203.0.113.9"));
        // A user name holding commas, brackets and an address cannot move the blame.
        let e = parse_lines(&[
            "Nov 22 07:53:40 auth-worker(77): Info: pam(x,198.51.100.66): unknown user,198.51.100.66,<q>,203.0.113.9,<AbCd>): unknown user",
        ]);
        assert_eq!(e[0].source, ip("203.0.113.9"));
    }

    #[test]
    fn pam_rhost_is_read_only_when_one_reading_holds() {
        let e = parse_lines(&[
            "Nov 22 07:53:40 mx auth: pam_unix(dovecot:auth): authentication failure; logname= uid=0 euid=0 tty=dovecot ruser=x rhost=198.51.100.66 rhost=203.0.113.9",
        ]);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].source, ip("203.0.113.9"));
        let e = parse_lines(&[
            "Nov 22 07:53:40 mx auth: pam_unix(dovecot:auth): authentication failure; logname= uid=0 euid=0 tty=dovecot ruser=x rhost=198.51.100.66  user=x rhost=203.0.113.9  user=x rhost=198.51.100.66  user=x",
        ]);
        assert!(e.is_empty(), "two readings hold an address: {e:?}");
    }

    #[test]
    fn probes_and_protocol_abuse() {
        let kinds: Vec<EventKind> = parse_lines(&[
            "Nov 22 07:53:40 imap-login: Info: Disconnected (no auth attempts in 0 secs): user=<>, rip=203.0.113.9, lip=198.51.100.1, session=<z>",
            "Nov 22 07:53:40 mx dovecot: pop3-login: Aborted login (tried to use disallowed plaintext auth): user=<x (no auth attempts>, rip=203.0.113.9, lip=198.51.100.1",
            "Nov 22 07:53:40 mx dovecot: managesieve-login: Disconnected: Too many invalid commands. (no auth attempts in 0 secs): user=<>, rip=203.0.113.9",
            "Nov 22 07:53:40 mx dovecot: imap-login: Disconnected (client didn't finish SASL auth, waited 2 secs): user=<>, method=PLAIN, rip=203.0.113.9",
        ])
        .into_iter()
        .map(|e| e.kind)
        .collect();
        assert_eq!(
            kinds,
            [
                EventKind::NoAuthProbe,
                EventKind::PlaintextAuth,
                EventKind::ProtocolError,
                EventKind::LostAfterAuth
            ]
        );
    }

    #[test]
    fn a_user_name_cannot_move_the_blame() {
        let e = parse_line(
            "Nov 22 07:53:40 imap-login: Info: Disconnected (auth failed, 1 attempts in 2 secs): user=<x, rip=198.51.100.66, lip=1.2.3.4>, method=PLAIN, rip=203.0.113.9, lip=198.51.100.1, session=<abc>",
        );
        assert_eq!(e[0].source, ip("203.0.113.9"));
        assert_eq!(
            e[0].user.as_deref(),
            Some("x, rip=198.51.100.66, lip=1.2.3.4")
        );
    }
}
