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
    /// Dovecot's ManageSieve.
    Sieve,
    /// Dovecot's auth process or PAM, which do not say which service asked.
    Auth,
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
    /// Commands sent before the server's reply where the protocol forbids it (Postfix's
    /// `improper command pipelining`, Exim's synchronization errors): spamware that does not wait.
    Pipelining,
    /// Talking before the server's greeting (postscreen `PREGREET`, sendmail's pre-greeting
    /// traffic, Exim's `input sent without waiting for greeting`).
    Pregreet,
    /// A connection that ended before any mail was offered (`lost connection after CONNECT`,
    /// `no MAIL in SMTP connection`, `did not issue MAIL/EXPN/VRFY/ETRN`, postscreen `HANGUP`):
    /// scanners, and now and then a legitimate client whose network failed, so it weighs little.
    LostEarly,
    /// Commands the protocol does not allow at that point or at all (AUTH when not advertised,
    /// non-SMTP commands, bare newlines, command count/time/length limits, too many invalid
    /// IMAP/POP commands).
    ProtocolError,
    /// EXPN or VRFY refused: address probing.
    ExpnVrfy,
    /// A login attempt in plain text where the server does not allow it (Dovecot's `Aborted login
    /// (tried to use disabled plaintext auth)`): a password-guessing bot that ignores the rules.
    PlaintextAuth,
    /// An IMAP/POP/submission connection that never tried to log in (`no auth attempts`,
    /// `disconnected before auth was ready`): a probe or a scanner.
    NoAuthProbe,
    /// A content filter's spam verdict on the client's message (Exim's `local_scan()` rejects,
    /// SpamAssassin's verdict lines).
    Spam,
    /// DNSBL zones list the client: the configured weights of their answers, in hundredths of
    /// a point (`[[dnsbl]]`).
    DnsblListed {
        centipoints: u32,
    },
    /// Points reputation feeds give the client (`[[feeds]]` with `points`), in hundredths of
    /// a point.
    FeedListed {
        centipoints: u32,
    },
    /// The policy service deferred the user's message: it was over its own bucket.
    PolicyDeferred,
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
