use super::*;
use clap::Parser;
use std::path::Path;

#[test]
fn without_config_the_installed_config_decides_where_entries_are_kept() {
    let dir = std::env::temp_dir().join(format!("sg-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let installed = dir.join("slowgate.toml");
    let cli = Cli::try_parse_from(["slowgate", "deny", "list"]).unwrap();
    // Nothing installed: built-in defaults.
    assert!(cli.config_or(&installed).unwrap().is_none());
    std::fs::write(
        &installed,
        "interfaces = [\"eth0\"]\nstate_dir = \"/srv/slowgate-state\"\n",
    )
    .unwrap();
    let config = cli
        .config_or(&installed)
        .unwrap()
        .expect("the installed one");
    assert_eq!(config.state_dir, Path::new("/srv/slowgate-state"));
    // A broken installed config is an error, not a silent fallback to the defaults.
    std::fs::write(&installed, "interfaces = 3\n").unwrap();
    assert!(cli.config_or(&installed).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
