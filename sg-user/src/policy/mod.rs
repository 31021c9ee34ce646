//! Per-user sending limits inside the MTA (issue 15, in progress): the policy service's
//! decisions, answered from memory. This much is built: the buckets ([`bucket`]), Postfix's
//! policy delegation protocol ([`postfix`]) and the decisions ([`quota`]): per SASL user,
//! messages and recipients per unit of time with per-user and per-domain overrides, counted
//! once per message; per client address, its level's limit used as a message rate. Still to
//! come: the listener and its wiring into the daemon, the milter and Dovecot's authentication
//! policy front ends, and the user's level tightening its buckets.

pub mod bucket;
pub mod postfix;
pub mod quota;
