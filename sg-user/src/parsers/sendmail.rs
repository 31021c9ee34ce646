//! sendmail (`sendmail`/`sm-mta` through syslog, LogLevel 9, the default).
//!
//! sendmail writes the client as `relay=NAME [ADDR]` (or `relay=[ADDR]`, with
//! ` (may be forged)` after it when the name does not resolve back). Attacker text (envelope
//! addresses, Message-ID, user names) can contain `relay=` too, so:
//! - in `from=` and `AUTH failure` lines, where `relay=` is the last field, the last one is the
//!   server's;
//! - in `ruleset=... reject=` lines, where the rejected address is written both before and after
//!   `relay=`, a line with more than one `relay=` is ambiguous and yields nothing.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use super::{Outcome, agreed, field_spans, field_starts, repeated};
use crate::events::{Event, EventKind, RejectKind, Service};

/// Queue ids with unknown recipients waiting for their `from=` line. When full, the oldest is
/// forgotten (its unknown recipients are then not counted): memory stays bounded.
pub const QUEUE_CAPACITY: usize = 65_536;

/// The most unknown recipients counted for one session.
const MAX_UNKNOWN: u32 = 100;

/// `sendmail`, `sm-mta`, `sm-msp-queue`, and the names sendmail gives its processes
/// (`sm-acceptingconnections`).
pub fn is_sendmail(program: &str) -> bool {
    program == "sendmail" || program.starts_with("sm-")
}

/// sendmail logs `QID: <rcpt>... User unknown` without the client, and the client only on the
/// session's `QID: from=..., relay=` line; the parser keeps a bounded queue-id table between.
#[derive(Default)]
pub struct Sendmail {
    unknown: HashMap<String, u32>,
    order: VecDeque<String>,
}

impl Sendmail {
    pub fn parse(&mut self, message: &str) -> Outcome {
        // "QID: text" (a queue id of letters and digits) or plain text.
        let (qid, text) = match message.split_once(": ") {
            Some((qid, rest))
                if !qid.is_empty() && qid.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                (Some(qid), rest)
            }
            _ => (None, message),
        };
        if let Some(fields) = text.strip_prefix("from=") {
            let unknown = qid.and_then(|q| self.unknown.remove(q)).unwrap_or(0);
            return accepted(fields, unknown);
        }
        if text.starts_with('<')
            && (text.ends_with("... User unknown") || text.ends_with("... No such user here"))
        {
            if let Some(qid) = qid {
                self.remember_unknown(qid);
            }
            return Outcome::Understood(Vec::new());
        }
        parse_text(text)
    }

    fn remember_unknown(&mut self, qid: &str) {
        if let Some(n) = self.unknown.get_mut(qid) {
            *n = (*n + 1).min(MAX_UNKNOWN);
            return;
        }
        while self.unknown.len() >= QUEUE_CAPACITY {
            match self.order.pop_front() {
                Some(old) => {
                    self.unknown.remove(&old);
                }
                None => break,
            }
        }
        self.unknown.insert(qid.to_string(), 1);
        self.order.push_back(qid.to_string());
        if self.order.len() > 2 * QUEUE_CAPACITY {
            let unknown = &self.unknown;
            self.order.retain(|q| unknown.contains_key(q));
        }
    }
}

fn parse_text(text: &str) -> Outcome {
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
    if text.starts_with("to=") || text.starts_with('<') || text.starts_with("done") {
        // Deliveries and per-recipient notes carry no client.
        return Outcome::Understood(Vec::new());
    }
    // Lines about a client `NAME [ADDR]`, the server's words after it. NAME comes from the
    // client's reverse DNS, so the address is read backwards from the server's tail.
    let signal = |kind: EventKind, client: &str| match address_at_end(client) {
        Some(addr) => Outcome::Understood(vec![Event::new(kind, addr)]),
        None => Outcome::NotUnderstood,
    };
    if let Some(rest) = text.strip_prefix("lost input channel from ") {
        // "lost input channel from NAME [ADDR] to MTA after auth"
        let Some((client, to)) = rest.rsplit_once(" to ") else {
            return Outcome::NotUnderstood;
        };
        return match to.split_once(" after ") {
            Some((daemon, "auth")) if is_word(daemon) => signal(EventKind::LostAfterAuth, client),
            _ => Outcome::Understood(Vec::new()),
        };
    }
    if let Some(rest) = text.strip_prefix("rejecting commands from ") {
        // "rejecting commands from NAME [ADDR] due to pre-greeting traffic after 0 seconds"
        return match rest.rsplit_once(" due to pre-greeting traffic after ") {
            Some((client, after)) if after.strip_suffix(" seconds").is_some_and(is_number) => {
                signal(EventKind::Pregreet, client)
            }
            _ => Outcome::NotUnderstood,
        };
    }
    if let Some((client, attack)) = text.rsplit_once(": possible SMTP attack: command=") {
        // "NAME [ADDR]: possible SMTP attack: command=AUTH, count=5", nothing after.
        return match attack.split_once(", count=") {
            Some((command, count)) if is_word(command) && is_number(count) => {
                let kind = if command == "AUTH" {
                    EventKind::AuthFailure {
                        service: Service::Smtp,
                    }
                } else {
                    EventKind::ProtocolError
                };
                signal(kind, client)
            }
            _ => Outcome::NotUnderstood,
        };
    }
    if let Some((client, daemon)) =
        text.rsplit_once(" did not issue MAIL/EXPN/VRFY/ETRN during connection to ")
    {
        return if is_word(daemon) {
            signal(EventKind::LostEarly, client)
        } else {
            Outcome::NotUnderstood
        };
    }
    if text.ends_with(" [rejected]") {
        return expn_vrfy(text);
    }
    Outcome::NotUnderstood
}

/// The address of `NAME [ADDR]`, `[ADDR]` or `relay=[ADDR]`, with ` (may be forged)` or not, at
/// the end of `text`.
fn address_at_end(text: &str) -> Option<IpAddr> {
    let text = text.strip_suffix(" (may be forged)").unwrap_or(text);
    let (before, addr) = text.strip_suffix(']')?.rsplit_once('[')?;
    if !(before.is_empty() || before.ends_with(' ') || before.ends_with("relay=")) {
        return None;
    }
    addr.strip_prefix("IPv6:").unwrap_or(addr).parse().ok()
}

/// "NAME [ADDR]: EXPN root [rejected]": the client's reverse name before the address and its
/// argument after it. The line is read at every `]: EXPN ` or `]: VRFY ` (either case); the
/// server's reading always holds an address, and it is taken only when no other reading does.
fn expn_vrfy(text: &str) -> Outcome {
    let Some(starts) = field_starts(text, "]: ") else {
        return Outcome::Understood(Vec::new());
    };
    let readings = starts.into_iter().filter_map(|at| {
        let verb = text.get(at + 3..at + 8)?.to_ascii_uppercase();
        if verb != "EXPN " && verb != "VRFY " {
            return None;
        }
        address_at_end(&text[..at + 1])
    });
    match agreed(readings) {
        Some(addr) => Outcome::Understood(vec![Event::new(EventKind::ExpnVrfy, addr)]),
        None => Outcome::Understood(Vec::new()),
    }
}

/// A word of the server's: a command or a daemon name (`AUTH`, `MTA-v4`).
fn is_word(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// `from=<a@b>, size=N, class=0, nrcpts=N, msgid=<..>, proto=ESMTP, daemon=MTA, relay=..`;
/// `unknown` recipients of the session were refused before it.
fn accepted(fields: &str, unknown: u32) -> Outcome {
    let Some(addr) = last_relay(fields) else {
        // Locally submitted mail (relay=root@localhost) has no client address.
        return Outcome::Understood(Vec::new());
    };
    let number = |name: &str| field(fields, name).and_then(|v| v.parse::<u64>().ok());
    let recipients = number("nrcpts=").unwrap_or(1) as u32;
    let size = number("size=").unwrap_or(0);
    let reject = RejectKind::UnknownRecipient;
    let mut events = repeated(EventKind::Reject { reject }, addr, unknown);
    if recipients > 0 {
        events.push(Event::new(
            EventKind::MessageAccepted { recipients, size },
            addr,
        ));
        if fields.starts_with("<>,") {
            events.push(Event::new(EventKind::Bounce, addr));
        }
    }
    Outcome::Understood(events)
}

/// `ruleset=check_rcpt, arg1=<x>, relay=NAME [ADDR], reject=550 5.1.1 <x>... User unknown`.
///
/// The rejected address (the client's text) is written before `relay=` and again in the reply
/// after it, and NAME is the client's reverse DNS, so each can imitate the relay field. The line
/// is read at every pair of a `, relay=` and a later `, reject=`: a reading holds when the text
/// between ends in `[ADDR]` (or `[ADDR] (may be forged)`). The server's reading always holds;
/// the client is taken only when no other reading does.
fn reject(text: &str) -> Outcome {
    let Some(spans) = field_spans(text, ", relay=", ", reject=") else {
        return Outcome::Understood(Vec::new());
    };
    let readings = spans
        .into_iter()
        .filter_map(|span| address_at_end(&text[span]));
    let Some(addr) = agreed(readings) else {
        return Outcome::Understood(Vec::new());
    };
    // The server's reply is the line's last field (what the client wrote in it can only make
    // its own reject weigh more).
    let why = text.rsplit_once(", reject=").map_or("", |(_, why)| why);
    let reject = if why.contains("User unknown") || why.contains("No such user") {
        RejectKind::UnknownRecipient
    } else if why.contains("Relaying denied") {
        RejectKind::RelayDenied
    } else if text.starts_with("ruleset=check_relay")
        || why.contains("listed at")
        || why.contains("blocked using")
        || why.contains(" RBL")
    {
        RejectKind::Rbl
    } else if text.starts_with("ruleset=check_mail") {
        RejectKind::Sender
    } else {
        RejectKind::Other
    };
    Outcome::Understood(vec![Event::new(EventKind::Reject { reject }, addr)])
}

/// The address of `relay=NAME [ADDR]`, the line's last field (`from=` and `AUTH failure` lines):
/// read from the end, so neither the client's text before it nor its reverse name can move it.
fn last_relay(text: &str) -> Option<IpAddr> {
    if !text.contains("relay=") {
        return None;
    }
    address_at_end(text.trim_end())
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
        match Sendmail::default().parse(line) {
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
        // A rejected address that imitates relay=: only one reading has the reply repeat its
        // arg1 and a relay followed by reject=, the server's.
        let e = events(
            "ruleset=check_rcpt, arg1=<\"a, relay=[198.51.100.1], \"@x.test>, relay=[203.0.113.66], \
             reject=550 5.1.1 <\"a, relay=[198.51.100.1], \"@x.test>... User unknown",
        );
        assert_eq!(e[0].source, ip("203.0.113.66"));
        // One that imitates the whole layout reads two ways: no event at all.
        let e = events(
            "ruleset=check_rcpt, arg1=<a>, relay=[198.51.100.1], reject=550 5.1.1 <a>... User unknown>, \
             relay=[203.0.113.66], reject=550 5.1.1 <a>, relay=[198.51.100.1], reject=550 5.1.1 <a>... User unknown>... User unknown",
        );
        assert!(e.is_empty(), "{e:?}");
    }
}
