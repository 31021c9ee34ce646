//! slowgate's userspace. `main.rs` is a thin shell over this library, so tests and benches
//! call the same code.
//!
//! # Layout
//!
//! The flow: sources -> parsers -> events -> engine -> decisions -> enforcer -> maps -> XDP.
//! Operators' entries (the CLI, the control socket, the config's lists) are decisions too, and
//! the enforcer is the one writer of the kernel's lists and limits.
//!
//! Layers, each importing only from the ones before it (`tests/layers.rs` checks it):
//!
//! 1. `domain`: durations, rates, limits, networks, senders, clocks; no I/O. `logging`: the
//!    daemon's log lines (`tracing` to stderr).
//! 2. `events`, `parsers`: a log line to typed events.
//! 3. `tail`, `sources`: where lines come from (files followed across rotations, journald).
//!    `dnsbl`, `feeds`: what DNSBL zones and reputation feeds say about networks. `policy`:
//!    per-user sending limits answered to the MTA.
//! 4. `engine`: events and a caller's clock to level changes; sans-IO.
//! 5. `decisions`: what producers of limits ask for, and the journal form of operators' changes.
//! 6. `enforcer`: decisions to the kernel's maps; the only module that imports aya. `fleet`:
//!    points and operators' entries shared with other hosts through Redis.
//! 7. `config`: the config file to runtime settings.
//! 8. `store`, `history`: what survives a restart (journal, points snapshot, history).
//! 9. `lists`, `drops`: operators' entries as commands see them; drop reports.
//! 10. `control`: the control socket, its typed protocol, and what it asks the learning loop.
//! 11. `learn`: the learning loop, which owns the engine and the enforcer while the daemon runs.
//! 12. `metrics`: the Prometheus endpoint.
//! 13. `daemon`, `replay`, `report`: `slowgate run`, `replay`, `report`.
//! 14. `cli`: the command line.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod decisions;
pub mod dnsbl;
pub mod domain;
pub mod drops;
pub mod enforcer;
pub mod engine;
pub mod events;
pub mod feeds;
pub mod fleet;
pub mod history;
pub mod learn;
pub mod lists;
pub mod logging;
pub mod metrics;
pub mod parsers;
pub mod policy;
pub mod replay;
pub mod report;
pub mod sources;
pub mod store;
pub mod tail;
