//! Where lines come from: log files (followed by [`Tailer`], woken by inotify) and journald
//! (through `journalctl --follow --output=json`). Each source runs in its own thread and sends
//! [`Line`]s down one bounded channel; when the channel is full the reader waits (the file or
//! the journal keeps the lines meanwhile, so nothing is lost).

use std::{
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
    tail::{Position, Start, Tailer},
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

/// How often a file source's read position is saved (while it changes).
const POSITION_EVERY: Duration = Duration::from_secs(1);

/// The `journalctl` to run (tests point it at a stand-in).
pub const JOURNALCTL_ENV: &str = "SLOWGATE_JOURNALCTL";

/// Where each file source's read position is kept, so that a restarted daemon reads the lines
/// written while it was down (and none twice): one small file per source, rewritten (write,
/// rename) at most once a second while the source is read. Losing the last write costs at most
/// a second of lines read twice.
#[derive(Clone)]
pub struct Positions {
    dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedCursor {
    key: String,
    cursor: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPosition {
    path: PathBuf,
    #[serde(flatten)]
    position: Position,
}

impl Positions {
    pub fn new(dir: PathBuf) -> Positions {
        Positions { dir }
    }

    fn file_of(&self, path: &Path) -> PathBuf {
        // FNV-1a of the path: a stable file name per source.
        let hash = path
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        self.dir.join(format!("{hash:016x}.json"))
    }

    /// The position saved for `path`, if any (a damaged file counts as none).
    pub fn load(&self, path: &Path) -> Option<Position> {
        let text = std::fs::read(self.file_of(path)).ok()?;
        let saved: SavedPosition = serde_json::from_slice(&text).ok()?;
        (saved.path == path).then_some(saved.position)
    }

    /// The journald cursor saved under `key` (one per journald source).
    pub fn load_cursor(&self, key: &str) -> Option<String> {
        let text = std::fs::read(self.file_of(Path::new(key))).ok()?;
        let saved: SavedCursor = serde_json::from_slice(&text).ok()?;
        (saved.key == key).then_some(saved.cursor)
    }

    pub fn save_cursor(&self, key: &str, cursor: &str) -> std::io::Result<()> {
        let saved = SavedCursor {
            key: key.to_string(),
            cursor: cursor.to_string(),
        };
        self.write(
            Path::new(key),
            &serde_json::to_vec(&saved).map_err(std::io::Error::other)?,
        )
    }

    pub fn save(&self, path: &Path, position: Position) -> std::io::Result<()> {
        let saved = SavedPosition {
            path: path.to_path_buf(),
            position,
        };
        self.write(
            path,
            &serde_json::to_vec(&saved).map_err(std::io::Error::other)?,
        )
    }

    /// Writes a position file whole (write, rename).
    fn write(&self, key: &Path, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let file = self.file_of(key);
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &file)
    }
}

/// When a reader saves where it is: only when that moved since the last save, and at most
/// once a POSITION_EVERY (or at once, when the reader stops).
struct Saves<T> {
    saved: Option<T>,
    last: std::time::Instant,
}

impl<T: Clone + PartialEq> Saves<T> {
    fn new(saved: Option<T>) -> Saves<T> {
        Saves {
            saved,
            last: std::time::Instant::now(),
        }
    }

    /// `current`, marked as saved, when it is to be saved now; else None.
    fn due(&mut self, current: Option<T>, now: bool) -> Option<T> {
        if current.is_none()
            || current == self.saved
            || !(now || self.last.elapsed() >= POSITION_EVERY)
        {
            return None;
        }
        self.last = std::time::Instant::now();
        self.saved = current.clone();
        current
    }
}

/// Starts a reader thread per source. They stop soon after `stop` is set. Files that exist are
/// opened (at `start`, or where `positions` says the last run stopped) before this returns, so
/// a line written after it is never skipped.
pub fn spawn(
    sources: &[Source],
    start: Start,
    positions: Option<Positions>,
    tx: SyncSender<Line>,
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    sources
        .iter()
        .cloned()
        .map(|source| {
            let (tx, stop, positions) = (tx.clone(), stop.clone(), positions.clone());
            let mut tailer = match &source {
                Source::File { path, .. } => {
                    let resume = positions.as_ref().and_then(|p| p.load(path));
                    let mut tailer = Tailer::new(path, resume.map_or(start, Start::Resume));
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
                        if tx.send(Line { format, text }).is_err() {
                            return;
                        }
                    }
                    follow_file(&path, tailer, format, &tx, &stop, positions.as_ref())
                }
                Source::Journald {
                    units,
                    identifiers,
                    format,
                } => follow_journal(&units, &identifiers, format, &tx, &stop, positions.as_ref()),
            })
        })
        .collect()
}

fn follow_file(
    path: &Path,
    mut tailer: Tailer,
    format: Format,
    tx: &SyncSender<Line>,
    stop: &AtomicBool,
    positions: Option<&Positions>,
) {
    let mut wake = Inotify::watch_dir(path.parent().unwrap_or(Path::new("/")));
    let mut reported = false;
    let mut saves = Saves::new(None);
    while !stop.load(Ordering::Relaxed) {
        // The position of what the previous turns handed to the parsers (sent down the channel:
        // the learning loop has them or will).
        if let Some(positions) = positions
            && let Some(p) = saves.due(tailer.position(), false)
            && positions.save(path, p).is_err()
        {
            SOURCE_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        let mut closed = false;
        let result = tailer.poll(&mut |bytes| {
            let text = String::from_utf8_lossy(bytes).into_owned();
            closed |= tx
                .send(Line {
                    format,
                    text: Text::Raw(text),
                })
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
    // Stopping: the last position, so a restart neither skips nor repeats.
    if let Some(positions) = positions
        && let Some(p) = saves.due(tailer.position(), true)
    {
        let _ = positions.save(path, p);
    }
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
    tx: &SyncSender<Line>,
    stop: &AtomicBool,
    positions: Option<&Positions>,
) {
    let program: PathBuf = std::env::var_os(JOURNALCTL_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| "journalctl".into());
    // The journal's own position: after a restart (of the daemon or of journalctl), the
    // entries since the last one read, not only new ones.
    let key = format!(
        "journald:units={}:identifiers={}",
        units.join(","),
        identifiers.join(",")
    );
    let mut cursor = positions.and_then(|p| p.load_cursor(&key));
    let mut saves = Saves::new(cursor.clone());
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
                if tx.send(Line { format, text }).is_err() {
                    gone = true;
                }
                if at.is_some() {
                    cursor = at;
                }
            });
            if let Some(p) = positions
                && let Some(c) = saves.due(cursor.clone(), false)
                && p.save_cursor(&key, &c).is_err()
            {
                SOURCE_ERRORS.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(p) = positions
            && let Some(c) = saves.due(cursor.clone(), true)
        {
            let _ = p.save_cursor(&key, &c);
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
