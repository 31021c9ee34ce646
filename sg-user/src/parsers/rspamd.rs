//! Rspamd's task log line (`rspamd_task_write_log`), from rspamd.log or syslog: the client
//! address the MTA handed over (`ip: ADDR`) and the symbols; a DMARC policy failure is
//! `DMARC_POLICY_REJECT` or `DMARC_POLICY_QUARANTINE`.
//!
//! The Message-ID (`id: <...>`) comes before `ip:` and is the sender's text, so a line with more
//! than one `, ip: ` is ambiguous and yields nothing. Symbol names in the sender's text (the From
//! domain in symbol options) can only put points on the sender itself.

use std::net::IpAddr;

use super::Outcome;
use crate::events::{Event, EventKind};

pub fn is_rspamd(program: &str) -> bool {
    program == "rspamd"
}

pub fn parse(message: &str) -> Outcome {
    let Some(at) = message.find("rspamd_task_write_log: ") else {
        // Rspamd logs much else (workers, maps, controller): nothing to count.
        return Outcome::Understood(Vec::new());
    };
    let fields = &message[at..];
    if fields.matches(", ip: ").count() != 1 {
        return Outcome::Understood(Vec::new());
    }
    let Some((_, after)) = fields.split_once(", ip: ") else {
        return Outcome::NotUnderstood;
    };
    let addr = after.split(',').next().unwrap_or("");
    let Ok(addr) = addr.parse::<IpAddr>() else {
        // "ip: unknown" for mail that came without a client address.
        return Outcome::Understood(Vec::new());
    };
    let dmarc_failed = ["DMARC_POLICY_REJECT(", "DMARC_POLICY_QUARANTINE("]
        .iter()
        .any(|s| after.contains(s));
    Outcome::Understood(if dmarc_failed {
        vec![Event::new(EventKind::DmarcFail, addr)]
    } else {
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(line: &str) -> Vec<Event> {
        crate::parsers::events_of(crate::parsers::Format::Rspamd, line)
    }

    const LINE: &str = "2026-11-22 07:53:40 #4711(normal) <8e1c2a>; task; rspamd_task_write_log: \
        id: <a1@example.com>, qid: <4BCD1234>, ip: 203.0.113.9, from: <x@example.com>, \
        (default: F (add header): [7.20/15.00] [DMARC_POLICY_REJECT(2.00){example.com;reject;},\
        R_SPF_FAIL(1.00){-all;}]), len: 1234, time: 120.1ms, dns req: 12, digest: <ab>, \
        rcpts: <y@example.net>, mime_rcpts: <y@example.net>";

    #[test]
    fn dmarc_reject_is_a_dmarc_failure_of_the_client() {
        assert_eq!(
            events(LINE),
            [Event::new(
                EventKind::DmarcFail,
                "203.0.113.9".parse().unwrap()
            )]
        );
        let pass = LINE.replace("DMARC_POLICY_REJECT(2.00)", "DMARC_POLICY_ALLOW(-0.5)");
        assert!(events(&pass).is_empty());
        let syslog_form = format!(
            "Nov 22 07:53:40 mx1 rspamd[4711]: {}",
            LINE.split_once("#4711(normal) ").unwrap().1
        );
        assert_eq!(events(&syslog_form).len(), 1);
    }

    #[test]
    fn attacker_text_never_names_the_client() {
        let forged = LINE.replace("id: <a1@example.com>", "id: <a, ip: 198.51.100.1, @x>");
        assert!(events(&forged).is_empty());
    }
}
