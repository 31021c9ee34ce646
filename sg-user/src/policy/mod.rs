//! Per-user sending limits inside the MTA (issue 15, in progress): the policy service's
//! decisions, answered from memory. This much is built: the buckets ([`bucket`]), Postfix's
//! policy delegation protocol ([`postfix`]) and the decisions ([`quota`]): per SASL user,
//! messages and recipients per unit of time with per-user and per-domain overrides, counted
//! once per message; per client address, its level's limit used as a message rate. The
//! daemon's listener is `daemon/policy.rs`. Still to come: the milter and Dovecot's
//! authentication policy front ends, and the user's level tightening its buckets.

pub mod bucket;
pub mod postfix;
pub mod quota;

use std::sync::atomic::{AtomicU64, Ordering};

/// Where the Postfix policy service listens.
#[derive(Clone, Debug, PartialEq)]
pub enum Listen {
    Unix(std::path::PathBuf),
    Tcp(std::net::SocketAddr),
}

/// `[policy]` and `[users]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub listen: Listen,
    pub quotas: quota::Settings,
    /// How long a connection may wait between requests, and within one.
    pub idle: std::time::Duration,
}

/// Answers and refusals, for metrics: DUNNO, deferred, malformed requests.
pub static ANSWERED_DUNNO: AtomicU64 = AtomicU64::new(0);
pub static ANSWERED_DEFER: AtomicU64 = AtomicU64::new(0);
pub static MALFORMED: AtomicU64 = AtomicU64::new(0);
/// Time spent answering, in nanoseconds (sum), and the slowest answer.
pub static ANSWER_NS: AtomicU64 = AtomicU64::new(0);
pub static SLOWEST_NS: AtomicU64 = AtomicU64::new(0);

/// Counts one answer that took `ns`.
pub fn answered(defer: bool, ns: u64) {
    if defer {
        ANSWERED_DEFER.fetch_add(1, Ordering::Relaxed);
    } else {
        ANSWERED_DUNNO.fetch_add(1, Ordering::Relaxed);
    }
    ANSWER_NS.fetch_add(ns, Ordering::Relaxed);
    SLOWEST_NS.fetch_max(ns, Ordering::Relaxed);
}
