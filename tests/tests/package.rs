//! The Debian package (`cargo xtask deb`) installed into a fresh Debian root made with
//! debootstrap (minbase, bookworm, from Debian's mirror; the download is kept under target/ so
//! later runs unpack it again): its files, its group, `check-config` of the shipped config
//! (refused as shipped, accepted once `interfaces` is set), `systemd-analyze verify` of the
//! installed unit, an upgrade that keeps the operator's edited config, a purge, and lintian.
//! `cargo xtask test` builds the two packages (an older version, then the current one) and
//! names them in SLOWGATE_DEB_OLD and SLOWGATE_DEB_NEW. Root only.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use sg_tests::*;

fn package(var: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var}: the package to test (`cargo xtask test` builds it)"));
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// Runs a command; its output, or a panic with it when it failed.
fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// A command run inside the Debian root.
fn inside(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    cmd
}

/// A fresh minimal Debian root; the downloaded packages are kept in a tarball under target/.
fn debian_root(dir: &Path) -> PathBuf {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debootstrap");
    std::fs::create_dir_all(&cache).unwrap();
    // What a mail host has and the unit's verification needs: systemd (its targets), procps
    // (/bin/kill of ExecReload) and man-db (Documentation=man:slowgate(1)).
    let include = "--include=systemd,procps,man-db";
    let tarball = cache.join("bookworm-minbase-systemd.tgz");
    let mirror = "http://deb.debian.org/debian";
    if !tarball.exists() {
        let partial = cache.join("bookworm-minbase-systemd.tgz.partial");
        ok(Command::new("debootstrap")
            .args(["--variant=minbase", include, "--make-tarball"])
            .arg(&partial)
            .args([
                "bookworm",
                &cache.join("work").display().to_string(),
                mirror,
            ]));
        std::fs::rename(&partial, &tarball).unwrap();
        let _ = std::fs::remove_dir_all(cache.join("work"));
    }
    let root = dir.join("root");
    ok(Command::new("debootstrap")
        .args(["--variant=minbase", include])
        .arg(format!("--unpack-tarball={}", tarball.display()))
        .args(["bookworm", &root.display().to_string(), mirror]));
    root
}

#[test]
fn the_package_installs_into_a_fresh_debian_upgrades_keeping_the_config_and_purges() {
    require_root();
    let (old, new) = (package("SLOWGATE_DEB_OLD"), package("SLOWGATE_DEB_NEW"));
    let dir = TempDir::new("debroot");
    let root = debian_root(&dir.path);
    for deb in [&old, &new] {
        std::fs::copy(deb, root.join("tmp").join(deb.file_name().unwrap())).unwrap();
    }
    let in_root = |deb: &Path| format!("/tmp/{}", deb.file_name().unwrap().to_string_lossy());

    // Install the older version: files, group, no daemon started.
    ok(&mut inside(&root, &["dpkg", "-i", &in_root(&old)]));
    for file in [
        "usr/sbin/slowgate",
        "etc/slowgate/slowgate.toml",
        "lib/systemd/system/slowgate.service",
        "usr/share/man/man1/slowgate.1.gz",
        "usr/share/bash-completion/completions/slowgate",
        "usr/share/zsh/vendor-completions/_slowgate",
        "usr/share/fish/vendor_completions.d/slowgate.fish",
        "usr/share/slowgate/grafana/slowgate.json",
        "usr/share/slowgate/prometheus/slowgate.rules.yml",
        "usr/share/doc/slowgate/copyright",
    ] {
        assert!(root.join(file).exists(), "{file} not installed");
    }
    assert!(ok(&mut inside(&root, &["getent", "group", "slowgate"])).starts_with("slowgate:"));
    let conffiles = ok(&mut inside(
        &root,
        &["dpkg-query", "--showformat=${Conffiles}", "-W", "slowgate"],
    ));
    assert!(
        conffiles.contains("/etc/slowgate/slowgate.toml"),
        "{conffiles}"
    );

    // The shipped config is refused until `interfaces` is set, with a message saying so.
    let shipped = inside(
        &root,
        &[
            "slowgate",
            "--config",
            "/etc/slowgate/slowgate.toml",
            "check-config",
        ],
    )
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&shipped.stderr);
    assert!(
        !shipped.status.success(),
        "the placeholder config was accepted"
    );
    assert!(said.contains("interfaces"), "{said}");
    let config = root.join("etc/slowgate/slowgate.toml");
    let edited = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\ninterfaces = []\n", "\ninterfaces = [\"eth0\"]\n")
        + "# edited by the operator\n";
    std::fs::write(&config, &edited).unwrap();
    ok(&mut inside(
        &root,
        &[
            "slowgate",
            "--config",
            "/etc/slowgate/slowgate.toml",
            "check-config",
        ],
    ));

    // The installed unit verifies (its ExecStart and ExecStartPre exist in the root).
    // (Its Documentation= man page is looked up by the host's man, in the root's pages.)
    let verify = ok(Command::new("systemd-analyze")
        .env("MANPATH", root.join("usr/share/man"))
        .arg(format!("--root={}", root.display()))
        .args(["verify", "/lib/systemd/system/slowgate.service"]));
    assert!(!verify.contains("slowgate.service:"), "{verify}");

    // Upgrade: the operator's edit stays.
    ok(&mut inside(
        &root,
        &["dpkg", "-i", "--force-confold", &in_root(&new)],
    ));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    let version = ok(&mut inside(
        &root,
        &["dpkg-query", "--showformat=${Version}", "-W", "slowgate"],
    ));
    let new_version = new
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split('_')
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(version.trim(), new_version);

    // Purge: the config, the state and the group go (pins stay unless asked; none here).
    ok(&mut inside(&root, &["dpkg", "--purge", "slowgate"]));
    assert!(!root.join("etc/slowgate/slowgate.toml").exists());
    assert!(!root.join("usr/sbin/slowgate").exists());
    assert!(
        !inside(&root, &["getent", "group", "slowgate"])
            .output()
            .unwrap()
            .status
            .success(),
        "the group stayed"
    );
}

#[test]
fn lintian_finds_no_error_or_warning_in_the_package() {
    let deb = package("SLOWGATE_DEB_NEW");
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .expect("run lintian (apt install lintian; `cargo xtask test` does)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lintian:\n{text}");
    assert!(
        !text.contains("E: ") && !text.contains("W: "),
        "lintian:\n{text}"
    );
}
