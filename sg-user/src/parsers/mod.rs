//! Log parsers, one module per format, each turning a line into typed [`Event`]s.
//!
//! Security rule for every parser: the client address is taken only from fields the server
//! itself writes, at positions an attacker's text (HELO names, envelope addresses, user names,
//! header text) cannot reach; a HELO like `[203.0.113.9]` or a user like `x rip=203.0.113.9`
//! never puts points on someone else.

pub mod dovecot;
pub mod postfix;
pub mod syslog;

use std::{net::IpAddr, str::FromStr};

use crate::events::Event;

/// Which parser reads a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Pick per line, from the program name in the syslog header.
    Auto,
    Postfix,
    Dovecot,
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
}

impl Parsers {
    pub fn parse(&mut self, format: Format, line: &str) -> Outcome {
        let Some(header) = syslog::split(line) else {
            return Outcome::NotUnderstood;
        };
        let is_postfix = postfix::is_postfix(header.program);
        let is_dovecot = dovecot::is_dovecot(header.program, header.message);
        match format {
            Format::Postfix | Format::Auto if is_postfix => {
                self.postfix.parse(header.program, header.message)
            }
            Format::Dovecot | Format::Auto if is_dovecot => {
                dovecot::parse(header.program, header.message)
            }
            _ => Outcome::NotUnderstood,
        }
    }
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
