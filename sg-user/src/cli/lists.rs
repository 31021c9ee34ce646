//! `slowgate allow|deny|limit ...`: operators' entries, through the daemon or on the pins.

use super::*;

use anyhow::Context;

use crate::{
    config::check_burst,
    control::protocol::{Request as Control, Rows, Said},
    domain::{Limit, Rate},
    enforcer::{ListKind, Maps},
};

/// Sends a list change to the running daemon (its control socket), or, when none runs,
/// makes it here on the pinned maps. Either way it is journaled before it is reported done.
pub(super) fn change_lists(cli: &Cli, change: crate::lists::Change) -> anyhow::Result<()> {
    match cli.live_control() {
        Some(socket) => {
            let said: Said = crate::control::call(&socket, &Control::Lists { change })?;
            println!("{}", said.said);
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

pub(super) fn list_rows(cli: &Cli, list: &str, json_out: bool) -> anyhow::Result<()> {
    let rows: Rows = match cli.live_control() {
        Some(socket) => crate::control::call(
            &socket,
            &Control::Rows {
                list: list.to_string(),
            },
        )?,
        None => crate::lists::rows(&Maps::open_pinned(&cli.pin_dir()?)?, &cli.store()?, list)?,
    };
    if json_out {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        crate::lists::print(&rows);
    }
    Ok(())
}

pub(super) fn list_command(cli: &Cli, kind: ListKind, cmd: &ListCommand) -> anyhow::Result<()> {
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
        ListCommand::Import {
            file,
            replace,
            comment,
        } => import(cli, kind, file, *replace, comment.clone()),
    }
}

/// `allow|deny import FILE`: the file is read and checked here, then sent to the daemon (its
/// entries after the request line) or, with no daemon, applied on the pinned maps.
fn import(
    cli: &Cli,
    kind: ListKind,
    file: &std::path::Path,
    replace: bool,
    comment: Option<String>,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let networks =
        crate::lists::parse_import(&text).with_context(|| format!("{}", file.display()))?;
    let import = crate::lists::Import {
        kind,
        networks,
        replace,
        comment,
    };
    let said = match cli.live_control() {
        Some(socket) => {
            let body: String = import.networks.iter().map(|n| format!("{n}\n")).collect();
            let request = Control::Import {
                list: kind.name().to_string(),
                replace,
                comment: import.comment.clone(),
                bytes: body.len(),
            };
            let said: Said = crate::control::call_with_body(&socket, &request, body.as_bytes())?;
            said.said
        }
        None => {
            let mut maps = Maps::open_pinned(&cli.pin_dir()?)?;
            crate::lists::import(&mut maps, &cli.store()?, &import)?
        }
    };
    println!("{said}");
    Ok(())
}

pub(super) fn limit_command(cli: &Cli, cmd: &LimitCommand) -> anyhow::Result<()> {
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
