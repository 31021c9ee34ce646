//! slowgate's userspace: config, the enforcer (XDP maps), the daemon and the CLI.
//! `main.rs` is a thin shell over this library, so tests and benches call the same code.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod domain;
pub mod drops;
pub mod enforcer;
pub mod engine;
pub mod events;
pub mod history;
pub mod learn;
pub mod lists;
pub mod metrics;
pub mod parsers;
pub mod replay;
pub mod report;
pub mod sources;
pub mod store;
pub mod tail;
