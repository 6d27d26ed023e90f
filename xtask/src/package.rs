//! `cargo xtask package`: the Debian package of `robustifier`, built by cargo-deb from
//! `[package.metadata.deb]` in proxy/Cargo.toml: the binary, the systemd units of
//! packaging/systemd/, the man pages (written by the binary's own `manpages` command), the
//! MIB, the example configurations and the maintainer scripts of packaging/debian/.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};

use crate::util::{self, exec, output};

/// The cargo-deb release known to build with this machine's rustc and to read our metadata.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Installs cargo-deb [`CARGO_DEB_VERSION`] unless it is there already.
pub fn ensure_cargo_deb() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let have = output(Command::new(&cargo).args(["deb", "--version"])).unwrap_or_default();
    if have.split_whitespace().any(|w| w == CARGO_DEB_VERSION) {
        return Ok(());
    }
    println!("setup: installing cargo-deb {CARGO_DEB_VERSION} (builds the Debian package)");
    exec(Command::new(cargo).args([
        "install",
        &format!("cargo-deb@{CARGO_DEB_VERSION}"),
        "--locked",
    ]))
    .context("setup: could not install cargo-deb")
}

/// Builds the package with the cargo profile `profile` (`dev`: for the VM test; `release`:
/// for operators; both stripped) and returns the .deb's path under target/debian/.
pub fn build(profile: &str) -> anyhow::Result<PathBuf> {
    let dir = match profile {
        "dev" => "debug",
        "release" => "release",
        other => bail!("--profile {other}: dev or release"),
    };
    ensure_cargo_deb()?;
    let root = util::root();
    util::cargo(&["build", "-p", "robustifier", "--profile", profile])?;
    manpages(
        &root.join("target").join(dir).join("robustifier"),
        &root.join("target/man"),
    )?;
    let out = root.join("target/debian");
    std::fs::create_dir_all(&out)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "deb",
            "-p",
            "robustifier",
            "--no-build",
            "--profile",
            profile,
        ])
        .args(["--strip", "--no-separate-debug-symbols", "--no-dbgsym"])
        .arg("--output")
        .arg(&out)
        .stderr(Stdio::inherit());
    let made = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !made.status.success() {
        bail!("{cmd:?} failed ({})", made.status);
    }
    // cargo-deb prints the package's path as its last line.
    let stdout = String::from_utf8_lossy(&made.stdout);
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb named no package: {stdout}"))?;
    let deb = if deb.is_absolute() {
        deb
    } else {
        root.join(deb)
    };
    ensure!(deb.is_file(), "cargo deb: {} is not there", deb.display());
    println!("package: {}", deb.display());
    Ok(deb)
}

/// The man pages of `binary`, gzipped (as Debian ships them), fresh in `dir`.
fn manpages(binary: &Path, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    exec(Command::new(binary).arg("manpages").arg(dir))?;
    for entry in std::fs::read_dir(dir)? {
        let page = entry?.path();
        // -n: no name or time stamp inside, so the same pages give the same package.
        exec(Command::new("gzip").args(["-9nf"]).arg(&page))?;
    }
    Ok(())
}
