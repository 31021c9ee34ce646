//! Log parsers, one module per format, each turning a line into typed [`Event`]s.
//!
//! Security rule for every parser: the client address is taken only from fields the server
//! itself writes, at positions an attacker's text (HELO names, envelope addresses, user names,
//! header text) cannot reach; a HELO like `[203.0.113.9]` or a user like `x rip=203.0.113.9`
//! never puts points on someone else.

pub mod dovecot;
pub mod exim;
pub mod ledger;
pub mod postfix;
pub mod qmail;
pub mod rspamd;
pub mod sendmail;
pub mod syslog;

use std::{net::IpAddr, str::FromStr};

use crate::events::{Event, EventKind};

/// Which parser reads a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Pick per line, from the program name in the header.
    Auto,
    Postfix,
    Sendmail,
    Qmail,
    Exim,
    Dovecot,
    Rspamd,
}

impl Format {
    /// The format a line's program belongs to.
    fn of(program: &str, message: &str) -> Option<Format> {
        if postfix::is_postfix(program) {
            Some(Format::Postfix)
        } else if dovecot::is_dovecot(program, message) {
            Some(Format::Dovecot)
        } else if sendmail::is_sendmail(program) {
            Some(Format::Sendmail)
        } else if qmail::is_qmail(program) {
            Some(Format::Qmail)
        } else if exim::is_exim(program) {
            Some(Format::Exim)
        } else if rspamd::is_rspamd(program) {
            Some(Format::Rspamd)
        } else {
            None
        }
    }
}

/// A parsed line: when it was written (if the header says) and what it meant.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub time_ns: Option<u64>,
    pub outcome: Outcome,
}

/// What a parser made of a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A line of the format: zero or more events (a `disconnect from` line has none).
    Understood(Vec<Event>),
    /// Not a line this parser knows.
    NotUnderstood,
}

/// Parses lines of one or all formats, keeping the state multi-line sessions need.
#[derive(Default)]
pub struct Parsers {
    postfix: postfix::Postfix,
    sendmail: sendmail::Sendmail,
    /// Authentication failures reported by several processes, counted once (Postfix's SASL
    /// lines, Dovecot's login and auth processes and PAM may all report the same one).
    ledger: ledger::Ledger,
    /// The time of the line being read, in seconds: the header's when the caller reads it
    /// ([`Parsers::parse_timed`]), else what [`Parsers::set_time`] said.
    now_s: u64,
}

impl Parsers {
    /// The time lines are read at, for the parsers that match lines of one session (the
    /// daemon reads lines as they are written, so its clock is their time).
    pub fn set_time(&mut self, now_ns: u64) {
        self.now_s = now_ns / 1_000_000_000;
    }

    pub fn parse(&mut self, format: Format, line: &str) -> Outcome {
        match syslog::split(line) {
            Some(header) => self.parse_message(format, header.program, header.message),
            None => Outcome::NotUnderstood,
        }
    }

    /// Parses a line with its header's time. With a format other than `Auto`, lines of other
    /// programs are not understood.
    pub fn parse_timed(&mut self, format: Format, line: &str) -> Parsed {
        let Some(header) = syslog::split(line) else {
            return Parsed {
                time_ns: None,
                outcome: Outcome::NotUnderstood,
            };
        };
        let time_ns = header.time_ns();
        if let Some(ns) = time_ns {
            self.set_time(ns);
        }
        Parsed {
            time_ns,
            outcome: self.parse_message(format, header.program, header.message),
        }
    }

    /// Parses a message whose header was already split (journald gives the program apart).
    pub fn parse_message(&mut self, format: Format, program: &str, message: &str) -> Outcome {
        let Some(found) = Format::of(program, message) else {
            return Outcome::NotUnderstood;
        };
        if format != Format::Auto && format != found {
            return Outcome::NotUnderstood;
        }
        let clocked = ledger::Clocked {
            ledger: &mut self.ledger,
            now_s: self.now_s,
        };
        match found {
            Format::Postfix => self.postfix.parse(program, message, clocked),
            Format::Dovecot => dovecot::parse(program, message, clocked),
            Format::Sendmail => self.sendmail.parse(message),
            Format::Qmail => qmail::parse(program, message),
            Format::Exim => exim::parse(message),
            Format::Rspamd => rspamd::parse(message),
            Format::Auto => Outcome::NotUnderstood,
        }
    }
}

/// The client of a line read every way it can be (attacker text that imitates the server's
/// fields gives more readings): the address all readings agree on, or none. Sound whenever the
/// server's own reading is always among them.
pub fn agreed<T: PartialEq>(mut readings: impl Iterator<Item = T>) -> Option<T> {
    let first = readings.next()?;
    readings.all(|other| other == first).then_some(first)
}

/// The most places a line is read at: a line with more copies of a field is the client's
/// doing, and reading it every way would take time quadratic in its length.
pub const MAX_READINGS: usize = 16;

/// Where `field` starts in `text`, or `None` when it occurs more than [`MAX_READINGS`] times.
pub fn field_starts(text: &str, field: &str) -> Option<Vec<usize>> {
    let starts: Vec<usize> = text
        .match_indices(field)
        .map(|(at, _)| at)
        .take(MAX_READINGS + 1)
        .collect();
    (starts.len() <= MAX_READINGS).then_some(starts)
}

/// The places a field can be read at when client text may imitate its markers: the text
/// between every `open` and every later `close`, as ranges of `text`. None when either marker
/// occurs more than [`MAX_READINGS`] times.
pub fn field_spans(text: &str, open: &str, close: &str) -> Option<Vec<std::ops::Range<usize>>> {
    let opens = field_starts(text, open)?;
    let closes = field_starts(text, close)?;
    Some(
        opens
            .iter()
            .flat_map(|&o| {
                let start = o + open.len();
                closes
                    .iter()
                    .filter(move |&&c| c >= start)
                    .map(move |&c| start..c)
            })
            .collect(),
    )
}

/// `n` events of one kind and client (a line that reports several failures).
pub fn repeated(kind: EventKind, source: IpAddr, n: u32) -> Vec<Event> {
    (0..n).map(|_| Event::new(kind.clone(), source)).collect()
}

/// `NAME[ADDR]` or `[ADDR]` or `[ADDR]:PORT` at the start of `text`, as Postfix writes a client.
/// NAME is a validated hostname or `unknown`, so it never contains `[`.
/// Returns the address and the text after the closing bracket.
pub fn bracketed_client(text: &str) -> Option<(IpAddr, &str)> {
    let open = text.find('[')?;
    if text[..open].contains(' ') {
        return None;
    }
    let rest = &text[open + 1..];
    let close = rest.find(']')?;
    let addr = rest[..close]
        .strip_prefix("IPv6:")
        .unwrap_or(&rest[..close]);
    Some((IpAddr::from_str(addr).ok()?, &rest[close + 1..]))
}

/// The events of one whole log line, for the parsers' tests (a line not understood fails).
#[cfg(test)]
pub(crate) fn events_of(format: Format, line: &str) -> Vec<Event> {
    match Parsers::default().parse(format, line) {
        Outcome::Understood(events) => events,
        Outcome::NotUnderstood => panic!("not understood: {line}"),
    }
}
