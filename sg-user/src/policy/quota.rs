//! The policy service's decisions: per SASL user, buckets for messages and recipients (with
//! per-user and per-domain overrides); per client address, its level's limit used as a message
//! rate, so a sender limited at the NIC is limited in messages too, even inside a session it
//! already holds. Temporary failures only: legitimate mail is retried, never lost.

use std::collections::{HashMap, VecDeque};

use super::{
    bucket::{Buckets, Shape},
    postfix::Request,
};
use crate::domain::Limit;

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
    /// Keys remembered per kind of bucket, at most.
    pub max_keys: usize,
}

/// What to answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// No opinion: Postfix goes on with its other restrictions.
    Dunno,
    /// A temporary failure, with why (for logs and metrics).
    Defer(&'static str),
}

/// Message instances remembered as counted, at most (a message is counted once, at DATA).
const COUNTED: usize = 100_000;

pub struct Quotas {
    settings: Settings,
    messages: Buckets,
    recipients: Buckets,
    addresses: Buckets,
    counted: VecDeque<String>,
}

impl Quotas {
    pub fn new(settings: Settings) -> Quotas {
        let max = settings.max_keys;
        Quotas {
            settings,
            messages: Buckets::new(max),
            recipients: Buckets::new(max),
            addresses: Buckets::new(max),
            counted: VecDeque::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The limits of `user`: its own override, else its domain's, else the defaults.
    pub fn limits_of(&self, user: &str) -> UserLimits {
        let domain = user.rsplit_once('@').map(|(_, d)| format!("@{d}"));
        self.settings
            .overrides
            .get(user)
            .or_else(|| domain.and_then(|d| self.settings.overrides.get(&d)))
            .copied()
            .unwrap_or(self.settings.defaults)
    }

    /// Decides on one request at `now` (seconds on any steady clock). `address_limit` is the
    /// client address's limit by its level (None below level 1).
    pub fn decide(&mut self, r: &Request, address_limit: Option<Limit>, now: f64) -> Verdict {
        let address = r.client_address().map(|a| a.to_string());
        let address_shape = match address_limit {
            Some(Limit::Block) => return Verdict::Defer("address blocked"),
            Some(Limit::Rate { rate, burst }) => Some(Shape {
                rate,
                capacity: burst.max(1),
            }),
            None => None,
        };
        let user = r.user();
        let limits = user.as_deref().map(|u| self.limits_of(u));
        match r.state() {
            // Checked, not counted: a user or address already out of tokens is deferred as
            // early as RCPT.
            "RCPT" => {
                if let (Some(u), Some(l)) = (&user, &limits)
                    && self.messages.tokens(u, &l.messages, now) < 1.0
                {
                    return Verdict::Defer("user over its message limit");
                }
                if let (Some(a), Some(s)) = (&address, &address_shape)
                    && self.addresses.tokens(a, s, now) < 1.0
                {
                    return Verdict::Defer("address over its level's rate");
                }
                Verdict::Dunno
            }
            // Counted once per message (DATA and END-OF-MESSAGE of one instance count once).
            "DATA" | "END-OF-MESSAGE" => {
                if let Some(instance) = r.instance()
                    && self.counted.iter().any(|i| i == instance)
                {
                    return Verdict::Dunno;
                }
                let n = r.recipients();
                if let (Some(a), Some(s)) = (&address, &address_shape)
                    && !self.addresses.take(a, s, 1, now)
                {
                    return Verdict::Defer("address over its level's rate");
                }
                if let (Some(u), Some(l)) = (&user, &limits) {
                    if self.messages.tokens(u, &l.messages, now) < 1.0 {
                        return Verdict::Defer("user over its message limit");
                    }
                    if !self.recipients.take(u, &l.recipients, n, now) {
                        return Verdict::Defer("user over its recipient limit");
                    }
                    self.messages.take(u, &l.messages, 1, now);
                }
                if let Some(instance) = r.instance() {
                    if self.counted.len() >= COUNTED {
                        self.counted.pop_front();
                    }
                    self.counted.push_back(instance.to_string());
                }
                Verdict::Dunno
            }
            _ => Verdict::Dunno,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::postfix::parse;

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
            max_keys: 1000,
        })
    }

    fn request(state: &str, user: &str, client: &str, instance: &str, rcpts: u32) -> Request {
        let text = format!(
            "request=smtpd_access_policy\nprotocol_state={state}\nsasl_username={user}\n\
             client_address={client}\ninstance={instance}\nrecipient_count={rcpts}\n"
        );
        let lines: Vec<&[u8]> = text.lines().map(str::as_bytes).chain([&b""[..]]).collect();
        parse(lines.into_iter()).unwrap().unwrap()
    }

    #[test]
    fn a_user_is_held_to_its_bucket_and_another_user_is_not() {
        let mut q = quotas();
        for i in 0..3 {
            let id = format!("m{i}");
            assert_eq!(
                q.decide(
                    &request("RCPT", "alice@example.net", "203.0.113.7", &id, 0),
                    None,
                    0.0
                ),
                Verdict::Dunno
            );
            assert_eq!(
                q.decide(
                    &request("DATA", "alice@example.net", "203.0.113.7", &id, 1),
                    None,
                    0.0
                ),
                Verdict::Dunno
            );
            // The same message's END-OF-MESSAGE does not count again.
            assert_eq!(
                q.decide(
                    &request("END-OF-MESSAGE", "alice@example.net", "203.0.113.7", &id, 1),
                    None,
                    0.0
                ),
                Verdict::Dunno
            );
        }
        // The fourth message is deferred as early as RCPT, with a temporary failure.
        assert!(matches!(
            q.decide(
                &request("RCPT", "Alice@Example.NET", "198.51.100.9", "m3", 0),
                None,
                1.0
            ),
            Verdict::Defer(_)
        ));
        // Bob sends freely meanwhile; the newsletter's override and a domain's too.
        assert_eq!(
            q.decide(
                &request("DATA", "bob@example.net", "203.0.113.7", "b0", 1),
                None,
                1.0
            ),
            Verdict::Dunno
        );
        for i in 0..10 {
            assert_eq!(
                q.decide(
                    &request(
                        "DATA",
                        "newsletter@example.org",
                        "203.0.113.8",
                        &format!("n{i}"),
                        1
                    ),
                    None,
                    1.0
                ),
                Verdict::Dunno
            );
            assert_eq!(
                q.decide(
                    &request("DATA", "x@bulk.example", "203.0.113.8", &format!("x{i}"), 1),
                    None,
                    1.0
                ),
                Verdict::Dunno
            );
        }
        // After 20 minutes one message has refilled (3 an hour).
        assert_eq!(
            q.decide(
                &request("RCPT", "alice@example.net", "203.0.113.7", "m4", 0),
                None,
                1201.0
            ),
            Verdict::Dunno
        );
    }

    #[test]
    fn recipients_count_once_per_message_and_failed_logins_never_matter() {
        let mut q = quotas();
        assert_eq!(
            q.decide(
                &request("DATA", "carol@example.net", "203.0.113.7", "c0", 8),
                None,
                0.0
            ),
            Verdict::Dunno
        );
        assert!(matches!(
            q.decide(
                &request("DATA", "carol@example.net", "203.0.113.7", "c1", 5),
                None,
                0.0
            ),
            Verdict::Defer(_)
        ));
        // Unauthenticated mail has no user bucket.
        let anon = "request=smtpd_access_policy\nprotocol_state=DATA\nclient_address=203.0.113.9\n";
        let lines: Vec<&[u8]> = anon.lines().map(str::as_bytes).chain([&b""[..]]).collect();
        let r = parse(lines.into_iter()).unwrap().unwrap();
        for _ in 0..20 {
            assert_eq!(q.decide(&r, None, 0.0), Verdict::Dunno);
        }
    }

    #[test]
    fn a_limited_address_is_limited_in_messages_too_inside_one_session() {
        let mut q = quotas();
        let six_a_minute = Limit::Rate {
            rate: "6/min".parse().unwrap(),
            burst: 6,
        };
        for i in 0..6 {
            let r = request("DATA", "", "203.0.113.66", &format!("s{i}"), 1);
            assert_eq!(
                q.decide(&r, Some(six_a_minute), 0.0),
                Verdict::Dunno,
                "message {i}"
            );
        }
        let seventh = request("DATA", "", "203.0.113.66", "s6", 1);
        assert!(matches!(
            q.decide(&seventh, Some(six_a_minute), 1.0),
            Verdict::Defer(_)
        ));
        assert!(matches!(
            q.decide(
                &request("RCPT", "", "203.0.113.66", "s7", 0),
                Some(six_a_minute),
                1.0
            ),
            Verdict::Defer(_)
        ));
        // Ten seconds later, one more.
        assert_eq!(
            q.decide(
                &request("DATA", "", "203.0.113.66", "s8", 1),
                Some(six_a_minute),
                11.0
            ),
            Verdict::Dunno
        );
        // Blocked: deferred at once.
        assert!(matches!(
            q.decide(
                &request("RCPT", "", "203.0.113.67", "t0", 0),
                Some(Limit::Block),
                0.0
            ),
            Verdict::Defer(_)
        ));
    }
}
