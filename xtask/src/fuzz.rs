//! `cargo xtask fuzz`: builds the libFuzzer targets of `fuzz/` with cargo-fuzz (nightly)
//! and runs each for a bounded time, failing with the reproducer's path if any crashes.
//! `cargo xtask test` runs the same, briefly, as one of its steps.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::util::{exec, root};

/// Every target under `fuzz/fuzz_targets`, each with a seed corpus in `fuzz/corpus/<name>`.
pub const TARGETS: &[&str] = &[
    "smtp_command",
    "smtp_reply",
    "smtp_data",
    "pop3_command",
    "pop3_response",
    "sasl",
    "proxy_v2",
    "vrrp_packet",
    "agent_report",
    "config",
    "route_table",
];

/// How long and how far each target runs.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub seconds: u64,
    /// libFuzzer's `-runs`: also stop after this many inputs (`None`: only the time bounds).
    pub runs: Option<u64>,
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

/// Kept apart from the workspace's target dir: instrumented builds share nothing with it.
fn target_dir() -> PathBuf {
    root().join("target/fuzz")
}

fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    // Inside `cargo xtask`, these point at the stable toolchain; `+nightly` must win.
    cmd.current_dir(root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .arg("+nightly");
    cmd
}

/// cargo-fuzz's flags for every build: no sanitizer (the proxy forbids `unsafe`, so
/// AddressSanitizer would only slow the runs) but debug assertions, so an arithmetic
/// overflow is a crash too.
const BUILD_FLAGS: &[&str] = &["--sanitizer", "none", "--debug-assertions"];

/// Builds every target (or just `only`).
pub fn build(only: Option<&str>) -> anyhow::Result<()> {
    let mut cmd = nightly_cargo();
    cmd.args(["fuzz", "build"])
        .args(BUILD_FLAGS)
        .arg("--target-dir")
        .arg(target_dir());
    if let Some(t) = only {
        cmd.arg(t);
    }
    exec(&mut cmd).context("building the fuzz targets (cargo xtask setup installs cargo-fuzz)")
}

fn binary(target: &str) -> PathBuf {
    target_dir()
        .join("x86_64-unknown-linux-gnu/release")
        .join(target)
}

/// Runs one built target; on a crash returns the reproducer's path.
fn run_one(target: &str, budget: Budget) -> anyhow::Result<Option<PathBuf>> {
    // libFuzzer adds what it finds to the first corpus directory: a scratch one, so the
    // committed seeds stay small and hand-made.
    let work = target_dir().join("corpus").join(target);
    let artifacts = target_dir().join("artifacts").join(target);
    for dir in [&work, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let seeds = fuzz_dir().join("corpus").join(target);
    let mut cmd = Command::new(binary(target));
    cmd.arg(format!("-max_total_time={}", budget.seconds))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // A single input slower than this is a hang worth reporting.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(&work)
        .arg(&seeds);
    if let Some(runs) = budget.runs {
        cmd.arg(format!("-runs={runs}"));
    }
    let before = artifact_files(&artifacts);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", binary(target).display()))?;
    let new: Vec<PathBuf> = artifact_files(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if status.success() && new.is_empty() {
        return Ok(None);
    }
    Ok(Some(new.into_iter().next().unwrap_or(artifacts)))
}

fn artifact_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Builds, then runs each target within `budget`; fails naming every crashed target with
/// the input that reproduces it.
pub fn run(only: Option<&str>, budget: Budget) -> anyhow::Result<()> {
    if let Some(t) = only
        && !TARGETS.contains(&t)
    {
        bail!("no fuzz target {t}; the targets are {}", TARGETS.join(", "));
    }
    let start = Instant::now();
    build(only)?;
    println!("xtask fuzz: built in {:.1}s", start.elapsed().as_secs_f64());
    let mut crashed = Vec::new();
    let targets: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| only.is_none_or(|o| o == *t))
        .collect();
    for &target in &targets {
        println!("xtask fuzz: {target} for up to {}s", budget.seconds);
        if let Some(reproducer) = run_one(target, budget)? {
            println!(
                "xtask fuzz: {target} CRASHED; reproduce with `{} {}`",
                binary(target).display(),
                reproducer.display()
            );
            crashed.push(format!("{target} ({})", reproducer.display()));
        }
    }
    println!(
        "xtask fuzz: {} targets in {:.1}s",
        targets.len(),
        start.elapsed().as_secs_f64()
    );
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {}", crashed.join(", "));
    }
    Ok(())
}
