//! sendmail (`sendmail`/`sm-mta` through syslog, LogLevel 9, the default).
//!
//! sendmail writes the client as `relay=NAME [ADDR]` (or `relay=[ADDR]`, with
//! ` (may be forged)` after it when the name does not resolve back). Attacker text (envelope
//! addresses, Message-ID, user names) can contain `relay=` too, so:
//! - in `from=` and `AUTH failure` lines, where `relay=` is the last field, the last one is the
//!   server's;
//! - in `ruleset=... reject=` lines, where the rejected address is written both before and after
//!   `relay=`, a line with more than one `relay=` is ambiguous and yields nothing.

use std::net::IpAddr;

use super::{Outcome, bracketed_client};
use crate::events::{Event, EventKind, RejectKind, Service};

pub fn is_sendmail(program: &str) -> bool {
    matches!(program, "sendmail" | "sm-mta" | "sm-msp-queue")
}

pub fn parse(message: &str) -> Outcome {
    // "QID: text" (a queue id of letters and digits) or plain text.
    let text = match message.split_once(": ") {
        Some((qid, rest)) if !qid.is_empty() && qid.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            rest
        }
        _ => message,
    };
    if let Some(fields) = text.strip_prefix("from=") {
        return accepted(fields);
    }
    if text.starts_with("ruleset=") {
        return reject(text);
    }
    if text.starts_with("AUTH failure") {
        return match last_relay(text) {
            Some(addr) => Outcome::Understood(vec![
                Event::new(
                    EventKind::AuthFailure {
                        service: Service::Smtp,
                    },
                    addr,
                )
                .with_user(field(text, "user=")),
            ]),
            None => Outcome::NotUnderstood,
        };
    }
    if let Some(rest) = text.strip_prefix("lost input channel from ") {
        // "lost input channel from NAME [ADDR] to MTA after auth": the client comes first.
        let Some((addr, after)) = bracketed_or_named(rest) else {
            return Outcome::NotUnderstood;
        };
        let kind = if after.trim_end().ends_with(" after auth") {
            EventKind::LostAfterAuth
        } else {
            return Outcome::Understood(Vec::new());
        };
        return Outcome::Understood(vec![Event::new(kind, addr)]);
    }
    if text.starts_with("to=") || text.starts_with('<') || text.starts_with("done") {
        // Deliveries and per-recipient notes carry no client.
        return Outcome::Understood(Vec::new());
    }
    Outcome::NotUnderstood
}

/// `from=<a@b>, size=N, class=0, nrcpts=N, msgid=<..>, proto=ESMTP, daemon=MTA, relay=..`
fn accepted(fields: &str) -> Outcome {
    let Some(addr) = last_relay(fields) else {
        // Locally submitted mail (relay=root@localhost) has no client address.
        return Outcome::Understood(Vec::new());
    };
    let number = |name: &str| field(fields, name).and_then(|v| v.parse::<u64>().ok());
    let recipients = number("nrcpts=").unwrap_or(1) as u32;
    let size = number("size=").unwrap_or(0);
    let mut events = vec![Event::new(
        EventKind::MessageAccepted { recipients, size },
        addr,
    )];
    if fields.starts_with("<>,") {
        events.push(Event::new(EventKind::Bounce, addr));
    }
    Outcome::Understood(events)
}

/// `ruleset=check_rcpt, arg1=<x>, relay=NAME [ADDR], reject=550 5.1.1 <x>... User unknown`
fn reject(text: &str) -> Outcome {
    if text.matches("relay=").count() != 1 {
        return Outcome::Understood(Vec::new());
    }
    let Some(addr) = last_relay(text) else {
        return Outcome::NotUnderstood;
    };
    let Some((_, why)) = text.split_once(", reject=") else {
        return Outcome::Understood(Vec::new());
    };
    let reject = if why.contains("User unknown") {
        RejectKind::UnknownRecipient
    } else if why.contains("Relaying denied") {
        RejectKind::RelayDenied
    } else if text.starts_with("ruleset=check_relay")
        || why.contains("listed at")
        || why.contains("blocked using")
    {
        RejectKind::Rbl
    } else if text.starts_with("ruleset=check_mail") {
        RejectKind::Sender
    } else {
        RejectKind::Other
    };
    Outcome::Understood(vec![Event::new(EventKind::Reject { reject }, addr)])
}

/// The address of the last `relay=NAME [ADDR]` or `relay=[ADDR]`.
fn last_relay(text: &str) -> Option<IpAddr> {
    let (_, relay) = text.rsplit_once("relay=")?;
    bracketed_or_named(relay).map(|(addr, _)| addr)
}

/// `NAME [ADDR]` or `[ADDR]` (sendmail puts a space between name and bracket; IPv6 as
/// `[IPv6:2001:db8::1]`).
fn bracketed_or_named(text: &str) -> Option<(IpAddr, &str)> {
    let text = match text.split_once(' ') {
        Some((name, rest)) if !name.starts_with('[') && rest.starts_with('[') => rest,
        _ => text,
    };
    if !text.starts_with('[') {
        return None;
    }
    bracketed_client(text)
}

/// The value of `name` up to the next `,` (`nrcpts=3, ...` -> `3`).
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let at = text.find(name)?;
    let value = &text[at + name.len()..];
    Some(value.split(',').next().unwrap_or(value).trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(line: &str) -> Vec<Event> {
        match parse(line) {
            Outcome::Understood(e) => e,
            Outcome::NotUnderstood => panic!("not understood: {line}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_accepted_message_names_size_recipients_and_relay() {
        let e = events(
            "5AM7rePq001234: from=<news@example.com>, size=4321, class=0, nrcpts=3, \
             msgid=<a@example.com>, proto=ESMTP, daemon=MTA-v4, relay=mx.example.com [203.0.113.9]",
        );
        assert_eq!(
            e,
            [Event::new(
                EventKind::MessageAccepted {
                    recipients: 3,
                    size: 4321
                },
                ip("203.0.113.9")
            )]
        );
        let e = events(
            "5AM7rePq001235: from=<>, size=900, class=0, nrcpts=1, proto=SMTP, daemon=MTA, \
             relay=[IPv6:2001:db8::25] (may be forged)",
        );
        assert_eq!(e[1], Event::new(EventKind::Bounce, ip("2001:db8::25")));
    }

    #[test]
    fn reject_kinds() {
        let kind = |line: &str| match &events(line)[0].kind {
            EventKind::Reject { reject } => *reject,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            kind(
                "5AM7rePq001236: ruleset=check_rcpt, arg1=<bob@example.org>, relay=x.example [203.0.113.9], \
                 reject=550 5.1.1 <bob@example.org>... User unknown"
            ),
            RejectKind::UnknownRecipient
        );
        assert_eq!(
            kind(
                "5AM7rePq001237: ruleset=check_rcpt, arg1=<a@elsewhere.test>, relay=[203.0.113.9], \
                 reject=550 5.7.1 <a@elsewhere.test>... Relaying denied"
            ),
            RejectKind::RelayDenied
        );
        assert_eq!(
            kind(
                "ruleset=check_relay, arg1=unknown, arg2=203.0.113.9, relay=[203.0.113.9], \
                 reject=550 5.7.1 Rejected: 203.0.113.9 listed at zen.spamhaus.org"
            ),
            RejectKind::Rbl
        );
    }

    #[test]
    fn auth_failure_and_lost_after_auth() {
        let e = events(
            "AUTH failure (LOGIN): authentication failure (-13) SASL(-13): authentication failure: \
             checkpass failed, user=bob, relay=unknown [198.51.100.7]",
        );
        assert_eq!(e[0].source, ip("198.51.100.7"));
        assert_eq!(e[0].user.as_deref(), Some("bob"));
        let e = events(
            "5AM7rePq001238: lost input channel from x.example [198.51.100.7] to MTA after auth",
        );
        assert_eq!(
            e,
            [Event::new(EventKind::LostAfterAuth, ip("198.51.100.7"))]
        );
    }

    #[test]
    fn attacker_text_never_names_the_client() {
        // An envelope sender, a Message-ID and a user name that imitate relay=.
        for line in [
            "5AM7rePq001239: from=<x, relay=[198.51.100.1]>, size=1, class=0, nrcpts=1, \
             msgid=<relay=[198.51.100.1]>, proto=ESMTP, daemon=MTA, relay=evil.test [203.0.113.66]",
            "AUTH failure (LOGIN): authentication failure, user=x, relay=[198.51.100.1], \
             relay=[203.0.113.66]",
        ] {
            for e in events(line) {
                assert_eq!(e.source, ip("203.0.113.66"), "{line}");
            }
        }
        // A rejected address that imitates relay= makes the line ambiguous: no event at all.
        let e = events(
            "ruleset=check_rcpt, arg1=<\"a, relay=[198.51.100.1], \"@x.test>, relay=[203.0.113.66], \
             reject=550 5.1.1 <\"a, relay=[198.51.100.1], \"@x.test>... User unknown",
        );
        assert!(e.is_empty());
    }
}
