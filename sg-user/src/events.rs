//! Events: what a log line says a sender did, in typed form. Parsers produce them; the engine
//! (points) consumes them. Neither side knows about the other.

use std::net::IpAddr;

use serde::Serialize;

/// Why the MTA rejected something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// Directory harvest: a recipient that does not exist.
    UnknownRecipient,
    RelayDenied,
    /// A DNS blocklist listed the client.
    Rbl,
    Helo,
    Sender,
    Other,
}

/// Which service an authentication event belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    Smtp,
    Submission,
    Imap,
    Pop3,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// A client connected.
    Connection,
    /// A message was accepted (queued).
    MessageAccepted {
        recipients: u32,
        size: u64,
    },
    Reject {
        reject: RejectKind,
    },
    AuthFailure {
        service: Service,
    },
    AuthSuccess {
        service: Service,
    },
    /// A message with the null sender `<>` (a bounce or a backscatter).
    Bounce,
    /// The client dropped the session after AUTH, or the MTA ended it for too many errors.
    LostAfterAuth,
    TooManyErrors,
    /// DMARC policy failure reported by Rspamd.
    DmarcFail,
}

/// One event of one sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    #[serde(flatten)]
    pub kind: EventKind,
    /// The client address, taken only from fields the server itself writes.
    pub source: IpAddr,
    /// The SASL or IMAP/POP user, where the line names one (attacker-chosen text: it is only
    /// ever used as a user name, never parsed for addresses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Event {
    pub fn new(kind: EventKind, source: IpAddr) -> Event {
        Event {
            kind,
            source,
            user: None,
        }
    }

    pub fn with_user(mut self, user: Option<&str>) -> Event {
        self.user = user.map(str::to_string);
        self
    }
}
