//! The milter front end (sendmail's `INPUT_MAIL_FILTER`, Postfix's `smtpd_milters`), over the
//! miltr-server crate: the same questions as Postfix's policy protocol, asked at RCPT and at
//! DATA, keyed on `{auth_authen}`. Over a limit: a reply code, `451 4.7.1 ...` by default. Each
//! connection is one SMTP session; a message's state is reset at MAIL and at abort.

use std::{net::IpAddr, sync::Arc};

use async_trait::async_trait;
use miltr_common::{
    actions::{Action, Continue, Replycode},
    commands::{Connect, Macro, Mail, Recipient},
    optneg::{OptNeg, Protocol},
};
use miltr_server::Milter;

use super::{
    Decide,
    quota::{Ask, Stage},
};

/// The front end's name in metrics and logs.
pub const FRONT: &str = "milter";

/// The largest milter frame read (a body chunk is at most 64 KiB).
pub const MAX_FRAME: usize = 1 << 17;

/// One milter connection (one SMTP session).
pub struct Session {
    decide: Arc<dyn Decide>,
    client: Option<IpAddr>,
    user: Option<String>,
    /// Which message of the session this is, and its recipients so far.
    message: u64,
    recipients: u32,
    /// Tells this session's messages apart from every other session's.
    id: String,
}

impl Session {
    pub fn new(decide: Arc<dyn Decide>, id: u64) -> Session {
        Session {
            decide,
            client: None,
            user: None,
            message: 0,
            recipients: 0,
            id: format!("milter-{id}"),
        }
    }

    fn ask(&self, stage: Stage) -> Action {
        let message = format!("{}.{}", self.id, self.message);
        let ask = Ask {
            stage,
            user: self.user.as_deref(),
            client: self.client,
            message: Some(&message),
            recipients: self.recipients.max(1),
        };
        match self.decide.decide(FRONT, &ask) {
            None => Continue.into(),
            Some(reply) => reply_code(&reply).into(),
        }
    }
}

/// `451 4.7.1 text` as a milter reply code; a reply without an enhanced code gets 4.7.1 (or
/// 5.7.1 for a permanent one).
pub fn reply_code(text: &str) -> Replycode {
    let mut words = text.splitn(3, ' ');
    let code = words.next().unwrap_or("451");
    let digits: Vec<u8> = code.bytes().map(|b| b.wrapping_sub(b'0')).collect();
    let rcode = match digits.as_slice() {
        [a @ (4 | 5), b, c] if *b <= 9 && *c <= 9 => [*a, *b, *c],
        _ => [4, 5, 1],
    };
    let rest: Vec<&str> = words.collect();
    let (xcode, message) = match rest.first().map(|x| x.split('.').map(str::parse::<u16>)) {
        Some(mut parts) => match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(a)), Some(Ok(b)), Some(Ok(c)), None) if a == u16::from(rcode[0]) => {
                ([a, b, c], rest.get(1).copied().unwrap_or(""))
            }
            _ => (
                [u16::from(rcode[0]), 7, 1],
                &text[code.len().min(text.len())..],
            ),
        },
        None => ([u16::from(rcode[0]), 7, 1], ""),
    };
    let message: String = message.trim().chars().filter(|c| !c.is_control()).collect();
    Replycode::new(rcode, xcode, &message)
}

/// The client's address as the MTA writes it (`IPv6:` before sendmail's IPv6 addresses).
fn address(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_start_matches('[').trim_end_matches(']');
    let text = text
        .strip_prefix("IPv6:")
        .or_else(|| text.strip_prefix("ipv6:"))
        .unwrap_or(text);
    text.parse().ok()
}

#[async_trait]
impl Milter for Session {
    type Error = std::convert::Infallible;

    /// Only what the questions need: no HELO, headers, body or unknown commands are sent
    /// (of what the MTA offers to leave out).
    async fn option_negotiation(
        &mut self,
        theirs: OptNeg,
    ) -> Result<OptNeg, miltr_server::Error<Self::Error>> {
        let ours = OptNeg {
            protocol: Protocol::NO_HELO
                | Protocol::NO_HEADER
                | Protocol::NO_END_OF_HEADER
                | Protocol::NO_BODY
                | Protocol::NO_UNKNOWN,
            ..OptNeg::default()
        };
        ours.merge_compatible(&theirs)
            .map_err(|e| miltr_common::ProtocolError::CompatibilityError(e).into())
    }

    async fn macro_(&mut self, m: Macro) -> Result<(), Self::Error> {
        for (name, value) in m.macros() {
            let value = String::from_utf8_lossy(value);
            match name {
                b"{auth_authen}" => {
                    let user = value.trim().to_lowercase();
                    self.user = (!user.is_empty() && user.len() <= 256).then_some(user);
                }
                b"{client_addr}" if self.client.is_none() => self.client = address(&value),
                _ => {}
            }
        }
        Ok(())
    }

    async fn connect(&mut self, c: Connect) -> Result<Action, Self::Error> {
        if let Some(a) = address(&c.address()) {
            self.client = Some(a);
        }
        Ok(Continue.into())
    }

    async fn mail(&mut self, _: Mail) -> Result<Action, Self::Error> {
        self.message += 1;
        self.recipients = 0;
        Ok(Continue.into())
    }

    async fn rcpt(&mut self, _: Recipient) -> Result<Action, Self::Error> {
        let answer = self.ask(Stage::Rcpt);
        if matches!(answer, Action::Continue(_)) {
            self.recipients = self.recipients.saturating_add(1);
        }
        Ok(answer)
    }

    async fn data(&mut self) -> Result<Action, Self::Error> {
        Ok(self.ask(Stage::Data))
    }

    async fn abort(&mut self) -> Result<(), Self::Error> {
        self.recipients = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_milter_reply_codes() {
        for (text, rcode, xcode, message) in [
            (
                "451 4.7.1 Sending rate exceeded",
                [4, 5, 1],
                [4, 7, 1],
                "Sending rate exceeded",
            ),
            (
                "554 5.7.1 Account suspended",
                [5, 5, 4],
                [5, 7, 1],
                "Account suspended",
            ),
            ("450 Slow down", [4, 5, 0], [4, 7, 1], "Slow down"),
            ("451 5.7.1 mixed", [4, 5, 1], [4, 7, 1], "5.7.1 mixed"),
            ("junk", [4, 5, 1], [4, 7, 1], ""),
        ] {
            let r = reply_code(text);
            assert_eq!(r.rcode().code(), rcode, "{text}");
            assert_eq!(r.xcode().as_ref().unwrap().code(), xcode, "{text}");
            assert_eq!(r.message(), message, "{text}");
        }
        assert_eq!(
            address("IPv6:2001:db8::7"),
            Some("2001:db8::7".parse().unwrap())
        );
        assert_eq!(address("203.0.113.7"), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(address("/var/run/x"), None);
    }
}
