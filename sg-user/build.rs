//! Builds the XDP program (sg-ebpf) for bpfel-unknown-none and hands its path to the crate, which
//! embeds it: the `slowgate` binary is the one file an operator installs.
//!
//! The BPF build needs Debian's rustc (its library source makes `-Z build-std=core` work) and a
//! bpf-linker built against the same LLVM major; `cargo xtask setup` installs both
//! (see ../../shared/TOOLCHAIN.md). Set SLOWGATE_EBPF_OBJECT to use a prebuilt object instead.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const BPF_RUSTC: &str = "/usr/bin/rustc";
const TARGET: &str = "bpfel-unknown-none";

fn main() {
    println!("cargo:rerun-if-env-changed=SLOWGATE_EBPF_OBJECT");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = match env::var_os("SLOWGATE_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => build_ebpf(),
    };
    let embedded = out_dir.join("sg-ebpf.o");
    std::fs::copy(&object, &embedded)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", object.display(), embedded.display()));
    // The tests' second object: a bucket whose compare-and-swap is not atomic, which the
    // two-CPU test must catch (feature `test-objects`, enabled by the sg-tests crate only).
    if env::var_os("CARGO_FEATURE_TEST_OBJECTS").is_some() {
        let variant = build_ebpf_with(&["non-atomic-bucket"]);
        let embedded = out_dir.join("sg-ebpf-non-atomic.o");
        std::fs::copy(&variant, &embedded).unwrap_or_else(|e| {
            panic!("copy {} to {}: {e}", variant.display(), embedded.display())
        });
        // The next plain build must not find the variant's binary in place of its own.
        let _ = std::fs::remove_file(&variant);
        // The benchmark's baseline for the kernel diagnostics: the program without them.
        let variant = build_ebpf_with(&["no-kernel-log"]);
        let embedded = out_dir.join("sg-ebpf-no-kernel-log.o");
        std::fs::copy(&variant, &embedded).unwrap_or_else(|e| {
            panic!("copy {} to {}: {e}", variant.display(), embedded.display())
        });
        let _ = std::fs::remove_file(&variant);
    }
}

fn build_ebpf() -> PathBuf {
    build_ebpf_with(&[])
}

fn build_ebpf_with(features: &[&str]) -> PathBuf {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap();
    for dir in ["sg-ebpf/src", "sg-common/src"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("sg-ebpf/Cargo.toml").display()
    );
    if !Path::new(BPF_RUSTC).exists() {
        panic!(
            "{BPF_RUSTC} is missing: the XDP program needs Debian's rustc-web and rust-web-src. \
             Run `cargo xtask setup` (as root)."
        );
    }
    let target_dir = workspace.join("target").join("ebpf");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--package",
            "sg-ebpf",
            "--release",
            "--target",
            TARGET,
        ])
        .args(if features.is_empty() {
            Vec::new()
        } else {
            vec!["--features".to_string(), features.join(",")]
        })
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .env("RUSTC", BPF_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
            // BTF so `bpftool map dump` prints fields by name; v3 for BPF_CMPXCHG (bucket.rs).
            "-C debuginfo=2 -C link-arg=--btf -C target-cpu=v3",
        );
    // What the outer build set for the host must not leak into the BPF build.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO_PROFILE_") || key.starts_with("CARGO_CFG_") {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("run cargo to build sg-ebpf: {e}"));
    if !status.success() {
        panic!(
            "building the XDP program (sg-ebpf) failed; if bpf-linker or Debian's rustc is \
             missing, run `cargo xtask setup` (as root)"
        );
    }
    target_dir.join(TARGET).join("release").join("sg-ebpf")
}
