//! The command line: definitions (clap) and the commands that work on the pinned maps.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use sg_common::{V4_MAPPED_BITS, counter, reason, service};

use crate::{
    config::{self, Config, check_burst},
    domain::{Limit, Network, Rate, parse_duration},
    enforcer::{self, ListKind, Maps},
};

#[derive(Debug, Parser)]
#[command(
    name = "slowgate",
    version,
    about = "Slows abusive mail senders at the NIC (XDP)"
)]
pub struct Cli {
    /// Where the daemon pins its maps (default: the config's pin_dir, else /sys/fs/bpf/slowgate).
    #[arg(long, global = true, env = "SLOWGATE_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Config file (default: /etc/slowgate/slowgate.toml when it exists): where the pins,
    /// the state directory and the control socket are, unless given here.
    #[arg(long, short, global = true, env = "SLOWGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The daemon's control socket (default: the config's control.socket, else
    /// /run/slowgate/control.sock).
    #[arg(long, global = true, env = "SLOWGATE_CONTROL")]
    pub control: Option<PathBuf>,
    /// Where entries added here are kept across reboots (default: the config's state_dir,
    /// else /var/lib/slowgate).
    #[arg(long, global = true, env = "SLOWGATE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and attach the XDP program and run the daemon. It always stays in the foreground
    /// and logs to stderr (systemd's journal, or any supervisor's log); under systemd it
    /// reports readiness and watchdog pings (Type=notify).
    Run {
        /// Accepted for supervisors that pass it; the daemon never forks.
        #[arg(long)]
        foreground: bool,
    },
    /// Check a config file without touching the kernel.
    CheckConfig,
    /// Detach the program and remove every pin: enforcement stops.
    Detach,
    /// Sources that always pass (beats deny and limits).
    #[command(subcommand)]
    Allow(ListCommand),
    /// Sources whose new connections are always dropped.
    #[command(subcommand)]
    Deny(ListCommand),
    /// Connection-rate limits for one address or one prefix.
    #[command(subcommand)]
    Limit(LimitCommand),
    /// Print the events of each log line as JSON lines, then a summary.
    Parse {
        /// Log format; `auto` picks per line from the syslog program name.
        #[arg(long, value_enum, default_value = "auto")]
        format: crate::parsers::Format,
        /// Log file, or `-` for standard input.
        #[arg(default_value = "-")]
        file: PathBuf,
    },
    /// Run the points engine over existing logs on their own timestamps (no kernel): every
    /// level change, then who would have been limited, when, how long, and at what cost.
    Replay {
        /// Log format; `auto` picks per line.
        #[arg(long, value_enum, default_value = "auto")]
        format: crate::parsers::Format,
        /// Log files, each in time order; their events are merged by time.
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        /// Also write what happened, on the logs' clock, to this state directory's history,
        /// for `slowgate report --state-dir DIR`.
        #[arg(long)]
        history: Option<PathBuf>,
    },
    /// The traffic report: top limited senders and networks, drops per hour, events per
    /// kind, countries; --html writes a page with SVG charts.
    Report {
        /// How far back (90m, 24h, 7d).
        #[arg(long, default_value = "24h")]
        since: String,
        /// Also write the report as one self-contained HTML file.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Rows in the senders table.
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// Senders by points: level, points, country, recent events (from the running daemon).
    Top {
        #[arg(short, default_value_t = 20)]
        n: usize,
        #[arg(long)]
        json: bool,
    },
    /// One sender: points, level, history of level changes, kernel entries that match.
    /// WHO is an address, a prefix or network (CIDR), or user:NAME.
    Show {
        who: String,
        #[arg(long)]
        json: bool,
    },
    /// Forget a sender's points and level (its engine-set limit goes too).
    Release { who: String },
    /// Re-read the config file (as SIGHUP does); a bad file is refused and the old one stays.
    Reload,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write man pages for every command into DIR (`cargo xtask man` calls this).
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Attached interfaces, counters, map fill.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ListCommand {
    /// Add an address or network (CIDR).
    Add {
        network: String,
        /// Expire after this long (90s, 1h, 7d); default never.
        #[arg(long)]
        ttl: Option<String>,
        /// Why (kept with the entry, shown by `list`).
        #[arg(long)]
        comment: Option<String>,
    },
    /// Remove an address or network, exactly as added.
    Del { network: String },
    /// Show the entries.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LimitCommand {
    /// Limit new connections of one address, or of a whole prefix (IPv4 /24, IPv6 /64 by default).
    Set(LimitSet),
    /// Remove a limit.
    Del { network: String },
    /// Show the limits.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct LimitSet {
    pub network: String,
    /// Sustained rate: 1/s, 30/min, 100/h.
    #[arg(long, required_unless_present = "block", conflicts_with = "block")]
    pub rate: Option<String>,
    /// Connections allowed at once.
    #[arg(long, required_unless_present = "block", conflicts_with = "block")]
    pub burst: Option<u32>,
    /// Drop every new connection instead.
    #[arg(long)]
    pub block: bool,
    /// Expire after this long (90s, 1h, 7d); default never.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Why (kept with the entry, shown by `list`).
    #[arg(long)]
    pub comment: Option<String>,
}

impl Cli {
    /// The config the CLI works with: --config, else the installed one when it exists (so an
    /// entry is journaled where the daemon restores it from), else none (built-in defaults).
    /// A config that exists but does not load is an error, never silently replaced.
    pub fn config(&self) -> anyhow::Result<Option<Config>> {
        self.config_or(Path::new(config::DEFAULT_CONFIG_PATH))
    }

    fn config_or(&self, installed: &Path) -> anyhow::Result<Option<Config>> {
        match &self.config {
            Some(path) => Config::load(path).map(Some),
            None if installed.exists() => Config::load(installed).map(Some),
            None => Ok(None),
        }
    }

    /// The pin directory: --pin-dir, else the config's, else the default.
    pub fn pin_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.pin_dir {
            return Ok(dir.clone());
        }
        Ok(self
            .config()?
            .map_or_else(|| config::DEFAULT_PIN_DIR.into(), |c| c.pin_dir))
    }

    /// The state directory: --state-dir, else the config's, else the default.
    pub fn state_dir_path(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.state_dir {
            return Ok(dir.clone());
        }
        Ok(self
            .config()?
            .map_or_else(|| crate::store::DEFAULT_STATE_DIR.into(), |c| c.state_dir))
    }

    pub fn store(&self) -> anyhow::Result<crate::store::Store> {
        crate::store::Store::open(&self.state_dir_path()?)
    }

    /// The control socket of a running daemon, if one answers there.
    pub fn live_control(&self) -> Option<PathBuf> {
        let path = self.control_socket();
        std::os::unix::net::UnixStream::connect(&path).ok()?;
        Some(path)
    }

    /// The control socket: --control, else the config's, else the default.
    pub fn control_socket(&self) -> PathBuf {
        if let Some(path) = &self.control {
            return path.clone();
        }
        match self.config() {
            Ok(Some(config)) => config.control_socket,
            _ => config::DEFAULT_CONTROL_SOCKET.into(),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| config::DEFAULT_CONFIG_PATH.into())
    }
}

/// Runs a command; the result is what the process prints.
pub fn execute(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Run { foreground: _ } => {
            let mut config = Config::load(&cli.config_path())?;
            if let Some(dir) = &cli.pin_dir {
                config.pin_dir = dir.clone();
            }
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
            let result =
                crate::control::call(&cli.control_socket(), json!({"command": "top", "n": n}))?;
            if *json {
                println!("{result}");
            } else {
                println!(
                    "{:<28} {:>5} {:>9} {:>7}  recent events",
                    "sender", "level", "points", "country"
                );
                for row in result.as_array().into_iter().flatten() {
                    println!(
                        "{:<28} {:>5} {:>9.1} {:>7}  {}",
                        row["sender"].as_str().unwrap_or(""),
                        row["level"],
                        row["points"].as_f64().unwrap_or(0.0),
                        row["country"].as_str().unwrap_or("-"),
                        events_text(&row["recent_events"])
                    );
                }
            }
            Ok(())
        }
        Command::Show { who, json } => {
            let result = crate::control::call(
                &cli.control_socket(),
                json!({"command": "show", "who": who}),
            )?;
            if *json {
                println!("{result}");
                return Ok(());
            }
            println!("sender:  {}", result["sender"].as_str().unwrap_or(""));
            match result["tracked"].as_object() {
                Some(t) => {
                    println!(
                        "level:   {} ({})",
                        t["level"],
                        t["limit"].as_str().unwrap_or("no limit")
                    );
                    println!("points:  {:.1}", t["points"].as_f64().unwrap_or(0.0));
                    if let Some(c) = t["country"].as_str() {
                        println!("country: {c}");
                    }
                    println!("recent:  {}", events_text(&t["recent_events"]));
                }
                None => println!("not tracked (no points)"),
            }
            println!("level changes:");
            for c in result["changes"].as_array().into_iter().flatten() {
                println!(
                    "  {} level {} -> {} ({:.1} points; {})",
                    crate::domain::format_time(
                        c["unix_time"].as_u64().unwrap_or(0) * 1_000_000_000
                    ),
                    c["from"],
                    c["to"],
                    c["points"].as_f64().unwrap_or(0.0),
                    events_text(&c["events"])
                );
            }
            println!("kernel entries that match:");
            for e in result["kernel_entries"].as_array().into_iter().flatten() {
                println!("  {}", e.as_str().unwrap_or(""));
            }
            Ok(())
        }
        Command::Release { who } => {
            let result = crate::control::call(
                &cli.control_socket(),
                json!({"command": "release", "who": who}),
            )?;
            println!(
                "released {} (was at level {})",
                result["released"].as_str().unwrap_or(who),
                result["level_was"]
            );
            Ok(())
        }
        Command::Reload => {
            let result = crate::control::call(&cli.control_socket(), json!({"command": "reload"}))?;
            println!(
                "reloaded {}",
                result["reloaded"].as_str().unwrap_or("the config")
            );
            if let Some(r) = result["needs_restart"].as_array().filter(|r| !r.is_empty()) {
                let names: Vec<&str> = r.iter().filter_map(|v| v.as_str()).collect();
                println!("changes that need a restart: {}", names.join(", "));
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

/// `[["unknown_recipient", 5], ...]` as `unknown_recipient x5, ...`.
fn events_text(events: &serde_json::Value) -> String {
    let parts: Vec<String> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some(format!("{} x{}", e[0].as_str()?, e[1])))
        .collect();
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

/// Sends a list change to the running daemon (its control socket), or, when none runs,
/// makes it here on the pinned maps. Either way it is journaled before it is reported done.
fn change_lists(cli: &Cli, change: crate::lists::Change) -> anyhow::Result<()> {
    match cli.live_control() {
        Some(socket) => {
            let result = crate::control::call(
                &socket,
                json!({"command": "lists", "change": crate::lists::to_json(&change)}),
            )?;
            println!("{}", result["said"].as_str().unwrap_or("done"));
        }
        None => {
            let mut maps = Maps::open_pinned(&cli.pin_dir()?)?;
            println!(
                "{}",
                crate::lists::apply(&mut maps, &cli.store()?, &change)?
            );
        }
    }
    Ok(())
}

fn list_rows(cli: &Cli, list: &str, json_out: bool) -> anyhow::Result<()> {
    let rows = match cli.live_control() {
        Some(socket) => crate::control::call(&socket, json!({"command": "rows", "list": list}))?,
        None => crate::lists::rows(&Maps::open_pinned(&cli.pin_dir()?)?, &cli.store()?, list)?,
    };
    if json_out {
        println!("{rows}");
    } else {
        crate::lists::print(&rows);
    }
    Ok(())
}

fn list_command(cli: &Cli, kind: ListKind, cmd: &ListCommand) -> anyhow::Result<()> {
    use crate::lists::Change;
    match cmd {
        ListCommand::Add {
            network: n,
            ttl: t,
            comment,
        } => change_lists(
            cli,
            Change::Add {
                kind,
                network: network(n)?,
                ttl: ttl(t)?,
                comment: comment.clone(),
            },
        ),
        ListCommand::Del { network: n } => change_lists(
            cli,
            Change::Del {
                kind,
                network: network(n)?,
            },
        ),
        ListCommand::List { json } => list_rows(cli, kind.name(), *json),
    }
}

fn limit_command(cli: &Cli, cmd: &LimitCommand) -> anyhow::Result<()> {
    use crate::lists::Change;
    match cmd {
        LimitCommand::Set(set) => {
            let limit = match (&set.rate, set.burst) {
                (Some(rate), Some(burst)) => {
                    check_burst("--burst", burst)?;
                    Limit::Rate {
                        rate: rate.parse::<Rate>().context("--rate")?,
                        burst,
                    }
                }
                _ => Limit::Block,
            };
            change_lists(
                cli,
                Change::LimitSet {
                    network: network(&set.network)?,
                    limit,
                    ttl: ttl(&set.ttl)?,
                    comment: set.comment.clone(),
                },
            )
        }
        LimitCommand::Del { network: n } => change_lists(
            cli,
            Change::LimitDel {
                network: network(n)?,
            },
        ),
        LimitCommand::List { json } => list_rows(cli, "limit", *json),
    }
}

fn status(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let dir = cli.pin_dir()?;
    let maps = Maps::open_pinned(&dir)?;
    let config = maps.read_config()?;
    let counters = maps.counters()?;
    let attachments = maps.attachments()?;
    let ports = maps.protected_ports()?;
    let fill = maps.fill();
    let interfaces: Vec<(String, &str)> = attachments
        .iter()
        .map(|a| {
            let end = a.name.iter().position(|&b| b == 0).unwrap_or(16);
            (
                String::from_utf8_lossy(&a.name[..end]).into_owned(),
                sg_common::mode::NAMES
                    .get(a.mode as usize)
                    .copied()
                    .unwrap_or("?"),
            )
        })
        .collect();
    let mut named: Vec<(String, u64)> = [
        ("packets", counter::PACKETS),
        ("passed", counter::PASSED),
        ("dropped", counter::DROPPED),
        ("parse_errors", counter::PARSE_ERROR),
        ("opaque_judged_by_source", counter::OPAQUE),
        ("sources_verified", counter::VERIFIED),
        ("verified_over_ceiling", counter::VERIFIED_OVER_CEILING),
        ("bucket_contended", counter::BUCKET_CONTENDED),
        ("first_contacts", counter::FIRST_CONTACT),
        ("new_connections", counter::NEW_CONN),
        ("allowed_by_list", counter::ALLOWED),
        ("verdicts_worked_out", counter::VERDICT_WORKED_OUT),
        ("source_slots_replaced", counter::SOURCE_SLOT_REPLACED),
        ("prefix_slots_replaced", counter::PREFIX_SLOT_REPLACED),
        ("drop_events_lost", counter::EVENTS_LOST),
    ]
    .iter()
    .map(|&(name, c)| (name.to_string(), counters[c as usize]))
    .collect();
    for (i, name) in reason::NAMES.iter().enumerate() {
        named.push((
            format!("dropped_{name}"),
            counters[counter::DROP_REASON as usize + i],
        ));
    }
    for (i, name) in service::NAMES.iter().enumerate().skip(1) {
        named.push((
            format!("new_connections_{name}"),
            counters[counter::SERVICE_NEW_CONN as usize + i],
        ));
        named.push((
            format!("dropped_{name}"),
            counters[counter::SERVICE_DROPPED as usize + i],
        ));
    }
    let ceiling = |b: sg_common::Bucket| {
        if b.interval_ns == 0 {
            "off".to_string()
        } else {
            let rate = Rate {
                interval: Duration::from_nanos(b.interval_ns),
            };
            format!("{rate} burst {}", b.burst)
        }
    };
    if json {
        let value = json!({
            "pin_dir": dir,
            "interfaces": interfaces.iter().map(|(n, m)| json!({"name": n, "mode": m})).collect::<Vec<_>>(),
            "ports": ports.iter().map(|(p, s)| json!({"port": p, "service": service::NAMES[*s as usize]})).collect::<Vec<_>>(),
            "prefix_ipv4": config.prefix_len_v4.saturating_sub(V4_MAPPED_BITS),
            "prefix_ipv6": config.prefix_len_v6,
            "ceiling_source": ceiling(config.source_ceiling),
            "ceiling_prefix": ceiling(config.prefix_ceiling),
            "counters": named.iter().map(|(n, v)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "maps": fill.iter().map(|(n, used, max)| json!({"name": n, "entries": used, "capacity": max})).collect::<Vec<_>>(),
        });
        println!("{value}");
        return Ok(());
    }
    println!("pins:        {}", dir.display());
    let ifaces: Vec<String> = interfaces
        .iter()
        .map(|(n, m)| format!("{n} ({m})"))
        .collect();
    println!("interfaces:  {}", ifaces.join(", "));
    let ports: Vec<String> = ports
        .iter()
        .map(|(p, s)| format!("{p}/{}", service::NAMES[*s as usize]))
        .collect();
    println!("ports:       {}", ports.join(" "));
    println!(
        "prefixes:    IPv4 /{}, IPv6 /{}",
        config.prefix_len_v4.saturating_sub(V4_MAPPED_BITS),
        config.prefix_len_v6
    );
    println!(
        "ceilings:    per source {}, per prefix {}",
        ceiling(config.source_ceiling),
        ceiling(config.prefix_ceiling)
    );
    println!("counters:");
    for (name, value) in &named {
        println!("  {name:<28} {value}");
    }
    println!("maps:");
    for (name, used, max) in fill {
        println!("  {name:<12} {used:>9} / {max}");
    }
    Ok(())
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
        match parsers.parse(format, &line) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_config_the_installed_config_decides_where_entries_are_kept() {
        let dir = std::env::temp_dir().join(format!("sg-cli-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let installed = dir.join("slowgate.toml");
        let cli = Cli::try_parse_from(["slowgate", "deny", "list"]).unwrap();
        // Nothing installed: built-in defaults.
        assert!(cli.config_or(&installed).unwrap().is_none());
        std::fs::write(
            &installed,
            "interfaces = [\"eth0\"]\nstate_dir = \"/srv/slowgate-state\"\n",
        )
        .unwrap();
        let config = cli
            .config_or(&installed)
            .unwrap()
            .expect("the installed one");
        assert_eq!(config.state_dir, Path::new("/srv/slowgate-state"));
        // A broken installed config is an error, not a silent fallback to the defaults.
        std::fs::write(&installed, "interfaces = 3\n").unwrap();
        assert!(cli.config_or(&installed).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
