//! Where lines come from: log files (followed by [`Tailer`], woken by inotify) and journald
//! (through `journalctl --follow --output=json`). Each source runs in its own thread and sends
//! [`Line`]s, and how far it has read, down one bounded channel; when the channel is full the reader waits (the file or
//! the journal keeps the lines meanwhile, so nothing is lost).

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::SyncSender,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{
    parsers::Format,
    tail::{CatchUp, Position, Start, Tailer},
};

/// Where the daemon reads what the mail software says.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    File {
        path: PathBuf,
        format: Format,
    },
    Journald {
        units: Vec<String>,
        identifiers: Vec<String>,
        format: Format,
    },
}

/// One line for the parsers.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub format: Format,
    pub text: Text,
}

/// What a reader sends to the learning loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    Line(Line),
    /// The source was read up to here: every line it sent before is ahead of this in the
    /// channel. The learning loop saves it with the points those lines earned, so a restart
    /// resumes exactly after what the saved points include.
    Reached {
        source: String,
        at: ReadTo,
    },
    /// Another producer (the fleet) has input for the learning loop: stop waiting.
    Wake,
    /// An event the policy service saw itself (a Dovecot login report, a user's deferral).
    Event(crate::events::Event),
}

/// How far a source was read, as saved with the points snapshot.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadTo {
    File(Position),
    /// A journald cursor.
    Journal(String),
}

/// The key a source's position is saved under.
pub fn source_key(source: &Source) -> String {
    match source {
        Source::File { path, .. } => path.display().to_string(),
        Source::Journald {
            units, identifiers, ..
        } => format!(
            "journald:units={}:identifiers={}",
            units.join(","),
            identifiers.join(",")
        ),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    /// A whole log line, header included.
    Raw(String),
    /// A journal entry: the program (SYSLOG_IDENTIFIER) and message come apart.
    Journal {
        program: String,
        message: String,
        time_ns: Option<u64>,
    },
}

/// Read errors of every source (files that cannot be read, journalctl that cannot run), for
/// metrics.
pub static SOURCE_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Longest a file reader sleeps when inotify is unavailable or silent.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// The `journalctl` to run (tests point it at a stand-in).
pub const JOURNALCTL_ENV: &str = "SLOWGATE_JOURNALCTL";

/// Starts a reader thread per source. They stop soon after `stop` is set. Files that exist are
/// opened (at `start`, or where `resume` says the last run's saved points stopped) before this
/// returns, so a line written after it is never skipped.
pub fn spawn(
    sources: &[Source],
    start: Start,
    resume: &BTreeMap<String, ReadTo>,
    catch_up: CatchUp,
    tx: SyncSender<Reading>,
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    sources
        .iter()
        .cloned()
        .map(|source| {
            let (tx, stop) = (tx.clone(), stop.clone());
            let key = source_key(&source);
            let saved = resume.get(&key).cloned();
            let mut tailer = match &source {
                Source::File { path, .. } => {
                    let start = match saved {
                        Some(ReadTo::File(p)) => Start::Resume(p),
                        _ => start,
                    };
                    let mut tailer = Tailer::new(path, start).with_catch_up(catch_up);
                    let mut early = Vec::new();
                    // Opens the file; with Start::Beginning the lines are kept for the thread.
                    let _ = tailer.poll(&mut |l| early.push(l.to_vec()));
                    Some((tailer, early))
                }
                Source::Journald { .. } => None,
            };
            std::thread::spawn(move || match source {
                Source::File { path, format } => {
                    let (tailer, early) = tailer.take().expect("opened above");
                    for l in early {
                        let text = Text::Raw(String::from_utf8_lossy(&l).into_owned());
                        if tx.send(Reading::Line(Line { format, text })).is_err() {
                            return;
                        }
                    }
                    follow_file(&path, key, tailer, format, &tx, &stop)
                }
                Source::Journald {
                    units,
                    identifiers,
                    format,
                } => {
                    let cursor = match saved {
                        Some(ReadTo::Journal(c)) => Some(c),
                        _ => None,
                    };
                    follow_journal(&units, &identifiers, format, key, cursor, &tx, &stop)
                }
            })
        })
        .collect()
}

fn follow_file(
    path: &Path,
    key: String,
    mut tailer: Tailer,
    format: Format,
    tx: &SyncSender<Reading>,
    stop: &AtomicBool,
) {
    let mut wake = Inotify::watch_dir(path.parent().unwrap_or(Path::new("/")));
    let mut reported = false;
    let mut sent = None;
    // How far the lines handed down so far reach, when it moved: the learning loop saves it
    // with the points they earned. False when the learning loop is gone.
    let mut send_reached = |tailer: &Tailer| match tailer.position() {
        Some(at) if Some(at) != sent => {
            sent = Some(at);
            tx.send(Reading::Reached {
                source: key.clone(),
                at: ReadTo::File(at),
            })
            .is_ok()
        }
        _ => true,
    };
    while !stop.load(Ordering::Relaxed) {
        if !send_reached(&tailer) {
            return;
        }
        let mut closed = false;
        let result = tailer.poll(&mut |bytes| {
            let text = String::from_utf8_lossy(bytes).into_owned();
            closed |= tx
                .send(Reading::Line(Line {
                    format,
                    text: Text::Raw(text),
                }))
                .is_err();
        });
        if closed {
            return;
        }
        match result {
            Ok(()) => reported = false,
            Err(e) if !reported => {
                SOURCE_ERRORS.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("reading {}: {e} (retrying)", path.display());
                reported = true;
            }
            Err(_) => {
                SOURCE_ERRORS.fetch_add(1, Ordering::Relaxed);
            }
        }
        match &mut wake {
            Some(inotify) => inotify.wait(IDLE_POLL),
            None => std::thread::sleep(IDLE_POLL / 5),
        }
    }
    // Stopping: where the last lines end, so the final snapshot resumes right after them.
    send_reached(&tailer);
}

/// An inotify watch on a directory: wakes the file reader as soon as anything in it changes
/// (appends, and the renames and creations of a rotation).
struct Inotify {
    fd: std::os::fd::OwnedFd,
}

impl Inotify {
    fn watch_dir(dir: &Path) -> Option<Inotify> {
        use std::os::fd::FromRawFd;
        let dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: plain syscalls; the fd is owned right after creation.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            if fd < 0 {
                return None;
            }
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mask = libc::IN_MODIFY
                | libc::IN_CREATE
                | libc::IN_MOVED_TO
                | libc::IN_MOVED_FROM
                | libc::IN_DELETE
                | libc::IN_CLOSE_WRITE;
            use std::os::fd::AsRawFd;
            if libc::inotify_add_watch(fd.as_raw_fd(), dir.as_ptr(), mask) < 0 {
                return None;
            }
            Some(Inotify { fd })
        }
    }

    /// Waits until something changed in the directory, or `timeout`.
    fn wait(&mut self, timeout: Duration) {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the buffer is ours and its length is passed.
        unsafe {
            if libc::poll(&mut pfd, 1, timeout.as_millis() as i32) > 0 {
                let mut buf = [0u8; 4096];
                while libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) > 0 {}
            }
        }
    }
}

fn follow_journal(
    units: &[String],
    identifiers: &[String],
    format: Format,
    key: String,
    mut cursor: Option<String>,
    tx: &SyncSender<Reading>,
    stop: &AtomicBool,
) {
    let program: PathBuf = std::env::var_os(JOURNALCTL_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| "journalctl".into());
    // The journal's own position: after a restart (of the daemon or of journalctl), the
    // entries after the last one the saved points include, not only new ones.
    let mut sent = cursor.clone();
    while !stop.load(Ordering::Relaxed) {
        let mut cmd = Command::new(&program);
        cmd.args(["--follow", "--output=json", "--no-pager"]);
        match &cursor {
            Some(c) => cmd.arg(format!("--after-cursor={c}")),
            None => cmd.arg("--lines=0"),
        };
        for u in units {
            cmd.arg(format!("--unit={u}"));
        }
        for i in identifiers {
            cmd.arg(format!("--identifier={i}"));
        }
        // SAFETY: prctl is async-signal-safe; it makes journalctl die with the daemon, even a
        // daemon killed with SIGKILL.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                SOURCE_ERRORS.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "cannot run {} for journald sources: {e} (retrying in 5s)",
                    program.display()
                );
                sleep_unless(stop, Duration::from_secs(5));
                continue;
            }
        };
        let mut stdout = child.stdout.take().expect("piped stdout");
        // Bounded lines, as for files: an over-long entry is cut (and is then no JSON), and
        // the rest of it is never read as an entry of its own.
        let mut splitter = crate::tail::LineSplitter::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut gone = false;
        while !gone && !stop.load(Ordering::Relaxed) {
            // Wait for output at most IDLE_POLL, so that a cursor read before a quiet spell is
            // saved, and `stop` is seen, even while journalctl says nothing.
            let n = if readable(&stdout, IDLE_POLL) {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                }
            } else {
                0
            };
            splitter.push(&buf[..n], &mut |bytes| {
                if gone {
                    return;
                }
                let Some((text, at)) = std::str::from_utf8(bytes).ok().and_then(journal_record)
                else {
                    return;
                };
                if tx.send(Reading::Line(Line { format, text })).is_err() {
                    gone = true;
                }
                if at.is_some() {
                    cursor = at;
                }
            });
            if !gone && cursor.is_some() && cursor != sent {
                sent = cursor.clone();
                let at = ReadTo::Journal(cursor.clone().expect("checked"));
                gone = tx
                    .send(Reading::Reached {
                        source: key.clone(),
                        at,
                    })
                    .is_err();
            }
        }
        if gone {
            let _ = child.kill();
            return;
        }
        let _ = child.kill();
        let _ = child.wait();
        if !stop.load(Ordering::Relaxed) {
            tracing::warn!("journalctl ended; restarting it in 5s");
            sleep_unless(stop, Duration::from_secs(5));
        }
    }
}

/// True when `pipe` has something to read (or has ended) within `timeout`.
fn readable(pipe: &impl std::os::fd::AsRawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) > 0 }
}

fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let step = Duration::from_millis(100);
    let mut slept = Duration::ZERO;
    while slept < total && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}

/// A journal entry in `journalctl --output=json` form. MESSAGE is a string, or an array of
/// bytes when it is not valid UTF-8.
pub fn journal_entry(json: &str) -> Option<Text> {
    journal_record(json).map(|(text, _)| text)
}

/// The entry and its `__CURSOR` (the journal's position after it).
fn journal_record(json: &str) -> Option<(Text, Option<String>)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let cursor = v["__CURSOR"]
        .as_str()
        .filter(|c| c.len() <= 512 && !c.contains(['\n', '\0']))
        .map(str::to_string);
    let message = match &v["MESSAGE"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(bytes) => {
            let bytes: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().map(|b| b as u8))
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => return None,
    };
    let program = v["SYSLOG_IDENTIFIER"].as_str()?.to_string();
    let time_ns = v["__REALTIME_TIMESTAMP"]
        .as_str()
        .and_then(|t| t.parse::<u64>().ok())
        .and_then(|us| us.checked_mul(1000));
    Some((
        Text::Journal {
            program,
            message,
            time_ns,
        },
        cursor,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_entries_give_program_message_and_time() {
        let json = r#"{"__REALTIME_TIMESTAMP":"1795334020000000","SYSLOG_IDENTIFIER":"postfix/smtpd","MESSAGE":"connect from x[203.0.113.9]","_PID":"1"}"#;
        assert_eq!(
            journal_entry(json),
            Some(Text::Journal {
                program: "postfix/smtpd".into(),
                message: "connect from x[203.0.113.9]".into(),
                time_ns: Some(1_795_334_020_000_000_000),
            })
        );
        let bytes = r#"{"SYSLOG_IDENTIFIER":"dovecot","MESSAGE":[105,109,97,112,255]}"#;
        let Some(Text::Journal { message, .. }) = journal_entry(bytes) else {
            panic!()
        };
        assert_eq!(message, "imap\u{fffd}");
        assert_eq!(journal_entry("not json"), None);
        assert_eq!(journal_entry(r#"{"MESSAGE":"no identifier"}"#), None);
    }
}
