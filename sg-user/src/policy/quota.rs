//! The policy service's decisions, the same for every front end (Postfix's policy protocol,
//! the milter): per SASL user, buckets for messages and recipients (with per-user and
//! per-domain overrides), narrowed as the user's level rises; per client address, its level's
//! limit used as a message rate, so a sender limited at the NIC is limited in messages too,
//! even inside a session it already holds. Temporary failures, so legitimate mail is retried
//! and never lost; a permanent reply only at the user's block level, and only if configured.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    time::Duration,
};

use super::bucket::{Buckets, Shape};
use crate::domain::{Limit, Rate};

/// Limits of one user (or the defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UserLimits {
    pub messages: Shape,
    pub recipients: Shape,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub defaults: UserLimits,
    /// By user (`alice@example.org`) or by domain (`@example.org`), lower case.
    pub overrides: HashMap<String, UserLimits>,
    /// The answer over a limit.
    pub defer: String,
    /// The answer at the user's block level; None: `defer` there too.
    pub block: Option<String>,
    /// Each level of the user multiplies its buckets' rates and sizes by this (0 < f <= 1).
    pub tighten: f64,
    /// Keys remembered per kind of bucket, at most.
    pub max_keys: usize,
}

/// Where in the SMTP dialogue a question is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A recipient: checked, nothing counted.
    Rcpt,
    /// The message (DATA or end of message): counted, once per message.
    Data,
    /// Anything else: no opinion.
    Other,
}

/// One question, whatever front end asked it.
#[derive(Clone, Debug, PartialEq)]
pub struct Ask<'a> {
    pub stage: Stage,
    /// The authenticated user, normalised (trimmed, lower case).
    pub user: Option<&'a str>,
    pub client: Option<IpAddr>,
    /// What ties the questions about one message together (Postfix's `instance`).
    pub message: Option<&'a str>,
    /// Recipients of the message, at least 1 (known at DATA).
    pub recipients: u32,
}

/// What the rest of slowgate knows of the asker: the client address's limit (by its level,
/// the operators' lists, feeds) and the user's level.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Standing {
    pub address: Option<Limit>,
    /// The user's level, and whether it is the block level.
    pub user_level: usize,
    pub user_blocked: bool,
}

/// Why a message was refused, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    UserMessages,
    UserRecipients,
    UserBlocked,
    AddressRate,
    AddressBlocked,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::UserMessages,
        Reason::UserRecipients,
        Reason::UserBlocked,
        Reason::AddressRate,
        Reason::AddressBlocked,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::UserMessages => "user_messages",
            Reason::UserRecipients => "user_recipients",
            Reason::UserBlocked => "user_blocked",
            Reason::AddressRate => "address_rate",
            Reason::AddressBlocked => "address_blocked",
        }
    }

    /// Whether the user earned this one (and points for it); the address's own limits say
    /// nothing about the user who happens to send from it.
    pub fn is_the_users(self) -> bool {
        matches!(self, Reason::UserMessages | Reason::UserRecipients)
    }
}

/// What to answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// No opinion: the MTA goes on with its other restrictions.
    Dunno,
    /// A temporary failure.
    Defer(Reason),
    /// The configured permanent reply (the user's block level).
    Reject(Reason),
}

/// Message instances remembered as counted, at most (a message is counted once, at DATA).
const COUNTED: usize = 100_000;

/// A user's buckets at its level: each level multiplies rate and size by `tighten`.
fn narrowed(shape: Shape, tighten: f64, level: usize) -> Shape {
    if level == 0 {
        return shape;
    }
    let f = tighten.powi(level.min(32) as i32).clamp(1e-6, 1.0);
    let interval = shape.rate.interval.as_secs_f64() / f;
    Shape {
        rate: Rate {
            interval: Duration::from_secs_f64(interval.min(1e9)),
        },
        capacity: ((f64::from(shape.capacity) * f).floor() as u32).max(1),
    }
}

/// A user's buckets as `slowgate show` prints them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserBuckets {
    pub messages: f64,
    pub messages_capacity: u32,
    pub recipients: f64,
    pub recipients_capacity: u32,
    /// Per hour, at the user's level.
    pub messages_per_hour: f64,
    pub recipients_per_hour: f64,
}

pub struct Quotas {
    settings: Settings,
    messages: Buckets,
    recipients: Buckets,
    addresses: Buckets,
    counted: HashSet<Box<str>>,
    counted_order: VecDeque<Box<str>>,
    /// Tokens taken here per user since [`Quotas::take_spent`] (a fleet shares them).
    spent: HashMap<Box<str>, (u32, u32)>,
}

impl Quotas {
    pub fn new(settings: Settings) -> Quotas {
        let max = settings.max_keys;
        Quotas {
            settings,
            messages: Buckets::new(max),
            recipients: Buckets::new(max),
            addresses: Buckets::new(max),
            counted: HashSet::new(),
            counted_order: VecDeque::new(),
            spent: HashMap::new(),
        }
    }

    /// The tokens taken per user since the last call: (user, messages, recipients).
    pub fn take_spent(&mut self) -> Vec<(String, u32, u32)> {
        self.spent
            .drain()
            .map(|(u, (m, r))| (u.into(), m, r))
            .collect()
    }

    /// Another host took tokens from `user`'s buckets: they are taken here too (as many as
    /// there are).
    pub fn spent_elsewhere(
        &mut self,
        user: &str,
        messages: u32,
        recipients: u32,
        level: usize,
        now: f64,
    ) {
        let l = self.limits_of(user, level);
        self.messages.drain(user, &l.messages, messages, now);
        self.recipients.drain(user, &l.recipients, recipients, now);
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The answer text of `verdict` (None for DUNNO).
    pub fn reply(&self, verdict: Verdict) -> Option<&str> {
        match verdict {
            Verdict::Dunno => None,
            Verdict::Defer(_) => Some(&self.settings.defer),
            Verdict::Reject(_) => Some(
                self.settings
                    .block
                    .as_deref()
                    .unwrap_or(&self.settings.defer),
            ),
        }
    }

    /// The limits of `user` at `level`: its own override, else its domain's, else the
    /// defaults, narrowed by its level.
    pub fn limits_of(&self, user: &str, level: usize) -> UserLimits {
        let domain = user.rsplit_once('@').map(|(_, d)| format!("@{d}"));
        let base = self
            .settings
            .overrides
            .get(user)
            .or_else(|| domain.and_then(|d| self.settings.overrides.get(&d)))
            .copied()
            .unwrap_or(self.settings.defaults);
        UserLimits {
            messages: narrowed(base.messages, self.settings.tighten, level),
            recipients: narrowed(base.recipients, self.settings.tighten, level),
        }
    }

    /// The state of `user`'s buckets at `now`.
    pub fn buckets_of(&self, user: &str, level: usize, now: f64) -> UserBuckets {
        let l = self.limits_of(user, level);
        let per_hour = |s: &Shape| 3600.0 / s.rate.interval.as_secs_f64();
        UserBuckets {
            messages: self.messages.tokens(user, &l.messages, now),
            messages_capacity: l.messages.capacity,
            recipients: self.recipients.tokens(user, &l.recipients, now),
            recipients_capacity: l.recipients.capacity,
            messages_per_hour: per_hour(&l.messages),
            recipients_per_hour: per_hour(&l.recipients),
        }
    }

    /// Decides on one question at `now` (seconds on any steady clock).
    pub fn decide(&mut self, ask: &Ask, standing: Standing, now: f64) -> Verdict {
        let address = ask.client.map(|a| a.to_string());
        let address_shape = match standing.address {
            Some(Limit::Block) if ask.stage != Stage::Other => {
                return Verdict::Defer(Reason::AddressBlocked);
            }
            Some(Limit::Rate { rate, burst }) => Some(Shape {
                rate,
                capacity: burst.max(1),
            }),
            _ => None,
        };
        if ask.user.is_some() && standing.user_blocked && ask.stage != Stage::Other {
            return match self.settings.block {
                Some(_) => Verdict::Reject(Reason::UserBlocked),
                None => Verdict::Defer(Reason::UserBlocked),
            };
        }
        let user = ask
            .user
            .map(|u| (u, self.limits_of(u, standing.user_level)));
        match ask.stage {
            // Checked, not counted: a user or address already out of tokens is deferred as
            // early as RCPT.
            Stage::Rcpt => {
                if let Some((u, l)) = &user
                    && self.messages.tokens(u, &l.messages, now) < 1.0
                {
                    return Verdict::Defer(Reason::UserMessages);
                }
                if let (Some(a), Some(s)) = (&address, &address_shape)
                    && self.addresses.tokens(a, s, now) < 1.0
                {
                    return Verdict::Defer(Reason::AddressRate);
                }
                Verdict::Dunno
            }
            // Counted once per message (DATA and END-OF-MESSAGE of one instance count once).
            Stage::Data => {
                if let Some(m) = ask.message
                    && self.counted.contains(m)
                {
                    return Verdict::Dunno;
                }
                if let (Some(a), Some(s)) = (&address, &address_shape)
                    && !self.addresses.take(a, s, 1, now)
                {
                    return Verdict::Defer(Reason::AddressRate);
                }
                if let Some((u, l)) = &user {
                    if self.messages.tokens(u, &l.messages, now) < 1.0 {
                        return Verdict::Defer(Reason::UserMessages);
                    }
                    if !self
                        .recipients
                        .take(u, &l.recipients, ask.recipients.max(1), now)
                    {
                        return Verdict::Defer(Reason::UserRecipients);
                    }
                    self.messages.take(u, &l.messages, 1, now);
                    // Remembered for the fleet, within the same bound as the buckets.
                    if self.spent.len() < self.settings.max_keys || self.spent.contains_key(*u) {
                        let s = self.spent.entry((*u).into()).or_default();
                        s.0 = s.0.saturating_add(1);
                        s.1 = s.1.saturating_add(ask.recipients.max(1));
                    }
                }
                if let Some(m) = ask.message {
                    if self.counted_order.len() >= COUNTED
                        && let Some(old) = self.counted_order.pop_front()
                    {
                        self.counted.remove(&old);
                    }
                    self.counted.insert(m.into());
                    self.counted_order.push_back(m.into());
                }
                Verdict::Dunno
            }
            Stage::Other => Verdict::Dunno,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas() -> Quotas {
        let defaults = UserLimits {
            messages: Shape::of("3/h", 3),
            recipients: Shape::of("10/h", 10),
        };
        let big = UserLimits {
            messages: Shape::of("5000/h", 5000),
            recipients: Shape::of("5000/h", 5000),
        };
        Quotas::new(Settings {
            defaults,
            overrides: [
                ("newsletter@example.org".to_string(), big),
                ("@bulk.example".to_string(), big),
            ]
            .into(),
            defer: "451 4.7.1 Sending rate exceeded".into(),
            block: None,
            tighten: 0.5,
            max_keys: 1000,
        })
    }

    fn ask<'a>(stage: Stage, user: &'a str, client: &str, message: &'a str, rcpts: u32) -> Ask<'a> {
        Ask {
            stage,
            user: (!user.is_empty()).then_some(user),
            client: client.parse().ok(),
            message: Some(message),
            recipients: rcpts,
        }
    }

    const CLEAN: Standing = Standing {
        address: None,
        user_level: 0,
        user_blocked: false,
    };

    #[test]
    fn a_user_is_held_to_its_bucket_and_another_user_is_not() {
        let mut q = quotas();
        let alice = "alice@example.net";
        for i in 0..3 {
            let id = format!("m{i}");
            let rcpt = ask(Stage::Rcpt, alice, "203.0.113.7", &id, 0);
            assert_eq!(q.decide(&rcpt, CLEAN, 0.0), Verdict::Dunno);
            // DATA and END-OF-MESSAGE of one message count once.
            let data = ask(Stage::Data, alice, "203.0.113.7", &id, 1);
            assert_eq!(q.decide(&data, CLEAN, 0.0), Verdict::Dunno);
            assert_eq!(q.decide(&data, CLEAN, 0.0), Verdict::Dunno);
        }
        // What was taken is there for a fleet to share, once.
        assert_eq!(
            q.take_spent(),
            vec![("alice@example.net".to_string(), 3, 3)]
        );
        assert!(q.take_spent().is_empty());
        // The fourth message is deferred as early as RCPT, with a temporary failure.
        let fourth = ask(Stage::Rcpt, alice, "198.51.100.9", "m3", 0);
        assert_eq!(
            q.decide(&fourth, CLEAN, 1.0),
            Verdict::Defer(Reason::UserMessages)
        );
        assert_eq!(
            q.reply(Verdict::Defer(Reason::UserMessages)),
            Some("451 4.7.1 Sending rate exceeded")
        );
        // Bob sends freely meanwhile; the newsletter's override and a domain's too.
        let bob = ask(Stage::Data, "bob@example.net", "203.0.113.7", "b0", 1);
        assert_eq!(q.decide(&bob, CLEAN, 1.0), Verdict::Dunno);
        for i in 0..10 {
            let n = format!("n{i}");
            let newsletter = ask(Stage::Data, "newsletter@example.org", "203.0.113.8", &n, 1);
            assert_eq!(q.decide(&newsletter, CLEAN, 1.0), Verdict::Dunno);
            let x = format!("x{i}");
            let bulk = ask(Stage::Data, "x@bulk.example", "203.0.113.8", &x, 1);
            assert_eq!(q.decide(&bulk, CLEAN, 1.0), Verdict::Dunno);
        }
        // After 20 minutes one message has refilled (3 an hour).
        let later = ask(Stage::Rcpt, alice, "203.0.113.7", "m4", 0);
        assert_eq!(q.decide(&later, CLEAN, 1201.0), Verdict::Dunno);
        // Another host of the fleet took it first: deferred here too.
        q.spent_elsewhere(alice, 1, 1, 0, 1201.0);
        assert_eq!(
            q.decide(&later, CLEAN, 1201.0),
            Verdict::Defer(Reason::UserMessages)
        );
    }

    #[test]
    fn recipients_count_once_per_message_and_unauthenticated_mail_has_no_user_bucket() {
        let mut q = quotas();
        let carol = "carol@example.net";
        let eight = ask(Stage::Data, carol, "203.0.113.7", "c0", 8);
        assert_eq!(q.decide(&eight, CLEAN, 0.0), Verdict::Dunno);
        let five = ask(Stage::Data, carol, "203.0.113.7", "c1", 5);
        assert_eq!(
            q.decide(&five, CLEAN, 0.0),
            Verdict::Defer(Reason::UserRecipients)
        );
        for i in 0..20 {
            let id = format!("a{i}");
            let anon = ask(Stage::Data, "", "203.0.113.9", &id, 1);
            assert_eq!(q.decide(&anon, CLEAN, 0.0), Verdict::Dunno);
        }
    }

    #[test]
    fn a_limited_address_is_limited_in_messages_too_inside_one_session() {
        let mut q = quotas();
        let six_a_minute = Standing {
            address: Some(Limit::Rate {
                rate: "6/min".parse().unwrap(),
                burst: 6,
            }),
            ..CLEAN
        };
        for i in 0..6 {
            let id = format!("s{i}");
            let r = ask(Stage::Data, "", "203.0.113.66", &id, 1);
            assert_eq!(
                q.decide(&r, six_a_minute, 0.0),
                Verdict::Dunno,
                "message {i}"
            );
        }
        let seventh = ask(Stage::Data, "", "203.0.113.66", "s6", 1);
        assert_eq!(
            q.decide(&seventh, six_a_minute, 1.0),
            Verdict::Defer(Reason::AddressRate)
        );
        let rcpt = ask(Stage::Rcpt, "", "203.0.113.66", "s7", 0);
        assert_eq!(
            q.decide(&rcpt, six_a_minute, 1.0),
            Verdict::Defer(Reason::AddressRate)
        );
        // Ten seconds later, one more.
        let later = ask(Stage::Data, "", "203.0.113.66", "s8", 1);
        assert_eq!(q.decide(&later, six_a_minute, 11.0), Verdict::Dunno);
        // Blocked: deferred at once, even before any message.
        let blocked = Standing {
            address: Some(Limit::Block),
            ..CLEAN
        };
        let first = ask(Stage::Rcpt, "", "203.0.113.67", "t0", 0);
        assert_eq!(
            q.decide(&first, blocked, 0.0),
            Verdict::Defer(Reason::AddressBlocked)
        );
        // A user sending from a limited address is deferred, but the reason is the address's.
        assert!(!Reason::AddressRate.is_the_users());
        assert!(Reason::UserMessages.is_the_users());
    }

    #[test]
    fn a_users_level_narrows_its_buckets_and_its_block_level_rejects_if_configured() {
        let mut q = quotas();
        let dave = "dave@example.net";
        // Level 1 with tighten 0.5: 3/h becomes 1 message (1.5 rounded down) at 1.5/h.
        let level1 = Standing {
            user_level: 1,
            ..CLEAN
        };
        let b = q.buckets_of(dave, 1, 0.0);
        assert_eq!(b.messages_capacity, 1);
        assert!((b.messages_per_hour - 1.5).abs() < 1e-9);
        let first = ask(Stage::Data, dave, "203.0.113.7", "d0", 1);
        assert_eq!(q.decide(&first, level1, 0.0), Verdict::Dunno);
        let second = ask(Stage::Data, dave, "203.0.113.7", "d1", 1);
        assert_eq!(
            q.decide(&second, level1, 0.0),
            Verdict::Defer(Reason::UserMessages)
        );
        // The block level: deferred by default, the permanent reply when configured.
        let blocked = Standing {
            user_level: 3,
            user_blocked: true,
            ..CLEAN
        };
        let third = ask(Stage::Rcpt, dave, "203.0.113.7", "d2", 0);
        assert_eq!(
            q.decide(&third, blocked, 0.0),
            Verdict::Defer(Reason::UserBlocked)
        );
        q.settings.block = Some("554 5.7.1 Account suspended".into());
        let v = q.decide(&third, blocked, 0.0);
        assert_eq!(v, Verdict::Reject(Reason::UserBlocked));
        assert_eq!(q.reply(v), Some("554 5.7.1 Account suspended"));
        // Mail without a user is never held by a user's level.
        let anon = ask(Stage::Rcpt, "", "203.0.113.7", "d3", 0);
        assert_eq!(q.decide(&anon, blocked, 0.0), Verdict::Dunno);
    }
}
