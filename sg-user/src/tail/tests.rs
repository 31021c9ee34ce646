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
    // Rotated while down: the rest of the old file (found by its inode), then the new one.
    std::fs::rename(&log, d.0.join("mail.log.1")).unwrap();
    append(&log, "new\n");
    let mut t = Tailer::new(&log, Start::Resume(saved));
    assert_eq!(poll(&mut t), ["half line", "b", "new"]);
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
fn catch_up_keeps_the_newest_lines_and_skips_what_is_too_old() {
    let d = Dir::new("catchup");
    let log = d.0.join("mail.log");
    append(&log, "");
    let mut t = Tailer::new(&log, Start::End);
    poll(&mut t);
    let saved = t.position().unwrap();
    drop(t);
    let lines: String = (0..10).map(|i| format!("line {i}\n")).collect();
    append(&log, &lines);
    let bounded = CatchUp {
        max_lines: 3,
        max_age_s: 3600,
    };
    let mut t = Tailer::new(&log, Start::Resume(saved)).with_catch_up(bounded);
    assert_eq!(poll(&mut t), ["line 7", "line 8", "line 9"]);
    // By age: lines stamped two hours ago are skipped, the recent ones read.
    let log = d.0.join("aged.log");
    append(&log, "");
    let mut t = Tailer::new(&log, Start::End);
    poll(&mut t);
    let saved = t.position().unwrap();
    drop(t);
    let stamp = |ago: u64| {
        let ns = (crate::domain::unix_now() - ago) * 1_000_000_000;
        format!("{}+00:00", crate::domain::format_time(ns).replace(' ', "T"))
    };
    append(
        &log,
        &format!(
            "{} mx postfix/smtpd[1]: old\n{} mx postfix/smtpd[1]: recent\n",
            stamp(7200),
            stamp(60)
        ),
    );
    let mut t = Tailer::new(&log, Start::Resume(saved));
    assert_eq!(poll(&mut t).len(), 1);
}

#[test]
fn a_file_with_the_same_inode_but_other_content_is_not_resumed() {
    let d = Dir::new("fingerprint");
    let log = d.0.join("mail.log");
    append(&log, "first run line\n");
    let mut t = Tailer::new(&log, Start::Beginning);
    poll(&mut t);
    let saved = t.position().unwrap();
    drop(t);
    // Rewritten in place with other content of the same length and more.
    std::fs::write(&log, "other content!\nnext\n").unwrap();
    let mut t = Tailer::new(&log, Start::Resume(saved));
    assert_eq!(poll(&mut t), ["other content!", "next"]);
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

#[test]
fn copytruncate_while_down_reads_the_rest_from_the_copy_then_the_new_lines() {
    let d = Dir::new("copytrunc-down");
    let log = d.0.join("mail.log");
    append(&log, "one\ntwo\n");
    let mut t = Tailer::new(&log, Start::Beginning);
    assert_eq!(poll(&mut t), ["one", "two"]);
    let saved = t.position().unwrap();
    drop(t);
    // Down: more lines, then logrotate's copytruncate, then lines in the emptied file (more of
    // them than before, so the path's file is longer than the saved offset again).
    append(&log, "three\nfour\n");
    std::fs::copy(&log, d.0.join("mail.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    append(&log, "five, a longer line than before\nsix\n");
    let mut t = Tailer::new(&log, Start::Resume(saved));
    assert_eq!(
        poll(&mut t),
        ["three", "four", "five, a longer line than before", "six"]
    );
}
