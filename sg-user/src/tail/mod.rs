//! Following a log file across every way logs rotate: rename + create, copytruncate,
//! delete + recreate, symlinked paths. No line is lost or read twice across a rotation, and a
//! partial last line is held until its newline arrives.
//!
//! The tailer keeps the open file and its (device, inode). On each poll it reads what was
//! appended; then, if the path now names another file, it drains the old one to its end and
//! switches to the new one from its start. If the open file shrank (copytruncate), it starts
//! again from the beginning.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Longest line held while waiting for its newline; a longer one is cut there (and counted),
/// so a file without newlines cannot grow memory without bound. What follows the cut, up to
/// the next newline, is discarded: it is the end of the same line, and the text an attacker
/// chose, never a line of its own.
pub const MAX_LINE: usize = 64 * 1024;

/// Lines cut at MAX_LINE, by every reader of the process (files and journald), for metrics.
pub static OVERLONG_LINES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes, holding a partial last line
/// until its newline arrives. Files and journalctl's output both go through it.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    /// After a cut: skipping the rest of that line.
    discarding: bool,
    /// Lines cut at MAX_LINE by this splitter.
    pub overlong: u64,
}

impl LineSplitter {
    /// Hands every complete line in `bytes` (after what came before) to `line`.
    pub fn push(&mut self, mut bytes: &[u8], line: &mut dyn FnMut(&[u8])) {
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    if self.discarding {
                        self.discarding = false;
                    } else {
                        self.take(&bytes[..nl], true, line);
                    }
                    bytes = &bytes[nl + 1..];
                }
                None => {
                    if !self.discarding {
                        self.take(bytes, false, line);
                    }
                    break;
                }
            }
        }
    }

    fn take(&mut self, piece: &[u8], complete: bool, line: &mut dyn FnMut(&[u8])) {
        if complete && self.partial.is_empty() && piece.len() <= MAX_LINE {
            line(piece);
            return;
        }
        let room = MAX_LINE - self.partial.len();
        if piece.len() > room {
            self.partial.extend_from_slice(&piece[..room]);
            self.overlong += 1;
            OVERLONG_LINES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            line(&self.partial);
            self.partial.clear();
            // Without its newline yet, the rest of this line is still to come: skip it.
            self.discarding = !complete;
            return;
        }
        self.partial.extend_from_slice(piece);
        if complete {
            line(&self.partial);
            self.partial.clear();
        }
    }

    /// The partial line as a line of its own (its file ended: rotated away).
    pub fn flush(&mut self, line: &mut dyn FnMut(&[u8])) {
        if !self.partial.is_empty() {
            line(&self.partial);
            self.partial.clear();
        }
        self.discarding = false;
    }

    /// Bytes held of a line whose newline has not come yet, and whether the splitter is
    /// discarding the rest of a cut line.
    pub fn pending(&self) -> (usize, bool) {
        (self.partial.len(), self.discarding)
    }

    /// Forgets the partial line (the file was truncated in place).
    pub fn clear(&mut self) {
        self.partial.clear();
        self.discarding = false;
    }
}

/// Where to start in a file that already exists when the tailer first opens it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// At its end: old lines do not punish anyone again (the daemon's default).
    End,
    /// At its beginning (replays, tests).
    Beginning,
    /// Where a previous run's saved points stopped: the lines written while the daemon was
    /// down are read, none twice, within [`CatchUp`]. When the path names another file now
    /// (rotated while down), the rest of the old file is read first (found by its device and
    /// inode in the same directory), then the new one from its start.
    Resume(Position),
}

/// How much of what was written while the daemon was down is read at start (the newest is
/// kept): lines beyond `max_lines`, or older than `max_age_s` by their header, are skipped and
/// reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatchUp {
    pub max_lines: u64,
    pub max_age_s: u64,
}

impl Default for CatchUp {
    fn default() -> Self {
        CatchUp {
            max_lines: 1_000_000,
            max_age_s: 3600,
        }
    }
}

/// How far a tailer has read a file: its identity and the offset of the first byte not yet
/// handed out as part of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
    /// The offset is inside the discarded rest of a line cut at MAX_LINE.
    #[serde(default)]
    pub discarding: bool,
    /// A hash of the bytes just before `offset` (the end of the last line read): a file that
    /// has the same identity but other content there (inode reused, rewritten) is not resumed.
    #[serde(default)]
    pub fingerprint: u64,
}

/// Bytes before a position that its fingerprint covers.
const FINGERPRINT_BYTES: u64 = 64;

pub struct Tailer {
    path: PathBuf,
    start: Start,
    catch_up: CatchUp,
    open: Option<Open>,
    lines: LineSplitter,
    /// The file the path named before a rename + create rotation: the writer may go on
    /// appending to it until it reopens the path (syslog's HUP), so it is read until it has
    /// been idle for [`ROTATED_IDLE`].
    rotated: Option<Rotated>,
}

struct Rotated {
    open: Open,
    lines: LineSplitter,
    last_growth: std::time::Instant,
}

/// How long a rotated-away file is still read after the last line appended to it.
pub const ROTATED_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

struct Open {
    file: File,
    id: (u64, u64),
    offset: u64,
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

impl Tailer {
    pub fn new(path: impl Into<PathBuf>, start: Start) -> Tailer {
        Tailer {
            path: path.into(),
            start,
            catch_up: CatchUp::default(),
            open: None,
            lines: LineSplitter::default(),
            rotated: None,
        }
    }

    pub fn with_catch_up(mut self, catch_up: CatchUp) -> Tailer {
        self.catch_up = catch_up;
        self
    }

    /// Lines this tailer cut at MAX_LINE.
    pub fn overlong(&self) -> u64 {
        self.lines.overlong
    }

    /// How far the file the path names has been read (not counting a partial line held), to
    /// resume there after a restart; None before the file exists.
    pub fn position(&self) -> Option<Position> {
        let open = self.open.as_ref()?;
        let (held, discarding) = self.lines.pending();
        let offset = open.offset - held as u64;
        Some(Position {
            dev: open.id.0,
            ino: open.id.1,
            offset,
            discarding,
            fingerprint: fingerprint(&open.file, offset),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every complete line appended since the last poll and hands each to `line`
    /// (without its newline). A missing file is waited for, not an error.
    pub fn poll(&mut self, line: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        if self.open.is_none() && !self.reopen(false)? {
            return Ok(());
        }
        self.read_rotated(line);
        if let Some(open) = self.open.as_mut() {
            read_from(open, &mut self.lines, line)?;
        }
        // Has the path moved on to another file (rename + create, delete + recreate)?
        let current = match std::fs::metadata(&self.path) {
            Ok(meta) => Some(identity(&meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let open_id = self.open.as_ref().map(|o| o.id);
        if let Some(id) = current
            && Some(id) != open_id
        {
            // Keep reading the old file: lines the writer still sends there before it reopens
            // the path are not lost. (An older rotated file is done with.)
            if let Some(mut done) = self.rotated.take() {
                done.lines.flush(line);
            }
            if let Some(open) = self.open.take() {
                self.rotated = Some(Rotated {
                    open,
                    lines: std::mem::take(&mut self.lines),
                    last_growth: std::time::Instant::now(),
                });
            }
            if self.reopen(true)?
                && let Some(open) = self.open.as_mut()
            {
                read_from(open, &mut self.lines, line)?;
            }
        }
        Ok(())
    }

    /// Reads what was appended to the rotated-away file; lets it go once idle.
    fn read_rotated(&mut self, line: &mut dyn FnMut(&[u8])) {
        let Some(r) = self.rotated.as_mut() else {
            return;
        };
        match read_from(&mut r.open, &mut r.lines, line) {
            Ok(0) if r.last_growth.elapsed() >= ROTATED_IDLE => {}
            Ok(0) => return,
            Ok(_) => {
                r.last_growth = std::time::Instant::now();
                return;
            }
            Err(_) => {}
        }
        // Idle (or unreadable): its partial last line is complete now.
        if let Some(mut done) = self.rotated.take() {
            done.lines.flush(line);
        }
    }

    /// Opens the path; `rotated` files are read from their start.
    fn reopen(&mut self, rotated: bool) -> io::Result<bool> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // When it appears, it is new: read it whole.
                self.start = Start::Beginning;
                self.open = None;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let offset = match (rotated, self.start) {
            (false, Start::End) => meta.len(),
            (false, Start::Resume(p)) if same_file(&file, &meta, &p) => {
                self.lines.discarding = p.discarding;
                self.catch_up_from(&file, p.offset, meta.len(), 0)?.0
            }
            (false, Start::Resume(p)) => {
                // Rotated while down: the new file whole (within the bounds), and first the
                // rest of the old one, if it is still there.
                let (from, newer) = self.catch_up_from(&file, 0, meta.len(), 0)?;
                self.resume_rotated(&p, newer)?;
                from
            }
            _ => 0,
        };
        // Files that appear after the first look are new: read them whole.
        self.start = Start::Beginning;
        let mut open = Open {
            file,
            id: identity(&meta),
            offset,
        };
        open.file.seek(SeekFrom::Start(offset))?;
        self.open = Some(open);
        Ok(true)
    }
}

/// Reads everything appended to `open` since the last read into `lines`; the bytes read.
fn read_from(
    open: &mut Open,
    lines: &mut LineSplitter,
    line: &mut dyn FnMut(&[u8]),
) -> io::Result<u64> {
    let len = open.file.metadata()?.len();
    if len < open.offset {
        // copytruncate: the file was emptied in place; its new content starts at 0.
        open.offset = 0;
        open.file.seek(SeekFrom::Start(0))?;
        lines.clear();
    }
    let mut buf = [0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = open.file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        open.offset += n as u64;
        total += n as u64;
        lines.push(&buf[..n], line);
    }
    Ok(total)
}

mod catch_up;
#[cfg(test)]
mod tests;

use catch_up::{fingerprint, same_file};
