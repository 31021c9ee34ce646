//! Dovecot 2.3 login processes (imap-login, pop3-login, submission-login), from its own log file
//! (`imap-login: Info: Login: ...`) or through syslog (`dovecot: imap-login: Login: ...`).
//!
//! The user name is the client's text and comes before `rip=` (login-common/client-common.c
//! writes `user=<%u>, method=%m, rip=%r, lip=%l, ...`), so the address is read from the last
//! `rip=` of the line: a user named `x, rip=203.0.113.9` cannot move the blame.

use std::net::IpAddr;

use super::Outcome;
use crate::events::{Event, EventKind, Service};

const SERVICES: [(&str, Service); 3] = [
    ("imap-login", Service::Imap),
    ("pop3-login", Service::Pop3),
    ("submission-login", Service::Submission),
];

fn service_of(program: &str) -> Option<Service> {
    SERVICES
        .iter()
        .find(|(p, _)| *p == program)
        .map(|(_, s)| *s)
}

/// A Dovecot login or auth line, either form.
pub fn is_dovecot(program: &str, message: &str) -> bool {
    service_of(program).is_some()
        || is_auth(program)
        || (program == "dovecot" && (split_service(message).is_some() || is_auth(message)))
}

/// The auth process (`auth: ...`, `auth-worker(123): ...`), or a message of it through syslog.
fn is_auth(text: &str) -> bool {
    text == "auth" || text.starts_with("auth: ") || text.starts_with("auth-worker")
}

/// "imap-login: rest" inside a syslog `dovecot:` message.
fn split_service(message: &str) -> Option<(Service, &str)> {
    let (program, rest) = message.split_once(": ")?;
    Some((service_of(program)?, rest))
}

pub fn parse(program: &str, message: &str) -> Outcome {
    if is_auth(program) || (program == "dovecot" && is_auth(message)) {
        // `passwd-file(user,rip,<session>): unknown user` and the like (auth_verbose). Every
        // failure the auth process reports is also reported, with its service, by the login
        // process (or by the MTA, for SMTP AUTH through Dovecot SASL): counting both would
        // double the points, so these lines carry no event.
        return Outcome::Understood(Vec::new());
    }
    let (service, text) = match service_of(program) {
        Some(s) => (s, message),
        None => match split_service(message) {
            Some(found) => found,
            None => return Outcome::NotUnderstood,
        },
    };
    let text = text.strip_prefix("Info: ").unwrap_or(text);
    let kind = if text.starts_with("Login: ") {
        EventKind::AuthSuccess { service }
    } else if (text.starts_with("Disconnected") || text.starts_with("Aborted login"))
        && text.contains("(auth failed")
    {
        EventKind::AuthFailure { service }
    } else if text.starts_with("Disconnected") || text.starts_with("Aborted login") {
        return Outcome::Understood(Vec::new());
    } else {
        return Outcome::NotUnderstood;
    };
    let Some(source) = remote_ip(text) else {
        return Outcome::NotUnderstood;
    };
    Outcome::Understood(vec![Event::new(kind, source).with_user(user(text))])
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

    #[test]
    fn auth_process_lines_are_understood_without_counting_twice() {
        for line in [
            "Nov 22 07:53:40 mx dovecot[12]: auth: passwd-file(admin,203.0.113.9,<AbCd>): unknown user",
            "Nov 22 07:53:40 auth-worker(77): Info: pam(admin,203.0.113.9,<AbCd>): pam_authenticate() failed: Authentication failure (password mismatch?)",
            "Nov 22 07:53:40 auth: Info: sql(bob,2001:db8::9,<x>): Password mismatch",
        ] {
            assert!(parse_line(line).is_empty(), "{line}");
        }
    }

    #[test]
    fn disconnects_without_auth_failure_have_no_event() {
        assert!(parse_line("Nov 22 07:53:40 imap-login: Info: Disconnected (no auth attempts in 0 secs): user=<>, rip=203.0.113.9, lip=198.51.100.1, session=<z>").is_empty());
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
