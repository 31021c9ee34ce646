//! Resuming after a restart: which file a saved position names (identity and fingerprint), the
//! rest of a file rotated away meanwhile, and the bounds on how much of the backlog is read.

use std::{
    fs::File,
    io::{self, Seek, SeekFrom},
};

use super::{FINGERPRINT_BYTES, LineSplitter, Open, Position, Rotated, Tailer, identity};

impl Tailer {
    /// Where to start reading a backlog `[from, len)` of `file` so that at most the catch-up's
    /// lines (less `newer` ones already taken from a newer file) and none older than its age
    /// are read; reports what is skipped. Returns that start and how many lines it leaves.
    pub(super) fn catch_up_from(
        &self,
        file: &File,
        from: u64,
        len: u64,
        newer: u64,
    ) -> io::Result<(u64, u64)> {
        let lines = count_lines(file, from, len)?;
        let budget = self.catch_up.max_lines.saturating_sub(newer);
        let mut start = from;
        if lines > budget {
            start = skip_lines(file, from, len, lines - budget)?;
        }
        let cutoff = crate::domain::unix_now().saturating_sub(self.catch_up.max_age_s);
        let (start, old) = skip_older(file, start, len, cutoff)?;
        let skipped = lines.saturating_sub(budget) + old;
        if skipped > 0 {
            tracing::warn!(
                "{}: {skipped} of {lines} lines written while slowgate was down skipped \
                 (max_catch_up: {} lines, {} s)",
                self.path.display(),
                self.catch_up.max_lines,
                self.catch_up.max_age_s
            );
        } else if lines > 0 {
            tracing::info!(
                "{}: catching up {lines} lines written while slowgate was down",
                self.path.display()
            );
        }
        Ok((start, lines.saturating_sub(skipped)))
    }

    /// The file a resume position was taken in, when the path no longer names it: renamed
    /// away (`mail.log.1`, found by its inode), or copied away before the path was truncated
    /// (copytruncate: a file of the same name family whose bytes before the position are the
    /// ones the position's fingerprint covers). Its rest is read first, before the path's file.
    pub(super) fn resume_rotated(&mut self, p: &Position, newer: u64) -> io::Result<()> {
        let Some(found) = self.rotated_away(p) else {
            return Ok(());
        };
        let (file, meta) = found;
        let (offset, _) = self.catch_up_from(&file, p.offset, meta.len(), newer)?;
        let mut open = Open {
            file,
            id: identity(&meta),
            offset,
        };
        open.file.seek(SeekFrom::Start(offset))?;
        let lines = LineSplitter {
            discarding: p.discarding && offset == p.offset,
            ..LineSplitter::default()
        };
        self.rotated = Some(Rotated {
            open,
            lines,
            last_growth: std::time::Instant::now(),
        });
        Ok(())
    }

    fn rotated_away(&self, p: &Position) -> Option<(File, std::fs::Metadata)> {
        let dir = self.path.parent()?;
        let name = self.path.file_name()?.to_string_lossy().into_owned();
        let mut copies = Vec::new();
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            if identity(&meta) == (p.dev, p.ino) {
                let file = File::open(entry.path()).ok()?;
                if same_file(&file, &meta, p) {
                    return Some((file, meta));
                }
                continue;
            }
            // A copy: `mail.log.1`, `mail.log-20261123`, never a compressed one.
            let other = entry.file_name().to_string_lossy().into_owned();
            let family = other.starts_with(&name)
                && other != name
                && ![".gz", ".bz2", ".xz", ".zst"]
                    .iter()
                    .any(|c| other.ends_with(c));
            if family && p.fingerprint != 0 && meta.len() >= p.offset {
                copies.push(entry.path());
            }
        }
        // The most recent copy whose bytes before the position match.
        copies.sort();
        copies.into_iter().find_map(|path| {
            let file = File::open(&path).ok()?;
            let meta = file.metadata().ok()?;
            (fingerprint(&file, p.offset) == p.fingerprint).then_some((file, meta))
        })
    }
}

/// Whether `file` is the one `p` was taken in: same identity, long enough, and the same bytes
/// before the position (a position saved before fingerprints existed has 0: identity only).
pub(super) fn same_file(file: &File, meta: &std::fs::Metadata, p: &Position) -> bool {
    (p.dev, p.ino) == identity(meta)
        && p.offset <= meta.len()
        && (p.fingerprint == 0 || fingerprint(file, p.offset) == p.fingerprint)
}

/// FNV-1a of the (up to) FINGERPRINT_BYTES before `offset`; 0 stands for "unknown", so a
/// real hash of 0 is moved to 1.
pub(super) fn fingerprint(file: &File, offset: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let from = offset.saturating_sub(FINGERPRINT_BYTES);
    let mut buf = [0u8; FINGERPRINT_BYTES as usize];
    let want = (offset - from) as usize;
    let Ok(n) = file.read_at(&mut buf[..want], from) else {
        return 0;
    };
    let hash = buf[..n].iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash.max(1)
}

/// Newlines in `[from, to)` of `file`.
fn count_lines(file: &File, from: u64, to: u64) -> io::Result<u64> {
    let mut count = 0;
    scan(file, from, to, &mut |chunk, _| {
        count += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        true
    })?;
    Ok(count)
}

/// The offset just after the `n`th newline from `from`.
fn skip_lines(file: &File, from: u64, to: u64, n: u64) -> io::Result<u64> {
    let (mut left, mut at) = (n, from);
    scan(file, from, to, &mut |chunk, chunk_at| {
        for (i, &b) in chunk.iter().enumerate() {
            if b == b'\n' {
                left -= 1;
                if left == 0 {
                    at = chunk_at + i as u64 + 1;
                    return false;
                }
            }
        }
        true
    })?;
    Ok(at)
}

/// Skips the lines from `from` whose header time is before `cutoff` (Unix seconds); stops at
/// the first line that is newer or has no time it can read. Returns (offset, lines skipped).
fn skip_older(file: &File, from: u64, to: u64, cutoff: u64) -> io::Result<(u64, u64)> {
    /// Bytes of a line's start kept to read its header.
    const HEADER: usize = 256;
    let (mut at, mut skipped) = (from, 0);
    let (mut head, mut len) = (Vec::with_capacity(HEADER), 0u64);
    scan(file, from, to, &mut |chunk, _| {
        for &b in chunk {
            len += 1;
            if b != b'\n' {
                if head.len() < HEADER {
                    head.push(b);
                }
                continue;
            }
            let time = std::str::from_utf8(&head)
                .ok()
                .and_then(crate::parsers::syslog::split)
                .and_then(|h| h.time_ns());
            match time {
                Some(ns) if ns / 1_000_000_000 < cutoff => {
                    skipped += 1;
                    at += len;
                    head.clear();
                    len = 0;
                }
                _ => return false,
            }
        }
        true
    })?;
    Ok((at, skipped))
}

/// Reads `[from, to)` of `file` in chunks, handing each with its offset to `f` until it says
/// stop.
fn scan(file: &File, from: u64, to: u64, f: &mut dyn FnMut(&[u8], u64) -> bool) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = from;
    while at < to {
        let want = ((to - at) as usize).min(buf.len());
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 || !f(&buf[..n], at) {
            break;
        }
        at += n as u64;
    }
    Ok(())
}
