//! What the engine is told: points per event kind, level tables, prefix lengths, bounds.

use serde::Deserialize;

use std::{collections::HashMap, time::Duration};

use crate::{
    domain::{Limit, PrefixLengths},
    events::{EventKind, RejectKind},
};

/// Points per event kind (`[points.weights]` in the config).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    pub connection: f64,
    pub message: f64,
    pub per_recipient: f64,
    pub unknown_recipient: f64,
    pub relay_denied: f64,
    pub rbl: f64,
    pub other_reject: f64,
    pub auth_failure: f64,
    pub bounce: f64,
    pub lost_after_auth: f64,
    pub too_many_errors: f64,
    pub dmarc_fail: f64,
    pub pipelining: f64,
    pub pregreet: f64,
    pub lost_early: f64,
    pub protocol_error: f64,
    pub expn_vrfy: f64,
    pub plaintext_auth: f64,
    pub no_auth_probe: f64,
    pub spam: f64,
    /// Multiplies the points of DNSBL answers (the zones' own weights).
    pub dnsbl: f64,
    /// Multiplies the points reputation feeds give (each feed's own `points`).
    pub feed: f64,
    /// A user's message the policy service deferred (over the user's own bucket).
    pub policy_deferred: f64,
}

impl Weights {
    /// Each weight with its key in `[points.weights]`.
    pub fn named(&self) -> [(&'static str, f64); 23] {
        [
            ("connection", self.connection),
            ("message", self.message),
            ("per_recipient", self.per_recipient),
            ("unknown_recipient", self.unknown_recipient),
            ("relay_denied", self.relay_denied),
            ("rbl", self.rbl),
            ("other_reject", self.other_reject),
            ("auth_failure", self.auth_failure),
            ("bounce", self.bounce),
            ("lost_after_auth", self.lost_after_auth),
            ("too_many_errors", self.too_many_errors),
            ("dmarc_fail", self.dmarc_fail),
            ("pipelining", self.pipelining),
            ("pregreet", self.pregreet),
            ("lost_early", self.lost_early),
            ("protocol_error", self.protocol_error),
            ("expn_vrfy", self.expn_vrfy),
            ("plaintext_auth", self.plaintext_auth),
            ("no_auth_probe", self.no_auth_probe),
            ("spam", self.spam),
            ("dnsbl", self.dnsbl),
            ("feed", self.feed),
            ("policy_deferred", self.policy_deferred),
        ]
    }
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            connection: 0.1,
            message: 0.2,
            per_recipient: 0.05,
            unknown_recipient: 2.0,
            relay_denied: 3.0,
            rbl: 5.0,
            other_reject: 1.0,
            auth_failure: 3.0,
            bounce: 0.5,
            lost_after_auth: 2.0,
            too_many_errors: 3.0,
            dmarc_fail: 2.0,
            // Weak signals weigh little: a legitimate client whose connection dropped once, or
            // a mail client that opened a connection and closed it, must stay far from level 1
            // (10 points); thirty such events in a half-life are a scanner.
            pipelining: 1.0,
            pregreet: 2.0,
            lost_early: 0.3,
            protocol_error: 1.0,
            expn_vrfy: 2.0,
            plaintext_auth: 2.0,
            no_auth_probe: 0.3,
            spam: 3.0,
            dnsbl: 1.0,
            feed: 1.0,
            policy_deferred: 1.0,
        }
    }
}

/// Event kinds as counted per sender ("the events that moved it").
pub const KIND_NAMES: [&str; 23] = [
    "connection",
    "message",
    "unknown_recipient",
    "relay_denied",
    "rbl",
    "other_reject",
    "auth_failure",
    "auth_success",
    "bounce",
    "lost_after_auth",
    "too_many_errors",
    "dmarc_fail",
    "pipelining",
    "pregreet",
    "lost_early",
    "protocol_error",
    "expn_vrfy",
    "plaintext_auth",
    "no_auth_probe",
    "spam",
    "dnsbl",
    "feed",
    "policy_deferred",
];

/// The index of an event's kind in [`KIND_NAMES`].
pub fn kind_index(kind: &EventKind) -> usize {
    match kind {
        EventKind::Connection => 0,
        EventKind::MessageAccepted { .. } => 1,
        EventKind::Reject { reject } => match reject {
            RejectKind::UnknownRecipient => 2,
            RejectKind::RelayDenied => 3,
            RejectKind::Rbl => 4,
            RejectKind::Helo | RejectKind::Sender | RejectKind::Other => 5,
        },
        EventKind::AuthFailure { .. } => 6,
        EventKind::AuthSuccess { .. } => 7,
        EventKind::Bounce => 8,
        EventKind::LostAfterAuth => 9,
        EventKind::TooManyErrors => 10,
        EventKind::DmarcFail => 11,
        EventKind::Pipelining => 12,
        EventKind::Pregreet => 13,
        EventKind::LostEarly => 14,
        EventKind::ProtocolError => 15,
        EventKind::ExpnVrfy => 16,
        EventKind::PlaintextAuth => 17,
        EventKind::NoAuthProbe => 18,
        EventKind::Spam => 19,
        EventKind::DnsblListed { .. } => 20,
        EventKind::FeedListed { .. } => 21,
        EventKind::PolicyDeferred => 22,
    }
}

impl Weights {
    pub fn of(&self, kind: &EventKind) -> f64 {
        match kind {
            EventKind::Connection => self.connection,
            EventKind::MessageAccepted { recipients, .. } => {
                self.message + self.per_recipient * f64::from(*recipients)
            }
            EventKind::Reject { reject } => match reject {
                RejectKind::UnknownRecipient => self.unknown_recipient,
                RejectKind::RelayDenied => self.relay_denied,
                RejectKind::Rbl => self.rbl,
                RejectKind::Helo | RejectKind::Sender | RejectKind::Other => self.other_reject,
            },
            EventKind::AuthFailure { .. } => self.auth_failure,
            EventKind::AuthSuccess { .. } => 0.0,
            EventKind::Bounce => self.bounce,
            EventKind::LostAfterAuth => self.lost_after_auth,
            EventKind::TooManyErrors => self.too_many_errors,
            EventKind::DmarcFail => self.dmarc_fail,
            EventKind::Pipelining => self.pipelining,
            EventKind::Pregreet => self.pregreet,
            EventKind::LostEarly => self.lost_early,
            EventKind::ProtocolError => self.protocol_error,
            EventKind::ExpnVrfy => self.expn_vrfy,
            EventKind::PlaintextAuth => self.plaintext_auth,
            EventKind::NoAuthProbe => self.no_auth_probe,
            EventKind::Spam => self.spam,
            EventKind::DnsblListed { centipoints } => self.dnsbl * f64::from(*centipoints) / 100.0,
            EventKind::FeedListed { centipoints } => self.feed * f64::from(*centipoints) / 100.0,
            EventKind::PolicyDeferred => self.policy_deferred,
        }
    }
}

/// A row of a level table: from `points` on, this limit applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelRow {
    pub points: f64,
    pub limit: Limit,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub weights: Weights,
    pub half_life: Duration,
    /// Rows by increasing points; level n (1-based) is row n-1; level 0 is "no limit".
    pub levels: Vec<LevelRow>,
    /// Level tables of countries that have their own.
    pub country_levels: HashMap<[u8; 2], Vec<LevelRow>>,
    /// Points of events from a country are multiplied by this (1 when absent).
    pub country_multipliers: HashMap<[u8; 2], f64>,
    /// A level is left downwards when points fall below `down_fraction` of its threshold.
    pub down_fraction: f64,
    /// Shortest time a level is held before stepping down one.
    pub min_hold: Duration,
    /// Longest the kernel's refusals of a sender's connections hold it at its level (they may
    /// hold a level, never raise one: SYNs can be spoofed).
    pub refusal_hold_max: Duration,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub network_v4: u8,
    pub network_v6: u8,
    /// Limited prefixes in one network that limit the network; 0 = never.
    pub network_after: usize,
    /// Distinct addresses that must contribute before an IPv4 / IPv6 prefix is limited (1: a
    /// single address limits its prefix).
    pub min_sources_v4: u32,
    pub min_sources_v6: u32,
    /// Senders tracked at most; when full, the one with the fewest points is forgotten.
    pub max_tracked: usize,
}

impl EngineConfig {
    /// The lengths senders are tracked at, for [`Sender::parse`].
    pub fn lengths(&self) -> PrefixLengths {
        PrefixLengths {
            v4: self.prefix_v4,
            v6: self.prefix_v6,
            network_v4: self.network_v4,
            network_v6: self.network_v6,
        }
    }
}
