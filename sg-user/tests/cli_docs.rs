//! Man pages and shell completions come from the CLI definition: every command, at every
//! depth, has a page and is completed.

use std::process::Command;

use clap::CommandFactory;

/// Every command path: ["slowgate"], ["slowgate", "limit"], ["slowgate", "limit", "set"], ...
fn command_paths(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    path.push(cmd.get_name().to_string());
    out.push(path.clone());
    for sub in cmd.get_subcommands() {
        // Hidden commands (`man`, which writes these pages) are not for operators.
        if sub.get_name() != "help" && !sub.is_hide_set() {
            command_paths(sub, &path, out);
        }
    }
}

#[test]
fn man_pages_and_completions_cover_every_command() {
    let mut paths = Vec::new();
    command_paths(&slowgate::cli::Cli::command(), &[], &mut paths);
    assert!(paths.len() > 20, "only {} commands found", paths.len());
    let dir = std::env::temp_dir().join(format!("sg-man-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_slowgate"))
        .arg("man")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    for path in &paths {
        let page = format!("{}.1", path.join("-"));
        let text =
            std::fs::read_to_string(dir.join(&page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_slowgate"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let script = String::from_utf8(out.stdout).unwrap();
    for path in &paths {
        let word = path.last().unwrap();
        assert!(
            script.contains(word.as_str()),
            "bash completion lacks {word}"
        );
    }
    assert!(script.contains("--ttl"));
}
