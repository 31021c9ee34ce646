//! The command line as clap reads it: the commands, their arguments and options.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config};

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
    /// Reputation feeds (`[[feeds]]`): their state, or fetch one now.
    Feed {
        #[command(subcommand)]
        command: FeedCommand,
    },
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
pub enum FeedCommand {
    /// Each feed: entries enforced, last success, last error, refusals.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Fetch a feed now and apply it (the guards apply as on schedule).
    Update { name: String },
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
    /// Add every address or network (CIDR) of a file, one a line (`#` starts a comment); the
    /// file is applied whole or not at all, and journaled like single entries.
    Import {
        file: std::path::PathBuf,
        /// Make the list exactly the file's entries (the others are removed).
        #[arg(long)]
        replace: bool,
        /// Why (kept with each entry).
        #[arg(long)]
        comment: Option<String>,
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

    pub(super) fn config_or(&self, installed: &Path) -> anyhow::Result<Option<Config>> {
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
            .map_or_else(|| crate::config::DEFAULT_STATE_DIR.into(), |c| c.state_dir))
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
