//! Man pages and shell completions come from the CLI definition: every command has a page and
//! is completed.

use std::process::Command;

#[test]
fn man_pages_and_completions_cover_every_command() {
    let dir = std::env::temp_dir().join(format!("sg-man-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_slowgate"))
        .arg("man")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    for page in [
        "slowgate.1",
        "slowgate-replay.1",
        "slowgate-limit-set.1",
        "slowgate-parse.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_slowgate"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let script = String::from_utf8(out.stdout).unwrap();
    for word in ["replay", "limit", "status", "--ttl"] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
}
