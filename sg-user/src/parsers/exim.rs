//! Exim 4 mainlog (its own file, or syslog `exim[pid]:`), with Debian's default log_selector.
//!
//! Exim writes a host as `NAME (HELO) [ADDR]:PORT`, each part optional but the address. The HELO
//! is the client's text; Exim refuses HELO arguments with spaces unless
//! `helo_accept_junk_hosts` says otherwise, so a host is parsed as whitespace-separated tokens,
//! and a parenthesised HELO that spans tokens makes the line ambiguous (no event). In `<=`
//! lines the sender address (client text) comes before `H=`: a line with more than one ` H=` is
//! ambiguous too.

use std::net::IpAddr;

use super::{Outcome, agreed, field_spans};
use crate::events::{Event, EventKind, RejectKind, Service};

pub fn is_exim(program: &str) -> bool {
    matches!(program, "exim" | "exim4")
}

pub fn parse(message: &str) -> Outcome {
    // An optional message id first: "1vXyZa-000123-AB".
    let text = match message.split_once(' ') {
        Some((id, rest)) if is_message_id(id) => rest,
        _ => message,
    };
    if let Some(rest) = text.strip_prefix("SMTP connection from ") {
        if rest.ends_with(" closed by DROP in ACL") {
            // The operator's ACL dropped it: a reject, decided by the server.
            let reject = RejectKind::Other;
            return host_then(rest, " closed by DROP in ACL", EventKind::Reject { reject });
        }
        if rest.contains(" lost") || rest.contains(" closed by") {
            return Outcome::Understood(Vec::new());
        }
        return host_event(rest, EventKind::Connection);
    }
    if let Some(rest) = text.strip_prefix("no MAIL in SMTP connection from ") {
        // "no MAIL in SMTP connection from NAME (HELO) [ADDR]:PORT I=[ADDR]:25 D=21s C=EHLO":
        // connected, never offered mail.
        return host_event(rest, EventKind::LostEarly);
    }
    if let Some(rest) = text.strip_prefix("SMTP protocol synchronization error (") {
        return synchronization_error(rest);
    }
    if let Some(rest) = text.strip_prefix("SMTP protocol error in ") {
        return protocol_error(rest);
    }
    if let Some(rest) = text.strip_prefix("SA: Action: ") {
        return spamassassin(rest);
    }
    if let Some(rest) = text.strip_prefix("SMTP call from ") {
        let kind = if rest.contains("dropped: too many") {
            EventKind::TooManyErrors
        } else {
            return Outcome::Understood(Vec::new());
        };
        return host_event(rest, kind);
    }
    if let Some(rest) = text.strip_prefix("<= ") {
        return accepted(rest);
    }
    if let Some(rest) = authenticator_failure(text) {
        return match host(rest) {
            Some(Host::At(addr, after)) => Outcome::Understood(vec![
                Event::new(
                    EventKind::AuthFailure {
                        service: Service::Smtp,
                    },
                    addr,
                )
                .with_user(set_id(after)),
            ]),
            Some(Host::Ambiguous) => Outcome::Understood(Vec::new()),
            None => Outcome::NotUnderstood,
        };
    }
    if let Some(rest) = text
        .strip_prefix("rejected EHLO from ")
        .or_else(|| text.strip_prefix("rejected HELO from "))
    {
        return host_event(
            rest,
            EventKind::Reject {
                reject: RejectKind::Helo,
            },
        );
    }
    if let Some(rest) = text.strip_prefix("H=") {
        return rejected(rest);
    }
    if text.starts_with("F=") && text.contains(" rejected by local_scan()") {
        return local_scan(text);
    }
    if text.starts_with("=> ")
        || text.starts_with("-> ")
        || text.starts_with("** ")
        || text.starts_with("== ")
        || text == "Completed"
        || text.starts_with("Start queue run")
        || text.starts_with("End queue run")
    {
        return Outcome::Understood(Vec::new());
    }
    Outcome::NotUnderstood
}

/// `DRIVER authenticator failed for HOST: 535 ... (set_id=USER)` (smtp_in.c): the line starts
/// with the authenticator's name, a single word from the server's configuration. Anywhere
/// else (a syntax error's quoted command, `input="..."`, a sender) the text is the client's.
fn authenticator_failure(text: &str) -> Option<&str> {
    let (driver, rest) = text.split_once(' ')?;
    if driver.is_empty()
        || !driver
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return None;
    }
    rest.strip_prefix("authenticator failed for ")
}

/// The user of `: 535 Incorrect authentication data (set_id=USER)` after the host: the first
/// `(set_id=` after the server's reply text, up to the line's last `)`.
fn set_id(after_host: &str) -> Option<&str> {
    let (_, user) = after_host.split_once(" (set_id=")?;
    user.trim_end().strip_suffix(')')
}

/// `SENDER H=HOST P=esmtp S=1234 ... [for RCPT RCPT]`
fn accepted(rest: &str) -> Outcome {
    if rest.matches(" H=").count() != 1 {
        // Local submissions have no H=; client text imitating one makes the line ambiguous.
        return Outcome::Understood(Vec::new());
    }
    let Some((sender, after)) = rest.split_once(" H=") else {
        return Outcome::NotUnderstood;
    };
    let addr = match host(after) {
        Some(Host::At(addr, _)) => addr,
        Some(Host::Ambiguous) => return Outcome::Understood(Vec::new()),
        None => return Outcome::NotUnderstood,
    };
    let size = after
        .split(' ')
        .find_map(|t| t.strip_prefix("S="))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let recipients = after
        .split_once(" for ")
        .map_or(1, |(_, r)| r.split(' ').filter(|s| !s.is_empty()).count())
        as u32;
    let mut events = vec![Event::new(
        EventKind::MessageAccepted { recipients, size },
        addr,
    )];
    if sender == "<>" {
        events.push(Event::new(EventKind::Bounce, addr));
    }
    Outcome::Understood(events)
}

/// `H=HOST F=<sender> rejected RCPT <rcpt>: reason` (and MAIL, and `temporarily rejected`).
fn rejected(rest: &str) -> Outcome {
    let (addr, after) = match host(rest) {
        Some(Host::At(addr, after)) => (addr, after),
        Some(Host::Ambiguous) => return Outcome::Understood(Vec::new()),
        None => return Outcome::NotUnderstood,
    };
    let after = skip_interface(after);
    if after.starts_with("sender verify fail for ") {
        // "H=HOST sender verify fail for <SENDER>: Unrouteable address"
        let reject = RejectKind::Sender;
        return Outcome::Understood(vec![Event::new(EventKind::Reject { reject }, addr)]);
    }
    let Some(at) = after.find("rejected ") else {
        return Outcome::Understood(Vec::new());
    };
    let what = &after[at + "rejected ".len()..];
    let reason = what.split_once(": ").map_or("", |(_, r)| r);
    let reject = if reason.contains("Unknown user")
        || reason.contains("Unrouteable address")
        || reason.contains("unknown user")
    {
        RejectKind::UnknownRecipient
    } else if reason.contains("relay not permitted") {
        RejectKind::RelayDenied
    } else if reason.contains("RBL") || reason.contains(" is listed") || reason.contains("blocked")
    {
        RejectKind::Rbl
    } else if what.starts_with("MAIL") || reason.contains("Sender verify failed") {
        RejectKind::Sender
    } else {
        RejectKind::Other
    };
    Outcome::Understood(vec![Event::new(EventKind::Reject { reject }, addr)])
}

/// `(input sent without waiting for greeting): rejected connection from H=HOST I=.. input="TEXT"`
/// and `(next input sent too soon: pipelining was not advertised): rejected "CMD" H=HOST I=..
/// next input="TEXT"` (smtp_in.c). In the first the client's text comes only after the host, so
/// the first ` H=` is the server's; in the second the client's command comes before it and its
/// input after, so the host is taken only when exactly one ` H=` reads as a host followed by
/// `I=` or `next input=`.
fn synchronization_error(rest: &str) -> Outcome {
    if let Some(after) = rest.strip_prefix("input sent without waiting for greeting): ") {
        return match after.strip_prefix("rejected connection from H=") {
            Some(host) => host_event(host, EventKind::Pregreet),
            None => Outcome::NotUnderstood,
        };
    }
    if !rest.starts_with("next input sent too soon") {
        return Outcome::NotUnderstood;
    }
    match unique_host(rest, " next input=") {
        Some(addr) => Outcome::Understood(vec![Event::new(EventKind::Pipelining, addr)]),
        None => Outcome::Understood(Vec::new()),
    }
}

/// Reads `text` at every pair of a ` H=` and a later `marker` (the server's next field): the
/// text between must be a host and nothing else (but the server's ` I=`). The server's reading
/// is always such a host, or a HELO with spaces that makes it ambiguous; so the address is
/// taken only when the readings that are hosts agree and none is ambiguous.
fn unique_host(text: &str, marker: &str) -> Option<IpAddr> {
    let mut readings = Vec::new();
    for span in field_spans(text, " H=", marker)? {
        match host(&text[span]) {
            Some(Host::Ambiguous) => return None,
            Some(Host::At(addr, after)) if skip_interface(after).is_empty() => {
                readings.push(addr);
            }
            _ => {}
        }
    }
    agreed(readings.into_iter())
}

/// `"AUTH LOGIN" H=HOST I=[ADDR]:587 AUTH command used when not advertised` (smtp_in.c): the
/// quoted command is the client's text and comes first; everything after the host is the
/// server's, so the host is read at the last ` H=` and must be followed by the server's reason
/// alone.
fn protocol_error(rest: &str) -> Outcome {
    let Some((_, host_text)) = rest.rsplit_once(" H=") else {
        return Outcome::NotUnderstood;
    };
    match host(host_text) {
        Some(Host::At(addr, after)) => {
            let reason = without_repeat_count(skip_interface(after).trim_end());
            let known = [
                "AUTH command used when not advertised",
                "too many syntax or protocol errors",
                "too many nonmail commands",
            ];
            // "LOGIN authentication mechanism not supported": the mechanism is one word.
            let mechanism = reason
                .strip_suffix(" authentication mechanism not supported")
                .is_some_and(|m| !m.is_empty() && !m.contains(' '));
            if known.contains(&reason) || mechanism {
                Outcome::Understood(vec![Event::new(EventKind::ProtocolError, addr)])
            } else {
                Outcome::Understood(Vec::new())
            }
        }
        _ => Outcome::Understood(Vec::new()),
    }
}

/// `F=<SENDER> H=HOST I=.. P=esmtp rejected by local_scan(): Rejected: hits=7.5` (a content
/// scanner's verdict). The sender is the client's text before ` H=`: the host is read between
/// a ` H=` and a ` P=` ([`unique_host`]), the last ` P=` being the server's before its verdict.
fn local_scan(text: &str) -> Outcome {
    let Some((head, _verdict)) = text.rsplit_once(" rejected by local_scan()") else {
        return Outcome::Understood(Vec::new());
    };
    // "... H=HOST I=.. P=esmtp": the protocol is the server's last word before the verdict.
    let Some((head, proto)) = head.rsplit_once(" P=") else {
        return Outcome::Understood(Vec::new());
    };
    if proto.is_empty() || !proto.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Outcome::Understood(Vec::new());
    }
    let head = format!("{head} P=");
    match unique_host(&head, " P=") {
        Some(addr) => Outcome::Understood(vec![Event::new(EventKind::Spam, addr)]),
        None => Outcome::Understood(Vec::new()),
    }
}

/// sa-exim's verdicts: `flagged as Spam but accepted: score=8.2 ... From <SENDER> (host=NAME
/// [ADDR]) for RCPT` and `silently tossed message: ...` (and the rejecting ones). The sender,
/// the Message-Id before it and the recipient after it are the client's text, NAME its reverse
/// DNS: the line is read at every ` (host=NAME [ADDR])` it can hold (followed by ` for ` or the
/// end); the server's reading always holds, and the address is taken only when no other does.
fn spamassassin(rest: &str) -> Outcome {
    let spam = [
        "flagged as Spam",
        "silently tossed",
        "permanently rejected",
        "teergrubed",
    ];
    if !spam.iter().any(|s| rest.starts_with(s)) {
        return Outcome::Understood(Vec::new());
    }
    // Every pair of a ` (host=` and a later `])` that ends the line or precedes ` for `.
    let Some(spans) = field_spans(rest, " (host=", "])") else {
        return Outcome::Understood(Vec::new());
    };
    let readings = spans
        .into_iter()
        .filter(|span| {
            let tail = &rest[span.end + 2..];
            tail.is_empty() || tail.starts_with(" for ")
        })
        .filter_map(|span| {
            // "NAME [ADDR": the name is the client's reverse DNS, the address the server's.
            let (before, addr) = rest[span].rsplit_once('[')?;
            let addr: IpAddr = addr.parse().ok()?;
            before.ends_with(' ').then_some(addr)
        });
    match agreed(readings) {
        Some(addr) => Outcome::Understood(vec![Event::new(EventKind::Spam, addr)]),
        None => Outcome::Understood(Vec::new()),
    }
}

/// A line as log summarisers (logwatch) repeat it: "... advertised: 3 Time(s)".
fn without_repeat_count(text: &str) -> &str {
    match text
        .strip_suffix(" Time(s)")
        .and_then(|t| t.rsplit_once(": "))
    {
        Some((head, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => text,
    }
}

/// The server's ` I=[ADDR]:PORT` after a host (log_selector +incoming_interface), skipped.
fn skip_interface(after: &str) -> &str {
    let after = after.trim_start_matches(' ');
    match after.strip_prefix("I=[") {
        Some(rest) => match rest.split_once(' ') {
            Some((_, tail)) => tail,
            None => "",
        },
        None => after,
    }
}

/// The host, then exactly `tail` after it (and the server's interface).
fn host_then(text: &str, tail: &str, kind: EventKind) -> Outcome {
    match host(text) {
        Some(Host::At(addr, after)) if skip_interface(after) == tail.trim_start() => {
            Outcome::Understood(vec![Event::new(kind, addr)])
        }
        Some(_) => Outcome::Understood(Vec::new()),
        None => Outcome::NotUnderstood,
    }
}

fn host_event(text: &str, kind: EventKind) -> Outcome {
    match host(text) {
        Some(Host::At(addr, _)) => Outcome::Understood(vec![Event::new(kind, addr)]),
        Some(Host::Ambiguous) => Outcome::Understood(Vec::new()),
        None => Outcome::NotUnderstood,
    }
}

enum Host<'a> {
    /// The address and the text after the host.
    At(IpAddr, &'a str),
    /// A HELO with spaces: cannot tell the client's text from the server's.
    Ambiguous,
}

/// `NAME (HELO) [ADDR]:PORT rest`, each of NAME and (HELO) optional. NAME is a verified host
/// name and ADDR the server's; the HELO is the client's text. A HELO with spaces (Exim refuses
/// them unless `helo_accept_junk_hosts` or `helo_allow_chars` say otherwise) can imitate the
/// whole layout, so: the HELO token must hold no parenthesis and be followed at once by the
/// address token, the address token must be exactly `[ADDR]` or `[ADDR]:PORT`, and `) [` (what
/// ends a HELO before an address) may appear once in the text; anything else is ambiguous.
fn host(text: &str) -> Option<Host<'_>> {
    let (first, after) = text.split_once(' ').unwrap_or((text, ""));
    if first.is_empty() {
        return None;
    }
    if first.starts_with('[') {
        return address(first, after);
    }
    let (helo, after) = if first.starts_with('(') {
        (first, after)
    } else {
        // A host name: DNS characters only.
        if !first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Some(Host::Ambiguous);
        }
        let (next, after) = after.split_once(' ').unwrap_or((after, ""));
        if next.starts_with('[') {
            return address(next, after);
        }
        if !next.starts_with('(') {
            return None;
        }
        (next, after)
    };
    let inner = helo.strip_prefix('(').and_then(|h| h.strip_suffix(')'));
    let plain = inner.is_some_and(|h| !h.contains(['(', ')']));
    if !plain || text.matches(") [").count() != 1 {
        return Some(Host::Ambiguous);
    }
    let (next, after) = after.split_once(' ').unwrap_or((after, ""));
    if !next.starts_with('[') {
        return Some(Host::Ambiguous);
    }
    address(next, after)
}

/// `[ADDR]` or `[ADDR]:PORT`, exactly.
fn address<'a>(token: &str, after: &'a str) -> Option<Host<'a>> {
    let inner = token.strip_prefix('[')?;
    let (addr, tail) = inner.split_once(']')?;
    let port_ok = tail.is_empty()
        || tail
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    // A trailing `:` ends the host in "authenticator failed for HOST: 535 ...".
    let port_ok = port_ok
        || tail == ":"
        || tail
            .strip_prefix(':')
            .and_then(|p| p.strip_suffix(':'))
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !port_ok {
        return Some(Host::Ambiguous);
    }
    match addr.parse() {
        Ok(addr) => Some(Host::At(addr, after)),
        Err(_) => Some(Host::Ambiguous),
    }
}

/// `1vXyZa-000123-AB` (Exim 4.97+) or `1abcDE-0001xy-Ab` (older): three dash-separated parts.
fn is_message_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(line: &str) -> Vec<Event> {
        crate::parsers::events_of(crate::parsers::Format::Exim, line)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connection_message_and_bounce() {
        assert_eq!(
            events(
                "2026-11-22 07:53:40 SMTP connection from [203.0.113.9]:41234 (TCP/IP connection count = 1)"
            ),
            [Event::new(EventKind::Connection, ip("203.0.113.9"))]
        );
        let e = events(
            "2026-11-22 07:53:41 1vXyZa-000123-AB <= news@example.com H=mx.example.com (mx.example.com) \
             [203.0.113.9]:41234 P=esmtps X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=no S=5120 id=x@example.com \
             for a@example.net b@example.net",
        );
        assert_eq!(
            e,
            [Event::new(
                EventKind::MessageAccepted {
                    recipients: 2,
                    size: 5120
                },
                ip("203.0.113.9")
            )]
        );
        let e = events(
            "2026-11-22 07:53:42 1vXyZb-000124-AB <= <> H=(helo) [2001:db8::25]:25 P=esmtp S=900",
        );
        assert_eq!(e[1], Event::new(EventKind::Bounce, ip("2001:db8::25")));
    }

    #[test]
    fn protocol_errors_in_their_other_shapes() {
        for line in [
            "2026-11-22 07:53:44 SMTP protocol error in \"AUTH LOGIN\" H=(mail.example.com) [203.0.113.9] AUTH command used when not advertised: 3 Time(s)",
            "2026-11-22 07:53:44 SMTP protocol error in \"AUTH LOGIN\" H=(x) [203.0.113.9]:4000 I=[198.51.100.1]:587 LOGIN authentication mechanism not supported",
        ] {
            let e = crate::parsers::events_of(crate::parsers::Format::Exim, line);
            assert_eq!(
                e,
                [Event::new(
                    EventKind::ProtocolError,
                    "203.0.113.9".parse().unwrap()
                )],
                "{line}"
            );
        }
        // The reason must be the server's whole text after the host.
        let e = crate::parsers::events_of(
            crate::parsers::Format::Exim,
            "2026-11-22 07:53:44 SMTP protocol error in \"x\" H=[198.51.100.66] AUTH command used when not advertised\" H=(x) [203.0.113.9] AUTH command used when not advertised",
        );
        assert_eq!(e[0].source, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rejects_auth_failures_and_errors() {
        let kind = |line: &str| events(line)[0].kind.clone();
        assert_eq!(
            kind(
                "2026-11-22 07:53:43 H=(x) [203.0.113.9]:4 F=<a@b.example> rejected RCPT <zz@example.net>: Unknown user"
            ),
            EventKind::Reject {
                reject: RejectKind::UnknownRecipient
            }
        );
        assert_eq!(
            kind(
                "2026-11-22 07:53:43 H=[203.0.113.9]:4 F=<a@b.example> rejected RCPT <x@else.test>: relay not permitted"
            ),
            EventKind::Reject {
                reject: RejectKind::RelayDenied
            }
        );
        assert_eq!(
            kind(
                "2026-11-22 07:53:43 rejected EHLO from [203.0.113.9]:4: syntactically invalid argument(s): a b"
            ),
            EventKind::Reject {
                reject: RejectKind::Helo
            }
        );
        assert_eq!(
            kind(
                "2026-11-22 07:53:44 SMTP call from (x) [203.0.113.9]:4 dropped: too many syntax or protocol errors (last command was \"RCPT TO\")"
            ),
            EventKind::TooManyErrors
        );
        let e = events(
            "2026-11-22 07:53:45 dovecot_plain authenticator failed for (x) [198.51.100.7]:50000: \
             535 Incorrect authentication data (set_id=bob@example.net)",
        );
        assert_eq!(e[0].source, ip("198.51.100.7"));
        assert_eq!(e[0].user.as_deref(), Some("bob@example.net"));
    }

    #[test]
    fn attacker_text_never_names_the_client() {
        // A HELO that is an address literal, a sender that imitates H=, a user name with one.
        for line in [
            "2026-11-22 07:53:43 H=([198.51.100.1]) [203.0.113.66]:4 F=<a@b> rejected RCPT <x@y>: Unknown user",
            "2026-11-22 07:53:45 plain authenticator failed for ([198.51.100.1]) [203.0.113.66]:5: 535 Incorrect authentication data (set_id=x [198.51.100.1])",
        ] {
            assert_eq!(events(line)[0].source, ip("203.0.113.66"), "{line}");
        }
        for line in [
            "2026-11-22 07:53:41 1vXyZa-000123-AB <= \"x H=[198.51.100.1]\"@b H=(h) [203.0.113.66]:1 P=esmtp S=1",
            "2026-11-22 07:53:43 H=(junk [198.51.100.1]) [203.0.113.66]:4 F=<a@b> rejected RCPT <x@y>: Unknown user",
        ] {
            assert!(events(line).is_empty(), "ambiguous: {line}");
        }
    }
}
