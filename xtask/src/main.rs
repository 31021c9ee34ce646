//! `cargo xtask setup | build | test | bench | lab`: the one place that knows how to build,
//! set up, test and measure slowgate. Nobody should need to remember a cargo incantation.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

mod deb;

/// Debian's rustc for the BPF build (see ../shared/TOOLCHAIN.md).
const BPF_RUSTC: &str = "/usr/bin/rustc";

/// Debian packages the build needs. The LLVM ones are completed with rustc's LLVM major.
const BUILD_PACKAGES: &[&str] = &["rustc-web", "rust-web-src", "libzstd-dev", "zlib1g-dev"];
/// Debian packages the tests and the lab use.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "util-linux",
    "procps",
    "systemd",
    // Real journal files for the journald source's test.
    "systemd-journal-remote",
    // A real DNSBL server for the DNSBL scores' test.
    "rbldnsd",
    // A real Redis for the fleet's tests (started inside the tests' namespaces only).
    "redis-server",
    // promtool, which checks the alert rules (the package's server is not used).
    "prometheus",
    // The package's test: a fresh Debian root to install it into, and lintian.
    "debootstrap",
    "lintian",
    // Renders the HTML report for its screenshot test.
    "chromium",
];
/// The mail servers of the lab (and of its short form in the tests).
const LAB_PACKAGES: &[&str] = &["postfix", "dovecot-imapd", "dovecot-pop3d"];

#[derive(Parser)]
#[command(name = "xtask", about = "Build, set up, test and measure slowgate")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need (Debian packages, bpf-linker), idempotently.
    Setup,
    /// Build the XDP program (with BTF) and the `slowgate` binary that embeds it.
    Build {
        /// Build in release mode.
        #[arg(long)]
        release: bool,
    },
    /// Setup, build, then every test: formatting, lints, unit tests, root integration tests.
    Test,
    /// Benchmarks: `xdp` (per-packet cost against an empty XDP program), `parse` (against
    /// fail2ban-regex), `reaction` (log line to kernel limit), `memory` (per tracked sender),
    /// `flood` (the daemon's CPU while its program drops a SYN flood, against nftables),
    /// `lists` (bulk list imports), `fleet` (a limit from one host to another through Redis),
    /// `policy` (the Postfix policy service against policyd-rate-limit).
    Bench {
        #[arg(default_value = "xdp")]
        what: String,
        /// Extra arguments for the benchmark binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The parsers' property tests (hostile client text, arbitrary and damaged lines) with many
    /// more cases than `test` runs: PROPTEST_CASES (default 20000).
    Fuzz,
    /// Man pages and shell completions from the CLI definition, into target/man and
    /// target/completions.
    Man,
    /// The Debian package: target/deb/slowgate_<version>_amd64.deb (release build).
    Deb,
    /// The lab: real Postfix and Dovecot under attack, slowgate protecting them.
    Lab {
        /// The short form the test suite runs.
        #[arg(long)]
        quick: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup(),
        Task::Build { release } => setup().and_then(|()| build(release)),
        Task::Test => test(),
        Task::Bench { what, args } => setup().and_then(|()| bench(&what, &args)),
        Task::Man => setup().and_then(|()| man()),
        Task::Deb => setup().and_then(|()| deb::deb(true).map(|_| ())),
        Task::Fuzz => fuzz(),
        Task::Lab { quick } => setup().and_then(|()| {
            let args: Vec<String> = if quick {
                vec!["--quick".into()]
            } else {
                Vec::new()
            };
            lab(&args)
        }),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace());
    cmd
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status: ExitStatus = cmd
        .status()
        .with_context(|| format!("start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", cmd.get_program());
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the missing Debian packages (as root), or names them.
fn apt_install(packages: &[String]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .map(String::as_str)
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names = missing.join(" ");
    if !is_root() {
        bail!("missing Debian packages: {names}; run `cargo xtask setup` as root to install them");
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    // Mail servers are installed for the lab only: Postfix gets no system configuration, and
    // no package starts a service on this host (policy-rc.d says no while apt runs).
    let preseed = "postfix postfix/main_mailer_type select No configuration\n";
    let mut debconf = Command::new("debconf-set-selections")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("run debconf-set-selections")?;
    use std::io::Write;
    debconf
        .stdin
        .take()
        .context("debconf stdin")?
        .write_all(preseed.as_bytes())?;
    debconf.wait()?;
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(
            policy,
            "#!/bin/sh\n# written by cargo xtask while apt runs\nexit 101\n",
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let result = run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("install {names}"));
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    result
}

/// The LLVM major of Debian's rustc (`LLVM version: 22.1.8`).
fn rustc_llvm_major() -> anyhow::Result<u32> {
    let out = Command::new(BPF_RUSTC)
        .arg("-vV")
        .output()
        .with_context(|| format!("run {BPF_RUSTC} -vV (is rustc-web installed?)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    llvm_major_in(&text, "LLVM version: ")
        .with_context(|| format!("no LLVM version in `{BPF_RUSTC} -vV`: {text}"))
}

fn llvm_major_in(text: &str, marker: &str) -> Option<u32> {
    let at = text.find(marker)? + marker.len();
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn bpf_linker_path() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    home.join("bin").join("bpf-linker")
}

/// The LLVM major bpf-linker was linked against (it links libLLVM.so.N dynamically).
fn bpf_linker_llvm_major(linker: &Path) -> Option<u32> {
    let out = Command::new("ldd").arg(linker).output().ok()?;
    llvm_major_in(&String::from_utf8_lossy(&out.stdout), "libLLVM.so.")
        .or_else(|| llvm_major_in(&String::from_utf8_lossy(&out.stdout), "libLLVM-"))
}

fn setup() -> anyhow::Result<()> {
    let mut packages: Vec<String> = BUILD_PACKAGES.iter().map(|s| s.to_string()).collect();
    packages.extend(TEST_PACKAGES.iter().map(|s| s.to_string()));
    packages.extend(LAB_PACKAGES.iter().map(|s| s.to_string()));
    apt_install(&packages)?;
    let major = rustc_llvm_major()?;
    apt_install(&[format!("llvm-{major}-dev"), format!("libpolly-{major}-dev")])?;
    if !Path::new("/usr/lib/rustlib/src/rust/library/core").exists() {
        bail!("rust-web-src is installed but /usr/lib/rustlib/src/rust/library/core is missing");
    }

    let linker = bpf_linker_path();
    let have = if linker.exists() {
        bpf_linker_llvm_major(&linker)
    } else {
        None
    };
    if have != Some(major) {
        match have {
            Some(other) => eprintln!(
                "xtask: bpf-linker uses LLVM {other}, rustc uses LLVM {major}: rebuilding it"
            ),
            None => eprintln!("xtask: installing bpf-linker against LLVM {major} (about a minute)"),
        }
        let llvm_bin = format!("/usr/lib/llvm-{major}/bin");
        let path = format!("{llvm_bin}:{}", env::var("PATH").unwrap_or_default());
        run(cargo()
            .args(["install", "--force", "bpf-linker", "--no-default-features"])
            .args(["--features", &format!("llvm-{major}")])
            .env("PATH", path))
        .context("install bpf-linker")?;
    }
    match bpf_linker_llvm_major(&linker) {
        Some(m) if m == major => {}
        Some(m) => bail!(
            "bpf-linker uses LLVM {m} but {BPF_RUSTC} uses LLVM {major}: a mismatch can produce \
             broken BTF; reinstall with `cargo install bpf-linker --force --no-default-features \
             --features llvm-{major}`"
        ),
        None => bail!(
            "cannot tell which LLVM {} uses (ldd shows no libLLVM)",
            linker.display()
        ),
    }
    eprintln!("xtask: setup ok (rustc and bpf-linker on LLVM {major})");
    Ok(())
}

fn build(release: bool) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "slowgate", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    eprintln!(
        "xtask: built {} (the XDP object is embedded; BPF object at {})",
        workspace()
            .join("target")
            .join(profile)
            .join("slowgate")
            .display(),
        workspace()
            .join("target/ebpf/bpfel-unknown-none/release/sg-ebpf")
            .display()
    );
    Ok(())
}

fn test() -> anyhow::Result<()> {
    setup()?;
    build(false)?;
    run(cargo().args(["fmt", "--all", "--check"])).context("formatting: run `cargo fmt --all`")?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Unprivileged tests: units, config, parsers, buckets. The property tests run a fixed
    // sequence of cases here, so a run is repeatable; `cargo xtask fuzz` draws new ones.
    run(cargo()
        .args(["test", "--workspace", "--exclude", "sg-tests"])
        .env("PROPTEST_RNG_SEED", "20261122"))?;
    if !is_root() {
        bail!("the integration tests load XDP programs and create network namespaces: run as root");
    }
    // Root tests: the program in the kernel, namespaces, the daemon. Serial: they share the
    // kernel and name their namespaces per process.
    let bin = workspace().join("target/debug/slowgate");
    // The package's test installs an older version, then this one (debug builds: the test is
    // about the packaging).
    let version = deb::version()?;
    let old = with_env("SLOWGATE_DEB_VERSION", &format!("{version}~prev"), || {
        deb::deb(false)
    })?;
    let new = deb::deb(false)?;
    run(cargo()
        .args(["test", "--package", "sg-tests", "--", "--test-threads=1"])
        .env("SLOWGATE_BIN", &bin)
        .env("SLOWGATE_DEB_OLD", &old)
        .env("SLOWGATE_DEB_NEW", &new))?;
    // Every benchmark once in its short form (a debug build: it shows the benchmark works, its
    // figures mean nothing), so a broken benchmark fails the tests.
    install_bench_packages()?;
    let peer = install_policy_peer()?;
    for what in BENCHES {
        run(cargo()
            .args(["run", "--package", "sg-tests", "--bin", "sg-bench", "--"])
            .args([what, "--quick"])
            .env("SLOWGATE_BIN", &bin)
            .env("SG_PEER_POLICYD", &peer))
        .with_context(|| format!("the short form of `cargo xtask bench {what}`"))?;
    }
    Ok(())
}

/// Runs `f` with the environment variable `name` set to `value` (this process is single-threaded).
fn with_env<T>(name: &str, value: &str, f: impl FnOnce() -> T) -> T {
    // SAFETY: xtask runs no other thread while it sets and removes the variable.
    unsafe { env::set_var(name, value) };
    let result = f();
    unsafe { env::remove_var(name) };
    result
}

/// Debian packages of the benchmarks' baselines.
const BENCH_PACKAGES: &[&str] = &["fail2ban", "nftables"];

fn install_bench_packages() -> anyhow::Result<()> {
    apt_install(
        &BENCH_PACKAGES
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )
}

/// The benchmarks `cargo xtask bench` knows.
const BENCHES: [&str; 9] = [
    "xdp", "parse", "replay", "reaction", "memory", "flood", "lists", "fleet", "policy",
];

fn bench(what: &str, args: &[String]) -> anyhow::Result<()> {
    if !BENCHES.contains(&what) {
        bail!("unknown benchmark `{what}` (known: {})", BENCHES.join(", "));
    }
    if matches!(what, "parse" | "replay" | "flood" | "lists") {
        install_bench_packages()?;
    }
    let mut cmd = tests_binary("sg-bench");
    if what == "policy" {
        cmd.env("SG_PEER_POLICYD", install_policy_peer()?);
    }
    // The reaction benchmark runs the daemon binary.
    build(true)?;
    run(cmd.arg(what).args(args))
}

/// The policy benchmark's peer: policyd-rate-limit from PyPI, in a virtualenv of its own under
/// target/ (installed once); returns its program.
fn install_policy_peer() -> anyhow::Result<PathBuf> {
    let venv = workspace().join("target/peer/policyd-rate-limit");
    let program = venv.join("bin/policyd-rate-limit");
    if program.exists() {
        return Ok(program);
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("a virtualenv for policyd-rate-limit (python3 -m venv)")?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "policyd-rate-limit==1.2.0",
    ]))
    .context("pip install policyd-rate-limit")?;
    Ok(program)
}

/// `cargo run --release` of a binary of the sg-tests package, against the release daemon.
fn tests_binary(name: &str) -> Command {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "--package",
        "sg-tests",
        "--bin",
        name,
        "--",
    ])
    .env("SLOWGATE_BIN", workspace().join("target/release/slowgate"));
    cmd
}

fn fuzz() -> anyhow::Result<()> {
    let cases = env::var("PROPTEST_CASES").unwrap_or_else(|_| "20000".into());
    eprintln!("xtask: {cases} cases per property (PROPTEST_CASES)");
    run(cargo()
        .args([
            "test",
            "--release",
            "--package",
            "slowgate",
            "--test",
            "hostile_lines",
        ])
        .env("PROPTEST_CASES", cases))
}

fn man() -> anyhow::Result<()> {
    build(false)?;
    let bin = workspace().join("target/debug/slowgate");
    let man_dir = workspace().join("target/man");
    run(Command::new(&bin).arg("man").arg(&man_dir))?;
    let completions = workspace().join("target/completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in [
        ("bash", "slowgate.bash"),
        ("zsh", "_slowgate"),
        ("fish", "slowgate.fish"),
    ] {
        let out = Command::new(&bin).args(["completions", shell]).output()?;
        if !out.status.success() {
            bail!("slowgate completions {shell} failed");
        }
        std::fs::write(completions.join(file), out.stdout)?;
    }
    eprintln!(
        "xtask: man pages in {}, completions in {}",
        man_dir.display(),
        completions.display()
    );
    Ok(())
}

/// Real Postfix and Dovecot under attack, slowgate protecting them (tests/src/lab.rs).
fn lab(args: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the lab creates network namespaces and loads XDP programs: run it as root");
    }
    build(true)?;
    run(tests_binary("sg-lab").args(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_is_read_from_rustc_and_ldd_output() {
        let rustc = "rustc 1.96.0\nbinary: rustc\nLLVM version: 22.1.8\n";
        assert_eq!(llvm_major_in(rustc, "LLVM version: "), Some(22));
        let ldd = "\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x0)\n";
        assert_eq!(llvm_major_in(ldd, "libLLVM.so."), Some(22));
        assert_eq!(llvm_major_in("nothing", "libLLVM.so."), None);
    }
}
