//! The learning loop's side of the policy service: it tells the service the users' levels,
//! shows their buckets, and takes the service's events, so that what the service reported is
//! not counted again when the log line says the same: a failed login Dovecot reported, and the
//! MTA's reject line of a message the service deferred.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    domain::{Limit, Sender},
    engine::Change,
    events::{Event, EventKind, RejectKind},
    policy::{Inspect, UserLevels},
};

/// What the learning loop shares with the policy service.
pub struct PolicyLink {
    pub levels: Arc<UserLevels>,
    pub inspect: Arc<dyn Inspect>,
}

impl PolicyLink {
    /// Passes the users' level changes on.
    pub fn levels_changed(&self, changes: &[Change]) {
        for c in changes {
            if let Sender::User(user) = &c.sender {
                self.levels
                    .set(user, c.to, matches!(c.limit, Some(Limit::Block)));
            }
        }
    }
}

/// How long a reported failure waits for its log line.
const WAIT: Duration = Duration::from_secs(120);
/// Sources with reported failures remembered, at most.
const MAX_SOURCES: usize = 100_000;

/// What the policy service reported, per source and kind, not yet matched by a log line.
#[derive(Default)]
pub(super) struct Reported {
    failures: HashMap<(IpAddr, Kind), (u32, Instant)>,
}

/// The kinds of log events a report stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// A failed login (Dovecot's report; its log line, or Postfix's for SMTP AUTH).
    LoginFailed,
    /// A deferred message (the service's deferral; the MTA's `reject:` line with its 451).
    Deferred,
}

impl Kind {
    /// The kind a service's event stands for.
    fn reported(e: &Event) -> Option<Kind> {
        match e.kind {
            EventKind::AuthFailure { .. } => Some(Kind::LoginFailed),
            EventKind::PolicyDeferred => Some(Kind::Deferred),
            _ => None,
        }
    }

    /// The kind a log line's event may repeat.
    fn logged(e: &Event) -> Option<Kind> {
        match e.kind {
            EventKind::AuthFailure { .. } => Some(Kind::LoginFailed),
            EventKind::Reject {
                reject: RejectKind::Other,
            } => Some(Kind::Deferred),
            _ => None,
        }
    }
}

impl Reported {
    /// An event from the service, remembered until its log line comes.
    pub(super) fn note(&mut self, e: &Event) {
        let Some(kind) = Kind::reported(e) else {
            return;
        };
        let key = (e.source, kind);
        let now = Instant::now();
        if self.failures.len() >= MAX_SOURCES && !self.failures.contains_key(&key) {
            self.failures
                .retain(|_, (_, at)| now.duration_since(*at) < WAIT);
            if self.failures.len() >= MAX_SOURCES {
                return; // counted twice rather than remembered without bound
            }
        }
        let entry = self.failures.entry(key).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
    }

    /// Whether a log line's event was reported already (and is then not counted again).
    pub(super) fn already(&mut self, e: &Event) -> bool {
        let Some(kind) = Kind::logged(e) else {
            return false;
        };
        let key = (e.source, kind);
        let Some((count, at)) = self.failures.get_mut(&key) else {
            return false;
        };
        if at.elapsed() >= WAIT {
            self.failures.remove(&key);
            return false;
        }
        *count -= 1;
        if *count == 0 {
            self.failures.remove(&key);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Service;

    #[test]
    fn a_reported_failure_is_not_counted_again_from_its_log_line() {
        let mut r = Reported::default();
        let source: IpAddr = "203.0.113.9".parse().unwrap();
        let failure = Event::new(
            EventKind::AuthFailure {
                service: Service::Imap,
            },
            source,
        );
        r.note(&failure);
        r.note(&failure);
        assert!(r.already(&failure));
        assert!(r.already(&failure));
        assert!(!r.already(&failure), "a third line was not reported");
        // Other sources and other kinds are not touched.
        let other = Event::new(failure.kind.clone(), "203.0.113.10".parse().unwrap());
        r.note(&failure);
        assert!(!r.already(&other));
        assert!(!r.already(&Event::new(EventKind::Connection, source)));
        assert!(r.already(&failure));
        // A deferral stands for the MTA's reject line of the same source, not a login.
        let deferred = Event::new(EventKind::PolicyDeferred, source);
        let reject = Event::new(
            EventKind::Reject {
                reject: RejectKind::Other,
            },
            source,
        );
        r.note(&deferred);
        assert!(!r.already(&failure));
        assert!(r.already(&reject));
        assert!(!r.already(&reject));
    }
}
