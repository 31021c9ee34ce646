//! One authentication failure, several lines: count it once.
//!
//! A failed login can be written by up to three processes: the PAM module (`pam_unix(dovecot:
//! auth): authentication failure; ... rhost=IP`), Dovecot's auth process (`auth-worker(7):
//! pam(user,IP): ... failed`, with `auth_verbose`), and the process that served the client
//! (Postfix's `SASL LOGIN authentication failed`, Dovecot's login process at disconnect:
//! `(auth failed, 3 attempts in 9 secs)`, Postfix's `disconnect from ... auth=0/3`). Installations
//! log any subset of them. Each line reports failures at its layer as they happen; the ledger
//! counts, per client, only what raises the highest layer's count, so the same failure seen by
//! two layers is counted once and a failure seen only by one is still counted.
//!
//! A session's summary line (a disconnect with its attempt count) settles the client's account:
//! it counts what no earlier line reported, and takes the failures it covers off every layer,
//! so the next session starts clean even when sessions of one client overlap. Failures not
//! settled within [`WINDOW_S`] of the last line about the client are forgotten: a summary line
//! that late describes another session.

use std::{collections::VecDeque, net::IpAddr};

use crate::domain::FastMap;

/// Clients with failures not yet settled, at most. When full, the oldest is forgotten: at worst a
/// failure is then counted twice by a later summary line, and memory stays bounded.
pub const LEDGER_CAPACITY: usize = 65_536;

/// The most failures one line may report: a summary line's count is the server's, but bounded
/// all the same.
pub const MAX_PER_LINE: u32 = 50;

/// The ledger at the time of the line being read (seconds), as a parser gets it.
pub struct Clocked<'a> {
    pub ledger: &'a mut Ledger,
    pub now_s: u64,
}

impl Clocked<'_> {
    pub fn report(self, client: IpAddr, layer: Layer, n: u32) -> u32 {
        self.ledger.report(client, layer, n, self.now_s)
    }

    pub fn settle(self, client: IpAddr, n: u32) -> u32 {
        self.ledger.settle(client, n, self.now_s)
    }
}

/// Which process wrote a failure line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// A PAM module through syslog (`pam_unix(dovecot:auth): ... rhost=`).
    Pam,
    /// Dovecot's auth process (`auth-worker(..): pam(user,IP): ...`, `passwd-file(...)`).
    AuthProcess,
    /// The MTA's own failure line (Postfix's `SASL ... authentication failed`).
    Server,
}

const LAYERS: usize = 3;

/// How long reported failures wait for their session's summary line, in seconds (Dovecot's
/// login processes give up on an idle client after 3 minutes; Postfix's smtpd after 5).
pub const WINDOW_S: u64 = 600;

#[derive(Default)]
struct Account {
    counts: [u32; LAYERS],
    /// When a line last spoke of the client (the line's time, in seconds).
    at_s: u64,
}

#[derive(Default)]
pub struct Ledger {
    open: FastMap<IpAddr, Account>,
    order: VecDeque<IpAddr>,
}

impl Ledger {
    /// A line of `layer` reports `n` failures of `client` as they happen: how many to count.
    pub fn report(&mut self, client: IpAddr, layer: Layer, n: u32, now_s: u64) -> u32 {
        let n = n.min(MAX_PER_LINE);
        let counts = self.entry(client, now_s);
        let before = counts.iter().copied().max().unwrap_or(0);
        counts[layer as usize] = counts[layer as usize].saturating_add(n);
        let after = counts.iter().copied().max().unwrap_or(0);
        after - before
    }

    /// A session's summary says `n` of its logins failed: how many no line reported before.
    pub fn settle(&mut self, client: IpAddr, n: u32, now_s: u64) -> u32 {
        let n = n.min(MAX_PER_LINE);
        let Some(account) = self.open.get_mut(&client) else {
            return n;
        };
        if account.at_s.abs_diff(now_s) > WINDOW_S {
            self.open.remove(&client);
            return n;
        }
        let counts = &mut account.counts;
        let reported = counts.iter().copied().max().unwrap_or(0);
        for count in counts.iter_mut() {
            *count -= (*count).min(n);
        }
        if counts.iter().all(|&c| c == 0) {
            self.open.remove(&client);
        }
        n.saturating_sub(reported)
    }

    fn entry(&mut self, client: IpAddr, now_s: u64) -> &mut [u32; LAYERS] {
        if !self.open.contains_key(&client) {
            while self.open.len() >= LEDGER_CAPACITY {
                match self.order.pop_front() {
                    Some(old) => {
                        self.open.remove(&old);
                    }
                    None => break,
                }
            }
            self.order.push_back(client);
            if self.order.len() > 2 * LEDGER_CAPACITY {
                let open = &self.open;
                self.order.retain(|c| open.contains_key(c) || *c == client);
            }
        }
        let account = self.open.entry(client).or_default();
        if account.at_s.abs_diff(now_s) > WINDOW_S {
            account.counts = [0; LAYERS];
        }
        account.at_s = now_s;
        &mut account.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_same_failure_seen_by_three_layers_counts_once() {
        let mut l = Ledger::default();
        let a = ip("203.0.113.9");
        assert_eq!(l.report(a, Layer::Pam, 1, 0), 1);
        assert_eq!(l.report(a, Layer::AuthProcess, 1, 0), 0);
        assert_eq!(l.settle(a, 1, 0), 0);
        assert_eq!(
            l.report(a, Layer::AuthProcess, 1, 0),
            1,
            "a new session starts clean"
        );
        assert_eq!(l.report(a, Layer::Pam, 1, 0), 0);
        assert_eq!(l.report(a, Layer::Pam, 1, 0), 1);
        assert_eq!(
            l.settle(a, 3, 0),
            1,
            "the summary adds the failure nobody logged"
        );
        assert!(l.open.is_empty());
    }

    #[test]
    fn a_summary_alone_counts_all_its_failures() {
        let mut l = Ledger::default();
        assert_eq!(l.settle(ip("203.0.113.9"), 4, 0), 4);
        assert_eq!(l.settle(ip("203.0.113.9"), 1_000_000, 0), MAX_PER_LINE);
    }

    #[test]
    fn overlapping_sessions_of_one_client_are_not_counted_twice() {
        let mut l = Ledger::default();
        let a = ip("2001:db8::9");
        for _ in 0..6 {
            assert_eq!(l.report(a, Layer::AuthProcess, 1, 0), 1);
        }
        assert_eq!(l.settle(a, 3, 0), 0);
        assert_eq!(l.settle(a, 3, 0), 0);
        assert_eq!(
            l.settle(a, 3, 0),
            3,
            "the third session's failures were never reported"
        );
    }

    #[test]
    fn failures_older_than_the_window_belong_to_another_session() {
        let mut l = Ledger::default();
        let a = ip("203.0.113.9");
        assert_eq!(l.report(a, Layer::AuthProcess, 2, 1000), 2);
        assert_eq!(l.settle(a, 1, 1000 + WINDOW_S + 1), 1);
        assert_eq!(l.report(a, Layer::AuthProcess, 1, 5000), 1);
        assert_eq!(l.report(a, Layer::Pam, 1, 5000 + WINDOW_S + 1), 1);
    }

    #[test]
    fn the_ledger_stays_bounded() {
        let mut l = Ledger::default();
        for i in 0..(LEDGER_CAPACITY as u32 + 1000) {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0xCB00_7100 + i));
            l.report(addr, Layer::Server, 1, 0);
        }
        assert_eq!(l.open.len(), LEDGER_CAPACITY);
        assert!(l.order.len() <= 2 * LEDGER_CAPACITY + 1);
    }
}
