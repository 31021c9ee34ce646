//! `cargo xtask deb`: `target/deb/slowgate_<version>_amd64.deb`, built with `dpkg-deb` (part
//! of every Debian system) from a staged tree: the binary, the unit, the annotated config as a
//! conffile, man pages, shell completions, the dashboard and alert rules, and maintainer
//! scripts that create the `slowgate` group and never start enforcement: the shipped config
//! names no interface, and the unit's `check-config` refuses to start until one is set.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{run, workspace};

/// Where the package and its staged tree go.
fn out_dir() -> PathBuf {
    workspace().join("target/deb")
}

/// The workspace's version, or `SLOWGATE_DEB_VERSION` (the upgrade test builds two).
pub fn version() -> anyhow::Result<String> {
    if let Ok(v) = std::env::var("SLOWGATE_DEB_VERSION") {
        return Ok(v);
    }
    let text = std::fs::read_to_string(workspace().join("Cargo.toml"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|l| l.strip_suffix('"'))
        .map(str::to_string)
        .context("no version in Cargo.toml")
}

const CONTROL: &str = "\
Package: slowgate
Version: @VERSION@
Section: mail
Priority: optional
Architecture: amd64
Maintainer: slowgate developers <slowgate@example.org>
Depends: libc6 (>= 2.36), passwd
Recommends: systemd
Installed-Size: @SIZE@
Homepage: https://example.org/slowgate
Description: slows abusive mail senders at the NIC (XDP)
 slowgate learns which senders are abusive from what Postfix, sendmail, qmail,
 Exim, Dovecot and Rspamd log, gives them points that decay, and limits their
 new connections to the mail ports in the kernel with an XDP program, up to a
 block. It also answers Postfix's policy protocol, a milter and Dovecot's
 authentication policy for per-user limits. Mail keeps flowing if it stops.
";

const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ]; then
    # The group that may use the control socket (slowgate top, show, release, lists).
    if ! getent group slowgate >/dev/null; then
        groupadd --system slowgate
    fi
    # Never started here: set `interfaces` in /etc/slowgate/slowgate.toml first, then
    #   systemctl enable --now slowgate
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
fi
exit 0
";

const PRERM: &str = "#!/bin/sh
set -e
# Stopping leaves the XDP program attached with limits that expire on their own.
if [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop slowgate.service >/dev/null 2>&1 || true
fi
exit 0
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ \"$1\" = purge ]; then
    rm -rf /var/lib/slowgate
    # The program, its link and its maps stay pinned (enforcing limits that expire) unless
    # the operator asks for them to go: SLOWGATE_PURGE_PINS=yes apt purge slowgate
    if [ \"${SLOWGATE_PURGE_PINS:-no}\" = yes ]; then
        rm -rf /sys/fs/bpf/slowgate
    fi
    if getent group slowgate >/dev/null; then
        groupdel slowgate || true
    fi
fi
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
exit 0
";

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: slowgate
Source: https://example.org/slowgate

Files: *
Copyright: 2026 slowgate developers
License: MIT or Apache-2.0
 Licensed under either of the Apache License, Version 2.0 or the MIT license,
 at your option.
 .
 On Debian systems, the complete text of the Apache License 2.0 can be found
 in /usr/share/common-licenses/Apache-2.0.
";

/// Lintian tags this package is known to get, each with why it is right.
const LINTIAN_OVERRIDES: &str = "\
# prerm stops the daemon on removal with systemctl itself: the unit is never enabled or started
# by the package (the operator does, once `interfaces` is set), so deb-systemd-helper's
# bookkeeping has nothing to track, and the package does not depend on init-system-helpers.
slowgate: maintainer-script-calls-systemctl [prerm:*]
";

/// Builds the binary (release, or the debug build the tests use), man pages and completions,
/// stages the tree, and packs it.
pub fn deb(release: bool) -> anyhow::Result<PathBuf> {
    crate::build(release)?;
    crate::man()?;
    let profile = if release { "release" } else { "debug" };
    let version = version()?;
    let root = workspace();
    let stage = out_dir().join(format!("slowgate_{version}_amd64"));
    let _ = std::fs::remove_dir_all(&stage);
    let put = |from: &Path, to: &str, mode: u32| -> anyhow::Result<()> {
        let to = stage.join(to);
        std::fs::create_dir_all(to.parent().expect("a parent"))?;
        std::fs::copy(from, &to).with_context(|| format!("copy {}", from.display()))?;
        chmod(&to, mode)
    };
    let write = |to: &str, text: &str, mode: u32| -> anyhow::Result<()> {
        let to = stage.join(to);
        std::fs::create_dir_all(to.parent().expect("a parent"))?;
        std::fs::write(&to, text)?;
        chmod(&to, mode)
    };
    put(
        &root.join(format!("target/{profile}/slowgate")),
        "usr/sbin/slowgate",
        0o755,
    )?;
    run(Command::new("strip")
        .arg("--strip-unneeded")
        .arg(stage.join("usr/sbin/slowgate")))?;
    // The unit from config/, with the package's paths.
    let unit = std::fs::read_to_string(root.join("config/slowgate.service"))?
        .replace("/usr/local/sbin/slowgate", "/usr/sbin/slowgate");
    write("lib/systemd/system/slowgate.service", &unit, 0o644)?;
    write(
        "etc/slowgate/slowgate.toml",
        &packaged_config(&root)?,
        0o644,
    )?;
    for entry in std::fs::read_dir(root.join("target/man"))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .to_string();
        put(&path, &format!("usr/share/man/man1/{name}"), 0o644)?;
        run(Command::new("gzip")
            .args(["-9nf"])
            .arg(stage.join(format!("usr/share/man/man1/{name}"))))?;
    }
    let completions = root.join("target/completions");
    put(
        &completions.join("slowgate.bash"),
        "usr/share/bash-completion/completions/slowgate",
        0o644,
    )?;
    put(
        &completions.join("_slowgate"),
        "usr/share/zsh/vendor-completions/_slowgate",
        0o644,
    )?;
    put(
        &completions.join("slowgate.fish"),
        "usr/share/fish/vendor_completions.d/slowgate.fish",
        0o644,
    )?;
    put(
        &root.join("config/grafana/slowgate.json"),
        "usr/share/slowgate/grafana/slowgate.json",
        0o644,
    )?;
    put(
        &root.join("config/prometheus/slowgate.rules.yml"),
        "usr/share/slowgate/prometheus/slowgate.rules.yml",
        0o644,
    )?;
    write("usr/share/doc/slowgate/copyright", COPYRIGHT, 0o644)?;
    write(
        "usr/share/doc/slowgate/changelog",
        &format!(
            "slowgate ({version}) unstable; urgency=medium\n\n  * Packaged by cargo xtask deb.\n\n \
             -- slowgate developers <slowgate@example.org>  Mon, 23 Nov 2026 00:00:00 +0000\n"
        ),
        0o644,
    )?;
    run(Command::new("gzip")
        .args(["-9nf"])
        .arg(stage.join("usr/share/doc/slowgate/changelog")))?;
    write(
        "usr/share/lintian/overrides/slowgate",
        LINTIAN_OVERRIDES,
        0o644,
    )?;
    // The state directory is the unit's (StateDirectory=slowgate); the conffile is dpkg's.
    write("DEBIAN/conffiles", "/etc/slowgate/slowgate.toml\n", 0o644)?;
    write("DEBIAN/postinst", POSTINST, 0o755)?;
    write("DEBIAN/prerm", PRERM, 0o755)?;
    write("DEBIAN/postrm", POSTRM, 0o755)?;
    let size_kib = du_kib(&stage)?;
    write(
        "DEBIAN/control",
        &CONTROL
            .replace("@VERSION@", &version)
            .replace("@SIZE@", &size_kib.to_string()),
        0o644,
    )?;
    let deb = out_dir().join(format!("slowgate_{version}_amd64.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

/// The shipped config, with no interface (the daemon refuses to start until one is set) and
/// the control socket open to the `slowgate` group.
fn packaged_config(root: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(root.join("config/slowgate.toml"))?;
    if !text.contains("\ninterfaces = [\"eth0\"]\n") || !text.contains("\ngroup = \"\"\n") {
        bail!("config/slowgate.toml changed: update packaged_config() in xtask/src/deb.rs");
    }
    Ok(text
        .replace(
            "\ninterfaces = [\"eth0\"]\n",
            "\n# EDIT THIS: the interfaces to protect, like [\"eth0\"]. slowgate does not start\n\
             # until at least one is named (`slowgate check-config` says so).\ninterfaces = []\n",
        )
        .replace("\ngroup = \"\"\n", "\ngroup = \"slowgate\"\n"))
}

fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The staged tree's size in KiB, as `Installed-Size` wants it.
fn du_kib(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len().div_ceil(1024);
            }
        }
    }
    Ok(total)
}
