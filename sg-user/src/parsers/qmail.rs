//! qmail under daemontools: tcpserver and rblsmtpd through multilog (TAI64N stamps), and the
//! chkuser patch's recipient checks in qmail-smtpd's log.
//!
//! - `tcpserver: pid 1234 from 203.0.113.9`: the address alone, written by tcpserver.
//! - `rblsmtpd: 203.0.113.9 pid 1234: 451 ...`: the address first, from TCPREMOTEIP.
//! - `CHKUSER rejected rcpt: from <S::> remote <HELO:HOST:ADDR> rcpt <R> : reason`: the HELO
//!   and both addresses are the client's text, so the line must hold exactly one ` remote <`
//!   and one `> rcpt <`, and the address is the last `:` field between them; otherwise the
//!   line yields nothing.

use std::net::IpAddr;

use super::Outcome;
use crate::events::{Event, EventKind, RejectKind};

pub fn is_qmail(program: &str) -> bool {
    matches!(
        program,
        "tcpserver" | "rblsmtpd" | "qmail-smtpd" | "CHKUSER" | "qmail"
    )
}

pub fn parse(program: &str, message: &str) -> Outcome {
    match program {
        "tcpserver" => tcpserver(message),
        "rblsmtpd" => rblsmtpd(message),
        "qmail" => splogger(message),
        "qmail-smtpd" if message.contains(" badiprbl: ") => badiprbl(message),
        _ => chkuser(message),
    }
}

/// qmail's programs through syslog: splogger tags them all `qmail` and starts each message with
/// a Unix time (`qmail: 1157520813.485077 rblsmtpd: 203.0.113.9 pid 19597 zen...: 451 ...`).
fn splogger(message: &str) -> Outcome {
    let text = match message.split_once(' ') {
        Some((stamp, rest))
            if !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
        {
            rest
        }
        _ => message,
    };
    match text.split_once(": ") {
        Some(("rblsmtpd", rest)) => rblsmtpd(rest),
        Some(("tcpserver", rest)) => tcpserver(rest),
        Some(("qmail-smtpd", rest)) if rest.contains(" badiprbl: ") => badiprbl(rest),
        Some(("qmail-smtpd" | "CHKUSER", _)) => {
            chkuser(text.split_once(": ").map_or(text, |(_, r)| r))
        }
        // qmail-send's deliveries and status lines name no client.
        _ => Outcome::Understood(Vec::new()),
    }
}

/// The badiprbl patch: `421 badiprbl: ip 203.0.113.9 rbl: zen.spamhaus.org`.
fn badiprbl(message: &str) -> Outcome {
    let addr = message
        .split_once(" badiprbl: ip ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|a| a.parse::<IpAddr>().ok());
    match addr {
        Some(addr) => Outcome::Understood(vec![Event::new(
            EventKind::Reject {
                reject: RejectKind::Rbl,
            },
            addr,
        )]),
        None => Outcome::NotUnderstood,
    }
}

fn tcpserver(message: &str) -> Outcome {
    let Some(rest) = message.strip_prefix("pid ") else {
        // "status: 1/40", "ok ...", "end ... status 0", "deny ...": nothing to count.
        return Outcome::Understood(Vec::new());
    };
    let Some((_pid, addr)) = rest.split_once(" from ") else {
        return Outcome::NotUnderstood;
    };
    match addr.trim().parse::<IpAddr>() {
        Ok(addr) => Outcome::Understood(vec![Event::new(EventKind::Connection, addr)]),
        Err(_) => Outcome::NotUnderstood,
    }
}

/// `203.0.113.9 pid 1234: 451 ...` (TCPREMOTEIP first), or older rblsmtpd's `ZONE blocked
/// 203.0.113.9 NAME -` (the zone is the server's configuration).
fn rblsmtpd(message: &str) -> Outcome {
    let addr = match message.split_once(" pid ") {
        Some((addr, _)) => addr,
        None => match message.split_once(" blocked ") {
            Some((zone, rest)) if !zone.contains(' ') => rest.split(' ').next().unwrap_or(""),
            _ => return Outcome::NotUnderstood,
        },
    };
    match addr.parse::<IpAddr>() {
        Ok(addr) => Outcome::Understood(vec![Event::new(
            EventKind::Reject {
                reject: RejectKind::Rbl,
            },
            addr,
        )]),
        Err(_) => Outcome::NotUnderstood,
    }
}

fn chkuser(message: &str) -> Outcome {
    let Some(rest) = message
        .strip_prefix("CHKUSER ")
        .or_else(|| message.strip_prefix("rejected"))
    else {
        return Outcome::NotUnderstood;
    };
    if !rest.starts_with("rejected") {
        // "CHKUSER accepted rcpt: ..." and relaying notes.
        return Outcome::Understood(Vec::new());
    }
    // The address sits between the only ` remote <` and the only `> rcpt <`: the sender
    // before, the HELO inside and the recipient after are the client's text, so a second
    // copy of either marker anywhere makes the line ambiguous.
    if message.matches(" remote <").count() != 1 || message.matches("> rcpt <").count() != 1 {
        return Outcome::Understood(Vec::new());
    }
    let Some((_, remote)) = message.split_once(" remote <") else {
        return Outcome::NotUnderstood;
    };
    let Some((remote, after)) = remote.split_once("> rcpt <") else {
        return Outcome::Understood(Vec::new());
    };
    let Some(addr) = remote
        .rsplit_once(':')
        .and_then(|(_, a)| a.parse::<IpAddr>().ok())
    else {
        return Outcome::NotUnderstood;
    };
    let reject = if after.contains("not existing recipient") {
        RejectKind::UnknownRecipient
    } else if after.contains("not allowed") || after.contains("relaying") {
        RejectKind::RelayDenied
    } else {
        RejectKind::Other
    };
    Outcome::Understood(vec![Event::new(EventKind::Reject { reject }, addr)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(line: &str) -> Vec<Event> {
        crate::parsers::events_of(crate::parsers::Format::Qmail, line)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tcpserver_connection_and_rblsmtpd_reject() {
        assert_eq!(
            events("@4000000069216ed40a3f4c2c tcpserver: pid 4711 from 203.0.113.9"),
            [Event::new(EventKind::Connection, ip("203.0.113.9"))]
        );
        assert!(events("@4000000069216ed40a3f4c2c tcpserver: status: 1/40").is_empty());
        assert_eq!(
            events(
                "@4000000069216ed40a3f4c2d rblsmtpd: 2001:db8::9 pid 4712: 451 http://www.spamhaus.org/query/bl?ip=2001:db8::9"
            )[0]
            .kind,
            EventKind::Reject {
                reject: RejectKind::Rbl
            }
        );
    }

    #[test]
    fn chkuser_unknown_recipient() {
        let e = events(
            "@4000000069216ed40a3f4c2e CHKUSER rejected rcpt: from <spam@example.com::> \
             remote <mx.example:unknown:203.0.113.9> rcpt <nobody@example.net> : not existing recipient",
        );
        assert_eq!(
            e,
            [Event::new(
                EventKind::Reject {
                    reject: RejectKind::UnknownRecipient
                },
                ip("203.0.113.9")
            )]
        );
    }

    #[test]
    fn attacker_text_never_names_the_client() {
        // A HELO ending in an address, and a sender imitating the remote field.
        let e = events(
            "@4000000069216ed40a3f4c2e CHKUSER rejected rcpt: from <a@b::> \
             remote <helo:198.51.100.1:unknown:203.0.113.66> rcpt <x@y> : not existing recipient",
        );
        assert_eq!(e[0].source, ip("203.0.113.66"));
        let e = events(
            "@4000000069216ed40a3f4c2e CHKUSER rejected rcpt: from <x remote <h:h:198.51.100.1> rcpt <@b::> \
             remote <h:unknown:203.0.113.66> rcpt <x@y> : not existing recipient",
        );
        assert!(e.is_empty(), "ambiguous lines yield nothing: {e:?}");
    }
}
