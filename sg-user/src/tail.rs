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
    /// Where a previous run stopped reading, when the path still names that file: the lines
    /// written while the daemon was down are read, none twice. A file that is not the one the
    /// position names (rotated while down) is new: read whole when at most
    /// [`MAX_BACKLOG`] long, else from its end.
    Resume(Position),
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
}

/// The most of a file written while the daemon was down that is read back at start.
pub const MAX_BACKLOG: u64 = 64 << 20;

pub struct Tailer {
    path: PathBuf,
    start: Start,
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
            open: None,
            lines: LineSplitter::default(),
            rotated: None,
        }
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
        Some(Position {
            dev: open.id.0,
            ino: open.id.1,
            offset: open.offset - held as u64,
            discarding,
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
            (false, Start::Resume(p))
                if (p.dev, p.ino) == identity(&meta) && p.offset <= meta.len() =>
            {
                self.lines.discarding = p.discarding;
                p.offset
            }
            (false, Start::Resume(_)) if meta.len() > MAX_BACKLOG => meta.len(),
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("sg-tail-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn poll(t: &mut Tailer) -> Vec<String> {
        let mut out = Vec::new();
        t.poll(&mut |l| out.push(String::from_utf8_lossy(l).into_owned()))
            .unwrap();
        out
    }

    #[test]
    fn starts_at_the_end_and_reads_appended_lines() {
        let d = Dir::new("end");
        let log = d.0.join("mail.log");
        append(&log, "old 1\nold 2\n");
        let mut t = Tailer::new(&log, Start::End);
        assert!(poll(&mut t).is_empty());
        append(&log, "new 1\nnew 2\n");
        assert_eq!(poll(&mut t), ["new 1", "new 2"]);
    }

    #[test]
    fn partial_lines_wait_for_their_newline() {
        let d = Dir::new("partial");
        let log = d.0.join("mail.log");
        let mut t = Tailer::new(&log, Start::Beginning);
        append(&log, "half a li");
        assert!(poll(&mut t).is_empty());
        append(&log, "ne\nnext");
        assert_eq!(poll(&mut t), ["half a line"]);
    }

    #[test]
    fn rename_and_create_loses_nothing_and_repeats_nothing() {
        let d = Dir::new("rename");
        let log = d.0.join("mail.log");
        append(&log, "");
        let mut t = Tailer::new(&log, Start::End);
        poll(&mut t);
        append(&log, "a\nb\n");
        // logrotate: lines written to the old file just before the rename are still read.
        std::fs::rename(&log, d.0.join("mail.log.1")).unwrap();
        append(&d.0.join("mail.log.1"), "c\n");
        append(&log, "d\n");
        assert_eq!(poll(&mut t), ["a", "b", "c", "d"]);
        append(&log, "e\n");
        assert_eq!(poll(&mut t), ["e"]);
    }

    #[test]
    fn lines_the_writer_sends_to_the_renamed_file_until_it_reopens_are_read() {
        let d = Dir::new("late");
        let log = d.0.join("mail.log");
        let old = d.0.join("mail.log.1");
        append(&log, "");
        let mut t = Tailer::new(&log, Start::End);
        poll(&mut t);
        std::fs::rename(&log, &old).unwrap();
        append(&log, "new 0\n");
        assert_eq!(poll(&mut t), ["new 0"]);
        // syslog has not been told yet: it goes on writing to the old file, interleaved with
        // polls, then part of a line, then reopens.
        let mut want = Vec::new();
        for i in 0..200 {
            append(&old, &format!("late {i}\n"));
            want.push(format!("late {i}"));
            if i % 50 == 49 {
                assert_eq!(poll(&mut t), want);
                want.clear();
            }
        }
        append(&old, "late partial");
        append(&log, "new 1\n");
        assert_eq!(poll(&mut t), ["new 1"]);
        append(&old, " line\n");
        assert_eq!(poll(&mut t), ["late partial line"]);
    }

    #[test]
    fn a_resumed_tailer_reads_what_was_written_while_it_was_away_and_nothing_twice() {
        let d = Dir::new("resume");
        let log = d.0.join("mail.log");
        append(&log, "old\n");
        let mut t = Tailer::new(&log, Start::End);
        poll(&mut t);
        append(&log, "a\nhalf");
        assert_eq!(poll(&mut t), ["a"]);
        let saved = t.position().unwrap();
        drop(t);
        // Down: the half line is finished and more lines come.
        append(&log, " line\nb\n");
        let mut t = Tailer::new(&log, Start::Resume(saved));
        assert_eq!(poll(&mut t), ["half line", "b"]);
        // A position of another file (rotated while down): the new file is read whole.
        std::fs::rename(&log, d.0.join("mail.log.1")).unwrap();
        append(&log, "new\n");
        let mut t = Tailer::new(&log, Start::Resume(saved));
        assert_eq!(poll(&mut t), ["new"]);
        // Resumed inside the discarded rest of a cut line: the rest stays discarded.
        let long = d.0.join("long.log");
        append(&long, &"x".repeat(MAX_LINE + 10));
        let mut t = Tailer::new(&long, Start::Beginning);
        assert_eq!(poll(&mut t).len(), 1);
        let saved = t.position().unwrap();
        assert!(saved.discarding);
        drop(t);
        append(&long, " rest of the cut line\nnext\n");
        let mut t = Tailer::new(&long, Start::Resume(saved));
        assert_eq!(poll(&mut t), ["next"]);
    }

    #[test]
    fn copytruncate_starts_again_at_the_beginning() {
        let d = Dir::new("truncate");
        let log = d.0.join("mail.log");
        append(&log, "x\ny\n");
        let mut t = Tailer::new(&log, Start::Beginning);
        assert_eq!(poll(&mut t), ["x", "y"]);
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log)
            .unwrap();
        append(&log, "z\n");
        assert_eq!(poll(&mut t), ["z"]);
    }

    #[test]
    fn delete_then_recreate_and_a_missing_file_is_waited_for() {
        let d = Dir::new("delete");
        let log = d.0.join("mail.log");
        let mut t = Tailer::new(&log, Start::End);
        assert!(poll(&mut t).is_empty(), "missing: nothing, no error");
        append(&log, "first\n");
        assert_eq!(
            poll(&mut t),
            ["first"],
            "a file that appears later is read whole"
        );
        std::fs::remove_file(&log).unwrap();
        assert!(poll(&mut t).is_empty());
        append(&log, "second\n");
        assert_eq!(poll(&mut t), ["second"]);
    }

    #[test]
    fn a_symlinked_path_follows_its_target_switch() {
        let d = Dir::new("symlink");
        let (a, b, link) = (
            d.0.join("a.log"),
            d.0.join("b.log"),
            d.0.join("current.log"),
        );
        append(&a, "");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let mut t = Tailer::new(&link, Start::End);
        poll(&mut t);
        append(&a, "in a\n");
        append(&b, "in b\n");
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&b, &link).unwrap();
        assert_eq!(poll(&mut t), ["in a", "in b"]);
    }

    #[test]
    fn an_endless_line_is_cut_and_counted() {
        let d = Dir::new("long");
        let log = d.0.join("mail.log");
        let mut t = Tailer::new(&log, Start::Beginning);
        append(&log, &"x".repeat(MAX_LINE + 10));
        let lines = poll(&mut t);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(t.overlong(), 1);
        // The rest of that line, however it arrives, never becomes a line of its own.
        append(&log, " connect from unknown[198.51.100.7]\nnext\n");
        assert_eq!(poll(&mut t), ["next"]);
        assert_eq!(t.overlong(), 1);
    }

    #[test]
    fn the_splitter_cuts_every_overlong_line_at_the_bound_whatever_the_chunks() {
        for chunk in [
            1,
            7,
            4096,
            MAX_LINE - 1,
            MAX_LINE,
            MAX_LINE + 1,
            3 * MAX_LINE,
        ] {
            let mut input = Vec::new();
            input.extend_from_slice(b"short\n");
            input.extend(std::iter::repeat_n(b'a', MAX_LINE));
            input.extend_from_slice(b"\n"); // exactly the bound: whole
            input.extend(std::iter::repeat_n(b'b', 2 * MAX_LINE + 5));
            input.extend_from_slice(b"TAIL\nafter\n");
            let mut s = LineSplitter::default();
            let mut got: Vec<Vec<u8>> = Vec::new();
            for piece in input.chunks(chunk) {
                s.push(piece, &mut |l| got.push(l.to_vec()));
            }
            assert_eq!(got.len(), 4, "chunk {chunk}");
            assert_eq!(got[0], b"short");
            assert_eq!(got[1].len(), MAX_LINE);
            assert!(got[2].len() == MAX_LINE && got[2].iter().all(|&b| b == b'b'));
            assert_eq!(got[3], b"after", "chunk {chunk}");
            assert_eq!(s.overlong, 1);
        }
    }
}
