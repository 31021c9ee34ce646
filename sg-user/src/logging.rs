//! The daemon's log: `tracing` events to stderr, one line each: `slowgate: `, then `error: `,
//! `warning: ` or `debug: ` for those levels, then the message and any fields as `key=value`.
//! Under systemd (`$JOURNAL_STREAM` set) each line starts with its syslog priority (`<3>`,
//! `<4>`, `<6>`, `<7>`), so journald keeps the level (`journalctl -p warning -u slowgate`).
//!
//! Which events are written: `SLOWGATE_LOG` (or `RUST_LOG`) when set, else `[log] filter` in
//! the config, else `info`; the syntax is tracing's `EnvFilter` (`info,slowgate::policy=debug`).
//! Output stays bounded under attack: each place in the code writes at most
//! [`PER_SECOND`] lines a second; what it would have written beyond is counted and said in one
//! line the next time it writes.

use std::{
    collections::HashMap,
    fmt,
    sync::{Mutex, OnceLock},
    time::Instant,
};

use tracing::{Event, Level, Subscriber, callsite::Identifier};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    reload,
    util::SubscriberInitExt,
};

/// Lines one place in the code may write per second.
pub const PER_SECOND: u32 = 50;

type Reload = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

static FILTER: OnceLock<Reload> = OnceLock::new();

/// Per call site: the second it last wrote in, lines written in it, lines held back since.
type Budgets = HashMap<Identifier, (u64, u32, u64)>;

static BUDGET: Mutex<Option<Budgets>> = Mutex::new(None);

fn second() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

/// Whether an event of this call site may be written now.
fn within_budget(id: Identifier) -> bool {
    let mut budget = BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    let map = budget.get_or_insert_with(HashMap::new);
    let now = second();
    let entry = map.entry(id).or_insert((now, 0, 0));
    if entry.0 != now {
        entry.0 = now;
        entry.1 = 0;
    }
    if entry.1 >= PER_SECOND {
        entry.2 += 1;
        return false;
    }
    entry.1 += 1;
    true
}

/// Lines of this call site held back since it last wrote (and now said).
fn held_back(id: &Identifier) -> u64 {
    let mut budget = BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    budget
        .as_mut()
        .and_then(|m| m.get_mut(id))
        .map_or(0, |e| std::mem::take(&mut e.2))
}

/// The filter named by the environment, if any.
fn from_environment() -> Option<String> {
    ["SLOWGATE_LOG", "RUST_LOG"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

/// Installs the log for this process (once; later calls do nothing).
pub fn init() {
    let directives = from_environment().unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .event_format(Line { journald });
    if tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
}

/// Applies `[log] filter` from the config, unless the environment named one (it wins).
pub fn configure(directives: Option<&str>) -> anyhow::Result<()> {
    let (Some(directives), None) = (directives, from_environment()) else {
        return Ok(());
    };
    let filter = EnvFilter::try_new(directives)
        .map_err(|e| anyhow::anyhow!("[log] filter {directives:?}: {e}"))?;
    if let Some(handle) = FILTER.get() {
        handle.reload(filter)?;
    }
    Ok(())
}

/// Whether `directives` is a filter tracing understands (for `check-config`).
pub fn valid_filter(directives: &str) -> Result<(), String> {
    EnvFilter::try_new(directives)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One line per event (see the module documentation).
struct Line {
    journald: bool,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Over its budget: nothing is written (an empty line is no line).
        if !within_budget(event.metadata().callsite()) {
            return Ok(());
        }
        let level = *event.metadata().level();
        let (priority, word) = match level {
            Level::ERROR => ("<3>", "error: "),
            Level::WARN => ("<4>", "warning: "),
            Level::INFO => ("<6>", ""),
            Level::DEBUG | Level::TRACE => ("<7>", "debug: "),
        };
        let prefix = if self.journald { priority } else { "" };
        let skipped = held_back(&event.metadata().callsite());
        if skipped > 0 {
            writeln!(
                writer,
                "{prefix}slowgate: {word}({skipped} more lines like the next were not written: \
                 at most {PER_SECOND} a second)"
            )?;
        }
        write!(writer, "{prefix}slowgate: {word}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked_and_a_busy_call_site_is_held_to_its_budget() {
        assert!(valid_filter("info,slowgate::policy=debug").is_ok());
        assert!(valid_filter("info,[").is_err());
        // A call site of this test: its first PER_SECOND events pass within one second.
        let id = tracing::callsite::Identifier(&CALLSITE);
        let now = second();
        let passed = (0..PER_SECOND * 3)
            .filter(|_| within_budget(id.clone()))
            .count() as u32;
        if second() == now {
            assert_eq!(passed, PER_SECOND);
            assert_eq!(held_back(&id), u64::from(PER_SECOND * 2));
            assert_eq!(held_back(&id), 0, "said once");
        }
    }

    struct Site;
    impl tracing::callsite::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unimplemented!("not asked in this test")
        }
    }
    static CALLSITE: Site = Site;
}
