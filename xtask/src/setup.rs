//! `cargo xtask setup`: idempotent; every step checks before it acts, and a prerequisite
//! that cannot be had is one clear line, not a compiler backtrace.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{exec, output};

/// bpf-linker that loads the image nightly's own LLVM (DESIGN.md section 2).
const BPF_LINKER_VERSION: &str = "0.10.4";

/// Debian packages the tests and the demo use, with why.
const PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "map inspection in tests and docs"),
    ("iproute2", "lab namespaces, veths, bridges"),
    ("util-linux", "nsenter, to run lab processes in a namespace"),
    ("procps", "process inspection"),
    ("swaks", "SMTP client in the demo"),
    ("keepalived", "VRRP interoperability peer in the HA tests"),
    ("tshark", "decodes our VRRP adverts in the HA tests"),
];

pub fn run() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    packages()?;
    bpffs()?;
    println!("setup: ready");
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .context("setup: rustup or its nightly toolchain is missing (the machine image provides both; do not run `rustup update`)")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    println!("setup: adding nightly rust-src (the BPF target builds core from source)");
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("setup: could not add nightly rust-src")
}

fn bpf_linker() -> anyhow::Result<()> {
    let have = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if have.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    println!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} (links the eBPF object; about a minute)"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    exec(Command::new(cargo).args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
    ]))
    .context("setup: could not install bpf-linker")
}

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Status}", package]))
        .is_some_and(|s| s.trim() == "installed")
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(p, _)| !installed(p))
        .map(|(p, why)| {
            println!("setup: installing Debian package {p} ({why})");
            *p
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let apt = |args: &[&str]| {
        exec(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update", "-q"]).context("setup: apt-get update failed")?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args).with_context(|| format!("setup: could not install {}", missing.join(" ")))
}

fn bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf") && l.split(' ').nth(2) == Some("bpf"))
    {
        return Ok(());
    }
    println!("setup: mounting bpffs at /sys/fs/bpf (pinned maps live there)");
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()?;
    if !status.success() {
        bail!("setup: could not mount bpffs at /sys/fs/bpf (are you root?)");
    }
    Ok(())
}
