//! Postfix: smtpd, postscreen, qmgr and cleanup lines, multi-instance names included
//! (`postfix-out/smtpd`, `postfix/submission/smtpd`). Line shapes follow Postfix 3.x's
//! smtpd.c, smtpd_check.c, postscreen*.c and qmgr_active.c.
//!
//! A message's client appears on smtpd's `QUEUEID: client=...` line; qmgr's `from=<...>, size=,
//! nrcpt=` line only has the queue id, so the parser keeps a bounded queue-id -> client table.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use super::{
    Outcome, bracketed_client,
    ledger::{Clocked, Layer},
    repeated,
};
use crate::events::{Event, EventKind, RejectKind, Service};

/// Queue ids remembered between smtpd's `client=` and qmgr's `from=` lines. When full, the
/// oldest is forgotten (its message is then not counted): memory stays bounded under a flood.
pub const QUEUE_CAPACITY: usize = 65_536;

#[derive(Default)]
pub struct Postfix {
    clients: HashMap<String, (IpAddr, Option<String>)>,
    order: VecDeque<String>,
}

/// `postfix/smtpd`, `postfix-out/qmgr`, `postfix/submission/smtpd`, ...
pub fn is_postfix(program: &str) -> bool {
    program.starts_with("postfix") && program.contains('/')
}

fn one(kind: EventKind, source: IpAddr) -> Outcome {
    Outcome::Understood(vec![Event::new(kind, source)])
}

const NOTHING: Outcome = Outcome::Understood(Vec::new());

impl Postfix {
    pub fn parse(&mut self, program: &str, message: &str, ledger: Clocked<'_>) -> Outcome {
        let daemon = program.rsplit('/').next().unwrap_or(program);
        let service = if program.contains("submission") || program.contains("smtps") {
            Service::Submission
        } else {
            Service::Smtp
        };
        match daemon {
            "smtpd" => self.smtpd(message, service, ledger),
            "postscreen" => postscreen(message),
            "qmgr" => self.qmgr(message),
            "cleanup" => self.cleanup(message),
            _ => NOTHING,
        }
    }

    fn smtpd(&mut self, message: &str, service: Service, ledger: Clocked<'_>) -> Outcome {
        if let Some(rest) = message.strip_prefix("connect from ") {
            return match bracketed_client(rest) {
                Some((addr, _)) => one(EventKind::Connection, addr),
                None => Outcome::NotUnderstood,
            };
        }
        if let Some(rest) = message.strip_prefix("disconnect from ") {
            return disconnect(rest, service, ledger);
        }
        if let Some(rest) = message.strip_prefix("lost connection after ") {
            return lost_after(rest);
        }
        if let Some(rest) = message.strip_prefix("timeout after ") {
            return lost_after(rest);
        }
        if let Some(rest) = message.strip_prefix("improper command pipelining after ") {
            // "improper command pipelining after CMD from NAME[ADDR]: TEXT": the client's text
            // comes after the client.
            return client_after(rest, " from ", EventKind::Pipelining);
        }
        if let Some(rest) = message.strip_prefix("too many errors after ") {
            // "too many errors after RCPT from NAME[ADDR]"
            return client_after(rest, " from ", EventKind::TooManyErrors);
        }
        if let Some(rest) = message.strip_prefix("SSL_accept error from ") {
            // A TLS handshake that failed: scanners, and clients with broken TLS.
            return client_event(rest, EventKind::LostEarly);
        }
        if let Some(rest) = message.strip_prefix("warning: ") {
            return warning(rest, service, ledger);
        }
        if let Some((queue_id, rest)) = split_queue_id(message) {
            if let Some(client) = rest.strip_prefix("client=") {
                // "client=NAME[ADDR], sasl_method=PLAIN, sasl_username=alice"
                let Some((addr, after)) = bracketed_client(client) else {
                    return Outcome::NotUnderstood;
                };
                let user = after.split_once(", sasl_username=").map(|(_, u)| u);
                self.remember(queue_id, addr, user);
                return match user {
                    Some(u) => Outcome::Understood(vec![
                        Event::new(EventKind::AuthSuccess { service }, addr).with_user(Some(u)),
                    ]),
                    None => NOTHING,
                };
            }
            if let Some(reject) = rest
                .strip_prefix("reject: ")
                .or_else(|| rest.strip_prefix("milter-reject: "))
            {
                return reject_line(reject);
            }
            return NOTHING;
        }
        if let Some(reject) = message
            .strip_prefix("NOQUEUE: reject: ")
            .or_else(|| message.strip_prefix("NOQUEUE: milter-reject: "))
        {
            return reject_line(reject);
        }
        Outcome::NotUnderstood
    }

    /// "QUEUEID: from=<sender>, size=N, nrcpt=M (queue active)", "QUEUEID: removed".
    fn qmgr(&mut self, message: &str) -> Outcome {
        let Some((queue_id, rest)) = split_queue_id(message) else {
            return Outcome::NotUnderstood;
        };
        if rest == "removed" {
            self.clients.remove(queue_id);
            return NOTHING;
        }
        let Some(fields) = rest.strip_prefix("from=<") else {
            return NOTHING;
        };
        // The sender is the client's text: read the numbers from the end, where Postfix
        // writes them, so a sender like `a>, size=1, nrcpt=99` changes nothing.
        let Some((head, nrcpt)) = fields.rsplit_once(", nrcpt=") else {
            return Outcome::NotUnderstood;
        };
        let Some((sender, size)) = head.rsplit_once(">, size=") else {
            return Outcome::NotUnderstood;
        };
        let recipients: u32 = nrcpt
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let size: u64 = size.parse().unwrap_or(0);
        let Some((addr, user)) = self.clients.get(queue_id).cloned() else {
            // Mail from pickup (local submission) or a forgotten queue id: nobody to charge.
            return NOTHING;
        };
        let mut events = vec![
            Event::new(EventKind::MessageAccepted { recipients, size }, addr)
                .with_user(user.as_deref()),
        ];
        if sender.is_empty() {
            events.push(Event::new(EventKind::Bounce, addr));
        }
        Outcome::Understood(events)
    }

    /// cleanup rejects ("QUEUEID: reject: header ...", "QUEUEID: milter-reject: ...") carry
    /// header text chosen by the sender before the client, so the client comes from the
    /// queue-id table instead.
    fn cleanup(&mut self, message: &str) -> Outcome {
        let Some((queue_id, rest)) = split_queue_id(message) else {
            return NOTHING;
        };
        if !(rest.starts_with("reject: ") || rest.starts_with("milter-reject: ")) {
            return NOTHING;
        }
        match self.clients.get(queue_id) {
            Some(&(addr, _)) => one(
                EventKind::Reject {
                    reject: RejectKind::Other,
                },
                addr,
            ),
            None => NOTHING,
        }
    }

    fn remember(&mut self, queue_id: &str, addr: IpAddr, user: Option<&str>) {
        if self.clients.len() >= QUEUE_CAPACITY {
            // Oldest first; ids already removed by qmgr are skipped.
            while let Some(old) = self.order.pop_front() {
                if self.clients.remove(&old).is_some() {
                    break;
                }
            }
        }
        if self
            .clients
            .insert(queue_id.to_string(), (addr, user.map(str::to_string)))
            .is_none()
        {
            self.order.push_back(queue_id.to_string());
        }
        if self.order.len() > 2 * QUEUE_CAPACITY {
            self.order.retain(|id| self.clients.contains_key(id));
        }
    }
}

/// "disconnect from NAME[ADDR] ehlo=1 auth=0/3 quit=1 commands=2/5" (smtpd.c, Postfix 3.0+):
/// the counts are the server's. `auth=S/T` means T AUTH commands, S of them successful; the
/// failures no SASL line reported are counted here (some never are: a client that drops the
/// connection in the middle of AUTH LOGIN, a failure logged only by Dovecot's auth process).
fn disconnect(rest: &str, service: Service, ledger: Clocked<'_>) -> Outcome {
    let Some((addr, counts)) = bracketed_client(rest) else {
        return Outcome::NotUnderstood;
    };
    let failed = counts
        .split(' ')
        .find_map(|field| field.strip_prefix("auth="))
        .and_then(|auth| auth.split_once('/'))
        .and_then(|(ok, all)| Some(all.parse::<u32>().ok()?.saturating_sub(ok.parse().ok()?)));
    match failed {
        Some(n) if n > 0 => {
            let unreported = ledger.settle(addr, n);
            Outcome::Understood(repeated(
                EventKind::AuthFailure { service },
                addr,
                unreported,
            ))
        }
        _ => NOTHING,
    }
}

/// "lost connection after CMD from NAME[ADDR]" and "timeout after CMD from NAME[ADDR]"
/// (smtpd.c): gone after AUTH is a password guesser that gave up; gone before offering any
/// mail (after CONNECT, EHLO, HELO, STARTTLS) is a scan; later (DATA, RCPT, ...) is a network
/// problem as often as anything, and counts nothing.
fn lost_after(rest: &str) -> Outcome {
    let Some((command, _)) = rest.split_once(" from ") else {
        return Outcome::NotUnderstood;
    };
    let kind = match command {
        "AUTH" => EventKind::LostAfterAuth,
        "CONNECT" | "EHLO" | "HELO" | "STARTTLS" | "UNKNOWN" => EventKind::LostEarly,
        _ => return NOTHING,
    };
    client_after(rest, " from ", kind)
}

/// smtpd's warnings: "NAME[ADDR]: SASL LOGIN authentication failed: REASON, sasl_username=U"
/// (with ":PORT" after the client when smtpd_client_port_logging is on), "non-SMTP command
/// from NAME[ADDR]: TEXT", "Illegal address syntax from NAME[ADDR] in RCPT command: TEXT".
fn warning(rest: &str, service: Service, ledger: Clocked<'_>) -> Outcome {
    for prefix in ["non-SMTP command from ", "Illegal address syntax from "] {
        if let Some(client) = rest.strip_prefix(prefix) {
            return client_event(client, EventKind::ProtocolError);
        }
    }
    let Some((addr, after)) = bracketed_client(rest) else {
        return NOTHING;
    };
    let after = skip_port(after);
    let Some(failure) = after
        .strip_prefix(": SASL ")
        .and_then(|a| a.split_once(" authentication failed"))
        .map(|(_, reason)| reason)
    else {
        return NOTHING;
    };
    // The reason is the SASL library's text, written before the client's user name.
    let reason = failure.split(", sasl_username=").next().unwrap_or(failure);
    if reason.contains("Connection lost to authentication server") {
        // Our own auth server was down: the client did nothing wrong.
        return NOTHING;
    }
    if reason.contains("Invalid authentication mechanism") {
        return one(EventKind::ProtocolError, addr);
    }
    let user = failure.rsplit_once(", sasl_username=").map(|(_, u)| u);
    let n = ledger.report(addr, Layer::Server, 1);
    let events = repeated(EventKind::AuthFailure { service }, addr, n)
        .into_iter()
        .map(|e| e.with_user(user))
        .collect();
    Outcome::Understood(events)
}

/// ":PORT" after a client, when Postfix logs client ports.
fn skip_port(after: &str) -> &str {
    match after.strip_prefix(':') {
        Some(port) => {
            let digits = port.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && port[digits..].starts_with(':') {
                &port[digits..]
            } else {
                after
            }
        }
        None => after,
    }
}

/// "4Bz1Xy2Lq3z: rest": a queue id is hex (short ids) or base-52-ish (long ids), no spaces.
fn split_queue_id(message: &str) -> Option<(&str, &str)> {
    let (id, rest) = message.split_once(": ")?;
    let valid = (5..=20).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric());
    (valid && id != "NOQUEUE" && id != "warning").then_some((id, rest))
}

/// "NAME[ADDR]" at the start of `text`, as the subject of a one-client event.
fn client_event(text: &str, kind: EventKind) -> Outcome {
    match bracketed_client(text) {
        Some((addr, _)) => one(kind, addr),
        None => Outcome::NotUnderstood,
    }
}

/// The client after the first `separator` in `text` ("... from NAME[ADDR]", "... for [ADDR]:PORT").
fn client_after(text: &str, separator: &str, kind: EventKind) -> Outcome {
    match text.split_once(separator) {
        Some((_, client)) => client_event(client, kind),
        None => Outcome::NotUnderstood,
    }
}

/// "RCPT from NAME[ADDR]: 550 5.1.1 <x@y>: Recipient address rejected: ...; from=<..> to=<..>
/// proto=ESMTP helo=<..>" (smtpd_check.c). The client is the first `from NAME[ADDR]:` after the
/// command; everything the client chose (recipient, sender, HELO) comes after it.
fn reject_line(text: &str) -> Outcome {
    let Some((_command, after)) = text.split_once(" from ") else {
        return Outcome::NotUnderstood;
    };
    let Some((addr, reason)) = bracketed_client(after) else {
        return Outcome::NotUnderstood;
    };
    // Classify on Postfix's own reason, before the client's envelope fields.
    let reason = reason.split("; from=<").next().unwrap_or(reason);
    let reject = if reason.contains("Recipient address rejected: User unknown")
        || reason.contains("User unknown in")
    {
        RejectKind::UnknownRecipient
    } else if reason.contains("Relay access denied") {
        RejectKind::RelayDenied
    } else if reason.contains(" blocked using ") {
        RejectKind::Rbl
    } else if reason.contains("Helo command rejected") {
        RejectKind::Helo
    } else if reason.contains("Sender address rejected") {
        RejectKind::Sender
    } else {
        RejectKind::Other
    };
    one(EventKind::Reject { reject }, addr)
}

/// postscreen(8): "CONNECT from [ADDR]:PORT to [ADDR]:25", "PREGREET 11 after 0.1 from
/// [ADDR]:PORT: EHLO x", "DNSBL rank 3 for [ADDR]:PORT", "NOQUEUE: reject: RCPT from
/// [ADDR]:PORT: 550 5.7.1 Service unavailable; client [ADDR] blocked using zen...".
fn postscreen(message: &str) -> Outcome {
    if let Some(rest) = message.strip_prefix("CONNECT from ") {
        return client_event(rest, EventKind::Connection);
    }
    if let Some(reject) = message.strip_prefix("NOQUEUE: reject: ") {
        return reject_line(reject);
    }
    if let Some(rest) = message.strip_prefix("DNSBL rank ") {
        let reject = RejectKind::Rbl;
        return client_after(rest, " for ", EventKind::Reject { reject });
    }
    // postscreen_smtpd.c writes the client right after the test's name; the command text the
    // client sent comes after it ("NON-SMTP COMMAND from [ADDR]:PORT CMD TEXT").
    for (test, kind) in [
        ("COMMAND PIPELINING from ", EventKind::Pipelining),
        ("BARE NEWLINE from ", EventKind::ProtocolError),
        ("NON-SMTP COMMAND from ", EventKind::ProtocolError),
        ("COMMAND TIME LIMIT from ", EventKind::ProtocolError),
        ("COMMAND COUNT LIMIT from ", EventKind::ProtocolError),
        ("COMMAND LENGTH LIMIT from ", EventKind::ProtocolError),
    ] {
        if let Some(rest) = message.strip_prefix(test) {
            return client_event(rest, kind);
        }
    }
    for list in ["BLACKLISTED ", "DENYLISTED "] {
        if let Some(rest) = message.strip_prefix(list) {
            let reject = RejectKind::Other;
            return client_event(rest, EventKind::Reject { reject });
        }
    }
    // postscreen_early.c: "PREGREET 11 after 0.12 from [ADDR]:PORT: TEXT" and "HANGUP after
    // 0.5 from [ADDR]:PORT in tests before SMTP handshake": server-written numbers first.
    let early = match message.strip_prefix("PREGREET ") {
        Some(rest) => rest
            .split_once(' ')
            .filter(|(count, _)| !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit()))
            .map(|(_, rest)| (rest, EventKind::Pregreet)),
        None => message
            .strip_prefix("HANGUP ")
            .map(|rest| (rest, EventKind::LostEarly)),
    };
    if let Some((rest, kind)) = early {
        let client = rest
            .strip_prefix("after ")
            .and_then(|rest| rest.split_once(' '))
            .filter(|(time, _)| {
                !time.is_empty() && time.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            })
            .and_then(|(_, rest)| rest.strip_prefix("from "));
        return match client {
            Some(client) => client_event(client, kind),
            None => Outcome::NotUnderstood,
        };
    }
    NOTHING
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parsers::{Format, Parsers, ledger::Ledger};

    fn events(lines: &[&str]) -> Vec<Event> {
        let mut p = Parsers::default();
        let mut out = Vec::new();
        for line in lines {
            match p.parse(Format::Postfix, line) {
                Outcome::Understood(e) => out.extend(e),
                Outcome::NotUnderstood => panic!("not understood: {line}"),
            }
        }
        out
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connect_from_unknown_and_ipv6_clients() {
        let e = events(&[
            "Nov 22 07:53:40 mx postfix/smtpd[1]: connect from unknown[203.0.113.9]",
            "Nov 22 07:53:40 mx postfix-out/smtpd[1]: connect from mx.example[2001:db8::25]",
        ]);
        assert_eq!(e[0], Event::new(EventKind::Connection, ip("203.0.113.9")));
        assert_eq!(e[1].source, ip("2001:db8::25"));
    }

    #[test]
    fn unknown_recipient_reject_is_a_harvest_event() {
        let e = events(&[
            "Nov 22 07:53:41 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[203.0.113.9]: 550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in local recipient table; from=<spam@example.net> to=<nobody@example.org> proto=ESMTP helo=<x>",
        ]);
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
    fn reject_kinds() {
        let cases = [
            (
                "554 5.7.1 <a@b>: Relay access denied",
                RejectKind::RelayDenied,
            ),
            (
                "554 5.7.1 Service unavailable; Client host [203.0.113.9] blocked using zen.spamhaus.org",
                RejectKind::Rbl,
            ),
            (
                "504 5.5.2 <x>: Helo command rejected: need fully-qualified hostname",
                RejectKind::Helo,
            ),
            (
                "553 5.7.1 <a@b>: Sender address rejected: not owned by user",
                RejectKind::Sender,
            ),
            (
                "450 4.7.1 Client host rejected: cannot find your hostname",
                RejectKind::Other,
            ),
        ];
        for (reason, kind) in cases {
            let line = format!(
                "Nov 22 07:53:41 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[203.0.113.9]: {reason}; from=<a@b> to=<c@d> proto=ESMTP helo=<x>"
            );
            assert_eq!(
                events(&[&line])[0].kind,
                EventKind::Reject { reject: kind },
                "{reason}"
            );
        }
    }

    #[test]
    fn sasl_failure_with_user() {
        let e = events(&[
            "Nov 22 07:53:42 mx postfix/submission/smtpd[9]: warning: unknown[2001:db8:a::7]: SASL PLAIN authentication failed: authentication failure, sasl_username=alice",
        ]);
        assert_eq!(
            e,
            [Event::new(
                EventKind::AuthFailure {
                    service: Service::Submission
                },
                ip("2001:db8:a::7")
            )
            .with_user(Some("alice"))]
        );
    }

    #[test]
    fn a_message_is_counted_once_qmgr_names_its_size_and_recipients() {
        let e = events(&[
            "Nov 22 07:53:43 mx postfix/smtpd[1]: 4Bz1Xy2Lq3z: client=unknown[198.51.100.7], sasl_method=PLAIN, sasl_username=bob",
            "Nov 22 07:53:43 mx postfix/cleanup[2]: 4Bz1Xy2Lq3z: message-id=<x@y>",
            "Nov 22 07:53:43 mx postfix/qmgr[3]: 4Bz1Xy2Lq3z: from=<bob@example.org>, size=2048, nrcpt=3 (queue active)",
            "Nov 22 07:53:44 mx postfix/qmgr[3]: 4Bz1Xy2Lq3z: removed",
        ]);
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0].kind,
            EventKind::AuthSuccess {
                service: Service::Smtp
            }
        );
        assert_eq!(
            e[1],
            Event::new(
                EventKind::MessageAccepted {
                    recipients: 3,
                    size: 2048
                },
                ip("198.51.100.7")
            )
            .with_user(Some("bob"))
        );
    }

    #[test]
    fn null_sender_is_a_bounce() {
        let e = events(&[
            "Nov 22 07:53:43 mx postfix/smtpd[1]: 4Bz1Xy2Lq3z: client=unknown[198.51.100.7]",
            "Nov 22 07:53:43 mx postfix/qmgr[3]: 4Bz1Xy2Lq3z: from=<>, size=900, nrcpt=1 (queue active)",
        ]);
        assert_eq!(e[1], Event::new(EventKind::Bounce, ip("198.51.100.7")));
    }

    #[test]
    fn lost_after_auth_and_too_many_errors() {
        let e = events(&[
            "Nov 22 07:53:45 mx postfix/smtpd[1]: lost connection after AUTH from unknown[203.0.113.9]",
            "Nov 22 07:53:45 mx postfix/smtpd[1]: too many errors after RCPT from unknown[203.0.113.9]",
            "Nov 22 07:53:45 mx postfix/smtpd[1]: disconnect from unknown[203.0.113.9] ehlo=1 auth=0/1 commands=1/2",
        ]);
        assert_eq!(e[0].kind, EventKind::LostAfterAuth);
        assert_eq!(e[1].kind, EventKind::TooManyErrors);
        // auth=0/1 with no SASL failure line: the one failed AUTH is counted at disconnect.
        assert_eq!(
            e[2].kind,
            EventKind::AuthFailure {
                service: Service::Smtp
            }
        );
        assert_eq!(e.len(), 3);
    }

    #[test]
    fn a_failure_logged_by_a_sasl_line_is_not_counted_again_at_disconnect() {
        let e = events(&[
            "Nov 22 07:53:45 mx postfix/smtpd[1]: warning: unknown[203.0.113.9]:41234: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
            "Nov 22 07:53:46 mx postfix/smtpd[1]: warning: unknown[203.0.113.9]:41234: SASL PLAIN authentication failed: authentication failure",
            "Nov 22 07:53:47 mx postfix/smtpd[1]: disconnect from unknown[203.0.113.9] ehlo=1 auth=0/3 quit=1 commands=2/5",
            "Nov 22 07:53:48 mx postfix/smtpd[1]: warning: unknown[203.0.113.9]: SASL LOGIN authentication failed: Connection lost to authentication server",
        ]);
        assert_eq!(
            e.len(),
            3,
            "two SASL lines and the third AUTH at disconnect: {e:?}"
        );
        assert!(e.iter().all(|e| e.source == ip("203.0.113.9")));
    }

    #[test]
    fn postscreen_lines() {
        let e = events(&[
            "Nov 22 07:53:46 mx postfix/postscreen[5]: CONNECT from [203.0.113.9]:40000 to [198.51.100.1]:25",
            "Nov 22 07:53:46 mx postfix/postscreen[5]: PREGREET 11 after 0.01 from [203.0.113.9]:40000: EHLO [198.51.100.66]\\r\\n",
            "Nov 22 07:53:46 mx postfix/postscreen[5]: DNSBL rank 3 for [2001:db8::9]:40000",
        ]);
        assert_eq!(e[0].kind, EventKind::Connection);
        assert_eq!(e[1].source, ip("203.0.113.9"));
        assert_eq!(
            e[2].kind,
            EventKind::Reject {
                reject: RejectKind::Rbl
            }
        );
        assert_eq!(e[2].source, ip("2001:db8::9"));
    }

    #[test]
    fn attacker_text_never_names_the_client() {
        // HELO, envelope sender and recipient all carry someone else's address.
        let e = events(&[
            "Nov 22 07:53:41 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[203.0.113.9]: 550 5.1.1 <x from a[198.51.100.66]: y>: Recipient address rejected: User unknown in local recipient table; from=<from b[198.51.100.66]:> to=<x> proto=ESMTP helo=<[198.51.100.66]>",
            "Nov 22 07:53:43 mx postfix/smtpd[1]: 4Bz1Xy2Lq3z: client=unknown[203.0.113.9], sasl_method=PLAIN, sasl_username=x client=unknown[198.51.100.66]",
            "Nov 22 07:53:43 mx postfix/cleanup[2]: 4Bz1Xy2Lq3z: reject: header Subject: from x[198.51.100.66]; from unknown[203.0.113.9]; from=<a> to=<b>",
            "Nov 22 07:53:43 mx postfix/qmgr[3]: 4Bz1Xy2Lq3z: from=<a>, size=1, nrcpt=99 (queue active)>, size=5, nrcpt=1 (queue active)",
        ]);
        assert!(e.iter().all(|e| e.source == ip("203.0.113.9")), "{e:?}");
        assert_eq!(
            e.last().unwrap().kind,
            EventKind::MessageAccepted {
                recipients: 1,
                size: 5
            }
        );
    }

    #[test]
    fn the_queue_table_stays_bounded() {
        let mut p = Postfix::default();
        let mut ledger = Ledger::default();
        for i in 0..(QUEUE_CAPACITY + 100) {
            let line = format!("Q{i:08}: client=unknown[203.0.113.9]");
            let clocked = Clocked {
                ledger: &mut ledger,
                now_s: 0,
            };
            p.parse("postfix/smtpd", &line, clocked);
        }
        assert_eq!(p.clients.len(), QUEUE_CAPACITY);
        assert!(p.order.len() <= 2 * QUEUE_CAPACITY);
    }
}
