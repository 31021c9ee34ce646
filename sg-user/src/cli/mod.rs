//! The command line: `execute` dispatches each command; the definitions are in `args.rs`,
//! the list and limit commands in `lists.rs`, `status` in `status.rs`.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;

mod args;
mod lists;
mod status;
#[cfg(test)]
mod tests;

use self::status::status;
pub use args::*;
use lists::{limit_command, list_command};

use crate::{
    config::Config,
    control::{
        call,
        protocol::{self, Request as Control},
    },
    domain::{Network, parse_duration},
    enforcer::{self, ListKind},
};

/// Runs a command; the result is what the process prints.
pub fn execute(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Run { foreground: _ } => {
            let mut config = Config::load(&cli.config_path())?;
            if let Some(dir) = &cli.pin_dir {
                config.pin_dir = dir.clone();
            }
            crate::logging::configure(config.log_filter.as_deref())?;
            crate::daemon::run(&config)
        }
        Command::CheckConfig => {
            let path = cli.config_path();
            Config::load(&path)?;
            println!("{}: ok", path.display());
            Ok(())
        }
        Command::Detach => {
            let dir = cli.pin_dir()?;
            let removed = enforcer::detach(&dir)?;
            println!(
                "detached: removed {} pins under {}",
                removed.len(),
                dir.display()
            );
            Ok(())
        }
        Command::Allow(cmd) => list_command(cli, ListKind::Allow, cmd),
        Command::Deny(cmd) => list_command(cli, ListKind::Deny, cmd),
        Command::Limit(cmd) => limit_command(cli, cmd),
        Command::Status { json } => status(cli, *json),
        Command::Parse { format, file } => parse(*format, file),
        Command::Top { n, json } => {
            let rows: protocol::Top = call(&cli.control_socket(), &Control::Top { n: *n })?;
            if *json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                println!(
                    "{:<28} {:>5} {:>9} {:>7}  recent events",
                    "sender", "level", "points", "country"
                );
                for row in &rows {
                    println!(
                        "{:<28} {:>5} {:>9.1} {:>7}  {}{}",
                        row.sender,
                        row.level,
                        row.points,
                        row.country.as_deref().unwrap_or("-"),
                        events_text(&row.recent_events),
                        row.buckets
                            .as_ref()
                            .map_or(String::new(), |b| format!("; {}", buckets_text(b)))
                    );
                }
            }
            Ok(())
        }
        Command::Show { who, json } => {
            let shown: protocol::Shown =
                call(&cli.control_socket(), &Control::Show { who: who.clone() })?;
            if *json {
                println!("{}", serde_json::to_string(&shown)?);
                return Ok(());
            }
            println!("sender:  {}", shown.sender);
            match &shown.tracked {
                Some(t) => {
                    println!(
                        "level:   {} ({})",
                        t.level,
                        t.limit.as_deref().unwrap_or("no limit")
                    );
                    println!("points:  {:.1}", t.points);
                    if let Some(c) = &t.country {
                        println!("country: {c}");
                    }
                    println!("recent:  {}", events_text(&t.recent_events));
                }
                None => println!("not tracked (no points)"),
            }
            if let Some(b) = &shown.buckets {
                println!("buckets: {}", buckets_text(b));
            }
            if !shown.fleet.is_empty() {
                let by: Vec<String> = shown
                    .fleet
                    .iter()
                    .map(|(host, p)| format!("{host} {p:.1}"))
                    .collect();
                println!("fleet:   {}", by.join(", "));
            }
            println!("level changes:");
            for c in &shown.changes {
                println!(
                    "  {} level {} -> {} ({:.1} points; {})",
                    crate::domain::format_time(c.unix_time * 1_000_000_000),
                    c.from,
                    c.to,
                    c.points,
                    events_text(&c.events)
                );
            }
            println!("kernel entries that match:");
            for e in &shown.kernel_entries {
                println!("  {e}");
            }
            Ok(())
        }
        Command::Release { who } => {
            let released: protocol::Released = call(
                &cli.control_socket(),
                &Control::Release { who: who.clone() },
            )?;
            println!(
                "released {} (was at level {})",
                released.released, released.level_was
            );
            Ok(())
        }
        Command::Feed { command } => feed(cli, command),
        Command::Reload => {
            let reloaded: protocol::Reloaded = call(&cli.control_socket(), &Control::Reload)?;
            println!("reloaded {}", reloaded.reloaded);
            if !reloaded.needs_restart.is_empty() {
                println!(
                    "changes that need a restart: {}",
                    reloaded.needs_restart.join(", ")
                );
            }
            Ok(())
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "slowgate", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("write man pages into {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
            Ok(())
        }
        Command::Replay {
            format,
            logs,
            history,
        } => {
            let config = Config::load(&cli.config_path())?;
            let report = crate::replay::run(&config, *format, logs)?;
            crate::replay::print(&report, &mut std::io::stdout().lock())?;
            if let Some(dir) = history {
                crate::history::History::open(dir)?.write(&report.history)?;
            }
            Ok(())
        }
        Command::Report { since, html, top } => {
            let since = parse_duration(since).context("--since")?;
            let from = crate::domain::unix_now().saturating_sub(since.as_secs());
            let records = crate::history::read(&cli.state_dir_path()?, from)?;
            if records.is_empty() {
                anyhow::bail!(
                    "no history since {} (the daemon writes it under its state_dir)",
                    crate::domain::format_time(from * 1_000_000_000)
                );
            }
            let report = crate::report::build(&records);
            print!("{}", crate::report::text(&report, *top));
            if let Some(path) = html {
                std::fs::write(path, crate::report::html(&report, *top))
                    .with_context(|| format!("write {}", path.display()))?;
                println!("\nHTML report written to {}", path.display());
            }
            Ok(())
        }
    }
}

/// `[("unknown_recipient", 5), ...]` as `unknown_recipient x5, ...`.
fn events_text(events: &[(String, u32)]) -> String {
    let parts: Vec<String> = events.iter().map(|(k, n)| format!("{k} x{n}")).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn ttl(text: &Option<String>) -> anyhow::Result<Option<Duration>> {
    text.as_deref()
        .map(|t| parse_duration(t).context("--ttl"))
        .transpose()
}

fn network(text: &str) -> anyhow::Result<Network> {
    Ok(text.parse::<Network>()?)
}

/// `slowgate parse`: one JSON line per event, then a summary on stderr. Lines that are not
/// UTF-8 are read lossily; nothing stops the run.
fn parse(format: crate::parsers::Format, file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};

    use crate::parsers::{Outcome, Parsers};
    let mut input: Box<dyn BufRead> = if file == std::path::Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut parsers = Parsers::default();
    let (mut lines, mut with_events, mut not_understood, mut events) = (0u64, 0u64, 0u64, 0u64);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf).context("read the log")? == 0 {
            break;
        }
        lines += 1;
        let line = String::from_utf8_lossy(&buf);
        match parsers.parse_timed(format, &line).outcome {
            Outcome::NotUnderstood => not_understood += 1,
            Outcome::Understood(found) => {
                with_events += u64::from(!found.is_empty());
                for event in found {
                    events += 1;
                    let row = json!({"line": lines, "event": event});
                    writeln!(out, "{row}")?;
                }
            }
        }
    }
    out.flush()?;
    eprintln!(
        "lines read: {lines}, lines with events: {with_events}, events: {events}, \
         lines not understood: {not_understood}"
    );
    Ok(())
}

/// `slowgate feed list|update NAME`.
fn feed(cli: &Cli, command: &args::FeedCommand) -> anyhow::Result<()> {
    match command {
        args::FeedCommand::List { json } => {
            let all: Vec<crate::feeds::Status> = call(&cli.control_socket(), &Control::Feeds)?;
            if *json {
                println!("{}", serde_json::to_string(&all)?);
                return Ok(());
            }
            let now = crate::domain::unix_now();
            let ago = |t: u64| match t {
                0 => "never".to_string(),
                t => format!("{}s ago", now.saturating_sub(t)),
            };
            println!(
                "{:<20} {:<14} {:<22} {:>8} {:>12} {:>8}  last error",
                "feed", "format", "action", "entries", "last success", "refused"
            );
            for f in &all {
                println!(
                    "{:<20} {:<14} {:<22} {:>8} {:>12} {:>8}  {}",
                    f.name,
                    f.format,
                    f.action,
                    if f.enforced {
                        f.entries.to_string()
                    } else {
                        "-".into()
                    },
                    ago(f.last_success_unix),
                    f.refused,
                    f.last_error
                        .as_ref()
                        .map_or("-".into(), |e| format!("{e} ({})", ago(f.last_error_unix)))
                );
            }
            Ok(())
        }
        args::FeedCommand::Update { name } => {
            let said: protocol::Said = call(
                &cli.control_socket(),
                &Control::FeedUpdate { name: name.clone() },
            )?;
            println!("feed {name}: {}", said.said);
            Ok(())
        }
    }
}

/// A user's buckets in the policy service, in a few words.
fn buckets_text(b: &crate::policy::quota::UserBuckets) -> String {
    format!(
        "messages {:.1} of {} ({:.0}/h), recipients {:.1} of {} ({:.0}/h)",
        b.messages,
        b.messages_capacity,
        b.messages_per_hour,
        b.recipients,
        b.recipients_capacity,
        b.recipients_per_hour
    )
}
